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
