/* Accounting: parameters, multiply-adds and shift traffic per op of a network program,
 * so that benchmarks, tables and papers use one set of numbers (DESIGN.md section 3).
 *
 * Units and conventions (per image, i.e. for one sample of the input shape):
 * - macs: multiply-adds of convolutions and Linear layers; BN, ReLU, add, pooling and
 *   shifts count 0.  FLOPs = 2 * macs wherever a table says FLOPs.
 * - params: conv and Linear weights, Linear bias, BN gamma and beta (not the running
 *   statistics).  A double: the binarised-SAL rule below counts fractions of a weight.
 * - shift_moves: elements written by shift ops (one per output element of a shift,
 *   zero-filled borders included); 0 for every other op.
 *
 * Training network (SAL_COUNT_TRAIN):
 *   a soft SAL layer is the dense 3x3 convolution it computes (O*C*9 weights,
 *   O*C*9*Ho*Wo MACs); its attention logits are training-only and go to train_only,
 *   not to params.  ASL shifts (2 per channel) are learned, so they count as params.
 *   bwd_macs: backward MACs of conv/linear = 2 x forward (input gradient + weight
 *   gradient), except for an op that reads the network input, whose input gradient is
 *   never computed (1 x forward).  Training cost per image = macs + bwd_macs (the
 *   attention's O(O*C*9) softmax work per step is not per image and not counted).
 *
 * Inference network (SAL_COUNT_INFER; what salnp.export builds):
 *   every BN that follows a conv/SAL is folded into that layer's weights (gamma/sqrt(var+eps)
 *   scales each output row) plus a bias (beta - mean*scale): the BN row counts 0 params
 *   and the layer row counts O bias values instead (so the folded net has one value per
 *   BN channel fewer than the training net).  A BN with no conv before it keeps 2*C.
 *   Binarised SAL (p > 0.5 with the given beta; slices with no p > 0.5 are pruned):
 *     unshared: kept slices K -> K * 36/32 params (32-bit weight + 4-bit position),
 *               K * Ho * Wo MACs, no shift traffic (offsets fused into the addressing);
 *     shared:   kept input channels Ck -> Ck * O + Ck * 4/32 params,
 *               Ck * O * Ho * Wo MACs, Ck * Ho * Wo shift moves.
 *   ASL offsets are rounded to integers: a fixed shift like SL's, 0 params.
 *   bwd_macs = 0. */
#ifndef SAL_COUNT_H
#define SAL_COUNT_H

#include "sal/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { SAL_COUNT_TRAIN = 0, SAL_COUNT_INFER = 1 } sal_count_mode;

typedef struct {
    int64_t op;             /* index in the program's op list */
    int64_t kind;           /* sal_op_kind (training program) or sal_iop_kind (inference) */
    int64_t in[3], out[3];  /* per-sample (C, H, W) of the input and output buffers */
    double params;          /* counted parameters (see above) */
    int64_t train_only;     /* training-only parameters (SAL attention logits) */
    int64_t kept;           /* binarised SAL: kept slices (unshared) or input channels
                               (shared); other ops: 0 */
    int64_t macs;           /* forward multiply-adds per image */
    int64_t bwd_macs;       /* backward multiply-adds per image (training mode) */
    int64_t shift_moves;    /* elements moved by shifts per image */
} sal_count_row;

struct sal_net;
struct sal_infer;
/* rows (nops) for the training program of net.  mode SAL_COUNT_TRAIN needs neither
 * params, buffers nor beta (they may be NULL); SAL_COUNT_INFER reads the SAL logits from
 * the parameter arena params (nparams floats) and the SAL masks (ops with b0 >= 0) from
 * the buffer arena buffers (nbuffers floats; NULL when no SAL op has a mask), and
 * binarises them with beta (finite, >= 0), exactly as the hard forward does.  A soft SAL
 * layer with a mask still counts as its dense 3x3 convolution in training mode (that is
 * what the training kernel computes). */
sal_status sal_net_count(const struct sal_net *net, const float *params, const float *buffers,
                         double beta, sal_count_mode mode, sal_count_row *rows);

/* rows (nops) for an inference program (SAL_COUNT_INFER conventions above; kind is a
 * sal_iop_kind of sal/infer.h) */
sal_status sal_infer_count(const struct sal_infer *net, sal_count_row *rows);

#ifdef __cplusplus
}
#endif
#endif
