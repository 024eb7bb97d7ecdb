/* SAL: the Shift Attention Layer (Boukli Hacene et al., ICPR 2020), training form.
 *
 * For every kernel slice (o, c) (shared: every input channel c) with logits a (9):
 *   s = std(a) (unbiased, no mean subtraction), p = softmax(beta * a / s)
 *   (s = 0 or beta = 0: p = 1/9; the max is subtracted before exp), hard: p <- (p > 0.5);
 *   with a mask (d->mask, stepwise pruning) s stays the std of all 9 logits and the
 *   softmax runs over the allowed positions only, p = 0 elsewhere (sal/attention.h, "Masks");
 *   W_eff[o,c,q] = p[o|0, c, q] * w[o,c,q];  y = conv3x3(x, W_eff, stride S, padding 1).
 * The convolution is sal_conv_fwd / sal_conv_bwd (Winograd at stride 1, the blocked direct
 * kernel at stride 2: conv.c's rule); the attention adds
 * O(O*C*9) work next to the O(N*Ho*Wo*O*C*9) of the convolution.
 *
 * Backward (DESIGN.md 1.4), with g = dL/dW_eff from sal_conv_bwd, n = 9, abar = mean(a):
 *   dL/dw_q = p_q g_q,   u_q = w_q g_q (shared: sum over o),
 *   v_q = p_q (u_q - sum_k p_k u_k),
 *   dL/da_i = (beta/s) [v_i - (sum_j v_j a_j) (a_i - abar) / ((n-1) s^2)].
 * Under a mask v_q = 0 at pruned positions; the formula holds as it is (n = 9: s is the
 * std of all 9 logits, so pruned logits still get the second term, through s).
 * s = 0 (p is constant there), one allowed position and hard mode (a step function)
 * give dL/da = 0.
 * The attention arithmetic runs in double per slice.
 *
 * Sparse taps (tap_threshold > 0, sal/attention.h): probs_row also returns the slice's kept
 * taps (a 9-bit mask); when the kept taps are sparse enough (sal_taps_pays) the convolution
 * and its gradients run over them only (taps.c), g is then 0 at the skipped taps and so is
 * v (the std term of dL/da still reaches every logit).
 *
 * Scratch (floats): [max(conv scratch, taps scratch) | p (L,9) | W_eff (O,C,9) | g (O,C,9) |
 * kept (L) 16-bit masks], L = O*C or C. */
#include <math.h>
#include <string.h>

#include "internal/internal.h"
#include "internal/taps.h"
#include "sal/attention.h"
#include "sal/conv.h"

#define SAL_KK 9              /* 3x3 kernel positions */
#define SAL_PAR_MIN 2048      /* slices below which the attention loops stay serial */

static sal_conv_desc sal_conv_of(const sal_sal_desc *d) {
    return (sal_conv_desc){d->x, d->o, 3, d->stride, d->pad, d->threads};
}
static int64_t sal_slices(const sal_sal_desc *d) { return d->shared ? d->x.c : d->o * d->x.c; }

sal_status sal_tap_threshold_check(const char *fn, double t) {
    if (!isfinite(t))
        return sal_fail(SAL_EINVAL, fn, "tap_threshold=%g: must be finite (0: dense, default "
                        "%g)", t, SAL_TAP_THRESHOLD_DEFAULT);
    SAL_REQUIRE(t >= 0.0, fn, "tap_threshold=%g: must be >= 0 (0: dense, default %g)", t,
                SAL_TAP_THRESHOLD_DEFAULT);
    SAL_REQUIRE(t <= 1.0, fn, "tap_threshold=%g: must be <= 1: a threshold above 1 would drop "
                "the largest tap of every slice (p_q >= t * p_max keeps it)", t);
    return SAL_OK;
}

static sal_status beta_check(const char *fn, double beta) {
    if (!isfinite(beta))
        return sal_fail(SAL_ENONFINITE, fn, "beta=%g: must be finite", beta);
    SAL_REQUIRE(beta >= 0.0, fn, "beta=%g: must be >= 0", beta);
    return SAL_OK;
}

sal_status sal_sal_check(const sal_sal_desc *d, sal_act *y) {
    const char *fn = "sal_sal";
    SAL_REQUIRE(d != NULL, fn, "desc=NULL: must point to a sal_sal_desc");
    SAL_REQUIRE(d->pad == 1, fn, "pad=%lld: must be 1 (3x3 kernel, padding K/2)",
                (long long)d->pad);
    SAL_REQUIRE(d->shared == 0 || d->shared == 1, fn, "shared=%d: must be 0 or 1", d->shared);
    SAL_REQUIRE(d->hard == 0 || d->hard == 1, fn, "hard=%d: must be 0 or 1", d->hard);
    SAL_TRY(beta_check(fn, d->beta));
    SAL_TRY(sal_tap_threshold_check(fn, d->tap_threshold));
    sal_conv_desc cd = sal_conv_of(d);
    return sal_conv_check(&cd, y);
}

/* floats before p in the scratch: the convolution's, or the sparse path's if larger.  The
 * scratch does not depend on tap_threshold, so that a network planned with one threshold
 * stays safe when it changes (a larger one only when the sparse path needs more). */
static size_t head_floats(const sal_sal_desc *d) {
    sal_conv_desc cd = sal_conv_of(d);
    const size_t h = sal_conv_scratch(&cd), t = sal_taps_scratch(d);
    return ((h > t ? h : t) + 15) / 16 * 16;
}

size_t sal_sal_scratch(const sal_sal_desc *d) {
    if (sal_sal_check(d, NULL) != SAL_OK) return 0;
    const size_t L = (size_t)sal_slices(d);
    return head_floats(d) + (L + 2 * (size_t)(d->o * d->x.c)) * SAL_KK + (L + 1) / 2;
}

/* mean and unbiased std of the 9 logits a (a mask does not change them: see "Masks" in
 * sal/attention.h) */
static double slice_std(const float *a, double *mean_out) {
    double mean = 0.0, var = 0.0;
    for (int q = 0; q < SAL_KK; q++) mean += a[q];
    mean /= SAL_KK;
    for (int q = 0; q < SAL_KK; q++) var += (a[q] - mean) * (a[q] - mean);
    *mean_out = mean;
    return sqrt(var / (SAL_KK - 1));
}

/* p (9) from a (9) and the mask row m (NULL: all allowed); returns s = std(a) of all 9
 * (p is uniform over the allowed positions when s or beta is 0).  t > 0: *kept = the
 * 9-bit mask of the kept taps, p_q > 0 and p_q >= t * p_max (in double, before p is
 * rounded to float; hard mode: of the thresholded p). */
static double probs_row(float *p, const float *a, const float *m, double beta, int hard,
                        double t, uint16_t *kept) {
    double mean;
    int n = 0;
    const double s = slice_std(a, &mean);
    for (int q = 0; q < SAL_KK; q++) n += !m || m[q] != 0.0f;
    double e[SAL_KK], sum = 0.0;
    if (s == 0.0 || beta == 0.0) {
        for (int q = 0; q < SAL_KK; q++) e[q] = (!m || m[q] != 0.0f) ? 1.0 : 0.0;
        sum = n;
    } else {
        double z[SAL_KK], mx = -INFINITY;
        for (int q = 0; q < SAL_KK; q++) {
            if (m && m[q] == 0.0f) continue;
            z[q] = beta * (a[q] / s);
            if (z[q] > mx) mx = z[q];
        }
        for (int q = 0; q < SAL_KK; q++)
            if (m && m[q] == 0.0f) e[q] = 0.0;
            else sum += (e[q] = exp(z[q] - mx));
    }
    double pd[SAL_KK], pmax = 0.0;
    for (int q = 0; q < SAL_KK; q++) {
        const double pq = e[q] / sum;
        pd[q] = hard ? (pq > 0.5 ? 1.0 : 0.0) : pq;
        p[q] = (float)pd[q];
        pmax = pd[q] > pmax ? pd[q] : pmax;
    }
    if (t > 0.0) {
        unsigned k = 0;
        for (int q = 0; q < SAL_KK; q++) k |= (unsigned)(pd[q] > 0.0 && pd[q] >= t * pmax) << q;
        *kept = (uint16_t)k;
    }
    return s;
}

/* every mask value 0 or 1, every row with an allowed position */
static sal_status mask_check(const char *fn, const float *m, int64_t l) {
    if (!m) return SAL_OK;
    for (int64_t i = 0; i < l; i++) {
        int n = 0;
        for (int q = 0; q < SAL_KK; q++) {
            const float v = m[i * SAL_KK + q];
            if (v != 0.0f && v != 1.0f)
                return sal_fail(SAL_EINVAL, fn, "mask[%lld, %d]=%g: must be 0 or 1",
                                (long long)i, q, (double)v);
            n += v != 0.0f;
        }
        SAL_REQUIRE(n >= 1, fn, "mask[%lld]: no allowed position: every slice keeps >= 1",
                    (long long)i);
    }
    return SAL_OK;
}

static sal_status logits_check(const char *fn, const float *a, int64_t l) {
    SAL_REQUIRE(a != NULL, fn, "a=NULL: needs %lld floats", (long long)(l * SAL_KK));
    for (int64_t i = 0; i < l * SAL_KK; i++)
        if (!isfinite(a[i]))
            return sal_fail(SAL_ENONFINITE, fn, "a[%lld, %lld]=%g: logits must be finite",
                            (long long)(i / SAL_KK), (long long)(i % SAL_KK), (double)a[i]);
    return SAL_OK;
}

typedef struct {
    float *p, *weff;
    const float *a, *m, *w;
    double beta;
    int hard, shared;
    int64_t C;
    double t;          /* tap threshold (0: no kept masks) */
    uint16_t *kept;    /* (L) */
    int64_t nkept[SAL_MAX_THREADS];   /* per thread: kept taps of its slices */
} probs_task;

static void probs_rows(void *q, int64_t i0, int64_t i1, int tid) {
    probs_task *t = q;
    int64_t nk = 0;
    for (int64_t i = i0; i < i1; i++) {
        uint16_t k = 0;
        probs_row(t->p + i * SAL_KK, t->a + i * SAL_KK, t->m ? t->m + i * SAL_KK : NULL, t->beta,
                  t->hard, t->t, &k);
        if (t->kept) {
            t->kept[i] = k;
            nk += __builtin_popcount(k);
        }
    }
    t->nkept[tid] = nk;
}

static void weff_rows(void *q, int64_t i0, int64_t i1, int tid) {
    const probs_task *t = q;
    for (int64_t oc = i0; oc < i1; oc++) {
        const float *pr = t->p + (t->shared ? oc % t->C : oc) * SAL_KK;
        for (int q2 = 0; q2 < SAL_KK; q2++) t->weff[oc * SAL_KK + q2] = pr[q2] * t->w[oc * SAL_KK + q2];
    }
}

/* threads for a loop over n slices: serial below SAL_PAR_MIN */
static int slice_threads(int64_t n) { return n >= SAL_PAR_MIN ? sal_threads() : 1; }

/* p (L,9) = softmax(beta * a / std(a)) row by row of a (L,9), restricted to m (L,9) */
sal_status sal_attn_probs_masked(float *p, const float *a, const float *m, int64_t l,
                                 double beta, int hard) {
    const char *fn = "sal_attn_probs";
    SAL_REQUIRE(l >= 1, fn, "L=%lld: must be >= 1", (long long)l);
    SAL_REQUIRE(p != NULL, fn, "p=NULL: needs %lld floats", (long long)(l * SAL_KK));
    SAL_TRY(beta_check(fn, beta));
    SAL_TRY(logits_check(fn, a, l));
    SAL_TRY(mask_check(fn, m, l));
    probs_task t = {p, NULL, a, m, NULL, beta, hard != 0, 0, 0, 0.0, NULL, {0}};
    sal_parallel_for(l, slice_threads(l), probs_rows, &t);
    return SAL_OK;
}

sal_status sal_attn_kept(uint8_t *kept, const float *a, const float *m, int64_t l, double beta,
                         int hard, double t, int64_t *nkept) {
    const char *fn = "sal_attn_kept";
    SAL_REQUIRE(l >= 1, fn, "L=%lld: must be >= 1", (long long)l);
    SAL_REQUIRE(kept != NULL, fn, "kept=NULL: needs %lld bytes", (long long)(l * SAL_KK));
    SAL_TRY(beta_check(fn, beta));
    SAL_TRY(sal_tap_threshold_check(fn, t));
    SAL_REQUIRE(t > 0.0, fn, "tap_threshold=0: the dense path keeps every tap; pass t > 0");
    SAL_TRY(logits_check(fn, a, l));
    SAL_TRY(mask_check(fn, m, l));
    int64_t nk = 0;
    for (int64_t i = 0; i < l; i++) {
        float p[SAL_KK];
        uint16_t k = 0;
        probs_row(p, a + i * SAL_KK, m ? m + i * SAL_KK : NULL, beta, hard != 0, t, &k);
        for (int q = 0; q < SAL_KK; q++) kept[i * SAL_KK + q] = (uint8_t)(k >> q & 1u);
        nk += __builtin_popcount(k);
    }
    if (nkept) *nkept = nk;
    return SAL_OK;
}

sal_status sal_attn_probs(float *p, const float *a, int64_t l, double beta, int hard) {
    return sal_attn_probs_masked(p, a, NULL, l, beta, hard);
}

/* p (L,9) and W_eff (O,C,9) = p * w from w (O,C,3,3) and a (L,9) into the scratch; with
 * a tap threshold also kept (L) and, in *nkept, the number of kept taps */
static sal_status sal_weights(float *p, float *weff, uint16_t *kept, int64_t *nkept,
                              const float *w, const float *a, const sal_sal_desc *d,
                              const char *fn) {
    const int64_t O = d->o, C = d->x.c, L = sal_slices(d);
    SAL_REQUIRE(w != NULL, fn, "w=NULL: needs O*C*9 floats");
    SAL_TRY(logits_check(fn, a, L));
    SAL_TRY(mask_check(fn, d->mask, L));
    const float *m = d->mask;
    probs_task t = {p, weff, a, m, w, d->beta, d->hard, d->shared, C, d->tap_threshold,
                    d->tap_threshold > 0.0 ? kept : NULL, {0}};
    const int nt = slice_threads(L);
    sal_parallel_for(L, nt, probs_rows, &t);
    sal_parallel_for(O * C, slice_threads(O * C), weff_rows, &t);
    *nkept = 0;
    for (int i = 0; i < nt && i < L; i++) *nkept += t.nkept[i];
    return SAL_OK;
}

/* the scratch's pieces after the head (see the top of the file) */
typedef struct {
    float *p, *weff, *g;
    uint16_t *kept;
} sal_parts;

static sal_parts parts_of(const sal_sal_desc *d, float *scratch) {
    sal_parts s;
    const int64_t L = sal_slices(d), OC = d->o * d->x.c;
    s.p = scratch + head_floats(d);
    s.weff = s.p + L * SAL_KK;
    s.g = s.weff + OC * SAL_KK;
    s.kept = (uint16_t *)(s.g + OC * SAL_KK);
    return s;
}

/* y (N,O,Ho,Wo) = conv(x (N,C,H,W), p * w (O,C,3,3)), p from a (O|1,C,9) */
sal_status sal_sal_fwd(float *y, const float *x, const float *w, const float *a,
                       const sal_sal_desc *d, float *scratch) {
    const char *fn = "sal_sal_fwd";
    sal_act ya;
    SAL_TRY(sal_sal_check(d, &ya));
    SAL_REQUIRE(scratch != NULL, fn, "scratch=NULL: needs %zu floats", sal_sal_scratch(d));
    sal_conv_desc cd = sal_conv_of(d);
    const sal_parts s = parts_of(d, scratch);
    int64_t nkept;
    SAL_TRY(sal_weights(s.p, s.weff, s.kept, &nkept, w, a, d, fn));
    if (d->tap_threshold > 0.0 && sal_taps_pays(d, nkept, 0, sal_taps_direct(d, x, NULL, NULL))) {
        SAL_TRY(sal_taps_fwd(y, x, s.weff, s.kept, d, scratch));
        if (d->moments) sal_bn_moments(d->moments, y, ya);   /* a pass over y */
        return SAL_OK;
    }
    const sal_conv_epi e = {NULL, NULL, 0, 0, 0, d->moments};
    return sal_conv_fwd_epi(y, x, s.weff, &e, &cd, scratch);
}

typedef struct {
    float *da;
    const float *a, *p, *w, *g;
    const sal_sal_desc *d;
    int64_t C, ostep;
    const uint16_t *kept;   /* sparse path: v_q = 0 at the skipped taps; NULL: dense */
} dlogit_task;

/* dL/da for slices [i0, i1) */
static void dlogit_rows(void *q, int64_t i0, int64_t i1, int tid) {
    const dlogit_task *t = q;
    float *da = t->da;
    const float *a = t->a, *p = t->p, *w = t->w, *g = t->g;
    const sal_sal_desc *d = t->d;
    const int64_t C = t->C, ostep = t->ostep;
    for (int64_t i = i0; i < i1; i++) {
        const float *ar = a + i * SAL_KK, *pr = p + i * SAL_KK;
        const float *mr = d->mask ? d->mask + i * SAL_KK : NULL;
        double mean;
        int n = 0;
        const double s = slice_std(ar, &mean);
        for (int q = 0; q < SAL_KK; q++) n += !mr || mr[q] != 0.0f;
        /* s = 0: uniform, constant; one allowed position: p = 1 there, constant */
        if (s == 0.0 || n == 1) continue;
        double u[SAL_KK] = {0}, pu = 0.0, va = 0.0, v[SAL_KK];
        for (int64_t k = 0; k < ostep; k++) {
            /* unshared: slice i = (o, c); shared: slice i = c, summed over o */
            const int64_t oc = d->shared ? k * C + i : i;
            for (int q = 0; q < SAL_KK; q++)
                u[q] += (double)w[oc * SAL_KK + q] * g[oc * SAL_KK + q];
        }
        for (int q = 0; q < SAL_KK; q++) pu += pr[q] * u[q];
        const unsigned kept = t->kept ? t->kept[i] : 0x1ffu;
        for (int q = 0; q < SAL_KK; q++) {
            v[q] = (kept >> q & 1u) ? pr[q] * (u[q] - pu) : 0.0;
            va += v[q] * ar[q];
        }
        const double f = d->beta / s, h = va / ((SAL_KK - 1) * s * s);
        for (int q = 0; q < SAL_KK; q++)            /* pruned q: v_q = 0, the s term only */
            da[i * SAL_KK + q] += (float)(f * (v[q] - h * (ar[q] - mean)));
    }
}

static sal_status sal_bwd_any(float *dx, float *dw, float *da, const float *dy, const float *x,
                              const float *w, const float *a, const sal_sal_desc *d,
                              float *scratch, int assign, const char *fn);

/* dx (N,C,H,W) += dL/dx, dw (O,C,3,3) += dL/dw, da (O|1,C,9) += dL/da from dy (N,O,Ho,Wo) */
sal_status sal_sal_bwd(float *dx, float *dw, float *da, const float *dy, const float *x,
                       const float *w, const float *a, const sal_sal_desc *d, float *scratch) {
    return sal_bwd_any(dx, dw, da, dy, x, w, a, d, scratch, 0, "sal_sal_bwd");
}

/* the same with dx = dL/dx (the dense path writes it; the sparse one zeroes it and adds) */
sal_status sal_sal_bwd_assign(float *dx, float *dw, float *da, const float *dy, const float *x,
                              const float *w, const float *a, const sal_sal_desc *d,
                              float *scratch) {
    return sal_bwd_any(dx, dw, da, dy, x, w, a, d, scratch, dx != NULL, "sal_sal_bwd_assign");
}

static sal_status sal_bwd_any(float *dx, float *dw, float *da, const float *dy, const float *x,
                              const float *w, const float *a, const sal_sal_desc *d,
                              float *scratch, int assign, const char *fn) {
    SAL_TRY(sal_sal_check(d, NULL));
    SAL_REQUIRE(scratch != NULL, fn, "scratch=NULL: needs %zu floats", sal_sal_scratch(d));
    if (d->hard) da = NULL;                         /* zero derivative */
    if (!dx && !dw && !da) return SAL_OK;
    sal_conv_desc cd = sal_conv_of(d);
    const int64_t O = d->o, C = d->x.c, L = sal_slices(d);
    const sal_parts s = parts_of(d, scratch);
    float *p = s.p, *weff = s.weff, *g = s.g;
    int64_t nkept;
    SAL_TRY(sal_weights(p, weff, s.kept, &nkept, w, a, d, fn));
    if (dw || da) memset(g, 0, (size_t)(O * C * SAL_KK) * sizeof *g);
    const int sparse = d->tap_threshold > 0.0 &&
                       sal_taps_pays(d, nkept, 1, sal_taps_direct(d, x, dy, NULL));
    if (sparse && assign) memset(dx, 0, (size_t)(d->x.n * C * d->x.h * d->x.w) * sizeof *dx);
    if (sparse) SAL_TRY(sal_taps_bwd(dx, (dw || da) ? g : NULL, dy, x, weff, s.kept, d, scratch));
    else SAL_TRY((assign ? sal_conv_bwd_assign : sal_conv_bwd)(dx, (dw || da) ? g : NULL, dy, x,
                                                               weff, &cd, scratch));
    if (dw)
        for (int64_t oc = 0; oc < O * C; oc++) {
            const float *pr = p + (d->shared ? oc % C : oc) * SAL_KK;
            for (int q = 0; q < SAL_KK; q++) dw[oc * SAL_KK + q] += pr[q] * g[oc * SAL_KK + q];
        }
    if (!da || d->beta == 0.0) return SAL_OK;      /* beta = 0: p does not depend on a */
    const int64_t ostep = d->shared ? O : 1;       /* outputs summed into one slice */
    dlogit_task t = {da, a, p, w, g, d, C, ostep, sparse ? s.kept : NULL};
    sal_parallel_for(L, slice_threads(L), dlogit_rows, &t);
    return SAL_OK;
}
