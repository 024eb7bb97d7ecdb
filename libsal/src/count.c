/* Accounting of a network program (sal/count.h): it counts what the program holds. */
#include <string.h>

#include "internal/internal.h"
#include "sal/count.h"
#include "sal/net.h"

sal_status sal_net_count(const struct sal_net *net, sal_count_row *rows) {
    SAL_REQUIRE(net && rows, "sal_net_count", "net and rows must not be NULL");
    const int64_t *shapes;
    const sal_op *ops;
    int64_t nops;
    sal_net_program(net, &shapes, NULL, &ops, &nops);
    const int trainable = sal_net_trainable(net, NULL);
    for (int64_t i = 0; i < nops; i++) {
        const sal_op *op = &ops[i];
        const int64_t *si = shapes + 3 * op->in, *so = shapes + 3 * op->out;
        sal_count_row *r = &rows[i];
        memset(r, 0, sizeof *r);
        r->op = i, r->kind = op->kind;
        memcpy(r->in, si, sizeof r->in);
        memcpy(r->out, so, sizeof r->out);
        const int64_t C = si[0], HWo = so[1] * so[2], bias = op->p1 >= 0 ? op->o : 0;
        switch (op->kind) {
        case SAL_OP_CONV:
            r->params = (double)(op->o * C * op->k * op->k + bias);
            r->macs = op->o * C * op->k * op->k * HWo;
            break;
        case SAL_OP_SAL:
            r->params = (double)(op->o * C * 9);
            r->train_only = (op->shared ? 1 : op->o) * C * 9;
            r->macs = op->o * C * 9 * HWo;
            break;
        case SAL_OP_GATHER:
            r->kept = op->npair;
            r->params = (double)op->npair * 36.0 / 32.0 + (double)bias;
            r->macs = op->npair * HWo;
            break;
        case SAL_OP_SHIFT:
            r->params = (double)(so[0] * op->index_bits) / 32.0;
            r->kept = op->index_bits ? so[0] : 0;
            r->shift_moves = so[0] * HWo;
            break;
        case SAL_OP_ASHIFT:
            r->params = (double)(2 * C);
            r->shift_moves = C * HWo;
            break;
        case SAL_OP_BN:
            r->params = (double)(2 * C);
            break;
        case SAL_OP_LINEAR:
            r->params = (double)(op->o * C + op->o);
            r->macs = op->o * C;
            break;
        default:  /* add, pool: nothing to count */
            break;
        }
        if (trainable && (op->kind == SAL_OP_CONV || op->kind == SAL_OP_SAL ||
                          op->kind == SAL_OP_LINEAR))
            r->bwd_macs = (op->in == 0 ? 1 : 2) * r->macs;   /* no input gradient for the input */
    }
    return SAL_OK;
}
