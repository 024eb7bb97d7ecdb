/* Linear with bias: y (N, O) = x (N, I) W (O, I)^T + b (O).  Three GEMMs through sal_sgemm. */
#include "internal/layers_internal.h"

sal_status sal_linear_check_fn(const char *fn, int64_t n, int64_t i, int64_t o) {
    SAL_REQUIRE(n >= 1, fn, "N=%lld: must be >= 1", (long long)n);
    SAL_REQUIRE(i >= 1, fn, "I=%lld: must be >= 1", (long long)i);
    SAL_REQUIRE(o >= 1, fn, "O=%lld: must be >= 1", (long long)o);
    int64_t t;
    SAL_TRY(sal_checked_prod(fn, "x N*I", &t, 2, n, i));
    SAL_TRY(sal_checked_prod(fn, "w O*I", &t, 2, o, i));
    SAL_TRY(sal_checked_prod(fn, "y N*O", &t, 2, n, o));
    return SAL_OK;
}

/* Up to this many weights (O*I) the forward is a plain loop, for any N (so that every batch
 * size sums in the same order): a ResNet's head (64 x 10, 640 weights) took 12-15 us per
 * image through sal_sgemm at batch 1 (the GEMM call's fixed cost), 1.6-7 % of an exported
 * network's forward. */
#define LINEAR_LOOP ((int64_t)1 << 14)

/* y (N, O) = x (N, I) w (O, I)^T + b (O); b may be NULL */
sal_status sal_linear_fwd(float *y, const float *x, const float *w, const float *b, int64_t n,
                          int64_t i, int64_t o) {
    const char *fn = "sal_linear_fwd";
    SAL_TRY(sal_linear_check_fn(fn, n, i, o));
    SAL_REQUIRE_PTR(y, fn, "y", "N*O floats");
    SAL_REQUIRE_PTR(x, fn, "x", "N*I floats");
    SAL_REQUIRE_PTR(w, fn, "w", "O*I floats");
    if (o * i <= LINEAR_LOOP) {   /* a classifier head: a loop (a GEMM call costs 10-20 us) */
        for (int64_t r = 0; r < n; r++) {
            float *yr = y + r * o;
            const float *xr = x + r * i;
            for (int64_t j = 0; j < o; j++) yr[j] = 0.0f;
            for (int64_t p = 0; p < i; p++)
                for (int64_t j = 0; j < o; j++) yr[j] += xr[p] * w[j * i + p];
            if (b)
                for (int64_t j = 0; j < o; j++) yr[j] += b[j];
        }
        return SAL_OK;
    }
    if (b)
        for (int64_t r = 0; r < n; r++)
            for (int64_t j = 0; j < o; j++) y[r * o + j] = b[j];
    /* Y (N, O) = X (N, I) W^T (I, O): element (p, j) of W^T is w[j*I + p] */
    return sal_sgemm(n, o, i, 1.0f, x, i, 1, w, 1, i, b ? 1.0f : 0.0f, y, o, 1, sal_threads());
}

/* dx (N, I) += dy (N, O) w (O, I); dw (O, I) += dy^T x; db (O) += sum_n dy */
sal_status sal_linear_bwd(float *dx, float *dw, float *db, const float *dy, const float *x,
                          const float *w, int64_t n, int64_t i, int64_t o) {
    const char *fn = "sal_linear_bwd";
    SAL_TRY(sal_linear_check_fn(fn, n, i, o));
    if (!dx && !dw && !db) return SAL_OK;
    SAL_REQUIRE_PTR(dy, fn, "dy", "N*O floats");
    const int nt = sal_threads();
    if (dx) {
        SAL_REQUIRE_PTR(w, fn, "w", "O*I floats (needed for dx)");
        SAL_TRY(sal_sgemm(n, i, o, 1.0f, dy, o, 1, w, i, 1, 1.0f, dx, i, 1, nt));
    }
    if (dw) {  /* dW (O, I) += dY^T (O, N) X (N, I) */
        SAL_REQUIRE_PTR(x, fn, "x", "N*I floats (needed for dw)");
        SAL_TRY(sal_sgemm(o, i, n, 1.0f, dy, 1, o, x, i, 1, 1.0f, dw, i, 1, nt));
    }
    if (db)
        for (int64_t j = 0; j < o; j++) {
            double s = 0.0;
            for (int64_t r = 0; r < n; r++) s += dy[r * o + j];
            db[j] += (float)s;
        }
    return SAL_OK;
}
