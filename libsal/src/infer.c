/* The inference program (sal/infer.h): validation, buffers once per batch size, one
 * forward pass over the op list; the GATHER kernel of binarised unshared SAL layers.
 *
 * GATHER layout.  For stride S, the input (C, N, H, W) is rewritten as phase planes
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
 * zeroed slack at the end, so no tile reads past the buffer. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal/cpu.h"
#include "internal/program.h"
#include "internal/range.h"
#include "sal/conv.h"
#include "sal/infer.h"
#include "sal/layers.h"

#define GT 128  /* the largest GATHER tile (outputs per kernel call; see pick_gather) */

struct sal_infer {
    sal_program p;         /* shapes, activations (act), scratch, batch sizes; arena = weights */
    int64_t nops, nshift, npairs;
    sal_iop *ops;
    int32_t *shifts;       /* (nshift, 3) */
    int32_t *pairs;        /* (npairs, 4) */
    int64_t *rowptr;       /* GATHER ops: O + 1 pair indices per op (relative to ioff) */
    int64_t *row_at;       /* per op: start in rowptr, -1 if none */
    int64_t *src;          /* per pair: offset into the phase planes (for batch src_n) */
    int64_t src_n;
    int64_t macs;          /* per image, conv and GATHER ops (saturates at 2^62) */
};

/* a forward of fewer MACs than this runs on the calling thread alone: waking the pool's
 * workers costs some 10-20 us per op, more than a batch-1 ResNet-20 op takes */
#define SERIAL_MACS ((int64_t)1 << 25)

static const char *FN = "sal_infer";

static const char *const OP_FIELDS[] = {"kind", "in", "out", "res", "relu", "res_post", "o", "k",
                                        "stride", "pad", "p0", "p1", "ioff", "npair",
                                        "index_bits"};
_Static_assert(sizeof OP_FIELDS / sizeof *OP_FIELDS == sizeof(sal_iop) / sizeof(int64_t),
               "OP_FIELDS names every field of sal_iop");
static const char *const OP_KINDS[] = {[SAL_IOP_CONV] = "conv", [SAL_IOP_GATHER] = "gather",
                                       [SAL_IOP_SHIFT] = "shift", [SAL_IOP_ADD] = "add",
                                       [SAL_IOP_POOL] = "pool", [SAL_IOP_LINEAR] = "linear"};

const char *const *sal_infer_op_fields(int64_t *n) { return SAL_NAMES(OP_FIELDS, n); }
const char *const *sal_infer_op_kinds(int64_t *n) { return SAL_NAMES(OP_KINDS, n); }

static sal_act buf_act(const sal_infer *net, int64_t b, int64_t n) {
    return sal_program_act(&net->p, b, n);
}

static int64_t buf_numel(const sal_infer *net, int64_t b, int64_t n) {
    return sal_program_numel(&net->p, b, n);
}

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

/* floats of phase planes (with slack) a GATHER op needs for batch n: C * S*S planes of
 * block_stride(N * Hph * Wph) floats, every product checked (a stride near 2**62 from a
 * file made S*S wrap); SIZE_MAX when it does not fit */
static size_t gather_scratch(const sal_infer *net, const sal_iop *op, int64_t n) {
    const int64_t *si = net->p.shapes + 3 * op->in, *so = net->p.shapes + 3 * op->out;
    int64_t hph, wph, planes, m, tot;
    phase_geom(op->stride, so[1], so[2], &hph, &wph);
    if (!sal_mul_ok(si[0], op->stride, &planes) || !sal_mul_ok(planes, op->stride, &planes) ||
        !sal_mul_ok(n, hph, &m) || !sal_mul_ok(m, wph, &m) || m > ((int64_t)1 << 61) ||
        !sal_mul_ok(planes, block_stride(m), &tot) || tot > ((int64_t)1 << 61))
        return SIZE_MAX;
    return (size_t)tot + GT + 2 * (size_t)wph + 2;
}

static sal_status check_op(sal_infer *net, int64_t i, const sal_iop *op, int64_t *nrow) {
    SAL_TRY(sal_program_check_io(&net->p, i, op->in, op->out, op->res));
    SAL_REQUIRE(op->relu == 0 || op->relu == 1, FN, "op %lld: relu=%lld: must be 0 or 1",
                (long long)i, (long long)op->relu);
    SAL_REQUIRE(op->res_post == 0 || op->res_post == 1, FN,
                "op %lld: res_post=%lld: must be 0 or 1", (long long)i, (long long)op->res_post);
    const int64_t *si = net->p.shapes + 3 * op->in, *so = net->p.shapes + 3 * op->out;
    int64_t want[3] = {si[0], si[1], si[2]}, pw = 0, pb = 0;
    sal_act y;
    switch (op->kind) {
    case SAL_IOP_CONV: {
        sal_conv_desc d = {buf_act(net, op->in, 1), op->o, op->k, op->stride, op->pad, 0};
        SAL_TRY(sal_conv_check(&d, &y));
        want[0] = y.c, want[1] = y.h, want[2] = y.w;
        pw = op->o * si[0] * op->k * op->k;
        pb = op->p1 >= 0 ? op->o : 0;
        break;
    }
    case SAL_IOP_GATHER: {
        SAL_REQUIRE(op->o >= 1 && op->o == so[0] && op->stride >= 1, FN,
                    "op %lld: O=%lld stride=%lld: need O = the out buffer's C (%lld), stride >= 1",
                    (long long)i, (long long)op->o, (long long)op->stride, (long long)so[0]);
        /* the S*S phase planes grow with S: a stride beyond the padded input (which
         * changes nothing: one output row and column) is refused */
        SAL_REQUIRE(op->stride <= (si[1] > si[2] ? si[1] : si[2]) + 2, FN,
                    "op %lld: stride=%lld: must be <= max(H, W) + 2 = %lld (the padded input)",
                    (long long)i, (long long)op->stride,
                    (long long)((si[1] > si[2] ? si[1] : si[2]) + 2));
        SAL_REQUIRE(gather_scratch(net, op, 1) != SIZE_MAX, FN,
                    "op %lld: phase planes of C=%lld, stride %lld: size does not fit", (long long)i,
                    (long long)si[0], (long long)op->stride);
        /* p0 is the base of the pair weights even with no pairs: inside the arena */
        SAL_REQUIRE(sal_span_ok(op->p0, op->npair, net->p.narena), FN,
                    "op %lld: p0=%lld: %lld pair weights do not fit the arena (%lld)",
                    (long long)i, (long long)op->p0, (long long)op->npair,
                    (long long)net->p.narena);
        SAL_REQUIRE(sal_span_ok(op->ioff, op->npair, net->npairs), FN,
                    "op %lld: ioff=%lld npair=%lld: outside the pair table (%lld rows)",
                    (long long)i, (long long)op->ioff, (long long)op->npair, (long long)net->npairs);
        want[0] = op->o, want[1] = (si[1] - 1) / op->stride + 1, want[2] = (si[2] - 1) / op->stride + 1;
        pw = op->npair;
        pb = op->p1 >= 0 ? op->o : 0;
        int64_t prev = 0;
        for (int64_t k = op->ioff; k < op->ioff + op->npair; k++) {
            const int32_t *r = net->pairs + 4 * k;
            SAL_REQUIRE(r[0] >= prev && r[0] < op->o && r[1] >= 0 && r[1] < si[0] &&
                            r[2] >= -1 && r[2] <= 1 && r[3] >= -1 && r[3] <= 1, FN,
                        "op %lld: pair %lld = (%d, %d, %d, %d): needs o sorted in [0, %lld), "
                        "i in [0, %lld), |dy|, |dx| <= 1", (long long)i, (long long)k, r[0], r[1],
                        r[2], r[3], (long long)op->o, (long long)si[0]);
            prev = r[0];
        }
        SAL_REQUIRE(!__builtin_add_overflow(*nrow, op->o + 1, nrow) && *nrow <= ((int64_t)1 << 40),
                    FN, "op %lld: O=%lld: too many output rows in all", (long long)i, (long long)op->o);
        break;
    }
    case SAL_IOP_SHIFT: {
        SAL_REQUIRE(op->stride >= 1, FN, "op %lld: stride=%lld: must be >= 1", (long long)i,
                    (long long)op->stride);
        SAL_REQUIRE(op->index_bits >= 0 && op->index_bits <= 32, FN,
                    "op %lld: index_bits=%lld: must be in [0, 32]", (long long)i,
                    (long long)op->index_bits);
        want[0] = so[0], want[1] = (si[1] - 1) / op->stride + 1, want[2] = (si[2] - 1) / op->stride + 1;
        SAL_REQUIRE(sal_span_ok(op->ioff, so[0], net->nshift), FN,
                    "op %lld: ioff=%lld: needs %lld shift rows of %lld", (long long)i,
                    (long long)op->ioff, (long long)so[0], (long long)net->nshift);
        for (int64_t c = 0; c < so[0]; c++) {
            const int32_t *r = net->shifts + 3 * (op->ioff + c);
            SAL_REQUIRE(r[0] >= 0 && r[0] < si[0], FN,
                        "op %lld: shift row %lld: source channel %d not in [0, %lld)", (long long)i,
                        (long long)(op->ioff + c), r[0], (long long)si[0]);
        }
        break;
    }
    case SAL_IOP_ADD:
    case SAL_IOP_POOL:
    case SAL_IOP_LINEAR:
        SAL_TRY(sal_program_check_shared(
            &net->p, i,
            op->kind == SAL_IOP_ADD ? SAL_PROGRAM_ADD
                : op->kind == SAL_IOP_POOL ? SAL_PROGRAM_POOL : SAL_PROGRAM_LINEAR,
            op->in, op->res, op->o, want, &pw, &pb));
        break;
    default:
        return sal_fail(SAL_EINVAL, FN, "op %lld: kind=%lld: unknown op", (long long)i,
                        (long long)op->kind);
    }
    if (op->res >= 0) {
        SAL_REQUIRE(op->kind == SAL_IOP_CONV || op->kind == SAL_IOP_GATHER || op->kind == SAL_IOP_ADD,
                    FN, "op %lld: only conv, gather and add take a residual", (long long)i);
    }
    if (op->kind == SAL_IOP_CONV || op->kind == SAL_IOP_GATHER) {   /* sal_infer_count's MACs */
        int64_t macs;
        SAL_TRY(sal_checked_prod(FN, "MACs per image", &macs, 3, pw, so[1], so[2]));
        net->macs = macs > ((int64_t)1 << 62) - net->macs ? (int64_t)1 << 62 : net->macs + macs;
    }
    return sal_program_check_fit(&net->p, i, op->out, op->res, want, op->p0, pw, op->p1, pb);
}

void sal_infer_free(sal_infer *net) {
    if (!net) return;
    sal_program_free(&net->p);
    free(net->ops);
    free(net->shifts);
    free(net->pairs);
    free(net->rowptr);
    free(net->row_at);
    free(net->src);
    free(net);
}

sal_status sal_infer_create(sal_infer **out, const int64_t *shapes, int64_t nbuf,
                            const sal_iop *ops, int64_t nops, const int32_t *shifts,
                            int64_t nshift, const int32_t *pairs, int64_t npairs,
                            int64_t nweights) {
    SAL_REQUIRE(out && shapes && ops, FN, "net, shapes and ops must not be NULL");
    *out = NULL;
    SAL_REQUIRE(nshift >= 0 && (nshift == 0 || shifts), FN, "nshift=%lld: shifts missing",
                (long long)nshift);
    SAL_REQUIRE(npairs >= 0 && (npairs == 0 || pairs), FN, "npairs=%lld: pairs missing",
                (long long)npairs);
    SAL_REQUIRE(nweights >= 0, FN, "nweights=%lld: must be >= 0", (long long)nweights);
    /* every count times a row size stays far from overflow */
    SAL_REQUIRE(nops >= 1 && nops <= ((int64_t)1 << 40) && nshift <= ((int64_t)1 << 40) &&
                    npairs <= ((int64_t)1 << 40), FN,
                "nops=%lld nshift=%lld npairs=%lld: need 1 <= nops and counts <= 2**40",
                (long long)nops, (long long)nshift, (long long)npairs);
    sal_infer *net = calloc(1, sizeof *net);
    if (!net) return sal_fail(SAL_ENOMEM, FN, "out of memory");
    net->nops = nops, net->nshift = nshift, net->npairs = npairs;
    sal_status s = sal_program_init(&net->p, FN, "weights", shapes, nbuf, nops, nweights);
    net->ops = malloc((size_t)nops * sizeof *net->ops);
    net->shifts = malloc((size_t)(nshift ? nshift : 1) * 3 * sizeof *net->shifts);
    net->pairs = malloc((size_t)(npairs ? npairs : 1) * 4 * sizeof *net->pairs);
    net->src = malloc((size_t)(npairs ? npairs : 1) * sizeof *net->src);
    net->row_at = malloc((size_t)nops * sizeof *net->row_at);
    if (s == SAL_OK && (!net->ops || !net->shifts || !net->pairs || !net->src || !net->row_at))
        s = sal_fail(SAL_ENOMEM, FN, "out of memory");
    if (s != SAL_OK) {
        sal_infer_free(net);
        return s;
    }
    memcpy(net->ops, ops, (size_t)nops * sizeof *ops);
    if (nshift) memcpy(net->shifts, shifts, (size_t)nshift * 3 * sizeof *shifts);
    if (npairs) memcpy(net->pairs, pairs, (size_t)npairs * 4 * sizeof *pairs);
    int64_t nrow = 0;
    for (int64_t i = 0; i < nops && s == SAL_OK; i++) {
        net->row_at[i] = ops[i].kind == SAL_IOP_GATHER ? nrow : -1;
        s = check_op(net, i, &ops[i], &nrow);
    }
    if (s == SAL_OK) {
        const int64_t last = ops[nops - 1].out;
        if (shapes[3 * last + 1] != 1 || shapes[3 * last + 2] != 1)
            s = sal_fail(SAL_EINVAL, FN, "the last op must produce (N, F) (a pool or a linear)");
    }
    if (s == SAL_OK) {
        net->rowptr = malloc((size_t)(nrow ? nrow : 1) * sizeof *net->rowptr);
        if (!net->rowptr) s = sal_fail(SAL_ENOMEM, FN, "out of memory");
    }
    for (int64_t i = 0; i < nops && s == SAL_OK; i++) {
        if (ops[i].kind != SAL_IOP_GATHER) continue;
        int64_t *rp = net->rowptr + net->row_at[i];
        int64_t k = 0;
        for (int64_t o = 0; o <= ops[i].o; o++) {
            while (k < ops[i].npair && net->pairs[4 * (ops[i].ioff + k)] < o) k++;
            rp[o] = k;   /* first pair of output o (pairs are sorted by o) */
        }
    }
    if (s != SAL_OK) {
        sal_infer_free(net);
        return s;
    }
    net->src_n = -1;
    *out = net;
    return SAL_OK;
}

/* scratch floats of op i at batch n (sal_program_scratch_fn) */
static size_t op_scratch(const void *owner, int64_t i, int64_t n) {
    const sal_infer *net = owner;
    const sal_iop *op = &net->ops[i];
    if (op->kind == SAL_IOP_CONV) {
        sal_conv_desc d = {buf_act(net, op->in, n), op->o, op->k, op->stride, op->pad,
                           net->p.threads};
        return sal_conv_scratch(&d);
    }
    return op->kind == SAL_IOP_GATHER ? gather_scratch(net, op, n) : 0;
}

/* ---- epilogue -------------------------------------------------------------------- */
/* y (m) = epi(acc (m)): + b, + res before or after the ReLU */
static inline __attribute__((always_inline)) void epi_run(float *y, const float *acc, int64_t m,
                                                          float b, const float *res, int relu,
                                                          int res_post) {
    if (!res) {
        if (relu) for (int64_t j = 0; j < m; j++) { float v = acc[j] + b; y[j] = v > 0.0f ? v : 0.0f; }
        else for (int64_t j = 0; j < m; j++) y[j] = acc[j] + b;
    } else if (!res_post) {
        if (relu) for (int64_t j = 0; j < m; j++) { float v = acc[j] + b + res[j]; y[j] = v > 0.0f ? v : 0.0f; }
        else for (int64_t j = 0; j < m; j++) y[j] = acc[j] + b + res[j];
    } else {
        if (relu) for (int64_t j = 0; j < m; j++) { float v = acc[j] + b; y[j] = (v > 0.0f ? v : 0.0f) + res[j]; }
        else for (int64_t j = 0; j < m; j++) y[j] = acc[j] + b + res[j];
    }
}

typedef struct {
    float *y;
    int64_t M;
    const float *bias, *res;
    int relu, res_post;
} epi_task;

static void epi_planes_run(void *p, int64_t lo, int64_t hi, int tid) {
    const epi_task *t = p;
    float *y = t->y;
    const int64_t M = t->M;
    for (int64_t o = lo; o < hi; o++)
        epi_run(y + o * M, y + o * M, M, t->bias ? t->bias[o] : 0.0f,
                t->res ? t->res + o * M : NULL, t->relu, t->res_post);
}

/* in place over y (O, M) (channel-major), bias (O) or NULL, res (O, M) or NULL */
static void epi_planes(float *y, int64_t O, int64_t M, const float *bias, const float *res,
                       int relu, int res_post) {
    epi_task t = {y, M, bias, res, relu, res_post};
    sal_parallel_for(O, sal_threads(), epi_planes_run, &t);
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
                        epi_run(g->y + at, acc + rj[r], rm[r], b,                              \
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

static gather_kernel pick_gather(void) { return GATHER[sal_cpu_isa()]; }

/* y (O, N, Ho, Wo) = epi(GATHER(x (C, N, H, W))) */
static sal_status gather_fwd(sal_infer *net, int64_t opi, float *y, const float *x,
                             const float *res, const float *weights, int64_t N) {
    const sal_iop *op = &net->ops[opi];
    const int64_t *si = net->p.shapes + 3 * op->in, *so = net->p.shapes + 3 * op->out;
    const int64_t C = si[0], H = si[1], W = si[2], O = op->o, Ho = so[1], Wo = so[2];
    const int64_t S = op->stride, SS = S * S;
    int64_t hph, wph;
    phase_geom(S, Ho, Wo, &hph, &wph);
    const int64_t plane = hph * wph, total = N * plane;
    const size_t need = gather_scratch(net, op, N);
    SAL_REQUIRE(need <= net->p.scratch_n, FN, "gather scratch: %zu floats needed, %zu reserved", need,
                net->p.scratch_n);
    float *P = net->p.scratch;
    phase_planes(P, x, C, N, H, W, S, hph, wph, need);
    /* source offsets of this op's pairs for batch N */
    int64_t *src = net->src + op->ioff;
    for (int64_t k = 0; k < op->npair; k++) {
        const int32_t *r = net->pairs + 4 * (op->ioff + k);
        const int64_t ey = 1 + r[2], ex = 1 + r[3];
        src[k] = (r[1] * SS + (ey % S) * S + ex % S) * block_stride(total) + (ey / S) * wph + ex / S;
    }
    const int64_t *rp = net->rowptr + net->row_at[opi];
    const float *w = weights + op->p0, *bias = op->p1 >= 0 ? weights + op->p1 : NULL;
    const gather_kernel k = pick_gather();
    const int64_t ntiles = (total + k.tile - 1) / k.tile;
    const int relu = (int)op->relu, res_post = (int)op->res_post;
    /* tiles per block: the block's phase-plane reads (C*S*S planes of T + 2 Wph + 2
     * floats per tile) near 64 KiB, which measured fastest on a 32 KiB-L1 AVX2 core */
    int64_t gb = 65536 / (C * SS * (k.tile + 2 * wph + 2) * (int64_t)sizeof(float));
    gb = gb < 1 ? 1 : gb > GB ? GB : gb;
    gather_task gt = {y, P, res, src, rp, w, bias, N, O, Ho, Wo, hph, wph, gb, relu, res_post};
    sal_parallel_for(ntiles, sal_threads(), k.run, &gt);
    return SAL_OK;
}

typedef struct {
    float *y;
    const float *in;
    const int32_t *sh;
    int64_t n, H, W, Ho, Wo, S;
} shift_task;

/* SHIFT op: idx in [0, Co * n): output channel c = idx / n, image ni = idx % n */
static void shift_planes_run(void *p, int64_t lo, int64_t hi, int tid) {
    const shift_task *t = p;
    float *y = t->y;
    const float *in = t->in;
    const int32_t *sh = t->sh;
    const int64_t n = t->n, H = t->H, W = t->W, Ho = t->Ho, Wo = t->Wo, S = t->S;
    for (int64_t idx = lo; idx < hi; idx++) {
        const int64_t c = idx / n, ni = idx % n;
        sal_shift_plane(y + (c * n + ni) * Ho * Wo, in + (sh[3 * c] * n + ni) * H * W,
                        sal_clamp_offset(sh[3 * c + 1], S, H, Ho),
                        sal_clamp_offset(sh[3 * c + 2], S, W, Wo), S, H, W, Ho, Wo);
    }
}

static sal_status forward_locked(sal_infer *net, float *logits, const float *x, sal_act xg,
                                 const float *weights);

sal_status sal_infer_forward(sal_infer *net, float *logits, const float *x, sal_act xg,
                             const float *weights) {
    SAL_REQUIRE(net, FN, "net must not be NULL");
    SAL_TRY(sal_program_enter(&net->p, "forward"));
    const sal_status s = forward_locked(net, logits, x, xg, weights);
    sal_program_leave(&net->p);
    return s;
}

static sal_status run_ops(sal_infer *net, float *logits, const float *weights, int64_t n);

static sal_status forward_locked(sal_infer *net, float *logits, const float *x, sal_act xg,
                                 const float *weights) {
    SAL_REQUIRE(net && logits && x, FN, "net, logits and x must not be NULL");
    SAL_REQUIRE(weights || net->p.narena == 0, FN, "weights=NULL: the net has %lld weights",
                (long long)net->p.narena);
    SAL_TRY(sal_program_start(&net->p, x, xg, net->nops, op_scratch, net));
    const int64_t n = xg.n;
    const int serial = net->macs < SERIAL_MACS / n ? sal_serial_begin() : -1;
    const sal_status s = run_ops(net, logits, weights, n);
    if (serial >= 0) sal_serial_end(serial);
    if (s == SAL_OK) net->p.n = n;
    return s;
}

static sal_status run_ops(sal_infer *net, float *logits, const float *weights, int64_t n) {
    float **act = net->p.act;
    for (int64_t i = 0; i < net->nops; i++) {
        const sal_iop *op = &net->ops[i];
        const sal_act xa = buf_act(net, op->in, n);
        const float *in = act[op->in];
        float *y = act[op->out];
        const float *res = op->res >= 0 ? act[op->res] : NULL;
        const int last = i == net->nops - 1;
        switch (op->kind) {
        case SAL_IOP_CONV: {
            sal_conv_desc d = {xa, op->o, op->k, op->stride, op->pad, net->p.threads};
            SAL_TRY(sal_conv_fwd(y, in, weights + op->p0, &d, net->p.scratch));
            epi_planes(y, op->o, buf_numel(net, op->out, n) / op->o,
                       op->p1 >= 0 ? weights + op->p1 : NULL, res, (int)op->relu, (int)op->res_post);
            break;
        }
        case SAL_IOP_GATHER:
            SAL_TRY(gather_fwd(net, i, y, in, res, weights, n));
            break;
        case SAL_IOP_SHIFT: {
            const int64_t *so = net->p.shapes + 3 * op->out;
            const int64_t Co = so[0], H = xa.h, W = xa.w, Ho = so[1], Wo = so[2], S = op->stride;
            shift_task st = {y, in, net->shifts + 3 * op->ioff, n, H, W, Ho, Wo, S};
            sal_parallel_for(Co * n, sal_threads(), shift_planes_run, &st);
            break;
        }
        case SAL_IOP_ADD:
            SAL_TRY(sal_add_fwd(y, in, res, xa));
            if (op->relu) SAL_TRY(sal_relu_fwd(y, y, xa));
            break;
        case SAL_IOP_POOL:
            SAL_TRY(sal_gap_fwd(last ? logits : y, in, xa));
            break;
        case SAL_IOP_LINEAR:
            SAL_TRY(sal_linear_fwd(last ? logits : y, in, weights + op->p0, weights + op->p1, n,
                                   xa.c, op->o));
            break;
        }
    }
    return SAL_OK;
}

int64_t sal_infer_output_width(const sal_infer *net) {
    return buf_numel(net, net->ops[net->nops - 1].out, 1);
}

int64_t sal_infer_num_weights(const sal_infer *net) { return net->p.narena; }
int64_t sal_infer_num_ops(const sal_infer *net) { return net->nops; }

sal_status sal_infer_buffer(const sal_infer *net, int64_t b, const float **act, sal_act *geom) {
    SAL_REQUIRE(net, FN, "net, act, geom must not be NULL");
    return sal_program_buffer(&net->p, b, act, geom);
}

void sal_infer_program(const sal_infer *net, const int64_t **shapes, int64_t *nbuf,
                       const sal_iop **ops, int64_t *nops) {
    if (shapes) *shapes = net->p.shapes;
    if (nbuf) *nbuf = net->p.nbuf;
    if (ops) *ops = net->ops;
    if (nops) *nops = net->nops;
}

/* ---- naive reference --------------------------------------------------------------- */
sal_status sal_ref_gather_fwd(float *y, const float *x, sal_act xa, int64_t o, int64_t stride,
                              const int32_t *pairs, const float *w, int64_t npair,
                              const float *bias) {
    const char *fn = "sal_ref_gather_fwd";
    SAL_TRY(sal_act_check(fn, "x", xa));
    SAL_REQUIRE(y && x && (npair == 0 || (pairs && w)), fn, "y, x, pairs and w must not be NULL");
    SAL_REQUIRE(o >= 1 && stride >= 1 && npair >= 0, fn, "O=%lld stride=%lld npair=%lld",
                (long long)o, (long long)stride, (long long)npair);
    const sal_act ya = {xa.n, o, (xa.h - 1) / stride + 1, (xa.w - 1) / stride + 1, xa.layout};
    const int64_t xsn = sal_act_sn(xa), xsc = sal_act_sc(xa), ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);
    for (int64_t n = 0; n < ya.n; n++)
        for (int64_t oc = 0; oc < o; oc++)
            for (int64_t Y = 0; Y < ya.h; Y++)
                for (int64_t X = 0; X < ya.w; X++)
                    y[n * ysn + oc * ysc + Y * ya.w + X] = bias ? bias[oc] : 0.0f;
    for (int64_t k = 0; k < npair; k++) {
        const int32_t *r = pairs + 4 * k;
        SAL_REQUIRE(r[0] >= 0 && r[0] < o && r[1] >= 0 && r[1] < xa.c, fn,
                    "pair %lld: (o, i) = (%d, %d) out of range", (long long)k, r[0], r[1]);
        for (int64_t n = 0; n < ya.n; n++)
            for (int64_t Y = 0; Y < ya.h; Y++)
                for (int64_t X = 0; X < ya.w; X++) {
                    const int64_t iy = stride * Y + r[2], ix = stride * X + r[3];
                    if (iy < 0 || iy >= xa.h || ix < 0 || ix >= xa.w) continue;
                    y[n * ysn + r[0] * ysc + Y * ya.w + X] +=
                        w[k] * x[n * xsn + r[1] * xsc + iy * xa.w + ix];
                }
    }
    return SAL_OK;
}
