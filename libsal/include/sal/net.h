/* A network as a program: activation buffers and a flat list of ops over them.
 *
 * The Python side (salnp.models) builds the program from a module tree; libsal runs it
 * forward and backward.  Parameters live in one float arena (gradients in a second of
 * the same length), BN running statistics in a buffer arena; ops name their pieces by
 * offsets into those arenas.  Activations are channel-major (CNHW) and allocated once
 * per batch size.  Buffer 0 is the input; pool and linear outputs are (N, F) row-major. */
#ifndef SAL_NET_H
#define SAL_NET_H

#include "sal/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    SAL_OP_CONV = 0,   /* out = conv(in, params[p0]: (O,C,K,K)), stride, pad */
    SAL_OP_SAL = 1,    /* out = SAL(in, w = params[p0], logits = params[p1]), shared;
                          b0 >= 0: mask (O|1, C, 9) of allowed positions = buffers[b0]
                          (sal/shift.h "Masks"), b0 = -1: no mask */
    SAL_OP_SHIFT = 2,  /* out = shift(in, offsets[ioff .. ioff + C]), stride */
    SAL_OP_ASHIFT = 3, /* out = active_shift(in, params[p0]: (C,2)), stride */
    SAL_OP_BN = 4,     /* out = [relu](bn(in; gamma = params[p0], beta = params[p1],
                          running mean/var = buffers[b0], buffers[b1]) [+ res]) */
    SAL_OP_ADD = 5,    /* out = in + res */
    SAL_OP_POOL = 6,   /* out (N, C) = global average of in */
    SAL_OP_LINEAR = 7  /* out (N, O) = in (N, I) params[p0]^T (O,I) + params[p1] (O) */
} sal_op_kind;

/* One op; the field order is the one salnp.models.FIELDS packs. */
typedef struct {
    int64_t kind, in, out, res, relu, o, k, stride, pad, p0, p1, b0, b1, shared, ioff;
} sal_op;

/* The op table describes itself: the names of sal_op's fields in order (nfields =
 * sizeof(sal_op) / sizeof(int64_t)) and of the op kinds by value ("conv", "sal", "shift",
 * "ashift", "bn", "add", "pool", "linear"), so that a caller packs rows by name. */
const char *const *sal_net_op_fields(int64_t *nfields);
const char *const *sal_net_op_kinds(int64_t *nkinds);

typedef struct sal_net sal_net;

/* shapes (nbuf, 3): per-sample (C, H, W) of each buffer; ops (nops); offsets (noff, 2)
 * int32 shift offsets that SHIFT ops index.  Everything is validated and copied. */
sal_status sal_net_create(sal_net **net, const int64_t *shapes, int64_t nbuf, const sal_op *ops,
                          int64_t nops, const int32_t *offsets, int64_t noff, int64_t nparams,
                          int64_t nbuffers);
void sal_net_free(sal_net *net);

/* logits (N, K) from x (N, C, H, W) NCHW; (C, H, W) must be the program's input shape.  train: batch statistics and running-stat
 * update (buffers written); hard: binarised SAL attention; beta: SAL inverse temperature. */
sal_status sal_net_forward(sal_net *net, float *logits, const float *x, sal_act xg,
                           const float *params, float *buffers, int train, int hard, double beta);
/* grads (nparams) += dL/dparams for the last forward, given dlogits (N, K).  SAL masks
 * are read from the buffer arena passed to that forward: it must still be alive. */
sal_status sal_net_backward(sal_net *net, float *grads, const float *dlogits, const float *params);
/* width K of the output (N, K); batch size of the last forward (0: none); arena sizes */
int64_t sal_net_output_width(const sal_net *net);
int64_t sal_net_last_batch(const sal_net *net);
void sal_net_arena_sizes(const sal_net *net, int64_t *nparams, int64_t *nbuffers);
/* (C, H, W) of buffer b, for inspection; activations of the last forward (CNHW) */
sal_status sal_net_buffer(const sal_net *net, int64_t b, const float **act, sal_act *geom);
/* read-only views of the program as validated and copied by sal_net_create: shapes
 * (nbuf, 3), ops (nops), offsets (noff, 2); any output pointer may be NULL */
void sal_net_program(const sal_net *net, const int64_t **shapes, int64_t *nbuf,
                     const sal_op **ops, int64_t *nops, const int32_t **offsets, int64_t *noff);

#ifdef __cplusplus
}
#endif
#endif
