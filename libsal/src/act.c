/* ReLU and residual add: elementwise, so both layouts are the same flat loop. */
#include "internal/layers_internal.h"

static sal_status act_check(const char *fn, sal_act xa, int64_t *numel) {
    SAL_TRY(sal_act_check(fn, "x", xa));
    *numel = sal_act_numel(xa);
    return SAL_OK;
}

/* y (N,C,H,W) = max(x (N,C,H,W), 0) */
sal_status sal_relu_fwd(float *y, const float *x, sal_act xa) {
    const char *fn = "sal_relu_fwd";
    int64_t T;
    SAL_TRY(act_check(fn, xa, &T));
    SAL_REQUIRE_PTR(y, fn, "y", "N*C*H*W floats");
    SAL_REQUIRE_PTR(x, fn, "x", "N*C*H*W floats");
#pragma omp parallel for num_threads(sal_threads()) schedule(static)
    for (int64_t i = 0; i < T; i++) y[i] = x[i] < 0.0f ? 0.0f : x[i]; /* NaN propagates, as in PyTorch */
    return SAL_OK;
}

/* dx (N,C,H,W) += dy (N,C,H,W) * (y (N,C,H,W) > 0) */
sal_status sal_relu_bwd(float *dx, const float *dy, const float *y, sal_act xa) {
    const char *fn = "sal_relu_bwd";
    int64_t T;
    SAL_TRY(act_check(fn, xa, &T));
    if (!dx) return SAL_OK;
    SAL_REQUIRE_PTR(dy, fn, "dy", "N*C*H*W floats");
    SAL_REQUIRE_PTR(y, fn, "y", "N*C*H*W floats (the output or the input of the ReLU)");
#pragma omp parallel for num_threads(sal_threads()) schedule(static)
    for (int64_t i = 0; i < T; i++) dx[i] += y[i] > 0.0f ? dy[i] : 0.0f;
    return SAL_OK;
}

/* y (N,C,H,W) = a (N,C,H,W) + b (N,C,H,W) */
sal_status sal_add_fwd(float *y, const float *a, const float *b, sal_act xa) {
    const char *fn = "sal_add_fwd";
    int64_t T;
    SAL_TRY(act_check(fn, xa, &T));
    SAL_REQUIRE_PTR(y, fn, "y", "N*C*H*W floats");
    SAL_REQUIRE_PTR(a, fn, "a", "N*C*H*W floats");
    SAL_REQUIRE_PTR(b, fn, "b", "N*C*H*W floats");
#pragma omp parallel for num_threads(sal_threads()) schedule(static)
    for (int64_t i = 0; i < T; i++) y[i] = a[i] + b[i];
    return SAL_OK;
}

/* da (N,C,H,W) += dy (N,C,H,W), db (N,C,H,W) += dy */
sal_status sal_add_bwd(float *da, float *db, const float *dy, sal_act xa) {
    const char *fn = "sal_add_bwd";
    int64_t T;
    SAL_TRY(act_check(fn, xa, &T));
    if (!da && !db) return SAL_OK;
    SAL_REQUIRE_PTR(dy, fn, "dy", "N*C*H*W floats");
#pragma omp parallel for num_threads(sal_threads()) schedule(static)
    for (int64_t i = 0; i < T; i++) {
        if (da) da[i] += dy[i];
        if (db) db[i] += dy[i];
    }
    return SAL_OK;
}
