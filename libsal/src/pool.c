/* Global average pooling (N, C, H, W) -> (N, C).  The output is row-major (N, C) in both
 * layouts: it feeds a Linear layer. */
#include "internal/layers_internal.h"

typedef struct {
    float *y;
    const float *x;
    int64_t N, C, HW, sn, sc;
    double inv;
} gap_task;

static void gap_fwd_run(void *p, int64_t c0, int64_t c1, int tid) {
    const gap_task *t = p;
    for (int64_t c = c0; c < c1; c++)
        for (int64_t n = 0; n < t->N; n++) {
            const float *xr = t->x + n * t->sn + c * t->sc;
            float lanes[8] = {0};
            int64_t i = 0;
            for (; i + 8 <= t->HW; i += 8)
                for (int j = 0; j < 8; j++) lanes[j] += xr[i + j];
            double s = 0.0;
            for (; i < t->HW; i++) s += xr[i];
            for (int j = 0; j < 8; j++) s += lanes[j];
            t->y[n * t->C + c] = (float)(s * t->inv);
        }
}

/* t->y is dx, t->x is dy */
static void gap_bwd_run(void *p, int64_t c0, int64_t c1, int tid) {
    const gap_task *t = p;
    for (int64_t c = c0; c < c1; c++)
        for (int64_t n = 0; n < t->N; n++) {
            float *dxr = t->y + n * t->sn + c * t->sc;
            const float g = (float)(t->x[n * t->C + c] * t->inv);
            for (int64_t i = 0; i < t->HW; i++) dxr[i] += g;
        }
}

/* y (N, C) = mean over H, W of x (N,C,H,W) */
sal_status sal_gap_fwd(float *y, const float *x, sal_act xa) {
    const char *fn = "sal_gap_fwd";
    SAL_TRY(sal_act_check(fn, "x", xa));
    SAL_REQUIRE_PTR(y, fn, "y", "N*C floats");
    SAL_REQUIRE_PTR(x, fn, "x", "N*C*H*W floats");
    const int64_t N = xa.n, C = xa.c, HW = xa.h * xa.w, sn = sal_act_sn(xa), sc = sal_act_sc(xa);
    const double inv = 1.0 / (double)HW;
    gap_task t = {y, x, N, C, HW, sn, sc, inv};
    sal_parallel_for(C, sal_threads(), gap_fwd_run, &t);
    return SAL_OK;
}

/* dx (N,C,H,W) += dy (N, C) / (H W) */
sal_status sal_gap_bwd(float *dx, const float *dy, sal_act xa) {
    const char *fn = "sal_gap_bwd";
    SAL_TRY(sal_act_check(fn, "x", xa));
    if (!dx) return SAL_OK;
    SAL_REQUIRE_PTR(dy, fn, "dy", "N*C floats");
    const int64_t N = xa.n, C = xa.c, HW = xa.h * xa.w, sn = sal_act_sn(xa), sc = sal_act_sc(xa);
    const double inv = 1.0 / (double)HW;
    gap_task t = {dx, dy, N, C, HW, sn, sc, inv};
    sal_parallel_for(C, sal_threads(), gap_bwd_run, &t);
    return SAL_OK;
}
