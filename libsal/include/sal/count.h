/* Accounting: parameters, multiply-adds and shift traffic per op of a network program
 * (sal/net.h), so that benchmarks, tables and papers use one set of numbers (DESIGN.md
 * section 3).  It counts the program it is given and predicts nothing: the inference cost
 * of a trained network is the count of its export (salnp.export, a program rewrite).
 *
 * Units and conventions (per image, i.e. for one sample of the input shape):
 * - macs: multiply-adds of CONV, SAL, GATHER and LINEAR ops; BN, ReLU, add, pooling and
 *   shifts count 0.  FLOPs = 2 * macs wherever a table says FLOPs.
 * - params: conv and Linear weights, a conv's or a Linear's bias, BN gamma and beta (not the
 *   running statistics).  A double: the rules below count fractions of a weight.
 * - shift_moves: elements written by shift ops (one per output element of a shift,
 *   zero-filled borders included); 0 for every other op.
 * Per kind:
 *   CONV    O*C*K*K (+ O with a bias) params, O*C*K*K*Ho*Wo MACs
 *   SAL     the dense 3x3 convolution it computes in training (O*C*9 params and
 *           O*C*9*Ho*Wo MACs); its attention logits are training-only: train_only, not params
 *   GATHER  npair * 36/32 params (a 32-bit weight + a 4-bit position) (+ O bias),
 *           npair*Ho*Wo MACs, kept = npair, no shift traffic (offsets fused into addressing)
 *   SHIFT   C_out * index_bits / 32 params (4: a learned position, 0: a fixed pattern),
 *           kept = C_out when index_bits > 0
 *   ASHIFT  2*C params (learned real offsets)
 *   BN      2*C; LINEAR O*I + O, O*I MACs; ADD, POOL nothing.
 * bwd_macs: backward MACs of CONV, SAL and LINEAR = 2 x forward (input gradient + weight
 * gradient), except for an op that reads the network input, whose input gradient is never
 * computed (1 x forward); 0 for every op of a program backward refuses (an exported one).
 * Training cost per image = macs + bwd_macs (the attention's O(O*C*9) softmax work per
 * step is not per image and not counted). */
#ifndef SAL_COUNT_H
#define SAL_COUNT_H

#include "sal/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int64_t op;             /* index in the program's op list */
    int64_t kind;           /* sal_op_kind */
    int64_t in[3], out[3];  /* per-sample (C, H, W) of the input and output buffers */
    double params;          /* counted parameters (see above) */
    int64_t train_only;     /* training-only parameters (SAL attention logits) */
    int64_t kept;           /* GATHER: kept pairs; SHIFT with index bits: kept channels; else 0 */
    int64_t macs;           /* forward multiply-adds per image */
    int64_t bwd_macs;       /* backward multiply-adds per image */
    int64_t shift_moves;    /* elements moved by shifts per image */
} sal_count_row;

struct sal_net;
/* rows (nops) of the program of net */
sal_status sal_net_count(const struct sal_net *net, sal_count_row *rows);

#ifdef __cplusplus
}
#endif
#endif
