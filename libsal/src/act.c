/* ReLU and residual add: elementwise, so both layouts are the same flat loop. */
#include "internal/layers_internal.h"

/* elementwise loops run in blocks of at least this many floats per thread */
#define ACT_PAR_MIN 32768

typedef struct {
    float *y, *y2;
    const float *a, *b;
} ew_task;

static int ew_threads(int64_t T) {
    const int64_t t = T / ACT_PAR_MIN;
    const int nt = sal_threads();
    return t < 1 ? 1 : (t < nt ? (int)t : nt);
}

static void relu_fwd_run(void *p, int64_t lo, int64_t hi, int tid) {
    const ew_task *t = p;
    for (int64_t i = lo; i < hi; i++) t->y[i] = t->a[i] < 0.0f ? 0.0f : t->a[i]; /* NaN propagates, as in PyTorch */
}
static void relu_bwd_run(void *p, int64_t lo, int64_t hi, int tid) {
    const ew_task *t = p;
    for (int64_t i = lo; i < hi; i++) t->y[i] += t->b[i] > 0.0f ? t->a[i] : 0.0f;
}
static void add_fwd_run(void *p, int64_t lo, int64_t hi, int tid) {
    const ew_task *t = p;
    for (int64_t i = lo; i < hi; i++) t->y[i] = t->a[i] + t->b[i];
}
static void add_bwd_run(void *p, int64_t lo, int64_t hi, int tid) {
    const ew_task *t = p;
    if (t->y) for (int64_t i = lo; i < hi; i++) t->y[i] += t->a[i];
    if (t->y2) for (int64_t i = lo; i < hi; i++) t->y2[i] += t->a[i];
}

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
    ew_task t = {y, NULL, x, NULL};
    sal_parallel_for(T, ew_threads(T), relu_fwd_run, &t);
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
    ew_task t = {dx, NULL, dy, y};
    sal_parallel_for(T, ew_threads(T), relu_bwd_run, &t);
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
    ew_task t = {y, NULL, a, b};
    sal_parallel_for(T, ew_threads(T), add_fwd_run, &t);
    return SAL_OK;
}

/* da (N,C,H,W) += dy (N,C,H,W), db (N,C,H,W) += dy */
sal_status sal_add_bwd(float *da, float *db, const float *dy, sal_act xa) {
    const char *fn = "sal_add_bwd";
    int64_t T;
    SAL_TRY(act_check(fn, xa, &T));
    if (!da && !db) return SAL_OK;
    SAL_REQUIRE_PTR(dy, fn, "dy", "N*C*H*W floats");
    ew_task t = {da, db, dy, NULL};
    sal_parallel_for(T, ew_threads(T), add_bwd_run, &t);
    return SAL_OK;
}
