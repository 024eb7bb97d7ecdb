/* Convolution (CL) and its naive reference twins. */
#ifndef SAL_CONV_H
#define SAL_CONV_H

#include "sal/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- convolution (CL): k x k, stride, zero padding, no bias -------------- */
typedef struct {
    sal_act x;              /* input  (N, C, H, W) */
    int64_t o, k;           /* O output channels, K kernel size (weights O, C, K, K) */
    int64_t stride, pad;    /* S >= 1, P >= 0 */
    int threads;            /* threads the call may use and its scratch is sized for;
                               0: sal_get_num_threads() at the time of each call.  Set it
                               when scratch is sized once and used later. */
} sal_conv_desc;

/* fills *y with the output geometry (N, O, Ho, Wo), same layout as x */
sal_status sal_conv_check(const sal_conv_desc *d, sal_act *y);
size_t sal_conv_scratch(const sal_conv_desc *d);   /* floats */

/* y (N,O,Ho,Wo) = conv(x (N,C,H,W), w (O,C,K,K)) */
sal_status sal_conv_fwd(float *y, const float *x, const float *w,
                        const sal_conv_desc *d, float *scratch);
/* dx (N,C,H,W) += dconv/dx, dw (O,C,K,K) += dconv/dw, given dy (N,O,Ho,Wo) */
sal_status sal_conv_bwd(float *dx, float *dw, const float *dy, const float *x,
                        const float *w, const sal_conv_desc *d, float *scratch);
/* the same, but dx (N,C,H,W) = dconv/dx: written, whatever it held (dw still += ) */
sal_status sal_conv_bwd_assign(float *dx, float *dw, const float *dy, const float *x,
                               const float *w, const sal_conv_desc *d, float *scratch);

/* ---- forward with a fused epilogue, and the weights cache ------------------------------
 * y = epi(conv(x, w)): + bias per output channel, + a residual before or after a ReLU, as
 * an exported layer computes (sal/net.h), fused into the kernels' stores where they have
 * them (Winograd, the blocked direct kernels), a pass over y elsewhere; bit for bit what
 * sal_conv_fwd followed by that pass computes.  epi NULL: sal_conv_fwd.
 *
 * reuse = 1 declares that the same weights will come again (an evaluation forward): the
 * kernels then keep their prepared form of w (Winograd's transformed U, the blocked
 * kernels' reordered weights) in the weights cache and use it on the next call instead of
 * preparing it again -- at batch 1 that was a third of an exported ResNet-20's time.
 * Nothing has to be told when the weights change: an entry is keyed by the weights'
 * address, the layer's shape and the instruction set, and checked against a 2048-bit
 * digest of the weights' bits on every call (one read of w; a change of any one float is
 * always seen, several changes go unseen with probability about 2^-64; wcache.c).  The
 * cache holds at most sal_conv_cache_limit bytes (default 64 MiB, or the environment's
 * SAL_CONV_CACHE_MB, read once; 0: off), freeing the least recently used entries; it is
 * shared by the process's threads (a mutex, never held while weights are prepared).
 *
 * moments, when not NULL, receives per output channel the mean and the biased variance of
 * the finished y over N*Ho*Wo (what a training BN that reads y needs: sal_bn_desc.moments).
 * Winograd and the blocked kernels gather them from each block they have just written,
 * while it is in the cache, instead of a pass over y: per image (or part of one) and
 * channel, then merged in image order, so that the moments do not depend on the threads
 * when the blocks hold whole images.  The other kernels make one pass over y. */
typedef struct {
    const float *bias;   /* (O), or NULL */
    const float *res;    /* (N, O, Ho, Wo) in y's layout, not y itself; or NULL */
    int relu;            /* 0 or 1 */
    int res_post;        /* 0: y = relu(conv + bias + res); 1: y = relu(conv + bias) + res */
    int reuse;           /* 0 or 1: keep the prepared weights in the weights cache */
    double *moments;     /* (2 O): mean, variance of channel o at 2o, 2o + 1; or NULL */
} sal_conv_epi;

sal_status sal_conv_fwd_epi(float *y, const float *x, const float *w, const sal_conv_epi *epi,
                            const sal_conv_desc *d, float *scratch);

typedef struct {
    int64_t limit, bytes, entries;   /* bytes the cache may hold, holds; entries */
    int64_t hits, misses;            /* lookups since the last clear */
} sal_conv_cache_info;
/* bytes in [0, 2^50]: the most the cache holds (0: off; lowering it frees entries) */
sal_status sal_conv_cache_limit(int64_t bytes);
void sal_conv_cache_stats(sal_conv_cache_info *info);
/* frees every entry no call is using, and zeroes the counts */
void sal_conv_cache_clear(void);
/* the cache's digest of nw floats (32 lanes of 64 bits, defined in ref/wcache_ref.c) as
 * the current ISA computes it, and its scalar twin: for tests */
#define SAL_CONV_DIGEST_LANES 32
void sal_conv_cache_digest(const float *w, int64_t nw, uint64_t out[SAL_CONV_DIGEST_LANES]);
void sal_ref_conv_cache_digest(const float *w, int64_t nw,
                               uint64_t out[SAL_CONV_DIGEST_LANES]);

/* ---- algorithm of each pass ------------------------------------------------
 * sal_conv_fwd / sal_conv_bwd choose per pass among
 *   "gemm1x1"      1x1 / stride 1 / no padding: the convolution is one GEMM, no copy
 *   "winograd4x4"  3x3 / stride 1 / padding 1: Winograd F(4x4, 3x3) (4x fewer multiplies)
 *   "direct3x3"    3x3 / stride 1 / padding 1: direct kernel (few channels: the stem)
 *   "blocked-direct"  channel-blocked direct kernels: 3x3 / stride 2 / padding 1, the
 *                  weight gradient of 1x1 / stride 2, and the weight gradient of a 3x3 /
 *                  stride 1 stem with at most 4 input channels
 *   "im2col-gemm"  everything else: a column matrix of B images, one GEMM
 * The passes of one layer may differ (e.g. a 1x1 / stride 2 shortcut: "im2col-gemm"
 * forward and input gradient, "blocked-direct" weight gradient).  Winograd's results
 * differ from the direct convolution's by about 1e-6 relative (at most 1e-5 of the largest
 * value; the direct kernels: ~2e-7).
 * by a rule measured on the machines we had (conv.c explains it).  The environment
 * variable SAL_CONV_ALGO=auto|winograd|direct|im2col (read once), or sal_conv_set_algo,
 * forces a family where it applies (tests and benchmarks compare them so); scratch from
 * sal_conv_scratch fits every choice. */
typedef enum {
    SAL_CONV_FORWARD = 0,       /* y from x */
    SAL_CONV_INPUT_GRAD = 1,    /* dx from dy */
    SAL_CONV_WEIGHT_GRAD = 2    /* dw from dy and x */
} sal_conv_pass;

/* the algorithm name of a pass ("winograd4x4", ...); NULL for an invalid descriptor or pass */
const char *sal_conv_algo(const sal_conv_desc *d, int pass);
/* name NULL or "auto": the rule; "winograd", "direct", "im2col": that family wherever it
 * applies (the others elsewhere).  SAL_EINVAL for another name. */
sal_status sal_conv_set_algo(const char *name);
const char *sal_conv_get_algo(void);   /* "auto", "winograd", "direct" or "im2col" */

/* naive reference kernels, always built; float and double twins (tests, grad checks) */
sal_status sal_ref_conv_fwd(float *y, const float *x, const float *w, const sal_conv_desc *d);
sal_status sal_ref_conv_bwd(float *dx, float *dw, const float *dy, const float *x,
                            const float *w, const sal_conv_desc *d);
sal_status sal_ref_conv_fwd_f64(double *y, const double *x, const double *w, const sal_conv_desc *d);
sal_status sal_ref_conv_bwd_f64(double *dx, double *dw, const double *dy, const double *x,
                                const double *w, const sal_conv_desc *d);

/* Winograd F(4x4, 3x3) written as plain loops (3x3 / stride 1 / padding 1 only), float and
 * double: the fast kernels' twin.  In double it equals the direct convolution to rounding,
 * which checks the transform matrices; in float it shows the method's own error. */
sal_status sal_ref_wino_fwd(float *y, const float *x, const float *w, const sal_conv_desc *d);
sal_status sal_ref_wino_bwd(float *dx, float *dw, const float *dy, const float *x,
                            const float *w, const sal_conv_desc *d);
sal_status sal_ref_wino_fwd_f64(double *y, const double *x, const double *w,
                                const sal_conv_desc *d);
sal_status sal_ref_wino_bwd_f64(double *dx, double *dw, const double *dy, const double *x,
                                const double *w, const sal_conv_desc *d);

#ifdef __cplusplus
}
#endif
#endif
