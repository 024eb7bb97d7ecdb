/* The inference network: what salnp.export makes of a trained network.  Forward only.
 *
 * Like sal/net.h a network is a program of ops over channel-major (CNHW) activation
 * buffers, allocated once per batch size; buffer 0 is the input and the last op makes
 * the logits (N, K).  Every BN is already folded into the weights and a bias, SAL layers
 * are binarised and pruned, ASL offsets rounded; ReLU and residual adds run in the
 * epilogue of the op that produces them.  Weights live in one float arena passed to
 * every forward; ops name their pieces by offsets into it.
 *
 * Epilogue of CONV and GATHER (per output channel o, bias b = weights[p1], none if p1 < 0):
 *   v = acc + b;  res >= 0 and !res_post: v += res;  relu: v = max(v, 0);
 *   res >= 0 and res_post: v += res          (the SL block adds after its ReLU).
 *
 * GATHER is an unshared binarised SAL layer: a list of kept pairs (o, i, dy, dx) with one
 * weight each, |dy|, |dx| <= 1,
 *   y[o, Y, X] = sum over pairs of o: w * x[i, S*Y + dy, S*X + dx]    (0 outside).
 * It never materialises shifted copies: the input is laid out once per call in S*S
 * zero-padded phase planes (a re-layout of the input, one copy of its size, no shift),
 * and each pair becomes a constant offset into that layout, so a tile of outputs
 * accumulates w * (one contiguous load) per pair in registers.  The planes have
 * (Ho + 2/S) x (Wo + 2/S) positions; the kernel computes the border positions too
 * (and discards them), e.g. 10x10 for 8x8 outputs. */
#ifndef SAL_INFER_H
#define SAL_INFER_H

#include "sal/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    SAL_IOP_CONV = 0,    /* out = epi(conv(in, weights[p0]: (O,C,K,K), stride, pad)) */
    SAL_IOP_GATHER = 1,  /* out = epi(binarised unshared SAL): pairs[ioff .. ioff + npair)
                            (rows (o, i, dy, dx), sorted by o), weights[p0 .. p0 + npair) */
    SAL_IOP_SHIFT = 2,   /* out[c] = in[src_c] shifted by (dy_c, dx_c), stride: rows
                            ioff .. ioff + C_out of the shift table (src, dy, dx); drops or
                            reorders channels.  index_bits: bits per channel that count as
                            parameters (4: a learned 3x3 position, 0: a fixed pattern) */
    SAL_IOP_ADD = 3,     /* out = [relu](in + res) */
    SAL_IOP_POOL = 4,    /* out (N, C) = global average of in */
    SAL_IOP_LINEAR = 5   /* out (N, O) = in (N, I) weights[p0]^T (O,I) + weights[p1] (O) */
} sal_iop_kind;

/* One op; the field order is the one salnp.export.IFIELDS packs. */
typedef struct {
    int64_t kind, in, out, res, relu, res_post, o, k, stride, pad, p0, p1, ioff, npair,
        index_bits;
} sal_iop;

/* The op table describes itself (as sal/net.h): sal_iop's field names in order and the
 * op kinds by value ("conv", "gather", "shift", "add", "pool", "linear"). */
const char *const *sal_infer_op_fields(int64_t *nfields);
const char *const *sal_infer_op_kinds(int64_t *nkinds);

typedef struct sal_infer sal_infer;

/* shapes (nbuf, 3): per-sample (C, H, W); ops (nops); shifts (nshift, 3) int32 rows
 * (src, dy, dx); pairs (npairs, 4) int32 rows (o, i, dy, dx); nweights: arena size.
 * Everything is validated and copied. */
sal_status sal_infer_create(sal_infer **net, const int64_t *shapes, int64_t nbuf,
                            const sal_iop *ops, int64_t nops, const int32_t *shifts,
                            int64_t nshift, const int32_t *pairs, int64_t npairs,
                            int64_t nweights);
void sal_infer_free(sal_infer *net);

/* logits (N, K) from x (N, C, H, W) NCHW, (C, H, W) the program's input shape;
 * weights: the arena (nweights floats) */
sal_status sal_infer_forward(sal_infer *net, float *logits, const float *x, sal_act xg,
                             const float *weights);
int64_t sal_infer_output_width(const sal_infer *net);
int64_t sal_infer_num_weights(const sal_infer *net);
int64_t sal_infer_num_ops(const sal_infer *net);
/* activations of buffer b after the last forward (CNHW), for inspection and tests */
sal_status sal_infer_buffer(const sal_infer *net, int64_t b, const float **act, sal_act *geom);

/* read-only views of the program as validated and copied by sal_infer_create: shapes
 * (nbuf, 3), ops (nops); any output pointer may be NULL (its accounting: sal/count.h) */
void sal_infer_program(const sal_infer *net, const int64_t **shapes, int64_t *nbuf,
                       const sal_iop **ops, int64_t *nops);

/* naive reference of GATHER for tests: y (N,O,Ho,Wo) in x's layout, no epilogue but
 * the bias (NULL: none); pairs (npair, 4), w (npair) */
sal_status sal_ref_gather_fwd(float *y, const float *x, sal_act xa, int64_t o, int64_t stride,
                              const int32_t *pairs, const float *w, int64_t npair,
                              const float *bias);

#ifdef __cplusplus
}
#endif
#endif
