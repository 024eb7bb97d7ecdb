/* Naive reference shift, active shift and SAL, float and double: the definitions as loops.
 *   shift:        y[n,c,Y,X] = x[n, c, S*Y + dy_c, S*X + dx_c]                 (0 outside)
 *   active shift: y[n,c,Y,X] = bilinear sample of x[n,c] at (S*Y + alpha_c, S*X + beta_c)
 *   SAL:          y = conv3x3(x, softmax(beta * a / std(a)) * w, S, padding 1)
 * Every pixel is computed on its own with explicit bounds tests; offsets are handled in
 * double (no clamping); SAL differentiates through the full softmax and std Jacobians. */
#include <math.h>
#include <stdlib.h>

#include "internal/internal.h"
#include "sal/active_shift.h"
#include "sal/attention.h"
#include "sal/conv.h"
#include "sal/shift.h"

/* x[n,c] at integer (iy, ix), 0 outside */
#define REF_AT(x, base, iy, ix, H, W) \
    (((iy) < 0 || (iy) >= (H) || (ix) < 0 || (ix) >= (W)) ? 0.0 : (double)(x)[(base) + (iy) * (W) + (ix)])

#define REF_SHIFT(SUFFIX, T)                                                                  \
    sal_status sal_ref_shift_fwd##SUFFIX(T *y, const T *x, const int32_t *off,                \
                                         const sal_shift_desc *d) {                           \
        sal_act ya;                                                                           \
        SAL_TRY(sal_shift_check(d, &ya));                                                     \
        const int64_t H = d->x.h, W = d->x.w, S = d->stride;                                  \
        const int64_t xsn = sal_act_sn(d->x), xsc = sal_act_sc(d->x);                         \
        const int64_t ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);                             \
        for (int64_t n = 0; n < ya.n; n++)                                                    \
            for (int64_t c = 0; c < ya.c; c++)                                                \
                for (int64_t Y = 0; Y < ya.h; Y++)                                            \
                    for (int64_t X = 0; X < ya.w; X++) {                                      \
                        int64_t iy = S * Y + off[2 * c], ix = S * X + off[2 * c + 1];         \
                        y[n * ysn + c * ysc + Y * ya.w + X] =                                 \
                            (T)REF_AT(x, n * xsn + c * xsc, iy, ix, H, W);                    \
                    }                                                                         \
        return SAL_OK;                                                                        \
    }                                                                                         \
    sal_status sal_ref_shift_bwd##SUFFIX(T *dx, const T *dy, const int32_t *off,              \
                                         const sal_shift_desc *d) {                           \
        sal_act ya;                                                                           \
        SAL_TRY(sal_shift_check(d, &ya));                                                     \
        const int64_t H = d->x.h, W = d->x.w, S = d->stride;                                  \
        const int64_t xsn = sal_act_sn(d->x), xsc = sal_act_sc(d->x);                         \
        const int64_t ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);                             \
        for (int64_t n = 0; n < ya.n; n++)                                                    \
            for (int64_t c = 0; c < ya.c; c++)                                                \
                for (int64_t Y = 0; Y < ya.h; Y++)                                            \
                    for (int64_t X = 0; X < ya.w; X++) {                                      \
                        int64_t iy = S * Y + off[2 * c], ix = S * X + off[2 * c + 1];         \
                        if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;                 \
                        dx[n * xsn + c * xsc + iy * W + ix] += dy[n * ysn + c * ysc + Y * ya.w + X]; \
                    }                                                                         \
        return SAL_OK;                                                                        \
    }

/* bilinear: position (py, px) = (S*Y + alpha, S*X + beta); taps at floor and floor + 1
 * (taps of weight 0 are skipped).  Offsets beyond +-1e12 sample nothing; they are cut
 * there so that the floor fits int64. */
#define REF_ASHIFT(SUFFIX, T)                                                                 \
    sal_status sal_ref_ashift_fwd##SUFFIX(T *y, const T *x, const T *off,                     \
                                          const sal_shift_desc *d) {                          \
        sal_act ya;                                                                           \
        SAL_TRY(sal_shift_check(d, &ya));                                                     \
        const int64_t H = d->x.h, W = d->x.w, S = d->stride;                                  \
        const int64_t xsn = sal_act_sn(d->x), xsc = sal_act_sc(d->x);                         \
        const int64_t ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);                             \
        for (int64_t i = 0; i < 2 * d->x.c; i++)                                              \
            if (!isfinite((double)off[i]))                                                    \
                return sal_fail(SAL_ENONFINITE, "sal_ref_ashift_fwd", "off[%lld]: must be finite", \
                                (long long)i);                                                \
        for (int64_t n = 0; n < ya.n; n++)                                                    \
            for (int64_t c = 0; c < ya.c; c++) {                                              \
                const double a = fmax(-1e12, fmin(1e12, (double)off[2 * c]));                 \
                const double b = fmax(-1e12, fmin(1e12, (double)off[2 * c + 1]));            \
                for (int64_t Y = 0; Y < ya.h; Y++)                                            \
                    for (int64_t X = 0; X < ya.w; X++) {                                      \
                        const double py = (double)(S * Y) + a, px = (double)(S * X) + b;      \
                        const double fy = floor(py), fx = floor(px);                          \
                        const double ty = py - fy, tx = px - fx;                              \
                        const int64_t iy = (int64_t)fy, ix = (int64_t)fx;                     \
                        const int64_t base = n * xsn + c * xsc;                               \
                        double v = 0.0;                                                       \
                        v += (1 - ty) * (1 - tx) * REF_AT(x, base, iy, ix, H, W); \
                        if (tx != 0.0) v += (1 - ty) * tx * REF_AT(x, base, iy, ix + 1, H, W); \
                        if (ty != 0.0) v += ty * (1 - tx) * REF_AT(x, base, iy + 1, ix, H, W); \
                        if (ty != 0.0 && tx != 0.0) v += ty * tx * REF_AT(x, base, iy + 1, ix + 1, H, W); \
                        y[n * ysn + c * ysc + Y * ya.w + X] = (T)v;                           \
                    }                                                                         \
            }                                                                                 \
        return SAL_OK;                                                                        \
    }                                                                                         \
    sal_status sal_ref_ashift_bwd##SUFFIX(T *dx, T *doff, const T *dy, const T *x,            \
                                          const T *off, const sal_shift_desc *d) {            \
        sal_act ya;                                                                           \
        SAL_TRY(sal_shift_check(d, &ya));                                                     \
        const int64_t H = d->x.h, W = d->x.w, S = d->stride;                                  \
        const int64_t xsn = sal_act_sn(d->x), xsc = sal_act_sc(d->x);                         \
        const int64_t ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);                             \
        for (int64_t i = 0; i < 2 * d->x.c; i++)                                              \
            if (!isfinite((double)off[i]))                                                    \
                return sal_fail(SAL_ENONFINITE, "sal_ref_ashift_bwd", "off[%lld]: must be finite", \
                                (long long)i);                                                \
        for (int64_t c = 0; c < ya.c; c++) {                                                  \
            const double a = fmax(-1e12, fmin(1e12, (double)off[2 * c]));                     \
            const double b = fmax(-1e12, fmin(1e12, (double)off[2 * c + 1]));                 \
            double ga = 0.0, gb = 0.0;                                                        \
            for (int64_t n = 0; n < ya.n; n++)                                                \
                for (int64_t Y = 0; Y < ya.h; Y++)                                            \
                    for (int64_t X = 0; X < ya.w; X++) {                                      \
                        const double g = dy[n * ysn + c * ysc + Y * ya.w + X];                \
                        const double py = (double)(S * Y) + a, px = (double)(S * X) + b;      \
                        const double fy = floor(py), fx = floor(px);                          \
                        const double ty = py - fy, tx = px - fx;                              \
                        const int64_t iy = (int64_t)fy, ix = (int64_t)fx;                     \
                        const int64_t base = n * xsn + c * xsc;                               \
                        const double x00 = REF_AT(x, base, iy, ix, H, W);                     \
                        const double x01 = REF_AT(x, base, iy, ix + 1, H, W);                 \
                        const double x10 = REF_AT(x, base, iy + 1, ix, H, W);                 \
                        const double x11 = REF_AT(x, base, iy + 1, ix + 1, H, W);             \
                        ga += g * ((1 - tx) * (x10 - x00) + tx * (x11 - x01));                \
                        gb += g * ((1 - ty) * (x01 - x00) + ty * (x11 - x10));                \
                        if (!dx) continue;                                                    \
                        const double wt[4] = {(1 - ty) * (1 - tx), (1 - ty) * tx, ty * (1 - tx), ty * tx}; \
                        for (int k = 0; k < 4; k++) {                                         \
                            const int64_t jy = iy + k / 2, jx = ix + k % 2;                   \
                            if (wt[k] == 0.0 || jy < 0 || jy >= H || jx < 0 || jx >= W) continue; \
                            dx[base + jy * W + jx] += (T)(wt[k] * g);                         \
                        }                                                                     \
                    }                                                                         \
            if (doff) {                                                                       \
                doff[2 * c] += (T)ga;                                                         \
                doff[2 * c + 1] += (T)gb;                                                     \
            }                                                                                 \
        }                                                                                     \
        return SAL_OK;                                                                        \
    }

/* p (L,9): over the allowed positions S of the mask row mk (NULL: all 9, n = |S|),
 * s = sqrt(sum_S (a - mean_S)^2 / (n - 1)); p = softmax_S(beta a / s), 0 outside S
 * (uniform over S if s or beta is 0; n = 1: p = 1 at the allowed position) */
#define REF_ALLOWED(mk, q) (!(mk) || (mk)[q] != 0.0f)
#define REF_SAL(SUFFIX, T)                                                                    \
    static double ref_probs_row##SUFFIX(double *p, const T *a, const float *mk, double beta,  \
                                        int hard, double *mean_out, int *n_out) {             \
        double mean = 0.0, var = 0.0, m = -INFINITY, sum = 0.0, z[9];                         \
        int n = 0;                                                                            \
        for (int q = 0; q < 9; q++)                                                           \
            if (REF_ALLOWED(mk, q)) mean += (double)a[q], n++;                                \
        mean /= n; /* exact for equal floats: std 0 stays 0 */                                \
        for (int q = 0; q < 9; q++)                                                           \
            if (REF_ALLOWED(mk, q) && n > 1)                                                  \
                var += ((double)a[q] - mean) * ((double)a[q] - mean) / (n - 1);               \
        const double s = sqrt(var);                                                           \
        for (int q = 0; q < 9; q++) {                                                         \
            z[q] = (s == 0.0 || beta == 0.0) ? 0.0 : beta * (double)a[q] / s;                 \
            if (REF_ALLOWED(mk, q)) m = fmax(m, z[q]);                                        \
        }                                                                                     \
        for (int q = 0; q < 9; q++)                                                           \
            if (REF_ALLOWED(mk, q)) sum += exp(z[q] - m);                                     \
        for (int q = 0; q < 9; q++) {                                                         \
            p[q] = REF_ALLOWED(mk, q) ? exp(z[q] - m) / sum : 0.0;                            \
            if (hard) p[q] = p[q] > 0.5 ? 1.0 : 0.0;                                          \
        }                                                                                     \
        if (mean_out) *mean_out = mean;                                                       \
        if (n_out) *n_out = n;                                                                \
        return s;                                                                             \
    }                                                                                         \
    sal_status sal_ref_attn_probs_masked##SUFFIX(T *p, const T *a, const float *mk, int64_t l, \
                                                 double beta, int hard) {                     \
        SAL_REQUIRE(l >= 1, "sal_ref_attn_probs", "L=%lld: must be >= 1", (long long)l);     \
        SAL_REQUIRE(isfinite(beta) && beta >= 0, "sal_ref_attn_probs", "beta=%g: must be finite and >= 0", beta); \
        for (int64_t i = 0; i < l; i++) {                                                     \
            double pr[9];                                                                     \
            const float *mr = mk ? mk + 9 * i : NULL;                                         \
            int n = 0;                                                                        \
            for (int q = 0; q < 9; q++) n += REF_ALLOWED(mr, q);                              \
            SAL_REQUIRE(n >= 1, "sal_ref_attn_probs", "mask[%lld]: no allowed position", (long long)i); \
            ref_probs_row##SUFFIX(pr, a + 9 * i, mr, beta, hard, NULL, NULL);                 \
            for (int q = 0; q < 9; q++) p[9 * i + q] = (T)pr[q];                              \
        }                                                                                     \
        return SAL_OK;                                                                        \
    }                                                                                         \
    sal_status sal_ref_attn_probs##SUFFIX(T *p, const T *a, int64_t l, double beta, int hard) { \
        return sal_ref_attn_probs_masked##SUFFIX(p, a, NULL, l, beta, hard);                  \
    }                                                                                         \
    /* W_eff (O,C,9) = p * w and, when pout is given, p (O,C,9) expanded over outputs */     \
    static sal_status ref_weff##SUFFIX(T **weff, double **pout, const T *w, const T *a,       \
                                       const sal_sal_desc *d) {                               \
        SAL_TRY(sal_sal_check(d, NULL));                                                      \
        const int64_t O = d->o, C = d->x.c;                                                   \
        *weff = malloc((size_t)(O * C * 9) * sizeof(T));                                      \
        double *p = malloc((size_t)(O * C * 9) * sizeof(double));                             \
        if (!*weff || !p) {                                                                   \
            free(*weff);                                                                      \
            free(p);                                                                          \
            *weff = NULL;                                                                     \
            return sal_fail(SAL_ENOMEM, "sal_ref_sal", "W_eff: out of memory");               \
        }                                                                                     \
        for (int64_t i = 0; d->mask && i < (d->shared ? 1 : O) * C; i++) {                  \
            int n = 0;                                                                        \
            for (int q = 0; q < 9; q++) n += REF_ALLOWED(d->mask + 9 * i, q);                 \
            if (n < 1) {                                                                      \
                free(*weff);                                                                  \
                free(p);                                                                      \
                *weff = NULL;                                                                 \
                return sal_fail(SAL_EINVAL, "sal_ref_sal", "mask[%lld]: no allowed position", \
                                (long long)i);                                                \
            }                                                                                 \
        }                                                                                     \
        for (int64_t o = 0; o < O; o++)                                                       \
            for (int64_t c = 0; c < C; c++) {                                                 \
                const int64_t oc = o * C + c, sl = d->shared ? c : oc;                        \
                ref_probs_row##SUFFIX(p + 9 * oc, a + 9 * sl, d->mask ? d->mask + 9 * sl : NULL, \
                                      d->beta, d->hard, NULL, NULL);                          \
                for (int q = 0; q < 9; q++) (*weff)[9 * oc + q] = (T)(p[9 * oc + q] * w[9 * oc + q]); \
            }                                                                                 \
        if (pout) *pout = p;                                                                  \
        else free(p);                                                                         \
        return SAL_OK;                                                                        \
    }                                                                                         \
    sal_status sal_ref_sal_fwd##SUFFIX(T *y, const T *x, const T *w, const T *a,              \
                                       const sal_sal_desc *d) {                               \
        T *weff;                                                                              \
        SAL_TRY(ref_weff##SUFFIX(&weff, NULL, w, a, d));                                      \
        sal_conv_desc cd = {d->x, d->o, 3, d->stride, d->pad, 0};                                \
        sal_status s = sal_ref_conv_fwd##SUFFIX(y, x, weff, &cd);                             \
        free(weff);                                                                           \
        return s;                                                                             \
    }                                                                                         \
    sal_status sal_ref_sal_bwd##SUFFIX(T *dx, T *dw, T *da, const T *dy, const T *x,          \
                                       const T *w, const T *a, const sal_sal_desc *d) {       \
        T *weff;                                                                              \
        double *p;                                                                            \
        SAL_TRY(ref_weff##SUFFIX(&weff, &p, w, a, d));                                        \
        const int64_t O = d->o, C = d->x.c;                                                   \
        T *g = calloc((size_t)(O * C * 9), sizeof(T));                                        \
        if (!g) {                                                                             \
            free(weff);                                                                       \
            free(p);                                                                          \
            return sal_fail(SAL_ENOMEM, "sal_ref_sal_bwd", "dW_eff: out of memory");          \
        }                                                                                     \
        sal_conv_desc cd = {d->x, d->o, 3, d->stride, d->pad, 0};                                \
        sal_status st = sal_ref_conv_bwd##SUFFIX(dx, g, dy, x, weff, &cd);                    \
        for (int64_t i = 0; st == SAL_OK && dw && i < O * C * 9; i++) dw[i] += (T)(p[i] * g[i]); \
        /* dL/da_i = sum_{o,q,k} g_q w_q dp_q/dz_k dz_k/da_i over the outputs sharing a */    \
        for (int64_t o = 0; st == SAL_OK && da && !d->hard && o < O; o++)                     \
            for (int64_t c = 0; c < C; c++) {                                                 \
                const int64_t oc = o * C + c, sl = d->shared ? c : oc;                        \
                const T *ar = a + 9 * sl;                                                     \
                const float *mr = d->mask ? d->mask + 9 * sl : NULL;                          \
                double pr[9], mean;                                                           \
                int n;                                                                        \
                const double s = ref_probs_row##SUFFIX(pr, ar, mr, d->beta, 0, &mean, &n);    \
                if (s == 0.0 || d->beta == 0.0) continue;                                     \
                double dz[9] = {0};                                                           \
                for (int q = 0; q < 9; q++)                                                   \
                    for (int k = 0; k < 9; k++)                                               \
                        dz[k] += (double)g[9 * oc + q] * w[9 * oc + q] * pr[q] * ((q == k) - pr[k]); \
                for (int i = 0; i < 9; i++) {                                                 \
                    if (!REF_ALLOWED(mr, i)) continue; /* p does not depend on a_i */         \
                    double acc = 0.0;                                                         \
                    const double ds = ((double)ar[i] - mean) / ((n - 1) * s); /* ds/da_i */   \
                    for (int k = 0; k < 9; k++)                                               \
                        acc += dz[k] * d->beta * ((k == i) / s - (double)ar[k] * ds / (s * s)); \
                    da[9 * sl + i] += (T)acc;                                                 \
                }                                                                             \
            }                                                                                 \
        free(g);                                                                              \
        free(weff);                                                                           \
        free(p);                                                                              \
        return st;                                                                            \
    }

REF_SHIFT(, float)
REF_SHIFT(_f64, double)
REF_ASHIFT(, float)
REF_ASHIFT(_f64, double)
REF_SAL(, float)
REF_SAL(_f64, double)
