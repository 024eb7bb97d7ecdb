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

/* naive reference kernels, always built; float and double twins (tests, grad checks) */
sal_status sal_ref_conv_fwd(float *y, const float *x, const float *w, const sal_conv_desc *d);
sal_status sal_ref_conv_bwd(float *dx, float *dw, const float *dy, const float *x,
                            const float *w, const sal_conv_desc *d);
sal_status sal_ref_conv_fwd_f64(double *y, const double *x, const double *w, const sal_conv_desc *d);
sal_status sal_ref_conv_bwd_f64(double *dx, double *dw, const double *dy, const double *x,
                                const double *w, const sal_conv_desc *d);

#ifdef __cplusplus
}
#endif
#endif
