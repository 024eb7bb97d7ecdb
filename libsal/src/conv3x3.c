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

#include "internal/conv_internal.h"
#include "internal/cpu.h"

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

/* AVX2 has 16 vector registers, too few for tile_avx2's 16 accumulators plus operands (it
 * spills, and loads one broadcast weight per FMA).  This one covers 3 vectors of 8
 * positions (p0 .. p0+24) for the 16 outputs of block ob in 4 passes of 4 outputs:
 * 12 accumulators, 3 + 4 loads per 12 FMAs. */
__attribute__((target("avx2,fma"))) static void tile3_avx2(
    float *ypad, int64_t yps, const float *xpad, int64_t xps, const float *wt, int64_t o16,
    int64_t ob, int64_t cin, const int64_t *offs, int64_t p0) {
    typedef float vec __attribute__((vector_size(32)));
    for (int s = 0; s < OB; s += 4) {
        vec a0[4], a1[4], a2[4];
        for (int j = 0; j < 4; j++) a0[j] = a1[j] = a2[j] = (vec){0};
        for (int64_t c = 0; c < cin; c++) {
            const float *xc = xpad + c * xps + p0;
            const float *wc = wt + c * 9 * o16 + ob * OB + s;
            for (int q = 0; q < 9; q++) {
                vec b0, b1, b2;
                const float *xq = xc + offs[q];
                memcpy(&b0, xq, sizeof b0);
                memcpy(&b1, xq + 8, sizeof b1);
                memcpy(&b2, xq + 16, sizeof b2);
                const float *wq = wc + q * o16;
                _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) {
                    const float wj = wq[j];
                    const vec w = {wj, wj, wj, wj, wj, wj, wj, wj};
                    a0[j] += w * b0;
                    a1[j] += w * b1;
                    a2[j] += w * b2;
                }
            }
        }
        for (int j = 0; j < 4; j++) {
            float *y = ypad + (ob * OB + s + j) * yps + p0;
            memcpy(y, &a0[j], sizeof(vec));
            memcpy(y + 8, &a1[j], sizeof(vec));
            memcpy(y + 16, &a2[j], sizeof(vec));
        }
    }
}

typedef void (*wgrad_fn)(float *dw, int64_t cin, int64_t o, int64_t o0, int64_t c, int ky,
                         const float *dypad, int64_t yps, const float *xr, int64_t tiles);

/* outputs per weight-gradient block: AVX-512 8 outputs x 3 taps = 24 accumulators of its 32
 * registers; AVX2 and SSE 4 x 3 = 12 of their 16 */

/* dw[o0 + j][c][ky][kx] += sum over the grid of dypad[o0 + j][p] * xr[p + kx] for the
 * outputs below o, j < 8, kx < 3; xr = the padded plane of input c from row ky (dypad is 0
 * on junk columns, so they contribute nothing).  Per tile: 8 + 3 loads for 24 FMAs. */
#define WGRAD_KERNEL(NAME, V, WB, TARGET)                                                          \
    __attribute__((target(TARGET))) static void NAME(                                           \
        float *dw, int64_t cin, int64_t o, int64_t o0, int64_t c, int ky, const float *dypad,   \
        int64_t yps, const float *xr, int64_t tiles) {                                          \
        typedef float vec __attribute__((vector_size(4 * (V))));                               \
        vec acc[WB][3];                                                                         \
        _Pragma("GCC unroll 8") for (int j = 0; j < (WB); j++) acc[j][0] = acc[j][1] = acc[j][2] = (vec){0}; \
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

WGRAD_KERNEL(wgrad_avx512, 16, 8, "avx512f")
WGRAD_KERNEL(wgrad_avx2, 8, 4, "avx2,fma")
WGRAD_KERNEL(wgrad_base, 4, 4, "sse2")

/* the kernels for this CPU: tile (v positions), wide (nv*v positions, or NULL), weight
 * gradient (wb outputs per block) */
typedef struct {
    tile_fn tile, wide;
    wgrad_fn wg;
    int64_t v, nv, wb;
} kernels3x3;

static const kernels3x3 KERNELS3X3[SAL_ISA_COUNT] = {
    [SAL_ISA_BASE] = {tile_base, NULL, wgrad_base, 4, 1, 4},
    [SAL_ISA_AVX2] = {tile_avx2, tile3_avx2, wgrad_avx2, 8, 3, 4},
    [SAL_ISA_AVX512] = {tile_avx512, NULL, wgrad_avx512, 16, 1, 8},
};

static kernels3x3 pick_kernels(void) { return KERNELS3X3[sal_cpu_isa()]; }

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

typedef struct {
    float *out, *scratch;
    const float *in, *w;
    sal_act ina;
    int64_t o, v, per, nblk;
    kernels3x3 k;
    int accumulate, grad;
    geom3x3 g;
    tile_fn tile;
    int64_t offs[9];
} run_task;

/* wt[(c*9 + q)*o16 + oo] = weight of output oo, input c, tap q (0 beyond O) */
static void run_weights(void *p, int64_t c0, int64_t c1, int tid) {
    const run_task *t = p;
    const int64_t C = t->ina.c, o = t->o, o16 = t->g.o16;
    for (int64_t c = c0; c < c1; c++)
        for (int q = 0; q < 9; q++) {
            float *row = t->scratch + (c * 9 + q) * o16;
            for (int64_t oo = 0; oo < o16; oo++)
                row[oo] = oo >= o ? 0.0f
                          : t->grad ? t->w[(c * o + oo) * 9 + (8 - q)]
                                    : t->w[(oo * C + c) * 9 + q];
        }
}

static void run_images(void *p, int tid, int nt) {
    const run_task *t = p;
    const geom3x3 g = t->g;
    const int64_t C = t->ina.c, H = t->ina.h, W = t->ina.w, o = t->o;
    const sal_act outa = {t->ina.n, o, H, W, t->ina.layout};
    const int64_t osn = sal_act_sn(outa), osc = sal_act_sc(outa);
    const float *wt = t->scratch;
    float *xpad = t->scratch + C * 9 * g.o16 + tid * t->per, *ypad = xpad + C * g.xps;
    int64_t n0, n1;
    sal_block(t->ina.n, tid, nt, &n0, &n1);
    if (n0 >= n1) return;
    memset(xpad, 0, (size_t)(C * g.xps) * sizeof(float));
    for (int64_t n = n0; n < n1; n++) {
        pad_planes(xpad, g.xps, t->in, t->ina, n, g.wp, 1);
        for (int64_t b = 0; b < t->nblk; b++) {
            int64_t tt = 0;
            if (t->k.wide)   /* nv tiles at a time, the rest one by one */
                for (; tt + t->k.nv <= g.tiles; tt += t->k.nv)
                    t->k.wide(ypad, g.yps, xpad, g.xps, wt, g.o16, b, C, t->offs, tt * t->v);
            for (; tt < g.tiles; tt++)
                t->tile(ypad, g.yps, xpad, g.xps, wt, g.o16, b, C, t->offs, tt * t->v);
        }
        for (int64_t oo = 0; oo < o; oo++) {
            float *dst = t->out + n * osn + oo * osc;
            const float *src = ypad + oo * g.yps;
            for (int64_t y = 0; y < H; y++) {
                if (t->accumulate)
                    for (int64_t x = 0; x < W; x++) dst[y * W + x] += src[y * g.wp + x];
                else
                    memcpy(dst + y * W, src + y * g.wp, (size_t)W * sizeof(float));
            }
        }
    }
}

/* out (N,O,H,W) = [out +] conv3x3(in (N,Cin,H,W), weights), in `ina`'s layout.
 * w (O,Cin,3,3) as stored, or, when `grad` is set, w (Cin,O,3,3) whose transposed and
 * flipped kernel is applied (the input gradient of a conv with weights w).
 * Images are split among t threads, each with its own planes. */
void sal_conv3x3_run(float *out, int accumulate, const float *in, sal_act ina, int64_t o,
                     const float *w, int grad, float *scratch, int t) {
    run_task rt;
    rt.k = pick_kernels();
    rt.tile = rt.k.tile;
    rt.v = rt.k.v;
    rt.g = geom_of(o, ina.h, ina.w, rt.v);
    rt.out = out;
    rt.scratch = scratch;
    rt.in = in;
    rt.w = w;
    rt.ina = ina;
    rt.o = o;
    rt.accumulate = accumulate;
    rt.grad = grad;
    rt.per = ina.c * rt.g.xps + rt.g.o16 * rt.g.yps;
    rt.nblk = rt.g.o16 / OB;
    for (int q = 0; q < 9; q++) rt.offs[q] = (q / 3) * rt.g.wp + q % 3;
    sal_parallel_for(ina.c, t, run_weights, &rt);
    sal_parallel(t, run_images, &rt);
}

typedef struct {
    float *dw, *scratch;
    const float *dy, *x;
    sal_act xa;
    int64_t o, per, wo8, nblk, nw, wb;
    geom3x3 g;
    wgrad_fn wg;
    int t;
} wgrad_task;

static void wgrad_images(void *p, int tid, int nt) {
    const wgrad_task *t = p;
    const geom3x3 g = t->g;
    const int64_t C = t->xa.c;
    const sal_act ya = {t->xa.n, t->o, t->xa.h, t->xa.w, t->xa.layout};
    float *xpad = t->scratch + tid * t->per, *dypad = xpad + C * g.xps, *part = dypad + t->wo8 * g.yps;
    memset(xpad, 0, (size_t)t->per * sizeof(float));
    int64_t n0, n1;
    sal_block(t->xa.n, tid, nt, &n0, &n1);
    for (int64_t n = n0; n < n1; n++) {
        pad_planes(xpad, g.xps, t->x, t->xa, n, g.wp, 1);
        pad_planes(dypad, g.yps, t->dy, ya, n, g.wp, 0);  /* columns W, W+1 stay 0 */
        for (int64_t c = 0; c < C; c++)
            for (int ky = 0; ky < 3; ky++)
                for (int64_t b = 0; b < t->nblk; b++)
                    t->wg(part, C, t->o, b * t->wb, c, ky, dypad, g.yps, xpad + c * g.xps + ky * g.wp,
                          g.tiles);
    }
}

static void wgrad_sum(void *p, int64_t e0, int64_t e1, int tid) {
    const wgrad_task *t = p;
    const int64_t off = t->xa.c * t->g.xps + t->wo8 * t->g.yps;
    for (int64_t e = e0; e < e1; e++) {
        float s = 0.0f;
        for (int i = 0; i < t->t; i++) s += t->scratch[i * t->per + off + e];
        t->dw[e] += s;
    }
}

/* dw (O,C,3,3) += the weight gradient of the 3x3 / stride 1 / padding 1 convolution of
 * x (N,C,H,W) that produced dy (N,O,H,W).  Each of t threads sums its images into its
 * own partial dw; the partials are then added in thread order (deterministic for a given
 * thread count). */
void sal_conv3x3_wgrad(float *dw, const float *dy, const float *x, sal_act xa, int64_t o,
                       float *scratch, int t) {
    wgrad_task wt;
    int64_t v;
    const kernels3x3 k = pick_kernels();
    v = k.v;
    wt.wg = k.wg;
    wt.wb = k.wb;
    wt.g = geom_of(o, xa.h, xa.w, v);
    wt.dw = dw;
    wt.scratch = scratch;
    wt.dy = dy;
    wt.x = x;
    wt.xa = xa;
    wt.o = o;
    wt.nw = o * xa.c * 9;
    wt.wo8 = (o + k.wb - 1) / k.wb * k.wb;  /* dy rows, padded with zero rows */
    wt.per = xa.c * wt.g.xps + wt.wo8 * wt.g.yps + wt.nw;
    wt.nblk = wt.wo8 / k.wb;
    wt.t = t;
    sal_parallel(t, wgrad_images, &wt);
    sal_parallel_for(wt.nw, t, wgrad_sum, &wt);
}
