/* GATHER: a binarised unshared SAL layer (the exported form, DESIGN.md 1.4), forward only.
 *
 * A list of kept pairs (o, i, dy, dx), |dy|, |dx| <= 1, one weight each:
 *   y[o, Y, X] = epi(sum over the pairs of o: w * x[i, S*Y + dy, S*X + dx])    (0 outside)
 * with the epilogue of sal/net.h (+ bias, + residual before or after the ReLU, ReLU).
 * Letters: N batch, C input channels, O outputs, H, W input and Ho, Wo output sizes,
 * Ho = (H - 1)/S + 1. */
#ifndef SAL_GATHER_H
#define SAL_GATHER_H

#include "sal/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    sal_act x;              /* input (N, C, H, W), channel-major (SAL_CNHW) */
    int64_t o;              /* O outputs */
    int64_t stride;         /* S >= 1, at most max(H, W) + 2 (the padded input) */
    const int32_t *pairs;   /* (npair, 4) rows (o, i, dy, dx), sorted by o */
    int64_t npair;
    int threads;            /* as sal_conv_desc.threads (0: the current thread count) */
} sal_gather_desc;

/* every pair in range and sorted; fills *y with the output geometry (N, O, Ho, Wo) CNHW */
sal_status sal_gather_check(const sal_gather_desc *d, sal_act *y);
/* floats of scratch sal_gather_fwd needs; SIZE_MAX when it does not fit */
size_t sal_gather_scratch(const sal_gather_desc *d);
/* y (O, N, Ho, Wo) = epi(GATHER(x (C, N, H, W))): w (npair), bias (O) or NULL, res
 * (O, N, Ho, Wo) or NULL, relu, res_post as sal/net.h's epilogue */
sal_status sal_gather_fwd(float *y, const float *x, const float *w, const float *bias,
                          const float *res, int relu, int res_post, const sal_gather_desc *d,
                          float *scratch);

/* naive reference, always built: y (N,O,Ho,Wo) in x's layout (either), no epilogue but the
 * bias (NULL: none); pairs (npair, 4), w (npair) */
sal_status sal_ref_gather_fwd(float *y, const float *x, sal_act xa, int64_t o, int64_t stride,
                              const int32_t *pairs, const float *w, int64_t npair,
                              const float *bias);

#ifdef __cplusplus
}
#endif
#endif
