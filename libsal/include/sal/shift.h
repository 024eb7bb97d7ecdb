/* The SL shift of Wu et al. (CVPR 2018) and the shift geometry that ASL shares,
 * forward and backward, with naive reference twins.  Definitions: DESIGN.md section 1.2.
 * Conventions: see core.h.  ASL: sal/active_shift.h; SAL: sal/attention.h. */
#ifndef SAL_SHIFT_H
#define SAL_SHIFT_H

#include "sal/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- shift geometry (SL and ASL) ------------------------------------------------ */
typedef struct {
    sal_act x;          /* input (N, C, H, W), either layout */
    int64_t stride;     /* S >= 1: subsampling after the shift */
} sal_shift_desc;

/* fills *y with the output geometry (N, C, Ho, Wo), Ho = (H-1)/S + 1, same layout as x */
sal_status sal_shift_check(const sal_shift_desc *d, sal_act *y);

/* ---- SL: integer shift ---------------------------------------------------------- */
/* y (N,C,Ho,Wo): y[n,c,Y,X] = x (N,C,H,W) [n, c, S*Y + off[c,0], S*X + off[c,1]], 0 outside.
 * off (C,2) int32 = (dy, dx), any magnitude.  No memory besides y is touched. */
sal_status sal_shift_fwd(float *y, const float *x, const int32_t *off, const sal_shift_desc *d);
/* dx (N,C,H,W) += shift^T(dy (N,C,Ho,Wo)), the exact adjoint of sal_shift_fwd */
sal_status sal_shift_bwd(float *dx, const float *dy, const int32_t *off, const sal_shift_desc *d);
/* The same with rows (Co, 3) int32 = (src, dy, dx): output channel c is input channel src_c
 * shifted (a layer may drop or reorder channels: the exported shift of shared SAL).
 * y (N,Co,Ho,Wo) from x (N,C,H,W); every src in [0, C). */
sal_status sal_shift_rows_fwd(float *y, const float *x, const int32_t *rows, int64_t co,
                              const sal_shift_desc *d);
/* dx (N,C,H,W) += the adjoint, for rows (C, 3) whose sources are the identity (src_c = c) */
sal_status sal_shift_rows_bwd(float *dx, const float *dy, const int32_t *rows,
                              const sal_shift_desc *d);
/* off (C,2): the fixed 3x3 assignment of Wu et al.: for c < 9*(C/9), dx = c%3 - 1,
 * dy = (c/3)%3 - 1; the last C%9 channels get (0, 0) */
sal_status sal_shift_default_offsets(int32_t *off, int64_t c);

/* ---- naive reference kernels, always built; float and double twins ---------------- */
sal_status sal_ref_shift_fwd(float *y, const float *x, const int32_t *off, const sal_shift_desc *d);
sal_status sal_ref_shift_bwd(float *dx, const float *dy, const int32_t *off, const sal_shift_desc *d);
sal_status sal_ref_shift_fwd_f64(double *y, const double *x, const int32_t *off,
                                 const sal_shift_desc *d);
sal_status sal_ref_shift_bwd_f64(double *dx, const double *dy, const int32_t *off,
                                 const sal_shift_desc *d);

#ifdef __cplusplus
}
#endif
#endif
