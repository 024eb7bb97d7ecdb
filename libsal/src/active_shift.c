/* ASL: the active shift of Jeon & Kim (NeurIPS 2018), per-channel real offsets.
 *
 *   y[n,c,Y,X] = sum over the four taps t = (ky, kx) in {0,1}^2 of
 *                w_t * x[n, c, S*Y + fy + ky, S*X + fx + kx]      (0 outside)
 *   fy = floor(alpha_c), ty = alpha_c - fy, fx = floor(beta_c), tx = beta_c - fx,
 *   w_00 = (1-ty)(1-tx), w_01 = (1-ty) tx, w_10 = ty (1-tx), w_11 = ty tx.
 *
 * The tap weights are constant over a channel, so the forward pass is four strided
 * axpy passes over each plane (taps with a zero weight are skipped), and a channel
 * whose offsets are integers is a plain shift (sal_shift_plane: bitwise equal to SL).
 * Gradient to the offsets (raw bilinear derivatives; right derivative at integers):
 *   dL/dalpha_c = (1-tx) (T_10 - T_00) + tx (T_11 - T_01)
 *   dL/dbeta_c  = (1-ty) (T_01 - T_00) + ty (T_11 - T_10)
 * with T_t = sum_{n,Y,X} dy[n,c,Y,X] * x[n, c, S*Y + fy + ky, S*X + fx + kx]. */
#include <math.h>
#include <string.h>

#include "internal/internal.h"
#include "internal/range.h"
#include "sal/active_shift.h"

typedef struct {
    int64_t fy, fx;     /* clamped integer parts */
    float w[4];         /* tap weights 00, 01, 10, 11 */
    float ty, tx;       /* fractional parts in [0, 1) */
} ashift_taps;

static sal_status ashift_check(const char *fn, const float *off, const sal_shift_desc *d,
                               sal_act *y) {
    SAL_TRY(sal_shift_check(d, y));
    SAL_REQUIRE(off != NULL, fn, "off=NULL: needs C*2 floats");
    for (int64_t i = 0; i < 2 * d->x.c; i++)
        if (!isfinite(off[i]))
            return sal_fail(SAL_ENONFINITE, fn, "off[%lld, %lld]=%g: must be finite",
                            (long long)(i / 2), (long long)(i % 2), (double)off[i]);
    return SAL_OK;
}

static ashift_taps ashift_channel(float a, float b, int64_t S, int64_t H, int64_t W, int64_t Ho,
                                  int64_t Wo) {
    ashift_taps t;
    const float fa = floorf(a), fb = floorf(b);
    t.ty = a - fa;   /* exact: the fractional part of a float is a float */
    t.tx = b - fb;
    /* |fa| may exceed int64: clamp as a double first (beyond the clamp all taps are 0) */
    /* in double (S * (Ho + Wo) overflowed int64 for S near 2^63), capped so the cast
     * below stays in range */
    const double lim = fmin(4.0 * ((double)H + (double)W + (double)S * (double)(Ho + Wo)) + 8.0,
                            0x1p62);
    t.fy = sal_clamp_offset((int64_t)fmax(-lim, fmin(lim, (double)fa)), S, H, Ho);
    t.fx = sal_clamp_offset((int64_t)fmax(-lim, fmin(lim, (double)fb)), S, W, Wo);
    t.w[0] = (1.0f - t.ty) * (1.0f - t.tx);
    t.w[1] = (1.0f - t.ty) * t.tx;
    t.w[2] = t.ty * (1.0f - t.tx);
    t.w[3] = t.ty * t.tx;
    return t;
}

/* y (Ho,Wo) = bilinear shift of one plane x (H,W) */
static void ashift_plane(float *y, const float *x, const ashift_taps *t, int64_t S, int64_t H,
                         int64_t W, int64_t Ho, int64_t Wo) {
    if (t->ty == 0.0f && t->tx == 0.0f) {
        sal_shift_plane(y, x, t->fy, t->fx, S, H, W, Ho, Wo);
        return;
    }
    memset(y, 0, (size_t)(Ho * Wo) * sizeof *y);
    for (int k = 0; k < 4; k++) {
        const float wt = t->w[k];
        if (wt == 0.0f) continue;
        const int64_t oy = t->fy + k / 2, ox = t->fx + k % 2;
        int64_t ylo, yhi, xlo, xhi;
        sal_valid_range(oy, S, H, Ho, &ylo, &yhi);
        sal_valid_range(ox, S, W, Wo, &xlo, &xhi);
        for (int64_t Y = ylo; Y < yhi; Y++) {
            float *dst = y + Y * Wo;
            const float *src = x + (S * Y + oy) * W;
            if (S == 1) for (int64_t X = xlo; X < xhi; X++) dst[X] += wt * src[X + ox];
            else for (int64_t X = xlo; X < xhi; X++) dst[X] += wt * src[S * X + ox];
        }
    }
}

typedef struct {
    float *y;            /* forward: y; backward: dx */
    const float *x;      /* forward: x; backward: dy */
    const float *off;
    float *doff;
    int64_t C, H, W, S, Ho, Wo, xsn, xsc, ysn, ysc;
    const float *x2;     /* backward: x (for doff) */
    int64_t N;
} ashift_task;

static void ashift_fwd_planes(void *q, int64_t p0, int64_t p1, int tid) {
    const ashift_task *tk = q;
    const int64_t C = tk->C, H = tk->H, W = tk->W, S = tk->S, Ho = tk->Ho, Wo = tk->Wo;
    const float *off = tk->off;
    for (int64_t p = p0; p < p1; p++) {
        const int64_t n = p / C, c = p % C;
        const ashift_taps t = ashift_channel(off[2 * c], off[2 * c + 1], S, H, W, Ho, Wo);
        ashift_plane(tk->y + n * tk->ysn + c * tk->ysc, tk->x + n * tk->xsn + c * tk->xsc, &t, S, H,
                     W, Ho, Wo);
    }
}

static void ashift_bwd_channels(void *q, int64_t c0, int64_t c1, int tid) {
    const ashift_task *tk = q;
    const int64_t N = tk->N, H = tk->H, W = tk->W, S = tk->S, Ho = tk->Ho, Wo = tk->Wo;
    float *dx = tk->y, *doff = tk->doff;
    const float *dy = tk->x, *x = tk->x2, *off = tk->off;
    const int64_t xsn = tk->xsn, xsc = tk->xsc, ysn = tk->ysn, ysc = tk->ysc;
    for (int64_t c = c0; c < c1; c++) {
        const ashift_taps t = ashift_channel(off[2 * c], off[2 * c + 1], S, H, W, Ho, Wo);
        double T[4] = {0.0, 0.0, 0.0, 0.0};
        for (int k = 0; k < 4; k++) {
            const float wt = t.w[k];
            const int64_t oy = t.fy + k / 2, ox = t.fx + k % 2;
            int64_t ylo, yhi, xlo, xhi;
            sal_valid_range(oy, S, H, Ho, &ylo, &yhi);
            sal_valid_range(ox, S, W, Wo, &xlo, &xhi);
            for (int64_t n = 0; n < N; n++) {
                const float *g = dy + n * ysn + c * ysc;
                for (int64_t Y = ylo; Y < yhi; Y++) {
                    const float *gr = g + Y * Wo;
                    const int64_t row = (S * Y + oy) * W;
                    if (dx && wt != 0.0f) {
                        float *dst = dx + n * xsn + c * xsc + row;
                        for (int64_t X = xlo; X < xhi; X++) dst[S * X + ox] += wt * gr[X];
                    }
                    if (doff) {
                        const float *src = x + n * xsn + c * xsc + row;
                        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                        for (int64_t X = xlo; X < xhi; X++) acc += gr[X] * src[S * X + ox];
                        T[k] += acc;
                    }
                }
            }
        }
        if (doff) {
            const double ty = t.ty, tx = t.tx;
            doff[2 * c] += (float)((1.0 - tx) * (T[2] - T[0]) + tx * (T[3] - T[1]));
            doff[2 * c + 1] += (float)((1.0 - ty) * (T[1] - T[0]) + ty * (T[3] - T[2]));
        }
    }
}

/* y (N,C,Ho,Wo) = active_shift(x (N,C,H,W)) with off (C,2) float = (alpha, beta) = (dy, dx) */
sal_status sal_ashift_fwd(float *y, const float *x, const float *off, const sal_shift_desc *d) {
    sal_act ya;
    SAL_TRY(ashift_check("sal_ashift_fwd", off, d, &ya));
    SAL_REQUIRE(y && x, "sal_ashift_fwd", "y and x must not be NULL");
    const int64_t N = d->x.n, C = d->x.c, H = d->x.h, W = d->x.w, S = d->stride;
    const int64_t Ho = ya.h, Wo = ya.w;
    const int64_t xsn = sal_act_sn(d->x), xsc = sal_act_sc(d->x);
    const int64_t ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);
    ashift_task tk = {y, x, off, NULL, C, H, W, S, Ho, Wo, xsn, xsc, ysn, ysc, NULL, N};
    sal_parallel_for(N * C, sal_threads(), ashift_fwd_planes, &tk);
    return SAL_OK;
}

/* dx (N,C,H,W) += dL/dx, doff (C,2) += dL/doff, from dy (N,C,Ho,Wo); either may be NULL.
 * One thread owns a channel (all its planes and its two offset gradients): no races. */
sal_status sal_ashift_bwd(float *dx, float *doff, const float *dy, const float *x,
                          const float *off, const sal_shift_desc *d) {
    sal_act ya;
    SAL_TRY(ashift_check("sal_ashift_bwd", off, d, &ya));
    SAL_REQUIRE(dy != NULL, "sal_ashift_bwd", "dy=NULL: must not be NULL");
    SAL_REQUIRE(x != NULL || doff == NULL, "sal_ashift_bwd", "x=NULL: needed for doff");
    if (!dx && !doff) return SAL_OK;
    const int64_t N = d->x.n, C = d->x.c, H = d->x.h, W = d->x.w, S = d->stride;
    const int64_t Ho = ya.h, Wo = ya.w;
    const int64_t xsn = sal_act_sn(d->x), xsc = sal_act_sc(d->x);
    const int64_t ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);
    ashift_task tk = {dx, dy, off, doff, C, H, W, S, Ho, Wo, xsn, xsc, ysn, ysc, x, N};
    sal_parallel_for(C, sal_threads(), ashift_bwd_channels, &tk);
    return SAL_OK;
}

sal_status sal_ashift_normalize_grad(float *doff, int64_t c) {
    SAL_REQUIRE(c >= 1, "sal_ashift_normalize_grad", "C=%lld: must be >= 1", (long long)c);
    SAL_REQUIRE(doff != NULL, "sal_ashift_normalize_grad", "doff=NULL: needs C*2 floats");
    for (int64_t i = 0; i < c; i++) {
        const double a = doff[2 * i], b = doff[2 * i + 1], len = hypot(a, b);
        if (len > 0.0 && isfinite(len)) {
            doff[2 * i] = (float)(a / len);
            doff[2 * i + 1] = (float)(b / len);
        }
    }
    return SAL_OK;
}
