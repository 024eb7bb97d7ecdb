/* Direct 3x3 convolution, stride 1, padding 1: no im2col and no GEMM packing.
 *
 * Each image's C input planes are copied once into zero-bordered planes of width
 * Wp = W + 2.  Output position p = oy*Wp + ox of the "padded-width" output grid then reads
 * tap (ky, kx) at p + ky*Wp + kx of a padded plane, so a run of V consecutive outputs is
 * one unaligned V-float load per (input channel, tap); 16 output channels accumulate in
 * 16 vector registers (an outer product with broadcast weights).  Columns ox >= W of the
 * grid are junk and are dropped when the rows are compacted into y.  The kernel is
 * compiled for AVX-512, AVX2+FMA and baseline x86-64 and chosen at run time.
 *
 * The same routine computes the input gradient of such a convolution: dx is the
 * convolution of dy with the kernel flipped in space and transposed in channels. */
#include <string.h>

#include <omp.h>

#include "internal/conv_internal.h"

#define OB 16 /* output channels per register block */

typedef void (*tile_fn)(float *ypad, int64_t yps, const float *xpad, int64_t xps,
                        const float *wt, int64_t o16, int64_t ob, int64_t cin,
                        const int64_t *offs, int64_t p0);

/* ypad[ob*16 + j][p0 .. p0+V) = sum_{c,q} wt[c*9 + q][ob*16 + j] * xpad[c][p0 + offs[q] ..] */
#define TILE_KERNEL(NAME, V, TARGET)                                                           \
    __attribute__((target(TARGET))) static void NAME(                                           \
        float *ypad, int64_t yps, const float *xpad, int64_t xps, const float *wt, int64_t o16, \
        int64_t ob, int64_t cin, const int64_t *offs, int64_t p0) {                             \
        typedef float vec __attribute__((vector_size(4 * (V))));                               \
        vec acc[OB];                                                                            \
        _Pragma("GCC unroll 16") for (int j = 0; j < OB; j++) acc[j] = (vec){0};                \
        for (int64_t c = 0; c < cin; c++) {                                                     \
            const float *xc = xpad + c * xps + p0;                                              \
            const float *wc = wt + c * 9 * o16 + ob * OB;                                       \
            for (int q = 0; q < 9; q++) {                                                       \
                vec b;                                                                          \
                memcpy(&b, xc + offs[q], sizeof b);                                             \
                const float *wq = wc + q * o16;                                                 \
                _Pragma("GCC unroll 16") for (int j = 0; j < OB; j++) acc[j] += wq[j] * b;      \
            }                                                                                   \
        }                                                                                       \
        _Pragma("GCC unroll 16") for (int j = 0; j < OB; j++)                                   \
            memcpy(ypad + (ob * OB + j) * yps + p0, &acc[j], sizeof(vec));                      \
    }

TILE_KERNEL(tile_avx512, 16, "avx512f")
TILE_KERNEL(tile_avx2, 8, "avx2,fma")
TILE_KERNEL(tile_base, 4, "sse2")

typedef void (*wgrad_fn)(float *dw, int64_t cin, int64_t o, int64_t o0, int64_t c, int ky,
                         const float *dypad, int64_t yps, const float *xr, int64_t tiles);

#define WB 8 /* outputs per weight-gradient block: 8 outputs x 3 taps = 24 accumulators */

/* dw[o0 + j][c][ky][kx] += sum over the grid of dypad[o0 + j][p] * xr[p + kx] for the
 * outputs below o, j < 8, kx < 3; xr = the padded plane of input c from row ky (dypad is 0
 * on junk columns, so they contribute nothing).  Per tile: 8 + 3 loads for 24 FMAs. */
#define WGRAD_KERNEL(NAME, V, TARGET)                                                          \
    __attribute__((target(TARGET))) static void NAME(                                           \
        float *dw, int64_t cin, int64_t o, int64_t o0, int64_t c, int ky, const float *dypad,   \
        int64_t yps, const float *xr, int64_t tiles) {                                          \
        typedef float vec __attribute__((vector_size(4 * (V))));                               \
        vec acc[WB][3];                                                                         \
        _Pragma("GCC unroll 8") for (int j = 0; j < WB; j++) acc[j][0] = acc[j][1] = acc[j][2] = (vec){0}; \
        const float *dyb = dypad + o0 * yps;                                                    \
        for (int64_t t = 0; t < tiles; t++) {                                                   \
            vec b0, b1, b2;                                                                     \
            memcpy(&b0, xr + t * (V), sizeof b0);                                               \
            memcpy(&b1, xr + t * (V) + 1, sizeof b1);                                           \
            memcpy(&b2, xr + t * (V) + 2, sizeof b2);                                           \
            _Pragma("GCC unroll 8") for (int j = 0; j < WB; j++) {                              \
                vec g;                                                                          \
                memcpy(&g, dyb + j * yps + t * (V), sizeof g);                                  \
                acc[j][0] += g * b0;                                                            \
                acc[j][1] += g * b1;                                                            \
                acc[j][2] += g * b2;                                                            \
            }                                                                                   \
        }                                                                                       \
        for (int j = 0; j < WB && o0 + j < o; j++)                                              \
            for (int kx = 0; kx < 3; kx++) {                                                    \
                float s = 0.0f;                                                                 \
                for (int l = 0; l < (V); l++) s += acc[j][kx][l];                               \
                dw[((o0 + j) * cin + c) * 9 + ky * 3 + kx] += s;                                \
            }                                                                                   \
    }

WGRAD_KERNEL(wgrad_avx512, 16, "avx512f")
WGRAD_KERNEL(wgrad_avx2, 8, "avx2,fma")
WGRAD_KERNEL(wgrad_base, 4, "sse2")

static tile_fn pick_tile(int64_t *v, wgrad_fn *wg) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return *v = 16, *wg = wgrad_avx512, tile_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return *v = 8, *wg = wgrad_avx2, tile_avx2;
    return *v = 4, *wg = wgrad_base, tile_base;
}

/* sizes of one image's working set, for Cin input and O output channels */
typedef struct {
    int64_t v, wp, tiles, yps, xps, o16;
} geom3x3;

static geom3x3 geom_of(int64_t o, int64_t h, int64_t w, int64_t v) {
    geom3x3 g;
    g.v = v;
    g.wp = w + 2;
    g.tiles = (h * g.wp + v - 1) / v;
    g.yps = g.tiles * v;
    g.xps = (g.yps + 2 * g.wp + 2 + 15) / 16 * 16;  /* reads reach p + 2*Wp + 2 */
    g.o16 = (o + OB - 1) / OB * OB;
    return g;
}

int sal_conv3x3_threads(const sal_conv_desc *d) {
    return d->threads > 0 ? d->threads : sal_threads();
}

/* floats: shared transposed weights, then per thread a padded input and an output grid
 * (or, for the weight gradient, a padded input, a dy grid and a partial dw); SIZE_MAX
 * when that passes 2^62 (computed in 128 bits, so no size can overflow) */
static size_t scratch_of(int64_t cin, int64_t o, int64_t h, int64_t w, int64_t t) {
    typedef unsigned __int128 u128;
    const u128 wp = (u128)w + 2, yps = ((u128)h * wp + 15) / 16 * 16;
    const u128 xps = (yps + 2 * wp + 2 + 15) / 16 * 16, o16 = ((u128)o + OB - 1) / OB * OB;
    const u128 total = (u128)cin * 9 * o16 + (u128)t * ((u128)cin * xps + o16 * yps + (u128)o * cin * 9);
    return total > ((u128)1 << 62) ? SIZE_MAX : (size_t)total;
}

static size_t scratch3x3(const sal_conv_desc *d) {
    const int t = sal_conv3x3_threads(d);
    size_t f = scratch_of(d->x.c, d->o, d->x.h, d->x.w, t);  /* forward, weight grad: C -> O */
    size_t b = scratch_of(d->o, d->x.c, d->x.h, d->x.w, t);  /* input gradient: O -> C */
    return f > b ? f : b;
}

/* the direct path: 3x3, stride 1, padding 1, and a working set that fits (else im2col) */
bool sal_conv3x3_applies(const sal_conv_desc *d) {
    return d->k == 3 && d->stride == 1 && d->pad == 1 && scratch3x3(d) != SIZE_MAX;
}

size_t sal_conv3x3_scratch(const sal_conv_desc *d) { return scratch3x3(d); }

/* copy the planes of image n of `a` into zero-bordered planes of width W + 2 at row
 * `row0` and column `row0` (1: a padded input; 0: the output grid) */
static void pad_planes(float *dst, int64_t dps, const float *src, sal_act a, int64_t n,
                       int64_t wp, int64_t row0) {
    const int64_t sn = sal_act_sn(a), sc = sal_act_sc(a);
    for (int64_t c = 0; c < a.c; c++) {
        const float *s = src + n * sn + c * sc;
        float *d = dst + c * dps + row0 * wp + row0;
        for (int64_t y = 0; y < a.h; y++) memcpy(d + y * wp, s + y * a.w, (size_t)a.w * sizeof(float));
    }
}

/* out (N,O,H,W) = [out +] conv3x3(in (N,Cin,H,W), weights), in `ina`'s layout.
 * w (O,Cin,3,3) as stored, or, when `grad` is set, w (Cin,O,3,3) whose transposed and
 * flipped kernel is applied (the input gradient of a conv with weights w).
 * Images are split among t threads, each with its own planes: one barrier per call. */
void sal_conv3x3_run(float *out, int accumulate, const float *in, sal_act ina, int64_t o,
                     const float *w, int grad, float *scratch, int t) {
    const int64_t C = ina.c, H = ina.h, W = ina.w;
    int64_t v;
    wgrad_fn wg;
    const tile_fn tile = pick_tile(&v, &wg);
    const geom3x3 g = geom_of(o, H, W, v);
    const int64_t per = C * g.xps + g.o16 * g.yps;
    float *wt = scratch;
    const sal_act outa = {ina.n, o, H, W, ina.layout};
    const int64_t osn = sal_act_sn(outa), osc = sal_act_sc(outa);
    int64_t offs[9];
    for (int q = 0; q < 9; q++) offs[q] = (q / 3) * g.wp + q % 3;
    const int64_t nblk = g.o16 / OB;
#pragma omp parallel num_threads(t)
    {
        /* wt[(c*9 + q)*o16 + oo] = weight of output oo, input c, tap q (0 beyond O) */
#pragma omp for schedule(static)
        for (int64_t c = 0; c < C; c++)
            for (int q = 0; q < 9; q++) {
                float *row = wt + (c * 9 + q) * g.o16;
                for (int64_t oo = 0; oo < g.o16; oo++)
                    row[oo] = oo >= o ? 0.0f
                              : grad ? w[(c * o + oo) * 9 + (8 - q)]
                                     : w[(oo * C + c) * 9 + q];
            }
        const int me = omp_get_thread_num();
        float *xpad = wt + C * 9 * g.o16 + me * per, *ypad = xpad + C * g.xps;
        memset(xpad, 0, (size_t)(C * g.xps) * sizeof(float));
#pragma omp for schedule(static)
        for (int64_t n = 0; n < ina.n; n++) {
            pad_planes(xpad, g.xps, in, ina, n, g.wp, 1);
            for (int64_t b = 0; b < nblk; b++)
                for (int64_t tt = 0; tt < g.tiles; tt++)
                    tile(ypad, g.yps, xpad, g.xps, wt, g.o16, b, C, offs, tt * v);
            for (int64_t oo = 0; oo < o; oo++) {
                float *dst = out + n * osn + oo * osc;
                const float *src = ypad + oo * g.yps;
                for (int64_t y = 0; y < H; y++) {
                    if (accumulate)
                        for (int64_t x = 0; x < W; x++) dst[y * W + x] += src[y * g.wp + x];
                    else
                        memcpy(dst + y * W, src + y * g.wp, (size_t)W * sizeof(float));
                }
            }
        }
    }
}

/* dw (O,C,3,3) += the weight gradient of the 3x3 / stride 1 / padding 1 convolution of
 * x (N,C,H,W) that produced dy (N,O,H,W).  Each of t threads sums its images into its
 * own partial dw; the partials are then added in thread order (deterministic for a given
 * thread count). */
void sal_conv3x3_wgrad(float *dw, const float *dy, const float *x, sal_act xa, int64_t o,
                       float *scratch, int t) {
    const int64_t C = xa.c, H = xa.h, W = xa.w, nw = o * C * 9;
    int64_t v;
    wgrad_fn wg;
    (void)pick_tile(&v, &wg);
    const geom3x3 g = geom_of(o, H, W, v);
    const int64_t wo8 = (o + WB - 1) / WB * WB;  /* dy rows, padded with zero rows */
    const int64_t per = C * g.xps + wo8 * g.yps + nw;
    const sal_act ya = {xa.n, o, H, W, xa.layout};
    const int64_t nblk = wo8 / WB;
#pragma omp parallel num_threads(t)
    {
        const int me = omp_get_thread_num();
        float *xpad = scratch + me * per, *dypad = xpad + C * g.xps, *part = dypad + wo8 * g.yps;
        memset(xpad, 0, (size_t)per * sizeof(float));
#pragma omp for schedule(static)
        for (int64_t n = 0; n < xa.n; n++) {
            pad_planes(xpad, g.xps, x, xa, n, g.wp, 1);
            pad_planes(dypad, g.yps, dy, ya, n, g.wp, 0);  /* columns W, W+1 stay 0 */
            for (int64_t c = 0; c < C; c++)
                for (int ky = 0; ky < 3; ky++)
                    for (int64_t b = 0; b < nblk; b++)
                        wg(part, C, o, b * WB, c, ky, dypad, g.yps, xpad + c * g.xps + ky * g.wp,
                           g.tiles);
        }
#pragma omp for schedule(static)
        for (int64_t e = 0; e < nw; e++) {
            float s = 0.0f;
            for (int i = 0; i < t; i++) s += scratch[i * per + C * g.xps + wo8 * g.yps + e];
            dw[e] += s;
        }
    }
}
