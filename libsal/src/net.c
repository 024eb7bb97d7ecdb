/* The network program (sal/net.h): one op type, one validator, one executor with a
 * forward and a backward switch.  Buffers and scratch: internal/program.c; the kernels:
 * one file per layer family (conv.c, sal.c, gather.c, shift.c, active_shift.c, bn.c, ...).
 * All activations are channel-major (CNHW). */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal/epilogue.h"
#include "internal/layers_internal.h"
#include "internal/program.h"
#include "sal/active_shift.h"
#include "sal/attention.h"
#include "sal/conv.h"
#include "sal/gather.h"
#include "sal/layers.h"
#include "sal/net.h"
#include "sal/shift.h"
#include "sal/shiftconv.h"
#include "sal/taps.h"

struct sal_net {
    sal_program p;      /* shapes, activations (act), scratch, batch sizes; arena = params */
    int64_t nops, nshift, npairs, nbuffers;
    sal_op *ops;
    int32_t *shifts;    /* (nshift, 3) rows (src, dy, dx) */
    int32_t *pairs;     /* (npairs, 4) rows (o, i, dy, dx) */
    int64_t macs;       /* per image (sal_net_macs) */
    int64_t untrainable;/* the first op backward cannot run, -1: none */
    int train, hard;    /* mode of the last forward */
    double beta;
    const float *buffers;       /* buffer arena of the last forward (SAL masks for backward) */
    /* Activation gradients share slots: buffer b's gradient lives from the backward of its
     * last reader (op gborn[b], where it is zeroed; nops: before the first op) to that of
     * its writer, and a slot holds one live gradient at a time (plan_grads). */
    int64_t *gslot;             /* per buffer: its gradient's slot, -1: none (the input) */
    int64_t *gborn;             /* per buffer: the op before whose backward it is zeroed */
    int64_t nslot;
    int64_t *slot_len;          /* per slot: floats per sample */
    float **slot;               /* per slot, p.cap * slot_len floats, made by backward */
    float **grad;               /* per buffer: its slot during a backward */
    /* Gradients hosted in dead activations (plan_grads): a gradient born when activations
     * no later backward reads span enough of the whole-batch storage (program.h store)
     * lives there instead of in a slot: ghost[b], its offset in floats per sample (-1: a
     * slot).  A backward that hosted any sets clobbered: another backward or sal_net_buffer
     * before the next forward first recomputes the activations (restore). */
    int64_t *ghost;
    int clobbered;
    int64_t grad_cap;           /* batch size the slots are allocated for */
    float *stats;               /* per op: save_mean, save_invstd (2 C) for BN ops, and the
                                   (dm, scale) pairs (2 C) of a replayed one */
    int64_t *stat_off;          /* per op offset into stats, -1 if none */
    double *moments;            /* (2 C, the most of any BN) a training CONV's output moments,
                                   for the BN right after it (conv_feeds_moments) */
    /* Replayed BN outputs: a BN + ReLU output is not kept between forward and backward
     * when backward can recompute it, bit for bit (sal_bn_replay), from the BN's input, its
     * residual and the (dm, scale) the forward applied, just before the first backward that
     * reads it.  Two shared allocations (plan_sharing): slot 0 holds the outputs without a
     * residual (a block's first BN + ReLU), slot 1 those with one (a block's output); in
     * each, the op ranges [writer, last reader] of its buffers are disjoint, so a slot
     * holds at most the one buffer that forward and backward of any op need from it.
     * About 40 % of a ResNet's stored activations. */
    int64_t *replay;            /* per buffer: the BN op that writes it if replayed, else -1 */
    int64_t live[2];            /* per slot, the replayed buffer it holds, -1: none */
    /* Checkpointed segments (sal_net_set_checkpoints): per op its segment, -1: none; a
     * segment's ops [seg_lo[s], seg_hi[s]); the buffers only a segment writes and reads
     * share one allocation with every other segment's (laid out per segment), and backward
     * runs a segment's forward again (its BN with the first run's statistics) before its ops'
     * backward.  Every BN saves the (dm, scale) it applied for that. */
    int64_t *seg, *seg_lo, *seg_hi, nseg;
    /* Evaluation forwards run every 1x1 CONV without padding as a shifted-row GEMM
     * (sal/shiftconv.h) with its epilogue fused, and fold into it the SHIFT that writes its
     * input when no other op reads that: the SHIFT is then skipped (its buffer not written).
     * Per op: the input the GEMM reads, its rows (offset into sc_rows), stride, and whether
     * the op is a skipped SHIFT.  Training forwards run the ops as written (backward needs
     * the SHIFT's output). */
    struct sc_op {
        int64_t in, r, stride, rows;   /* rows < 0: not a shifted-row GEMM */
        int skip;
    } *sc;
    int32_t *sc_rows;
    int64_t nstats;             /* floats of stats */
    /* Streams (sal/net.h): chunk setting (-1 auto, 0 never, k >= 1 always k images); the
     * last forward was streamed (its whole-batch activations not written: backward and
     * sal_net_buffer run the whole-batch forward first, from kept_x, the input of that
     * forward, with its arenas); stream_n its batch. */
    int64_t stream_mode, stream_n;
    /* A batch smaller than the threads (forward_streams): whether its one stream's ops use
     * all the threads (wide) or one, decided by timing (wide_made = p.frames_made: the
     * set of frames it was measured for): every such forward is timed, each way keeps its
     * last WIDE_WINDOW times (wide_win, seconds; wide_n[k] forwards of way k so far), and
     * the way whose fastest kept time is smaller runs (wide_pick, the threads per op);
     * the first 2 * WIDE_TRIALS forwards alternate, then every WIDE_EXPLORE-th runs the
     * other way.  Both give the same logits bit for bit. */
    int64_t wide_made, wide_count, wide_n[2];
    double wide_win[2][4];      /* WIDE_WINDOW <= 4 of them per way */
    int wide_pick;
    int streamed;
    float *kept_x;
    size_t kept_cap;            /* floats kept_x holds */
    sal_act kept_g;
    const float *fwd_params;
    /* sal_net_profile: per thread of the forward (SAL_MAX_THREADS rows of nops), the thread
     * CPU seconds each op took, summed over forwards; NULL: off */
    double *prof;
    /* The GATHER plans of the stream frames (sal/taps.h sal_taps_gather_fwd_plan): per op
     * its offset in a frame's extra floats after the BN statistics (-1: not a GATHER), for
     * chunks of up to plan_cap images, plan_total floats in all;
     * per frame and op whether the plan is built and for which chunk size (built once per
     * set of frames, plan_made = p.frames_made; a built plan takes the weights of each call
     * afresh). */
    int64_t *plan_off, plan_cap, plan_total, plan_made;
    int *plan_built;
    int64_t *plan_n;
    int plan_frames;
};

/* Where an op runs: the activations and scratch of a frame (program.h: the whole batch,
 * or one stream's chunk), the BN statistics it writes, the thread count of its kernels;
 * whole: the whole-batch frame (the replayed BN outputs it leaves are tracked in net->live) */
typedef struct {
    float **act, *scratch, *stats;
    int threads, whole;
    float *plan;            /* a stream frame's GATHER plans (plan_off), NULL: none */
    int *built;             /* per op (nops) */
    int64_t *built_n;
} run_ctx;

static const char *FN = "sal_net";

static const char *const OP_FIELDS[] = {"kind", "in", "out", "res", "relu", "res_post", "o", "k",
                                        "stride", "pad", "p0", "p1", "b0", "b1", "shared", "ioff",
                                        "npair", "index_bits"};
_Static_assert(sizeof OP_FIELDS / sizeof *OP_FIELDS == sizeof(sal_op) / sizeof(int64_t),
               "OP_FIELDS names every field of sal_op");
static const char *const OP_KINDS[] = {
    [SAL_OP_CONV] = "conv", [SAL_OP_SAL] = "sal", [SAL_OP_GATHER] = "gather",
    [SAL_OP_SHIFT] = "shift", [SAL_OP_ASHIFT] = "ashift", [SAL_OP_BN] = "bn",
    [SAL_OP_ADD] = "add", [SAL_OP_POOL] = "pool", [SAL_OP_LINEAR] = "linear"};
#define NKINDS ((int64_t)(sizeof OP_KINDS / sizeof *OP_KINDS))

const char *const *sal_net_op_fields(int64_t *n) { return SAL_NAMES(OP_FIELDS, n); }
const char *const *sal_net_op_kinds(int64_t *n) { return SAL_NAMES(OP_KINDS, n); }

static const char *kind_name(int64_t kind) {
    return kind >= 0 && kind < NKINDS ? OP_KINDS[kind] : "unknown";
}

/* ---- descriptors of an op's kernel for batch n ------------------------------------ */
static sal_act act_of(const int64_t *s, int64_t n) { return (sal_act){n, s[0], s[1], s[2], SAL_CNHW}; }

static sal_conv_desc conv_desc(const sal_op *op, const int64_t *si, int64_t n, int threads) {
    return (sal_conv_desc){.x = act_of(si, n), .o = op->o, .k = op->k, .stride = op->stride,
                           .pad = op->pad, .threads = threads};
}

/* the SAL mask of op (b0 >= 0: buffers[b0 ..]) in the buffer arena of the forward */
static sal_sal_desc sal_desc(const sal_op *op, const int64_t *si, int64_t n, int threads,
                             const float *buffers, int hard, double beta, double *moments) {
    return (sal_sal_desc){.x = act_of(si, n), .o = op->o, .stride = op->stride, .pad = op->pad,
                          .shared = (int)op->shared, .hard = hard, .beta = beta,
                          .mask = op->b0 >= 0 && buffers ? buffers + op->b0 : NULL,
                          .threads = threads,
                          .tap_threshold = op->b1 >= 0 && buffers ? buffers[op->b1] : 0.0,
                          .moments = moments};
}

static sal_gather_desc gather_desc(const sal_net *net, const sal_op *op, const int64_t *si,
                                   int64_t n, int threads) {
    return (sal_gather_desc){.x = act_of(si, n), .o = op->o, .stride = op->stride,
                             .pairs = op->npair ? net->pairs + 4 * op->ioff : NULL,
                             .npair = op->npair, .threads = threads};
}

/* ---- shapes --------------------------------------------------------------------------- */
/* The per-sample output shape want of op i from its input's si (cout: the out buffer's
 * channel count, which a SHIFT chooses): the one place that knows each kind's size rule. */
static sal_status op_shape(int64_t i, const sal_op *op, const int64_t *si, int64_t cout,
                           int64_t want[3]) {
    const sal_act x = act_of(si, 1);
    sal_act y = x;
    switch (op->kind) {
    case SAL_OP_CONV: {
        const sal_conv_desc d = conv_desc(op, si, 1, 0);
        SAL_TRY(sal_conv_check(&d, &y));
        break;
    }
    case SAL_OP_SAL: {
        const sal_sal_desc d = sal_desc(op, si, 1, 0, NULL, 0, 1.0, NULL);
        SAL_TRY(sal_sal_check(&d, &y));
        break;
    }
    case SAL_OP_GATHER: {
        const sal_gather_desc d = {.x = x, .o = op->o, .stride = op->stride};
        SAL_TRY(sal_gather_check(&d, &y));
        break;
    }
    case SAL_OP_SHIFT:
    case SAL_OP_ASHIFT: {
        const sal_shift_desc d = {x, op->stride};
        SAL_TRY(sal_shift_check(&d, &y));
        if (op->kind == SAL_OP_SHIFT) y.c = cout;
        break;
    }
    case SAL_OP_BN:
    case SAL_OP_ADD:
        break;
    case SAL_OP_POOL:
        y.h = y.w = 1;
        break;
    case SAL_OP_LINEAR:
        SAL_REQUIRE(si[1] == 1 && si[2] == 1 && op->o >= 1, FN,
                    "op %lld: linear input must be pooled (C, 1, 1), O >= 1", (long long)i);
        y.c = op->o, y.h = y.w = 1;
        break;
    default:
        return sal_fail(SAL_EINVAL, FN, "op %lld: kind=%lld: unknown op", (long long)i,
                        (long long)op->kind);
    }
    want[0] = y.c, want[1] = y.h, want[2] = y.w;
    return SAL_OK;
}

sal_status sal_net_shapes(int64_t *shapes, const int64_t in_chw[3], const int64_t *channels,
                          int64_t nbuf, const sal_op *ops, int64_t nops) {
    SAL_REQUIRE(shapes && in_chw && channels && ops, FN,
                "shapes, in_chw, channels and ops must not be NULL");
    SAL_REQUIRE(nbuf >= 2 && nops >= 1 && nbuf <= ((int64_t)1 << 40) && nops <= ((int64_t)1 << 40),
                FN, "nbuf=%lld nops=%lld: need >= 2 buffers and >= 1 op", (long long)nbuf,
                (long long)nops);
    SAL_REQUIRE(in_chw[0] == channels[0], FN, "input C=%lld: the program's input has %lld channels",
                (long long)in_chw[0], (long long)channels[0]);
    for (int64_t b = 0; b < nbuf; b++) shapes[3 * b] = -1;
    memcpy(shapes, in_chw, 3 * sizeof *shapes);
    for (int64_t i = 0; i < nops; i++) {
        const sal_op *op = &ops[i];
        SAL_REQUIRE(op->in >= 0 && op->in < nbuf && op->out > 0 && op->out < nbuf &&
                        shapes[3 * op->in] >= 0, FN,
                    "op %lld: in=%lld out=%lld: in must be a buffer written before, out another "
                    "one in [1, %lld)", (long long)i, (long long)op->in, (long long)op->out,
                    (long long)nbuf);
        int64_t want[3];
        SAL_TRY(op_shape(i, op, shapes + 3 * op->in, channels[op->out], want));
        SAL_REQUIRE(want[0] == channels[op->out], FN,
                    "op %lld (%s): makes %lld channels, buffer %lld has %lld", (long long)i,
                    kind_name(op->kind), (long long)want[0], (long long)op->out,
                    (long long)channels[op->out]);
        memcpy(shapes + 3 * op->out, want, sizeof want);
    }
    for (int64_t b = 0; b < nbuf; b++)
        SAL_REQUIRE(shapes[3 * b] >= 0, FN, "buffer %lld: no op writes it", (long long)b);
    return SAL_OK;
}

/* ---- validation ------------------------------------------------------------------------ */
/* [off, off + len) inside the buffer arena; -1 allowed when optional */
static sal_status buffer_span(const sal_net *net, int64_t i, const char *what, int64_t off,
                              int64_t len, int optional) {
    SAL_REQUIRE((optional && off == -1) || sal_span_ok(off, len, net->nbuffers), FN,
                "op %lld: %s at %lld: %lld floats%s must lie inside the buffer arena (%lld)",
                (long long)i, what, (long long)off, (long long)len,
                optional ? " (or -1: none)" : "", (long long)net->nbuffers);
    return SAL_OK;
}

/* Checks op i against the buffers, arenas and tables: every index in range, every output
 * shape the one its kernel produces, the epilogue fields where they apply.  Adds its MACs. */
static sal_status check_op(sal_net *net, int64_t i, const sal_op *op) {
    SAL_TRY(sal_program_check_io(&net->p, i, op->in, op->out, op->res));
    const int64_t k = op->kind;
    const int epi = k == SAL_OP_CONV || k == SAL_OP_GATHER;
    SAL_REQUIRE(op->relu == 0 || (op->relu == 1 && (epi || k == SAL_OP_BN || k == SAL_OP_ADD)),
                FN, "op %lld (%s): relu=%lld: must be 0, or 1 for conv, gather, bn and add",
                (long long)i, kind_name(k), (long long)op->relu);
    SAL_REQUIRE(op->res_post == 0 || (op->res_post == 1 && epi && op->res >= 0), FN,
                "op %lld (%s): res_post=%lld: must be 0, or 1 for a conv or gather with a residual",
                (long long)i, kind_name(k), (long long)op->res_post);
    SAL_REQUIRE(op->res < 0 || epi || k == SAL_OP_BN || k == SAL_OP_ADD, FN,
                "op %lld (%s): only conv, gather, bn and add take a residual", (long long)i,
                kind_name(k));
    SAL_REQUIRE(op->shared == 0 || (op->shared == 1 && k == SAL_OP_SAL), FN,
                "op %lld (%s): shared=%lld: must be 0, or 1 for a SAL op", (long long)i,
                kind_name(k), (long long)op->shared);
    const int64_t *si = net->p.shapes + 3 * op->in, *so = net->p.shapes + 3 * op->out;
    int64_t want[3], pw = 0, pb = 0;
    SAL_TRY(op_shape(i, op, si, so[0], want));
    const int64_t C = si[0], HWo = want[1] * want[2];
    int64_t macs = 0;
    switch (k) {
    case SAL_OP_CONV:
        SAL_TRY(sal_checked_prod(FN, "conv weights O*C*K*K", &pw, 4, op->o, C, op->k, op->k));
        pb = op->p1 == -1 ? 0 : op->o;
        macs = pw;
        break;
    case SAL_OP_SAL:
        SAL_TRY(sal_checked_prod(FN, "SAL weights O*C*9", &pw, 3, op->o, C, (int64_t)9));
        pb = (op->shared ? 1 : op->o) * C * 9;
        SAL_TRY(buffer_span(net, i, "the mask", op->b0, pb, 1));
        SAL_TRY(buffer_span(net, i, "the tap threshold", op->b1, 1, 1));
        macs = pw;
        break;
    case SAL_OP_GATHER: {
        SAL_REQUIRE(sal_span_ok(op->ioff, op->npair, net->npairs), FN,
                    "op %lld: ioff=%lld npair=%lld: outside the pair table (%lld rows)",
                    (long long)i, (long long)op->ioff, (long long)op->npair, (long long)net->npairs);
        const sal_gather_desc d = gather_desc(net, op, si, 1, 0);
        SAL_TRY(sal_gather_check(&d, NULL));
        /* p0 is the base of the pair weights even with no pairs: inside the arena */
        SAL_REQUIRE(sal_span_ok(op->p0, op->npair, net->p.narena), FN,
                    "op %lld: p0=%lld: %lld pair weights do not fit the arena (%lld)", (long long)i,
                    (long long)op->p0, (long long)op->npair, (long long)net->p.narena);
        pb = op->p1 == -1 ? 0 : op->o;
        macs = op->npair;
        break;
    }
    case SAL_OP_SHIFT:
        SAL_REQUIRE(op->index_bits >= 0 && op->index_bits <= 32, FN,
                    "op %lld: index_bits=%lld: must be in [0, 32]", (long long)i,
                    (long long)op->index_bits);
        SAL_REQUIRE(sal_span_ok(op->ioff, so[0], net->nshift), FN,
                    "op %lld: ioff=%lld: needs %lld shift rows of %lld", (long long)i,
                    (long long)op->ioff, (long long)so[0], (long long)net->nshift);
        for (int64_t c = 0; c < so[0]; c++) {
            const int32_t *r = net->shifts + 3 * (op->ioff + c);
            SAL_REQUIRE(r[0] >= 0 && r[0] < C, FN,
                        "op %lld: shift row %lld: source channel %d not in [0, %lld)", (long long)i,
                        (long long)(op->ioff + c), r[0], (long long)C);
            if ((r[0] != c || so[0] != C) && net->untrainable < 0) net->untrainable = i;
        }
        break;
    case SAL_OP_ASHIFT:
        pw = 2 * C;
        break;
    case SAL_OP_BN:
        pw = pb = C;
        SAL_TRY(buffer_span(net, i, "the running mean", op->b0, C, 0));
        SAL_TRY(buffer_span(net, i, "the running variance", op->b1, C, 0));
        SAL_REQUIRE(op->res < 0 || op->relu, FN, "op %lld: BN with a residual needs relu=1",
                    (long long)i);
        break;
    case SAL_OP_ADD:
        SAL_REQUIRE(op->res >= 0, FN, "op %lld: add needs a res buffer", (long long)i);
        break;
    case SAL_OP_LINEAR:
        SAL_TRY(sal_checked_prod(FN, "linear weights O*I", &pw, 2, op->o, C));
        pb = op->o;
        macs = pw;
        break;
    default:   /* POOL */
        break;
    }
    if (net->untrainable < 0 &&
        (k == SAL_OP_GATHER || (k == SAL_OP_CONV && (op->p1 >= 0 || op->relu || op->res >= 0)) ||
         (k == SAL_OP_ADD && op->relu)))
        net->untrainable = i;
    if (macs) {
        SAL_TRY(sal_checked_prod(FN, "MACs per image", &macs, 2, macs, HWo));
        net->macs = macs > ((int64_t)1 << 62) - net->macs ? (int64_t)1 << 62 : net->macs + macs;
    }
    return sal_program_check_fit(&net->p, i, op->out, op->res, want, op->p0, pw, op->p1, pb);
}

/* Every buffer an op reads (its input, its residual) is the input or written by an earlier
 * op (sal_net_shapes' rule): otherwise a forward would read memory no op wrote, and the
 * whole-batch and streamed forwards (whose buffers share storage by liveness) would read
 * different garbage. */
static sal_status check_order(const sal_net *net) {
    char *written = calloc((size_t)net->p.nbuf, 1);
    if (!written) return sal_fail(SAL_ENOMEM, FN, "out of memory");
    written[0] = 1;
    sal_status s = SAL_OK;
    for (int64_t i = 0; i < net->nops && s == SAL_OK; i++) {
        const sal_op *op = &net->ops[i];
        const int64_t b = !written[op->in] ? op->in : op->res >= 0 && !written[op->res] ? op->res : -1;
        if (b >= 0)
            s = sal_fail(SAL_EINVAL, FN, "op %lld (%s): reads buffer %lld before any op writes it",
                         (long long)i, kind_name(op->kind), (long long)b);
        written[op->out] = 1;
    }
    free(written);
    return s;
}

/* ---- create / free ---------------------------------------------------------------------- */
static sal_status plan_grads(sal_net *net);

/* every reader of buffer b in [lo, hi) and its writer too */
static int inside(const sal_net *net, int64_t b, int64_t lo, int64_t hi) {
    for (int64_t j = 0; j < net->nops; j++) {
        const sal_op *op = &net->ops[j];
        if ((op->in == b || op->res == b || op->out == b) && (j < lo || j >= hi)) return 0;
    }
    return 1;
}

/* the last op that reads buffer b (-1: none) */
static int64_t last_reader(const sal_net *net, int64_t b) {
    int64_t last = -1;
    for (int64_t j = 0; j < net->nops; j++)
        if (net->ops[j].in == b || net->ops[j].res == b) last = j;
    return last;
}

/* replay slot of buffer b (replay[b] >= 0): 1 when its BN adds a residual */
static int replay_slot(const sal_net *net, int64_t b) {
    return net->ops[net->replay[b]].res >= 0;
}

/* Which buffers share an allocation, and where in it (program.h share, share_off):
 * - the buffers only a checkpointed segment writes and reads, laid out one after the other
 *   per segment, every segment from offset 0 of one allocation;
 * - the replayed BN outputs (see struct sal_net) outside segments, at offset 0 of one of
 *   two allocations: written by a BN + ReLU (op k) and by no other op, read after it only,
 *   by ops outside segments up to its last reader h; neither the BN's input nor its
 *   residual replayed (backward recomputes from them); taken in op order while [k, h] is
 *   disjoint from the ranges its slot took already.  Slot 0 (no residual) takes only
 *   outputs whose one reader is the next op, as a block's first BN + ReLU; slot 1 (with a
 *   residual) any reader range: a block's output whose residual source is kept, so every
 *   other block's output. */
static void plan_sharing(sal_net *net) {
    const int64_t nbuf = net->p.nbuf, nops = net->nops;
    int64_t seg_owner = -1, rep_owner[2] = {-1, -1}, taken[2] = {-1, -1};
    for (int64_t b = 0; b < nbuf; b++)
        net->replay[b] = -1, net->p.share[b] = b, net->p.share_off[b] = 0;
    for (int64_t s = 0; s < net->nseg; s++) {
        int64_t off = 0;
        for (int64_t i = net->seg_lo[s]; i < net->seg_hi[s]; i++) {
            const int64_t b = net->ops[i].out;
            if (b == net->ops[nops - 1].out || !inside(net, b, net->seg_lo[s], net->seg_hi[s]) ||
                net->p.share[b] != b)
                continue;
            if (seg_owner < 0) seg_owner = b;
            net->p.share[b] = seg_owner, net->p.share_off[b] = off;
            off += sal_program_span(&net->p, b);
        }
    }
    for (int64_t i = 0; i + 1 < nops; i++) {
        const sal_op *op = &net->ops[i];
        if (op->kind != SAL_OP_BN || !op->relu || op->out == op->res) continue;
        const int slot = op->res >= 0;
        const int64_t h = last_reader(net, op->out);
        if (h <= i || !inside(net, op->out, i, h + 1) || i <= taken[slot] ||
            (slot == 0 && h != i + 1) || net->replay[op->in] >= 0 ||
            (op->res >= 0 && net->replay[op->res] >= 0))
            continue;
        int outside = 0;   /* an op of a segment in the range, or another writer (one
                              outside the range fails inside()) */
        for (int64_t j = i; j <= h; j++)
            outside |= net->seg[j] >= 0 || (j != i && net->ops[j].out == op->out);
        if (outside) continue;
        net->replay[op->out] = i;
        taken[slot] = h;
        if (rep_owner[slot] < 0) rep_owner[slot] = op->out;
        net->p.share[op->out] = rep_owner[slot];
    }
    net->live[0] = net->live[1] = -1;
}

/* The shifted-row GEMMs of evaluation forwards (see struct sal_net): every 1x1 CONV without
 * padding reads rows (c, 0, 0) of its input, or, when its input is written by a SHIFT (only
 * there) and read by it alone, the SHIFT's rows over the SHIFT's input with the strides
 * multiplied. */
static sal_status plan_shiftconv(sal_net *net) {
    const int64_t nb = net->p.nbuf, nops = net->nops;
    int64_t *reads = calloc((size_t)nb, sizeof *reads);
    int64_t *writer = malloc((size_t)nb * sizeof *writer);
    net->sc = malloc((size_t)nops * sizeof *net->sc);
    if (!reads || !writer || !net->sc) {
        free(reads), free(writer);
        return sal_fail(SAL_ENOMEM, FN, "out of memory");
    }
    for (int64_t b = 0; b < nb; b++) writer[b] = -1;
    for (int64_t i = 0; i < nops; i++) {
        const sal_op *op = &net->ops[i];
        reads[op->in]++;
        if (op->res >= 0) reads[op->res]++;
        writer[op->out] = writer[op->out] == -1 ? i : -2;    /* -2: written twice */
        net->sc[i] = (struct sc_op){-1, 0, 0, -1, 0};
    }
    int64_t nrows = 0;
    for (int pass = 0; pass < 2; pass++) {    /* count the rows, then fill them */
        nrows = 0;
        for (int64_t j = 0; j < nops; j++) {
            const sal_op *op = &net->ops[j];
            if (op->kind != SAL_OP_CONV || op->k != 1 || op->pad != 0) continue;
            const int64_t i = writer[op->in];
            int64_t stride = op->stride;
            const int fold = i >= 0 && i < j && net->ops[i].kind == SAL_OP_SHIFT &&
                             reads[op->in] == 1 &&
                             !__builtin_mul_overflow(net->ops[i].stride, op->stride, &stride);
            const int64_t C = net->p.shapes[3 * op->in];
            if (pass == 1) {
                net->sc[j] = (struct sc_op){fold ? net->ops[i].in : op->in, C, stride, nrows, 0};
                for (int64_t c = 0; c < C; c++) {
                    int32_t *r = net->sc_rows + 3 * (nrows + c);
                    if (fold) memcpy(r, net->shifts + 3 * (net->ops[i].ioff + c), 3 * sizeof *r);
                    else r[0] = (int32_t)c, r[1] = r[2] = 0;
                }
                if (fold) net->sc[i].skip = 1;
            }
            nrows += C;
        }
        if (pass == 0 &&
            !(net->sc_rows = malloc((size_t)(nrows ? nrows : 1) * 3 * sizeof *net->sc_rows))) {
            free(reads), free(writer);
            return sal_fail(SAL_ENOMEM, FN, "out of memory");
        }
    }
    free(reads), free(writer);
    return SAL_OK;
}

/* The sharing of the stream frames (program.h fshare): in an evaluation forward a buffer
 * lives from the op that writes it to the last op that reads it (the GEMMs read their
 * folded SHIFT's input; a skipped SHIFT neither reads nor writes), the input from the
 * start and the logits to the end; every buffer gets an offset (floats per image) in one
 * allocation, first fit, so that buffers whose lives overlap never overlap in memory (a
 * buffer is placed before the buffers its writer reads are released).  A chunk's frame is
 * then a few buffers' worth, not the whole network's.  A program that writes a buffer
 * twice keeps one allocation per buffer. */
static sal_status plan_streams(sal_net *net) {
    sal_program *p = &net->p;
    const int64_t nb = p->nbuf, nops = net->nops;
    int64_t *born = malloc((size_t)nb * sizeof *born), *dies = malloc((size_t)nb * sizeof *dies);
    int64_t *live = malloc((size_t)nb * sizeof *live);    /* the live buffers, by offset */
    if (!born || !dies || !live) {
        free(born), free(dies), free(live);
        return sal_fail(SAL_ENOMEM, FN, "out of memory");
    }
    int ssa = 1;
    for (int64_t b = 0; b < nb; b++) born[b] = b == 0 ? -1 : nops, dies[b] = -1;
    for (int64_t i = 0; i < nops; i++) {
        const sal_op *op = &net->ops[i];
        if (op->kind == SAL_OP_SHIFT && net->sc[i].skip) continue;
        const int64_t in = net->sc[i].rows >= 0 ? net->sc[i].in : op->in;
        if (dies[in] < i) dies[in] = i;
        if (op->res >= 0 && dies[op->res] < i) dies[op->res] = i;
        if (born[op->out] != nops) ssa = 0;
        born[op->out] = i;
        if (dies[op->out] < i) dies[op->out] = i;
    }
    dies[net->ops[nops - 1].out] = nops;
    for (int64_t b = 0; b < nb; b++) {
        p->fshare[b] = b, p->fshare_off[b] = 0;
        if (born[b] < nops && born[b] > dies[b]) ssa = 0;   /* read before it is written */
    }
    if (ssa) {
        int64_t nlive = 0;
        for (int64_t i = -1; i < nops; i++) {
            for (int64_t b = 0; b < nb; b++) {                  /* births at op i */
                if (born[b] != i) continue;
                const int64_t len = sal_program_span(p, b);
                int64_t off = 0, at = 0;                        /* first gap that fits */
                for (; at < nlive; at++) {
                    const int64_t o = live[at];
                    if (p->fshare_off[o] - off >= len) break;
                    const int64_t end = p->fshare_off[o] + sal_program_span(p, o);
                    if (end > off) off = end;
                }
                memmove(live + at + 1, live + at, (size_t)(nlive - at) * sizeof *live);
                live[at] = b, nlive++;
                p->fshare[b] = 0, p->fshare_off[b] = off;
            }
            int64_t k = 0;                                      /* deaths after op i */
            for (int64_t a = 0; a < nlive; a++)
                if (dies[live[a]] > i) live[k++] = live[a];
            nlive = k;
        }
        for (int64_t b = 0; b < nb; b++)                        /* never born: unused */
            if (born[b] == nops && b != 0) p->fshare[b] = 0, p->fshare_off[b] = 0;
        /* the owner of the one allocation is buffer 0, at offset 0 or not: frame_make
         * sizes it to the furthest end */
    }
    free(born), free(dies), free(live);
    return SAL_OK;
}

static sal_shiftconv_desc sc_desc(const sal_net *net, int64_t i, int64_t n, int threads) {
    const struct sc_op *c = &net->sc[i];
    return (sal_shiftconv_desc){.x = act_of(net->p.shapes + 3 * c->in, n), .o = net->ops[i].o,
                                .r = c->r, .rows = net->sc_rows + 3 * c->rows,
                                .stride = c->stride, .threads = threads};
}

/* the replayed buffer b (replay[b] >= 0) recomputed into its slot's allocation, unless it
 * holds b already */
static sal_status replay_buffer(sal_net *net, int64_t b, const float *params, int64_t n) {
    if (b < 0 || net->replay[b] < 0) return SAL_OK;
    const int slot = replay_slot(net, b);
    if (net->live[slot] == b) return SAL_OK;
    const int64_t k = net->replay[b];
    const sal_op *bn = &net->ops[k];
    const sal_act xa = act_of(net->p.shapes + 3 * bn->in, n);
    const sal_bn_desc d = {xa, net->train, SAL_BN_MOMENTUM, SAL_BN_EPS, 0, NULL};
    SAL_TRY(sal_bn_replay(net->p.act[b], net->p.act[bn->in],
                          net->stats + net->stat_off[k] + 2 * xa.c, params + bn->p1,
                          bn->res >= 0 ? net->p.act[bn->res] : NULL, 1, &d));
    net->live[slot] = b;
    return SAL_OK;
}

void sal_net_free(sal_net *net) {
    if (!net) return;
    if (net->slot)
        for (int64_t s = 0; s < net->nslot; s++) free(net->slot[s]);
    sal_program_free(&net->p);
    free(net->ops);
    free(net->shifts);
    free(net->pairs);
    free(net->grad);
    free(net->gslot);
    free(net->ghost);
    free(net->gborn);
    free(net->slot_len);
    free(net->slot);
    free(net->stats);
    free(net->moments);
    free(net->stat_off);
    free(net->replay);
    free(net->seg);
    free(net->seg_lo);
    free(net->seg_hi);
    free(net->sc);
    free(net->sc_rows);
    free(net->kept_x);
    free(net->prof);
    free(net->plan_off);
    free(net->plan_built);
    free(net->plan_n);
    free(net);
}

sal_status sal_net_create(sal_net **out, const int64_t *shapes, int64_t nbuf, const sal_op *ops,
                          int64_t nops, const int32_t *shifts, int64_t nshift, const int32_t *pairs,
                          int64_t npairs, int64_t nparams, int64_t nbuffers) {
    SAL_REQUIRE(out && shapes && ops, FN, "net, shapes and ops must not be NULL");
    *out = NULL;
    SAL_REQUIRE(nshift >= 0 && nshift <= ((int64_t)1 << 40) && (nshift == 0 || shifts), FN,
                "nshift=%lld: must be in [0, 2**40] with the shift rows given", (long long)nshift);
    SAL_REQUIRE(npairs >= 0 && npairs <= ((int64_t)1 << 40) && (npairs == 0 || pairs), FN,
                "npairs=%lld: must be in [0, 2**40] with the pairs given", (long long)npairs);
    SAL_REQUIRE(nparams >= 0 && nbuffers >= 0, FN, "nparams=%lld nbuffers=%lld: must be >= 0",
                (long long)nparams, (long long)nbuffers);
    sal_net *net = calloc(1, sizeof *net);
    if (!net) return sal_fail(SAL_ENOMEM, FN, "out of memory");
    net->nops = nops, net->nshift = nshift, net->npairs = npairs, net->nbuffers = nbuffers;
    net->untrainable = -1;
    net->stream_mode = -1;
    sal_status s = sal_program_init(&net->p, FN, "parameters", shapes, nbuf, nops, nparams);
    if (s == SAL_OK) {
        net->ops = malloc((size_t)nops * sizeof *net->ops);
        net->shifts = malloc((size_t)(nshift ? nshift : 1) * 3 * sizeof *net->shifts);
        net->pairs = malloc((size_t)(npairs ? npairs : 1) * 4 * sizeof *net->pairs);
        net->grad = calloc((size_t)nbuf, sizeof *net->grad);
        net->gslot = malloc((size_t)nbuf * sizeof *net->gslot);
        net->ghost = malloc((size_t)nbuf * sizeof *net->ghost);
        net->gborn = malloc((size_t)nbuf * sizeof *net->gborn);
        net->slot_len = calloc((size_t)nbuf, sizeof *net->slot_len);
        net->slot = calloc((size_t)nbuf, sizeof *net->slot);
        net->stat_off = malloc((size_t)nops * sizeof *net->stat_off);
        net->replay = malloc((size_t)nbuf * sizeof *net->replay);
        net->seg = malloc((size_t)nops * sizeof *net->seg);
        if (!net->ops || !net->shifts || !net->pairs || !net->grad || !net->gslot || !net->ghost ||
            !net->gborn || !net->slot_len || !net->slot || !net->stat_off || !net->replay ||
            !net->seg)
            s = sal_fail(SAL_ENOMEM, FN, "out of memory");
    }
    if (s == SAL_OK) {
        memcpy(net->ops, ops, (size_t)nops * sizeof *ops);
        if (nshift) memcpy(net->shifts, shifts, (size_t)nshift * 3 * sizeof *shifts);
        if (npairs) memcpy(net->pairs, pairs, (size_t)npairs * 4 * sizeof *pairs);
    }
    for (int64_t i = 0; i < nops && s == SAL_OK; i++)
        s = check_op(net, i, &net->ops[i]);
    if (s == SAL_OK) s = check_order(net);
    int64_t nstats = 0, most_c = 1;   /* most_c: the widest BN, for net->moments */
    if (s == SAL_OK) {
        for (int64_t i = 0; i < nops; i++) {    /* mean, invstd and (dm, scale): 4 C per BN */
            const sal_op *op = &net->ops[i];
            net->seg[i] = -1;
            net->stat_off[i] = op->kind == SAL_OP_BN ? nstats : -1;
            if (op->kind != SAL_OP_BN) continue;
            nstats += 4 * net->p.shapes[3 * op->in];
            if (net->p.shapes[3 * op->in] > most_c) most_c = net->p.shapes[3 * op->in];
        }
        plan_sharing(net);
        s = plan_shiftconv(net);
    }
    if (s == SAL_OK) s = plan_streams(net);
    if (s == SAL_OK) {
        const int64_t *sl = shapes + 3 * net->ops[nops - 1].out;
        if (sl[1] != 1 || sl[2] != 1)
            s = sal_fail(SAL_EINVAL, FN, "the last op must produce (N, F) (a pool or a linear)");
    }
    net->nstats = nstats;
    if (s == SAL_OK && !(net->stats = malloc((size_t)(nstats ? nstats : 1) * sizeof *net->stats)))
        s = sal_fail(SAL_ENOMEM, FN, "out of memory");
    if (s == SAL_OK && !(net->moments = malloc((size_t)(2 * most_c) * sizeof *net->moments)))
        s = sal_fail(SAL_ENOMEM, FN, "out of memory");
    if (s == SAL_OK) s = plan_grads(net);
    if (s != SAL_OK) {
        sal_net_free(net);
        return s;
    }
    *out = net;
    return SAL_OK;
}

/* Where a gradient of len floats per sample can live before op i's backward (births)
 * in the whole-batch storage: the first offset at which [off, off + len) lies inside
 * storage no later backward reads (owners o with last[o] > i, each [boff[o], end[o]))
 * and overlaps no hosted gradient still alive (live[b]); -1: nowhere. */
static int64_t host_fit(const sal_net *net, int64_t i, int64_t len, const int64_t *boff,
                        const int64_t *end, const int64_t *last, const char *live) {
    const int64_t nbuf = net->p.nbuf;
    for (int64_t c = 0; c < nbuf; c++) {   /* candidate starts: dead storage, then ends of
                                              hosted gradients */
        for (int pass = 0; pass < 2; pass++) {
            int64_t at;
            if (pass == 0) {
                if (net->p.share[c] != c || last[c] <= i) continue;
                at = boff[c];
            } else {
                if (!live[c]) continue;
                at = net->ghost[c] + sal_program_span(&net->p, c);
            }
            int64_t covered = at, ok = 1;   /* dead storage runs on from `at` ... */
            for (int64_t o = 0; o < nbuf && covered < at + len; o++)
                if (net->p.share[o] == o && last[o] > i && boff[o] <= covered &&
                    end[o] > covered)
                    covered = end[o], o = -1;   /* restart: owners are not sorted */
            if (covered < at + len) continue;
            for (int64_t g = 0; g < nbuf && ok; g++)   /* ... and no live gradient there */
                if (live[g] && net->ghost[g] < at + len &&
                    at < net->ghost[g] + sal_program_span(&net->p, g))
                    ok = 0;
            if (ok) return at;
        }
    }
    return -1;
}

/* Assigns every activation gradient a place by replaying backward: before op i's backward
 * the gradients of its inputs are born (those whose last reader is op i), after it the
 * gradient of its output dies.  A birth goes into activations no later backward reads
 * when enough of them lie side by side (host_fit; not with checkpointed segments, whose
 * backward writes activations again), else takes a free slot (the smallest that is large
 * enough, else the largest, which grows) or a new one.  A buffer no op reads (the logits)
 * is born before the first op.  If some buffer is written by two ops, every gradient keeps
 * a slot of its own and is zeroed before the first op.  The activations of buffer b are
 * read last by the backward of op min{i : op i reads or writes b} (a replayed BN output's
 * sources, the BN's input and residual, are read by its replays, all in the backward of
 * that BN's op or of a later one). */
static sal_status plan_grads(sal_net *net) {
    const int64_t nbuf = net->p.nbuf, nops = net->nops;
    int64_t *writer = malloc((size_t)nbuf * sizeof *writer);
    int64_t *owner = malloc((size_t)nbuf * sizeof *owner);  /* slot -> live buffer, -1: free */
    int64_t *boff = malloc((size_t)nbuf * sizeof *boff), *end = malloc((size_t)nbuf * sizeof *end);
    int64_t *last = malloc((size_t)nbuf * sizeof *last);   /* owner -> its last reader */
    char *live = calloc((size_t)nbuf, 1);                   /* hosted and alive */
    if (!writer || !owner || !boff || !end || !last || !live) {
        free(writer), free(owner), free(boff), free(end), free(last), free(live);
        return sal_fail(SAL_ENOMEM, FN, "out of memory");
    }
    int ssa = 1;
    for (int64_t b = 0; b < nbuf; b++)
        writer[b] = -1, net->gborn[b] = nops, net->gslot[b] = -1, net->ghost[b] = -1;
    for (int64_t i = 0; i < nops; i++) {
        const sal_op *op = &net->ops[i];
        if (writer[op->out] >= 0) ssa = 0;
        writer[op->out] = i;
        net->gborn[op->in] = i;
        if (op->res >= 0) net->gborn[op->res] = i;
    }
    /* a buffer read before its writer (no valid program does that) is born at the writer,
     * so that its writer never reads a gradient no one zeroed; a buffer written twice
     * turns the sharing off (every gradient zeroed before the first op, as without it) */
    for (int64_t b = 0; b < nbuf; b++)
        if (!ssa) net->gborn[b] = nops;
        else if (writer[b] > net->gborn[b]) net->gborn[b] = writer[b];
    /* the storage layout, and when each owner's storage is last read */
    const int64_t total = sal_program_layout(&net->p, net->p.share, net->p.share_off, boff);
    for (int64_t o = 0; o < nbuf; o++) {
        end[o] = total, last[o] = nops;
        for (int64_t q = 0; q < nbuf; q++)
            if (net->p.share[q] == q && boff[q] > boff[o] && boff[q] < end[o]) end[o] = boff[q];
    }
    for (int64_t i = nops - 1; i >= 0; i--) {
        const sal_op *op = &net->ops[i];
        const int64_t touched[3] = {op->in, op->out, op->res};
        for (int k = 0; k < 3; k++)
            if (touched[k] >= 0) last[net->p.share[touched[k]]] = i;
    }
    const int host = ssa && net->nseg == 0;
    net->nslot = 0;
    for (int64_t s = 0; s < nbuf; s++) owner[s] = -1;
    for (int64_t i = nops; i >= 0; i--) {
        for (int64_t b = 1; b < nbuf; b++) {              /* births before op i */
            if (net->gborn[b] != i) continue;
            const int64_t len = sal_program_numel(&net->p, b, 1);
            const int64_t at = host ? host_fit(net, i, sal_program_span(&net->p, b), boff, end,
                                               last, live) : -1;
            if (at >= 0) {
                net->ghost[b] = at, live[b] = 1;
                continue;
            }
            int64_t fit = -1, big = -1;                   /* smallest >= len, largest */
            for (int64_t s = 0; s < net->nslot && ssa; s++) {
                if (owner[s] >= 0) continue;
                const int64_t l = net->slot_len[s];
                if (l >= len && (fit < 0 || l < net->slot_len[fit])) fit = s;
                if (big < 0 || l > net->slot_len[big]) big = s;
            }
            int64_t best = fit >= 0 ? fit : big;
            if (best < 0) best = net->nslot++;
            if (net->slot_len[best] < len) net->slot_len[best] = len;
            owner[best] = b, net->gslot[b] = best;
        }
        if (i < nops && ssa) {                            /* death after op i */
            const int64_t out = net->ops[i].out, sl = net->gslot[out];
            if (sl >= 0 && owner[sl] == out) owner[sl] = -1;
            live[out] = 0;
        }
    }
    free(writer), free(owner), free(boff), free(end), free(last), free(live);
    return SAL_OK;
}

static void free_grads(sal_net *net) {
    for (int64_t s = 0; s < net->nslot; s++) {
        free(net->slot[s]);
        net->slot[s] = NULL;
    }
    net->grad_cap = 0;
}

/* scratch floats of op i at batch n on `threads` threads (sal_program_scratch_fn) */
static size_t op_scratch(const void *owner, int64_t i, int64_t n, int threads) {
    const sal_net *net = owner;
    const sal_op *op = &net->ops[i];
    const int64_t *si = net->p.shapes + 3 * op->in;
    switch (op->kind) {
    case SAL_OP_CONV: {
        const sal_conv_desc d = conv_desc(op, si, n, threads);
        size_t need = sal_conv_scratch(&d);
        if (net->sc[i].rows >= 0) {       /* its evaluation forward's GEMM */
            const sal_shiftconv_desc g = sc_desc(net, i, n, threads);
            const size_t f = sal_shiftconv_scratch(&g);
            need = f > need ? f : need;
        }
        return need;
    }
    case SAL_OP_SAL: {
        const sal_sal_desc d = sal_desc(op, si, n, threads, NULL, 0, 1.0, NULL);
        return sal_sal_scratch(&d);
    }
    case SAL_OP_GATHER: {
        const sal_gather_desc d = gather_desc(net, op, si, n, threads);
        return sal_gather_scratch(&d);
    }
    default:
        return 0;
    }
}

/* ---- forward ------------------------------------------------------------------------- */
/* an evaluation forward of fewer MACs than this runs on the calling thread alone: waking
 * the pool's workers costs some 10-20 us per op, more than a batch-1 ResNet-20 op takes */
#define SERIAL_MACS ((int64_t)1 << 25)

/* Streams: the L2 cache a chunk's largest buffer may fill, and the most images a chunk
 * holds (sal/net.h "Streams"; bench/bench_streams.py measures the choice).  A quarter of
 * the 1 MiB L2 of a Zen 4 core: an op reads and writes about three such buffers (input,
 * output, residual).  At 512 KiB (8 images of a w=16 ResNet-20) batch 128 on 2 threads
 * took 20.3 ms for SAL unshared and 17.0 for shared; at 4 images 16.2 and 10.2 (1 thread:
 * 31.3 -> 31.2, 20.3 -> 19.2; CL 24.5 -> 24.0 on 2); ShiftResNet-20 e=6 (1 image either
 * way) is fastest at 1. */
#define STREAM_BYTES ((int64_t)256 << 10)
#define STREAM_MAX 16
/* A stream's GATHER runs on one thread, also when a batch smaller than the threads gives
 * one stream all of them (forward_streams): split over 2 threads at batch 1 (by rows of
 * the output, or by its channels with each thread copying the input) every GATHER of
 * SAL-ResNet-20 took longer than on one (32x32: 13 -> 17 us, 8x8: 13 -> 16 us), while the
 * shift + 1x1 GEMM's split gains 1.5x.  (Two cores writing parts of the same pages are a
 * suspect: 2-3x slower than separate buffers in one probe, full speed in another.) */
#define STREAM_GATHER_THREADS 1
/* Wide or one thread for a batch smaller than the threads (struct sal_net wide_*): wide
 * was 1.6x faster than one thread for ShiftResNet-20 at batch 1 on 2 threads in one
 * process and 1.3x slower in another, and which one wins changes within a process from
 * one second to the next (the two vCPUs of this VM share an L3 in some minutes and not in
 * others: bench/core_latency.c), so it is measured all the time in the process that runs
 * it.  A window of times, not one, because the first call after a pause of the process
 * takes about twice as long either way; the other way is tried every WIDE_EXPLORE-th
 * forward, which costs at most (slower - faster) / WIDE_EXPLORE per forward. */
#define WIDE_TRIALS 2
#define WIDE_WINDOW 3
#define WIDE_EXPLORE 16
_Static_assert(WIDE_WINDOW <= 4, "struct sal_net wide_win holds 4 times per way");

static sal_status forward_op(sal_net *net, const run_ctx *ctx, int64_t i, const float *params,
                             float *buffers, int64_t n, int again);

/* forward_op, its thread CPU time added to prof[i] when prof is not NULL (the whole-batch
 * forward: the calling thread's, its workers' not counted) */
static sal_status timed_op(sal_net *net, const run_ctx *ctx, int64_t i, const float *params,
                           float *buffers, int64_t n, double *prof) {
    if (!prof) return forward_op(net, ctx, i, params, buffers, n, 0);
    struct timespec a, b;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    const sal_status s = forward_op(net, ctx, i, params, buffers, n, 0);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    prof[i] += (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
    return s;
}

/* the whole-batch frame of the program */
static run_ctx whole_ctx(sal_net *net) {
    return (run_ctx){net->p.act, net->p.scratch, net->stats, net->p.threads, 1, NULL, NULL, NULL};
}

/* The whole-batch forward of x (N, C, H, W) NCHW: every op over the whole batch, its
 * activations kept (backward, sal_net_buffer).  Sets p.n on success. */
static sal_status forward_whole(sal_net *net, const float *x, sal_act xg, const float *params,
                                float *buffers) {
    net->live[0] = net->live[1] = -1;
    SAL_TRY(sal_program_start(&net->p, x, xg, net->nops, op_scratch, net));
    if (net->grad_cap != net->p.cap) free_grads(net);  /* backward makes them for p.cap */
    const int64_t n = xg.n;
    const int serial = !net->train && net->macs < SERIAL_MACS / n ? sal_serial_begin() : -1;
    const run_ctx ctx = whole_ctx(net);
    sal_status s = SAL_OK;
    for (int64_t i = 0; i < net->nops && s == SAL_OK; i++)
        s = timed_op(net, &ctx, i, params, buffers, n, net->prof);
    if (serial >= 0) sal_serial_end(serial);
    if (s == SAL_OK) net->p.n = n;
    return s;
}

/* The frames' capacity (*cap, images) and the images per chunk of a streamed evaluation
 * forward of batch n on nt threads; 0: the whole batch at once (sal/net.h "Streams"). */
static int64_t stream_chunk(const sal_net *net, int64_t n, int nt, int64_t *cap) {
    if (net->train || net->stream_mode == 0) return 0;
    int64_t c = net->stream_mode;
    if (c < 0) {
        int64_t big = 1;     /* the largest per-image buffer, floats */
        for (int64_t b = 0; b < net->p.nbuf; b++) {
            const int64_t v = sal_program_numel(&net->p, b, 1);
            if (v > big) big = v;
        }
        const int64_t fit = STREAM_BYTES / ((int64_t)sizeof(float) * big);
        c = fit < 1 ? 1 : fit > STREAM_MAX ? STREAM_MAX : fit;
    }
    *cap = c;
    if (net->stream_mode < 0 && nt > 1 && n < nt * c) c = (n + nt - 1) / nt;  /* every thread a chunk */
    return c < n ? c : n;
}

typedef struct {
    sal_net *net;
    const float *params, *x;
    float *buffers, *logits;
    int64_t n, c, nchunks, width;
    int op_threads;          /* > 0: the ops' threads instead of the frame's */
    atomic_llong next;       /* the next chunk to claim */
    atomic_int failed;       /* the first failure claims status and msg */
    sal_status status;
    char msg[512];
} stream_task;

/* thread tid: claims chunks (fixed boundaries, whatever thread runs them: the result does
 * not depend on the claiming order) and runs every op on each in its own frame */
static void stream_run(void *arg, int tid, int nt) {
    (void)nt;
    stream_task *t = arg;
    sal_net *net = t->net;
    const sal_frame *f = &net->p.frames[tid];
    const size_t row = (size_t)tid * (size_t)net->nops;
    const int threads = t->op_threads > 0 ? t->op_threads : f->threads;
    const run_ctx ctx = {f->act, f->scratch, f->extra, threads, 0, f->extra + net->nstats,
                         net->plan_built + row, net->plan_n + row};
    const int64_t last = net->ops[net->nops - 1].out;
    for (;;) {
        const int64_t k = atomic_fetch_add(&t->next, 1);
        if (k >= t->nchunks || atomic_load(&t->failed)) return;
        const int64_t n0 = k * t->c, n = t->n - n0 < t->c ? t->n - n0 : t->c;
        sal_program_load(&net->p, f, t->x, n0, n);
        sal_status s = SAL_OK;
        double *prof = net->prof ? net->prof + (size_t)tid * (size_t)net->nops : NULL;
        for (int64_t i = 0; i < net->nops && s == SAL_OK; i++)
            s = timed_op(net, &ctx, i, t->params, t->buffers, n, prof);
        if (s != SAL_OK) {
            int idle = 0;
            if (atomic_compare_exchange_strong(&t->failed, &idle, 1)) {
                t->status = s;
                snprintf(t->msg, sizeof t->msg, "%s", sal_last_error());
            }
            return;
        }
        /* the last buffer is (N, K) row-major (a pool or a linear) */
        memcpy(t->logits + n0 * t->width, f->act[last], (size_t)(n * t->width) * sizeof(float));
    }
}

/* The GATHER plans' places in the stream frames for chunks of up to cap images on nt
 * frames (net->plan_off, see struct sal_net) */
static sal_status plan_gathers(sal_net *net, int64_t cap, int nt) {
    if (net->plan_off && net->plan_cap == cap && net->plan_frames == nt) return SAL_OK;
    const size_t rows = (size_t)nt * (size_t)net->nops;
    int64_t *off = malloc((size_t)net->nops * sizeof *off);
    int *built = calloc(rows, sizeof *built);
    int64_t *bn = calloc(rows, sizeof *bn);
    if (!off || !built || !bn) {
        free(off), free(built), free(bn);
        return sal_fail(SAL_ENOMEM, FN, "out of memory");
    }
    int64_t total = 0;
    for (int64_t i = 0; i < net->nops; i++) {
        const sal_op *op = &net->ops[i];
        off[i] = -1;
        if (op->kind != SAL_OP_GATHER) continue;
        size_t big = 0;
        for (int64_t n = 1; n <= cap; n++) {
            const size_t f = sal_taps_gather_plan_floats(act_of(net->p.shapes + 3 * op->in, n),
                                                         op->o, op->stride, op->npair,
                                                         STREAM_GATHER_THREADS);
            if (f > big) big = f;
        }
        off[i] = total;
        total += (int64_t)(big + 15) / 16 * 16;   /* every plan on a cache line */
    }
    free(net->plan_off), free(net->plan_built), free(net->plan_n);
    net->plan_off = off, net->plan_built = built, net->plan_n = bn;
    net->plan_cap = cap, net->plan_total = total, net->plan_frames = nt;
    return SAL_OK;
}

/* The streamed forward: chunks of c images, each run through every op on one thread in
 * that thread's frame; x kept for a later whole-batch forward (backward, sal_net_buffer).
 * Fewer chunks than threads (a batch smaller than the threads: batch 1 on 2): one frame,
 * one stream on the calling thread, each op split over the nt threads by its kernel. */
static sal_status forward_streams(sal_net *net, float *logits, const float *x, sal_act xg,
                                  const float *params, float *buffers, int64_t c, int64_t cap,
                                  int nt) {
    const int64_t nchunks = (xg.n + c - 1) / c;
    int64_t numel;
    SAL_TRY(sal_act_check(FN, "x", xg));
    SAL_TRY(sal_checked_prod(FN, "x", &numel, 4, xg.n, xg.c, xg.h, xg.w));
    const int64_t *s0 = net->p.shapes;
    SAL_REQUIRE(xg.layout == SAL_NCHW && xg.c == s0[0] && xg.h == s0[1] && xg.w == s0[2], FN,
                "x: (C, H, W) = (%lld, %lld, %lld): the network was built for (%lld, %lld, %lld) NCHW",
                (long long)xg.c, (long long)xg.h, (long long)xg.w, (long long)s0[0],
                (long long)s0[1], (long long)s0[2]);
    const int wide = nchunks < nt ? nt : 1;   /* threads per stream */
    if (wide > 1) nt = 1;
    SAL_TRY(plan_gathers(net, cap, nt));
    SAL_TRY(sal_program_frames(&net->p, nt, cap, wide, (size_t)(net->nstats + net->plan_total),
                               net->nops, op_scratch, net));
    if (net->plan_made != net->p.frames_made) {   /* new frames: no plan in them yet */
        memset(net->plan_built, 0, (size_t)nt * (size_t)net->nops * sizeof *net->plan_built);
        net->plan_made = net->p.frames_made;
    }
    if (nt > nchunks) nt = (int)nchunks;
    if ((size_t)numel > net->kept_cap) {
        float *k = malloc((size_t)numel * sizeof(float));
        if (!k) return sal_fail(SAL_ENOMEM, FN, "input copy of %lld floats: out of memory",
                                (long long)numel);
        free(net->kept_x);
        net->kept_x = k, net->kept_cap = (size_t)numel;
    }
    stream_task t = {.net = net, .params = params, .x = x, .buffers = buffers, .logits = logits,
                     .n = xg.n, .c = c, .nchunks = nchunks,
                     .width = sal_net_output_width(net)};
    atomic_init(&t.next, 0);
    atomic_init(&t.failed, 0);
    if (nt > 1) {
        sal_parallel(nt, stream_run, &t);
    } else if (wide == 1) {
        stream_run(&t, 0, 1);
    } else {   /* one stream on the calling thread, its ops on `wide` threads or on one */
        if (net->wide_made != net->p.frames_made) {   /* new frames: measure afresh */
            net->wide_made = net->p.frames_made;
            net->wide_count = net->wide_n[0] = net->wide_n[1] = 0;
            net->wide_pick = 1;
        }
        const int64_t call = net->wide_count++;
        const int cur = net->wide_pick > 1;                  /* 0: one thread, 1: wide */
        const int k = call < 2 * WIDE_TRIALS ? (int)(call % 2)
                                             : (call % WIDE_EXPLORE == 0 ? !cur : cur);
        t.op_threads = k ? wide : 1;
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        stream_run(&t, 0, 1);
        clock_gettime(CLOCK_MONOTONIC, &b);
        net->wide_win[k][net->wide_n[k]++ % WIDE_WINDOW] =
            (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
        double best[2] = {INFINITY, INFINITY};
        for (int w = 0; w < 2; w++)
            for (int64_t j = 0; j < net->wide_n[w] && j < WIDE_WINDOW; j++)
                if (net->wide_win[w][j] < best[w]) best[w] = net->wide_win[w][j];
        if (net->wide_n[0] && net->wide_n[1]) net->wide_pick = best[1] < best[0] ? wide : 1;
    }
    if (atomic_load(&t.failed)) return sal_fail(t.status, FN, "streamed forward: %s", t.msg);
    memcpy(net->kept_x, x, (size_t)numel * sizeof(float));
    net->kept_g = xg;
    net->streamed = 1, net->stream_n = xg.n;
    return SAL_OK;
}

/* after a streamed forward: the whole-batch forward of its input, so that the activations
 * are those of that forward (backward, sal_net_buffer) */
static sal_status materialise(sal_net *net) {
    if (!net->streamed) return SAL_OK;
    net->streamed = 0;
    return forward_whole(net, net->kept_x, net->kept_g, net->fwd_params, (float *)net->buffers);
}

/* after a backward that kept gradients in dead activations (clobbered): the activations
 * of the last whole-batch forward again, recomputed from its input (buffer 0, never
 * lent) with params, a training forward's BN as replays of the statistics it used (no
 * running-statistics update), bit for bit what that forward wrote when params are its */
static sal_status restore(sal_net *net, const float *params) {
    if (!net->clobbered) return SAL_OK;
    const run_ctx ctx = whole_ctx(net);
    for (int64_t i = 0; i < net->nops; i++)
        SAL_TRY(forward_op(net, &ctx, i, params, (float *)net->buffers, net->p.n, net->train));
    net->clobbered = 0;
    return SAL_OK;
}

/* one call at a time per network (sal/net.h, "Threads") */
sal_status sal_net_forward(sal_net *net, float *logits, const float *x, sal_act xg,
                           const float *params, float *buffers, int train, int hard, double beta) {
    SAL_REQUIRE(net, FN, "net must not be NULL");
    SAL_TRY(sal_program_enter(&net->p, "forward"));
    sal_status s = SAL_OK;
    if (!logits || !x || (!params && net->p.narena))
        s = sal_fail(SAL_EINVAL, FN, "logits, x and params must not be NULL");
    else if (!buffers && net->nbuffers)
        s = sal_fail(SAL_EINVAL, FN, "buffers=NULL: the net has %lld buffer values",
                     (long long)net->nbuffers);
    if (s == SAL_OK) {
        net->train = train != 0, net->hard = hard != 0, net->beta = beta, net->buffers = buffers;
        net->fwd_params = params;
        net->p.n = 0, net->streamed = 0;   /* no forward to differentiate until this completes */
        net->clobbered = 0;
        const int nt = sal_threads();
        int64_t cap = 0;
        const int64_t c = xg.n >= 1 ? stream_chunk(net, xg.n, nt, &cap) : 0;
        if (c > 0) {
            s = forward_streams(net, logits, x, xg, params, buffers, c, cap, nt);
        } else {
            s = forward_whole(net, x, xg, params, buffers);
            if (s == SAL_OK) {
                const int64_t last = net->ops[net->nops - 1].out;
                memcpy(logits, net->p.act[last],
                       (size_t)sal_program_numel(&net->p, last, xg.n) * sizeof(float));
            }
        }
    }
    sal_program_leave(&net->p);
    return s;
}

sal_status sal_net_set_streams(sal_net *net, int64_t chunk) {
    SAL_REQUIRE(net, FN, "net must not be NULL");
    SAL_REQUIRE(chunk >= -1 && chunk <= ((int64_t)1 << 40), FN,
                "set_streams: chunk=%lld: must be -1 (auto), 0 (never) or an image count >= 1",
                (long long)chunk);
    SAL_TRY(sal_program_enter(&net->p, "set_streams"));
    net->stream_mode = chunk;
    sal_program_leave(&net->p);
    return SAL_OK;
}

sal_status sal_net_profile(sal_net *net, int on, double *seconds) {
    SAL_REQUIRE(net, FN, "net must not be NULL");
    SAL_TRY(sal_program_enter(&net->p, "profile"));
    sal_status s = SAL_OK;
    const size_t rows = (size_t)SAL_MAX_THREADS * (size_t)net->nops;
    if (seconds) {
        for (int64_t i = 0; i < net->nops; i++) seconds[i] = 0.0;
        for (size_t r = 0; net->prof && r < rows; r++) seconds[r % (size_t)net->nops] += net->prof[r];
    }
    if (!on) {
        free(net->prof);
        net->prof = NULL;
    } else if (!net->prof && !(net->prof = calloc(rows, sizeof *net->prof))) {
        s = sal_fail(SAL_ENOMEM, FN, "profile: out of memory");
    } else {
        memset(net->prof, 0, rows * sizeof *net->prof);
    }
    sal_program_leave(&net->p);
    return s;
}

/* Whether the training forward of op i, a CONV or SAL, gathers the moments of its output
 * for op i + 1, a BN that reads it, while it writes it (sal_conv_epi.moments,
 * sal_sal_desc.moments, into net->moments):
 * the BN then makes no pass of its own over its input for them (about a third of a
 * training BN forward's memory traffic).  Whole-batch forwards, the ops in order; not a
 * checkpointed segment's second run (again), whose BN replays the first run's (dm, scale). */
static bool conv_feeds_moments(const sal_net *net, const run_ctx *ctx, int64_t i, int again) {
    if (!net->train || !ctx->whole || again || i < 0 || i + 1 >= net->nops) return false;
    const sal_op *op = &net->ops[i], *bn = op + 1;
    return (op->kind == SAL_OP_CONV || op->kind == SAL_OP_SAL) && bn->kind == SAL_OP_BN &&
           bn->in == op->out;
}

/* Op i forward at batch n in the frame of ctx.  again: a checkpointed segment's second run
 * in backward: its BN applies the (dm, scale) of the first run, touching no statistics. */
static sal_status forward_op(sal_net *net, const run_ctx *ctx, int64_t i, const float *params,
                             float *buffers, int64_t n, int again) {
    float **act = ctx->act, *scratch = ctx->scratch;
    const int threads = ctx->threads;
    const sal_op *op = &net->ops[i];
    const int64_t *si = net->p.shapes + 3 * op->in;
    const sal_act xa = act_of(si, n);
    const float *in = act[op->in], *res = op->res >= 0 ? act[op->res] : NULL;
    float *y = act[op->out];
    switch (op->kind) {   /* every offset an op reads was checked at create: only those */
    case SAL_OP_CONV: {
        const float *bias = op->p1 >= 0 ? params + op->p1 : NULL;
        if (!net->train && net->sc[i].rows >= 0) {   /* the shifted-row GEMM, epilogue fused */
            const sal_shiftconv_desc g = sc_desc(net, i, n, threads);
            const sal_shiftconv_epi e = {bias, res, (int)op->relu, (int)op->res_post};
            SAL_TRY(sal_shiftconv_fwd(y, act[net->sc[i].in], params + op->p0, &e, &g, scratch));
            break;
        }
        const sal_conv_desc d = conv_desc(op, si, n, threads);
        const sal_conv_epi e = {bias, res, (int)op->relu, (int)op->res_post, !net->train,
                                conv_feeds_moments(net, ctx, i, again) ? net->moments : NULL};
        SAL_TRY(sal_conv_fwd_epi(y, in, params + op->p0, &e, &d, scratch));
        break;
    }
    case SAL_OP_SAL: {
        const sal_sal_desc d = sal_desc(op, si, n, threads, buffers, net->hard, net->beta,
                                        conv_feeds_moments(net, ctx, i, again) ? net->moments
                                                                               : NULL);
        SAL_TRY(sal_sal_fwd(y, in, params + op->p0, params + op->p1, &d, scratch));
        break;
    }
    case SAL_OP_GATHER: {
        const float *bias = op->p1 >= 0 ? params + op->p1 : NULL;
        if (ctx->plan) {   /* a stream frame: its plan built by the first chunk (checked at
                              create), on one thread (STREAM_GATHER_THREADS) */
            if (ctx->built_n[i] != n) ctx->built[i] = 0, ctx->built_n[i] = n;
            SAL_TRY(sal_taps_gather_fwd_plan(y, in, xa, op->o, op->stride,
                                             op->npair ? net->pairs + 4 * op->ioff : NULL,
                                             params + op->p0, op->npair, bias, res,
                                             (int)op->relu, (int)op->res_post,
                                             STREAM_GATHER_THREADS, scratch,
                                             ctx->plan + net->plan_off[i], &ctx->built[i]));
            break;
        }
        const sal_gather_desc d = gather_desc(net, op, si, n, threads);
        SAL_TRY(sal_gather_fwd(y, in, params + op->p0, bias, res, (int)op->relu,
                               (int)op->res_post, &d, scratch));
        break;
    }
    case SAL_OP_SHIFT: {
        if (!net->train && net->sc[i].skip) break;   /* folded into the GEMM that reads it */
        const sal_shift_desc d = {xa, op->stride};
        SAL_TRY(sal_shift_rows_fwd(y, in, net->shifts + 3 * op->ioff,
                                   net->p.shapes[3 * op->out], &d));
        break;
    }
    case SAL_OP_ASHIFT: {
        const sal_shift_desc d = {xa, op->stride};
        SAL_TRY(sal_ashift_fwd(y, in, params + op->p0, &d));
        break;
    }
    case SAL_OP_BN: {
        const sal_bn_desc d = {xa, net->train, SAL_BN_MOMENTUM, SAL_BN_EPS, 0,
                               conv_feeds_moments(net, ctx, i - 1, again) ? net->moments : NULL};
        float *sm = ctx->stats + net->stat_off[i], *sv = sm + xa.c, *affine = sv + xa.c;
        if (again)
            SAL_TRY(sal_bn_replay(y, in, affine, params + op->p1, res, (int)op->relu, &d));
        else
            SAL_TRY(sal_bn_fwd_affine(y, sm, sv, buffers + op->b0, buffers + op->b1, affine, in,
                                      params + op->p0, params + op->p1, res, (int)op->relu, &d));
        if (ctx->whole && net->replay[op->out] == i)
            net->live[replay_slot(net, op->out)] = op->out;   /* until its last reader */
        break;
    }
    case SAL_OP_ADD:
        SAL_TRY(sal_add_fwd(y, in, res, xa));
        if (op->relu) SAL_TRY(sal_relu_fwd(y, y, xa));
        break;
    case SAL_OP_POOL:
        SAL_TRY(sal_gap_fwd(y, in, xa));
        break;
    case SAL_OP_LINEAR:
        SAL_TRY(sal_linear_fwd(y, in, params + op->p0, params + op->p1, n, xa.c, op->o));
        break;
    }
    return SAL_OK;
}

/* ---- backward ------------------------------------------------------------------------ */
static sal_status backward_ops(sal_net *net, float *grads, const float *dlogits,
                               const float *params);

sal_status sal_net_backward(sal_net *net, float *grads, const float *dlogits, const float *params) {
    SAL_REQUIRE(net, FN, "net must not be NULL");
    SAL_TRY(sal_program_enter(&net->p, "backward"));
    const sal_status s = backward_ops(net, grads, dlogits, params);
    sal_program_leave(&net->p);
    return s;
}

/* assigns() bits: the input's and the residual's gradient (for a BN op, its desc's bits) */
enum { ASSIGN_IN = SAL_BN_ASSIGN_DX, ASSIGN_RES = SAL_BN_ASSIGN_DRES };

/* Which gradients op i's backward writes (=) rather than adds to, as ASSIGN_* bits:
 * those born at it (its backward is the first to reach them) that it writes whole: a BN's
 * input and residual gradients, a convolution's or SAL layer's input gradient; 0 for every
 * other op. */
static int assigns(const sal_net *net, int64_t i) {
    const sal_op *op = &net->ops[i];
    if (op->kind == SAL_OP_CONV || op->kind == SAL_OP_SAL)   /* sal_{conv,sal}_bwd_assign */
        return op->in != 0 && net->gborn[op->in] == i ? ASSIGN_IN : 0;
    if (op->kind != SAL_OP_BN || op->in == op->res) return 0;
    int a = 0;
    if (op->in != 0 && net->gborn[op->in] == i) a |= ASSIGN_IN;
    if (op->res >= 0 && net->gborn[op->res] == i) a |= ASSIGN_RES;
    return a;
}

/* the gradients born before op i's backward (i = nops: before the first) start at zero,
 * except those the op writes whole (assigns) */
static void zero_born(sal_net *net, int64_t i, int64_t n) {
    const int a = i < net->nops ? assigns(net, i) : 0;
    const int64_t in = i < net->nops ? net->ops[i].in : -1, res = i < net->nops ? net->ops[i].res : -1;
    for (int64_t b = 1; b < net->p.nbuf; b++) {
        if (net->gborn[b] != i || !net->grad[b]) continue;
        if ((b == in && (a & ASSIGN_IN)) || (b == res && (a & ASSIGN_RES))) continue;
        memset(net->grad[b], 0, (size_t)sal_program_numel(&net->p, b, n) * sizeof(float));
    }
}

static sal_status backward_ops(sal_net *net, float *grads, const float *dlogits,
                               const float *params) {
    SAL_REQUIRE(grads && dlogits && (params || !net->p.narena), FN,
                "grads, dlogits and params must not be NULL");
    if (net->untrainable >= 0) {
        const sal_op *op = &net->ops[net->untrainable];
        return sal_fail(SAL_EINVAL, FN, "backward: op %lld (%s%s) is an inference-only form: "
                        "an exported program has no backward", (long long)net->untrainable,
                        kind_name(op->kind),
                        op->kind == SAL_OP_CONV ? " with a fused epilogue"
                            : op->kind == SAL_OP_SHIFT ? " that moves channels"
                            : op->kind == SAL_OP_ADD ? " with a ReLU" : "");
    }
    SAL_TRY(materialise(net));   /* after a streamed forward: its activations */
    SAL_REQUIRE(net->p.n >= 1, FN, "backward: no forward pass to differentiate");
    SAL_TRY(restore(net, params));   /* a second backward of one forward */
    const int64_t n = net->p.n;
    float **act = net->p.act, *scratch = net->p.scratch;
    const int threads = net->p.threads;
    net->grad_cap = net->p.cap;
    for (int64_t s = 0; s < net->nslot; s++)
        if (!net->slot[s]) {
            net->slot[s] = sal_alloc_floats((size_t)(net->p.cap * net->slot_len[s]));
            if (!net->slot[s]) return sal_fail(SAL_ENOMEM, FN, "gradients: out of memory");
        }
    int hosted = 0;
    for (int64_t b = 0; b < net->p.nbuf; b++) {
        net->grad[b] = net->gslot[b] >= 0 ? net->slot[net->gslot[b]] : NULL;
        if (net->ghost[b] >= 0)
            net->grad[b] = net->p.store + net->p.cap * net->ghost[b], hosted = 1;
    }
    net->clobbered = hosted;   /* from here on, whether the backward completes or not */
    zero_born(net, net->nops, n);
    if (!net->train)      /* an evaluation forward skipped the SHIFTs folded into GEMMs */
        for (int64_t i = 0; i < net->nops; i++)
            if (net->sc[i].skip) {
                const sal_op *op = &net->ops[i];
                const sal_shift_desc d = {act_of(net->p.shapes + 3 * op->in, n), op->stride};
                SAL_TRY(sal_shift_rows_fwd(act[op->out], act[op->in], net->shifts + 3 * op->ioff,
                                           net->p.shapes[3 * op->out], &d));
            }
    /* the output's gradient: dlogits */
    const int64_t lastbuf = net->ops[net->nops - 1].out;
    memcpy(net->grad[lastbuf], dlogits, (size_t)sal_program_numel(&net->p, lastbuf, n) * sizeof(float));
    for (int64_t i = net->nops - 1; i >= 0; i--) {
        const sal_op *op = &net->ops[i];
        zero_born(net, i, n);
        const int64_t sg = net->seg[i];
        if (sg >= 0 && i == net->seg_hi[sg] - 1)   /* entering a checkpointed segment */
            for (int64_t j = net->seg_lo[sg]; j < net->seg_hi[sg]; j++) {
                const run_ctx ctx = whole_ctx(net);
                SAL_TRY(forward_op(net, &ctx, j, params, (float *)net->buffers, n, 1));
            }
        /* the replayed outputs this op's backward reads, recomputed just before (the
         * residual's value no backward reads, a pool's, an add's or a shift's input
         * neither): its input, and a BN's own output (its ReLU mask) */
        if (op->kind != SAL_OP_POOL && op->kind != SAL_OP_ADD && op->kind != SAL_OP_SHIFT)
            SAL_TRY(replay_buffer(net, op->in, params, n));
        if (op->kind == SAL_OP_BN) SAL_TRY(replay_buffer(net, op->out, params, n));
        const int64_t *si = net->p.shapes + 3 * op->in;
        const sal_act xa = act_of(si, n);
        const float *in = act[op->in], *dy = net->grad[op->out];
        float *dx = op->in == 0 ? NULL : net->grad[op->in];  /* no gradient for the input */
        float *dres = op->res >= 0 ? net->grad[op->res] : NULL;
        switch (op->kind) {
        case SAL_OP_CONV: {
            const sal_conv_desc d = conv_desc(op, si, n, threads);
            SAL_TRY((assigns(net, i) ? sal_conv_bwd_assign : sal_conv_bwd)(
                dx, grads + op->p0, dy, in, params + op->p0, &d, scratch));
            break;
        }
        case SAL_OP_SAL: {
            const sal_sal_desc d = sal_desc(op, si, n, threads, net->buffers, net->hard,
                                            net->beta, NULL);
            SAL_TRY((assigns(net, i) ? sal_sal_bwd_assign : sal_sal_bwd)(
                dx, grads + op->p0, grads + op->p1, dy, in, params + op->p0, params + op->p1, &d,
                scratch));
            break;
        }
        case SAL_OP_SHIFT: {
            const sal_shift_desc d = {xa, op->stride};
            SAL_TRY(sal_shift_rows_bwd(dx, dy, net->shifts + 3 * op->ioff, &d));
            break;
        }
        case SAL_OP_ASHIFT: {
            const sal_shift_desc d = {xa, op->stride};
            SAL_TRY(sal_ashift_bwd(dx, grads + op->p0, dy, in, params + op->p0, &d));
            break;
        }
        case SAL_OP_BN: {
            const sal_bn_desc d = {xa, net->train, SAL_BN_MOMENTUM, SAL_BN_EPS, assigns(net, i),
                                   NULL};
            const float *sm = net->stats + net->stat_off[i], *sv = sm + xa.c;
            if (op->relu)
                SAL_TRY(sal_bn_relu_bwd(dx, grads + op->p0, grads + op->p1, dres, dy,
                                        act[op->out], in, params + op->p0, sm, sv, &d));
            else
                SAL_TRY(sal_bn_bwd(dx, grads + op->p0, grads + op->p1, dy, in, params + op->p0,
                                   sm, sv, &d));
            break;
        }
        case SAL_OP_ADD:
            SAL_TRY(sal_add_bwd(dx, dres, dy, xa));
            break;
        case SAL_OP_POOL:
            if (dx) SAL_TRY(sal_gap_bwd(dx, dy, xa));
            break;
        case SAL_OP_LINEAR:
            SAL_TRY(sal_linear_bwd(dx, grads + op->p0, grads + op->p1, dy, in, params + op->p0, n,
                                   xa.c, op->o));
            break;
        default:    /* GATHER: refused above */
            return sal_fail(SAL_EINVAL, FN, "backward: op %lld (%s): no backward", (long long)i,
                            kind_name(op->kind));
        }
    }
    return SAL_OK;
}

/* ---- checkpointing --------------------------------------------------------------------- */
sal_status sal_net_set_checkpoints(sal_net *net, const int64_t *bounds, int64_t nseg) {
    SAL_REQUIRE(net, FN, "net must not be NULL");
    SAL_REQUIRE(nseg >= 0 && nseg <= net->nops && (nseg == 0 || bounds), FN,
                "nseg=%lld: must be in [0, nops = %lld] with the bounds given", (long long)nseg,
                (long long)net->nops);
    for (int64_t k = 0; k < nseg; k++) {
        const int64_t lo = bounds[2 * k], hi = bounds[2 * k + 1];
        SAL_REQUIRE(lo >= (k ? bounds[2 * k - 1] : 0) && lo < hi && hi <= net->nops, FN,
                    "segment %lld = [%lld, %lld): must be non-empty, inside [0, %lld) and after "
                    "the one before", (long long)k, (long long)lo, (long long)hi,
                    (long long)net->nops);
    }
    SAL_TRY(sal_program_enter(&net->p, "set_checkpoints"));
    int64_t *lo = malloc((size_t)(nseg ? nseg : 1) * sizeof *lo);
    int64_t *hi = malloc((size_t)(nseg ? nseg : 1) * sizeof *hi);
    if (!lo || !hi) {
        free(lo), free(hi);
        sal_program_leave(&net->p);
        return sal_fail(SAL_ENOMEM, FN, "out of memory");
    }
    for (int64_t i = 0; i < net->nops; i++) net->seg[i] = -1;
    for (int64_t k = 0; k < nseg; k++) {
        lo[k] = bounds[2 * k], hi[k] = bounds[2 * k + 1];
        for (int64_t i = lo[k]; i < hi[k]; i++) net->seg[i] = k;
    }
    free(net->seg_lo), free(net->seg_hi);
    net->seg_lo = lo, net->seg_hi = hi, net->nseg = nseg;
    sal_program_release(&net->p);     /* the sharing changed: allocated again by the next forward */
    net->streamed = 0;
    free_grads(net);
    plan_sharing(net);
    const sal_status s = plan_grads(net);   /* the layout changed */
    sal_program_leave(&net->p);
    return s;
}

/* ---- inspection ---------------------------------------------------------------------- */
sal_status sal_net_buffer(sal_net *net, int64_t b, const float **act, sal_act *geom) {
    SAL_REQUIRE(net, FN, "net, act, geom must not be NULL");
    SAL_TRY(sal_program_enter(&net->p, "buffer"));
    sal_status s = materialise(net);  /* after a streamed forward: its activations */
    if (s == SAL_OK && net->p.n >= 1) s = restore(net, net->fwd_params);   /* after a backward */
    if (s == SAL_OK) s = sal_program_buffer(&net->p, b, act, geom);   /* b checked there */
    if (s == SAL_OK) s = replay_buffer(net, b, net->fwd_params, net->p.n);   /* into *act */
    sal_program_leave(&net->p);
    return s;
}

int64_t sal_net_output_width(const sal_net *net) {
    return sal_program_numel(&net->p, net->ops[net->nops - 1].out, 1);
}

int64_t sal_net_last_batch(const sal_net *net) {
    return net->streamed ? net->stream_n : net->p.n;
}

void sal_net_arena_sizes(const sal_net *net, int64_t *nparams, int64_t *nbuffers) {
    if (nparams) *nparams = net->p.narena;
    if (nbuffers) *nbuffers = net->nbuffers;
}

int sal_net_trainable(const sal_net *net, int64_t *why) {
    if (why) *why = net->untrainable;
    return net->untrainable < 0;
}

int64_t sal_net_macs(const sal_net *net) { return net->macs; }

void sal_net_program(const sal_net *net, const int64_t **shapes, int64_t *nbuf,
                     const sal_op **ops, int64_t *nops) {
    if (shapes) *shapes = net->p.shapes;
    if (nbuf) *nbuf = net->p.nbuf;
    if (ops) *ops = net->ops;
    if (nops) *nops = net->nops;
}
