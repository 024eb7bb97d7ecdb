/* Naive reference of the shifted-row GEMM (sal/shiftconv.h), float and double: the
 * definition as loops.  Every output sums its rows in order, in double, with explicit
 * bounds tests; offsets in int64 (no clamping).
 *   y[n,o,Y,X] = epi(sum_r w[o,r] * x[n, src_r, S*Y + dy_r, S*X + dx_r])   (0 outside)
 *   dx[n, src_r, S*Y + dy_r, S*X + dx_r] += sum_o w[o,r] dy[n,o,Y,X]    (inside only)
 *   dw[o,r] += sum_{n,Y,X} dy[n,o,Y,X] * x[n, src_r, S*Y + dy_r, S*X + dx_r] */
#include "internal/internal.h"
#include "sal/shiftconv.h"

#define REF_SC(SUFFIX, T)                                                                         \
    static sal_status ref_fwd##SUFFIX(T *y, const T *x, const T *w, const T *bias, const T *res,  \
                                      int relu, int res_post, const sal_shiftconv_desc *d) {      \
        const char *fn = "sal_ref_shiftconv_fwd" #SUFFIX;                                         \
        sal_act ya;                                                                               \
        SAL_TRY(sal_shiftconv_check(d, &ya));                                                     \
        SAL_REQUIRE(y && x && (d->r == 0 || w), fn, "y, x and w must not be NULL");               \
        const int64_t H = d->x.h, W = d->x.w, S = d->stride, R = d->r;                            \
        const int64_t xsn = sal_act_sn(d->x), xsc = sal_act_sc(d->x);                             \
        const int64_t ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);                                 \
        for (int64_t n = 0; n < ya.n; n++)                                                        \
            for (int64_t o = 0; o < ya.c; o++)                                                    \
                for (int64_t Y = 0; Y < ya.h; Y++)                                                \
                    for (int64_t X = 0; X < ya.w; X++) {                                          \
                        double acc = 0.0;                                                         \
                        for (int64_t r = 0; r < R; r++) {                                         \
                            const int32_t *row = d->rows + 3 * r;                                 \
                            const int64_t iy = S * Y + row[1], ix = S * X + row[2];               \
                            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;                 \
                            acc += (double)w[o * R + r] *                                         \
                                   (double)x[n * xsn + row[0] * xsc + iy * W + ix];               \
                        }                                                                         \
                        const int64_t at = n * ysn + o * ysc + Y * ya.w + X;                      \
                        double v = acc + (bias ? (double)bias[o] : 0.0);                          \
                        if (res && !res_post) v += (double)res[at];                               \
                        if (relu) v = v > 0.0 ? v : 0.0;                                          \
                        if (res && res_post) v += (double)res[at];                                \
                        y[at] = (T)v;                                                             \
                    }                                                                             \
        return SAL_OK;                                                                            \
    }                                                                                             \
    sal_status sal_ref_shiftconv_bwd##SUFFIX(T *dx, T *dw, const T *dy, const T *x, const T *w,   \
                                             const sal_shiftconv_desc *d) {                       \
        const char *fn = "sal_ref_shiftconv_bwd" #SUFFIX;                                         \
        sal_act ya;                                                                               \
        SAL_TRY(sal_shiftconv_check(d, &ya));                                                     \
        SAL_REQUIRE(dy && (!dw || x) && (!dx || d->r == 0 || w), fn,                              \
                    "dy must not be NULL, nor x (for dw) or w (for dx)");                         \
        const int64_t H = d->x.h, W = d->x.w, S = d->stride, R = d->r;                            \
        const int64_t xsn = sal_act_sn(d->x), xsc = sal_act_sc(d->x);                             \
        const int64_t ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);                                 \
        for (int64_t r = 0; r < R; r++) {                                                         \
            const int32_t *row = d->rows + 3 * r;                                                 \
            for (int64_t o = 0; o < ya.c; o++) {                                                  \
                double gw = 0.0;                                                                  \
                for (int64_t n = 0; n < ya.n; n++)                                                \
                    for (int64_t Y = 0; Y < ya.h; Y++)                                            \
                        for (int64_t X = 0; X < ya.w; X++) {                                      \
                            const int64_t iy = S * Y + row[1], ix = S * X + row[2];               \
                            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;                 \
                            const int64_t xi = n * xsn + row[0] * xsc + iy * W + ix;              \
                            const double g = (double)dy[n * ysn + o * ysc + Y * ya.w + X];        \
                            if (dw) gw += g * (double)x[xi];                                      \
                            if (dx) dx[xi] = (T)((double)dx[xi] + (double)w[o * R + r] * g);      \
                        }                                                                         \
                if (dw) dw[o * R + r] = (T)((double)dw[o * R + r] + gw);                          \
            }                                                                                     \
        }                                                                                         \
        return SAL_OK;                                                                            \
    }

REF_SC(, float)
REF_SC(_f64, double)

sal_status sal_ref_shiftconv_fwd(float *y, const float *x, const float *w,
                                 const sal_shiftconv_epi *epi, const sal_shiftconv_desc *d) {
    const sal_shiftconv_epi none = {0};
    if (!epi) epi = &none;
    return ref_fwd(y, x, w, epi->bias, epi->res, epi->relu, epi->res_post, d);
}

sal_status sal_ref_shiftconv_fwd_f64(double *y, const double *x, const double *w,
                                     const double *bias, const double *res, int relu,
                                     int res_post, const sal_shiftconv_desc *d) {
    return ref_fwd_f64(y, x, w, bias, res, relu, res_post, d);
}
