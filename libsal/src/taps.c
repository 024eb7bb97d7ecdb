/* Sparse taps: SAL's convolution over the kept taps only (issue 19), and the exported
 * network's one-tap GATHER on the same kernel (issue 20).  Definitions: sal/attention.h
 * ("Sparse taps"), sal/taps.h; layout: internal/taps.h.
 *
 * Unshared SAL, per output channel o, keeps a list of entries (input channel i, tap q,
 * weight p*w): a sparse-weight x dense-activation product.  Every tap (dy, dx) of a stride-S
 * convolution reads the input at row S*(Y + ro) + a and column S*(X + co) + b, with the
 * phases a = dy mod S, b = dx mod S and ro = floor(dy/S), co = floor(dx/S).  For each
 * chunk of output rows (or of whole small images) the input is laid out once in the copies
 * (a, b, co) that the taps read (stride 1: the column shifts -1, 0, +1; stride 2: six
 * phase/shift copies), each with the output grid's row width Wo and one halo row above and
 * below; the row offset ro then folds into the entry's offset, so that an output tile of T
 * consecutive positions is sum_e w_e * (T contiguous, aligned floats at off_e): one
 * broadcast per entry, one load per FMA, the accumulators in registers, the epilogue
 * (store, add, or the deployment's bias, residual and ReLU) on the registers.  Output
 * channels sweep a chunk while its copies stay in cache.
 *   forward:         rows o, entries (i, q) over copies of x;
 *   input gradient:  the same kernel with the transposed lists: rows (i, phase of dx),
 *                    entries (o, q) over copies of dy (column shifts -dx, row offsets -dy;
 *                    stride >= 2: dx is produced phase plane by phase plane and added in);
 *   weight gradient: g[o,i,q] = sum_p dy[o][p] * x_q[i][p] at the kept taps only (a sampled
 *                    dense x dense product): entries in groups with register accumulators
 *                    over a chunk, or per tile with dy's tile in registers;
 *   stride 1:        both gradients in one pass over the chunks (dy read once).
 * Direct path (stride 1, rows 16, 32 or 64 wide, AVX-512, the sources 64-byte aligned):
 * the same lists without the copies: rows read in place, the column shift made in registers
 * (section "direct path" below).  It removes the copies' fixed cost (16x32x32, batch 128:
 * 1.9 ms of a 3.4 ms forward at beta 70 on the copy path, 1.0 ms of 2.5 direct).
 * Shared SAL is the case where every output keeps its input channel's taps: it runs on the
 * same kernels, or (64 outputs and more, where that measured faster) as one GEMM over the
 * (channel, tap) rows of an im2col restricted to the kept taps (sal_sgemm), its gradients
 * two more; its forward on small planes (stride 1, rows < 32 wide) and with 64 outputs and
 * more at stride 2 is shift + 1x1 on sal_shiftconv (one row per kept (channel, tap)).
 *
 * Kernels: one table indexed by ISA (internal/cpu.h): AVX-512 (16-float vectors; 8-float
 * vectors with its 32 registers when Wo is not a multiple of 16, so that loads stay
 * aligned), AVX2 + FMA, and the scalar reference twins of ref/taps_ref.c.
 * Threads: work units (a chunk, or for small batches a range of a chunk's output rows) are
 * split statically over the pool; each output element is computed by one thread in a fixed
 * order, and the weight gradient's per-thread partial sums are added in thread order, so the
 * results are deterministic for a given thread count.
 *
 * Crossover (sal_taps_pays): see the measurements before that function. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "internal/cpu.h"
#include "internal/range.h"
#include "internal/taps.h"
#include "sal/conv.h"
#include "sal/shiftconv.h"
#include "sal/taps.h"

#define KK 9
#define BUF_BUDGET ((int64_t)65536)     /* floats of chunk buffer per thread (256 KiB) */
#define SHARED_COL_CAP ((int64_t)1 << 20) /* floats of restricted im2col per GEMM chunk */

/* ---- kernels ------------------------------------------------------------------------- */
/* Forward: the tiles of T = V*NV positions, one after the other; per tile the entries of
 * every row k in channel blocks b (so that a block's copies of the tile stay in L1): NV
 * accumulators in registers, carried between blocks through part; after the last block
 * the epilogue.  A tile that extends past the chunk reads into the slack after its plane
 * (TAPS_TMAX >= T floats, never written: whatever it holds lands in lanes the epilogue
 * drops) and keeps the valid part. */
#define TAPS_FWD_KERNEL(SUF, V, NV, TARGET)                                                    \
    __attribute__((target(TARGET))) static void taps_fwd_##SUF(const taps_fwd_job *j) {      \
        typedef float vec __attribute__((vector_size(4 * (V))));                               \
        typedef int ivec __attribute__((vector_size(4 * (V))));                                \
        enum { T = (V) * (NV) };                                                               \
        _Static_assert(T <= TAPS_TMAX, "tile within the slack");                               \
        /* the job's fields in locals: the memcpy stores below may alias anything */           \
        const int64_t npos = j->npos, nb = j->nb, k0 = j->k0, k1 = j->k1;                      \
        const int64_t *const rowptr = j->rowptr, *const off = j->off;                          \
        const float *const buf = j->buf, *const w = j->w;                                      \
        float *const part = j->part;                                                           \
        for (int64_t p0 = 0; p0 < npos; p0 += T) {                                             \
            const int64_t m = npos - p0 < T ? npos - p0 : T;                                   \
            const float *base = buf + p0;                                                      \
            for (int64_t b = 0; b < nb; b++) {                                                 \
                const int last = b == nb - 1;                                                  \
                for (int64_t k = k0; k < k1; k++) {                                            \
                    vec acc[NV];                                                               \
                    float *pk = part + (k - k0) * T;                                           \
                    if (b == 0) {                                                              \
                        _Pragma("GCC unroll 16") for (int i = 0; i < (NV); i++) acc[i] = (vec){0}; \
                    } else {                                                                   \
                        _Pragma("GCC unroll 16") for (int i = 0; i < (NV); i++)                \
                            memcpy(&acc[i], pk + (V) * i, sizeof(vec));                        \
                    }                                                                          \
                    const int64_t e1 = rowptr[k * nb + b + 1];                                 \
                    for (int64_t e = rowptr[k * nb + b]; e < e1; e++) {                        \
                        const float *s = base + off[e];                                        \
                        const vec wv = w[e] - (vec){0}; /* a broadcast (x - 0 = x) */          \
                        _Pragma("GCC unroll 16") for (int i = 0; i < (NV); i++) {              \
                            vec xi;                                                            \
                            memcpy(&xi, s + (V) * i, sizeof xi);                               \
                            acc[i] += wv * xi;                                                 \
                        }                                                                      \
                    }                                                                          \
                    if (!last) {                                                               \
                        _Pragma("GCC unroll 16") for (int i = 0; i < (NV); i++)                \
                            memcpy(pk + (V) * i, &acc[i], sizeof(vec));                        \
                        continue;                                                              \
                    }                                                                          \
                    float *d = j->dst + (k - j->k0) * j->dstride + p0;                         \
                    if (m < T) {                                                               \
                        _Pragma("GCC unroll 16") for (int i = 0; i < (NV); i++)                \
                            memcpy(j->tmp + (V) * i, &acc[i], sizeof(vec));                    \
                        epi_scalar(d, j->tmp, m, j, k, p0);                                    \
                    } else if (j->mode == TAPS_EPI_STORE) {                                    \
                        _Pragma("GCC unroll 16") for (int i = 0; i < (NV); i++)                \
                            memcpy(d + (V) * i, &acc[i], sizeof(vec));                         \
                    } else if (j->mode == TAPS_EPI_ACC) {                                      \
                        _Pragma("GCC unroll 16") for (int i = 0; i < (NV); i++) {              \
                            vec t;                                                             \
                            memcpy(&t, d + (V) * i, sizeof t);                                 \
                            t += acc[i];                                                       \
                            memcpy(d + (V) * i, &t, sizeof t);                                 \
                        }                                                                      \
                    } else {                                                                   \
                        const vec bv = (vec){0} + (j->bias ? j->bias[k] : 0.0f);               \
                        const float *r = j->res ? j->res + (k - j->k0) * j->dstride + p0 : NULL; \
                        const int pre = r && !j->res_post, post = r && j->res_post;            \
                        _Pragma("GCC unroll 16") for (int i = 0; i < (NV); i++) {              \
                            vec v = acc[i] + bv, t;                                            \
                            if (pre) {                                                         \
                                memcpy(&t, r + (V) * i, sizeof t);                             \
                                v += t;                                                        \
                            }                                                                  \
                            if (j->relu) v = (vec)((ivec)v & (ivec)(v > (vec){0}));            \
                            if (post) {                                                        \
                                memcpy(&t, r + (V) * i, sizeof t);                             \
                                v += t;                                                        \
                            }                                                                  \
                            memcpy(d + (V) * i, &v, sizeof v);                                 \
                        }                                                                      \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }

/* Weight gradient: per channel block b (its copies of the whole chunk stay in L1) and row
 * k, the entries in groups of GE: one register accumulator per entry over all the chunk's
 * positions, each vector of dy loaded once for GE FMAs, then the accumulators summed over
 * their lanes by a halving tree.  The lanes past the chunk are masked (dy 0 there, x
 * selected away). */
#define GE 8
/* g[e0 + u] += sum_p dy[p] * src[u][p] for u < G (G entries, G accumulators) */
#define TAPS_SDDMM_GROUP(SUF, V, G, TARGET)                                                    \
    __attribute__((target(TARGET), always_inline)) static inline void sddmm_group_##SUF##_##G( \
        float *g, const float *const *src0, const float *dyk0, int64_t full, int64_t npos,    \
        const taps_sddmm_job *j) {                                                             \
        typedef float vec __attribute__((vector_size(4 * (V))));                               \
        typedef int ivec __attribute__((vector_size(4 * (V))));                                \
        vec acc[G];                                                                            \
        _Pragma("GCC unroll 8") for (int u = 0; u < (G); u++) acc[u] = (vec){0};              \
        for (int64_t im = 0; im < j->nimg; im++) {                                             \
        const float *dyk = dyk0 + im * j->dyis, *src[G];                                       \
        _Pragma("GCC unroll 8") for (int u = 0; u < (G); u++) src[u] = src0[u] + im * j->bis; \
        for (int64_t p = 0; p < full; p += (V)) {                                              \
            vec gv, xu;                                                                        \
            memcpy(&gv, dyk + p, sizeof gv);                                                   \
            _Pragma("GCC unroll 8") for (int u = 0; u < (G); u++) {                            \
                memcpy(&xu, src[u] + p, sizeof xu);                                            \
                acc[u] += gv * xu;                                                             \
            }                                                                                  \
        }                                                                                      \
        if (full < npos) {                                                                     \
            ivec lane;                                                                         \
            for (int l = 0; l < (V); l++) lane[l] = l;                                         \
            const ivec mk = lane < (ivec){0} + (int)(npos - full);                             \
            vec gt = (vec){0};                                                                 \
            memcpy(&gt, dyk + full, (size_t)(npos - full) * sizeof(float));                   \
            _Pragma("GCC unroll 8") for (int u = 0; u < (G); u++) {                            \
                vec xu;                                                                        \
                memcpy(&xu, src[u] + full, sizeof xu);                                         \
                acc[u] += gt * (vec)((ivec)xu & mk);                                           \
            }                                                                                  \
        }                                                                                      \
        }                                                                                      \
        _Pragma("GCC unroll 8") for (int u = 0; u < (G); u++) g[u] += hsum_##SUF(acc[u]);    \
    }
#define TAPS_SDDMM_KERNEL(SUF, V, TARGET)                                                      \
    TAPS_SDDMM_GROUP(SUF, V, 8, TARGET)                                                        \
    TAPS_SDDMM_GROUP(SUF, V, 4, TARGET)                                                        \
    TAPS_SDDMM_GROUP(SUF, V, 2, TARGET)                                                        \
    TAPS_SDDMM_GROUP(SUF, V, 1, TARGET)                                                        \
    __attribute__((target(TARGET))) static void taps_sddmm_##SUF(const taps_sddmm_job *j) {  \
        const int64_t npos = j->npos, nb = j->nb, full = npos / (V) * (V);                     \
        for (int64_t b = 0; b < nb; b++)                                                       \
            for (int64_t k = j->k0; k < j->k1; k++) {                                          \
                const int64_t e0 = j->rowptr[k * nb + b], e1 = j->rowptr[k * nb + b + 1];      \
                const float *dyk = j->dy + k * j->dystride;                                    \
                const float *src[GE];                                                          \
                int64_t e = e0;                                                                \
                while (e < e1) {                                                               \
                    const int64_t r = e1 - e;                                                  \
                    const int G = r >= 8 ? 8 : r >= 4 ? 4 : r >= 2 ? 2 : 1;                    \
                    for (int u = 0; u < G; u++) src[u] = j->buf + j->off[e + u];               \
                    if (G == 8) sddmm_group_##SUF##_8(j->g + e, src, dyk, full, npos, j);         \
                    else if (G == 4) sddmm_group_##SUF##_4(j->g + e, src, dyk, full, npos, j);    \
                    else if (G == 2) sddmm_group_##SUF##_2(j->g + e, src, dyk, full, npos, j);    \
                    else sddmm_group_##SUF##_1(j->g + e, src, dyk, full, npos, j);                \
                    e += G;                                                                    \
                }                                                                              \
            }                                                                                  \
    }

/* the sum of a vector's lanes: halves added until one lane is left (a fixed order) */
#define TAPS_HSUM16(SUF, TARGET)                                                               \
    __attribute__((target(TARGET), always_inline)) static inline float hsum_##SUF(            \
        float __attribute__((vector_size(64))) a) {                                            \
        typedef float v8 __attribute__((vector_size(32)));                                     \
        typedef float v4 __attribute__((vector_size(16)));                                     \
        const v8 b = __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7) +                  \
                     __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);             \
        const v4 c = __builtin_shufflevector(b, b, 0, 1, 2, 3) +                              \
                     __builtin_shufflevector(b, b, 4, 5, 6, 7);                               \
        return (c[0] + c[2]) + (c[1] + c[3]);                                                  \
    }
#define TAPS_HSUM8(SUF, TARGET)                                                                \
    __attribute__((target(TARGET), always_inline)) static inline float hsum_##SUF(            \
        float __attribute__((vector_size(32))) b) {                                            \
        typedef float v4 __attribute__((vector_size(16)));                                     \
        const v4 c = __builtin_shufflevector(b, b, 0, 1, 2, 3) +                              \
                     __builtin_shufflevector(b, b, 4, 5, 6, 7);                               \
        return (c[0] + c[2]) + (c[1] + c[3]);                                                  \
    }

/* Weight gradient, tile-major: per tile of T = V*SV positions (the tile's copies in L1)
 * and row k (its dy tile in registers), every entry's SV products go into its vector
 * accumulator (accv, rows in blocks that keep accv within ACCV_FLOATS); one reduction per
 * entry and chunk. */
#define ACCV_FLOATS 16384
#define TAPS_SDDMM_TILES(SUF, V, SV, TARGET)                                                   \
    __attribute__((target(TARGET))) static void taps_sddmt_##SUF(const taps_sddmm_job *j) {  \
        typedef float vec __attribute__((vector_size(4 * (V))));                               \
        typedef int ivec __attribute__((vector_size(4 * (V))));                                \
        enum { T = (V) * (SV) };                                                               \
        _Static_assert(T <= TAPS_TMAX && (SV) % 2 == 0, "tile");                               \
        /* the job's fields in locals: the memcpy stores below may alias anything */           \
        const int64_t npos = j->npos, nb = j->nb, nimg = j->nimg, bis = j->bis;                \
        const int64_t dystride = j->dystride, dyis = j->dyis, k1 = j->k1;                      \
        const int64_t *const rowptr = j->rowptr, *const off = j->off;                          \
        const float *const buf = j->buf, *const dy = j->dy;                                    \
        float *const accv = j->accv, *const gout = j->g, *const tmp = j->tmp;                  \
        ivec lane;                                                                             \
        for (int l = 0; l < (V); l++) lane[l] = l;                                             \
        for (int64_t kb = j->k0; kb < k1;) {                                                   \
            const int64_t ea = rowptr[kb * nb];                                                \
            int64_t ke = kb + 1;                                                               \
            while (ke < k1 && (rowptr[(ke + 1) * nb] - ea) * (V) <= ACCV_FLOATS) ke++;         \
            const int64_t eb = rowptr[ke * nb];                                                \
            memset(accv, 0, (size_t)((eb - ea) * (V)) * sizeof(float));                        \
            for (int64_t im = 0; im < nimg; im++)                                              \
                for (int64_t p0 = 0; p0 < npos; p0 += T) {                                     \
                    const int64_t m = npos - p0 < T ? npos - p0 : T;                           \
                    const float *base = buf + im * bis + p0;                                   \
                    for (int64_t k = kb; k < ke; k++) {                                        \
                        const float *dyk = dy + k * dystride + im * dyis + p0;                 \
                        vec g[SV];                                                             \
                        ivec mk[SV];                                                           \
                        if (m == T) {                                                          \
                            _Pragma("GCC unroll 16") for (int i = 0; i < (SV); i++)            \
                                memcpy(&g[i], dyk + (V) * i, sizeof(vec));                     \
                        } else {                                                               \
                            memcpy(tmp, dyk, (size_t)m * sizeof(float));                       \
                            memset(tmp + m, 0, (size_t)(T - m) * sizeof(float));               \
                            _Pragma("GCC unroll 16") for (int i = 0; i < (SV); i++) {          \
                                memcpy(&g[i], tmp + (V) * i, sizeof(vec));                     \
                                mk[i] = lane < (ivec){0} + (int)(m - (V) * i);                 \
                            }                                                                  \
                        }                                                                      \
                        const int64_t e1 = rowptr[(k + 1) * nb];                               \
                        for (int64_t e = rowptr[k * nb]; e < e1; e++) {                        \
                            const float *s = base + off[e];                                    \
                            vec s0 = (vec){0}, s1 = (vec){0}, xi;                              \
                            if (m == T) {                                                      \
                                _Pragma("GCC unroll 16") for (int i = 0; i < (SV); i += 2) {   \
                                    memcpy(&xi, s + (V) * i, sizeof xi);                       \
                                    s0 += g[i] * xi;                                           \
                                    memcpy(&xi, s + (V) * (i + 1), sizeof xi);                 \
                                    s1 += g[i + 1] * xi;                                       \
                                }                                                              \
                            } else {                                                           \
                                for (int i = 0; i < (SV); i++) {                               \
                                    memcpy(&xi, s + (V) * i, sizeof xi);                       \
                                    s0 += g[i] * (vec)((ivec)xi & mk[i]);                      \
                                }                                                              \
                            }                                                                  \
                            float *av = accv + (e - ea) * (V);                                 \
                            vec acc;                                                           \
                            memcpy(&acc, av, sizeof acc);                                      \
                            acc += s0 + s1;                                                    \
                            memcpy(av, &acc, sizeof acc);                                      \
                        }                                                                      \
                    }                                                                          \
                }                                                                              \
            for (int64_t e = ea; e < eb; e++) {                                                \
                vec acc;                                                                       \
                memcpy(&acc, accv + (e - ea) * (V), sizeof acc);                               \
                gout[e] += hsum_##SUF(acc);                                                    \
            }                                                                                  \
            kb = ke;                                                                           \
        }                                                                                      \
    }

/* The stride-2 helpers.  gather2: d[r*ds + c] = s[r*ss + 2c] for r < rows, c < n, each
 * source row readable below s[r*ss + avail] (prep_chunk's phase copies).  scatter2:
 * d[2c] += e[c], d[2c + 1] += o[c] for 2c (+1) < w (the input gradient's phase planes added
 * into a row of dx). */
#define TAPS_STRIDE2(SUF, V, TARGET, EVEN, LO, HI)                                             \
    __attribute__((target(TARGET))) static void taps_gather2_##SUF(                           \
        float *d, int64_t ds, const float *s, int64_t ss, int64_t rows, int64_t n,           \
        int64_t avail) {                                                                       \
        typedef float vec __attribute__((vector_size(4 * (V))));                               \
        for (int64_t r = 0; r < rows; r++, d += ds, s += ss) {                                 \
            int64_t c = 0;                                                                     \
            for (; c + (V) <= n && 2 * (c + (V)) <= avail; c += (V)) {                         \
                vec a, b;                                                                      \
                memcpy(&a, s + 2 * c, sizeof a);                                               \
                memcpy(&b, s + 2 * c + (V), sizeof b);                                         \
                const vec t = __builtin_shufflevector(a, b, EVEN);                             \
                memcpy(d + c, &t, sizeof t);                                                   \
            }                                                                                  \
            for (; c < n; c++) d[c] = s[2 * c];                                                \
        }                                                                                      \
    }                                                                                          \
    __attribute__((target(TARGET))) static void taps_scatter2_##SUF(                          \
        float *d, const float *e, const float *o, int64_t w) {                                 \
        typedef float vec __attribute__((vector_size(4 * (V))));                               \
        int64_t c = 0;                                                                         \
        for (; 2 * (c + (V)) <= w; c += (V)) {                                                 \
            vec a, b, t;                                                                       \
            memcpy(&a, e + c, sizeof a);                                                       \
            memcpy(&b, o + c, sizeof b);                                                       \
            memcpy(&t, d + 2 * c, sizeof t);                                                   \
            t += __builtin_shufflevector(a, b, LO);                                            \
            memcpy(d + 2 * c, &t, sizeof t);                                                   \
            memcpy(&t, d + 2 * c + (V), sizeof t);                                             \
            t += __builtin_shufflevector(a, b, HI);                                            \
            memcpy(d + 2 * c + (V), &t, sizeof t);                                             \
        }                                                                                      \
        for (; 2 * c < w; c++) {                                                               \
            d[2 * c] += e[c];                                                                  \
            if (2 * c + 1 < w) d[2 * c + 1] += o[c];                                           \
        }                                                                                      \
    }

/* the epilogue of m < T positions from acc (a partial tile) */
static inline __attribute__((always_inline)) void epi_scalar(float *d, const float *acc,
                                                             int64_t m, const taps_fwd_job *j,
                                                             int64_t k, int64_t p0) {
    if (j->mode == TAPS_EPI_STORE) {
        memcpy(d, acc, (size_t)m * sizeof *d);
    } else if (j->mode == TAPS_EPI_ACC) {
        for (int64_t p = 0; p < m; p++) d[p] += acc[p];
    } else {
        const float b = j->bias ? j->bias[k] : 0.0f;
        const float *r = j->res ? j->res + (k - j->k0) * j->dstride + p0 : NULL;
        for (int64_t p = 0; p < m; p++) {
            float v = acc[p] + b;
            if (r && !j->res_post) v += r[p];
            if (j->relu) v = v > 0.0f ? v : 0.0f;
            if (r && j->res_post) v += r[p];
            d[p] = v;
        }
    }
}

TAPS_FWD_KERNEL(avx512_16x8, 16, 8, "avx512f")
TAPS_FWD_KERNEL(avx512_16x4, 16, 4, "avx512f")
TAPS_FWD_KERNEL(avx512_8x16, 8, 16, "avx512f,avx512vl")
TAPS_FWD_KERNEL(avx512_8x8, 8, 8, "avx512f,avx512vl")
TAPS_FWD_KERNEL(avx2_8x8, 8, 8, "avx2,fma")
TAPS_FWD_KERNEL(avx2_8x4, 8, 4, "avx2,fma")
TAPS_HSUM16(avx512_16, "avx512f")
TAPS_HSUM8(avx512_8, "avx512f,avx512vl")
TAPS_HSUM8(avx2_8, "avx2,fma")
TAPS_SDDMM_KERNEL(avx512_16, 16, "avx512f")
TAPS_SDDMM_KERNEL(avx512_8, 8, "avx512f,avx512vl")
TAPS_SDDMM_KERNEL(avx2_8, 8, "avx2,fma")
TAPS_SDDMM_TILES(avx512_16, 16, 8, "avx512f")
TAPS_SDDMM_TILES(avx512_8, 8, 16, "avx512f,avx512vl")
TAPS_SDDMM_TILES(avx2_8, 8, 8, "avx2,fma")
#define E16 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
#define L16 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23
#define H16 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31
#define E8 0, 2, 4, 6, 8, 10, 12, 14
#define L8 0, 8, 1, 9, 2, 10, 3, 11
#define H8 4, 12, 5, 13, 6, 14, 7, 15
TAPS_STRIDE2(avx512, 16, "avx512f", E16, L16, H16)
TAPS_STRIDE2(avx2, 8, "avx2,fma", E8, L8, H8)

static void gather2_base(float *d, int64_t ds, const float *s, int64_t ss, int64_t rows,
                         int64_t n, int64_t avail) {
    for (int64_t r = 0; r < rows; r++, d += ds, s += ss)
        for (int64_t c = 0; c < n; c++) d[c] = s[2 * c];
}

static void scatter2_base(float *d, const float *e, const float *o, int64_t w) {
    for (int64_t c = 0; 2 * c < w; c++) {
        d[2 * c] += e[c];
        if (2 * c + 1 < w) d[2 * c + 1] += o[c];
    }
}

typedef void (*gather2_fn)(float *d, int64_t ds, const float *s, int64_t ss, int64_t rows,
                           int64_t n, int64_t avail);
typedef void (*scatter2_fn)(float *d, const float *e, const float *o, int64_t w);
static const struct {
    gather2_fn gather2;
    scatter2_fn scatter2;
} STRIDE2[SAL_ISA_COUNT] = {
    [SAL_ISA_BASE] = {gather2_base, scatter2_base},
    [SAL_ISA_AVX2] = {taps_gather2_avx2, taps_scatter2_avx2},
    [SAL_ISA_AVX512] = {taps_gather2_avx512, taps_scatter2_avx512}};

typedef struct {
    taps_fwd_fn fwd;
    taps_sddmm_fn sddmm, sddmt;   /* weight gradient: by entry groups, by tiles */
    int64_t v, t;   /* vector width, tile (positions); t = 0 ends a list */
} taps_kern;

/* per ISA its kernels, widest tile first: pick_kern takes the first whose vector width
 * divides the grid's row width (aligned loads) and whose tile fits the chunk */
#define NKERN 4
static const taps_kern KERNS[SAL_ISA_COUNT][NKERN] = {
    [SAL_ISA_BASE] = {{sal_ref_taps_fwd, sal_ref_taps_sddmm, sal_ref_taps_sddmm, 1, 1}},
    [SAL_ISA_AVX2] = {{taps_fwd_avx2_8x8, taps_sddmm_avx2_8, taps_sddmt_avx2_8, 8, 64},
                      {taps_fwd_avx2_8x4, taps_sddmm_avx2_8, taps_sddmt_avx2_8, 8, 32}},
    [SAL_ISA_AVX512] = {
        {taps_fwd_avx512_16x8, taps_sddmm_avx512_16, taps_sddmt_avx512_16, 16, 128},
        {taps_fwd_avx512_8x16, taps_sddmm_avx512_8, taps_sddmt_avx512_8, 8, 128},
        {taps_fwd_avx512_16x4, taps_sddmm_avx512_16, taps_sddmt_avx512_16, 16, 64},
        {taps_fwd_avx512_8x8, taps_sddmm_avx512_8, taps_sddmt_avx512_8, 8, 64}},
};

/* the kernel for a grid of row width wg and chunks of npos positions: the first aligned one
 * whose tile divides npos, else the first aligned one whose tile fits, else the last */
static taps_kern pick_kern(int64_t wg, int64_t npos) {
    const taps_kern *k = KERNS[sal_cpu_isa()];
    int n = 0;
    while (n < NKERN && k[n].t) n++;
    for (int pass = 0; pass < 3; pass++)
        for (int i = 0; i < n; i++) {
            const int aligned = wg % k[i].v == 0;
            if (pass == 0 && aligned && npos % k[i].t == 0) return k[i];
            if (pass == 1 && aligned && k[i].t <= npos) return k[i];
            if (pass == 2 && k[i].t <= npos) return k[i];
        }
    return k[n - 1];
}

/* ---- geometry ----------------------------------------------------------------------- */
/* tap q = (dy + 1) * 3 + (dx + 1) of a stride-S convolution reads row S*(Y + ro) + a,
 * column S*(X + co) + b */
typedef struct {
    int a, ro, b, co;
} tap_map;

static tap_map tap_of(int q, int64_t S) {
    const int dy = q / 3 - 1, dx = q % 3 - 1;
    tap_map t;
    t.a = (int)(((dy % S) + S) % S);
    t.ro = (int)((dy - t.a) / S);
    t.b = (int)(((dx % S) + S) % S);
    t.co = (int)((dx - t.b) / S);
    return t;
}

/* A source (x, or dy for the input gradient) laid out in chunks over an output grid */
typedef struct {
    const float *src;
    int64_t ssn, ssc;             /* source strides: image, channel (either layout) */
    int64_t N, Cs, Hs, Ws, S;     /* source geometry and its sampling stride */
    int64_t Hg, Wg;               /* grid rows, columns per image */
    int ncopy;
    int ca[KK], cb[KK], cco[KK];  /* copy k reads src[S*r + a][S*(c + co) + b] */
    int64_t R, nrb, cstride;      /* rows per chunk, chunks per image, floats per plane */
    int64_t nimg, ibs;            /* R = Hg: whole images per chunk, floats between them */
    taps_kern kern;               /* for chunks of R rows */
} taps_grid;

/* floats between planes: m rounded up to whole 64-byte lines, an odd number of them (so
 * the planes a tile reads do not crowd into a few L1 sets) */
static int64_t plane_stride(int64_t m) {
    int64_t b = (m + 15) / 16 * 16;
    return (b / 16) % 2 ? b : b + 16;
}

static int copy_index(taps_grid *g, int a, int b, int co) {
    for (int k = 0; k < g->ncopy; k++)
        if (g->ca[k] == a && g->cb[k] == b && g->cco[k] == co) return k;
    g->ca[g->ncopy] = a, g->cb[g->ncopy] = b, g->cco[g->ncopy] = co;
    return g->ncopy++;
}

/* rows per chunk: the chunk's planes within the budget, and at least 2 chunks per thread
 * when the batch is small */
/* partner: floats per grid row of a second grid chunked the same way (the fused backward's
 * dy copies beside x's; each buffer within the budget), 0 for none */
static void grid_chunks(taps_grid *g, int nt, int64_t partner) {
    const int64_t own = g->Cs * g->ncopy * g->Wg, per_row = own > partner ? own : partner;
    int64_t R = BUF_BUDGET / (per_row > 0 ? per_row : 1) - 2;
    if (R < 1) R = 1;
    if (R > g->Hg) R = g->Hg;
    /* whole 128-position tiles: R a multiple of q = 128 / Wg rows (the same for every ISA,
     * so that the scratch size does not depend on it); a small batch splits its images into
     * chunks of no fewer rows (then its output rows, see work_units) */
    const int64_t q = 128 % g->Wg == 0 ? 128 / g->Wg : 1, want = 2 * (int64_t)nt;
    if (g->N * ((g->Hg + R - 1) / R) < want) {
        const int64_t per_img = (want + g->N - 1) / g->N;
        int64_t r2 = (g->Hg + per_img - 1) / per_img;
        r2 = r2 < q ? q : r2;
        if (r2 < R) R = r2;
    }
    if (R > q) R = R / q * q;
    g->R = R;
    g->nrb = (g->Hg + R - 1) / R;
    g->ibs = (R + 2) * g->Wg;
    /* small images: several per chunk (the weight gradient reduces once per chunk), within
     * the budget and leaving 2 chunks per thread */
    g->nimg = 1;
    if (R == g->Hg) {
        int64_t ni = BUF_BUDGET / ((per_row > 0 ? per_row : 1) * (R + 2));
        const int64_t par = g->N / want;
        ni = ni < par ? ni : par;
        g->nimg = ni < 1 ? 1 : ni;
    }
    g->cstride = plane_stride(g->nimg * g->ibs + TAPS_TMAX);
    g->kern = pick_kern(g->Wg, R * g->Wg);
}

/* chunk j: images n0 .. n0 + *ni - 1, grid rows Y0 .. Y0 + *rows - 1 */
static void chunk_of(const taps_grid *g, int64_t j, int64_t *n0, int64_t *ni, int64_t *Y0,
                     int64_t *rows) {
    *n0 = j / g->nrb * g->nimg;
    *ni = g->N - *n0 < g->nimg ? g->N - *n0 : g->nimg;
    *Y0 = j % g->nrb * g->R;
    *rows = g->Hg - *Y0 < g->R ? g->Hg - *Y0 : g->R;
}

static int64_t grid_buf_floats(const taps_grid *g) { return g->Cs * g->ncopy * g->cstride; }

/* the forward grid: x (N, C, H, W) sampled with stride S onto (Ho, Wo); tcopy[q], tro[q]:
 * the copy and the row offset of tap q */
static void fwd_grid(taps_grid *g, sal_act xa, int64_t S, int nt, int tcopy[KK], int tro[KK],
                     int64_t partner) {
    memset(g, 0, sizeof *g);
    g->ssn = sal_act_sn(xa), g->ssc = sal_act_sc(xa);
    g->N = xa.n, g->Cs = xa.c, g->Hs = xa.h, g->Ws = xa.w, g->S = S;
    g->Hg = (xa.h - 1) / S + 1, g->Wg = (xa.w - 1) / S + 1;
    for (int q = 0; q < KK; q++) {
        const tap_map t = tap_of(q, S);
        tcopy[q] = copy_index(g, t.a, t.b, t.co);
        tro[q] = t.ro;
    }
    grid_chunks(g, nt, partner);
}

/* the input-gradient grid: dy (N, O, Ho, Wo) sampled with stride 1 onto (Ho, Wo), copies
 * with the column shifts -co; tcopy[q], tro[q] = -ro; tph[q] the phase (a, b) of dx that
 * tap q feeds, phases listed in pha/phb */
static void bwd_grid(taps_grid *g, sal_act ya, int64_t S, int nt, int tcopy[KK], int tro[KK],
                     int tph[KK], int *nph, int pha[KK], int phb[KK], int64_t partner) {
    memset(g, 0, sizeof *g);
    g->ssn = sal_act_sn(ya), g->ssc = sal_act_sc(ya);
    g->N = ya.n, g->Cs = ya.c, g->Hs = ya.h, g->Ws = ya.w, g->S = 1;
    g->Hg = ya.h, g->Wg = ya.w;
    *nph = 0;
    for (int q = 0; q < KK; q++) {
        const tap_map t = tap_of(q, S);
        tcopy[q] = copy_index(g, 0, 0, -t.co);
        tro[q] = -t.ro;
        int ph = 0;
        while (ph < *nph && (pha[ph] != t.a || phb[ph] != t.b)) ph++;
        if (ph == *nph) pha[ph] = t.a, phb[ph] = t.b, (*nph)++;
        tph[q] = ph;
    }
    grid_chunks(g, nt, partner);
}

/* d[0 .. n) = s[0 .. n) in 64-byte moves: libc's memmove takes "rep movsb" for a few KiB,
 * which this CPU runs slowly when the destination is not aligned (measured: 20 % of a
 * sparse forward in memmove); GCC would turn this loop back into that call */
__attribute__((noinline, optimize("no-tree-loop-distribute-patterns"))) static void
copy_floats(float *restrict d, const float *restrict s, int64_t n) {
    typedef float v16 __attribute__((vector_size(64)));
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        v16 t;
        memcpy(&t, s + i, sizeof t);
        memcpy(d + i, &t, sizeof t);
    }
    for (; i < n; i++) d[i] = s[i];
}

/* the planes of chunk (images n0 .. n0+ni-1, rows Y0 .. Y0+rows-1) of the copies that
 * use[ch] names (bit k: copy k; NULL: all), halo rows included, image u at u * ibs in its
 * plane; the slack after each plane is left alone */
static void prep_chunk(float *buf, const taps_grid *g, int64_t n0, int64_t ni, int64_t Y0,
                       int64_t rows, const uint16_t *use) {
    const int64_t Wg = g->Wg, S = g->S;
    const gather2_fn g2 = STRIDE2[sal_cpu_isa()].gather2;
    for (int64_t ch = 0; ch < g->Cs; ch++)
        for (int64_t n = n0; n < n0 + ni; n++) {
            const float *sp = g->src + n * g->ssn + ch * g->ssc;
            const unsigned mask = use ? use[ch] : 0xffffu;
            for (int k = 0; k < g->ncopy; k++) {
                if (!(mask >> k & 1u)) continue;
                float *pl = buf + (ch * g->ncopy + k) * g->cstride + (n - n0) * g->ibs;
                const int64_t cofs = S * g->cco[k] + g->cb[k];   /* column of c = 0 */
                if (S == 1 && g->ca[k] == 0 && Wg == g->Ws && Wg > 1 && cofs >= -1 && cofs <= 1) {
                    /* the valid rows are one contiguous block in the source and in the plane:
                     * one copy shifted by cofs, then the column it wrapped into is zeroed */
                    const int64_t r0 = Y0 - 1 < 0 ? 0 : Y0 - 1;
                    const int64_t r1 = Y0 + rows + 1 < g->Hg ? Y0 + rows + 1 : g->Hg;
                    const int64_t z0 = (r0 - (Y0 - 1)) * Wg, z1 = (r1 - (Y0 - 1)) * Wg;
                    memset(pl, 0, (size_t)z0 * sizeof *pl);
                    memset(pl + z1, 0, (size_t)((rows + 2) * Wg - z1) * sizeof *pl);
                    float *d = pl + z0;
                    const float *s0 = sp + r0 * Wg;
                    const int64_t len = (r1 - r0) * Wg;
                    if (len <= 0) continue;
                    if (cofs == 0) {
                        copy_floats(d, s0, len);
                    } else if (cofs == 1) {
                        copy_floats(d, s0 + 1, len - 1);
                        for (int64_t c = Wg - 1; c < len; c += Wg) d[c] = 0.0f;
                    } else {
                        copy_floats(d + 1, s0, len - 1);
                        for (int64_t c = 0; c < len; c += Wg) d[c] = 0.0f;
                    }
                    continue;
                }
                int64_t lo, hi;
                sal_valid_range(cofs, S, g->Ws, Wg, &lo, &hi);
                /* the rows rr whose grid row r = Y0 - 1 + rr lies in the grid and samples a
                 * source row S*r + a inside it: [v0, v1) */
                const int64_t rmax = (g->Hs - g->ca[k] + S - 1) / S;   /* r < rmax: S*r + a < Hs */
                const int64_t rlim = rmax < g->Hg ? rmax : g->Hg;
                int64_t v0 = 1 - Y0 > 0 ? 1 - Y0 : 0, v1 = rlim - (Y0 - 1);
                if (v1 > rows + 2) v1 = rows + 2;
                if (v1 < v0 || lo >= hi) v1 = v0;
                memset(pl, 0, (size_t)(v0 * Wg) * sizeof *pl);
                memset(pl + v1 * Wg, 0, (size_t)((rows + 2 - v1) * Wg) * sizeof *pl);
                const float *s0 = sp + (S * (Y0 - 1 + v0) + g->ca[k]) * g->Ws;
                for (int64_t rr = v0; rr < v1; rr++) {
                    float *d = pl + rr * Wg;
                    for (int64_t c = 0; c < lo; c++) d[c] = 0.0f;
                    for (int64_t c = hi; c < Wg; c++) d[c] = 0.0f;
                    if (S == 1) memcpy(d + lo, s0 + (rr - v0) * g->Ws + lo + cofs,
                                       (size_t)(hi - lo) * sizeof *d);
                    else if (S > 2)
                        for (int64_t c = lo; c < hi; c++)
                            d[c] = s0[(rr - v0) * S * g->Ws + S * c + cofs];
                }
                if (S == 2 && v1 > v0)
                    g2(pl + v0 * Wg + lo, Wg, s0 + 2 * lo + cofs, 2 * g->Ws, v1 - v0, hi - lo,
                       g->Ws - (2 * lo + cofs));
            }
        }
}

/* asks for the source rows of chunk (n, Y0 .. Y0+rows-1) (and its halo) to come into L2
 * while the current chunk computes */
static void prefetch_chunk(const taps_grid *g, int64_t n, int64_t Y0, int64_t rows) {
    const int64_t r0 = g->S * (Y0 - 1) < 0 ? 0 : g->S * (Y0 - 1);
    int64_t r1 = g->S * (Y0 + rows + 1);
    r1 = r1 < g->Hs ? r1 : g->Hs;
    if (r1 <= r0) return;
    for (int64_t ch = 0; ch < g->Cs; ch++) {
        const char *p = (const char *)(g->src + n * g->ssn + ch * g->ssc + r0 * g->Ws);
        const int64_t bytes = (r1 - r0) * g->Ws * (int64_t)sizeof(float);
        for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 2);
    }
}

/* ---- scratch carving ---------------------------------------------------------------- */
/* A bump allocator over the scratch (base NULL: only counts), every piece 64-byte
 * aligned: the first piece starts at the first 64-byte boundary in the scratch (16 floats
 * are reserved for that: the *_layout sizes add them), so that the kernels' loads are
 * aligned whatever the caller's allocator returns. */
typedef struct {
    float *base;
    size_t used;   /* floats */
} carver;

static carver carver_at(float *scratch) {
    carver c = {scratch, 0};
    if (scratch) {
        const uintptr_t a = (uintptr_t)scratch, up = (a + 63) / 64 * 64;
        c.base = scratch + (up - a) / sizeof(float);
        c.used = 0;
    }
    return c;
}

static void *carve(carver *c, size_t bytes) {
    const size_t f = (bytes + 63) / 64 * 16;
    void *p = c->base ? (void *)(c->base + c->used) : NULL;
    c->used += f;
    return p;
}

static int task_threads(int threads) { return threads > 0 ? threads : sal_threads(); }

/* d's geometry checks and y's geometry: the convolution's (the attention's own fields are
 * sal.c's to check, sal_sal_check, before any call here) */
static sal_status taps_check(const sal_sal_desc *d, sal_act *y) {
    SAL_REQUIRE(d != NULL && d->pad == 1, "sal_taps", "desc: must be a 3x3 layer with pad 1");
    const sal_conv_desc cd = {d->x, d->o, 3, d->stride, d->pad, d->threads};
    return sal_conv_check(&cd, y);
}
/* ---- unshared: entry lists ------------------------------------------------------------ */
#define L1_FLOATS ((int64_t)6144)   /* the source planes a kernel should find in L1 (24 KiB) */
#define TILE_REF 128                /* the tile the blocks are sized for (every ISA's, so
                                       that no size depends on the ISA) */

typedef struct {
    int64_t *rowptr, *off;
    float *w;
    int64_t nrow, ne, nb, cb;   /* rows, entries, blocks per row, source channels per block */
} taps_list;

/* source channels per block when the kernel reads span floats of each of ncopy planes: the
 * planes within L1_FLOATS, but at least MIN_BLOCK channels (the partial sums a block
 * boundary stores and reloads cost more than the L1 misses they save below that: measured
 * on the exported network, one tap per slice, 16-channel blocks 9 % faster than 4-channel
 * ones) */
#define MIN_BLOCK 32
static int64_t block_channels(int64_t cs, int ncopy, int64_t span) {
    int64_t cb = L1_FLOATS / ((int64_t)ncopy * span);
    cb = cb < MIN_BLOCK ? MIN_BLOCK : cb;
    return cb > cs ? cs : cb;
}

static void list_blocks(taps_list *l, int64_t cs, int64_t cb) {
    l->cb = cb;
    l->nb = (cs + cb - 1) / cb;
}

/* forward lists: row o, block b, entries (i, q) of the kept taps in order (o, i, q) */
static void list_fwd(taps_list *l, const taps_grid *g, const int *tcopy, const int *tro,
                     const uint16_t *kept, const float *weff, int64_t O, int64_t C,
                     uint16_t *use) {
    int64_t e = 0;
    memset(use, 0, (size_t)C * sizeof *use);
    for (int64_t o = 0; o < O; o++)
        for (int64_t b = 0; b < l->nb; b++) {
            l->rowptr[o * l->nb + b] = e;
            const int64_t i1 = (b + 1) * l->cb < C ? (b + 1) * l->cb : C;
            for (int64_t i = b * l->cb; i < i1; i++) {
                const unsigned m = kept[o * C + i];
                for (int q = 0; q < KK; q++) {
                    if (!(m >> q & 1u)) continue;
                    l->off[e] = (i * g->ncopy + tcopy[q]) * g->cstride + (1 + tro[q]) * g->Wg;
                    l->w[e++] = weff[(o * C + i) * KK + q];
                    use[i] |= (uint16_t)(1u << tcopy[q]);
                }
            }
        }
    l->rowptr[O * l->nb] = e;
    l->nrow = O, l->ne = e;
}

/* input-gradient lists: row i * nph + phase, block b of output channels, entries (o, q) */
static void list_bwd(taps_list *l, const taps_grid *g, const int *tcopy, const int *tro,
                     const int *tph, int nph, const uint16_t *kept, const float *weff,
                     int64_t O, int64_t C, uint16_t *use) {
    int64_t e = 0;
    memset(use, 0, (size_t)O * sizeof *use);
    for (int64_t i = 0; i < C; i++)
        for (int ph = 0; ph < nph; ph++)
            for (int64_t b = 0; b < l->nb; b++) {
                l->rowptr[(i * nph + ph) * l->nb + b] = e;
                const int64_t o1 = (b + 1) * l->cb < O ? (b + 1) * l->cb : O;
                for (int64_t o = b * l->cb; o < o1; o++) {
                    const unsigned m = kept[o * C + i];
                    for (int q = 0; q < KK; q++) {
                        if (!(m >> q & 1u) || tph[q] != ph) continue;
                        l->off[e] = (o * g->ncopy + tcopy[q]) * g->cstride + (1 + tro[q]) * g->Wg;
                        l->w[e++] = weff[(o * C + i) * KK + q];
                        use[o] |= (uint16_t)(1u << tcopy[q]);
                    }
                }
            }
    l->rowptr[C * nph * l->nb] = e;
    l->nrow = C * nph, l->ne = e;
}

/* ---- unshared: scratch -------------------------------------------------------------- */
typedef struct {
    taps_grid gf, gb;
    int fcopy[KK], fro[KK], bcopy[KK], bro[KK], bph[KK], nph, pha[KK], phb[KK];
    int ph2[2][2];          /* stride 2: the phase of (a, b) */
    taps_list lf, lw, lb;   /* forward, weight gradient, input gradient */
    uint16_t *usef, *useb;
    int32_t *blk;           /* the gather: the block of each input channel */
    int64_t *wsrc;          /* the gather: per entry, its pair (whose weight it holds) */
    uint16_t *kexp;         /* shared SAL on these kernels: kept (O, C), row o = kept (C) */
    float *g;               /* (E) the weight gradient at the entries */
    float *thr;             /* per-thread areas of `per` floats */
    int64_t per, bufn, tmpn, accn, partn, gpart;   /* gpart: offset of the partial g */
    int64_t bufx;           /* fused: floats of x's buffer (dy's follows) */
    int nt, fused;
} unshared_plan;

/* the per-thread area: [chunk buffer | tmp | part | accv | partial g] */
static void thread_sizes(unshared_plan *u, int64_t bufn, int64_t npos, int64_t nrow_max,
                         int64_t accn, int64_t gn) {
    u->bufn = (bufn + TAPS_TMAX + 15) / 16 * 16;
    u->tmpn = (npos * (u->nph + 1) + 2 * TAPS_TMAX + 15) / 16 * 16;
    u->partn = nrow_max * TAPS_TMAX;
    u->accn = (accn + 15) / 16 * 16;
    u->gpart = u->bufn + u->tmpn + u->partn + u->accn;
    u->per = u->gpart + (gn + 15) / 16 * 16;
}

/* The plan's geometry and its scratch (base NULL: the size only); Emax entries.  fused
 * (stride 1 only): x's and dy's grids share one chunking, the backward computing both
 * gradients chunk by chunk (bwd1_units) with the two buffers side by side. */
static size_t unshared_layout(unshared_plan *u, const sal_sal_desc *d, float *base, int fused) {
    const int64_t O = d->o, C = d->x.c, S = d->stride, Emax = O * C * KK;
    sal_act ya;
    taps_check(d, &ya);
    fused = fused && S == 1;
    u->nt = task_threads(d->threads);
    u->fused = fused;
    fwd_grid(&u->gf, d->x, S, u->nt, u->fcopy, u->fro, fused ? O * 3 * ya.w : 0);
    bwd_grid(&u->gb, ya, S, u->nt, u->bcopy, u->bro, u->bph, &u->nph, u->pha, u->phb,
             fused ? C * 3 * d->x.w : 0);
    for (int ph = 0; ph < u->nph; ph++)
        if (u->pha[ph] < 2 && u->phb[ph] < 2) u->ph2[u->pha[ph]][u->phb[ph]] = ph;
    list_blocks(&u->lf, C, block_channels(C, u->gf.ncopy, TILE_REF + 2 * u->gf.Wg));
    list_blocks(&u->lw, C, block_channels(C, u->gf.ncopy, (u->gf.R + 2) * u->gf.Wg));
    list_blocks(&u->lb, O, block_channels(O, u->gb.ncopy, TILE_REF + 2 * u->gb.Wg));
    carver c = carver_at(base);
    u->lf.rowptr = carve(&c, (size_t)(O * C + 1) * sizeof(int64_t));
    u->lf.off = carve(&c, (size_t)Emax * sizeof(int64_t));
    u->lf.w = carve(&c, (size_t)Emax * sizeof(float));
    u->lw = u->lf.rowptr ? (taps_list){u->lf.rowptr, u->lf.off, u->lf.w, 0, 0, u->lw.nb, u->lw.cb}
                         : u->lw;   /* the weight gradient's lists reuse the forward's arrays */
    u->lb.rowptr = carve(&c, (size_t)(C * u->nph * O + 1) * sizeof(int64_t));
    u->lb.off = carve(&c, (size_t)Emax * sizeof(int64_t));
    u->lb.w = carve(&c, (size_t)Emax * sizeof(float));
    u->usef = carve(&c, (size_t)C * sizeof(uint16_t));
    u->useb = carve(&c, (size_t)O * sizeof(uint16_t));
    u->kexp = carve(&c, (size_t)(O * C) * sizeof(uint16_t));
    u->g = carve(&c, (size_t)Emax * sizeof(float));
    const int64_t bf = grid_buf_floats(&u->gf), bb = grid_buf_floats(&u->gb);
    const int64_t npf = u->gf.R * u->gf.Wg, npb = u->gb.R * u->gb.Wg;
    const int64_t rows = O > C ? O : C;
    const int64_t accn = C * KK * TAPS_VMAX > ACCV_FLOATS ? C * KK * TAPS_VMAX : ACCV_FLOATS;
    u->bufx = (bf + TAPS_TMAX + 15) / 16 * 16;   /* fused: dy's buffer after x's */
    thread_sizes(u, fused ? u->bufx + bb : (bf > bb ? bf : bb), npf > npb ? npf : npb, rows,
                 accn, Emax);
    u->thr = carve(&c, (size_t)u->per * (size_t)u->nt * sizeof(float));
    return c.used + 16;
}

/* ---- unshared: drivers -------------------------------------------------------------- */
typedef struct {
    const unshared_plan *u;
    const taps_grid *g;
    const taps_list *l;
    int64_t ks, nk;             /* work unit = (chunk, one of ks ranges of nk rows) */
    const uint16_t *use;
    float *dst;                 /* forward: y; input gradient: dx */
    int64_t dsn, dsc;           /* its strides: image, channel */
    int64_t H, W, S;            /* input gradient: dx's rows, columns, the stride */
    const float *dy;            /* weight gradient: dy and its strides */
    int64_t ysn, ysc;
    int mode;                   /* TAPS_EPI_* of the forward (deployment) */
    const float *bias, *res;
    int relu, res_post;
    const taps_grid *g2;        /* fused backward: dy's grid, the input gradient's lists */
    const taps_list *l2;
    const uint16_t *use2;
} chunk_task;

static float *thread_area(const unshared_plan *u, int tid) { return u->thr + tid * u->per; }

static int64_t nchunks(const taps_grid *g) { return (g->N + g->nimg - 1) / g->nimg * g->nrb; }

/* row ranges per chunk: 1, or, when there are fewer than 2 chunks per thread (a small
 * batch), enough for 2 work units per thread, keeping >= 8 rows per range (the threads then
 * share a chunk's rows, each copying the chunk itself) */
static int64_t row_splits(const taps_grid *g, int64_t nk, int nt) {
    const int64_t nc = nchunks(g), want = 2 * (int64_t)nt;
    if (nc >= want || nt <= 1) return 1;
    const int64_t ks = (want + nc - 1) / nc, most = nk / 8 < 1 ? 1 : nk / 8;
    return ks < most ? ks : most;
}

static chunk_task units(chunk_task t, int64_t nk, int nt) {
    t.nk = nk;
    t.ks = row_splits(t.g, nk, nt);
    return t;
}

static int64_t nunits(const chunk_task *t) { return nchunks(t->g) * t->ks; }

/* unit v: its chunk (returned) and rows [*k0, *k1) */
static int64_t unit_of(const chunk_task *t, int64_t v, int64_t *k0, int64_t *k1) {
    const int64_t r = v % t->ks;
    *k0 = t->nk * r / t->ks;
    *k1 = t->nk * (r + 1) / t->ks;
    return v / t->ks;
}

/* copies chunk j into buf unless it is there (*have), and prefetches the chunk of unit
 * vnext if this thread does that next */
static void enter_chunk(float *buf, const chunk_task *t, int64_t j, int64_t *have, int64_t vnext,
                        int64_t vend) {
    const taps_grid *g = t->g;
    int64_t n0, ni, Y0, rows;
    if (*have != j) {
        chunk_of(g, j, &n0, &ni, &Y0, &rows);
        prep_chunk(buf, g, n0, ni, Y0, rows, t->use);
        *have = j;
    }
    if (vnext < vend && vnext / t->ks != j) {
        chunk_of(g, vnext / t->ks, &n0, &ni, &Y0, &rows);
        for (int64_t n = n0; n < n0 + ni; n++) prefetch_chunk(g, n, Y0, rows);
    }
}

static taps_fwd_job fwd_job(const chunk_task *t, const float *buf, int64_t np, int64_t k0,
                            int64_t k1, float *dst, int64_t dstride, int mode, const float *res,
                            float *tmp, float *part) {
    return (taps_fwd_job){buf, np, t->l->rowptr, t->l->nb, t->l->off, t->l->w, k0, k1, dst,
                          dstride, mode, t->bias, res, t->relu, t->res_post, tmp, part};
}

/* forward (and deployment): work units [v0, v1) */
static void fwd_units(void *p, int64_t v0, int64_t v1, int tid) {
    const chunk_task *t = p;
    const unshared_plan *u = t->u;
    const taps_grid *g = t->g;
    float *buf = thread_area(u, tid), *tmp = buf + u->bufn, *part = tmp + u->tmpn;
    int64_t have = -1;
    for (int64_t v = v0; v < v1; v++) {
        int64_t k0, k1, n0, ni, Y0, rows;
        const int64_t j = unit_of(t, v, &k0, &k1);
        enter_chunk(buf, t, j, &have, v + 1, v1);
        chunk_of(g, j, &n0, &ni, &Y0, &rows);
        for (int64_t n = n0; n < n0 + ni; n++) {
            const int64_t at = n * t->dsn + k0 * t->dsc + Y0 * g->Wg;
            const taps_fwd_job job =
                fwd_job(t, buf + (n - n0) * g->ibs, rows * g->Wg, k0, k1, t->dst + at, t->dsc,
                        t->mode, t->res ? t->res + at : NULL, tmp, part);
            g->kern.fwd(&job);
        }
    }
}

/* input gradient: work units [v0, v1) of the dy grid over the input channels; stride 1
 * adds into dx directly, stride >= 2 computes the phase planes of each input channel and
 * adds them in */
static void dx_units(void *p, int64_t v0, int64_t v1, int tid) {
    const chunk_task *t = p;
    const unshared_plan *u = t->u;
    const taps_grid *g = t->g;
    float *buf = thread_area(u, tid), *tmp = buf + u->bufn, *part = tmp + u->tmpn;
    const int64_t S = t->S, Wg = g->Wg;
    int64_t have = -1;
    for (int64_t v = v0; v < v1; v++) {
        int64_t i0, i1, n0, ni, Y0, rows;
        const int64_t j = unit_of(t, v, &i0, &i1);
        enter_chunk(buf, t, j, &have, v + 1, v1);
        chunk_of(g, j, &n0, &ni, &Y0, &rows);
        const int64_t np = rows * Wg;
        for (int64_t n = n0; n < n0 + ni; n++) {
            const float *bn = buf + (n - n0) * g->ibs;
            if (S == 1) {
                const taps_fwd_job job =
                    fwd_job(t, bn, np, i0, i1, t->dst + n * t->dsn + i0 * t->dsc + Y0 * Wg,
                            t->dsc, TAPS_EPI_ACC, NULL, tmp, part);
                g->kern.fwd(&job);
                continue;
            }
            float *planes = tmp + np + 2 * TAPS_TMAX;   /* nph planes of np floats */
            for (int64_t i = i0; i < i1; i++) {
                const taps_fwd_job job = fwd_job(t, bn, np, i * u->nph, (i + 1) * u->nph, planes,
                                                 np, TAPS_EPI_STORE, NULL, tmp, part);
                g->kern.fwd(&job);
                float *dxi = t->dst + n * t->dsn + i * t->dsc;
                if (S == 2 && u->nph == 4) {   /* both column phases of a row at once */
                    const scatter2_fn sc2 = STRIDE2[sal_cpu_isa()].scatter2;
                    for (int a = 0; a < 2; a++) {
                        const float *pe = planes + u->ph2[a][0] * np;
                        const float *po = planes + u->ph2[a][1] * np;
                        for (int64_t r = 0; r < rows && 2 * (Y0 + r) + a < t->H; r++)
                            sc2(dxi + (2 * (Y0 + r) + a) * t->W, pe + r * Wg, po + r * Wg, t->W);
                    }
                    continue;
                }
                for (int ph = 0; ph < u->nph; ph++) {
                    const float *pl = planes + ph * np;
                    const int64_t a = u->pha[ph], b = u->phb[ph];
                    const int64_t cm = (t->W - b + S - 1) / S, cmax = cm < Wg ? cm : Wg;
                    for (int64_t r = 0; r < rows; r++) {
                        const int64_t iy = S * (Y0 + r) + a;
                        if (iy >= t->H) break;
                        float *drow = dxi + iy * t->W + b;
                        const float *prow = pl + r * Wg;
                        for (int64_t c = 0; c < cmax; c++) drow[S * c] += prow[c];
                    }
                }
            }
        }
    }
}

/* weight gradient: work units [v0, v1) into this thread's partial g */
static void wg_units(void *p, int64_t v0, int64_t v1, int tid) {
    const chunk_task *t = p;
    const unshared_plan *u = t->u;
    const taps_grid *g = t->g;
    float *buf = thread_area(u, tid), *tmp = buf + u->bufn, *accv = tmp + u->tmpn + u->partn;
    float *gp = buf + u->gpart;
    memset(gp, 0, (size_t)t->l->ne * sizeof *gp);
    int64_t have = -1;
    for (int64_t v = v0; v < v1; v++) {
        int64_t k0, k1, n0, ni, Y0, rows;
        const int64_t j = unit_of(t, v, &k0, &k1);
        enter_chunk(buf, t, j, &have, v + 1, v1);
        chunk_of(g, j, &n0, &ni, &Y0, &rows);
        const taps_sddmm_job job = {buf, rows * g->Wg, ni, g->ibs, t->l->rowptr, t->l->nb,
                                    t->l->off, k0, k1, t->dy + n0 * t->ysn + Y0 * g->Wg,
                                    t->ysc, t->ysn, gp, accv, tmp};
        /* by tiles for one wide image per chunk (measured 9 % faster on 32x32 planes), by
         * entry groups otherwise (2x faster on 8x8 planes, 12 % on 16x16) */
        if (g->nimg == 1 && g->Wg >= 32) g->kern.sddmt(&job);
        else g->kern.sddmm(&job);
    }
}

/* the fused stride-1 backward: work units [v0, v1); per chunk x's copies (weight gradient)
 * and dy's (input gradient), the weight gradient reading dy from dy's unshifted copy, so
 * that dy comes from memory once */
static void bwd1_units(void *p, int64_t v0, int64_t v1, int tid) {
    const chunk_task *t = p;
    const unshared_plan *u = t->u;
    const taps_grid *gx = t->g, *gy = t->g2;
    float *bx = thread_area(u, tid), *by = bx + u->bufx, *tmp = bx + u->bufn;
    float *part = tmp + u->tmpn, *accv = part + u->partn, *gp = bx + u->gpart;
    memset(gp, 0, (size_t)t->l->ne * sizeof *gp);
    int k0c = 0;   /* dy's unshifted copy */
    while (gy->cco[k0c] != 0) k0c++;
    const int64_t O = t->l->nrow, C = t->l2->nrow, Wg = gx->Wg;
    int64_t have = -1;
    for (int64_t v = v0; v < v1; v++) {
        const int64_t j = v / t->ks, r = v % t->ks;
        const int64_t o0 = O * r / t->ks, o1 = O * (r + 1) / t->ks;
        const int64_t i0 = C * r / t->ks, i1 = C * (r + 1) / t->ks;
        int64_t n0, ni, Y0, rows;
        chunk_of(gx, j, &n0, &ni, &Y0, &rows);
        if (have != j) {
            prep_chunk(bx, gx, n0, ni, Y0, rows, t->use);
            prep_chunk(by, gy, n0, ni, Y0, rows, t->use2);
            have = j;
            if (v1 > v + t->ks - r) {   /* this thread does the next chunk too */
                int64_t m0, mi, Z0, zr;
                chunk_of(gx, j + 1, &m0, &mi, &Z0, &zr);
                for (int64_t n = m0; n < m0 + mi; n++) {
                    prefetch_chunk(gx, n, Z0, zr);
                    prefetch_chunk(gy, n, Z0, zr);
                }
            }
        }
        const taps_sddmm_job wj = {bx, rows * Wg, ni, gx->ibs, t->l->rowptr, t->l->nb,
                                   t->l->off, o0, o1, by + k0c * gy->cstride + Wg,
                                   gy->ncopy * gy->cstride, gy->ibs, gp, accv, tmp};
        if (gx->nimg == 1 && Wg >= 32) gx->kern.sddmt(&wj);
        else gx->kern.sddmm(&wj);
        for (int64_t n = n0; n < n0 + ni; n++) {
            const taps_fwd_job dj = {by + (n - n0) * gy->ibs, rows * Wg, t->l2->rowptr,
                                     t->l2->nb, t->l2->off, t->l2->w, i0, i1,
                                     t->dst + n * t->dsn + i0 * t->dsc + Y0 * Wg, t->dsc,
                                     TAPS_EPI_ACC, NULL, NULL, 0, 0, tmp, part};
            gy->kern.fwd(&dj);
        }
    }
}

typedef struct {
    const float *part;   /* thread i's partials at part + i * stride */
    int64_t stride;
    float *g;
    int nparts;
} gsum_task;

/* g[e] = the thread partials in thread order (both backward paths) */
static void gsum_run(void *p, int64_t e0, int64_t e1, int tid) {
    const gsum_task *t = p;
    for (int64_t e = e0; e < e1; e++) {
        float s = 0.0f;
        for (int i = 0; i < t->nparts; i++) s += t->part[i * t->stride + e];
        t->g[e] = s;
    }
}

/* ---- shared: restricted im2col + GEMM ----------------------------------------------- */
typedef struct {
    int32_t *ri, *rq;       /* row r: input channel, tap (sorted by channel) */
    int64_t nr;
    float *wr, *gr, *col;   /* W_R (O, R), G_R (O, R), col (R, cols) */
    int32_t *rows;          /* the forward as shift + 1x1: rows (c, dy, dx) */
    float *sc;              /* its sal_shiftconv scratch */
    int64_t chunk;          /* images per GEMM (CNHW), 1 (NCHW) */
    int nt;
} shared_plan;

/* Shared SAL's forward is a shift then a 1x1 convolution: sal_shiftconv with one row
 * (c, dy, dx) per kept tap (sal/shiftconv.h, its masked loads of the shifted rows, several
 * outputs per load).  Measured (1 thread, batch 128, beta 20 / 70, ms, against this file's
 * entry kernels and GEMM): 32x16x16 s1 3.26 / 2.02 vs 3.75 / 2.16; 64x8x8 s1 2.85 / 1.68 vs
 * 3.55 / 2.03; 32x16x16 -> 64 s2 2.56 / 1.48 vs (GEMM) 3.15 / 1.66; but 16x32x32 s1 3.68 /
 * 2.27 vs 3.78 / 2.32 (the same) and 16 -> 32 s2 4.84 / 3.31 vs 3.20 / 2.20 (slower).  Its
 * backward measured 2-3x slower than the paths below and is not used. */
static int shared_by_shiftconv(const sal_sal_desc *d) {
    return d->shared && ((d->stride == 1 && d->x.w < 32) || (d->stride >= 2 && d->o >= 64));
}

/* floats of sal_shiftconv scratch for any number of rows up to 9 C (its size need not grow
 * with the rows: the largest over all counts); 0 where the forward does not use it */
static size_t shiftconv_floats(const sal_sal_desc *d) {
    if (!shared_by_shiftconv(d)) return 0;
    const int64_t R = d->x.c * KK;
    int32_t *rows = malloc((size_t)(3 * R) * sizeof *rows);
    if (!rows) return SIZE_MAX / 8;   /* an allocation the caller cannot make either */
    for (int64_t k = 0; k < R; k++)
        rows[3 * k] = (int32_t)(k / KK), rows[3 * k + 1] = (int32_t)(k % KK / 3 - 1),
        rows[3 * k + 2] = (int32_t)(k % 3 - 1);
    size_t most = 0;
    for (int64_t r = 1; r <= R; r++) {
        const sal_shiftconv_desc sd = {d->x, d->o, r, rows, d->stride, d->threads,
                                       SAL_SHIFTCONV_AUTO};
        const size_t f = sal_shiftconv_scratch(&sd);
        most = f > most ? f : most;
    }
    free(rows);
    return most;
}

static size_t shared_layout(shared_plan *s, const sal_sal_desc *d, float *base) {
    const int64_t O = d->o, C = d->x.c, Rmax = C * KK;
    sal_act ya;
    taps_check(d, &ya);
    const int64_t hw = ya.h * ya.w;
    s->nt = task_threads(d->threads);
    s->chunk = 1;
    if (d->x.layout == SAL_CNHW) {
        s->chunk = SHARED_COL_CAP / (Rmax * hw);
        s->chunk = s->chunk < 1 ? 1 : s->chunk > d->x.n ? d->x.n : s->chunk;
    }
    carver c = carver_at(base);
    s->ri = carve(&c, (size_t)Rmax * sizeof(int32_t));
    s->rq = carve(&c, (size_t)Rmax * sizeof(int32_t));
    s->wr = carve(&c, (size_t)(O * Rmax) * sizeof(float));
    s->gr = carve(&c, (size_t)(O * Rmax) * sizeof(float));
    s->col = carve(&c, (size_t)(Rmax * s->chunk * hw) * sizeof(float));
    s->rows = carve(&c, (size_t)(3 * Rmax) * sizeof(int32_t));
    /* the last piece: its size (a search over row counts) only for the size query */
    s->sc = carve(&c, base ? 0 : shiftconv_floats(d) * sizeof(float));
    return c.used + 16;   /* (with base: without the last piece) */
}

typedef struct {
    const shared_plan *s;
    const sal_sal_desc *d;
    sal_act ya;
    float *col;         /* im2col: written; col2im: dx, added to */
    const float *src;   /* im2col: x; col2im: dcol */
    int64_t n0, B;
} scol_task;

/* rows [r0, r1) of the restricted im2col (R, B*Ho*Wo) of images n0 .. n0+B-1 */
static void scol_rows(void *p, int64_t r0, int64_t r1, int tid) {
    const scol_task *t = p;
    const sal_sal_desc *d = t->d;
    const int64_t H = d->x.h, W = d->x.w, S = d->stride, Ho = t->ya.h, Wo = t->ya.w;
    const int64_t sn = sal_act_sn(d->x), sc = sal_act_sc(d->x), cols = t->B * Ho * Wo;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t c = t->s->ri[r], ky = t->s->rq[r] / 3, kx = t->s->rq[r] % 3;
        int64_t lo, hi;
        sal_valid_range(kx - 1, S, W, Wo, &lo, &hi);
        for (int64_t b = 0; b < t->B; b++) {
            const float *xc = t->src + (t->n0 + b) * sn + c * sc;
            float *dst = t->col + r * cols + b * Ho * Wo;
            for (int64_t oy = 0; oy < Ho; oy++, dst += Wo) {
                const int64_t iy = oy * S + ky - 1;
                if (iy < 0 || iy >= H) {
                    memset(dst, 0, (size_t)Wo * sizeof *dst);
                    continue;
                }
                const int64_t off = iy * W + kx - 1;
                for (int64_t ox = 0; ox < lo; ox++) dst[ox] = 0.0f;
                if (S == 1) {
                    if (hi > lo) memcpy(dst + lo, xc + (off + lo), (size_t)(hi - lo) * sizeof *dst);
                } else {
                    for (int64_t ox = lo; ox < hi; ox++) dst[ox] = xc[off + ox * S];
                }
                for (int64_t ox = hi; ox < Wo; ox++) dst[ox] = 0.0f;
            }
        }
    }
}

/* dx (channels [c0, c1)) += col2im of the restricted dcol: one thread per channel */
static void scol_add(void *p, int64_t c0, int64_t c1, int tid) {
    const scol_task *t = p;
    const sal_sal_desc *d = t->d;
    const int64_t H = d->x.h, W = d->x.w, S = d->stride, Ho = t->ya.h, Wo = t->ya.w;
    const int64_t sn = sal_act_sn(d->x), sc = sal_act_sc(d->x), cols = t->B * Ho * Wo;
    int64_t r = 0;
    while (r < t->s->nr && t->s->ri[r] < c0) r++;
    for (; r < t->s->nr && t->s->ri[r] < c1; r++) {
        const int64_t c = t->s->ri[r], ky = t->s->rq[r] / 3, kx = t->s->rq[r] % 3;
        int64_t lo, hi;
        sal_valid_range(kx - 1, S, W, Wo, &lo, &hi);
        for (int64_t b = 0; b < t->B; b++) {
            float *xc = t->col + (t->n0 + b) * sn + c * sc;
            const float *src = t->src + r * cols + b * Ho * Wo;
            for (int64_t oy = 0; oy < Ho; oy++, src += Wo) {
                const int64_t iy = oy * S + ky - 1;
                if (iy < 0 || iy >= H) continue;
                const int64_t off = iy * W + kx - 1;
                if (S == 1) for (int64_t ox = lo; ox < hi; ox++) xc[off + ox] += src[ox];
                else for (int64_t ox = lo; ox < hi; ox++) xc[off + ox * S] += src[ox];
            }
        }
    }
}

/* the rows (i, q) kept by the shared slices and W_R (O, R) */
static void shared_rows(shared_plan *s, const uint16_t *kept, const float *weff, int64_t O,
                        int64_t C) {
    int64_t r = 0;
    for (int64_t i = 0; i < C; i++)
        for (int q = 0; q < KK; q++)
            if (kept[i] >> q & 1u) s->ri[r] = (int32_t)i, s->rq[r++] = q;
    s->nr = r;
    for (int64_t o = 0; o < O; o++)
        for (int64_t k = 0; k < r; k++)
            s->wr[o * r + k] = weff[(o * C + s->ri[k]) * KK + s->rq[k]];
}

static sal_status shared_fwd(float *y, const float *x, const float *weff, const uint16_t *kept,
                             const sal_sal_desc *d, float *scratch) {
    shared_plan s;
    shared_layout(&s, d, scratch);
    sal_act ya;
    SAL_TRY(taps_check(d, &ya));
    const int64_t O = d->o, N = d->x.n, hw = ya.h * ya.w;
    const int64_t ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);
    shared_rows(&s, kept, weff, O, d->x.c);
    for (int64_t n0 = 0; n0 < N; n0 += s.chunk) {
        const int64_t B = N - n0 < s.chunk ? N - n0 : s.chunk, cols = B * hw;
        if (s.nr == 0) {   /* every slice empty (hard mode): y = 0 */
            for (int64_t o = 0; o < O; o++)
                for (int64_t b = 0; b < B; b++)
                    memset(y + (n0 + b) * ysn + o * ysc, 0, (size_t)hw * sizeof *y);
            continue;
        }
        scol_task t = {&s, d, ya, s.col, x, n0, B};
        sal_parallel_for(s.nr, s.nt, scol_rows, &t);
        SAL_TRY(sal_sgemm(O, cols, s.nr, 1.0f, s.wr, s.nr, 1, s.col, cols, 1, 0.0f, y + n0 * ysn,
                          ysc, 1, s.nt));
    }
    return SAL_OK;
}

static sal_status shared_shiftconv_fwd(float *y, const float *x, const float *weff,
                                       const uint16_t *kept, const sal_sal_desc *d,
                                       float *scratch) {
    shared_plan s;
    shared_layout(&s, d, scratch);
    shared_rows(&s, kept, weff, d->o, d->x.c);
    for (int64_t k = 0; k < s.nr; k++)
        s.rows[3 * k] = s.ri[k], s.rows[3 * k + 1] = s.rq[k] / 3 - 1,
        s.rows[3 * k + 2] = s.rq[k] % 3 - 1;
    const sal_shiftconv_desc sd = {d->x, d->o, s.nr, s.rows, d->stride, d->threads,
                                   SAL_SHIFTCONV_AUTO};
    return sal_shiftconv_fwd(y, x, s.wr, NULL, &sd, s.sc);
}

static sal_status shared_bwd(float *dx, float *g, const float *dy, const float *x,
                             const float *weff, const uint16_t *kept, const sal_sal_desc *d,
                             float *scratch) {
    shared_plan s;
    shared_layout(&s, d, scratch);
    sal_act ya;
    SAL_TRY(taps_check(d, &ya));
    const int64_t O = d->o, C = d->x.c, N = d->x.n, hw = ya.h * ya.w;
    const int64_t ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);
    shared_rows(&s, kept, weff, O, C);
    if (s.nr == 0) return SAL_OK;
    if (g) memset(s.gr, 0, (size_t)(O * s.nr) * sizeof *s.gr);
    for (int64_t n0 = 0; n0 < N; n0 += s.chunk) {
        const int64_t B = N - n0 < s.chunk ? N - n0 : s.chunk, cols = B * hw;
        const float *dyn = dy + n0 * ysn;
        if (g) {   /* G_R (O, R) += dY (O, cols) col^T (cols, R) */
            scol_task t = {&s, d, ya, s.col, x, n0, B};
            sal_parallel_for(s.nr, s.nt, scol_rows, &t);
            SAL_TRY(sal_sgemm(O, s.nr, cols, 1.0f, dyn, ysc, 1, s.col, 1, cols, 1.0f, s.gr, s.nr,
                              1, s.nt));
        }
        if (dx) {  /* dcol (R, cols) = W_R^T (R, O) dY (O, cols), then added into dx */
            SAL_TRY(sal_sgemm(s.nr, cols, O, 1.0f, s.wr, 1, s.nr, dyn, ysc, 1, 0.0f, s.col, cols,
                              1, s.nt));
            scol_task t = {&s, d, ya, dx, s.col, n0, B};
            sal_parallel_for(C, s.nt, scol_add, &t);
        }
    }
    if (g)
        for (int64_t o = 0; o < O; o++)
            for (int64_t k = 0; k < s.nr; k++)
                g[(o * C + s.ri[k]) * KK + s.rq[k]] += s.gr[o * s.nr + k];
    return SAL_OK;
}

/* ---- direct path: stride 1, no copies (internal/taps.h, "Direct kernels") ------------ */
/* Rows of width W = 16 * RV (RV = 1, 2, 4 vectors) in tiles of TR = 16 / RV rows (16
 * accumulators: 16 vs 8 measured 4 % faster on 32x16x16, the same on 16x32x32).  Per tile
 * the rows a tap may read are known per row shift dy (bits ok[dy + 1]: inside the segment
 * and the image; computed for blocks of tiles once per call); per entry one broadcast, then
 * per row RV loads (a row outside: zeros), the column shift as a lane rotation (valignd)
 * with the edge lane zeroed, RV FMAs.  The lists come sorted by dx (they carry their own
 * index into g), so the three-way branch on dx is taken in runs.
 * Where the time goes (16x32x32, batch 128, 1 thread): 1.0 ms fixed + 0.91 ms per kept tap
 * forward, i.e. ~74 GFLOP/s per tap: a shifted vector costs a load, a valignd and an FMA,
 * and the valignd competes with the FMA for the FP pipes (dx = 0, a third of the taps, has
 * none).  A tile buffer of the shifted rows shared by all outputs (each shifted row serves
 * ~O/2 entries) would take most valignds out of the inner loop: not done. */
#define TAPD_ZEROS 64
static const float tapd_zeros[TAPD_ZEROS] __attribute__((aligned(64)));

/* bit r: row r0 + r of the segment is inside it, and row (r0 + r) % h + dy of its image */
static inline unsigned tapd_rows_ok(int64_t r0, int tr, int64_t nrows, int64_t h, int dy) {
    unsigned b = 0;
    int64_t y = r0 % h;
    for (int r = 0; r < tr && r0 + r < nrows; r++, y = y + 1 == h ? 0 : y + 1)
        b |= (unsigned)(y + dy >= 0 && y + dy < h) << r;
    return b;
}

/* the ok bits of tiles [t0, t1) of TR rows, okt[3 * (t - t0) + dy + 1] */
#define TAPD_TBLK 64
static void tapd_tiles_ok(unsigned *okt, int64_t t0, int64_t t1, int tr, int64_t nrows,
                          int64_t h) {
    for (int64_t t = t0; t < t1; t++)
        for (int k = 0; k < 3; k++)
            okt[3 * (t - t0) + k] = tapd_rows_ok(t * tr, tr, nrows, h, k - 1);
}

/* sv[0 .. RV) = the row at rp shifted by DX columns (0 outside it) */
#define TAPD_SHIFT(sv, rp, RV, DX)                                                            \
    do {                                                                                      \
        __m512 v_[RV];                                                                        \
        _Pragma("GCC unroll 4") for (int k_ = 0; k_ < (RV); k_++) v_[k_] =                    \
            _mm512_loadu_ps((rp) + 16 * k_);                                                  \
        if ((DX) == 0) {                                                                      \
            _Pragma("GCC unroll 4") for (int k_ = 0; k_ < (RV); k_++) sv[k_] = v_[k_];        \
        } else if ((DX) < 0) {                                                                \
            sv[0] = _mm512_castsi512_ps(_mm512_maskz_alignr_epi32(                            \
                0xFFFE, _mm512_castps_si512(v_[0]), _mm512_castps_si512(v_[0]), 15));         \
            _Pragma("GCC unroll 4") for (int k_ = 1; k_ < (RV); k_++) sv[k_] =                \
                _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(v_[k_]),          \
                                                        _mm512_castps_si512(v_[k_ - 1]), 15)); \
        } else {                                                                              \
            _Pragma("GCC unroll 4") for (int k_ = 0; k_ + 1 < (RV); k_++) sv[k_] =            \
                _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(v_[k_ + 1]),      \
                                                        _mm512_castps_si512(v_[k_]), 1));     \
            sv[(RV) - 1] = _mm512_castsi512_ps(_mm512_maskz_alignr_epi32(                     \
                0x7FFF, _mm512_castps_si512(v_[(RV) - 1]), _mm512_castps_si512(v_[(RV) - 1]), \
                1));                                                                          \
        }                                                                                     \
    } while (0)

/* the forward's FMAs of one entry over a tile, the column shift DX fixed */
#define TAPD_FWD_ROWS(RV, TR, W, DX)                                                          \
    _Pragma("GCC unroll 16") for (int r = 0; r < (TR); r++) {                                  \
        const float *rp = (okb >> r & 1u) ? s + r * (W) : tapd_zeros;                         \
        __m512 sv[RV];                                                                        \
        TAPD_SHIFT(sv, rp, RV, DX);                                                           \
        _Pragma("GCC unroll 4") for (int k = 0; k < (RV); k++) acc[r * (RV) + k] =            \
            _mm512_fmadd_ps(wv, sv[k], acc[r * (RV) + k]);                                    \
    }

/* the weight gradient's products of one entry over a tile */
#define TAPD_DOT_ROWS(RV, TR, W, DX)                                                          \
    _Pragma("GCC unroll 16") for (int r = 0; r < (TR); r++) {                                  \
        const float *rp = (okb >> r & 1u) ? s + r * (W) : tapd_zeros;                         \
        __m512 sv[RV];                                                                        \
        TAPD_SHIFT(sv, rp, RV, DX);                                                           \
        _Pragma("GCC unroll 4") for (int k = 0; k < (RV); k++) {                              \
            if ((r * (RV) + k) % 2) s1 = _mm512_fmadd_ps(gv[r * (RV) + k], sv[k], s1);        \
            else s0 = _mm512_fmadd_ps(gv[r * (RV) + k], sv[k], s0);                           \
        }                                                                                     \
    }

#define TAPD_NV 16   /* accumulators (vectors) per tile */
#define TAPD_WIDE(RV)                                                                         \
    __attribute__((target("avx512f"))) static void tapd_fwd_w##RV(const tapd_job *j) {       \
        enum { TR = TAPD_NV / (RV), W = 16 * (RV) };                                                \
        const int64_t nrows = j->nrows, h = j->h;                                             \
        const int64_t *const rowptr = j->rowptr, *const off = j->off;                         \
        const uint8_t *const tap = j->tap;                                                    \
        const float *const src = j->src, *const wt = j->wt;                                   \
        const int stream = j->mode == TAPS_EPI_STREAM, add = j->mode == TAPS_EPI_ACC;         \
        const int64_t nt = (nrows + TR - 1) / TR;                                             \
        unsigned okt[3 * TAPD_TBLK];                                                          \
        for (int64_t tb = 0; tb < nt; tb += TAPD_TBLK) {                                      \
        const int64_t te = nt - tb < TAPD_TBLK ? nt : tb + TAPD_TBLK;                         \
        tapd_tiles_ok(okt, tb, te, TR, nrows, h);                                             \
        for (int64_t kk = j->k0; kk < j->k1; kk++) {                                          \
            float *d = j->dst + (kk - j->k0) * j->dstride;                                    \
            const int64_t e0 = rowptr[kk], e1 = rowptr[kk + 1];                               \
            for (int64_t r0 = tb * TR; r0 < te * TR; r0 += TR) {                              \
                const unsigned *ok = okt + 3 * (r0 / TR - tb);                                \
                __m512 acc[TAPD_NV];                                                                \
                _Pragma("GCC unroll 16") for (int i = 0; i < TAPD_NV; i++) acc[i] =                  \
                    _mm512_setzero_ps();                                                      \
                for (int64_t e = e0; e < e1; e++) {                                           \
                    const int q = tap[e], dx = q % 3 - 1;                                     \
                    const unsigned okb = ok[q / 3];                                           \
                    const float *s = src + off[e] + r0 * W;                                   \
                    const __m512 wv = _mm512_set1_ps(wt[e]);                                  \
                    if (dx == 0) {                                                            \
                        TAPD_FWD_ROWS(RV, TR, W, 0)                                           \
                    } else if (dx < 0) {                                                      \
                        TAPD_FWD_ROWS(RV, TR, W, -1)                                          \
                    } else {                                                                  \
                        TAPD_FWD_ROWS(RV, TR, W, 1)                                           \
                    }                                                                         \
                }                                                                             \
                float *dt = d + r0 * W;                                                       \
                const int rows = nrows - r0 < TR ? (int)(nrows - r0) : TR;                    \
                _Pragma("GCC unroll 16") for (int i = 0; i < TAPD_NV; i++) {                         \
                    if (i / (RV) >= rows) break;                                              \
                    float *p = dt + 16 * i;                                                   \
                    if (add) _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), acc[i]));  \
                    else if (stream) _mm512_stream_ps(p, acc[i]);                             \
                    else _mm512_storeu_ps(p, acc[i]);                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        }                                                                                     \
        if (stream) _mm_sfence();                                                             \
    }                                                                                         \
    __attribute__((target("avx512f"))) static void tapd_sddmm_w##RV(const tapd_job *j) {     \
        enum { TR = TAPD_NV / (RV), W = 16 * (RV) };                                                \
        const int64_t nrows = j->nrows, h = j->h;                                             \
        const int64_t *const rowptr = j->rowptr, *const off = j->off;                         \
        const uint8_t *const tap = j->tap;                                                    \
        const float *const src = j->src;                                                      \
        float *const accv = j->accv;                                                          \
        const int64_t nt = (nrows + TR - 1) / TR;                                             \
        unsigned okt[3 * TAPD_TBLK];                                                          \
        for (int64_t tb = 0; tb < nt; tb += TAPD_TBLK) {                                      \
        const int64_t te = nt - tb < TAPD_TBLK ? nt : tb + TAPD_TBLK;                         \
        tapd_tiles_ok(okt, tb, te, TR, nrows, h);                                             \
        for (int64_t kk = j->k0; kk < j->k1; kk++) {                                          \
            const float *dyk = j->dy + (kk - j->k0) * j->dystride;                            \
            const int64_t e0 = rowptr[kk], e1 = rowptr[kk + 1];                               \
            if (e0 == e1) continue;                                                           \
            memset(accv, 0, (size_t)((e1 - e0) * 16) * sizeof *accv);                         \
            for (int64_t r0 = tb * TR; r0 < te * TR; r0 += TR) {                              \
                const unsigned *ok = okt + 3 * (r0 / TR - tb);                                \
                const int rows = nrows - r0 < TR ? (int)(nrows - r0) : TR;                    \
                __m512 gv[TAPD_NV];                                                                 \
                _Pragma("GCC unroll 16") for (int i = 0; i < TAPD_NV; i++) gv[i] =                   \
                    i / (RV) < rows ? _mm512_loadu_ps(dyk + r0 * W + 16 * i)                  \
                                    : _mm512_setzero_ps();                                    \
                for (int64_t e = e0; e < e1; e++) {                                           \
                    const int q = tap[e], dx = q % 3 - 1;                                     \
                    const unsigned okb = ok[q / 3];                                           \
                    const float *s = src + off[e] + r0 * W;                                   \
                    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();                \
                    if (dx == 0) {                                                            \
                        TAPD_DOT_ROWS(RV, TR, W, 0)                                           \
                    } else if (dx < 0) {                                                      \
                        TAPD_DOT_ROWS(RV, TR, W, -1)                                          \
                    } else {                                                                  \
                        TAPD_DOT_ROWS(RV, TR, W, 1)                                           \
                    }                                                                         \
                    float *av = accv + (e - e0) * 16;                                         \
                    _mm512_storeu_ps(av, _mm512_add_ps(_mm512_loadu_ps(av),                   \
                                                       _mm512_add_ps(s0, s1)));               \
                }                                                                             \
            }                                                                                 \
            for (int64_t e = e0; e < e1; e++)                                                 \
                j->g[e] += _mm512_reduce_add_ps(_mm512_loadu_ps(accv + (e - e0) * 16));       \
        }                                                                                     \
        }                                                                                     \
    }

TAPD_WIDE(1)
TAPD_WIDE(2)
TAPD_WIDE(4)

/* per ISA, per row width class (W = 16, 32, 64); NULL: no direct kernels (AVX2: the copy
 * path).  W = 8 (the direct kernel with two rows per vector, row shifts by half a vector)
 * measured slower than the copy path (64x8x8 -> 64, beta 70, batch 128: forward 3.43 vs
 * 2.72 ms, backward 7.56 vs 6.60 ms) and is not kept. */
typedef struct {
    tapd_fn fwd, sddmm;
} tapd_kern;
static const tapd_kern TAPD[SAL_ISA_COUNT][3] = {
    [SAL_ISA_BASE] = {{sal_ref_tapd_fwd, sal_ref_tapd_sddmm},
                      {sal_ref_tapd_fwd, sal_ref_tapd_sddmm},
                      {sal_ref_tapd_fwd, sal_ref_tapd_sddmm}},
    [SAL_ISA_AVX512] = {{tapd_fwd_w1, tapd_sddmm_w1},
                        {tapd_fwd_w2, tapd_sddmm_w2},
                        {tapd_fwd_w4, tapd_sddmm_w4}},
};

static int tapd_class(int64_t w) { return w == 16 ? 0 : w == 32 ? 1 : w == 64 ? 2 : -1; }

static int aligned64(const float *p) { return p == NULL || (uintptr_t)p % 64 == 0; }

/* Whether a layer runs on the direct kernels: stride 1, a row width they have, an ISA that
 * has them, and the sources the kernels read rows of (x; the backward x and dy) 64-byte
 * aligned: a row then starts a cache line (with rows 16 bytes off every load crosses a line,
 * and the direct forward measured 3.66 against 2.29 ms, slower than the copy path).  y and
 * dx may lie anywhere (y's non-temporal stores need it aligned, else plain stores). */
int sal_taps_direct(const sal_sal_desc *d, const float *a, const float *b, const float *c) {
    const int k = tapd_class(d->x.w);
    return d->stride == 1 && k >= 0 && TAPD[sal_cpu_isa()][k].fwd != NULL && aligned64(a) &&
           aligned64(b) && aligned64(c);
}

/* Chunks: whole images (CNHW: several, one segment; NCHW: one), the chunk's x, dy and dx
 * within DIRECT_BYTES (they stay in L2 while every row of the lists sweeps them), and at
 * least 2 chunks per thread when the batch allows. */
#define DIRECT_BYTES ((int64_t)384 << 10)
typedef struct {
    int64_t O, C, N, H, W, HW;
    int64_t nimg, nchunk;
    int64_t xsn, xsc, ysn, ysc;       /* x (and dx), y (and dy) strides */
    taps_list lf, lb;                 /* rows o: (i, q); rows i: (o, mirrored q) */
    uint8_t *tapf, *tapb;
    int64_t *eidx;                    /* forward entry e is (o*C + i)*9 + q */
    uint16_t *kexp;                   /* shared SAL: kept (O, C) */
    float *g, *thr;                   /* g (E); per thread [accv | partial g] */
    int64_t accn, per;
    int nt;
} direct_plan;

static size_t direct_layout(direct_plan *p, const sal_sal_desc *d, float *base) {
    const int64_t O = d->o, C = d->x.c, Emax = O * C * KK;
    memset(p, 0, sizeof *p);
    p->O = O, p->C = C, p->N = d->x.n, p->H = d->x.h, p->W = d->x.w, p->HW = d->x.h * d->x.w;
    p->nt = task_threads(d->threads);
    const sal_act ya = {d->x.n, O, d->x.h, d->x.w, d->x.layout};
    p->xsn = sal_act_sn(d->x), p->xsc = sal_act_sc(d->x);
    p->ysn = sal_act_sn(ya), p->ysc = sal_act_sc(ya);
    p->nimg = 1;
    if (d->x.layout == SAL_CNHW) {
        const int64_t per_img = (2 * C + O) * p->HW * (int64_t)sizeof(float);
        int64_t ni = DIRECT_BYTES / per_img, par = p->N / (2 * (int64_t)p->nt);
        ni = ni < par ? ni : par;
        p->nimg = ni < 1 ? 1 : ni;
    }
    p->nchunk = (p->N + p->nimg - 1) / p->nimg;
    carver c = carver_at(base);
    p->lf.rowptr = carve(&c, (size_t)(O + 1) * sizeof(int64_t));
    p->lf.off = carve(&c, (size_t)Emax * sizeof(int64_t));
    p->lf.w = carve(&c, (size_t)Emax * sizeof(float));
    p->tapf = carve(&c, (size_t)Emax);
    p->eidx = carve(&c, (size_t)Emax * sizeof(int64_t));
    p->lb.rowptr = carve(&c, (size_t)(C + 1) * sizeof(int64_t));
    p->lb.off = carve(&c, (size_t)Emax * sizeof(int64_t));
    p->lb.w = carve(&c, (size_t)Emax * sizeof(float));
    p->tapb = carve(&c, (size_t)Emax);
    p->kexp = carve(&c, (size_t)(O * C) * sizeof(uint16_t));
    p->g = carve(&c, (size_t)Emax * sizeof(float));
    p->accn = (C * KK * 16 + 15) / 16 * 16;
    p->per = p->accn + (Emax + 15) / 16 * 16;
    p->thr = carve(&c, (size_t)p->per * (size_t)p->nt * sizeof(float));
    return c.used + 16;
}

/* the lists: rows o with entries (i, q) (source x: off = i * xsc + dy * W), and rows i with
 * entries (o, 8 - q) (source dy: off = o * ysc - dy * W), each row's entries by column
 * shift, then channel (the kernels branch on dx once per run) */
static void direct_lists(direct_plan *p, const uint16_t *kept, const float *weff, int fwd,
                         int bwd) {
    const int64_t O = p->O, C = p->C, W = p->W;
    int64_t e = 0;
    if (fwd) {
        for (int64_t o = 0; o < O; o++) {
            p->lf.rowptr[o] = e;
            for (int cx = 0; cx < 3; cx++)
                for (int64_t i = 0; i < C; i++) {
                    const unsigned m = kept[o * C + i];
                    for (int q = cx; q < KK; q += 3) {
                        if (!(m >> q & 1u)) continue;
                        p->lf.off[e] = i * p->xsc + (q / 3 - 1) * W;
                        p->lf.w[e] = weff[(o * C + i) * KK + q];
                        p->tapf[e] = (uint8_t)q;
                        p->eidx[e++] = (o * C + i) * KK + q;
                    }
                }
        }
        p->lf.rowptr[O] = e;
        p->lf.ne = e;
    }
    if (bwd) {
        e = 0;
        for (int64_t i = 0; i < C; i++) {
            p->lb.rowptr[i] = e;
            for (int cx = 0; cx < 3; cx++)   /* the mirrored tap's column shift: 1 - cx */
                for (int64_t o = 0; o < O; o++) {
                    const unsigned m = kept[o * C + i];
                    for (int q = 2 - cx; q < KK; q += 3) {
                        if (!(m >> q & 1u)) continue;
                        p->lb.off[e] = o * p->ysc - (q / 3 - 1) * W;
                        p->lb.w[e] = weff[(o * C + i) * KK + q];
                        p->tapb[e++] = (uint8_t)(KK - 1 - q);
                    }
                }
        }
        p->lb.rowptr[C] = e;
        p->lb.ne = e;
    }
}

/* A prefetch stream: planes of a later chunk (bytes [b0, b1) of each plane (channel ch,
 * image n) of images [n0, n1)), asked into L2 a few lines at a time between the kernel
 * calls of the current chunk, so that memory works while the FMA units do: the hardware
 * prefetcher stays within a page and cannot run ahead from one channel's plane to the next
 * (N*H*W floats apart in CNHW). */
typedef struct {
    const char *base;       /* NULL: nothing left */
    int64_t sn, sc;         /* bytes between images, channels */
    int64_t n0, n1, nch;
    int64_t b0, b1;
    int write;              /* asked for with the intent to write (dx) */
    int64_t n, ch, b;       /* the cursor */
} pf_stream;

static pf_stream pf_planes(const float *base, int64_t sn, int64_t sc, int64_t nch, int64_t n0,
                           int64_t n1, int64_t floats, int write) {
    pf_stream f = {0};
    if (!base || n1 <= n0 || floats <= 0) return f;
    f.base = (const char *)base;
    f.sn = sn * (int64_t)sizeof(float), f.sc = sc * (int64_t)sizeof(float);
    f.n0 = n0, f.n1 = n1, f.nch = nch;
    f.b0 = 0, f.b1 = floats * (int64_t)sizeof(float);
    f.write = write;
    f.n = n0, f.ch = 0, f.b = 0;
    return f;
}

static int64_t pf_lines(const pf_stream *f) {
    return f->base ? (f->n1 - f->n0) * f->nch * ((f->b1 - f->b0 + 63) / 64) : 0;
}

/* up to k more lines of f; returns how many */
static int64_t pf_issue(pf_stream *f, int64_t k) {
    int64_t done = 0;
    while (f->base && done < k) {
        const char *p = f->base + f->n * f->sn + f->ch * f->sc + f->b;
        if (f->write) __builtin_prefetch(p, 1, 2);
        else __builtin_prefetch(p, 0, 2);
        done++;
        if ((f->b += 64) < f->b1) continue;
        f->b = f->b0;
        if (++f->n < f->n1) continue;
        f->n = f->n0;
        if (++f->ch == f->nch) f->base = NULL;
    }
    return done;
}

/* a chunk's prefetches, spread over `steps` calls of pf_step */
typedef struct {
    pf_stream s[3];
    int64_t per;
} pf_plan;

static void pf_start(pf_plan *p, int64_t steps) {
    int64_t tot = 0;
    for (int i = 0; i < 3; i++) tot += pf_lines(&p->s[i]);
    p->per = steps > 0 ? (tot + steps - 1) / steps : tot;
}

static void pf_step(pf_plan *p) {
    int64_t k = p->per;
    for (int i = 0; i < 3 && k > 0; i++) k -= pf_issue(&p->s[i], k);
}

#define PF_GROUPS 8   /* kernel calls per work unit and pass, a prefetch step before each */

typedef struct {
    const direct_plan *p;
    tapd_kern kern;
    int64_t ks;             /* work unit = (chunk, one of ks ranges of rows) */
    const float *x, *dy;
    float *y, *dx;          /* forward: y; backward: dx (may be NULL) */
    int do_g, stream;
} direct_task;

/* chunk j: images [*n0, *n0 + *ni) */
static void direct_chunk(const direct_plan *p, int64_t j, int64_t *n0, int64_t *ni) {
    *n0 = j * p->nimg;
    *ni = p->N - *n0 < p->nimg ? p->N - *n0 : p->nimg;
}

/* the segments of chunk j: CNHW one of ni * H rows, NCHW one per image */
static int64_t direct_segs(const direct_plan *p, int64_t ni) {
    return p->nimg > 1 || p->xsn == p->HW ? 1 : ni;
}

/* the next chunk's planes (x; the backward also dy and dx) when this thread does it next */
static void direct_prefetch(pf_plan *pf, const direct_task *t, int64_t j, int64_t v,
                            int64_t v1, int64_t steps) {
    const direct_plan *p = t->p;
    memset(pf, 0, sizeof *pf);
    if (v1 <= (j + 1) * t->ks) return;
    int64_t n0, ni;
    direct_chunk(p, j + 1, &n0, &ni);
    pf->s[0] = pf_planes(t->x, p->xsn, p->xsc, p->C, n0, n0 + ni, p->HW, 0);
    if (t->dy) pf->s[1] = pf_planes(t->dy, p->ysn, p->ysc, p->O, n0, n0 + ni, p->HW, 0);
    if (t->dx) pf->s[2] = pf_planes(t->dx, p->xsn, p->xsc, p->C, n0, n0 + ni, p->HW, 1);
    const int64_t units = ((j + 1) * t->ks < v1 ? (j + 1) * t->ks : v1) - v;
    pf_start(pf, units * steps);
}

static void direct_fwd_units(void *q, int64_t v0, int64_t v1, int tid) {
    const direct_task *t = q;
    const direct_plan *p = t->p;
    pf_plan pf = {0};
    for (int64_t v = v0; v < v1; v++) {
        const int64_t j = v / t->ks, r = v % t->ks;
        const int64_t k0 = p->O * r / t->ks, k1 = p->O * (r + 1) / t->ks;
        int64_t n0, ni;
        direct_chunk(p, j, &n0, &ni);
        const int64_t ns = direct_segs(p, ni), rows = (ns == 1 ? ni : 1) * p->H;
        const int64_t ng = k1 - k0 < PF_GROUPS ? k1 - k0 : PF_GROUPS;
        if (v == v0 || r == 0) direct_prefetch(&pf, t, j, v, v1, ns * ng);
        for (int64_t sg = 0; sg < ns; sg++)
            for (int64_t gi = 0; gi < ng; gi++) {
                pf_step(&pf);
                const int64_t n = n0 + sg, a = k0 + (k1 - k0) * gi / ng;
                const int64_t b = k0 + (k1 - k0) * (gi + 1) / ng;
                const tapd_job job = {t->x + n * p->xsn, p->xsc, p->W, p->H, rows,
                                      p->lf.rowptr, p->lf.off, p->tapf, p->lf.w, a, b,
                                      t->y + n * p->ysn + a * p->ysc, p->ysc,
                                      t->stream ? TAPS_EPI_STREAM : TAPS_EPI_STORE, NULL, 0,
                                      NULL, NULL};
                t->kern.fwd(&job);
            }
    }
}

/* the backward, chunk by chunk: the weight gradient at the kept taps (rows o, into this
 * thread's partial g), then the input gradient (rows i, added into dx), the chunk's x, dy
 * and dx in L2 between the two */
static void direct_bwd_units(void *q, int64_t v0, int64_t v1, int tid) {
    const direct_task *t = q;
    const direct_plan *p = t->p;
    float *accv = p->thr + tid * p->per, *gp = accv + p->accn;
    if (t->do_g) memset(gp, 0, (size_t)p->lf.ne * sizeof *gp);
    pf_plan pf = {0};
    for (int64_t v = v0; v < v1; v++) {
        const int64_t j = v / t->ks, r = v % t->ks;
        const int64_t o0 = t->do_g ? p->O * r / t->ks : 0;
        const int64_t o1 = t->do_g ? p->O * (r + 1) / t->ks : 0;
        const int64_t i0 = t->dx ? p->C * r / t->ks : 0, i1 = t->dx ? p->C * (r + 1) / t->ks : 0;
        int64_t n0, ni;
        direct_chunk(p, j, &n0, &ni);
        const int64_t ns = direct_segs(p, ni), rows = (ns == 1 ? ni : 1) * p->H;
        const int64_t go = o1 - o0 < PF_GROUPS ? o1 - o0 : PF_GROUPS;
        const int64_t gi = i1 - i0 < PF_GROUPS ? i1 - i0 : PF_GROUPS;
        if (v == v0 || r == 0) direct_prefetch(&pf, t, j, v, v1, ns * (go + gi));
        for (int64_t sg = 0; sg < ns; sg++) {
            const int64_t n = n0 + sg;
            for (int64_t g = 0; g < go; g++) {
                pf_step(&pf);
                const int64_t a = o0 + (o1 - o0) * g / go, b = o0 + (o1 - o0) * (g + 1) / go;
                const tapd_job job = {t->x + n * p->xsn, p->xsc, p->W, p->H, rows, p->lf.rowptr,
                                      p->lf.off, p->tapf, NULL, a, b, NULL, 0, 0,
                                      t->dy + n * p->ysn + a * p->ysc, p->ysc, gp, accv};
                t->kern.sddmm(&job);
            }
            for (int64_t g = 0; g < gi; g++) {
                pf_step(&pf);
                const int64_t a = i0 + (i1 - i0) * g / gi, b = i0 + (i1 - i0) * (g + 1) / gi;
                const tapd_job job = {t->dy + n * p->ysn, p->ysc, p->W, p->H, rows,
                                      p->lb.rowptr, p->lb.off, p->tapb, p->lb.w, a, b,
                                      t->dx + n * p->xsn + a * p->xsc, p->xsc, TAPS_EPI_ACC,
                                      NULL, 0, NULL, NULL};
                t->kern.fwd(&job);
            }
        }
    }
}

/* row ranges per chunk: 1, or enough for 2 units per thread when the chunks are fewer */
static int64_t direct_splits(const direct_plan *p, int64_t rows) {
    const int64_t want = 2 * (int64_t)p->nt;
    if (p->nchunk >= want || p->nt <= 1) return 1;
    const int64_t ks = (want + p->nchunk - 1) / p->nchunk, most = rows / 4 < 1 ? 1 : rows / 4;
    return ks < most ? ks : most;
}

static const uint16_t *direct_kept(const direct_plan *p, const uint16_t *kept, int shared) {
    if (!shared) return kept;
    for (int64_t o = 0; o < p->O; o++)
        memcpy(p->kexp + o * p->C, kept, (size_t)p->C * sizeof *kept);
    return p->kexp;
}

/* Non-temporal stores for y when it is 64-byte aligned (its rows then are): y (8 MB for
 * 16x32x32 at batch 128) does not stay in L2 anyway, and the stores then skip reading the
 * lines first (prototype, 16x32x32, b128, beta 70: 2.36 - 2.54 ms with them, 2.73 - 3.10
 * without).  Not measured in the network, where BN reads y next. */
#define DIRECT_STREAM 1
static sal_status direct_fwd(float *y, const float *x, const float *weff, const uint16_t *kept,
                             const sal_sal_desc *d, float *scratch) {
    direct_plan p;
    direct_layout(&p, d, scratch);
    kept = direct_kept(&p, kept, d->shared);
    direct_lists(&p, kept, weff, 1, 0);
    direct_task t = {&p, TAPD[sal_cpu_isa()][tapd_class(p.W)], direct_splits(&p, p.O), x, NULL,
                     y, NULL, 0, 0};
    t.stream = DIRECT_STREAM && t.kern.fwd != sal_ref_tapd_fwd && aligned64(y);   /* rows too */
    sal_parallel_for(p.nchunk * t.ks, p.nt, direct_fwd_units, &t);
    return SAL_OK;
}

static sal_status direct_bwd(float *dx, float *g, const float *dy, const float *x,
                             const float *weff, const uint16_t *kept, const sal_sal_desc *d,
                             float *scratch) {
    direct_plan p;
    direct_layout(&p, d, scratch);
    kept = direct_kept(&p, kept, d->shared);
    direct_lists(&p, kept, weff, g != NULL, dx != NULL);
    direct_task t = {&p, TAPD[sal_cpu_isa()][tapd_class(p.W)],
                     direct_splits(&p, p.O > p.C ? p.O : p.C), x, dy, NULL, dx, g != NULL, 0};
    const int64_t nv = p.nchunk * t.ks;
    sal_parallel_for(nv, p.nt, direct_bwd_units, &t);
    if (g) {
        gsum_task gt = {p.thr + p.accn, p.per, p.g, (int)(nv < p.nt ? nv : p.nt)};
        sal_parallel_for(p.lf.ne, p.nt, gsum_run, &gt);
        for (int64_t e = 0; e < p.lf.ne; e++) g[p.eidx[e]] += p.g[e];
    }
    return SAL_OK;
}

/* ---- training entry points (internal/taps.h) ------------------------------------------ */
size_t sal_taps_scratch(const sal_sal_desc *d) {
    if (taps_check(d, NULL) != SAL_OK) return 0;
    unshared_plan u;
    const size_t e0 = unshared_layout(&u, d, NULL, 0), e1 = unshared_layout(&u, d, NULL, 1);
    size_t e = e0 > e1 ? e0 : e1;
    if (d->stride == 1 && tapd_class(d->x.w) >= 0) {   /* the direct path (any ISA) */
        direct_plan p;
        const size_t e2 = direct_layout(&p, d, NULL);
        e = e2 > e ? e2 : e;
    }
    if (!d->shared) return e;
    shared_plan s;
    const size_t g = shared_layout(&s, d, NULL);
    return g > e ? g : e;
}

/* Shared SAL runs on the GEMM (restricted im2col) or on the entry kernels of unshared SAL,
 * every output keeping its input channel's taps.  Measured (1 thread, batch 128, ResNet-20
 * shapes, beta 1 .. 20): the entry kernels are 1.5-3x faster for 16 and 32 outputs, the
 * GEMM faster for 64 outputs in the backward (64x8x8: 8.9 vs 10.3 ms at beta 20) and the
 * stride-2 forward (32->64: 2.8 vs 3.8 ms). */
static int shared_by_gemm(const sal_sal_desc *d, int bwd) {
    return d->o >= 64 && (bwd || d->stride >= 2);
}

/* the kept taps per (o, i) for the entry kernels: kept itself, or shared SAL's kept (C)
 * repeated for every output */
static const uint16_t *kept_oc(const unshared_plan *u, const uint16_t *kept,
                               const sal_sal_desc *d) {
    if (!d->shared) return kept;
    for (int64_t o = 0; o < d->o; o++)
        memcpy(u->kexp + o * d->x.c, kept, (size_t)d->x.c * sizeof *kept);
    return u->kexp;
}

/* Crossover.  The sparse path runs when the fraction of kept taps (nkept / (9 L)) is below
 * the break-even fraction at which the sparse and the dense path take the same time,
 * measured with bench/bench_taps.c (thread CPU time, 1 thread, batch 128, CNHW, the
 * ResNet-20 SAL layers, logits U[0, 1), beta 1 .. 200; Zen 4, AVX-512), the dense 3x3
 * convolution being Winograd F(4x4, 3x3) at stride 1 and the blocked direct kernel at
 * stride 2 (conv.c).  The sparse time is a fixed part plus a part per kept tap.
 * Copy path (2026-12-05, fitted on beta 20 / 70, kept 3.3 / 1.7 per slice: 16x32x32
 * forward 1.9 ms + 0.93 ms per tap against dense 3.35; backward 4.1 + 2.0 against 6.6):
 *   forward, stride 1:  0.14 - 0.18  (16x32x32, 32x16x16, 64x8x8; shared alike)  -> 0.16
 *   forward, stride 2:  0.28 - 0.29  (16->32, 32->64)                            -> 0.28
 *   backward, stride 1: 0.10 - 0.14                                              -> 0.12
 *   backward, stride 2: 0.29 - 0.30                                              -> 0.29
 * Direct path (stride 1, aligned buffers; 2026-12-05, beta 20 .. 200, unshared and shared;
 * 16x32x32 forward 1.0 ms + 0.91 ms per tap against dense 3.2, e.g. kept 1.62: 2.54 against
 * 3.19 ms forward, 5.10 against 6.01 ms backward):
 *   forward,  W = 32:   kept 2.2 - 2.3 of 9 -> 0.24;   W = 16: 1.6 - 1.75 -> 0.18
 *   backward, W = 32:   kept 1.85 - 2.0     -> 0.21;   W = 16: 1.4 - 1.6  -> 0.16
 *   (W = 64, no ResNet-20 layer: as W = 32)
 * (a slice keeps at least 1 tap: a fraction >= 1/9 = 0.11).  Before Winograd (the direct 3x3
 * kernel) the copy path's were 0.7 / 0.8 forward and "always" backward.  Re-measure when
 * either path changes: bench_taps prints both paths' times over a sweep of beta (its offset
 * argument 0: aligned buffers, the direct path; 4: the copy path). */
#define CROSSOVER_FWD_S1 0.16
#define CROSSOVER_FWD_S2 0.28
#define CROSSOVER_BWD_S1 0.12
#define CROSSOVER_BWD_S2 0.29
/* Shared SAL on the restricted-im2col GEMM (64 outputs and more), stride 2 (32x16x16 -> 64,
 * beta 3 .. 20, copy path buffers): forward kept 4.3 - 5.7 of 9 -> 0.55 (kept 4.28: 2.75
 * against 3.30 ms), backward 4.3 - 5.7 -> 0.50 (6.88 against 7.12 ms).  At stride 1 (64x8x8,
 * backward) the GEMM does not pay at 0.2 (5.06 against 4.38 ms): the copy path's 0.12. */
/* Shared SAL's forward as shift + 1x1 (sal_shiftconv; beta 20 / 70, kept 3.1-3.4 / 1.6-1.7):
 * stride 1 (32x16x16, 64x8x8) kept 1.75 - 1.9 -> 0.20 (64x8x8 at beta 70: 1.86 against
 * 2.0 ms); stride 2 (32x16x16 -> 64) as the GEMM it replaces, 0.55 (beta 20: 2.83 against
 * 3.1 ms). */
#define CROSSOVER_SHIFTCONV_FWD_S1 0.20
#define CROSSOVER_GEMM_FWD_S2 0.55
#define CROSSOVER_GEMM_BWD_S2 0.50
#define CROSSOVER_DIRECT_FWD_W16 0.18
#define CROSSOVER_DIRECT_FWD_W32 0.24
#define CROSSOVER_DIRECT_BWD_W16 0.16
#define CROSSOVER_DIRECT_BWD_W32 0.21
static const char *const PATHS[] = {"auto", "sparse", "dense"};
static atomic_int path_mode = 0;

sal_status sal_set_taps_path(const char *name) {
    for (int i = 0; i < 3; i++)
        if (name && strcmp(name, PATHS[i]) == 0) {
            atomic_store(&path_mode, i);
            return SAL_OK;
        }
    return sal_fail(SAL_EINVAL, "sal_set_taps_path", "name=\"%s\": must be \"auto\", \"sparse\" "
                    "or \"dense\"", name ? name : "(null)");
}

const char *sal_get_taps_path(void) { return PATHS[atomic_load(&path_mode)]; }

int sal_taps_pays(const sal_sal_desc *d, int64_t nkept, int bwd, int direct) {
    const int mode = atomic_load(&path_mode);
    if (mode) return mode == 1;
    const int64_t all = (d->shared ? d->x.c : d->o * d->x.c) * KK;
    double crossover;
    if (!bwd && shared_by_shiftconv(d)) {
        crossover = d->stride == 1 ? CROSSOVER_SHIFTCONV_FWD_S1 : CROSSOVER_GEMM_FWD_S2;
    } else if (d->shared && shared_by_gemm(d, bwd) && d->stride >= 2) {
        crossover = bwd ? CROSSOVER_GEMM_BWD_S2 : CROSSOVER_GEMM_FWD_S2;
    } else if (direct) {
        const int narrow = d->x.w == 16;
        crossover = bwd ? (narrow ? CROSSOVER_DIRECT_BWD_W16 : CROSSOVER_DIRECT_BWD_W32)
                        : (narrow ? CROSSOVER_DIRECT_FWD_W16 : CROSSOVER_DIRECT_FWD_W32);
    } else {
        crossover = bwd ? (d->stride == 1 ? CROSSOVER_BWD_S1 : CROSSOVER_BWD_S2)
                        : (d->stride == 1 ? CROSSOVER_FWD_S1 : CROSSOVER_FWD_S2);
    }
    return (double)nkept < crossover * (double)all;
}

sal_status sal_taps_fwd(float *y, const float *x, const float *weff, const uint16_t *kept,
                        const sal_sal_desc *d, float *scratch) {
    if (shared_by_shiftconv(d)) return shared_shiftconv_fwd(y, x, weff, kept, d, scratch);
    if (d->shared && shared_by_gemm(d, 0)) return shared_fwd(y, x, weff, kept, d, scratch);
    if (sal_taps_direct(d, x, NULL, NULL)) return direct_fwd(y, x, weff, kept, d, scratch);
    unshared_plan u;
    unshared_layout(&u, d, scratch, 0);
    kept = kept_oc(&u, kept, d);
    sal_act ya;
    SAL_TRY(taps_check(d, &ya));
    list_fwd(&u.lf, &u.gf, u.fcopy, u.fro, kept, weff, d->o, d->x.c, u.usef);
    u.gf.src = x;
    const chunk_task t = units((chunk_task){&u, &u.gf, &u.lf, 1, 0, u.usef, y, sal_act_sn(ya),
                                            sal_act_sc(ya), 0, 0, d->stride, NULL, 0, 0,
                                            TAPS_EPI_STORE, NULL, NULL, 0, 0, NULL, NULL, NULL},
                               d->o, u.nt);
    sal_parallel_for(nunits(&t), u.nt, fwd_units, (void *)&t);
    return SAL_OK;
}

sal_status sal_taps_bwd(float *dx, float *g, const float *dy, const float *x, const float *weff,
                        const uint16_t *kept, const sal_sal_desc *d, float *scratch) {
    if (d->shared && shared_by_gemm(d, 1))
        return shared_bwd(dx, g, dy, x, weff, kept, d, scratch);
    if (sal_taps_direct(d, x, dy, NULL)) return direct_bwd(dx, g, dy, x, weff, kept, d, scratch);
    unshared_plan u;
    /* stride 1: both gradients chunk by chunk, dy read once (paired runs, 1 thread, batch
     * 128: 4-9 % faster on 32x32 and 16x16 planes, the same on 8x8) */
    const int fused = d->stride == 1 && dx && g;
    unshared_layout(&u, d, scratch, fused);
    kept = kept_oc(&u, kept, d);
    sal_act ya;
    SAL_TRY(taps_check(d, &ya));
    const int64_t O = d->o, C = d->x.c;
    if (g) list_fwd(&u.lw, &u.gf, u.fcopy, u.fro, kept, weff, O, C, u.usef);
    if (dx) list_bwd(&u.lb, &u.gb, u.bcopy, u.bro, u.bph, u.nph, kept, weff, O, C, u.useb);
    u.gf.src = x;
    u.gb.src = dy;
    int64_t nv = 0;
    if (fused) {
        int k0c = 0;   /* the weight gradient reads dy from its unshifted copy: built for all */
        while (u.gb.cco[k0c] != 0) k0c++;
        for (int64_t o = 0; o < O; o++) u.useb[o] |= (uint16_t)(1u << k0c);
        chunk_task t = {&u, &u.gf, &u.lw, 1, 0, u.usef, dx, sal_act_sn(d->x), sal_act_sc(d->x),
                        d->x.h, d->x.w, 1, dy, sal_act_sn(ya), sal_act_sc(ya), 0, NULL, NULL, 0,
                        0, &u.gb, &u.lb, u.useb};
        t = units(t, O > C ? O : C, u.nt);
        nv = nunits(&t);
        sal_parallel_for(nv, u.nt, bwd1_units, &t);
    } else if (g) {
        const chunk_task t = units((chunk_task){&u, &u.gf, &u.lw, 1, 0, u.usef, NULL, 0, 0, 0, 0,
                                                d->stride, dy, sal_act_sn(ya), sal_act_sc(ya), 0,
                                                NULL, NULL, 0, 0, NULL, NULL, NULL},
                                   O, u.nt);
        nv = nunits(&t);
        sal_parallel_for(nv, u.nt, wg_units, (void *)&t);
    }
    if (g) {
        gsum_task gt = {u.thr + u.gpart, u.per, u.g, (int)(nv < u.nt ? nv : u.nt)};
        sal_parallel_for(u.lw.ne, u.nt, gsum_run, &gt);
        /* the entries in their order (o, i, q): blocks split i in order */
        int64_t e = 0;
        for (int64_t oc = 0; oc < O * C; oc++)
            for (int q = 0; q < KK; q++)
                if (kept[oc] >> q & 1u) g[oc * KK + q] += u.g[e++];
    }
    if (dx && !fused) {
        const chunk_task t = units((chunk_task){&u, &u.gb, &u.lb, 1, 0, u.useb, dx,
                                                sal_act_sn(d->x), sal_act_sc(d->x), d->x.h,
                                                d->x.w, d->stride, NULL, 0, 0, 0, NULL, NULL, 0,
                                                0, NULL, NULL, NULL},
                                   C, u.nt);
        sal_parallel_for(nunits(&t), u.nt, dx_units, (void *)&t);
    }
    return SAL_OK;
}

/* ---- deployment: the one-tap GATHER (sal/taps.h) --------------------------------------- */
/* The geometry of a GATHER call and its memory: the entry lists (its plan) carved from
 * plan_base (then *plan_floats their size) or, plan_base and plan_floats NULL, from base
 * with the per-thread areas; *floats: the scratch size (base NULL: the sizes only). */
static sal_status gather_geom(const char *fn, sal_act xa, int64_t o, int64_t stride,
                              int64_t npair, int threads, unshared_plan *u, size_t *floats,
                              float *base, float *plan_base, size_t *plan_floats) {
    SAL_TRY(sal_act_check(fn, "x", xa));
    SAL_REQUIRE(o >= 1 && stride >= 1 && npair >= 0 && threads >= 0 && threads <= 1024, fn,
                "O=%lld stride=%lld npair=%lld threads=%d: need O >= 1, stride >= 1, "
                "npair >= 0, threads in [0, 1024]", (long long)o, (long long)stride,
                (long long)npair, threads);
    SAL_REQUIRE(stride <= (xa.h > xa.w ? xa.h : xa.w) + 2, fn,
                "stride=%lld: must be <= max(H, W) + 2", (long long)stride);
    int64_t t;
    SAL_TRY(sal_checked_prod(fn, "O*C", &t, 2, o, xa.c));
    sal_act ya = {xa.n, o, (xa.h - 1) / stride + 1, (xa.w - 1) / stride + 1, xa.layout};
    SAL_TRY(sal_act_check(fn, "y", ya));
    memset(u, 0, sizeof *u);
    u->nt = task_threads(threads);
    u->nph = 0;
    fwd_grid(&u->gf, xa, stride, u->nt, u->fcopy, u->fro, 0);
    SAL_TRY(sal_checked_prod(fn, "chunk buffer", &t, 3, u->gf.Cs, (int64_t)u->gf.ncopy,
                             u->gf.cstride));
    list_blocks(&u->lf, xa.c, block_channels(xa.c, u->gf.ncopy, TILE_REF + 2 * u->gf.Wg));
    carver c = carver_at(base), cp = carver_at(plan_base);
    carver *lists = plan_floats ? &cp : &c;
    u->lf.rowptr = carve(lists, (size_t)(o * u->lf.nb + 1) * sizeof(int64_t));
    u->lf.off = carve(lists, (size_t)(npair > 0 ? npair : 1) * sizeof(int64_t));
    u->lf.w = carve(lists, (size_t)(npair > 0 ? npair : 1) * sizeof(float));
    u->usef = carve(lists, (size_t)xa.c * sizeof(uint16_t));
    u->blk = carve(lists, (size_t)xa.c * sizeof(int32_t));
    u->wsrc = carve(lists, (size_t)(npair > 0 ? npair : 1) * sizeof(int64_t));
    thread_sizes(u, grid_buf_floats(&u->gf), u->gf.R * u->gf.Wg, o, 0, 0);
    u->thr = carve(&c, (size_t)u->per * (size_t)u->nt * sizeof(float));
    *floats = c.used + 16;
    if (plan_floats) *plan_floats = cp.used + 16;
    return SAL_OK;
}

size_t sal_taps_gather_scratch(sal_act xa, int64_t o, int64_t stride, int64_t npair,
                               int threads) {
    unshared_plan u;
    size_t f = 0;
    if (gather_geom("sal_taps_gather", xa, o, stride, npair, threads, &u, &f, NULL, NULL,
                    NULL) != SAL_OK)
        return 0;
    return f;
}

size_t sal_taps_gather_plan_floats(sal_act xa, int64_t o, int64_t stride, int64_t npair,
                                   int threads) {
    unshared_plan u;
    size_t f = 0, pf = 0;
    if (gather_geom("sal_taps_gather", xa, o, stride, npair, threads, &u, &f, NULL, NULL,
                    &pf) != SAL_OK)
        return 0;
    return pf;
}

sal_status sal_taps_gather_fwd(float *y, const float *x, sal_act xa, int64_t o, int64_t stride,
                               const int32_t *pairs, const float *w, int64_t npair,
                               const float *bias, const float *res, int relu, int res_post,
                               int threads, float *scratch) {
    int built = 0;
    return sal_taps_gather_fwd_plan(y, x, xa, o, stride, pairs, w, npair, bias, res, relu,
                                    res_post, threads, scratch, NULL, &built);
}

sal_status sal_taps_gather_fwd_plan(float *y, const float *x, sal_act xa, int64_t o,
                                    int64_t stride, const int32_t *pairs, const float *w,
                                    int64_t npair, const float *bias, const float *res,
                                    int relu, int res_post, int threads, float *scratch,
                                    float *plan, int *built) {
    const char *fn = "sal_taps_gather_fwd";
    unshared_plan u;
    size_t need = 0, pf = 0;
    SAL_TRY(gather_geom(fn, xa, o, stride, npair, threads, &u, &need, NULL, NULL, NULL));
    SAL_REQUIRE(y && x && scratch && built && (npair == 0 || (pairs && w)), fn,
                "y, x, scratch, built, pairs and w must not be NULL (scratch: %zu floats)", need);
    SAL_REQUIRE((relu == 0 || relu == 1) && (res_post == 0 || res_post == 1), fn,
                "relu=%d res_post=%d: must be 0 or 1", relu, res_post);
    SAL_TRY(gather_geom(fn, xa, o, stride, npair, threads, &u, &need, scratch, plan,
                        plan ? &pf : NULL));
    const taps_grid *g = &u.gf;
    taps_list *l = &u.lf;
    l->nrow = o, l->ne = npair;
    if (plan && *built) {   /* the lists of the call that built them, today's weights */
        for (int64_t e = 0; e < npair; e++) l->w[e] = w[u.wsrc[e]];
        goto run;
    }
    /* rows o, blocks of input channels: count (validating), prefix sums, fill; pairs are
     * sorted by o only, within a row's block they keep their order */
    for (int64_t i = 0; i < xa.c; i++) u.blk[i] = (int32_t)(i / l->cb);
    memset(l->rowptr, 0, (size_t)(o * l->nb + 1) * sizeof *l->rowptr);
    for (int64_t k = 0; k < npair; k++) {
        const int32_t *r = pairs + 4 * k;
        SAL_REQUIRE((k == 0 || r[0] >= r[-4]) && r[0] >= 0 && r[0] < o && r[1] >= 0 &&
                        r[1] < xa.c && r[2] >= -1 && r[2] <= 1 && r[3] >= -1 && r[3] <= 1, fn,
                    "pair %lld = (%d, %d, %d, %d): needs o sorted in [0, %lld), i in [0, %lld), "
                    "|dy|, |dx| <= 1", (long long)k, r[0], r[1], r[2], r[3], (long long)o,
                    (long long)xa.c);
        l->rowptr[r[0] * l->nb + u.blk[r[1]] + 1]++;
    }
    for (int64_t r = 0; r < o * l->nb; r++) l->rowptr[r + 1] += l->rowptr[r];
    memset(u.usef, 0, (size_t)xa.c * sizeof *u.usef);
    for (int64_t k = 0; k < npair; k++) {
        const int32_t *r = pairs + 4 * k;
        const int q = (r[2] + 1) * 3 + r[3] + 1;
        const int64_t e = l->rowptr[r[0] * l->nb + u.blk[r[1]]]++;
        l->off[e] = (r[1] * g->ncopy + u.fcopy[q]) * g->cstride + (1 + u.fro[q]) * g->Wg;
        l->w[e] = w[k];
        u.wsrc[e] = k;
        u.usef[r[1]] |= (uint16_t)(1u << u.fcopy[q]);
    }
    for (int64_t r = o * l->nb; r > 0; r--) l->rowptr[r] = l->rowptr[r - 1];   /* back */
    l->rowptr[0] = 0;
    *built = plan != NULL;
run:
    u.gf.src = x;
    const sal_act ya = {xa.n, o, g->Hg, g->Wg, xa.layout};
    const chunk_task t = units((chunk_task){&u, &u.gf, l, 1, 0, u.usef, y, sal_act_sn(ya),
                                            sal_act_sc(ya), 0, 0, stride, NULL, 0, 0,
                                            TAPS_EPI_DEPLOY, bias, res, relu, res_post, NULL,
                                            NULL, NULL},
                               o, u.nt);
    sal_parallel_for(nunits(&t), u.nt, fwd_units, (void *)&t);
    return SAL_OK;
}
