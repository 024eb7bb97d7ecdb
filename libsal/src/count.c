/* Accounting of the network programs (training: sal/net.h, inference: sal/infer.h).
 * A training program: parameters, MACs, backward MACs and shift traffic
 * per op, for the training network or for the inference network export would build
 * from it.  Conventions: sal/count.h (and DESIGN.md section 3). */
#include <math.h>
#include <string.h>

#include "internal/internal.h"
#include "sal/count.h"
#include "sal/infer.h"
#include "sal/net.h"
#include "sal/attention.h"

static const char *FN = "sal_net_count";

/* kept slices of a binarised SAL layer: rows of a (L, 9) (mask m: allowed positions,
 * NULL: all) with some p > 0.5 */
static sal_status sal_kept(const float *a, const float *m, int64_t l, double beta,
                           int64_t *kept) {
    float p[9];
    *kept = 0;
    for (int64_t i = 0; i < l; i++) {
        SAL_TRY(sal_attn_probs_masked(p, a + 9 * i, m ? m + 9 * i : NULL, 1, beta, 1));
        int any = 0;
        for (int q = 0; q < 9; q++) any |= p[q] > 0.5f;
        *kept += any;
    }
    return SAL_OK;
}

sal_status sal_net_count(const sal_net *net, const float *params, const float *buffers,
                         double beta, sal_count_mode mode, sal_count_row *rows) {
    SAL_REQUIRE(net && rows, FN, "net and rows must not be NULL");
    SAL_REQUIRE(mode == SAL_COUNT_TRAIN || mode == SAL_COUNT_INFER, FN,
                "mode=%d: must be SAL_COUNT_TRAIN or SAL_COUNT_INFER", (int)mode);
    const int64_t *shapes;
    const sal_op *ops;
    int64_t nbuf, nops, nparams, nbuffers;
    sal_net_program(net, &shapes, &nbuf, &ops, &nops, NULL, NULL);
    sal_net_arena_sizes(net, &nparams, &nbuffers);
    const int infer = mode == SAL_COUNT_INFER;
    if (infer) {
        SAL_REQUIRE(params != NULL, FN, "params=NULL: inference counts read the SAL logits");
        SAL_REQUIRE(isfinite(beta) && beta >= 0.0, FN, "beta=%g: must be finite and >= 0", beta);
    }
    for (int64_t i = 0; i < nops; i++) {
        const sal_op *op = &ops[i];
        const int64_t *si = shapes + 3 * op->in, *so = shapes + 3 * op->out;
        sal_count_row *r = &rows[i];
        memset(r, 0, sizeof *r);
        r->op = i, r->kind = op->kind;
        memcpy(r->in, si, sizeof r->in);
        memcpy(r->out, so, sizeof r->out);
        const int64_t C = si[0], HWo = so[1] * so[2];
        const int64_t bwd_factor = op->in == 0 ? 1 : 2;  /* no input gradient for the input */
        switch (op->kind) {
        case SAL_OP_CONV:
            r->params = (double)(op->o * C * op->k * op->k);
            r->macs = op->o * C * op->k * op->k * HWo;
            break;
        case SAL_OP_SAL: {
            const int64_t L = (op->shared ? 1 : op->o) * C;
            if (!infer) {
                r->params = (double)(op->o * C * 9);
                r->train_only = L * 9;
                r->macs = op->o * C * 9 * HWo;
                break;
            }
            SAL_REQUIRE(op->b0 < 0 || buffers != NULL, FN,
                        "buffers=NULL: op %lld has a SAL mask in the buffer arena", (long long)i);
            SAL_TRY(sal_kept(params + op->p1, op->b0 >= 0 ? buffers + op->b0 : NULL, L, beta,
                             &r->kept));
            if (op->shared) {
                r->params = (double)(r->kept * op->o) + (double)r->kept * 4.0 / 32.0;
                r->macs = r->kept * op->o * HWo;
                r->shift_moves = r->kept * HWo;
            } else {
                r->params = (double)r->kept * 36.0 / 32.0;
                r->macs = r->kept * HWo;
            }
            break;
        }
        case SAL_OP_SHIFT:
            r->shift_moves = C * HWo;
            break;
        case SAL_OP_ASHIFT:
            r->params = infer ? 0.0 : (double)(2 * C);
            r->shift_moves = C * HWo;
            break;
        case SAL_OP_BN: {
            int64_t prod = -1;  /* the op that wrote this BN's input */
            for (int64_t j = i - 1; j >= 0 && prod < 0; j--)
                if (ops[j].out == op->in) prod = j;
            const int folds = prod >= 0 && (ops[prod].kind == SAL_OP_CONV ||
                                            ops[prod].kind == SAL_OP_SAL);
            if (infer && folds)
                rows[prod].params += (double)C;   /* the folded bias */
            else
                r->params = (double)(2 * C);
            break;
        }
        case SAL_OP_LINEAR:
            r->params = (double)(op->o * C + op->o);
            r->macs = op->o * C;
            break;
        default:  /* add, pool: nothing to count */
            break;
        }
        if (!infer && (op->kind == SAL_OP_CONV || op->kind == SAL_OP_SAL ||
                       op->kind == SAL_OP_LINEAR))
            r->bwd_macs = bwd_factor * r->macs;
    }
    return SAL_OK;
}

/* ---- the inference program (sal/infer.h) ------------------------------------------ */

sal_status sal_infer_count(const sal_infer *net, sal_count_row *rows) {
    SAL_REQUIRE(net && rows, "sal_infer_count", "net and rows must not be NULL");
    const int64_t *shapes;
    const sal_iop *ops;
    int64_t nops;
    sal_infer_program(net, &shapes, NULL, &ops, &nops);
    for (int64_t i = 0; i < nops; i++) {
        const sal_iop *op = &ops[i];
        const int64_t *si = shapes + 3 * op->in, *so = shapes + 3 * op->out;
        sal_count_row *r = &rows[i];
        memset(r, 0, sizeof *r);
        r->op = i, r->kind = op->kind;
        memcpy(r->in, si, sizeof r->in);
        memcpy(r->out, so, sizeof r->out);
        const int64_t C = si[0], HWo = so[1] * so[2], bias = op->p1 >= 0 ? op->o : 0;
        switch (op->kind) {
        case SAL_IOP_CONV:
            r->params = (double)(op->o * C * op->k * op->k + bias);
            r->macs = op->o * C * op->k * op->k * HWo;
            break;
        case SAL_IOP_GATHER:
            r->kept = op->npair;
            r->params = (double)op->npair * 36.0 / 32.0 + (double)bias;
            r->macs = op->npair * HWo;
            break;
        case SAL_IOP_SHIFT:
            r->params = (double)(so[0] * op->index_bits) / 32.0;
            r->kept = op->index_bits ? so[0] : 0;
            r->shift_moves = so[0] * HWo;
            break;
        case SAL_IOP_LINEAR:
            r->params = (double)(op->o * C + op->o);
            r->macs = op->o * C;
            break;
        default:
            break;
        }
    }
    return SAL_OK;
}
