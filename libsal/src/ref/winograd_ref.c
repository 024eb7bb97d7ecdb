/* Naive Winograd F(4x4, 3x3) convolution, float and double: the twin of winograd.c written
 * as plain loops over images, channels and 4x4 output tiles (3x3, stride 1, padding 1).
 *   V = B^T d B (d: the 6x6 input patch at rows 4ty-1 .., columns 4tx-1 .., 0 outside)
 *   U = G g G^T,  Y = A^T (sum_c U (.) V) A,  dU = sum_tiles (A dY A^T) (.) V,
 *   dg = G^T dU G.  The input gradient is the convolution of dy with the kernel flipped in
 *   space and transposed in channels. */
#include <stdlib.h>

#include "internal/internal.h"
#include "sal/conv.h"

static const double BT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
static const double G[6][3] = {{1.0 / 4, 0, 0},           {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                               {-1.0 / 6, 1.0 / 6, -1.0 / 6}, {1.0 / 24, 1.0 / 12, 1.0 / 6},
                               {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};
static const double AT[4][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0},
                                {0, 1, -1, 8, -8, 1}};

static sal_status wino_ref_check(const char *fn, const sal_conv_desc *d) {
    SAL_TRY(sal_conv_check(d, NULL));
    SAL_REQUIRE(d->k == 3 && d->stride == 1 && d->pad == 1, fn,
                "K=%lld, stride=%lld, pad=%lld: Winograd F(4x4, 3x3) needs K=3, stride 1, pad 1",
                (long long)d->k, (long long)d->stride, (long long)d->pad);
    return SAL_OK;
}

#define REF_WINO(SUFFIX, T)                                                                    \
    /* u (36) = G g G^T of the 3x3 kernel g (flip: rotated by 180 degrees) */                   \
    static void kernel_tf##SUFFIX(T *u, const T *g, int flip) {                                 \
        T gg[6][3];                                                                             \
        for (int i = 0; i < 6; i++)                                                             \
            for (int k = 0; k < 3; k++) {                                                       \
                T s = 0;                                                                        \
                for (int r = 0; r < 3; r++)                                                     \
                    s += (T)G[i][r] * g[flip ? 8 - (r * 3 + k) : r * 3 + k];                    \
                gg[i][k] = s;                                                                   \
            }                                                                                   \
        for (int i = 0; i < 6; i++)                                                             \
            for (int j = 0; j < 6; j++) {                                                       \
                T s = 0;                                                                        \
                for (int k = 0; k < 3; k++) s += gg[i][k] * (T)G[j][k];                         \
                u[i * 6 + j] = s;                                                               \
            }                                                                                   \
    }                                                                                           \
    /* v (36) = B^T d B of the patch of plane p (H x W) at rows y0 .., columns x0 .. */         \
    static void input_tf##SUFFIX(T *v, const T *p, int64_t H, int64_t W, int64_t y0, int64_t x0) { \
        T d[6][6], t[6][6];                                                                     \
        for (int i = 0; i < 6; i++)                                                             \
            for (int j = 0; j < 6; j++) {                                                       \
                const int64_t y = y0 + i, x = x0 + j;                                           \
                d[i][j] = y >= 0 && y < H && x >= 0 && x < W ? p[y * W + x] : (T)0;              \
            }                                                                                   \
        for (int i = 0; i < 6; i++)                                                             \
            for (int j = 0; j < 6; j++) {                                                       \
                T s = 0;                                                                        \
                for (int r = 0; r < 6; r++) s += (T)BT[i][r] * d[r][j];                         \
                t[i][j] = s;                                                                    \
            }                                                                                   \
        for (int i = 0; i < 6; i++)                                                             \
            for (int j = 0; j < 6; j++) {                                                       \
                T s = 0;                                                                        \
                for (int r = 0; r < 6; r++) s += t[i][r] * (T)BT[j][r];                         \
                v[i * 6 + j] = s;                                                               \
            }                                                                                   \
    }                                                                                           \
    /* out (N, Co, H, W) (+)= conv3x3(in (N, Ci, H, W)); kernel from input a to output b:      \
     * w[(b*Ci + a)*9] (flip: w[(a*Co + b)*9] rotated, the input gradient's kernel) */          \
    static sal_status wino_conv##SUFFIX(T *out, const T *in, const T *w, sal_act ia,           \
                                        int64_t co, int flip, int acc) {                        \
        const int64_t N = ia.n, ci = ia.c, H = ia.h, W = ia.w, TY = (H + 3) / 4, TX = (W + 3) / 4; \
        const sal_act oa = {N, co, H, W, ia.layout};                                            \
        const int64_t isn = sal_act_sn(ia), isc = sal_act_sc(ia);                               \
        const int64_t osn = sal_act_sn(oa), osc = sal_act_sc(oa);                               \
        T *u = malloc((size_t)(ci * co * 36) * sizeof(T));                                      \
        T *v = malloc((size_t)(ci * 36) * sizeof(T));                                           \
        if (!u || !v) {                                                                         \
            free(u);                                                                            \
            free(v);                                                                            \
            return sal_fail(SAL_ENOMEM, "sal_ref_wino", "no memory for %lld transformed weights", \
                            (long long)(ci * co * 36));                                         \
        }                                                                                       \
        for (int64_t b = 0; b < co; b++)                                                        \
            for (int64_t a = 0; a < ci; a++)                                                    \
                kernel_tf##SUFFIX(u + (b * ci + a) * 36,                                        \
                                  flip ? w + (a * co + b) * 9 : w + (b * ci + a) * 9, flip);    \
        for (int64_t n = 0; n < N; n++)                                                         \
            for (int64_t ty = 0; ty < TY; ty++)                                                 \
                for (int64_t tx = 0; tx < TX; tx++) {                                           \
                    for (int64_t a = 0; a < ci; a++)                                            \
                        input_tf##SUFFIX(v + a * 36, in + n * isn + a * isc, H, W, 4 * ty - 1,   \
                                         4 * tx - 1);                                           \
                    for (int64_t b = 0; b < co; b++) {                                          \
                        T m[36] = {0}, r[4][6];                                                 \
                        for (int64_t a = 0; a < ci; a++)                                        \
                            for (int e = 0; e < 36; e++)                                \
                                m[e] += u[(b * ci + a) * 36 + e] * v[a * 36 + e];       \
                        for (int i = 0; i < 4; i++)                                             \
                            for (int j = 0; j < 6; j++) {                                       \
                                T s = 0;                                                        \
                                for (int k = 0; k < 6; k++) s += (T)AT[i][k] * m[k * 6 + j];    \
                                r[i][j] = s;                                                    \
                            }                                                                   \
                        for (int i = 0; i < 4; i++)                                             \
                            for (int j = 0; j < 4; j++) {                                       \
                                const int64_t y = 4 * ty + i, x = 4 * tx + j;                   \
                                if (y >= H || x >= W) continue;                                 \
                                T s = 0;                                                        \
                                for (int k = 0; k < 6; k++) s += r[i][k] * (T)AT[j][k];         \
                                T *o = out + n * osn + b * osc + y * W + x;                     \
                                *o = acc ? *o + s : s;                                          \
                            }                                                                   \
                    }                                                                           \
                }                                                                               \
        free(u);                                                                                \
        free(v);                                                                                \
        return SAL_OK;                                                                          \
    }                                                                                           \
    sal_status sal_ref_wino_fwd##SUFFIX(T *y, const T *x, const T *w, const sal_conv_desc *d) { \
        SAL_TRY(wino_ref_check("sal_ref_wino_fwd", d));                                         \
        return wino_conv##SUFFIX(y, x, w, d->x, d->o, 0, 0);                                    \
    }                                                                                           \
    sal_status sal_ref_wino_bwd##SUFFIX(T *dx, T *dw, const T *dy, const T *x, const T *w,      \
                                        const sal_conv_desc *d) {                               \
        SAL_TRY(wino_ref_check("sal_ref_wino_bwd", d));                                         \
        const sal_act ya = {d->x.n, d->o, d->x.h, d->x.w, d->x.layout};                         \
        if (dx) SAL_TRY(wino_conv##SUFFIX(dx, dy, w, ya, d->x.c, 1, 1));                         \
        if (!dw) return SAL_OK;                                                                 \
        const int64_t N = d->x.n, C = d->x.c, O = d->o, H = d->x.h, W = d->x.w;                 \
        const int64_t TY = (H + 3) / 4, TX = (W + 3) / 4;                                       \
        const int64_t xsn = sal_act_sn(d->x), xsc = sal_act_sc(d->x);                           \
        const int64_t ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);                               \
        T *du = calloc((size_t)(O * C * 36), sizeof(T));                                       \
        T *v = malloc((size_t)(C * 36) * sizeof(T));                                            \
        if (!du || !v) {                                                                        \
            free(du);                                                                           \
            free(v);                                                                            \
            return sal_fail(SAL_ENOMEM, "sal_ref_wino_bwd", "no memory for %lld floats",        \
                            (long long)(O * C * 36));                                           \
        }                                                                                       \
        for (int64_t n = 0; n < N; n++)                                                         \
            for (int64_t ty = 0; ty < TY; ty++)                                                 \
                for (int64_t tx = 0; tx < TX; tx++) {                                           \
                    for (int64_t c = 0; c < C; c++)                                             \
                        input_tf##SUFFIX(v + c * 36, x + n * xsn + c * xsc, H, W, 4 * ty - 1,    \
                                         4 * tx - 1);                                           \
                    for (int64_t o = 0; o < O; o++) {                                           \
                        T g[4][4], t[6][4], gm[36];                                             \
                        for (int i = 0; i < 4; i++)                                             \
                            for (int j = 0; j < 4; j++) {                                       \
                                const int64_t yy = 4 * ty + i, xx = 4 * tx + j;                 \
                                g[i][j] = yy < H && xx < W                              \
                                              ? dy[n * ysn + o * ysc + yy * W + xx] : (T)0; \
                            }                                                                   \
                        for (int i = 0; i < 6; i++)                                             \
                            for (int j = 0; j < 4; j++) {                                       \
                                T s = 0;                                                        \
                                for (int k = 0; k < 4; k++) s += (T)AT[k][i] * g[k][j];         \
                                t[i][j] = s;                                                    \
                            }                                                                   \
                        for (int i = 0; i < 6; i++)                                             \
                            for (int j = 0; j < 6; j++) {                                       \
                                T s = 0;                                                        \
                                for (int k = 0; k < 4; k++) s += t[i][k] * (T)AT[k][j];         \
                                gm[i * 6 + j] = s;                                              \
                            }                                                                   \
                        for (int64_t c = 0; c < C; c++)                                         \
                            for (int e = 0; e < 36; e++)                                \
                                du[(o * C + c) * 36 + e] += gm[e] * v[c * 36 + e];      \
                    }                                                                           \
                }                                                                               \
        for (int64_t oc = 0; oc < O * C; oc++) {                                                \
            const T *s = du + oc * 36;                                                          \
            T h[6][3];                                                                          \
            for (int i = 0; i < 6; i++)                                                         \
                for (int k = 0; k < 3; k++) {                                                   \
                    T a = 0;                                                                    \
                    for (int j = 0; j < 6; j++) a += s[i * 6 + j] * (T)G[j][k];                 \
                    h[i][k] = a;                                                                \
                }                                                                               \
            for (int ky = 0; ky < 3; ky++)                                                      \
                for (int kx = 0; kx < 3; kx++) {                                                \
                    T a = 0;                                                                    \
                    for (int i = 0; i < 6; i++) a += (T)G[i][ky] * h[i][kx];                    \
                    dw[oc * 9 + ky * 3 + kx] += a;                                              \
                }                                                                               \
        }                                                                                       \
        free(du);                                                                               \
        free(v);                                                                                \
        return SAL_OK;                                                                          \
    }

REF_WINO(, float)
REF_WINO(_f64, double)
