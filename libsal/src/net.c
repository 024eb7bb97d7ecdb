/* The network program: validation, buffers allocated once per batch size, forward and
 * backward as one pass each over the op list.  All activations are channel-major. */
#include <stdlib.h>
#include <string.h>

#include "internal/program.h"
#include "sal/conv.h"
#include "sal/layers.h"
#include "sal/net.h"
#include "sal/active_shift.h"
#include "sal/attention.h"
#include "sal/shift.h"

struct sal_net {
    sal_program p;      /* shapes, activations (act), scratch, batch sizes; arena = params */
    int64_t nops, noff, nbuffers;
    sal_op *ops;
    int32_t *offsets;   /* (noff, 2) */
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
    int64_t grad_cap;           /* batch size the slots are allocated for */
    float *stats;               /* per op: save_mean, save_invstd (2 C) for BN ops */
    int64_t *stat_off;          /* per op offset into stats, -1 if none */
};

static const char *FN = "sal_net";

static const char *const OP_FIELDS[] = {"kind", "in", "out", "res", "relu", "o", "k", "stride",
                                        "pad", "p0", "p1", "b0", "b1", "shared", "ioff"};
_Static_assert(sizeof OP_FIELDS / sizeof *OP_FIELDS == sizeof(sal_op) / sizeof(int64_t),
               "OP_FIELDS names every field of sal_op");
static const char *const OP_KINDS[] = {[SAL_OP_CONV] = "conv", [SAL_OP_SAL] = "sal",
                                       [SAL_OP_SHIFT] = "shift", [SAL_OP_ASHIFT] = "ashift",
                                       [SAL_OP_BN] = "bn", [SAL_OP_ADD] = "add",
                                       [SAL_OP_POOL] = "pool", [SAL_OP_LINEAR] = "linear"};

const char *const *sal_net_op_fields(int64_t *n) { return SAL_NAMES(OP_FIELDS, n); }
const char *const *sal_net_op_kinds(int64_t *n) { return SAL_NAMES(OP_KINDS, n); }

static sal_act buf_act(const sal_net *net, int64_t b, int64_t n) {
    return sal_program_act(&net->p, b, n);
}

static sal_conv_desc conv_desc(const sal_net *net, const sal_op *op, int64_t n) {
    return (sal_conv_desc){buf_act(net, op->in, n), op->o, op->k, op->stride, op->pad, net->p.threads};
}

/* the SAL mask of op (b0 >= 0: buffers[b0 ..]) in the buffer arena of the last forward */
static sal_sal_desc sal_desc(const sal_net *net, const sal_op *op, int64_t n) {
    return (sal_sal_desc){buf_act(net, op->in, n), op->o, op->stride, op->pad, (int)op->shared,
                          net->hard, net->beta,
                          op->b0 >= 0 && net->buffers ? net->buffers + op->b0 : NULL, net->p.threads};
}

/* Checks one op against the buffers and arenas: every index in range, every output shape
 * the one its kernel produces.  Sizes with n = 1. */
static sal_status plan_grads(sal_net *net);

static sal_status check_op(const sal_net *net, int64_t i, const sal_op *op) {
    SAL_TRY(sal_program_check_io(&net->p, i, op->in, op->out, op->res));
    const int64_t *si = net->p.shapes + 3 * op->in;
    int64_t want[3] = {si[0], si[1], si[2]}, pw = 0, pb = 0;
    sal_act y;
    switch (op->kind) {
    case SAL_OP_CONV: {
        sal_conv_desc d = conv_desc(net, op, 1);
        SAL_TRY(sal_conv_check(&d, &y));
        want[0] = y.c, want[1] = y.h, want[2] = y.w;
        pw = op->o * si[0] * op->k * op->k;
        break;
    }
    case SAL_OP_SAL: {
        sal_sal_desc d = sal_desc(net, op, 1);
        d.beta = 1.0;
        SAL_TRY(sal_sal_check(&d, &y));
        want[0] = y.c, want[1] = y.h, want[2] = y.w;
        pw = op->o * si[0] * 9;
        pb = (op->shared ? 1 : op->o) * si[0] * 9;
        SAL_REQUIRE(op->b0 == -1 || (op->b0 >= 0 && op->b0 + pb <= net->nbuffers), FN,
                    "op %lld: mask at b0=%lld: must be -1 (none) or %lld floats inside the "
                    "buffer arena (%lld)", (long long)i, (long long)op->b0, (long long)pb,
                    (long long)net->nbuffers);
        break;
    }
    case SAL_OP_SHIFT:
    case SAL_OP_ASHIFT: {
        sal_shift_desc d = {buf_act(net, op->in, 1), op->stride};
        SAL_TRY(sal_shift_check(&d, &y));
        want[1] = y.h, want[2] = y.w;
        if (op->kind == SAL_OP_SHIFT)
            SAL_REQUIRE(op->ioff >= 0 && op->ioff + si[0] <= net->noff, FN,
                        "op %lld: ioff=%lld: needs %lld offset rows of %lld", (long long)i,
                        (long long)op->ioff, (long long)si[0], (long long)net->noff);
        else
            pw = 2 * si[0];
        break;
    }
    case SAL_OP_BN:
        pw = pb = si[0];
        SAL_REQUIRE(op->b0 >= 0 && op->b1 >= 0 && op->b0 + si[0] <= net->nbuffers &&
                        op->b1 + si[0] <= net->nbuffers, FN,
                    "op %lld: running statistics at %lld, %lld: outside the buffer arena (%lld)",
                    (long long)i, (long long)op->b0, (long long)op->b1, (long long)net->nbuffers);
        SAL_REQUIRE(op->res < 0 || op->relu, FN, "op %lld: BN with a residual needs relu=1",
                    (long long)i);
        break;
    case SAL_OP_ADD:
    case SAL_OP_POOL:
    case SAL_OP_LINEAR:
        SAL_TRY(sal_program_check_shared(
            &net->p, i,
            op->kind == SAL_OP_ADD ? SAL_PROGRAM_ADD
                : op->kind == SAL_OP_POOL ? SAL_PROGRAM_POOL : SAL_PROGRAM_LINEAR,
            op->in, op->res, op->o, want, &pw, &pb));
        break;
    default:
        return sal_fail(SAL_EINVAL, FN, "op %lld: kind=%lld: unknown op", (long long)i,
                        (long long)op->kind);
    }
    return sal_program_check_fit(&net->p, i, op->out, op->res, want, op->p0, pw, op->p1, pb);
}

sal_status sal_net_create(sal_net **out, const int64_t *shapes, int64_t nbuf, const sal_op *ops,
                          int64_t nops, const int32_t *offsets, int64_t noff, int64_t nparams,
                          int64_t nbuffers) {
    SAL_REQUIRE(out && shapes && ops, FN, "net, shapes and ops must not be NULL");
    SAL_REQUIRE(noff >= 0 && (noff == 0 || offsets), FN, "noff=%lld: offsets missing",
                (long long)noff);
    SAL_REQUIRE(nparams >= 0 && nbuffers >= 0, FN, "arena sizes must be >= 0");
    *out = NULL;
    sal_net *net = calloc(1, sizeof *net);
    if (!net) return sal_fail(SAL_ENOMEM, FN, "out of memory");
    net->nops = nops, net->noff = noff, net->nbuffers = nbuffers;
    sal_status s = sal_program_init(&net->p, FN, "parameters", shapes, nbuf, nops, nparams);
    net->ops = malloc((size_t)nops * sizeof *net->ops);
    net->offsets = malloc((size_t)(noff ? noff : 1) * 2 * sizeof *net->offsets);
    net->grad = calloc((size_t)nbuf, sizeof *net->grad);
    net->gslot = malloc((size_t)nbuf * sizeof *net->gslot);
    net->gborn = malloc((size_t)nbuf * sizeof *net->gborn);
    net->slot_len = calloc((size_t)nbuf, sizeof *net->slot_len);
    net->slot = calloc((size_t)nbuf, sizeof *net->slot);
    net->stat_off = malloc((size_t)nops * sizeof *net->stat_off);
    if (s == SAL_OK && (!net->ops || !net->offsets || !net->grad || !net->gslot || !net->gborn ||
                        !net->slot_len || !net->slot || !net->stat_off))
        s = sal_fail(SAL_ENOMEM, FN, "out of memory");
    if (s != SAL_OK) {
        sal_net_free(net);
        return s;
    }
    memcpy(net->ops, ops, (size_t)nops * sizeof *ops);
    if (noff) memcpy(net->offsets, offsets, (size_t)noff * 2 * sizeof *offsets);
    int64_t nstats = 0;
    for (int64_t i = 0; i < nops && s == SAL_OK; i++) {
        s = check_op(net, i, &ops[i]);
        net->stat_off[i] = ops[i].kind == SAL_OP_BN ? nstats : -1;
        if (ops[i].kind == SAL_OP_BN) nstats += 2 * shapes[3 * ops[i].in];
    }
    if (s == SAL_OK) {
        net->stats = malloc((size_t)(nstats ? nstats : 1) * sizeof *net->stats);
        if (!net->stats) s = sal_fail(SAL_ENOMEM, FN, "out of memory");
    }
    if (s == SAL_OK) s = plan_grads(net);
    if (s != SAL_OK) {
        sal_net_free(net);
        return s;
    }
    *out = net;
    return SAL_OK;
}

/* Assigns every activation gradient a slot by replaying backward: before op i's backward
 * the gradients of its inputs are born (those whose last reader is op i), after it the
 * gradient of its output dies; a birth takes a free slot (the smallest that is large enough,
 * else the largest, which grows) or a new one.  A buffer no op reads (the logits) is born
 * before the first op.  If some buffer is written by two ops, every gradient keeps a slot
 * of its own and is zeroed before the first op. */
static sal_status plan_grads(sal_net *net) {
    const int64_t nbuf = net->p.nbuf, nops = net->nops;
    int64_t *writer = malloc((size_t)nbuf * sizeof *writer);
    int64_t *owner = malloc((size_t)nbuf * sizeof *owner);  /* slot -> live buffer, -1: free */
    if (!writer || !owner) {
        free(writer), free(owner);
        return sal_fail(SAL_ENOMEM, FN, "out of memory");
    }
    int ssa = 1;
    for (int64_t b = 0; b < nbuf; b++) writer[b] = -1, net->gborn[b] = nops, net->gslot[b] = -1;
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
    net->nslot = 0;
    for (int64_t s = 0; s < nbuf; s++) owner[s] = -1;
    for (int64_t i = nops; i >= 0; i--) {
        for (int64_t b = 1; b < nbuf; b++) {              /* births before op i */
            if (net->gborn[b] != i) continue;
            const int64_t len = net->p.shapes[3 * b] * net->p.shapes[3 * b + 1] * net->p.shapes[3 * b + 2];
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
        }
    }
    free(writer), free(owner);
    return SAL_OK;
}

static void free_grads(sal_net *net) {
    for (int64_t s = 0; s < net->nslot; s++) {
        free(net->slot[s]);
        net->slot[s] = NULL;
    }
    net->grad_cap = 0;
}

void sal_net_free(sal_net *net) {
    if (!net) return;
    if (net->slot) free_grads(net);
    sal_program_free(&net->p);
    free(net->ops);
    free(net->offsets);
    free(net->grad);
    free(net->gslot);
    free(net->gborn);
    free(net->slot_len);
    free(net->slot);
    free(net->stats);
    free(net->stat_off);
    free(net);
}

/* scratch floats of op i at batch n (sal_program_scratch_fn) */
static size_t op_scratch(const void *owner, int64_t i, int64_t n) {
    const sal_net *net = owner;
    const sal_op *op = &net->ops[i];
    if (op->kind == SAL_OP_CONV) {
        sal_conv_desc d = conv_desc(net, op, n);
        return sal_conv_scratch(&d);
    }
    if (op->kind == SAL_OP_SAL) {
        sal_sal_desc d = sal_desc(net, op, n);
        return sal_sal_scratch(&d);
    }
    return 0;
}

static sal_status forward_locked(sal_net *net, float *logits, const float *x, sal_act xg,
                                 const float *params, float *buffers, int train, int hard,
                                 double beta);
static sal_status backward_locked(sal_net *net, float *grads, const float *dlogits,
                                  const float *params);

/* one call at a time per network (sal/net.h, "Threads") */
sal_status sal_net_forward(sal_net *net, float *logits, const float *x, sal_act xg,
                           const float *params, float *buffers, int train, int hard, double beta) {
    SAL_REQUIRE(net, FN, "net must not be NULL");
    SAL_TRY(sal_program_enter(&net->p, "forward"));
    const sal_status s = forward_locked(net, logits, x, xg, params, buffers, train, hard, beta);
    sal_program_leave(&net->p);
    return s;
}

sal_status sal_net_backward(sal_net *net, float *grads, const float *dlogits, const float *params) {
    SAL_REQUIRE(net, FN, "net must not be NULL");
    SAL_TRY(sal_program_enter(&net->p, "backward"));
    const sal_status s = backward_locked(net, grads, dlogits, params);
    sal_program_leave(&net->p);
    return s;
}

static sal_status forward_locked(sal_net *net, float *logits, const float *x, sal_act xg,
                                 const float *params, float *buffers, int train, int hard,
                                 double beta) {
    SAL_REQUIRE(net && logits && x && params, FN, "net, logits, x and params must not be NULL");
    SAL_REQUIRE(buffers || net->nbuffers == 0, FN, "buffers=NULL: the net has BN statistics");
    net->train = train != 0, net->hard = hard != 0, net->beta = beta, net->buffers = buffers;
    SAL_TRY(sal_program_start(&net->p, x, xg, net->nops, op_scratch, net));
    if (net->grad_cap != net->p.cap) free_grads(net);  /* backward makes them for p.cap */
    const int64_t n = xg.n;
    float **act = net->p.act, *scratch = net->p.scratch;
    for (int64_t i = 0; i < net->nops; i++) {
        const sal_op *op = &net->ops[i];
        const sal_act xa = buf_act(net, op->in, n);
        const float *in = act[op->in];
        float *y = act[op->out];
        const float *res = op->res >= 0 ? act[op->res] : NULL;
        if (op->kind == SAL_OP_LINEAR && i == net->nops - 1) y = logits;
        switch (op->kind) {
        case SAL_OP_CONV: {
            sal_conv_desc d = conv_desc(net, op, n);
            SAL_TRY(sal_conv_fwd(y, in, params + op->p0, &d, scratch));
            break;
        }
        case SAL_OP_SAL: {
            sal_sal_desc d = sal_desc(net, op, n);
            SAL_TRY(sal_sal_fwd(y, in, params + op->p0, params + op->p1, &d, scratch));
            break;
        }
        case SAL_OP_SHIFT: {
            sal_shift_desc d = {xa, op->stride};
            SAL_TRY(sal_shift_fwd(y, in, net->offsets + 2 * op->ioff, &d));
            break;
        }
        case SAL_OP_ASHIFT: {
            sal_shift_desc d = {xa, op->stride};
            SAL_TRY(sal_ashift_fwd(y, in, params + op->p0, &d));
            break;
        }
        case SAL_OP_BN: {
            sal_bn_desc d = {xa, net->train, SAL_BN_MOMENTUM, SAL_BN_EPS};
            float *sm = net->stats + net->stat_off[i], *si = sm + xa.c;
            float *rm = buffers + op->b0, *rv = buffers + op->b1;
            if (op->relu)
                SAL_TRY(sal_bn_relu_fwd(y, sm, si, rm, rv, in, params + op->p0, params + op->p1,
                                        res, &d));
            else
                SAL_TRY(sal_bn_fwd(y, sm, si, rm, rv, in, params + op->p0, params + op->p1, &d));
            break;
        }
        case SAL_OP_ADD:
            SAL_TRY(sal_add_fwd(y, in, res, xa));
            break;
        case SAL_OP_POOL:
            SAL_TRY(sal_gap_fwd(y, in, xa));
            break;
        case SAL_OP_LINEAR:
            SAL_TRY(sal_linear_fwd(y, in, params + op->p0, params + op->p1, n, xa.c, op->o));
            break;
        }
    }
    const sal_op *last = &net->ops[net->nops - 1];
    if (last->kind != SAL_OP_LINEAR) {  /* copy the last buffer out, (N, F) row-major */
        int64_t f = sal_program_numel(&net->p, last->out, 1);
        SAL_REQUIRE(net->p.shapes[3 * last->out + 1] * net->p.shapes[3 * last->out + 2] == 1, FN,
                    "the last op must produce (N, F) (a pool or a linear)");
        memcpy(logits, act[last->out], (size_t)(n * f) * sizeof(float));
    }
    net->p.n = n;
    return SAL_OK;
}

/* the gradients born before op i's backward (i = nops: before the first) start at zero */
static void zero_born(sal_net *net, int64_t i, int64_t n) {
    for (int64_t b = 1; b < net->p.nbuf; b++)
        if (net->gborn[b] == i && net->grad[b])
            memset(net->grad[b], 0, (size_t)sal_program_numel(&net->p, b, n) * sizeof(float));
}

static sal_status backward_locked(sal_net *net, float *grads, const float *dlogits,
                                  const float *params) {
    SAL_REQUIRE(net && grads && dlogits && params, FN, "net, grads, dlogits, params must not be NULL");
    SAL_REQUIRE(net->p.n >= 1, FN, "backward: no forward pass to differentiate");
    const int64_t n = net->p.n;
    float **act = net->p.act, *scratch = net->p.scratch;
    net->grad_cap = net->p.cap;
    for (int64_t s = 0; s < net->nslot; s++)
        if (!net->slot[s]) {
            net->slot[s] = malloc((size_t)(net->p.cap * net->slot_len[s]) * sizeof(float));
            if (!net->slot[s]) return sal_fail(SAL_ENOMEM, FN, "gradients: out of memory");
        }
    for (int64_t b = 0; b < net->p.nbuf; b++)
        net->grad[b] = net->gslot[b] >= 0 ? net->slot[net->gslot[b]] : NULL;
    zero_born(net, net->nops, n);
    const sal_op *last = &net->ops[net->nops - 1];
    /* the output's gradient: dlogits; a final linear reads it directly */
    const int64_t lastbuf = last->out;
    memcpy(net->grad[lastbuf], dlogits, (size_t)sal_program_numel(&net->p, lastbuf, n) * sizeof(float));
    for (int64_t i = net->nops - 1; i >= 0; i--) {
        const sal_op *op = &net->ops[i];
        zero_born(net, i, n);
        const sal_act xa = buf_act(net, op->in, n);
        const float *in = act[op->in];
        const float *dy = net->grad[op->out];
        float *dx = op->in == 0 ? NULL : net->grad[op->in];  /* no gradient for the input */
        float *dres = op->res >= 0 ? net->grad[op->res] : NULL;
        switch (op->kind) {
        case SAL_OP_CONV: {
            sal_conv_desc d = conv_desc(net, op, n);
            SAL_TRY(sal_conv_bwd(dx, grads + op->p0, dy, in, params + op->p0, &d, scratch));
            break;
        }
        case SAL_OP_SAL: {
            sal_sal_desc d = sal_desc(net, op, n);
            SAL_TRY(sal_sal_bwd(dx, grads + op->p0, grads + op->p1, dy, in, params + op->p0,
                                params + op->p1, &d, scratch));
            break;
        }
        case SAL_OP_SHIFT: {
            sal_shift_desc d = {xa, op->stride};
            if (dx) SAL_TRY(sal_shift_bwd(dx, dy, net->offsets + 2 * op->ioff, &d));
            break;
        }
        case SAL_OP_ASHIFT: {
            sal_shift_desc d = {xa, op->stride};
            SAL_TRY(sal_ashift_bwd(dx, grads + op->p0, dy, in, params + op->p0, &d));
            break;
        }
        case SAL_OP_BN: {
            sal_bn_desc d = {xa, net->train, SAL_BN_MOMENTUM, SAL_BN_EPS};
            const float *sm = net->stats + net->stat_off[i], *si = sm + xa.c;
            if (op->relu)
                SAL_TRY(sal_bn_relu_bwd(dx, grads + op->p0, grads + op->p1, dres, dy,
                                        act[op->out], in, params + op->p0, sm, si, &d));
            else
                SAL_TRY(sal_bn_bwd(dx, grads + op->p0, grads + op->p1, dy, in, params + op->p0,
                                   sm, si, &d));
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
        }
    }
    return SAL_OK;
}

sal_status sal_net_buffer(const sal_net *net, int64_t b, const float **act, sal_act *geom) {
    SAL_REQUIRE(net, FN, "net, act, geom must not be NULL");
    return sal_program_buffer(&net->p, b, act, geom);
}

int64_t sal_net_output_width(const sal_net *net) {
    return sal_program_numel(&net->p, net->ops[net->nops - 1].out, 1);
}

int64_t sal_net_last_batch(const sal_net *net) { return net->p.n; }

void sal_net_arena_sizes(const sal_net *net, int64_t *nparams, int64_t *nbuffers) {
    *nparams = net->p.narena;
    *nbuffers = net->nbuffers;
}

void sal_net_program(const sal_net *net, const int64_t **shapes, int64_t *nbuf,
                     const sal_op **ops, int64_t *nops, const int32_t **offsets, int64_t *noff) {
    if (shapes) *shapes = net->p.shapes;
    if (nbuf) *nbuf = net->p.nbuf;
    if (ops) *ops = net->ops;
    if (nops) *nops = net->nops;
    if (offsets) *offsets = net->offsets;
    if (noff) *noff = net->noff;
}
