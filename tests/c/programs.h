/* Small network programs the C tests share (sal/net.h). */
#ifndef SAL_TEST_PROGRAMS_H
#define SAL_TEST_PROGRAMS_H

#include <string.h>

#include "sal/net.h"

/* an op of kind with every optional field at its "none" value */
static inline sal_op op_of(int64_t kind, int64_t in, int64_t out) {
    sal_op op;
    memset(&op, 0, sizeof op);
    op.kind = kind, op.in = in, op.out = out, op.res = -1, op.p0 = -1, op.p1 = -1, op.b0 = -1;
    op.b1 = -1, op.ioff = -1;
    return op;
}

/* conv 3x3 stride 2 (3 -> 4) -> BN + ReLU -> pool -> linear (4 -> 6) on (3, 9, 7): shapes
 * (5, 3), ops (4); 146 parameters (conv 0.., BN gamma 108, beta 112, linear 116, bias 140)
 * and 8 buffer values (running mean 0, variance 4) */
static inline void conv_bn_pool_linear(int64_t shapes[5][3], sal_op ops[4]) {
    const int64_t s[5][3] = {{3, 9, 7}, {4, 5, 4}, {4, 5, 4}, {4, 1, 1}, {6, 1, 1}};
    memcpy(shapes, s, sizeof s);
    ops[0] = op_of(SAL_OP_CONV, 0, 1);
    ops[0].o = 4, ops[0].k = 3, ops[0].stride = 2, ops[0].pad = 1, ops[0].p0 = 0;
    ops[1] = op_of(SAL_OP_BN, 1, 2);
    ops[1].relu = 1, ops[1].p0 = 108, ops[1].p1 = 112, ops[1].b0 = 0, ops[1].b1 = 4;
    ops[2] = op_of(SAL_OP_POOL, 2, 3);
    ops[3] = op_of(SAL_OP_LINEAR, 3, 4);
    ops[3].o = 6, ops[3].p0 = 116, ops[3].p1 = 140;
}

#endif
