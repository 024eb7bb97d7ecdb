/* Shifted-row GEMM (sal/shiftconv.h): y = epi(W X~), the shift folded into the loads.
 *
 * Positions.  The outputs of one channel are numbered p = (n*Ho + Y)*Wo + X in CNHW (one
 * segment of M = N*Ho*Wo positions per channel) or p = Y*Wo + X in NCHW (N segments of
 * M = Ho*Wo).  For stride 1, row r of X~ at p is the source plane of channel src_r at
 *   p + dy_r*Wo + dx_r,
 * valid when 0 <= Y + dy_r < Ho and 0 <= X + dx_r < Wo (anything else reads zero).  So a
 * vector of V consecutive positions p0 .. p0+V of row r is ONE load at a per-row offset,
 * with the lanes outside the image masked off (they may lie before or after x, in another
 * channel or image: a masked lane is never read).  The mask depends on the row only
 * through its offset (dy, dx): its "class".  Per tile of positions the kernel builds one
 * mask per class (an SL layer has 9), then for each row loads the masked vector and adds
 * w[o, r] * X~ into MR output channels at once, the weights broadcast straight from w
 * (O, R), whose rows it walks in order (no packing).  The epilogue (bias, residual, ReLU)
 * runs on the accumulators, and the output is written once.
 *
 * Stride S > 1 maps to stride 1: the S*S phases P[src, a, b][u, v] = x[src, S*u + a, S*v + b]
 * (u < Ho, v < Wo, 0 outside) of the (channel, phase) pairs the rows read are laid out in
 * scratch, and row (src, dy, dx) reads phase (dy mod S, dx mod S) shifted by
 * (floor(dy/S), floor(dx/S)).
 *
 * A row whose shift leaves the plane (|dy| >= Ho or |dx| >= Wo after the stride map, or a
 * phase outside the image) reads nothing: it gets the class whose mask is empty.
 *
 * Work units are (tile, block of MR output channels), blocks innermost, split over the
 * threads in contiguous ranges: a thread sweeps every channel block of a tile while the
 * tile's rows are in its caches.  Deterministic: each output is summed over the rows in
 * order by one thread. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SC_X86 1
#else
#define SC_X86 0
#endif

#include "internal/cpu.h"
#include "internal/internal.h"
#include "sal/shiftconv.h"

#define TMAX 64          /* positions per tile, the most of any kernel */
#define LANE_OFF (-(1 << 30)) /* a lane past the segment: Y + dy < 0 for every class */

static const char *FN = "sal_shiftconv";

/* ---- checks and scratch ------------------------------------------------------------ */

sal_status sal_shiftconv_check(const sal_shiftconv_desc *d, sal_act *y) {
    SAL_REQUIRE(d != NULL, FN, "desc=NULL: must point to a sal_shiftconv_desc");
    SAL_TRY(sal_act_check(FN, "x", d->x));
    SAL_REQUIRE(d->o >= 1, FN, "O=%lld: must be >= 1", (long long)d->o);
    SAL_REQUIRE(d->r >= 0 && d->r <= ((int64_t)1 << 30), FN, "R=%lld: must be in [0, 2^30]",
                (long long)d->r);
    SAL_REQUIRE(d->r == 0 || d->rows != NULL, FN, "rows=NULL: needs R=%lld rows (src, dy, dx)",
                (long long)d->r);
    SAL_REQUIRE(d->stride >= 1, FN, "stride=%lld: must be >= 1", (long long)d->stride);
    SAL_REQUIRE(d->threads >= 0 && d->threads <= 1024, FN, "threads=%d: must be in [0, 1024]",
                d->threads);
    SAL_REQUIRE(d->mode >= SAL_SHIFTCONV_AUTO && d->mode <= SAL_SHIFTCONV_PANEL, FN,
                "mode=%d: must be 0 (auto), 1 (direct) or 2 (panel)", d->mode);
    /* lane coordinates and offsets in the masks are int32 */
    SAL_REQUIRE(d->x.h < ((int64_t)1 << 30) && d->x.w < ((int64_t)1 << 30), FN,
                "H=%lld W=%lld: must be < 2^30", (long long)d->x.h, (long long)d->x.w);
    int64_t tmp;
    SAL_TRY(sal_checked_prod(FN, "weights O*R", &tmp, 2, d->o, d->r));
    const sal_act out = {d->x.n, d->o, (d->x.h - 1) / d->stride + 1, (d->x.w - 1) / d->stride + 1,
                         d->x.layout};
    SAL_TRY(sal_act_check(FN, "y", out));
    for (int64_t k = 0; k < d->r; k++)
        SAL_REQUIRE(d->rows[3 * k] >= 0 && d->rows[3 * k] < d->x.c, FN,
                    "rows[%lld] = (%d, %d, %d): src must be in [0, C=%lld)", (long long)k,
                    d->rows[3 * k], d->rows[3 * k + 1], d->rows[3 * k + 2], (long long)d->x.c);
    if (y) *y = out;
    return SAL_OK;
}

/* Two modes.  Direct: the kernel reads x (or the phase planes) in place; fastest while the
 * planes the rows read stay in the L2 cache (batch 1).  Panel: for larger inputs, and
 * planes a power of two apart (their rows then compete for the same cache sets), each
 * thread copies the rows of a block of B positions into a panel of rows RS floats apart
 * (an odd number of cache lines), then runs the same kernel on it: one streaming read of
 * x, and the kernel's loads hit a panel sized for L2.  Stride S > 1 in panel mode gathers
 * the rows with the stride (zeros outside) straight into the panel, no phase planes. */
#define DIRECT_BYTES ((int64_t)512 << 10)   /* planes read in place up to this size */
#define PANEL_BYTES ((int64_t)256 << 10)    /* a panel's target size */
#define BLOCK_UNIT 96                       /* blocks are whole tiles of every kernel */

/* where each piece of the scratch lives: offsets in bytes from the 64-byte aligned base */
typedef struct {
    size_t off, cls, cdy, cdx, hkey, hval, plist, masks, planes, panel, total;
    int64_t hsize;        /* hash slots, a power of two */
    int64_t mask_bytes;   /* per thread */
    int64_t nplane_max;   /* phase planes (direct mode, S > 1) */
    int panel_mode;
    int64_t block, rs;    /* panel mode: positions per block, floats between panel rows */
    int64_t panel_bytes;  /* per thread */
} sc_layout;

/* m floats rounded up to whole 64-byte lines, an odd count of them: planes that far apart
 * do not all fall into the same cache sets */
static int64_t odd_lines(int64_t m) {
    const int64_t b = (m + 15) / 16 * 16;
    return b / 16 % 2 ? b : b + 16;
}

static int sc_threads(const sal_shiftconv_desc *d) {
    return d->threads ? d->threads : sal_threads();
}

/* SIZE_MAX when a size does not fit */
static size_t sc_layout_of(const sal_shiftconv_desc *d, int nt, sc_layout *L) {
    const int64_t R = d->r, S = d->stride, N = d->x.n, C = d->x.c, H = d->x.h, W = d->x.w;
    const int64_t Ho = (H - 1) / S + 1, Wo = (W - 1) / S + 1;
    const int64_t nimg = d->x.layout == SAL_CNHW ? N : 1, M = nimg * Ho * Wo;
    int64_t hs = 16;
    while (hs < 4 * (R + 1)) hs *= 2;   /* classes and phase planes share the table */
    L->hsize = hs;
    L->mask_bytes = (R + 1) * TMAX * 4;
    L->nplane_max = 0;
    /* the planes the rows read: distinct sources (S > 1: phases), each a segment of M */
    int64_t np = C;
    if (S > 1) {
        const int64_t a = S < H ? S : H, b = S < W ? S : W;
        if (!sal_mul_ok(C, a, &np) || !sal_mul_ok(np, b, &np)) np = R;
    }
    np = np < R ? np : R;
    const double foot = (double)np * (double)M * sizeof(float);
    /* stride > 1 reads its phase planes in place: a measured draw with panels at batch 1
     * and ahead of them at 128 (the panel's gather with the stride costs more) */
    L->panel_mode = d->mode ? d->mode == SAL_SHIFTCONV_PANEL
                            : S == 1 && foot > (double)DIRECT_BYTES;
    int64_t planes = 0;
    L->block = L->rs = L->panel_bytes = 0;
    if (L->panel_mode) {
        int64_t b = PANEL_BYTES / (sizeof(float) * (R ? R : 1)) / BLOCK_UNIT * BLOCK_UNIT;
        const int64_t mcap = (M + BLOCK_UNIT - 1) / BLOCK_UNIT * BLOCK_UNIT;
        b = b < BLOCK_UNIT ? BLOCK_UNIT : b > 64 * BLOCK_UNIT ? 64 * BLOCK_UNIT : b;
        L->block = b < mcap ? b : mcap;
        L->rs = L->block / 16 % 2 ? L->block : L->block + 16;   /* odd count of 64-byte lines */
        if (!sal_mul_ok(R, L->rs * (int64_t)sizeof(float), &L->panel_bytes)) return SIZE_MAX;
    } else if (S > 1) {
        L->nplane_max = np;   /* every image's planes, each odd_lines apart */
        const int64_t per = d->x.layout == SAL_CNHW ? odd_lines(N * Ho * Wo)
                                                    : N * odd_lines(Ho * Wo);
        if (!sal_mul_ok(np, per, &planes) || planes > ((int64_t)1 << 60)) return SIZE_MAX;
    }
    /* the size never shrinks as N grows (a caller sizes scratch once for its largest batch
     * and runs smaller ones in it): auto mode switches to panels with N only for stride 1,
     * which has no phase planes */
    size_t at = 0;
#define SC_PIECE(field, bytes) (L->field = at, at += ((size_t)(bytes) + 63) / 64 * 64)
    SC_PIECE(off, (size_t)R * 8);
    SC_PIECE(cls, (size_t)R * 4);
    SC_PIECE(cdy, (size_t)(R + 2) * 4);
    SC_PIECE(cdx, (size_t)(R + 2) * 4);
    SC_PIECE(hkey, (size_t)hs * 16);
    SC_PIECE(hval, (size_t)hs * 4);
    SC_PIECE(plist, (size_t)(L->nplane_max + 1) * 12);
    SC_PIECE(masks, (size_t)nt * (size_t)L->mask_bytes);
    SC_PIECE(planes, (size_t)planes * 4);
    if ((double)nt * (double)L->panel_bytes > (double)((int64_t)1 << 60)) return SIZE_MAX;
    SC_PIECE(panel, (size_t)nt * (size_t)L->panel_bytes);
#undef SC_PIECE
    L->total = at;
    return (at + 63) / sizeof(float);   /* + the alignment of the base */
}

size_t sal_shiftconv_scratch(const sal_shiftconv_desc *d) {
    sc_layout L;
    if (sal_shiftconv_check(d, NULL) != SAL_OK) return 0;
    return sc_layout_of(d, sc_threads(d), &L);
}

/* ---- the plan: per row an offset and a mask class ------------------------------------ */

/* slot of (k1, k2) in the open-addressing table (keys in hkey, ids in hval, -1 free):
 * *id is its id, or a new one (*n, then *n += 1) */
static int32_t hash_id(int64_t *hkey, int32_t *hval, int64_t hs, int64_t k1, int64_t k2,
                       int32_t *n, int *fresh) {
    uint64_t h = (uint64_t)k1 * 0x9E3779B97F4A7C15ull ^ (uint64_t)k2 * 0xC2B2AE3D27D4EB4Full;
    for (int64_t i = (int64_t)(h >> 20) & (hs - 1);; i = (i + 1) & (hs - 1)) {
        if (hval[i] < 0) {
            hkey[2 * i] = k1, hkey[2 * i + 1] = k2, hval[i] = (*n)++;
            *fresh = 1;
            return hval[i];
        }
        if (hkey[2 * i] == k1 && hkey[2 * i + 1] == k2) {
            *fresh = 0;
            return hval[i];
        }
    }
}

static int64_t floordiv(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

typedef struct {
    float *y;
    const float *src, *res, *w, *bias;
    const int64_t *off;          /* per row: element offset from a tile's first position */
    const int32_t *cls, *cdy, *cdx;
    char *masks;                 /* per thread mask_bytes */
    int64_t mask_bytes;
    int64_t R, O, ncls, Ho, Wo, M, ntile, nob;
    int64_t src_seg, y_seg, ysc; /* strides: source and output segment, output channel */
    int64_t q0;                  /* the source holds positions from q0 on (a panel's block) */
    int relu, res_post, has_res;
} sc_task;

/* the source address of the tile at p0 of segment seg, row offset 0 (an integer: with a
 * row's offset added it may lie outside the buffer, for masked lanes only) */
static inline uintptr_t tile_base(const sc_task *t, int64_t seg, int64_t p0) {
    return (uintptr_t)t->src + (uintptr_t)(seg * t->src_seg + p0 - t->q0) * sizeof(float);
}

/* Walks the units (tile, block of output channels) of a range without a division per
 * unit: u = tile * nob + ob, tile = seg * ntile + tin, the tile's first position p0 =
 * tin * T, at (y0, x0) in its image. */
typedef struct {
    int64_t ob, seg, tin, p0;
    int64_t y0, x0;
} unit_it;

static inline void unit_begin(unit_it *it, const sc_task *t, int64_t u, int64_t T) {
    const int64_t tile = u / t->nob, r = tile % t->ntile * T % (t->Ho * t->Wo);
    it->ob = u % t->nob, it->seg = tile / t->ntile, it->tin = tile % t->ntile;
    it->p0 = it->tin * T, it->y0 = r / t->Wo, it->x0 = r % t->Wo;
}

/* the next unit; 1 when it starts a new tile */
static inline int unit_next(unit_it *it, const sc_task *t, int64_t T) {
    if (++it->ob < t->nob) return 0;
    it->ob = 0;
    if (++it->tin == t->ntile) {
        it->tin = 0, it->seg++, it->p0 = 0, it->y0 = it->x0 = 0;
        return 1;
    }
    it->p0 += T, it->x0 += T;
    while (it->x0 >= t->Wo) {   /* at most T rows */
        it->x0 -= t->Wo;
        if (++it->y0 == t->Ho) it->y0 = 0;
    }
    return 1;
}

/* lane coordinates of the tile (T lanes); lanes at or past M get LANE_OFF */
static inline void tile_coords(int32_t *Y, int32_t *X, const unit_it *it, int64_t M,
                               int64_t Ho, int64_t Wo, int T) {
    int32_t y = (int32_t)it->y0, x = (int32_t)it->x0;
    const int64_t valid = M - it->p0 < T ? M - it->p0 : T;
    for (int l = 0; l < valid; l++) {
        Y[l] = y, X[l] = x;
        if (++x == Wo) {
            x = 0;
            if (++y == Ho) y = 0;
        }
    }
    for (int l = (int)valid; l < T; l++) Y[l] = LANE_OFF, X[l] = 0;
}

/* the address of element e of the tile's row (may lie outside the buffer for masked lanes:
 * computed as an integer, never dereferenced there) */
static inline const float *at_elem(uintptr_t base, int64_t e) {
    return (const float *)(base + (uintptr_t)e * sizeof(float));
}

/* ---- kernels ----------------------------------------------------------------------- */

/* Portable: T = 16 positions x 4 channels, lane masks as int32 (0 / -1); only valid
 * lanes are read. */
#define BT 16
#define BMR 4
static void run_base(void *p, int64_t lo, int64_t hi, int tid) {
    const sc_task *t = p;
    const int64_t R = t->R, O = t->O;
    int32_t *mk = (int32_t *)(t->masks + (size_t)tid * (size_t)t->mask_bytes);
    unit_it it;
    unit_begin(&it, t, lo, BT);
    for (int64_t u = lo, fresh = 1; u < hi; u++, fresh = unit_next(&it, t, BT)) {
        const int64_t ob = it.ob, seg = it.seg, p0 = it.p0;
        const int64_t nv = t->M - p0 < BT ? t->M - p0 : BT;
        if (fresh) {
            int32_t Y[BT], X[BT];
            tile_coords(Y, X, &it, t->M, t->Ho, t->Wo, BT);
            for (int64_t c = 0; c < t->ncls; c++)
                for (int l = 0; l < BT; l++)
                    mk[c * BT + l] = (uint32_t)(Y[l] + t->cdy[c]) < (uint32_t)t->Ho &&
                                     (uint32_t)(X[l] + t->cdx[c]) < (uint32_t)t->Wo ? -1 : 0;
        }
        const uintptr_t sb = tile_base(t, seg, p0);
        const float *wr[BMR];
        for (int j = 0; j < BMR; j++) {
            const int64_t o = ob * BMR + j;
            wr[j] = t->w + (o < O ? o : O - 1) * R;
        }
        float acc[BMR][BT] = {{0}};
        for (int64_t k = 0; k < R; k++) {
            const int32_t *m = mk + t->cls[k] * BT;
            float xv[BT];
            for (int l = 0; l < BT; l++) xv[l] = m[l] ? *at_elem(sb, t->off[k] + l) : 0.0f;
            for (int j = 0; j < BMR; j++) {
                const float wj = wr[j][k];
                for (int l = 0; l < BT; l++) acc[j][l] += wj * xv[l];
            }
        }
        for (int j = 0; j < BMR && ob * BMR + j < O; j++) {
            const int64_t o = ob * BMR + j, at = seg * t->y_seg + o * t->ysc + p0;
            const float b = t->bias ? t->bias[o] : 0.0f;
            for (int64_t l = 0; l < nv; l++) {
                float v = acc[j][l] + b;
                if (t->has_res && !t->res_post) v += t->res[at + l];
                if (t->relu) v = v > 0.0f ? v : 0.0f;
                if (t->has_res && t->res_post) v += t->res[at + l];
                t->y[at + l] = v;
            }
        }
    }
}

#if SC_X86
/* tile_coords for nv vectors of 16 lanes, in vector registers: lane l at in-image position
 * q = y0*Wo + x0 + l has Y = (q / Wo) mod Ho and X = q mod Wo (the quotients from float
 * estimates, corrected by one step: exact while q < 2^22, see COORD_VEC_MAX); lanes at or
 * past M get LANE_OFF.  A tile's scalar walk was a tenth of the wide kernel's time on the
 * K = 16 layers of shared SAL, where a tile is only 16 x 24 FMAs per block. */
#define COORD_VEC_MAX ((int64_t)1 << 21)   /* H*W below which tiles take this path */

__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl"))) static inline __m512i
divmod_avx512(__m512i q, int32_t d, __m512 inv, __m512i *rem) {
    const __m512i dv = _mm512_set1_epi32(d);
    __m512i qt = _mm512_cvttps_epi32(_mm512_mul_ps(_mm512_cvtepi32_ps(q), inv));
    __m512i r = _mm512_sub_epi32(q, _mm512_mullo_epi32(qt, dv));
    const __mmask16 lo = _mm512_cmplt_epi32_mask(r, _mm512_setzero_si512());
    qt = _mm512_mask_sub_epi32(qt, lo, qt, _mm512_set1_epi32(1));
    r = _mm512_mask_add_epi32(r, lo, r, dv);
    const __mmask16 hi = _mm512_cmpge_epi32_mask(r, dv);
    qt = _mm512_mask_add_epi32(qt, hi, qt, _mm512_set1_epi32(1));
    *rem = _mm512_mask_sub_epi32(r, hi, r, dv);
    return qt;
}

__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl"))) static inline void
tile_coords_avx512(__m512i *yv, __m512i *xv, int nv, const unit_it *it, int64_t M, int64_t Ho,
                   int64_t Wo) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 inv_w = _mm512_set1_ps(1.0f / (float)Wo), inv_h = _mm512_set1_ps(1.0f / (float)Ho);
    const int32_t r0 = (int32_t)(it->y0 * Wo + it->x0);
    const int64_t valid = M - it->p0;
    for (int i = 0; i < nv; i++) {
        const __m512i q = _mm512_add_epi32(_mm512_set1_epi32(r0 + 16 * i), lane);
        __m512i x, y;
        const __m512i row = divmod_avx512(q, (int32_t)Wo, inv_w, &x);
        (void)divmod_avx512(row, (int32_t)Ho, inv_h, &y);
        const __mmask16 past = valid >= 16 * (i + 1) ? 0
                               : valid <= 16 * i     ? (__mmask16)0xFFFF
                                                     : (__mmask16)~((1u << (valid - 16 * i)) - 1);
        yv[i] = _mm512_mask_mov_epi32(y, past, _mm512_set1_epi32(LANE_OFF));
        xv[i] = _mm512_maskz_mov_epi32((__mmask16)~past, x);
    }
}

/* AVX-512: tiles of NV vectors of 16 positions, MR channels: MR*NV accumulators of the 32
 * zmm registers; per row NV masked loads and MR broadcasts (from w's rows) for MR*NV FMAs. */
#define SC_KERNEL_AVX512(NAME, MR, NV)                                                            \
    __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl"))) static void NAME(               \
        void *p, int64_t lo, int64_t hi, int tid) {                                               \
        enum { T = 16 * (NV) };                                                                   \
        const sc_task *t = p;                                                                     \
        const int64_t R = t->R, O = t->O;                                                         \
        const int64_t *off = t->off;                                                              \
        const int32_t *cls = t->cls;                                                              \
        __mmask16 *mk = (__mmask16 *)(t->masks + (size_t)tid * (size_t)t->mask_bytes);            \
        __mmask16 tail[NV] = {0};                                                                 \
        unit_it it;                                                                               \
        unit_begin(&it, t, lo, T);                                                                \
        for (int64_t u = lo, fresh = 1; u < hi; u++, fresh = unit_next(&it, t, T)) {              \
            const int64_t ob = it.ob, seg = it.seg, p0 = it.p0;                                   \
            if (fresh) {                                                                          \
                __m512i yv[NV], xv[NV];                                                           \
                if (t->Ho * t->Wo < COORD_VEC_MAX) {                                              \
                    tile_coords_avx512(yv, xv, (NV), &it, t->M, t->Ho, t->Wo);                    \
                } else {                                                                          \
                    int32_t Y[T], X[T];                                                           \
                    tile_coords(Y, X, &it, t->M, t->Ho, t->Wo, T);                                \
                    for (int i = 0; i < (NV); i++) {                                              \
                        yv[i] = _mm512_loadu_si512(Y + 16 * i);                                   \
                        xv[i] = _mm512_loadu_si512(X + 16 * i);                                   \
                    }                                                                             \
                }                                                                                 \
                const __m512i ho = _mm512_set1_epi32((int)t->Ho);                                 \
                const __m512i wo = _mm512_set1_epi32((int)t->Wo);                                 \
                for (int64_t c = 0; c < t->ncls; c++) {                                           \
                    const __m512i dy = _mm512_set1_epi32(t->cdy[c]);                              \
                    const __m512i dx = _mm512_set1_epi32(t->cdx[c]);                              \
                    for (int i = 0; i < (NV); i++)                                                \
                        mk[c * (NV) + i] =                                                        \
                            _mm512_cmplt_epu32_mask(_mm512_add_epi32(yv[i], dy), ho) &            \
                            _mm512_cmplt_epu32_mask(_mm512_add_epi32(xv[i], dx), wo);             \
                }                                                                                 \
                const int64_t nv = t->M - p0;                                                     \
                for (int i = 0; i < (NV); i++)                                                    \
                    tail[i] = nv >= 16 * (i + 1) ? (__mmask16)0xFFFF                              \
                              : nv <= 16 * i     ? (__mmask16)0                                   \
                                                 : (__mmask16)((1u << (nv - 16 * i)) - 1);        \
            }                                                                                     \
            const uintptr_t sb = tile_base(t, seg, p0);                                           \
            const float *wr[MR];                                                                  \
            _Pragma("GCC unroll 16") for (int j = 0; j < (MR); j++) {                             \
                const int64_t o = ob * (MR) + j;                                                  \
                wr[j] = t->w + (o < O ? o : O - 1) * R;                                           \
            }                                                                                     \
            __m512 acc[MR][NV];                                                                   \
            _Pragma("GCC unroll 16") for (int j = 0; j < (MR); j++)                               \
                _Pragma("GCC unroll 4") for (int i = 0; i < (NV); i++)                            \
                    acc[j][i] = _mm512_setzero_ps();                                              \
            for (int64_t k = 0; k < R; k++) {                                                     \
                const float *xs = at_elem(sb, off[k]);                                            \
                const __mmask16 *m = mk + cls[k] * (NV);                                          \
                __m512 x[NV];                                                                     \
                _Pragma("GCC unroll 4") for (int i = 0; i < (NV); i++)                            \
                    x[i] = _mm512_maskz_loadu_ps(m[i], xs + 16 * i);                              \
                _Pragma("GCC unroll 16") for (int j = 0; j < (MR); j++) {                         \
                    const __m512 wv = _mm512_set1_ps(wr[j][k]);                                   \
                    _Pragma("GCC unroll 4") for (int i = 0; i < (NV); i++)                        \
                        acc[j][i] = _mm512_fmadd_ps(wv, x[i], acc[j][i]);                         \
                }                                                                                 \
            }                                                                                     \
            const __m512 zero = _mm512_setzero_ps();                                              \
            _Pragma("GCC unroll 16") for (int j = 0; j < (MR); j++) {                             \
                const int64_t o = ob * (MR) + j;                                                  \
                if (o >= O) break;                                                                \
                const int64_t at = seg * t->y_seg + o * t->ysc + p0;                              \
                const __m512 b = _mm512_set1_ps(t->bias ? t->bias[o] : 0.0f);                     \
                _Pragma("GCC unroll 4") for (int i = 0; i < (NV); i++) {                          \
                    if (!tail[i]) break;                                                          \
                    __m512 v = _mm512_add_ps(acc[j][i], b);                                       \
                    const float *r = t->has_res ? t->res + at + 16 * i : NULL;                    \
                    if (t->has_res && !t->res_post)                                               \
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(tail[i], r));                  \
                    if (t->relu) v = _mm512_max_ps(v, zero);                                      \
                    if (t->has_res && t->res_post)                                                \
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(tail[i], r));                  \
                    _mm512_mask_storeu_ps(t->y + at + 16 * i, tail[i], v);                        \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

/* AVX2: tiles of NV vectors of 8 positions, MR channels; lane masks as int32 vectors
 * (vmaskmovps reads only the set lanes). */
#define SC_KERNEL_AVX2(NAME, MR, NV)                                                              \
    __attribute__((target("avx2,fma"))) static void NAME(void *p, int64_t lo, int64_t hi,         \
                                                        int tid) {                                \
        enum { T = 8 * (NV) };                                                                    \
        const sc_task *t = p;                                                                     \
        const int64_t R = t->R, O = t->O;                                                         \
        const int64_t *off = t->off;                                                              \
        const int32_t *cls = t->cls;                                                              \
        int32_t *mk = (int32_t *)(t->masks + (size_t)tid * (size_t)t->mask_bytes);                \
        __m256i tail[NV];                                                                         \
        for (int i = 0; i < (NV); i++) tail[i] = _mm256_setzero_si256();                          \
        unit_it it;                                                                               \
        unit_begin(&it, t, lo, T);                                                                \
        for (int64_t u = lo, fresh = 1; u < hi; u++, fresh = unit_next(&it, t, T)) {              \
            const int64_t ob = it.ob, seg = it.seg, p0 = it.p0;                                   \
            if (fresh) {                                                                          \
                int32_t Y[T], X[T];                                                               \
                tile_coords(Y, X, &it, t->M, t->Ho, t->Wo, T);                                    \
                for (int64_t c = 0; c < t->ncls; c++) {                                           \
                    const int32_t dy = t->cdy[c], dx = t->cdx[c];                                 \
                    const uint32_t ho = (uint32_t)t->Ho, wo = (uint32_t)t->Wo;                    \
                    for (int l = 0; l < T; l++)                                                   \
                        mk[c * T + l] = (uint32_t)(Y[l] + dy) < ho && (uint32_t)(X[l] + dx) < wo  \
                                            ? -1 : 0;                                             \
                }                                                                                 \
                for (int i = 0; i < (NV); i++) {                                                  \
                    int32_t tl[8];                                                                \
                    for (int l = 0; l < 8; l++) tl[l] = p0 + 8 * i + l < t->M ? -1 : 0;           \
                    tail[i] = _mm256_loadu_si256((const __m256i *)tl);                            \
                }                                                                                 \
            }                                                                                     \
            const uintptr_t sb = tile_base(t, seg, p0);                                           \
            const float *wr[MR];                                                                  \
            _Pragma("GCC unroll 16") for (int j = 0; j < (MR); j++) {                             \
                const int64_t o = ob * (MR) + j;                                                  \
                wr[j] = t->w + (o < O ? o : O - 1) * R;                                           \
            }                                                                                     \
            __m256 acc[MR][NV];                                                                   \
            _Pragma("GCC unroll 16") for (int j = 0; j < (MR); j++)                               \
                _Pragma("GCC unroll 4") for (int i = 0; i < (NV); i++)                            \
                    acc[j][i] = _mm256_setzero_ps();                                              \
            for (int64_t k = 0; k < R; k++) {                                                     \
                const float *xs = at_elem(sb, off[k]);                                            \
                const int32_t *m = mk + cls[k] * T;                                               \
                __m256 x[NV];                                                                     \
                _Pragma("GCC unroll 4") for (int i = 0; i < (NV); i++)                            \
                    x[i] = _mm256_maskload_ps(xs + 8 * i,                                         \
                                              _mm256_loadu_si256((const __m256i *)(m + 8 * i)));  \
                _Pragma("GCC unroll 16") for (int j = 0; j < (MR); j++) {                         \
                    const __m256 wv = _mm256_broadcast_ss(wr[j] + k);                             \
                    _Pragma("GCC unroll 4") for (int i = 0; i < (NV); i++)                        \
                        acc[j][i] = _mm256_fmadd_ps(wv, x[i], acc[j][i]);                         \
                }                                                                                 \
            }                                                                                     \
            const __m256 zero = _mm256_setzero_ps();                                              \
            _Pragma("GCC unroll 16") for (int j = 0; j < (MR); j++) {                             \
                const int64_t o = ob * (MR) + j;                                                  \
                if (o >= O) break;                                                                \
                const int64_t at = seg * t->y_seg + o * t->ysc + p0;                              \
                const __m256 b = _mm256_set1_ps(t->bias ? t->bias[o] : 0.0f);                     \
                _Pragma("GCC unroll 4") for (int i = 0; i < (NV); i++) {                          \
                    if (p0 + 8 * i >= t->M) break;                                                \
                    const int full = p0 + 8 * i + 8 <= t->M; /* vmaskmovps stores are slow */     \
                    __m256 v = _mm256_add_ps(acc[j][i], b);                                       \
                    const float *r = t->has_res ? t->res + at + 8 * i : NULL;                     \
                    __m256 rv = _mm256_setzero_ps();                                              \
                    if (t->has_res)                                                               \
                        rv = full ? _mm256_loadu_ps(r) : _mm256_maskload_ps(r, tail[i]);          \
                    if (t->has_res && !t->res_post) v = _mm256_add_ps(v, rv);                     \
                    if (t->relu) v = _mm256_max_ps(v, zero);                                      \
                    if (t->has_res && t->res_post) v = _mm256_add_ps(v, rv);                      \
                    if (full) _mm256_storeu_ps(t->y + at + 8 * i, v);                             \
                    else _mm256_maskstore_ps(t->y + at + 8 * i, tail[i], v);                      \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

/* Two tiles per ISA: the narrow one wastes no lanes on small images (an 8x8 plane is two
 * 32-position tiles); the wide one does more FMAs per tile's fixed costs (masks, epilogue)
 * and wins from WIDE_MIN positions on (batch 1, 1 thread, AVX-512: shared SAL 16>16 at
 * 32x32 9.2 -> 8.3 us, SL expand 16>96 50.8 -> 44.2 us; at 8x8 the wide tile lost 33 %). */
SC_KERNEL_AVX512(run_avx512, 8, 2)
SC_KERNEL_AVX512(run_avx512_wide, 8, 3)
/* The tall tile (64 positions x 6 channels) for expand-shaped layers (O >= 4 R: few rows,
 * many outputs, the SL expand 1x1s), read in place (direct mode): four loads per row feed
 * 24 FMAs, six broadcasts; whole 8x8 planes.  Measured, 1 thread, batch 1, thread CPU
 * minima of 3 x 300 calls interleaved with the narrow/wide pair: SL expand 16>96 32x32
 * 43.3 -> 41.2 us, 32>192 16x16 37.7 -> 35.1, 64>384 8x8 34.9 -> 32.6; on the reduce and
 * shared-SAL shapes (O <= R) it lost 2-17 % (a 6-channel block wastes lanes of 16 or 32). */
SC_KERNEL_AVX512(run_avx512_tall, 6, 4)
SC_KERNEL_AVX2(run_avx2, 6, 2)
SC_KERNEL_AVX2(run_avx2_wide, 4, 3)
#endif

#define WIDE_MIN 512   /* positions per segment from which the wide tile runs */

typedef struct {
    sal_range_fn run;
    int64_t tile, mr;   /* positions per tile, output channels per block */
} sc_kernel;

static const sc_kernel KERNELS[SAL_ISA_COUNT][2] = {   /* narrow, wide */
    [SAL_ISA_BASE] = {{run_base, BT, BMR}, {run_base, BT, BMR}},
#if SC_X86
    [SAL_ISA_AVX2] = {{run_avx2, 16, 6}, {run_avx2_wide, 24, 4}},
    [SAL_ISA_AVX512] = {{run_avx512, 32, 8}, {run_avx512_wide, 48, 8}},
#else
    [SAL_ISA_AVX2] = {{run_base, BT, BMR}, {run_base, BT, BMR}},
    [SAL_ISA_AVX512] = {{run_base, BT, BMR}, {run_base, BT, BMR}},
#endif
};

/* the kernel for segments of M positions (BLOCK_UNIT is a multiple of every tile) */
static sc_kernel pick_kernel(int64_t M) { return KERNELS[sal_cpu_isa()][M >= WIDE_MIN]; }

/* direct mode's kernel: the tall tile for expand-shaped layers where the ISA has one */
static sc_kernel pick_direct(int64_t M, int64_t R, int64_t O) {
#if SC_X86
    if (sal_cpu_isa() == SAL_ISA_AVX512 && O >= 4 * R) return (sc_kernel){run_avx512_tall, 64, 6};
#endif
    (void)R, (void)O;
    return pick_kernel(M);
}

/* ---- stride > 1: phase planes ---------------------------------------------------------- */

typedef struct {
    float *P;
    const float *x;
    const int32_t *plist;   /* per plane (src, a, b) */
    int64_t N, H, W, S, Ho, Wo, xsn, xsc, pl_stride, img_stride;
} phase_task;

/* Stride 2's rows: dst[v] = src[2 v] for v < n, reading src[0 .. 2n - 1) only (masked
 * loads past it); one table by ISA, the portable loop its reference twin. */
typedef void (*deint2_fn)(float *dst, const float *src, int64_t n);

static void deint2_base(float *dst, const float *src, int64_t n) {
    for (int64_t v = 0; v < n; v++) dst[v] = src[2 * v];
}

#if SC_X86
__attribute__((target("avx512f"))) static void deint2_avx512(float *dst, const float *src,
                                                             int64_t n) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                           28, 30);
    for (int64_t v = 0; v < n; v += 16) {
        const int64_t m = n - v < 16 ? n - v : 16, len = 2 * m - 1;   /* floats to read */
        const __mmask16 lo = len >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << len) - 1);
        const __mmask16 hi = len <= 16 ? (__mmask16)0 : (__mmask16)((1u << (len - 16)) - 1);
        const __m512 a = _mm512_maskz_loadu_ps(lo, src + 2 * v);
        const __m512 b = _mm512_maskz_loadu_ps(hi, src + 2 * v + 16);
        _mm512_mask_storeu_ps(dst + v, (__mmask16)((1u << m) - 1),
                              _mm512_permutex2var_ps(a, even, b));
    }
}

__attribute__((target("avx2,fma"))) static void deint2_avx2(float *dst, const float *src,
                                                            int64_t n) {
    int64_t v = 0;
    for (; v + 8 < n; v += 8) {   /* reads src[2v .. 2v + 16) <= 2n - 2 */
        const __m256 a = _mm256_loadu_ps(src + 2 * v), b = _mm256_loadu_ps(src + 2 * v + 8);
        const __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));   /* a0 a2 b0 b2 | a4 a6 b4 b6 */
        _mm256_storeu_ps(dst + v, _mm256_castpd_ps(_mm256_permute4x64_pd(
                                      _mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0))));
    }
    for (; v < n; v++) dst[v] = src[2 * v];
}
#endif

static const deint2_fn DEINT2[SAL_ISA_COUNT] = {
    [SAL_ISA_BASE] = deint2_base,
#if SC_X86
    [SAL_ISA_AVX2] = deint2_avx2,
    [SAL_ISA_AVX512] = deint2_avx512,
#else
    [SAL_ISA_AVX2] = deint2_base,
    [SAL_ISA_AVX512] = deint2_base,
#endif
};

/* idx in [0, nplane * N): plane j = idx / N, image n = idx % N */
static void phase_run(void *p, int64_t lo, int64_t hi, int tid) {
    const phase_task *t = p;
    const int64_t N = t->N, H = t->H, W = t->W, S = t->S, Ho = t->Ho, Wo = t->Wo;
    const deint2_fn deint2 = DEINT2[sal_cpu_isa()];
    for (int64_t idx = lo; idx < hi; idx++) {
        const int64_t j = idx / N, n = idx % N;
        const int64_t src = t->plist[3 * j], a = t->plist[3 * j + 1], b = t->plist[3 * j + 2];
        float *dst = t->P + j * t->pl_stride + n * t->img_stride;
        const float *xp = t->x + n * t->xsn + src * t->xsc;
        const int64_t vhi = (W - b + S - 1) / S < Wo ? (W - b + S - 1) / S : Wo;   /* b < W */
        for (int64_t u = 0; u < Ho; u++, dst += Wo) {
            const int64_t iy = S * u + a;
            if (iy >= H) {
                memset(dst, 0, (size_t)Wo * sizeof *dst);
                continue;
            }
            const float *row = xp + iy * W + b;
            if (S == 2) deint2(dst, row, vhi);
            else
                for (int64_t v = 0; v < vhi; v++) dst[v] = row[S * v];
            for (int64_t v = vhi; v < Wo; v++) dst[v] = 0.0f;
        }
    }
}

/* ---- panel mode ------------------------------------------------------------------- */

typedef struct {
    sc_task t;               /* src, off, cls: the panel's; q0 set per block */
    sal_range_fn run;
    const float *x;
    const int32_t *rows, *cls;
    char *panels;            /* per thread panel_bytes */
    int64_t panel_bytes, block, rs, nblk, tile;
    int64_t N, H, W, S, xseg, xsc;
    int64_t img;             /* floats between images inside a segment (CNHW), else 0 */
} panel_task;

/* panel row k (positions q0 .. q1 of segment seg) = X~[k]: S = 1 one copy of the run the
 * row reads (lanes outside the image stay masked); S > 1 gathered with zeros outside */
static void pack_block(const panel_task *pt, float *panel, int64_t seg, int64_t q0, int64_t q1) {
    const int64_t H = pt->H, W = pt->W, S = pt->S, Ho = pt->t.Ho, Wo = pt->t.Wo, HWo = Ho * Wo;
    const int64_t M = pt->t.M, img = pt->img;
    for (int64_t k = 0; k < pt->t.R; k++) {
        if (pt->cls[k] == 0) continue;   /* reads nothing */
        const int32_t *row = pt->rows + 3 * k;
        const float *xp = pt->x + seg * pt->xseg + row[0] * pt->xsc;
        float *dst = panel + k * pt->rs - q0;   /* dst[p] for p in [q0, q1) */
        if (S == 1) {
            const int64_t e = (int64_t)row[1] * W + row[2];
            const int64_t lo = q0 + e > 0 ? q0 + e : 0, hi = q1 + e < M ? q1 + e : M;
            if (lo < hi) memcpy(dst + (lo - e), xp + lo, (size_t)(hi - lo) * sizeof *dst);
            continue;
        }
        for (int64_t p = q0; p < q1;) {
            const int64_t n = p / HWo, Y = p % HWo / Wo, X0 = p % Wo;
            const int64_t len = Wo - X0 < q1 - p ? Wo - X0 : q1 - p, iy = S * Y + row[1];
            float *out = dst + p;
            p += len;
            if (iy < 0 || iy >= H) {
                memset(out, 0, (size_t)len * sizeof *out);
                continue;
            }
            const float *xr = xp + n * img + iy * W;
            for (int64_t X = X0; X < X0 + len; X++) {
                const int64_t ix = S * X + row[2];
                out[X - X0] = ix >= 0 && ix < W ? xr[ix] : 0.0f;
            }
        }
    }
}

static void panel_run(void *p, int64_t lo, int64_t hi, int tid) {
    const panel_task *pt = p;
    float *panel = (float *)(pt->panels + (size_t)tid * (size_t)pt->panel_bytes);
    sc_task t = pt->t;
    t.src = panel;
    t.src_seg = 0;
    for (int64_t b = lo; b < hi; b++) {
        const int64_t seg = b / pt->nblk, q0 = b % pt->nblk * pt->block;
        const int64_t q1 = t.M - q0 < pt->block ? t.M : q0 + pt->block;
        pack_block(pt, panel, seg, q0, q1);
        t.q0 = q0;
        const int64_t t0 = seg * t.ntile + q0 / pt->tile;
        const int64_t t1 = seg * t.ntile + (q1 + pt->tile - 1) / pt->tile;
        pt->run(&t, t0 * t.nob, t1 * t.nob, tid);
    }
}

/* ---- forward ------------------------------------------------------------------------ */

sal_status sal_shiftconv_fwd(float *y, const float *x, const float *w,
                             const sal_shiftconv_epi *epi, const sal_shiftconv_desc *d,
                             float *scratch) {
    sal_act ya;
    SAL_TRY(sal_shiftconv_check(d, &ya));
    SAL_REQUIRE(y && x && (d->r == 0 || w), FN, "y, x and w must not be NULL");
    const sal_shiftconv_epi none = {0};
    if (!epi) epi = &none;
    SAL_REQUIRE(epi->relu == 0 || epi->relu == 1, FN, "epi.relu=%d: must be 0 or 1", epi->relu);
    SAL_REQUIRE(epi->res_post == 0 || epi->res_post == 1, FN,
                "epi.res_post=%d: must be 0 or 1", epi->res_post);
    const int nt = sc_threads(d);
    sc_layout L;
    const size_t need = sc_layout_of(d, nt, &L);
    SAL_REQUIRE(need != SIZE_MAX, FN, "scratch for stride %lld: size does not fit",
                (long long)d->stride);
    SAL_REQUIRE(scratch != NULL, FN, "scratch=NULL: needs %zu floats", need);
    char *base = sal_align64(scratch);
    int64_t *off = (int64_t *)(base + L.off), *hkey = (int64_t *)(base + L.hkey);
    int32_t *cls = (int32_t *)(base + L.cls), *cdy = (int32_t *)(base + L.cdy),
            *cdx = (int32_t *)(base + L.cdx), *hval = (int32_t *)(base + L.hval),
            *plist = (int32_t *)(base + L.plist);
    float *P = (float *)(base + L.planes);

    const int64_t N = d->x.n, H = d->x.h, W = d->x.w, S = d->stride, R = d->r;
    const int64_t O = d->o, Ho = ya.h, Wo = ya.w, HWo = Ho * Wo;
    const int cnhw = d->x.layout == SAL_CNHW, gather = L.panel_mode && S > 1;
    const int64_t xsn = sal_act_sn(d->x), xsc = sal_act_sc(d->x);
    const int64_t pl_stride = odd_lines(cnhw ? N * HWo : HWo);   /* between phase planes */
    memset(hval, 0xff, (size_t)L.hsize * sizeof *hval);
    int32_t ncls = gather ? 2 : 1, nplane = 0;
    cdy[0] = (int32_t)Ho, cdx[0] = 0;   /* class 0: no lane valid */
    cdy[1] = cdx[1] = 0;                /* gathered panel rows: every position valid */
    for (int64_t k = 0; k < R; k++) {
        const int32_t *row = d->rows + 3 * k;
        const int64_t ey = floordiv(row[1], S), ex = floordiv(row[2], S);
        const int64_t a = row[1] - ey * S, b = row[2] - ex * S;
        off[k] = L.panel_mode ? k * L.rs : 0, cls[k] = 0;
        if (ey <= -Ho || ey >= Ho || ex <= -Wo || ex >= Wo || a >= H || b >= W) continue;
        int fresh;
        if (gather) {
            cls[k] = 1;
            continue;
        }
        if (!L.panel_mode) {
            int64_t plane = row[0] * xsc;
            if (S > 1) {
                const int32_t j = hash_id(hkey, hval, L.hsize, 1 + row[0], (a << 30) + b, &nplane,
                                          &fresh);
                if (fresh)
                    plist[3 * j] = row[0], plist[3 * j + 1] = (int32_t)a,
                    plist[3 * j + 2] = (int32_t)b;
                plane = j * pl_stride;
            }
            off[k] = plane + ey * Wo + ex;
        }
        const int32_t c = hash_id(hkey, hval, L.hsize, 0, (ey + Ho) * 2 * Wo + ex + Wo, &ncls,
                                  &fresh);
        if (fresh) cdy[c] = (int32_t)ey, cdx[c] = (int32_t)ex;
        cls[k] = c;
    }
    const float *src = x;
    int64_t src_seg = cnhw ? 0 : xsn;
    if (S > 1 && !L.panel_mode) {
        phase_task pt = {P, x, plist, N, H, W, S, Ho, Wo, xsn, xsc, pl_stride,
                         cnhw ? HWo : nplane * pl_stride};
        sal_parallel_for(nplane * N, nt, phase_run, &pt);
        src = P;
        src_seg = cnhw ? 0 : nplane * pl_stride;
    }
    const int64_t M = cnhw ? N * HWo : HWo, nseg = cnhw ? 1 : N;
    const sc_kernel K = L.panel_mode ? pick_kernel(M) : pick_direct(M, R, O);
    const int64_t ntile = (M + K.tile - 1) / K.tile, nob = (O + K.mr - 1) / K.mr;
    sc_task t = {y, src, epi->res, w, epi->bias, off, cls, cdy, cdx, base + L.masks,
                 L.mask_bytes, R, O, ncls, Ho, Wo, M, ntile, nob, src_seg,
                 cnhw ? 0 : sal_act_sn(ya), sal_act_sc(ya), 0, epi->relu, epi->res_post,
                 epi->res != NULL};
    if (!L.panel_mode) {
        sal_parallel_for(nseg * ntile * nob, nt, K.run, &t);
        return SAL_OK;
    }
    const int64_t nblk = (M + L.block - 1) / L.block;
    panel_task pt = {t, K.run, x, d->rows, cls, base + L.panel, L.panel_bytes, L.block, L.rs,
                     nblk, K.tile, N, H, W, S, cnhw ? 0 : xsn, xsc, cnhw ? H * W : 0};
    sal_parallel_for(nseg * nblk, nt, panel_run, &pt);
    return SAL_OK;
}

/* ---- backward ----------------------------------------------------------------------- */
/* Per chunk of whole images (positions q0 .. q0 + B of the segment, CNHW; NCHW: one image
 * a chunk), with P (R, B) = X~ of the chunk, exact (zeros outside):
 *   dw (O, R) += dy (O, B) P^T          one GEMM (BLIS, the threads split it);
 *   P = w^T (R, O) dy (O, B)            one GEMM, then each row scattered back through its
 *                                       shift into dx, one thread per input channel (the
 *                                       rows of a channel added in row order: no races,
 *                                       deterministic). */
#define BWD_CHUNK ((int64_t)1 << 21)   /* floats of P per chunk (8 MiB) */

typedef struct {
    float *P;
    float *dx;                      /* scatter: dx; pack: NULL */
    const float *x;
    const int32_t *rows, *byc;      /* rows grouped by channel: byc[cs[c] .. cs[c+1]) */
    const int64_t *cs;
    int64_t B, q0, seg, H, W, S, Ho, Wo, xseg, xsc, img;
} bwd_task;

/* the valid output columns [*lo, *hi) of offset dx: 0 <= S*X + dx < W */
static void col_range(int64_t dx, int64_t S, int64_t W, int64_t Wo, int64_t *lo, int64_t *hi) {
    const int64_t a = -dx, b = W - 1 - dx;
    *lo = a <= 0 ? 0 : (a - 1) / S + 1;
    *hi = b < 0 ? 0 : b / S + 1;
    if (*hi > Wo) *hi = Wo;
    if (*lo > *hi) *lo = *hi;
}

/* rows [lo, hi) of P: P[k][p - q0] = X~[k][p], exact */
static void bwd_pack(void *p, int64_t lo, int64_t hi, int tid) {
    const bwd_task *t = p;
    const int64_t H = t->H, W = t->W, S = t->S, Ho = t->Ho, Wo = t->Wo, HWo = Ho * Wo;
    for (int64_t k = lo; k < hi; k++) {
        const int32_t *row = t->rows + 3 * k;
        const float *xp = t->x + t->seg * t->xseg + row[0] * t->xsc;
        float *out = t->P + k * t->B;
        int64_t xlo, xhi;
        col_range(row[2], S, W, Wo, &xlo, &xhi);
        for (int64_t p0 = t->q0; p0 < t->q0 + t->B; p0 += Wo, out += Wo) {   /* output rows */
            const int64_t n = p0 / HWo, Y = p0 % HWo / Wo, iy = S * Y + row[1];
            if (iy < 0 || iy >= H || xlo >= xhi) {
                memset(out, 0, (size_t)Wo * sizeof *out);
                continue;
            }
            const float *xr = xp + n * t->img + iy * W + row[2];   /* xr[S*X] */
            for (int64_t X = 0; X < xlo; X++) out[X] = 0.0f;
            if (S == 1) memcpy(out + xlo, xr + xlo, (size_t)(xhi - xlo) * sizeof *out);
            else for (int64_t X = xlo; X < xhi; X++) out[X] = xr[S * X];
            for (int64_t X = xhi; X < Wo; X++) out[X] = 0.0f;
        }
    }
}

/* channels [lo, hi) of dx += the rows of P scattered back through their shifts */
static void bwd_scatter(void *p, int64_t lo, int64_t hi, int tid) {
    const bwd_task *t = p;
    const int64_t H = t->H, W = t->W, S = t->S, Ho = t->Ho, Wo = t->Wo, HWo = Ho * Wo;
    for (int64_t c = lo; c < hi; c++) {
        float *xp = t->dx + t->seg * t->xseg + c * t->xsc;
        for (int64_t i = t->cs[c]; i < t->cs[c + 1]; i++) {
            const int64_t k = t->byc[i];
            const int32_t *row = t->rows + 3 * k;
            const float *g = t->P + k * t->B;
            int64_t xlo, xhi;
            col_range(row[2], S, W, Wo, &xlo, &xhi);
            if (xlo >= xhi) continue;
            for (int64_t p0 = t->q0; p0 < t->q0 + t->B; p0 += Wo, g += Wo) {
                const int64_t n = p0 / HWo, Y = p0 % HWo / Wo, iy = S * Y + row[1];
                if (iy < 0 || iy >= H) continue;
                float *xr = xp + n * t->img + iy * W + row[2];
                if (S == 1)
                    for (int64_t X = xlo; X < xhi; X++) xr[X] += g[X];
                else
                    for (int64_t X = xlo; X < xhi; X++) xr[S * X] += g[X];
            }
        }
    }
}

/* positions per chunk: whole images (CNHW) up to BWD_CHUNK floats of P, one image in NCHW */
static int64_t bwd_chunk(const sal_shiftconv_desc *d, int64_t HWo) {
    if (d->x.layout != SAL_CNHW) return HWo;
    int64_t imgs = BWD_CHUNK / ((d->r ? d->r : 1) * HWo);
    imgs = imgs < 1 ? 1 : imgs > d->x.n ? d->x.n : imgs;
    return imgs * HWo;
}

/* floats of the backward's scratch: P (R, B); w^T and dw^T (R, O each); per input row of
 * the w^T dy GEMM an offset and a class (O each); its mask tables (per thread, 2 classes);
 * the rows by channel (R int32) and the channel starts (C + 1 int64); alignment slack */
static size_t bwd_scratch_of(const sal_shiftconv_desc *d, int nt, int64_t B) {
    return (size_t)(d->r * B) + 2 * (size_t)(d->r * d->o) + 3 * (size_t)d->o +
           (size_t)nt * 2 * TMAX + (size_t)d->r + 2 * (size_t)(d->x.c + 1) + 32;
}

size_t sal_shiftconv_bwd_scratch(const sal_shiftconv_desc *d) {
    sal_act ya;
    if (sal_shiftconv_check(d, &ya) != SAL_OK) return 0;
    return bwd_scratch_of(d, sc_threads(d), bwd_chunk(d, ya.h * ya.w));
}

sal_status sal_shiftconv_bwd(float *dx, float *dw, const float *dy, const float *x,
                             const float *w, const sal_shiftconv_desc *d, float *scratch) {
    sal_act ya;
    SAL_TRY(sal_shiftconv_check(d, &ya));
    if (!dx && !dw) return SAL_OK;
    SAL_REQUIRE(dy && (!dw || x) && (!dx || d->r == 0 || w), FN,
                "dy must not be NULL, nor x (for dw) or w (for dx)");
    if (d->r == 0) return SAL_OK;
    SAL_REQUIRE(scratch != NULL, FN, "scratch=NULL: needs %zu floats",
                sal_shiftconv_bwd_scratch(d));
    const int nt = sc_threads(d);
    const int64_t N = d->x.n, C = d->x.c, R = d->r, O = d->o, HWo = ya.h * ya.w;
    const int cnhw = d->x.layout == SAL_CNHW;
    const int64_t B = bwd_chunk(d, HWo), M = cnhw ? N * HWo : HWo, nseg = cnhw ? 1 : N;
    const int64_t ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);
    float *P = scratch, *wt = P + R * B, *dwt = wt + R * O;
    int64_t *off = (int64_t *)(((uintptr_t)(dwt + R * O) + 7) & ~(uintptr_t)7);
    int32_t *cls = (int32_t *)(off + O), *byc = cls + O;
    char *masks = sal_align64(byc + R);
    int64_t *cs = (int64_t *)(masks + (size_t)nt * 2 * TMAX * 4);
    for (int64_t c = 0; c <= C; c++) cs[c] = 0;   /* counting sort of the rows by channel */
    for (int64_t k = 0; k < R; k++) cs[d->rows[3 * k] + 1]++;
    for (int64_t c = 0; c < C; c++) cs[c + 1] += cs[c];
    for (int64_t k = 0; k < R; k++) byc[cs[d->rows[3 * k]]++] = (int32_t)k;
    for (int64_t c = C; c > 0; c--) cs[c] = cs[c - 1];
    cs[0] = 0;
    /* P = w^T dy runs on the forward kernel: rows (o, 0, 0) over dy, weights w^T */
    if (dx) {
        for (int64_t k = 0; k < R; k++)
            for (int64_t o = 0; o < O; o++) wt[k * O + o] = w[o * R + k];
        for (int64_t o = 0; o < O; o++) off[o] = o * ysc, cls[o] = 1;
    }
    static const int32_t cdy[2] = {1 << 30, 0}, cdx[2] = {0, 0};   /* class 1: every lane */
    bwd_task t = {P, dx, x, d->rows, byc, cs, 0, 0, 0, d->x.h, d->x.w, d->stride, ya.h, ya.w,
                  cnhw ? 0 : sal_act_sn(d->x), sal_act_sc(d->x), cnhw ? d->x.h * d->x.w : 0};
    for (int64_t seg = 0; seg < nseg; seg++)
        for (int64_t q0 = 0; q0 < M; q0 += B) {
            const int64_t b = M - q0 < B ? M - q0 : B;
            const float *dys = dy + seg * (cnhw ? 0 : ysn) + q0;
            t.B = b, t.q0 = q0, t.seg = seg;
            if (dw) {   /* dw^T (R, O) += P dy^T (BLIS packs dy P^T's operands slowly) */
                sal_parallel_for(R, nt, bwd_pack, &t);
                SAL_TRY(sal_sgemm(R, O, b, 1.0f, P, b, 1, dys, 1, ysc, seg || q0 ? 1.0f : 0.0f,
                                  dwt, O, 1, nt));
            }
            if (dx) {   /* P (R, b) = w^T dy, then scattered */
                const sc_kernel K = pick_kernel(b);
                const int64_t ntile = (b + K.tile - 1) / K.tile, nob = (R + K.mr - 1) / K.mr;
                sc_task g = {P, dys, NULL, wt, NULL, off, cls, cdy, cdx, masks, 2 * TMAX * 4,
                             O, R, 2, ya.h, ya.w, b, ntile, nob, 0, 0, b, 0, 0, 0, 0};
                sal_parallel_for(ntile * nob, nt, K.run, &g);
                sal_parallel_for(C, nt, bwd_scatter, &t);
            }
        }
    if (dw)
        for (int64_t o = 0; o < O; o++)
            for (int64_t k = 0; k < R; k++) dw[o * R + k] += dwt[k * O + o];
    return SAL_OK;
}
