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
    double tap_threshold; /* 0: every call runs the dense 3x3 convolution (bit for bit the
                           path before this field existed); t in (0, 1]: taps with
                           p < t * p_max of their slice are skipped ("Sparse taps" below);
                           SAL_TAP_THRESHOLD_DEFAULT is the exact choice.  A positional
                           initialiser without it gets 0. */
    double *moments;    /* forward: (2 O) the mean and biased variance of each channel of y,
                           as sal_conv_epi.moments (gathered while the dense path writes y,
                           a pass over y after the sparse one); NULL: none.  Last field. */
} sal_sal_desc;

/* Sparse taps (issue 19).  Once beta has grown, most of a slice's softmax weights are
 * zero to float32 precision; with tap_threshold t > 0 every call recomputes, from the
 * logits, beta and the mask, the KEPT taps of each slice,
 *     K = {q : p_q > 0 and p_q >= t * p_max}        (p_max = max_q p_q; masked: p_q = 0),
 * in the same pass that computes p (a compare per tap), and runs the convolution, its
 * input gradient and its weight gradient over the kept taps only (libsal/src/taps.c).
 *
 * The default, t = 2^-27 = u / 8 with u = 2^-24 the unit roundoff of float32:
 * at most 8 of a slice's 9 taps are skipped, each has p_q < t * p_max, so the skipped
 * weight sum_{q not in K} p_q < 8 t p_max = u * p_max.  The output a slice contributes,
 * sum_q p_q w_q x_q, then changes by less than u * p_max * max_q |w_q x_q|: less than the
 * rounding error of storing the largest single term p_max w x in float32.  Skipping thus
 * changes the slice's effective kernel W_eff = p * w by less than rounding it to float32
 * already does, and the result agrees with the dense path to float32 rounding (the order
 * of the additions differs, as between any two convolution algorithms).
 *
 * The logit gradient keeps the std term exactly: v_q = p_q (u_q - sum_k p_k u_k) is
 * formed over the kept taps (v_q = 0 for a skipped q, whose p_q is below float32
 * resolution next to p_max; u_q = w_q dL/dW_eff,q is never computed there), and then
 * dL/da_i = (beta/s) [v_i - (sum_j v_j a_j)(a_i - abar) / ((n-1) s^2)] for ALL nine i,
 * so a skipped logit still gets its std-term gradient.  (For a slice with one kept tap the
 * whole logit gradient is of the order of the skipped weight, u * p_max * |u_q| * beta/s,
 * and is computed to that absolute accuracy.)
 *
 * A layer whose kept taps are dense enough runs the dense path instead (all nine taps,
 * the full p): the choice is by the measured cost of the two paths (taps.c, "Crossover").
 * Hard mode: K = {q : p_hard = 1}, exact.  t = 1 keeps the largest taps only (ties kept);
 * t > 1 would drop the largest tap and is refused, as are negative, NaN and infinite t. */
#define SAL_TAP_THRESHOLD_DEFAULT 7.450580596923828125e-9   /* 2^-27 */

/* Which path a call with tap_threshold > 0 takes: "auto" (by measured cost, the default),
 * "sparse" or "dense" (always), process-wide; for tests and benchmarks, like sal_set_isa.
 * Returns SAL_EINVAL for another name. */
sal_status sal_set_taps_path(const char *name);
const char *sal_get_taps_path(void);

/* Masks (stepwise hard pruning, salnp's extension: the paper anneals beta only).  A
 * slice with allowed set S (n = |S| >= 1): s = the unbiased std of ALL 9 logits (as
 * without a mask), p = softmax over S of beta*a/s, p_q = 0 outside S (so W_eff is 0
 * there and w gets no gradient there).  n = 1: p = 1 at the one allowed position (a fixed
 * shift).  s = 0 or beta = 0: uniform 1/n over S.  Hard mode thresholds this p.
 * Keeping s over all 9 makes a prune step change only which positions compete, not the
 * temperature, and leaves the 2-position stage learning (p depends on (a1 - a2)/s); the
 * earlier rule (mean and std over S) froze it: with n = 2 the normalised logits are always
 * +-1/sqrt(2) apart, so p was constant and dL/da = 0.  Pruned logits get a gradient
 * through s only.  An all-ones mask
 * computes bit for bit what mask = NULL computes.  Mask values must be exactly 0 or 1. */

/* fills *y with the output geometry (N, O, Ho, Wo), same layout as x */
sal_status sal_sal_check(const sal_sal_desc *d, sal_act *y);
/* SAL_EINVAL unless t is a valid tap_threshold (finite, 0 <= t <= 1) */
sal_status sal_tap_threshold_check(const char *fn, double t);
/* floats of scratch that sal_sal_fwd and sal_sal_bwd need */
size_t sal_sal_scratch(const sal_sal_desc *d);

/* p (L,9) = softmax(beta * a / std(a)) per row of a (L,9): unbiased std over the 9
 * entries, no mean subtraction; std = 0 or beta = 0 gives the uniform 1/9; the max is
 * subtracted before exp.  hard: p <- (p > 0.5).  a must be finite. */
sal_status sal_attn_probs(float *p, const float *a, int64_t l, double beta, int hard);
/* the same restricted to a mask m (L,9) of allowed positions (NULL: all); see "Masks" */
sal_status sal_attn_probs_masked(float *p, const float *a, const float *m, int64_t l,
                                 double beta, int hard);
/* kept (L,9) = 1 where tap q of slice l is kept at threshold t > 0 (see "Sparse taps"),
 * else 0; m: mask (L,9) or NULL.  Returns the number of kept taps in *nkept (may be NULL). */
sal_status sal_attn_kept(uint8_t *kept, const float *a, const float *m, int64_t l, double beta,
                         int hard, double t, int64_t *nkept);

/* y (N,O,Ho,Wo) = conv(x (N,C,H,W), p (O|1,C,3,3) * w (O,C,3,3), stride S, padding 1),
 * p from logits a (O|1, C, 9); scratch: sal_sal_scratch(d) floats */
sal_status sal_sal_fwd(float *y, const float *x, const float *w, const float *a,
                       const sal_sal_desc *d, float *scratch);
/* dx (N,C,H,W) += dL/dx, dw (O,C,3,3) += dL/dw, da (O|1,C,9) += dL/da, given
 * dy (N,O,Ho,Wo); any gradient may be NULL.  hard mode: da gets nothing (the
 * threshold has zero derivative) and dw = p_hard * dL/dW_eff. */
sal_status sal_sal_bwd(float *dx, float *dw, float *da, const float *dy, const float *x,
                       const float *w, const float *a, const sal_sal_desc *d, float *scratch);
/* the same, but dx = dL/dx: written, whatever it held (dw and da still +=) */
sal_status sal_sal_bwd_assign(float *dx, float *dw, float *da, const float *dy, const float *x,
                              const float *w, const float *a, const sal_sal_desc *d,
                              float *scratch);

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
