/* GATHER, the binarised unshared SAL layer (sal/gather.h), forward only.
 *
 * Layout.  For stride S, the input (C, N, H, W) is rewritten as phase planes
 *   P[i][a*S + b][n][u][v] = xpad[n, i, S*u + a, S*v + b],   xpad = x padded by 1 (zeros),
 *   u < Hph = Ho + 2/S, v < Wph = Wo + 2/S,
 * so that output (n, Y, X) of pair (o, i, dy, dx) reads, with ey = 1 + dy, ex = 1 + dx,
 *   P[i][(ey%S)*S + ex%S][n][Y + ey/S][X + ex/S].
 * Numbering the positions q = (n*Hph + u)*Wph + v of one (i, phase) block, that is
 * q + src(pair) with a constant src(pair) = (i*S*S + phase)*B + (ey/S)*Wph + ex/S, where the
 * block stride B >= N*Hph*Wph is padded to an odd number of cache lines (see block_stride).
 * A tile of T consecutive q (several rows, possibly several images) accumulates
 * w * P[q + src .. + T) over the pairs of one output channel in registers; positions with
 * u >= Ho or v >= Wo are computed and dropped.  The planes carry T + 2*Wph + 2 floats of
 * zeroed slack at the end, so no tile reads past the buffer.
 *
 * Scratch (floats): [src (npair int64) | rowptr (O + 1 int64) | phase planes]. */
#include <stdlib.h>
#include <string.h>

#include "internal/cpu.h"
#include "internal/epilogue.h"
#include "internal/internal.h"
#include "internal/range.h"
#include "sal/gather.h"

#define GT 128  /* the largest GATHER tile (outputs per kernel call; see GATHER below) */

static const char *FN = "sal_gather";

/* phase-plane geometry of a GATHER op for stride S and output (Ho, Wo) */
static void phase_geom(int64_t S, int64_t Ho, int64_t Wo, int64_t *hph, int64_t *wph) {
    *hph = Ho + 2 / S;
    *wph = Wo + 2 / S;
}

/* floats between consecutive (channel, phase) blocks of m floats: m rounded up to whole
 * 64-byte lines, and an odd number of lines, so that the blocks a tile reads do not all
 * fall into the same few L1 sets (power-of-two-like strides made 64-channel layers
 * miss in L1 on every pair) */
static int64_t block_stride(int64_t m) {
    int64_t b = (m + 15) / 16 * 16;
    return (b / 16) % 2 ? b : b + 16;
}

/* floats of phase planes (with slack) for batch N: C * S*S planes of
 * block_stride(N * Hph * Wph) floats, every product checked (a stride near 2**62 from a
 * file made S*S wrap); SIZE_MAX when it does not fit */
static size_t planes_size(int64_t C, int64_t N, int64_t S, int64_t Ho, int64_t Wo) {
    int64_t hph, wph, planes, m, tot;
    phase_geom(S, Ho, Wo, &hph, &wph);
    if (!sal_mul_ok(C, S, &planes) || !sal_mul_ok(planes, S, &planes) ||
        !sal_mul_ok(N, hph, &m) || !sal_mul_ok(m, wph, &m) || m > ((int64_t)1 << 61) ||
        !sal_mul_ok(planes, block_stride(m), &tot) || tot > ((int64_t)1 << 61))
        return SIZE_MAX;
    return (size_t)tot + GT + 2 * (size_t)wph + 2;
}

/* int64 slots before the planes: src (npair) and rowptr (O + 1), two floats each */
static size_t index_floats(const sal_gather_desc *d) { return 2 * (size_t)(d->npair + d->o + 1); }

sal_status sal_gather_check(const sal_gather_desc *d, sal_act *y) {
    SAL_REQUIRE(d != NULL, FN, "desc=NULL: must point to a sal_gather_desc");
    SAL_TRY(sal_act_check(FN, "x", d->x));
    const sal_act x = d->x;
    SAL_REQUIRE(x.layout == SAL_CNHW, FN, "x: must be channel-major (SAL_CNHW)");
    SAL_REQUIRE(d->o >= 1 && d->o <= ((int64_t)1 << 40), FN, "O=%lld: must be in [1, 2**40]",
                (long long)d->o);
    /* the S*S phase planes grow with S: a stride beyond the padded input (which changes
     * nothing: one output row and column) is refused */
    const int64_t hw = x.h > x.w ? x.h : x.w;
    SAL_REQUIRE(d->stride >= 1 && d->stride <= hw + 2, FN,
                "stride=%lld: must be in [1, max(H, W) + 2 = %lld] (the padded input)",
                (long long)d->stride, (long long)(hw + 2));
    SAL_REQUIRE(d->npair >= 0 && d->npair <= ((int64_t)1 << 40) && (d->npair == 0 || d->pairs),
                FN, "npair=%lld: must be in [0, 2**40] with the pairs given", (long long)d->npair);
    SAL_REQUIRE(d->threads >= 0 && d->threads <= 1024, FN, "threads=%d: must be in [0, 1024]",
                d->threads);
    int64_t prev = 0;
    for (int64_t k = 0; k < d->npair; k++) {
        const int32_t *r = d->pairs + 4 * k;
        SAL_REQUIRE(r[0] >= prev && r[0] < d->o && r[1] >= 0 && r[1] < x.c && r[2] >= -1 &&
                        r[2] <= 1 && r[3] >= -1 && r[3] <= 1, FN,
                    "pair %lld = (%d, %d, %d, %d): needs o sorted in [0, %lld), i in [0, %lld), "
                    "|dy|, |dx| <= 1", (long long)k, r[0], r[1], r[2], r[3], (long long)d->o,
                    (long long)x.c);
        prev = r[0];
    }
    const sal_act out = {x.n, d->o, (x.h - 1) / d->stride + 1, (x.w - 1) / d->stride + 1,
                         SAL_CNHW};
    SAL_TRY(sal_act_check(FN, "y", out));
    SAL_REQUIRE(planes_size(x.c, 1, d->stride, out.h, out.w) != SIZE_MAX, FN,
                "phase planes of C=%lld, stride %lld: size does not fit", (long long)x.c,
                (long long)d->stride);
    if (y) *y = out;
    return SAL_OK;
}

size_t sal_gather_scratch(const sal_gather_desc *d) {
    sal_act y;
    if (sal_gather_check(d, &y) != SAL_OK) return 0;
    const size_t p = planes_size(d->x.c, d->x.n, d->stride, y.h, y.w);
    return p == SIZE_MAX ? SIZE_MAX : p + index_floats(d);
}

typedef struct {
    float *P;
    const float *x;
    int64_t N, H, W, S, hph, wph;
} phase_task;

/* idx in [0, C*S*S * (N+1)): plane ip = idx / (N+1), image n = idx % (N+1) (n == N: the
 * padding after the block) */
static void phase_planes_run(void *p, int64_t lo, int64_t hi, int tid) {
    const phase_task *t = p;
    float *P = t->P;
    const float *x = t->x;
    const int64_t N = t->N, H = t->H, W = t->W, S = t->S, hph = t->hph, wph = t->wph;
    const int64_t plane = hph * wph, SS = S * S, block = block_stride(N * plane);
    for (int64_t idx = lo; idx < hi; idx++) {
        const int64_t ip = idx / (N + 1), n = idx % (N + 1);
        if (n == N) {  /* the padding after the block (read only for dropped positions) */
            memset(P + ip * block + N * plane, 0, (size_t)(block - N * plane) * sizeof *P);
            continue;
        }
        const int64_t i = ip / SS, a = ip % SS / S, b = ip % S;
        const float *xp = x + (i * N + n) * H * W;
        float *dst = P + ip * block + n * plane;
        /* columns v whose source S*v + b - 1 lies in [0, W) */
        int64_t vlo, vhi;
        sal_valid_range(b - 1, S, W, wph, &vlo, &vhi);
        for (int64_t u = 0; u < hph; u++, dst += wph) {
            const int64_t r = S * u + a - 1;
            if (r < 0 || r >= H || vlo >= vhi) { memset(dst, 0, (size_t)wph * sizeof *dst); continue; }
            const float *srow = xp + r * W + b - 1;
            for (int64_t v = 0; v < vlo; v++) dst[v] = 0.0f;
            if (S == 1) memcpy(dst + vlo, srow + vlo, (size_t)(vhi - vlo) * sizeof *dst);
            else for (int64_t v = vlo; v < vhi; v++) dst[v] = srow[S * v];
            for (int64_t v = vhi; v < wph; v++) dst[v] = 0.0f;
        }
    }
}

/* P (C, S*S, N, Hph, Wph) from x (C, N, H, W), zero padding 1; the slack after it zeroed */
static void phase_planes(float *P, const float *x, int64_t C, int64_t N, int64_t H, int64_t W,
                         int64_t S, int64_t hph, int64_t wph, size_t total) {
    const int64_t plane = hph * wph, SS = S * S, block = block_stride(N * plane);
    phase_task t = {P, x, N, H, W, S, hph, wph};
    sal_parallel_for(C * SS * (N + 1), sal_threads(), phase_planes_run, &t);
    const size_t used = (size_t)(C * SS * block);
    memset(P + used, 0, (total - used) * sizeof *P);
}

/* ---- GATHER kernel ----------------------------------------------------------------- */
typedef struct {
    float *y;
    const float *P, *res;
    const int64_t *src, *rp;
    const float *w, *bias;
    int64_t N, O, Ho, Wo, hph, wph, gb;
    int relu, res_post;
} gather_task;

/* y[o, tile t] = epi(sum over the pairs k of output channel o of w[k] * P[q0 + src[k] ..
 * + NV*V)), q0 = t * NV*V, for the tiles t in [lo, hi) and every o, in blocks of g->gb tiles:
 * a block's valid runs (u < Ho, v < Wo; at most T per tile: Wph is 1 for stride >= 3 and
 * Wo = 1) are found
 * once, then each output channel sweeps the block, so its y and residual are streamed in
 * order while the block's phase planes stay in cache (gather_fwd sizes the blocks).  A tile accumulates in NV independent
 * vectors of V floats, each FMA taking its x straight from memory (NV + 1 vector
 * registers); its runs then go through the epilogue into y.  One instance per ISA, with
 * the widest tile its register file holds: AVX-512 8 x 16 (8 accumulators cover two FMA
 * units' latency), AVX2 12 x 8 of its 16 registers, SSE2 8 x 4; the epilogue is inlined,
 * so it is vectorised for the ISA too. */
#define GB 16 /* the most tiles per block */
#define GATHER_KERNEL(NAME, V, NV, TARGET)                                                     \
    __attribute__((target(TARGET))) static void NAME(void *p, int64_t lo, int64_t hi,         \
                                                     int tid) {                               \
        const gather_task *g = p;                                                              \
        typedef float vec __attribute__((vector_size(4 * (V))));                               \
        enum { T = (V) * (NV), R = GB * T };   /* a run holds >= 1 position */              \
        const int64_t N = g->N, O = g->O, Ho = g->Ho, Wo = g->Wo, hph = g->hph, wph = g->wph;  \
        const int64_t plane = hph * wph, HWo = Ho * Wo, NHWo = N * HWo;                        \
        int32_t rj[R], rm[R], r0[GB + 1]; /* runs: offset in the tile, length; tile's first */ \
        int64_t rat[R];                   /* run's offset in a y plane */                      \
        const int64_t gb = g->gb;                                                              \
        for (int64_t tb = lo; tb < hi; tb += gb) {                                             \
            const int64_t te = hi - tb < gb ? hi : tb + gb;                                    \
            int32_t nr = 0;                                                                    \
            for (int64_t t = tb; t < te; t++) {                                                \
                const int64_t q0 = t * T;                                                      \
                int64_t n = q0 / plane, u = q0 % plane / wph, v = q0 % wph, j = 0;             \
                r0[t - tb] = nr;                                                               \
                while (j < T && n < N) {                                                       \
                    int64_t len = wph - v;                                                     \
                    if (len > T - j) len = T - j;                                              \
                    if (u < Ho && v < Wo) {                                                    \
                        rj[nr] = (int32_t)j, rm[nr] = (int32_t)(Wo - v < len ? Wo - v : len);  \
                        rat[nr++] = n * HWo + u * Wo + v;                                      \
                    }                                                                          \
                    j += len, v += len;                                                        \
                    if (v == wph) {                                                            \
                        v = 0;                                                                 \
                        if (++u == hph) u = 0, n++;                                            \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
            r0[te - tb] = nr;                                                                  \
            for (int64_t o = 0; o < O; o++) {                                                  \
                const float *w = g->w + g->rp[o], b = g->bias ? g->bias[o] : 0.0f;             \
                const int64_t *src = g->src + g->rp[o], np = g->rp[o + 1] - g->rp[o];          \
                for (int64_t t = tb; t < te; t++) {                                            \
                    const float *base = g->P + t * T;                                          \
                    vec a[NV];                                                                 \
                    _Pragma("GCC unroll 16") for (int k = 0; k < (NV); k++) a[k] = (vec){0};  \
                    for (int64_t k = 0; k < np; k++) {                                         \
                        const float *s = base + src[k];                                        \
                        const vec wv = (vec){0} + w[k];                                        \
                        _Pragma("GCC unroll 16") for (int i = 0; i < (NV); i++) {              \
                            vec xi;                                                            \
                            memcpy(&xi, s + (V) * i, sizeof xi);                               \
                            a[i] += wv * xi;                                                   \
                        }                                                                      \
                    }                                                                          \
                    float acc[T];                                                              \
                    memcpy(acc, a, sizeof acc);                                                \
                    for (int32_t r = r0[t - tb]; r < r0[t - tb + 1]; r++) {                    \
                        const int64_t at = o * NHWo + rat[r];                                  \
                        sal_epi_run(g->y + at, acc + rj[r], rm[r], b,                              \
                                g->res ? g->res + at : NULL, g->relu, g->res_post);            \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }

GATHER_KERNEL(gather_avx512, 16, 8, "avx512f")
GATHER_KERNEL(gather_avx2, 8, 12, "avx2,fma")
GATHER_KERNEL(gather_base, 4, 8, "sse2")

typedef struct {
    sal_range_fn run; /* over tiles, ctx a gather_task */
    int64_t tile;     /* outputs per tile, <= GT */
} gather_kernel;

static const gather_kernel GATHER[SAL_ISA_COUNT] = {
    [SAL_ISA_BASE] = {gather_base, 32},
    [SAL_ISA_AVX2] = {gather_avx2, 96},
    [SAL_ISA_AVX512] = {gather_avx512, 128},
};

/* y (O, N, Ho, Wo) = epi(GATHER(x (C, N, H, W))) */
sal_status sal_gather_fwd(float *y, const float *x, const float *w, const float *bias,
                          const float *res, int relu, int res_post, const sal_gather_desc *d,
                          float *scratch) {
    sal_act ya;
    SAL_TRY(sal_gather_check(d, &ya));
    SAL_REQUIRE(y && x && (w || d->npair == 0), FN, "y, x and w must not be NULL");
    SAL_REQUIRE(scratch != NULL, FN, "scratch=NULL: needs %zu floats", sal_gather_scratch(d));
    SAL_REQUIRE((relu == 0 || relu == 1) && (res_post == 0 || res_post == 1), FN,
                "relu=%d res_post=%d: must be 0 or 1", relu, res_post);
    const int64_t C = d->x.c, H = d->x.h, W = d->x.w, N = d->x.n, O = d->o, Ho = ya.h, Wo = ya.w;
    const int64_t S = d->stride, SS = S * S;
    int64_t hph, wph;
    phase_geom(S, Ho, Wo, &hph, &wph);
    const int64_t total = N * hph * wph;
    int64_t *src = (int64_t *)(void *)scratch, *rp = src + d->npair;
    float *P = scratch + index_floats(d);
    phase_planes(P, x, C, N, H, W, S, hph, wph, planes_size(C, N, S, Ho, Wo));
    /* each pair's offset into the phase planes, and the first pair of every output */
    int64_t k = 0;
    for (int64_t o = 0; o <= O; o++) {
        while (k < d->npair && d->pairs[4 * k] < o) k++;
        rp[o] = k;
    }
    for (k = 0; k < d->npair; k++) {
        const int32_t *r = d->pairs + 4 * k;
        const int64_t ey = 1 + r[2], ex = 1 + r[3];
        src[k] = (r[1] * SS + (ey % S) * S + ex % S) * block_stride(total) + (ey / S) * wph + ex / S;
    }
    const gather_kernel kern = GATHER[sal_cpu_isa()];
    const int64_t ntiles = (total + kern.tile - 1) / kern.tile;
    /* tiles per block: the block's phase-plane reads (C*S*S planes of T + 2 Wph + 2
     * floats per tile) near 64 KiB, which measured fastest on a 32 KiB-L1 AVX2 core */
    int64_t gb = 65536 / (C * SS * (kern.tile + 2 * wph + 2) * (int64_t)sizeof(float));
    gb = gb < 1 ? 1 : gb > GB ? GB : gb;
    gather_task gt = {y, P, res, src, rp, w, bias, N, O, Ho, Wo, hph, wph, gb, relu, res_post};
    sal_parallel_for(ntiles, d->threads ? d->threads : sal_threads(), kern.run, &gt);
    return SAL_OK;
}
