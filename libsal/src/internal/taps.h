/* Private interface of the sparse-tap kernels (taps.c; the scalar twins in ref/taps_ref.c)
 * used by sal.c (training) and by the exported network's GATHER (sal/taps.h).
 *
 * A "chunk" is a block of rows of one image's output grid.  Its buffer holds, for every
 * source channel ch and every copy k of the source that some tap reads, the plane
 *     buf[(ch * ncopy + k) * cstride + rr * Wg + c]
 *         = src[ch][S*(Y0 - 1 + rr) + a_k][S*(c + co_k) + b_k]
 * (0 outside the source), rows rr = 0 .. rows + 1 (one halo row above and below), then
 * zeroed slack.  An entry (a kept tap) of output row k is a weight and the offset of its
 * plane's first row, so that output position p (row p / Wg of the chunk, column p % Wg)
 * reads buf[off + p]: the tap's shift is folded into the offset, every load is contiguous,
 * and with Wg a multiple of the vector width every load is aligned. */
#ifndef SAL_TAPS_INTERNAL_H
#define SAL_TAPS_INTERNAL_H

#include "internal/internal.h"
#include "sal/attention.h"

enum { TAPS_EPI_STORE = 0, TAPS_EPI_ACC = 1, TAPS_EPI_DEPLOY = 2 };

/* dst row k [0, npos) (= or +=, or the deployment epilogue) = sum over the entries e of
 * row k of w[e] * buf[off[e] + p], for the rows k in [k0, k1) of one chunk.  A row's
 * entries come in nb blocks by source channel: the kernels run block by block over a
 * tile, so that a block's planes stay in L1. */
typedef struct {
    const float *buf;        /* the chunk buffer */
    int64_t npos;            /* output positions of the chunk (rows * Wg) */
    const int64_t *rowptr;   /* row k, block b: entries [rowptr[k*nb + b], rowptr[k*nb + b + 1]) */
    int64_t nb;              /* blocks per row, >= 1 */
    const int64_t *off;      /* per entry: offset of its source in buf */
    const float *w;          /* per entry: its weight */
    int64_t k0, k1;
    float *dst;              /* row k at dst + (k - k0) * dstride, npos contiguous floats */
    int64_t dstride;
    int mode;                /* TAPS_EPI_* */
    const float *bias;       /* DEPLOY: bias[k] (NULL: 0) */
    const float *res;        /* DEPLOY: res + (k - k0) * dstride like dst (NULL: none) */
    int relu, res_post;      /* DEPLOY: as sal/infer.h's epilogue */
    float *tmp;              /* thread-local, >= npos + TAPS_TMAX floats */
    float *part;             /* thread-local, >= (k1 - k0) * TAPS_TMAX floats when nb > 1 */
} taps_fwd_job;

/* g[e] += sum_m sum_p dy[k][m][p] * buf[off[e] + m * bis + p] for the entries e of the rows
 * k in [k0, k1): the weight gradient at the kept taps (a sampled product) */
typedef struct {
    const float *buf;
    int64_t npos;            /* positions per image */
    int64_t nimg, bis;       /* images (their planes bis floats apart in buf) */
    const int64_t *rowptr;   /* as in taps_fwd_job */
    int64_t nb;
    const int64_t *off;
    int64_t k0, k1;
    const float *dy;         /* row k, image m at dy + k * dystride + m * dyis, npos floats */
    int64_t dystride, dyis;
    float *g;                /* per entry, accumulated */
    float *accv;             /* thread-local, >= (most entries of a block) * TAPS_VMAX floats */
    float *tmp;              /* thread-local, >= npos + TAPS_TMAX floats */
} taps_sddmm_job;

#define TAPS_VMAX 16    /* the widest vector (floats) */
#define TAPS_TMAX 256   /* the largest tile (floats): slack after every plane */

typedef void (*taps_fwd_fn)(const taps_fwd_job *j);
typedef void (*taps_sddmm_fn)(const taps_sddmm_job *j);

/* the scalar reference twins (ref/taps_ref.c): the SAL_ISA_BASE entries of the table */
void sal_ref_taps_fwd(const taps_fwd_job *j);
void sal_ref_taps_sddmm(const taps_sddmm_job *j);

/* Direct kernels (stride 1, training): no copies.  The source is read in place, one
 * segment of whole rows per call: rows r = 0 .. nrows-1 of width w of every source channel
 * ch at src + ch * ssc + r * w (the images of a CNHW chunk follow each other; row r is row
 * r % h of its image).  An entry of row k is a source channel and a tap q = (dy+1)*3 + dx+1
 * with off = ch * ssc + dy * w: output position (r, c) reads src[off + r * w + c + dx] when
 * 0 <= r % h + dy < h and 0 <= c + dx < w, else 0.  The kernels load whole aligned rows
 * and make the column shift in registers (a lane rotation with the edge lane zeroed); a row
 * outside the image reads a row of zeros.
 *   forward:  dst row k (nrows * w floats) = (STORE, STREAM: non-temporal) or += (ACC)
 *             sum over the entries e of row k of w[e] * (the shifted source);
 *   sddmm:    g[e] += sum over the positions of dy row k * (the shifted source), entry e of
 *             row k (accv: per entry TAPS_VMAX floats of scratch). */
enum { TAPS_EPI_STREAM = 3 };
typedef struct {
    const float *src;
    int64_t ssc, w, h, nrows;
    const int64_t *rowptr;   /* row k: entries [rowptr[k], rowptr[k + 1]) */
    const int64_t *off;      /* per entry: ch * ssc + dy * w */
    const uint8_t *tap;      /* per entry: q */
    const float *wt;         /* forward: per entry its weight */
    int64_t k0, k1;
    float *dst;              /* forward: row k at dst + (k - k0) * dstride */
    int64_t dstride;
    int mode;                /* TAPS_EPI_STORE, TAPS_EPI_STREAM or TAPS_EPI_ACC */
    const float *dy;         /* sddmm: row k at dy + (k - k0) * dystride */
    int64_t dystride;
    float *g;                /* sddmm: per entry, accumulated */
    float *accv;             /* sddmm: >= (most entries of a row) * TAPS_VMAX floats */
} tapd_job;
typedef void (*tapd_fn)(const tapd_job *j);
void sal_ref_tapd_fwd(const tapd_job *j);
void sal_ref_tapd_sddmm(const tapd_job *j);

/* ---- training (sal.c) ----------------------------------------------------------------- */
/* floats of scratch the sparse paths need (beyond sal.c's p, W_eff, g, kept) */
size_t sal_taps_scratch(const sal_sal_desc *d);
/* 1 when the layer's sparse path runs on the direct kernels (stride 1, row width 16, 32 or
 * 64, an ISA that has them, the sources a, b, c 64-byte aligned; NULL: none): the forward
 * passes (x, NULL, NULL), the backward (x, dy, NULL) */
int sal_taps_direct(const sal_sal_desc *d, const float *a, const float *b, const float *c);
/* 1 when the sparse path is expected to be faster than the dense one for a layer with
 * nkept kept (slice, tap) pairs (per output channel for unshared: the sum over o), for the
 * forward (bwd = 0) or the backward (bwd = 1), on the direct kernels (direct = 1) or not */
int sal_taps_pays(const sal_sal_desc *d, int64_t nkept, int bwd, int direct);
/* y = the SAL convolution over the kept taps; kept (L) 9-bit masks, weff (O,C,9) */
sal_status sal_taps_fwd(float *y, const float *x, const float *weff, const uint16_t *kept,
                        const sal_sal_desc *d, float *scratch);
/* dx += dL/dx over the kept taps (dx may be NULL); g (O,C,9) += dL/dW_eff at the kept
 * taps (g may be NULL; the other entries untouched) */
sal_status sal_taps_bwd(float *dx, float *g, const float *dy, const float *x, const float *weff,
                        const uint16_t *kept, const sal_sal_desc *d, float *scratch);

#endif
