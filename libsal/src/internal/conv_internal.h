/* Private interface of the convolution family (libsal/src/conv.c, conv3x3.c, winograd.c):
 * the kernels that conv.c chooses among.  Public API: sal/conv.h. */
#ifndef SAL_CONV_INTERNAL_H
#define SAL_CONV_INTERNAL_H

#include "internal/internal.h"
#include "sal/conv.h"

/* The weights cache of evaluation forwards (wcache.c; sal/conv.h "The weights cache").
 * sal_wcache_get returns the prepared form (n floats) of the weights w (nw floats) for
 * key, made by fill(ctx, dst) if the cache has no current one, pinned until
 * sal_wcache_release(*pin); NULL (and *pin NULL): not cached now (off, no room, in use
 * with other contents, out of memory), the caller prepares the weights itself. */
typedef struct {
    int64_t kind, wl, c, o, k;   /* kernel family (SAL_WC_*), vector width, layer shape */
} sal_wcache_key;
enum { SAL_WC_WINO_FWD = 1, SAL_WC_DCONV_FWD = 2 };
typedef struct sal_wcache_entry sal_wcache_entry;
typedef void (*sal_wcache_fill_fn)(void *ctx, float *dst);
const float *sal_wcache_get(const float *w, int64_t nw, const sal_wcache_key *key, size_t n,
                            sal_wcache_fill_fn fill, void *ctx, sal_wcache_entry **pin);
void sal_wcache_release(sal_wcache_entry *pin);
/* the digest's part after the whole 256-byte rounds (nb < 256; ref/wcache_ref.c) */
void sal_wcache_digest_tail(uint64_t h[SAL_CONV_DIGEST_LANES], const unsigned char *p,
                            int64_t nb);

/* Direct 3x3 / stride 1 / padding 1 convolution (conv3x3.c). */
bool sal_conv3x3_applies(const sal_conv_desc *d);
size_t sal_conv3x3_scratch(const sal_conv_desc *d);
int sal_conv3x3_threads(const sal_conv_desc *d);
void sal_conv3x3_run(float *out, int accumulate, const float *in, sal_act ina, int64_t o,
                     const float *w, int grad, float *scratch, int t);
void sal_conv3x3_wgrad(float *dw, const float *dy, const float *x, sal_act xa, int64_t o,
                       float *scratch, int t);

/* Winograd F(4x4, 3x3), 3x3 / stride 1 / padding 1 (winograd.c).  Scratch: the most any
 * pass needs at any ISA's vector width, for the descriptor's threads. */
bool sal_wino_applies(const sal_conv_desc *d);
size_t sal_wino_scratch(const sal_conv_desc *d);
/* epi may be NULL (no epilogue, no cache) */
void sal_wino_fwd(float *y, const float *x, const float *w, const sal_conv_desc *d,
                  float *scratch, const sal_conv_epi *epi);
/* dx += the input gradient (acc 0: dx =); dw += the weight gradient */
void sal_wino_bwd_data(float *dx, const float *dy, const float *w, const sal_conv_desc *d,
                       float *scratch, int acc);
void sal_wino_bwd_weights(float *dw, const float *dy, const float *x, const sal_conv_desc *d,
                          float *scratch);
/* both, dy transposed once (dx and dw must both be given; acc as above) */
void sal_wino_bwd(float *dx, float *dw, const float *dy, const float *x, const float *w,
                  const sal_conv_desc *d, float *scratch, int acc);

/* Blocked direct convolution, K = 1 or 3 with padding K/2, stride 2 (dconv.c). */
bool sal_dconv_applies(const sal_conv_desc *d);
size_t sal_dconv_scratch(const sal_conv_desc *d);
void sal_dconv_fwd(float *y, const float *x, const float *w, const sal_conv_desc *d,
                   float *scratch, const sal_conv_epi *epi);
void sal_dconv_bwd_data(float *dx, const float *dy, const float *w, const sal_conv_desc *d,
                        float *scratch);
void sal_dconv_bwd_weights(float *dw, const float *dy, const float *x, const sal_conv_desc *d,
                           float *scratch);
/* the weight gradient of a 3x3 / stride 1 / padding 1 convolution of few (<= 4) input
 * channels, vectors over output channels (dconv.c) */
bool sal_dconv_stem_applies(const sal_conv_desc *d);
size_t sal_dconv_stem_scratch(const sal_conv_desc *d);
void sal_dconv_stem_wgrad(float *dw, const float *dy, const float *x, const sal_conv_desc *d,
                          float *scratch);

#endif
