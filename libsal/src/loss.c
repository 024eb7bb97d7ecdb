/* Softmax cross-entropy over logits (N, K) with int32 labels (N), mean over the batch.
 * Each row subtracts its maximum before exp (no overflow); sums in double. */
#include <math.h>

#include "internal/layers_internal.h"

sal_status sal_xent_check_fn(const char *fn, const float *logits, const int32_t *labels,
                             int64_t n, int64_t k) {
    SAL_REQUIRE(n >= 1, fn, "N=%lld: must be >= 1", (long long)n);
    SAL_REQUIRE(k >= 1 && k <= INT32_MAX, fn, "K=%lld: must be in [1, 2^31)", (long long)k);
    int64_t t;
    SAL_TRY(sal_checked_prod(fn, "logits N*K", &t, 2, n, k));
    SAL_REQUIRE_PTR(logits, fn, "logits", "N*K floats");
    SAL_REQUIRE_PTR(labels, fn, "labels", "N int32");
    for (int64_t r = 0; r < n; r++)
        SAL_REQUIRE(labels[r] >= 0 && labels[r] < k, fn, "labels[%lld]=%d: must be in [0, K=%lld)",
                    (long long)r, (int)labels[r], (long long)k);
    return SAL_OK;
}

/* index of the first maximum of row z (K); NaN never wins */
static inline int64_t row_argmax(const float *z, int64_t k) {
    int64_t best = 0;
    for (int64_t j = 1; j < k; j++)
        if (z[j] > z[best]) best = j;
    return best;
}

/* log sum_j exp(z_j) of row z (K), stable */
static inline double row_logsumexp(const float *z, int64_t k) {
    const float m = z[row_argmax(z, k)];
    double s = 0.0;
    for (int64_t j = 0; j < k; j++) s += exp((double)z[j] - m);
    return m + log(s);
}

/* *loss = mean_n (logsumexp(logits[n]) - logits[n, labels[n]]), logits (N, K), labels (N) */
sal_status sal_xent_fwd(float *loss, int64_t *ncorrect, const float *logits,
                        const int32_t *labels, int64_t n, int64_t k) {
    const char *fn = "sal_xent_fwd";
    SAL_REQUIRE_PTR(loss, fn, "loss", "one float");
    SAL_TRY(sal_xent_check_fn(fn, logits, labels, n, k));
    double total = 0.0;
    int64_t correct = 0;
    /* serial: N*K is small next to a wake-up of the pool */
    for (int64_t r = 0; r < n; r++) {
        const float *z = logits + r * k;
        total += row_logsumexp(z, k) - z[labels[r]];
        correct += row_argmax(z, k) == labels[r];
    }
    *loss = (float)(total / (double)n);
    if (ncorrect) *ncorrect = correct;
    return SAL_OK;
}

/* dlogits (N, K) += scale * (softmax(logits (N, K)) - onehot(labels (N))) / N */
sal_status sal_xent_bwd(float *dlogits, const float *logits, const int32_t *labels, int64_t n,
                        int64_t k, float scale) {
    const char *fn = "sal_xent_bwd";
    SAL_TRY(sal_xent_check_fn(fn, logits, labels, n, k));
    SAL_REQUIRE(isfinite(scale), fn, "scale=%g: must be finite", (double)scale);
    if (!dlogits) return SAL_OK;
    const double f = (double)scale / (double)n;
    for (int64_t r = 0; r < n; r++) {
        const float *z = logits + r * k;
        float *g = dlogits + r * k;
        const double lse = row_logsumexp(z, k);
        for (int64_t j = 0; j < k; j++) g[j] += (float)(f * exp((double)z[j] - lse));
        g[labels[r]] -= (float)f;
    }
    return SAL_OK;
}

/* pred (N) = first argmax over K of logits (N, K) */
sal_status sal_argmax(int32_t *pred, const float *logits, int64_t n, int64_t k) {
    const char *fn = "sal_argmax";
    SAL_REQUIRE(n >= 1, fn, "N=%lld: must be >= 1", (long long)n);
    SAL_REQUIRE(k >= 1 && k <= INT32_MAX, fn, "K=%lld: must be in [1, 2^31)", (long long)k);
    SAL_REQUIRE_PTR(pred, fn, "pred", "N int32");
    SAL_REQUIRE_PTR(logits, fn, "logits", "N*K floats");
    for (int64_t r = 0; r < n; r++) pred[r] = (int32_t)row_argmax(logits + r * k, k);
    return SAL_OK;
}
