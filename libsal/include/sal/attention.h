/* The Shift Attention Layer (SAL; Boukli Hacene et al., arXiv 1905.12300): a 3x3
 * convolution whose kernel slices carry an attention over their 9 positions, forward and
 * backward, with naive reference twins (sal.c, ref/shift_ref.c).  Definitions: DESIGN.md
 * section 1.4.  Conventions: see core.h. */
#ifndef SAL_ATTENTION_H
#define SAL_ATTENTION_H

#include "sal/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- SAL: shift attention layer (3x3, padding 1) ---------------------------------- */
typedef struct {
    sal_act x;          /* input (N, C, H, W), either layout */
    int64_t o;          /* O outputs: weights (O, C, 3, 3) */
    int64_t stride;     /* S >= 1 */
    int64_t pad;        /* P: must be 1 (= K/2) */
    int shared;         /* 0: logits (O, C, 9), one distribution per slice (o, c);
                           1: logits (1, C, 9), broadcast over the outputs */
    int hard;           /* 1: p <- (p > 0.5): one-hot or an all-zero slice */
    double beta;        /* inverse temperature: finite, >= 0 */
    const float *mask;  /* NULL (every position allowed), or (O|1, C, 9) like the logits:
                           1 = position allowed, 0 = pruned; every slice keeps >= 1.
                           See "Masks" below. */
    int threads;        /* as sal_conv_desc.threads (0: the current thread count) */
} sal_sal_desc;

/* Masks (stepwise hard pruning).  A slice with allowed set S (n = |S| >= 1) is a SAL
 * slice restricted to S: mean and unbiased std over the logits in S only,
 * s = sqrt(sum_{q in S} (a_q - mean_S)^2 / (n - 1)), p = softmax over S of beta*a/s,
 * p_q = 0 outside S (so W_eff is 0 there and w, a get no loss gradient there).  n = 1:
 * p = 1 at the one allowed position (s is undefined; the slice is a fixed shift).
 * s = 0 or beta = 0: uniform 1/n over S.  n = 2: the normalised logits are always
 * +-1/sqrt(2) apart, p depends only on which of the two is larger and dL/da = 0 (the
 * backward sets it so exactly).  Hard mode thresholds this p.  The std over S
 * (not over all 9) keeps a slice with fewer positions a SAL slice of smaller support:
 * the pruned (lowest) logits no longer inflate s and cool the softmax.  An all-ones mask
 * computes bit for bit what mask = NULL computes.  Mask values must be exactly 0 or 1. */

/* fills *y with the output geometry (N, O, Ho, Wo), same layout as x */
sal_status sal_sal_check(const sal_sal_desc *d, sal_act *y);
/* floats of scratch that sal_sal_fwd and sal_sal_bwd need */
size_t sal_sal_scratch(const sal_sal_desc *d);

/* p (L,9) = softmax(beta * a / std(a)) per row of a (L,9): unbiased std over the 9
 * entries, no mean subtraction; std = 0 or beta = 0 gives the uniform 1/9; the max is
 * subtracted before exp.  hard: p <- (p > 0.5).  a must be finite. */
sal_status sal_attn_probs(float *p, const float *a, int64_t l, double beta, int hard);
/* the same restricted to a mask m (L,9) of allowed positions (NULL: all); see "Masks" */
sal_status sal_attn_probs_masked(float *p, const float *a, const float *m, int64_t l,
                                 double beta, int hard);

/* y (N,O,Ho,Wo) = conv(x (N,C,H,W), p (O|1,C,3,3) * w (O,C,3,3), stride S, padding 1),
 * p from logits a (O|1, C, 9); scratch: sal_sal_scratch(d) floats */
sal_status sal_sal_fwd(float *y, const float *x, const float *w, const float *a,
                       const sal_sal_desc *d, float *scratch);
/* dx (N,C,H,W) += dL/dx, dw (O,C,3,3) += dL/dw, da (O|1,C,9) += dL/da, given
 * dy (N,O,Ho,Wo); any gradient may be NULL.  hard mode: da gets nothing (the
 * threshold has zero derivative) and dw = p_hard * dL/dW_eff. */
sal_status sal_sal_bwd(float *dx, float *dw, float *da, const float *dy, const float *x,
                       const float *w, const float *a, const sal_sal_desc *d, float *scratch);

/* ---- naive reference kernels, always built; float and double twins ---------------- */
/* The SAL references allocate their own temporaries (SAL_ENOMEM when that fails) and
 * differentiate through the full softmax and std Jacobians, not the simplified formula. */
sal_status sal_ref_attn_probs(float *p, const float *a, int64_t l, double beta, int hard);
sal_status sal_ref_attn_probs_f64(double *p, const double *a, int64_t l, double beta, int hard);
sal_status sal_ref_attn_probs_masked(float *p, const float *a, const float *m, int64_t l,
                                     double beta, int hard);
sal_status sal_ref_attn_probs_masked_f64(double *p, const double *a, const float *m, int64_t l,
                                         double beta, int hard);
sal_status sal_ref_sal_fwd(float *y, const float *x, const float *w, const float *a,
                           const sal_sal_desc *d);
sal_status sal_ref_sal_bwd(float *dx, float *dw, float *da, const float *dy, const float *x,
                           const float *w, const float *a, const sal_sal_desc *d);
sal_status sal_ref_sal_fwd_f64(double *y, const double *x, const double *w, const double *a,
                               const sal_sal_desc *d);
sal_status sal_ref_sal_bwd_f64(double *dx, double *dw, double *da, const double *dy,
                               const double *x, const double *w, const double *a,
                               const sal_sal_desc *d);


#ifdef __cplusplus
}
#endif
#endif
