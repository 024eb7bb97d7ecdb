/* Naive reference convolution, float and double: the definition, written as loops.
 *   y[n,o,Y,X] = sum_{c,ky,kx} w[o,c,ky,kx] * x[n, c, S*Y + ky - P, S*X + kx - P] */
#include "internal/internal.h"
#include "sal/conv.h"

#define REF_CONV(SUFFIX, T)                                                                   \
    sal_status sal_ref_conv_fwd##SUFFIX(T *y, const T *x, const T *w, const sal_conv_desc *d) { \
        sal_act ya;                                                                           \
        SAL_TRY(sal_conv_check(d, &ya));                                                      \
        const int64_t C = d->x.c, H = d->x.h, W = d->x.w, K = d->k, S = d->stride, P = d->pad; \
        const int64_t xsn = sal_act_sn(d->x), xsc = sal_act_sc(d->x);                         \
        const int64_t ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);                             \
        for (int64_t n = 0; n < ya.n; n++)                                                    \
            for (int64_t o = 0; o < ya.c; o++)                                                \
                for (int64_t oy = 0; oy < ya.h; oy++)                                         \
                    for (int64_t ox = 0; ox < ya.w; ox++) {                                   \
                        double s = 0.0;                                                       \
                        for (int64_t c = 0; c < C; c++)                                       \
                            for (int64_t ky = 0; ky < K; ky++)                                \
                                for (int64_t kx = 0; kx < K; kx++) {                          \
                                    int64_t iy = oy * S + ky - P, ix = ox * S + kx - P;       \
                                    if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;     \
                                    s += (double)w[((o * C + c) * K + ky) * K + kx] *         \
                                         x[n * xsn + c * xsc + iy * W + ix];                  \
                                }                                                             \
                        y[n * ysn + o * ysc + oy * ya.w + ox] = (T)s;                         \
                    }                                                                         \
        return SAL_OK;                                                                        \
    }                                                                                         \
    sal_status sal_ref_conv_bwd##SUFFIX(T *dx, T *dw, const T *dy, const T *x, const T *w,    \
                                        const sal_conv_desc *d) {                             \
        sal_act ya;                                                                           \
        SAL_TRY(sal_conv_check(d, &ya));                                                      \
        const int64_t C = d->x.c, H = d->x.h, W = d->x.w, K = d->k, S = d->stride, P = d->pad; \
        const int64_t xsn = sal_act_sn(d->x), xsc = sal_act_sc(d->x);                         \
        const int64_t ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);                             \
        for (int64_t n = 0; n < ya.n; n++)                                                    \
            for (int64_t o = 0; o < ya.c; o++)                                                \
                for (int64_t oy = 0; oy < ya.h; oy++)                                         \
                    for (int64_t ox = 0; ox < ya.w; ox++) {                                   \
                        const T g = dy[n * ysn + o * ysc + oy * ya.w + ox];                   \
                        for (int64_t c = 0; c < C; c++)                                       \
                            for (int64_t ky = 0; ky < K; ky++)                                \
                                for (int64_t kx = 0; kx < K; kx++) {                          \
                                    int64_t iy = oy * S + ky - P, ix = ox * S + kx - P;       \
                                    if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;     \
                                    int64_t wi = ((o * C + c) * K + ky) * K + kx;             \
                                    int64_t xi = n * xsn + c * xsc + iy * W + ix;             \
                                    if (dw) dw[wi] += g * x[xi];                              \
                                    if (dx) dx[xi] += g * w[wi];                              \
                                }                                                             \
                    }                                                                         \
        return SAL_OK;                                                                        \
    }

REF_CONV(, float)
REF_CONV(_f64, double)
