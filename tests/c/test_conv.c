/* Fast convolution against the naive reference: random shapes, both layouts. */
#include <string.h>

#include "check.h"
#include "sal/sal.h"

static void one_case(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t K, int64_t S,
                     int64_t P, sal_layout L) {
    sal_conv_desc d = {{N, C, H, W, L}, O, K, S, P};
    sal_act y;
    if (sal_conv_check(&d, &y) != SAL_OK) { CHECK(0, "check failed: %s", sal_last_error()); return; }
    int64_t nx = N * C * H * W, nw = O * C * K * K, ny = y.n * y.c * y.h * y.w;
    size_t ns = sal_conv_scratch(&d);
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *dy = malloc(ny * 4), *sc = malloc(ns * 4 + 4);
    float *y1 = malloc(ny * 4), *y2 = malloc(ny * 4);
    float *dx1 = malloc(nx * 4), *dx2 = malloc(nx * 4), *dw1 = malloc(nw * 4), *dw2 = malloc(nw * 4);
    fill_uniform(x, nx); fill_uniform(w, nw); fill_uniform(dy, ny);
    /* backward accumulates: start both from the same non-zero values */
    fill_uniform(dx1, nx); memcpy(dx2, dx1, nx * 4);
    fill_uniform(dw1, nw); memcpy(dw2, dw1, nw * 4);
    CHECK(sal_conv_fwd(y1, x, w, &d, sc) == SAL_OK, "fwd: %s", sal_last_error());
    CHECK(sal_ref_conv_fwd(y2, x, w, &d) == SAL_OK, "ref fwd: %s", sal_last_error());
    CHECK(sal_conv_bwd(dx1, dw1, dy, x, w, &d, sc) == SAL_OK, "bwd: %s", sal_last_error());
    CHECK(sal_ref_conv_bwd(dx2, dw2, dy, x, w, &d) == SAL_OK, "ref bwd: %s", sal_last_error());
    int64_t wi;
    double e;
    e = max_rel_err(y1, y2, ny, 1e-4, 1e-4, &wi);
    CHECK(e <= 1, "y N=%lld C=%lld H=%lld W=%lld O=%lld K=%lld S=%lld P=%lld L=%d err=%g at %lld",
          (long long)N, (long long)C, (long long)H, (long long)W, (long long)O, (long long)K,
          (long long)S, (long long)P, (int)L, e, (long long)wi);
    e = max_rel_err(dx1, dx2, nx, 1e-4, 1e-4, &wi);
    CHECK(e <= 1, "dx K=%lld S=%lld P=%lld L=%d err=%g at %lld", (long long)K, (long long)S,
          (long long)P, (int)L, e, (long long)wi);
    e = max_rel_err(dw1, dw2, nw, 1e-3, 1e-4, &wi);
    CHECK(e <= 1, "dw K=%lld S=%lld P=%lld L=%d err=%g at %lld", (long long)K, (long long)S,
          (long long)P, (int)L, e, (long long)wi);
    free(x); free(w); free(dy); free(sc); free(y1); free(y2); free(dx1); free(dx2); free(dw1); free(dw2);
}

/* Winograd F(4x4, 3x3), forced, at the current ISA: each pass against the float64 reference,
 * |err| <= 3e-5 * the largest sum of |terms| (measured: < 5e-6), backward adding to
 * non-zero dx, dw; and the naive twin in double equals the direct reference to rounding. */
static void wino_case(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, sal_layout L) {
    sal_conv_desc d = {{N, C, H, W, L}, O, 3, 1, 1, 0};
    CHECK(strcmp(sal_conv_algo(&d, SAL_CONV_INPUT_GRAD), "winograd4x4") == 0, "algo %s",
          sal_conv_algo(&d, SAL_CONV_INPUT_GRAD));
    const int64_t nx = N * C * H * W, nw = O * C * 9, ny = N * O * H * W;
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *dy = malloc(ny * 4), *y = malloc(ny * 4);
    float *dx = malloc(nx * 4), *dw = malloc(nw * 4), *sc = malloc(sal_conv_scratch(&d) * 4 + 4);
    double *xd = malloc(nx * 8), *wd = malloc(nw * 8), *dyd = malloc(ny * 8), *yd = malloc(ny * 8);
    double *dxd = malloc(nx * 8), *dwd = malloc(nw * 8), *yt = malloc(ny * 8);
    double *dxt = malloc(nx * 8), *dwt = malloc(nw * 8), *ya = malloc(ny * 8);
    double *dxa = calloc(nx, 8), *dwa = calloc(nw, 8);
    fill_uniform(x, nx); fill_uniform(w, nw); fill_uniform(dy, ny);
    fill_uniform(dx, nx); fill_uniform(dw, nw);     /* backward adds to these */
    for (int64_t i = 0; i < nx; i++) xd[i] = x[i], dxd[i] = dxt[i] = dx[i];
    for (int64_t i = 0; i < nw; i++) wd[i] = w[i], dwd[i] = dwt[i] = dw[i];
    for (int64_t i = 0; i < ny; i++) dyd[i] = dy[i];
    CHECK(sal_conv_fwd(y, x, w, &d, sc) == SAL_OK, "fwd: %s", sal_last_error());
    CHECK(sal_conv_bwd(dx, dw, dy, x, w, &d, sc) == SAL_OK, "bwd: %s", sal_last_error());
    CHECK(sal_ref_conv_fwd_f64(yd, xd, wd, &d) == SAL_OK, "ref: %s", sal_last_error());
    CHECK(sal_ref_conv_bwd_f64(dxd, dwd, dyd, xd, wd, &d) == SAL_OK, "ref: %s", sal_last_error());
    CHECK(sal_ref_wino_fwd_f64(yt, xd, wd, &d) == SAL_OK, "twin: %s", sal_last_error());
    CHECK(sal_ref_wino_bwd_f64(dxt, dwt, dyd, xd, wd, &d) == SAL_OK, "twin: %s", sal_last_error());
    /* the sums of |terms| */
    for (int64_t i = 0; i < nx; i++) xd[i] = fabs(xd[i]);
    for (int64_t i = 0; i < nw; i++) wd[i] = fabs(wd[i]);
    for (int64_t i = 0; i < ny; i++) dyd[i] = fabs(dyd[i]);
    sal_ref_conv_fwd_f64(ya, xd, wd, &d);
    sal_ref_conv_bwd_f64(dxa, dwa, dyd, xd, wd, &d);
    double m[3] = {0}, e[3] = {0}, t[3] = {0};   /* y, dx, dw: scale, error, twin error */
    for (int64_t i = 0; i < ny; i++) {
        m[0] = fmax(m[0], ya[i]);
        e[0] = fmax(e[0], fabs(y[i] - yd[i]));
        t[0] = fmax(t[0], fabs(yt[i] - yd[i]));
    }
    for (int64_t i = 0; i < nx; i++) {
        m[1] = fmax(m[1], dxa[i]);
        e[1] = fmax(e[1], fabs(dx[i] - dxd[i]));
        t[1] = fmax(t[1], fabs(dxt[i] - dxd[i]));
    }
    for (int64_t i = 0; i < nw; i++) {
        m[2] = fmax(m[2], dwa[i]);
        e[2] = fmax(e[2], fabs(dw[i] - dwd[i]));
        t[2] = fmax(t[2], fabs(dwt[i] - dwd[i]));
    }
    for (int k = 0; k < 3; k++) {
        /* dx, dw also carry the rounding of their float32 starting values (< 1.2e-7) */
        CHECK(e[k] <= 3e-5 * m[k] + (k ? 2.4e-7 : 0.0),
              "winograd %s N=%lld C=%lld H=%lld W=%lld O=%lld L=%d isa=%s: err %g, scale %g",
              k == 0 ? "y" : k == 1 ? "dx" : "dw", (long long)N, (long long)C, (long long)H,
              (long long)W, (long long)O, (int)L, sal_get_isa(), e[k], m[k]);
        CHECK(t[k] <= 1e-12 * (1 + m[k]), "twin %d: err %g", k, t[k]);
    }
    free(x); free(w); free(dy); free(y); free(dx); free(dw); free(sc);
    free(xd); free(wd); free(dyd); free(yd); free(dxd); free(dwd); free(yt); free(dxt);
    free(dwt); free(ya); free(dxa); free(dwa);
}

int main(void) {
    uint64_t seed = getenv("SAL_TEST_SEED") ? strtoull(getenv("SAL_TEST_SEED"), 0, 10) : 12345;
    check_rng = seed;
    printf("test_conv: seed %llu\n", (unsigned long long)seed);
    CHECK(sal_init() == SAL_OK, "init: %s", sal_last_error());
    for (int L = 0; L < 2; L++) {
        one_case(1, 1, 1, 1, 1, 1, 1, 0, (sal_layout)L);
        one_case(2, 3, 7, 5, 4, 3, 1, 1, (sal_layout)L);
        one_case(3, 5, 9, 11, 7, 3, 2, 1, (sal_layout)L);
        one_case(2, 4, 8, 8, 6, 1, 2, 0, (sal_layout)L);
        one_case(2, 13, 6, 6, 10, 1, 1, 0, (sal_layout)L);
        one_case(1, 2, 5, 3, 3, 5, 1, 2, (sal_layout)L);
        one_case(2, 3, 4, 4, 2, 3, 3, 0, (sal_layout)L);
        /* the direct 3x3 path: several output blocks, O and W+2 not multiples of 16 */
        one_case(2, 20, 7, 13, 33, 3, 1, 1, (sal_layout)L);
        one_case(1, 1, 1, 1, 1, 3, 1, 1, (sal_layout)L);
        one_case(3, 17, 16, 14, 16, 3, 1, 1, (sal_layout)L);
        for (int t = 0; t < 20; t++) {
            int64_t K = rng_int(0, 1) * 2 + 1, P = K == 3 ? 1 : 0;
            one_case(rng_int(1, 3), rng_int(1, 10), rng_int(1, 12), rng_int(1, 12), rng_int(1, 9),
                     K, rng_int(1, 2), P, (sal_layout)L);
        }
    }
    /* Winograd at every ISA this CPU runs: sizes off the 4x4 tile, batch 1, channels off
     * the vector widths, several blocks (N = 70 images of 8x8) */
    const char *isas[] = {"base", "avx2", "avx512"};
    CHECK(sal_conv_set_algo("winograd") == SAL_OK, "set_algo: %s", sal_last_error());
    for (int i = 0; i < 3; i++) {
        if (sal_set_isa(isas[i]) != SAL_OK) continue;   /* the CPU lacks it */
        for (int L = 0; L < 2; L++) {
            wino_case(1, 1, 1, 1, 1, (sal_layout)L);
            wino_case(2, 3, 5, 7, 5, (sal_layout)L);
            wino_case(1, 17, 9, 9, 33, (sal_layout)L);
            wino_case(3, 33, 13, 6, 17, (sal_layout)L);
            wino_case(70, 16, 8, 8, 16, (sal_layout)L);
            wino_case(1, 8, 33, 31, 8, (sal_layout)L);
        }
    }
    /* the blocked direct kernels (stride 2, and the stem's weight gradient), forced, at
     * every ISA: 3x3 and 1x1, odd sizes,
     * channels off the vector widths, accumulating backward (one_case starts dx, dw at
     * non-zero values) */
    CHECK(sal_conv_set_algo("direct") == SAL_OK, "set_algo: %s", sal_last_error());
    for (int i = 0; i < 3; i++) {
        if (sal_set_isa(isas[i]) != SAL_OK) continue;
        for (int L = 0; L < 2; L++) {
            sal_conv_desc d = {{2, 17, 9, 7, (sal_layout)L}, 33, 3, 2, 1, 0};
            CHECK(strcmp(sal_conv_algo(&d, SAL_CONV_INPUT_GRAD), "blocked-direct") == 0, "%s",
                  sal_conv_algo(&d, SAL_CONV_INPUT_GRAD));
            one_case(2, 17, 9, 7, 33, 3, 2, 1, (sal_layout)L);
            one_case(1, 1, 1, 1, 1, 3, 2, 1, (sal_layout)L);
            one_case(3, 16, 16, 16, 32, 3, 2, 1, (sal_layout)L);
            one_case(2, 33, 8, 5, 7, 1, 2, 0, (sal_layout)L);
            one_case(20, 32, 8, 8, 64, 1, 2, 0, (sal_layout)L);
            /* the stem kernel (weight gradient of 1-4 input channels, stride 1) */
            one_case(2, 3, 9, 7, 17, 3, 1, 1, (sal_layout)L);
            one_case(3, 4, 16, 16, 16, 3, 1, 1, (sal_layout)L);
            one_case(1, 1, 5, 5, 1, 3, 1, 1, (sal_layout)L);
        }
    }
    sal_set_isa(NULL);
    CHECK(sal_conv_set_algo("nonsense") == SAL_EINVAL, "bad algo name accepted");
    CHECK(strstr(sal_last_error(), "name=\"nonsense\"") != NULL, "message: %s", sal_last_error());
    CHECK(sal_conv_set_algo(NULL) == SAL_OK && strcmp(sal_conv_get_algo(), "auto") == 0, "auto");
    sal_conv_desc stem = {{2, 3, 8, 8, SAL_CNHW}, 16, 3, 1, 1, 0};
    CHECK(strcmp(sal_conv_algo(&stem, SAL_CONV_FORWARD), "direct3x3") == 0, "stem: %s",
          sal_conv_algo(&stem, SAL_CONV_FORWARD));
    CHECK(sal_conv_algo(&stem, 3) == NULL, "pass 3 accepted");

    /* bad input gives a status and a message, never a crash */
    sal_conv_desc bad = {{1, 1, 4, 4, SAL_NCHW}, 1, 3, 0, 1};
    CHECK(sal_conv_check(&bad, NULL) == SAL_EINVAL, "stride 0 accepted");
    CHECK(strstr(sal_last_error(), "stride=0") != NULL, "message: %s", sal_last_error());
    sal_conv_desc big = {{INT64_C(1) << 40, 1 << 20, 1 << 20, 1, SAL_NCHW}, 1, 1, 1, 0};
    CHECK(sal_conv_check(&big, NULL) == SAL_EOVERFLOW, "overflow accepted");
    sal_conv_desc small = {{1, 1, 2, 2, SAL_NCHW}, 1, 5, 1, 0};
    CHECK(sal_conv_check(&small, NULL) == SAL_EINVAL, "kernel larger than input accepted");
    return check_done("test_conv");
}
