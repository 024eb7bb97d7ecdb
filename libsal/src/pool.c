/* Global average pooling (N, C, H, W) -> (N, C).  The output is row-major (N, C) in both
 * layouts: it feeds a Linear layer. */
#include "internal/layers_internal.h"

/* y (N, C) = mean over H, W of x (N,C,H,W) */
sal_status sal_gap_fwd(float *y, const float *x, sal_act xa) {
    const char *fn = "sal_gap_fwd";
    SAL_TRY(sal_act_check(fn, "x", xa));
    SAL_REQUIRE_PTR(y, fn, "y", "N*C floats");
    SAL_REQUIRE_PTR(x, fn, "x", "N*C*H*W floats");
    const int64_t N = xa.n, C = xa.c, HW = xa.h * xa.w, sn = sal_act_sn(xa), sc = sal_act_sc(xa);
    const double inv = 1.0 / (double)HW;
#pragma omp parallel for num_threads(sal_threads()) schedule(static)
    for (int64_t c = 0; c < C; c++)
        for (int64_t n = 0; n < N; n++) {
            const float *xr = x + n * sn + c * sc;
            float lanes[8] = {0};
            int64_t i = 0;
            for (; i + 8 <= HW; i += 8)
                for (int j = 0; j < 8; j++) lanes[j] += xr[i + j];
            double s = 0.0;
            for (; i < HW; i++) s += xr[i];
            for (int j = 0; j < 8; j++) s += lanes[j];
            y[n * C + c] = (float)(s * inv);
        }
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
#pragma omp parallel for num_threads(sal_threads()) schedule(static)
    for (int64_t c = 0; c < C; c++)
        for (int64_t n = 0; n < N; n++) {
            float *dxr = dx + n * sn + c * sc;
            const float g = (float)(dy[n * C + c] * inv);
            for (int64_t i = 0; i < HW; i++) dxr[i] += g;
        }
    return SAL_OK;
}
