/* Shifted-row GEMM: a shift (SL, rounded ASL, shared SAL) and the 1x1 convolution that
 * reads it, as one kernel, with the folded-BN bias, the ReLU and the residual add fused
 * into the pass that writes the output.  Conventions: see core.h.
 *
 * Rows.  Row r of the shifted input X~ is input channel src_r moved by (dy_r, dx_r) and
 * subsampled with the stride S:
 *   X~[r][n, Y, X] = x[n, src_r, S*Y + dy_r, S*X + dx_r]        (0 outside the image),
 *   y[n, o, Y, X]  = epi(sum_r w[o, r] * X~[r][n, Y, X]),
 * rows (R, 3) int32 = (src, dy, dx): any offsets (a shift beyond the image reads zeros), a
 * channel may appear in several rows (the taps of sparse SAL training) or in none.  The
 * shift + 1x1 pair of an exported network is the case of one row per kept channel; a
 * plain 1x1 convolution with stride S is rows (c, 0, 0) for every c.
 *
 * Epilogue, per output channel o (as sal/infer.h's CONV and GATHER):
 *   v = acc + bias[o];  res and !res_post: v += res;  relu: v = max(v, 0);
 *   res and res_post: v += res.
 *
 * No shifted copy is made: the kernel reads X~ straight from x, a row's vector of
 * consecutive outputs being one masked load at a per-row offset (CNHW: the positions
 * (n, Y, X) of a channel are one run over the batch), and each load feeds a block of
 * output channels held in registers.  Stride S > 1 first lays out the S*S phases of the
 * channels the rows read (a copy of their used part, in scratch), then runs as stride 1. */
#ifndef SAL_SHIFTCONV_H
#define SAL_SHIFTCONV_H

#include "sal/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    sal_act x;             /* input (N, C, H, W), SAL_CNHW or SAL_NCHW */
    int64_t o;             /* O output channels: w (O, R) */
    int64_t r;             /* R rows */
    const int32_t *rows;   /* (R, 3) int32: (src, dy, dx), src in [0, C) */
    int64_t stride;        /* S >= 1 */
    int threads;           /* threads the call may use and its scratch is sized for;
                              0: sal_get_num_threads() at the time of each call */
    int mode;              /* SAL_SHIFTCONV_AUTO (0), _DIRECT or _PANEL: see below */
} sal_shiftconv_desc;

/* How the kernel reads x.  DIRECT: in place, one masked load per row and vector of
 * outputs (stride S > 1: from the S*S phase planes laid out in scratch first); fastest
 * while the planes the rows read fit the L2 cache.  PANEL: each thread copies the rows of
 * a block of positions into a panel (rows an odd number of cache lines apart; S > 1:
 * gathered with the stride) and runs the same kernel on it: for inputs beyond the cache,
 * whose channel planes, often a power of two apart, would all compete for the same cache
 * sets.  AUTO picks by the size of the planes read.  The results are the same. */
enum { SAL_SHIFTCONV_AUTO = 0, SAL_SHIFTCONV_DIRECT = 1, SAL_SHIFTCONV_PANEL = 2 };

/* The fused epilogue: every field may be 0 / NULL (then y = W X~) */
typedef struct {
    const float *bias;     /* (O) or NULL */
    const float *res;      /* y's shape and layout, or NULL */
    int relu;              /* 0 or 1 */
    int res_post;          /* 1: res is added after the ReLU (the SL block) */
} sal_shiftconv_epi;

/* fills *y with the output geometry (N, O, Ho, Wo), Ho = (H-1)/S + 1, x's layout; checks
 * every row */
sal_status sal_shiftconv_check(const sal_shiftconv_desc *d, sal_act *y);
/* floats; never less for a larger batch N (all else equal), so one scratch sized for the
 * largest batch serves every smaller one */
size_t sal_shiftconv_scratch(const sal_shiftconv_desc *d);

/* y (N,O,Ho,Wo) = epi(w (O,R) . X~ (R, N*Ho*Wo)); epi may be NULL; y must not overlap x
 * or res.  scratch: sal_shiftconv_scratch(d) floats */
sal_status sal_shiftconv_fwd(float *y, const float *x, const float *w,
                             const sal_shiftconv_epi *epi, const sal_shiftconv_desc *d,
                             float *scratch);

/* Backward of y = w . X~ (the epilogue's own gradients are the caller's):
 * dx (N,C,H,W) += X~^T-scatter of w^T dy, dw (O,R) += dy X~^T, either may be NULL.
 * scratch: sal_shiftconv_bwd_scratch(d) floats */
size_t sal_shiftconv_bwd_scratch(const sal_shiftconv_desc *d);
sal_status sal_shiftconv_bwd(float *dx, float *dw, const float *dy, const float *x,
                             const float *w, const sal_shiftconv_desc *d, float *scratch);

/* naive reference kernels, always built; float and double twins (tests, grad checks) */
sal_status sal_ref_shiftconv_fwd(float *y, const float *x, const float *w,
                                 const sal_shiftconv_epi *epi, const sal_shiftconv_desc *d);
sal_status sal_ref_shiftconv_bwd(float *dx, float *dw, const float *dy, const float *x,
                                 const float *w, const sal_shiftconv_desc *d);
/* the double twins take a double epilogue: bias and res as double */
sal_status sal_ref_shiftconv_fwd_f64(double *y, const double *x, const double *w,
                                     const double *bias, const double *res, int relu,
                                     int res_post, const sal_shiftconv_desc *d);
sal_status sal_ref_shiftconv_bwd_f64(double *dx, double *dw, const double *dy,
                                     const double *x, const double *w,
                                     const sal_shiftconv_desc *d);

#ifdef __cplusplus
}
#endif
#endif
