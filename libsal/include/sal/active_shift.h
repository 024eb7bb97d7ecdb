/* The active (bilinear) shift of Jeon & Kim (ASL, NeurIPS 2018), forward and backward,
 * with naive reference twins (active_shift.c, ref/shift_ref.c).  Definitions: DESIGN.md
 * section 1.3.  Conventions: see core.h. */
#ifndef SAL_ACTIVE_SHIFT_H
#define SAL_ACTIVE_SHIFT_H

#include "sal/core.h"
#include "sal/shift.h"  /* sal_shift_desc, sal_shift_check */

#ifdef __cplusplus
extern "C" {
#endif

/* ---- ASL: active (bilinear) shift ------------------------------------------------ */
/* y (N,C,Ho,Wo): y[n,c,Y,X] = bilinear sample of x (N,C,H,W) plane (n,c) at
 * (S*Y + off[c,0], S*X + off[c,1]) from its four integer neighbours, 0 outside.
 * off (C,2) float32 = (alpha, beta) = (dy, dx), finite.  Integer offsets give exactly
 * (bitwise) sal_shift_fwd. */
sal_status sal_ashift_fwd(float *y, const float *x, const float *off, const sal_shift_desc *d);
/* dx (N,C,H,W) += dL/dx, doff (C,2) += dL/doff (raw bilinear derivatives, the
 * right derivative at integer offsets), given dy (N,C,Ho,Wo); either may be NULL */
sal_status sal_ashift_bwd(float *dx, float *doff, const float *dy, const float *x,
                          const float *off, const sal_shift_desc *d);
/* doff (C,2): each channel's 2-vector scaled to unit length (zero vectors stay zero),
 * the normalisation the reference ASL training applies before its update */
sal_status sal_ashift_normalize_grad(float *doff, int64_t c);

/* ---- naive reference kernels, always built; float and double twins ---------------- */
sal_status sal_ref_ashift_fwd(float *y, const float *x, const float *off, const sal_shift_desc *d);
sal_status sal_ref_ashift_bwd(float *dx, float *doff, const float *dy, const float *x,
                              const float *off, const sal_shift_desc *d);
sal_status sal_ref_ashift_fwd_f64(double *y, const double *x, const double *off,
                                  const sal_shift_desc *d);
sal_status sal_ref_ashift_bwd_f64(double *dx, double *doff, const double *dy, const double *x,
                                  const double *off, const sal_shift_desc *d);

#ifdef __cplusplus
}
#endif
#endif
