/* Naive reference layers: the definitions written as loops, sums in double, no threads.
 * Batch norm has float and double twins (the double one backs the finite-difference
 * checks); the rest are float.  Argument checks are the fast kernels' (same messages). */
#include <math.h>

#include "internal/layers_internal.h"

/* ---- batch normalisation: two passes (mean, then centred variance), PyTorch's formula ---- */
#define REF_BN(SUFFIX, T)                                                                      \
    sal_status sal_ref_bn_fwd##SUFFIX(T *y, T *save_mean, T *save_invstd, T *running_mean,     \
                                      T *running_var, const T *x, const T *gamma,              \
                                      const T *beta, const sal_bn_desc *d) {                   \
        const char *fn = "sal_ref_bn_fwd" #SUFFIX;                                             \
        int64_t M;                                                                             \
        SAL_TRY(sal_bn_check_fn(fn, d, &M));                                                   \
        SAL_REQUIRE_PTR(y, fn, "y", "N*C*H*W values");                                         \
        SAL_REQUIRE_PTR(x, fn, "x", "N*C*H*W values");                                         \
        if (d->training)                                                                       \
            SAL_REQUIRE((running_mean == NULL) == (running_var == NULL), fn,                   \
                        "running_mean=%s, running_var=%s: give both or neither",               \
                        running_mean ? "set" : "NULL", running_var ? "set" : "NULL");          \
        else {                                                                                 \
            SAL_REQUIRE_PTR(running_mean, fn, "running_mean", "C values (eval mode)");         \
            SAL_REQUIRE_PTR(running_var, fn, "running_var", "C values (eval mode)");           \
        }                                                                                      \
        const sal_act a = d->x;                                                                \
        const int64_t sn = sal_act_sn(a), sc = sal_act_sc(a), HW = a.h * a.w;                  \
        for (int64_t c = 0; c < a.c; c++) {                                                    \
            double mean, var;                                                                  \
            if (d->training) {                                                                 \
                double s = 0.0, q = 0.0;                                                       \
                for (int64_t n = 0; n < a.n; n++)                                              \
                    for (int64_t i = 0; i < HW; i++) s += x[n * sn + c * sc + i];              \
                mean = s / (double)M;                                                          \
                for (int64_t n = 0; n < a.n; n++)                                              \
                    for (int64_t i = 0; i < HW; i++) {                                         \
                        double t = x[n * sn + c * sc + i] - mean;                              \
                        q += t * t;                                                            \
                    }                                                                          \
                var = q / (double)M;                                                           \
                if (running_mean) {                                                            \
                    running_mean[c] =                                                          \
                        (T)((1.0 - d->momentum) * running_mean[c] + d->momentum * mean);       \
                    running_var[c] = (T)((1.0 - d->momentum) * running_var[c] +                \
                                         d->momentum * q / (double)(M - 1));                   \
                }                                                                              \
            } else {                                                                           \
                mean = running_mean[c];                                                        \
                var = running_var[c];                                                          \
            }                                                                                  \
            const double invstd = 1.0 / sqrt(var + d->eps);                                    \
            if (save_mean) save_mean[c] = (T)mean;                                             \
            if (save_invstd) save_invstd[c] = (T)invstd;                                       \
            const double g = gamma ? gamma[c] : 1.0, b = beta ? beta[c] : 0.0;                 \
            for (int64_t n = 0; n < a.n; n++)                                                  \
                for (int64_t i = 0; i < HW; i++) {                                             \
                    const int64_t j = n * sn + c * sc + i;                                     \
                    y[j] = (T)((x[j] - mean) * invstd * g + b);                                \
                }                                                                              \
        }                                                                                      \
        return SAL_OK;                                                                         \
    }                                                                                          \
    sal_status sal_ref_bn_bwd##SUFFIX(T *dx, T *dgamma, T *dbeta, const T *dy, const T *x,     \
                                      const T *gamma, const T *save_mean,                      \
                                      const T *save_invstd, const sal_bn_desc *d) {            \
        const char *fn = "sal_ref_bn_bwd" #SUFFIX;                                             \
        int64_t M;                                                                             \
        SAL_TRY(sal_bn_check_fn(fn, d, &M));                                                   \
        SAL_REQUIRE_PTR(dy, fn, "dy", "N*C*H*W values");                                       \
        SAL_REQUIRE_PTR(x, fn, "x", "N*C*H*W values");                                         \
        SAL_REQUIRE_PTR(save_mean, fn, "save_mean", "C values from the forward");              \
        SAL_REQUIRE_PTR(save_invstd, fn, "save_invstd", "C values from the forward");          \
        const sal_act a = d->x;                                                                \
        const int64_t sn = sal_act_sn(a), sc = sal_act_sc(a), HW = a.h * a.w;                  \
        for (int64_t c = 0; c < a.c; c++) {                                                    \
            const double mean = save_mean[c], invstd = save_invstd[c];                         \
            const double g = gamma ? gamma[c] : 1.0;                                           \
            double sdy = 0.0, sdyx = 0.0; /* sum dy, sum dy * xhat */                          \
            for (int64_t n = 0; n < a.n; n++)                                                  \
                for (int64_t i = 0; i < HW; i++) {                                             \
                    const int64_t j = n * sn + c * sc + i;                                     \
                    sdy += dy[j];                                                              \
                    sdyx += dy[j] * (x[j] - mean) * invstd;                                    \
                }                                                                              \
            if (dgamma) dgamma[c] += (T)sdyx;                                                  \
            if (dbeta) dbeta[c] += (T)sdy;                                                     \
            if (!dx) continue;                                                                 \
            for (int64_t n = 0; n < a.n; n++)                                                  \
                for (int64_t i = 0; i < HW; i++) {                                             \
                    const int64_t j = n * sn + c * sc + i;                                     \
                    const double xhat = (x[j] - mean) * invstd;                                \
                    dx[j] += (T)(d->training                                                   \
                                     ? g * invstd * (dy[j] - sdy / M - xhat * sdyx / M)        \
                                     : g * invstd * dy[j]);                                    \
                }                                                                              \
        }                                                                                      \
        return SAL_OK;                                                                         \
    }

REF_BN(, float)
REF_BN(_f64, double)

/* ---- ReLU ---- */
sal_status sal_ref_relu_fwd(float *y, const float *x, sal_act xa) {
    SAL_TRY(sal_act_check("sal_ref_relu_fwd", "x", xa));
    for (int64_t i = 0; i < sal_act_numel(xa); i++) y[i] = x[i] < 0.0f ? 0.0f : x[i]; /* NaN propagates, as in PyTorch */
    return SAL_OK;
}

sal_status sal_ref_relu_bwd(float *dx, const float *dy, const float *y, sal_act xa) {
    SAL_TRY(sal_act_check("sal_ref_relu_bwd", "x", xa));
    if (!dx) return SAL_OK;
    for (int64_t i = 0; i < sal_act_numel(xa); i++)
        if (y[i] > 0.0f) dx[i] += dy[i];
    return SAL_OK;
}

/* ---- global average pooling ---- */
sal_status sal_ref_gap_fwd(float *y, const float *x, sal_act xa) {
    SAL_TRY(sal_act_check("sal_ref_gap_fwd", "x", xa));
    const int64_t sn = sal_act_sn(xa), sc = sal_act_sc(xa), HW = xa.h * xa.w;
    for (int64_t n = 0; n < xa.n; n++)
        for (int64_t c = 0; c < xa.c; c++) {
            double s = 0.0;
            for (int64_t i = 0; i < HW; i++) s += x[n * sn + c * sc + i];
            y[n * xa.c + c] = (float)(s / (double)HW);
        }
    return SAL_OK;
}

sal_status sal_ref_gap_bwd(float *dx, const float *dy, sal_act xa) {
    SAL_TRY(sal_act_check("sal_ref_gap_bwd", "x", xa));
    if (!dx) return SAL_OK;
    const int64_t sn = sal_act_sn(xa), sc = sal_act_sc(xa), HW = xa.h * xa.w;
    for (int64_t n = 0; n < xa.n; n++)
        for (int64_t c = 0; c < xa.c; c++)
            for (int64_t i = 0; i < HW; i++)
                dx[n * sn + c * sc + i] += (float)(dy[n * xa.c + c] / (double)HW);
    return SAL_OK;
}

/* ---- Linear ---- */
sal_status sal_ref_linear_fwd(float *y, const float *x, const float *w, const float *b, int64_t n,
                              int64_t i, int64_t o) {
    SAL_TRY(sal_linear_check_fn("sal_ref_linear_fwd", n, i, o));
    for (int64_t r = 0; r < n; r++)
        for (int64_t j = 0; j < o; j++) {
            double s = b ? b[j] : 0.0;
            for (int64_t p = 0; p < i; p++) s += (double)x[r * i + p] * w[j * i + p];
            y[r * o + j] = (float)s;
        }
    return SAL_OK;
}

sal_status sal_ref_linear_bwd(float *dx, float *dw, float *db, const float *dy, const float *x,
                              const float *w, int64_t n, int64_t i, int64_t o) {
    SAL_TRY(sal_linear_check_fn("sal_ref_linear_bwd", n, i, o));
    for (int64_t r = 0; dx && r < n; r++)
        for (int64_t p = 0; p < i; p++) {
            double s = 0.0;
            for (int64_t j = 0; j < o; j++) s += (double)dy[r * o + j] * w[j * i + p];
            dx[r * i + p] += (float)s;
        }
    for (int64_t j = 0; dw && j < o; j++)
        for (int64_t p = 0; p < i; p++) {
            double s = 0.0;
            for (int64_t r = 0; r < n; r++) s += (double)dy[r * o + j] * x[r * i + p];
            dw[j * i + p] += (float)s;
        }
    for (int64_t j = 0; db && j < o; j++) {
        double s = 0.0;
        for (int64_t r = 0; r < n; r++) s += dy[r * o + j];
        db[j] += (float)s;
    }
    return SAL_OK;
}

/* ---- softmax cross-entropy: softmax written out, then -log p[label] ---- */
sal_status sal_ref_xent_fwd(float *loss, int64_t *ncorrect, const float *logits,
                            const int32_t *labels, int64_t n, int64_t k) {
    const char *fn = "sal_ref_xent_fwd";
    SAL_REQUIRE_PTR(loss, fn, "loss", "one float");
    SAL_TRY(sal_xent_check_fn(fn, logits, labels, n, k));
    double total = 0.0;
    int64_t correct = 0;
    for (int64_t r = 0; r < n; r++) {
        const float *z = logits + r * k;
        double m = z[0];
        int64_t best = 0;
        for (int64_t j = 1; j < k; j++)
            if (z[j] > m) { m = z[j]; best = j; }
        double s = 0.0;
        for (int64_t j = 0; j < k; j++) s += exp(z[j] - m);
        total += -log(exp(z[labels[r]] - m) / s);
        correct += best == labels[r];
    }
    *loss = (float)(total / (double)n);
    if (ncorrect) *ncorrect = correct;
    return SAL_OK;
}

sal_status sal_ref_xent_bwd(float *dlogits, const float *logits, const int32_t *labels,
                            int64_t n, int64_t k, float scale) {
    SAL_TRY(sal_xent_check_fn("sal_ref_xent_bwd", logits, labels, n, k));
    for (int64_t r = 0; dlogits && r < n; r++) {
        const float *z = logits + r * k;
        double m = z[0], s = 0.0;
        for (int64_t j = 1; j < k; j++)
            if (z[j] > m) m = z[j];
        for (int64_t j = 0; j < k; j++) s += exp(z[j] - m);
        for (int64_t j = 0; j < k; j++) {
            const double p = exp(z[j] - m) / s;
            dlogits[r * k + j] += (float)((double)scale * (p - (j == labels[r])) / (double)n);
        }
    }
    return SAL_OK;
}

/* ---- SGD: torch.optim.SGD's loop, one element at a time ---- */
sal_status sal_ref_sgd_step(float *p, float *buf, const float *g, int64_t n,
                            const sal_sgd_desc *d, const sal_sgd_segment *segs, int64_t nseg,
                            int first) {
    SAL_TRY(sal_sgd_check_fn("sal_ref_sgd_step", p, buf, g, n, d, segs, nseg));
    int64_t s = 0, end = (segs && nseg > 0) ? segs[0].n : n;
    for (int64_t i = 0; i < n; i++) {
        while (i >= end) end += segs[++s].n;   /* skips empty segments */
        const double lrm = (segs && nseg > 0) ? segs[s].lr_mult : 1.0;
        const double wdm = (segs && nseg > 0) ? segs[s].wd_mult : 1.0;
        float grad = g[i];
        const float wd = (float)(d->weight_decay * wdm);
        if (wd != 0.0f) grad = grad + wd * p[i];
        if (d->momentum != 0) {
            const float mom = (float)d->momentum;
            if (first) buf[i] = grad;
            else buf[i] = buf[i] * mom + grad * (float)(1.0 - d->dampening);
            grad = d->nesterov ? grad + buf[i] * mom : buf[i];
        }
        p[i] = p[i] - (float)(d->lr * lrm) * grad;
    }
    return SAL_OK;
}
