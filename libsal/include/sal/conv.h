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
