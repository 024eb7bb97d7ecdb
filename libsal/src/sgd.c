/* SGD with momentum, dampening, Nesterov and weight decay over a flat parameter arena,
 * exactly torch.optim.SGD's update; segments give runs their own lr / weight-decay
 * multipliers (PyTorch's parameter groups). */
#include <math.h>

#include "internal/layers_internal.h"

sal_status sal_sgd_check_fn(const char *fn, const float *p, const float *buf, const float *g,
                            int64_t n, const sal_sgd_desc *d, const sal_sgd_segment *segs,
                            int64_t nseg) {
    SAL_REQUIRE(d != NULL, fn, "desc=NULL: must point to a sal_sgd_desc");
    SAL_REQUIRE(n >= 0, fn, "n=%lld: must be >= 0", (long long)n);
    SAL_REQUIRE(d->lr >= 0 && isfinite(d->lr), fn, "lr=%g: must be finite and >= 0", d->lr);
    SAL_REQUIRE(d->momentum >= 0 && isfinite(d->momentum), fn,
                "momentum=%g: must be finite and >= 0", d->momentum);
    SAL_REQUIRE(d->dampening >= 0 && isfinite(d->dampening), fn,
                "dampening=%g: must be finite and >= 0", d->dampening);
    SAL_REQUIRE(d->weight_decay >= 0 && isfinite(d->weight_decay), fn,
                "weight_decay=%g: must be finite and >= 0", d->weight_decay);
    SAL_REQUIRE(!d->nesterov || (d->momentum > 0 && d->dampening == 0), fn,
                "nesterov=1: needs momentum > 0 and dampening = 0 (momentum=%g, dampening=%g)",
                d->momentum, d->dampening);
    SAL_REQUIRE(nseg >= 0, fn, "nseg=%lld: must be >= 0", (long long)nseg);
    SAL_REQUIRE(nseg == 0 || segs != NULL, fn, "segs=NULL: must point to nseg=%lld segments",
                (long long)nseg);
    if (segs && nseg > 0) {
        int64_t tot = 0;
        for (int64_t s = 0; s < nseg; s++) {
            SAL_REQUIRE(segs[s].n >= 0 && segs[s].n <= n - tot, fn,
                        "segs[%lld].n=%lld: segments must cover the n=%lld elements exactly",
                        (long long)s, (long long)segs[s].n, (long long)n);
            SAL_REQUIRE(segs[s].lr_mult >= 0 && isfinite(segs[s].lr_mult), fn,
                        "segs[%lld].lr_mult=%g: must be finite and >= 0", (long long)s,
                        segs[s].lr_mult);
            SAL_REQUIRE(segs[s].wd_mult >= 0 && isfinite(segs[s].wd_mult), fn,
                        "segs[%lld].wd_mult=%g: must be finite and >= 0", (long long)s,
                        segs[s].wd_mult);
            tot += segs[s].n;
        }
        SAL_REQUIRE(tot == n, fn, "segments cover %lld elements: must cover n=%lld exactly",
                    (long long)tot, (long long)n);
    }
    if (n > 0) {
        SAL_REQUIRE_PTR(p, fn, "p", "n floats");
        SAL_REQUIRE_PTR(g, fn, "g", "n floats");
        SAL_REQUIRE(d->momentum == 0 || buf != NULL, fn,
                    "buf=NULL: must point to n floats when momentum=%g > 0", d->momentum);
    }
    return SAL_OK;
}

typedef struct {
    float *p, *buf;
    const float *g;
    int64_t lo;
    float lr, wd, mom, damp;
    int nesterov, first;
} sgd_task;

static void sgd_block(void *q, int64_t i0, int64_t i1, int tid) {
    const sgd_task *t = q;
    float *p = t->p, *buf = t->buf;
    const float *g = t->g;
    const float lr = t->lr, wd = t->wd, mom = t->mom, keep = 1.0f - t->damp;
    const int nesterov = t->nesterov, first = t->first;
    for (int64_t i = t->lo + i0; i < t->lo + i1; i++) {
        float d = g[i];
        if (wd != 0.0f) d += wd * p[i];
        if (mom != 0.0f) {
            const float b = first ? d : mom * buf[i] + keep * d;
            buf[i] = b;
            d = nesterov ? d + mom * b : b;
        }
        p[i] -= lr * d;
    }
}

/* p (n) -= lr * update(g (n), buf (n)) for one run [lo, hi) with lr, wd */
static void sgd_run(float *p, float *buf, const float *g, int64_t lo, int64_t hi, float lr,
                    float wd, float mom, float damp, int nesterov, int first) {
    sgd_task t = {p, buf, g, lo, lr, wd, mom, damp, nesterov, first};
    const int64_t n = hi - lo, nt = n / 32768 < sal_threads() ? n / 32768 : sal_threads();
    sal_parallel_for(n, nt < 1 ? 1 : (int)nt, sgd_block, &t);
}

/* p, buf (n) updated from g (n): one torch.optim.SGD step, per-segment multipliers */
sal_status sal_sgd_step(float *p, float *buf, const float *g, int64_t n, const sal_sgd_desc *d,
                        const sal_sgd_segment *segs, int64_t nseg, int first) {
    SAL_TRY(sal_sgd_check_fn("sal_sgd_step", p, buf, g, n, d, segs, nseg));
    const float mom = (float)d->momentum, damp = (float)d->dampening;
    if (!segs || nseg == 0) {
        sgd_run(p, buf, g, 0, n, (float)d->lr, (float)d->weight_decay, mom, damp, d->nesterov,
                first);
        return SAL_OK;
    }
    int64_t lo = 0;
    for (int64_t s = 0; s < nseg; s++) {
        sgd_run(p, buf, g, lo, lo + segs[s].n, (float)(d->lr * segs[s].lr_mult),
                (float)(d->weight_decay * segs[s].wd_mult), mom, damp, d->nesterov, first);
        lo += segs[s].n;
    }
    return SAL_OK;
}
