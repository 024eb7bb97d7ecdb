/* SL: the integer shift of Wu et al. (CVPR 2018), per-channel offsets, zero fill, stride.
 *
 *   y[n,c,Y,X] = x[n, c, S*Y + dy_c, S*X + dx_c]     (0 outside the image)
 *
 * Pure data movement: every output row is a zero run, one copied (S = 1: memcpy) or
 * gathered run, and a zero run, with the run bounds computed once per plane.  The
 * backward pass is the exact adjoint (a scatter-add onto the same positions); the map
 * Y -> S*Y + dy is injective, so each input pixel receives at most one value.
 * Planes (n, c) are independent: one thread owns a plane, no races, no scratch. */
#include <string.h>

#include "internal/internal.h"
#include "internal/range.h"
#include "sal/shift.h"

sal_status sal_shift_check(const sal_shift_desc *d, sal_act *y) {
    const char *fn = "sal_shift";
    SAL_REQUIRE(d != NULL, fn, "desc=NULL: must point to a sal_shift_desc");
    SAL_TRY(sal_act_check(fn, "x", d->x));
    SAL_REQUIRE(d->stride >= 1, fn, "stride=%lld: must be >= 1", (long long)d->stride);
    if (y) *y = (sal_act){d->x.n, d->x.c, (d->x.h - 1) / d->stride + 1,
                          (d->x.w - 1) / d->stride + 1, d->x.layout};
    return SAL_OK;
}

sal_status sal_shift_default_offsets(int32_t *off, int64_t c) {
    SAL_REQUIRE(c >= 1, "sal_shift_default_offsets", "C=%lld: must be >= 1", (long long)c);
    SAL_REQUIRE(off != NULL, "sal_shift_default_offsets", "off=NULL: needs C*2 int32");
    const int64_t shifted = c / 9 * 9;
    for (int64_t i = 0; i < c; i++) {
        off[2 * i] = i < shifted ? (int32_t)(i / 3 % 3) - 1 : 0;      /* dy */
        off[2 * i + 1] = i < shifted ? (int32_t)(i % 3) - 1 : 0;      /* dx */
    }
    return SAL_OK;
}

void sal_shift_plane(float *y, const float *x, int64_t oy, int64_t ox, int64_t S, int64_t H,
                     int64_t W, int64_t Ho, int64_t Wo) {
    int64_t ylo, yhi, xlo, xhi;
    sal_valid_range(oy, S, H, Ho, &ylo, &yhi);
    sal_valid_range(ox, S, W, Wo, &xlo, &xhi);
    if (xlo == xhi) ylo = yhi = 0;  /* no column inside: the whole plane is zero */
    memset(y, 0, (size_t)(ylo * Wo) * sizeof *y);
    for (int64_t Y = ylo; Y < yhi; Y++) {
        float *dst = y + Y * Wo;
        const float *src = x + (S * Y + oy) * W;   /* row start; columns S*X + ox */
        for (int64_t X = 0; X < xlo; X++) dst[X] = 0.0f;
        if (S == 1) memcpy(dst + xlo, src + xlo + ox, (size_t)(xhi - xlo) * sizeof *dst);
        else for (int64_t X = xlo; X < xhi; X++) dst[X] = src[S * X + ox];
        for (int64_t X = xhi; X < Wo; X++) dst[X] = 0.0f;
    }
    memset(y + yhi * Wo, 0, (size_t)((Ho - yhi) * Wo) * sizeof *y);
}

/* Output channel c reads input channel src[rs*c] (src NULL: c) shifted by
 * (off[rs*c], off[rs*c + 1]): rs = 2 for offset pairs, 3 for rows (src, dy, dx). */
typedef struct {
    float *y;
    const float *x;
    const int32_t *off, *src;
    int64_t rs, C, H, W, S, Ho, Wo, xsn, xsc, ysn, ysc;
} shift_task;

static void shift_fwd_planes(void *q, int64_t p0, int64_t p1, int tid) {
    const shift_task *t = q;
    const int64_t C = t->C, H = t->H, W = t->W, S = t->S, Ho = t->Ho, Wo = t->Wo, rs = t->rs;
    for (int64_t p = p0; p < p1; p++) {
        const int64_t n = p / C, c = p % C, ci = t->src ? t->src[rs * c] : c;
        sal_shift_plane(t->y + n * t->ysn + c * t->ysc, t->x + n * t->xsn + ci * t->xsc,
                        sal_clamp_offset(t->off[rs * c], S, H, Ho),
                        sal_clamp_offset(t->off[rs * c + 1], S, W, Wo), S, H, W, Ho, Wo);
    }
}

/* t->y is dx, t->x is dy */
static void shift_bwd_planes(void *q, int64_t p0, int64_t p1, int tid) {
    const shift_task *t = q;
    const int64_t C = t->C, H = t->H, W = t->W, S = t->S, Ho = t->Ho, Wo = t->Wo;
    for (int64_t p = p0; p < p1; p++) {
        const int64_t n = p / C, c = p % C;
        const int64_t oy = sal_clamp_offset(t->off[t->rs * c], S, H, Ho);
        const int64_t ox = sal_clamp_offset(t->off[t->rs * c + 1], S, W, Wo);
        int64_t ylo, yhi, xlo, xhi;
        sal_valid_range(oy, S, H, Ho, &ylo, &yhi);
        sal_valid_range(ox, S, W, Wo, &xlo, &xhi);
        float *dxp = t->y + n * t->xsn + c * t->xsc;
        const float *g = t->x + n * t->ysn + c * t->ysc;
        for (int64_t Y = ylo; Y < yhi; Y++) {
            float *dst = dxp + (S * Y + oy) * W;
            const float *src = g + Y * Wo;
            if (S == 1) for (int64_t X = xlo; X < xhi; X++) dst[X + ox] += src[X];
            else for (int64_t X = xlo; X < xhi; X++) dst[S * X + ox] += src[X];
        }
    }
}

/* y (N,C,Ho,Wo) = shift(x (N,C,H,W)) with off (C,2) int32 = (dy, dx) */
sal_status sal_shift_fwd(float *y, const float *x, const int32_t *off, const sal_shift_desc *d) {
    sal_act ya;
    SAL_TRY(sal_shift_check(d, &ya));
    SAL_REQUIRE(y && x && off, "sal_shift_fwd", "y, x and off must not be NULL");
    const int64_t N = d->x.n, C = d->x.c, H = d->x.h, W = d->x.w, S = d->stride;
    const int64_t Ho = ya.h, Wo = ya.w;
    const int64_t xsn = sal_act_sn(d->x), xsc = sal_act_sc(d->x);
    const int64_t ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);
    shift_task t = {y, x, off, NULL, 2, C, H, W, S, Ho, Wo, xsn, xsc, ysn, ysc};
    sal_parallel_for(N * C, sal_threads(), shift_fwd_planes, &t);
    return SAL_OK;
}

/* dx (N,C,H,W) += shift^T(dy (N,C,Ho,Wo)) with off (C,2) int32 = (dy, dx) */
sal_status sal_shift_bwd(float *dx, const float *dy, const int32_t *off, const sal_shift_desc *d) {
    sal_act ya;
    SAL_TRY(sal_shift_check(d, &ya));
    SAL_REQUIRE(dy && off, "sal_shift_bwd", "dy and off must not be NULL");
    if (!dx) return SAL_OK;
    const int64_t N = d->x.n, C = d->x.c, H = d->x.h, W = d->x.w, S = d->stride;
    const int64_t Ho = ya.h, Wo = ya.w;
    const int64_t xsn = sal_act_sn(d->x), xsc = sal_act_sc(d->x);
    const int64_t ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);
    shift_task t = {dx, dy, off, NULL, 2, C, H, W, S, Ho, Wo, xsn, xsc, ysn, ysc};
    sal_parallel_for(N * C, sal_threads(), shift_bwd_planes, &t);
    return SAL_OK;
}

/* every row's source channel in [0, C) */
static sal_status rows_check(const char *fn, const int32_t *rows, int64_t co, int64_t c) {
    SAL_REQUIRE(rows != NULL && co >= 1, fn, "rows=%p co=%lld: need co >= 1 rows",
                (const void *)rows, (long long)co);
    for (int64_t k = 0; k < co; k++)
        SAL_REQUIRE(rows[3 * k] >= 0 && rows[3 * k] < c, fn,
                    "row %lld: source channel %d not in [0, %lld)", (long long)k, rows[3 * k],
                    (long long)c);
    return SAL_OK;
}

/* y (N,Co,Ho,Wo) = shift of x (N,C,H,W) by rows (Co,3) = (src, dy, dx) */
sal_status sal_shift_rows_fwd(float *y, const float *x, const int32_t *rows, int64_t co,
                              const sal_shift_desc *d) {
    const char *fn = "sal_shift_rows_fwd";
    sal_act ya;
    SAL_TRY(sal_shift_check(d, &ya));
    SAL_REQUIRE(y && x, fn, "y and x must not be NULL");
    SAL_TRY(rows_check(fn, rows, co, d->x.c));
    ya.c = co;
    SAL_TRY(sal_act_check(fn, "y", ya));
    const int64_t N = d->x.n, H = d->x.h, W = d->x.w, S = d->stride, Ho = ya.h, Wo = ya.w;
    shift_task t = {y, x, rows + 1, rows, 3, co, H, W, S, Ho, Wo, sal_act_sn(d->x),
                    sal_act_sc(d->x), sal_act_sn(ya), sal_act_sc(ya)};
    sal_parallel_for(N * co, sal_threads(), shift_fwd_planes, &t);
    return SAL_OK;
}

/* dx (N,C,H,W) += shift^T(dy (N,C,Ho,Wo)) by rows (C,3) whose sources are the identity */
sal_status sal_shift_rows_bwd(float *dx, const float *dy, const int32_t *rows,
                              const sal_shift_desc *d) {
    const char *fn = "sal_shift_rows_bwd";
    sal_act ya;
    SAL_TRY(sal_shift_check(d, &ya));
    SAL_TRY(rows_check(fn, rows, d->x.c, d->x.c));
    for (int64_t k = 0; k < d->x.c; k++)
        SAL_REQUIRE(rows[3 * k] == k, fn, "row %lld: source channel %d: the backward needs the "
                    "identity (row c reads channel c)", (long long)k, rows[3 * k]);
    SAL_REQUIRE(dy != NULL, fn, "dy must not be NULL");
    if (!dx) return SAL_OK;
    const int64_t N = d->x.n, C = d->x.c, H = d->x.h, W = d->x.w, S = d->stride;
    shift_task t = {dx, dy, rows + 1, NULL, 3, C, H, W, S, ya.h, ya.w, sal_act_sn(d->x),
                    sal_act_sc(d->x), sal_act_sn(ya), sal_act_sc(ya)};
    sal_parallel_for(N * C, sal_threads(), shift_bwd_planes, &t);
    return SAL_OK;
}
