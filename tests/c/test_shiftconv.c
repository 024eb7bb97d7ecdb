/* The shifted-row GEMM (sal/shiftconv.h) against its naive reference: every ISA the CPU
 * runs, both layouts, strides 1-3, odd sizes, batch 1 and odd batches, R and O around the
 * tiles, offsets beyond the image, every epilogue, 1-3 threads (bitwise equal), outputs
 * fully written and nothing written outside them; the backward against its reference;
 * refused arguments. */
#include <string.h>

#include "check.h"
#include "sal/sal.h"
#include "sal/shiftconv.h"

#define GUARD 64   /* floats around every output buffer that must stay untouched */

static int64_t numel(sal_act a) { return a.n * a.c * a.h * a.w; }

static float *guarded(int64_t n) {
    float *p = malloc((size_t)(n + 2 * GUARD) * sizeof(float));
    for (int64_t i = 0; i < n + 2 * GUARD; i++) p[i] = 1234.5f;
    return p + GUARD;
}
static int guard_ok(const float *p, int64_t n) {
    for (int64_t i = 1; i <= GUARD; i++)
        if (p[-i] != 1234.5f || p[n + i - 1] != 1234.5f) return 0;
    return 1;
}
static void guarded_free(float *p) { free(p - GUARD); }

static const char *ISAS[] = {"base", "avx2", "avx512"};

/* rows: random src, offsets in [-span, span], a few far beyond the image */
static void fill_rows(int32_t *rows, int64_t R, int64_t C, int64_t span) {
    for (int64_t k = 0; k < R; k++) {
        rows[3 * k] = (int32_t)rng_int(0, C - 1);
        rows[3 * k + 1] = (int32_t)rng_int(-span, span);
        rows[3 * k + 2] = (int32_t)rng_int(-span, span);
    }
    if (R > 3) rows[3 * 1 + 1] = INT32_MIN, rows[3 * 2 + 2] = INT32_MAX;
}

static const char *MODES[] = {"auto", "direct", "panel"};

static void fwd_case(int64_t N, int64_t C, int64_t H, int64_t W, int64_t S, int64_t O, int64_t R,
                     int64_t span, sal_layout L) {
    int32_t *rows = malloc((size_t)(R ? R : 1) * 12);
    fill_rows(rows, R, C, span);
    sal_shiftconv_desc d = {{N, C, H, W, L}, O, R, rows, S, 0, 0};
    sal_act ya;
    if (sal_shiftconv_check(&d, &ya) != SAL_OK) {
        CHECK(0, "check: %s", sal_last_error());
        free(rows);
        return;
    }
    const int64_t nx = numel(d.x), ny = numel(ya);
    float *x = malloc((size_t)nx * 4), *w = malloc((size_t)(O * R ? O * R : 1) * 4);
    float *bias = malloc((size_t)O * 4), *res = malloc((size_t)ny * 4), *ref = malloc((size_t)ny * 4);
    float *y = guarded(ny), *y1 = malloc((size_t)ny * 4);
    fill_uniform(x, nx), fill_uniform(w, O * R), fill_uniform(bias, O), fill_uniform(res, ny);
    const int isa_max = strcmp(sal_get_isa(), "avx512") == 0 ? 2 : strcmp(sal_get_isa(), "avx2") == 0;
    for (int e = 0; e < 8; e++) {   /* bias x res x relu; res_post with res */
        for (int post = 0; post <= ((e & 2) ? 1 : 0); post++) {
            sal_shiftconv_epi epi = {(e & 1) ? bias : NULL, (e & 2) ? res : NULL, (e >> 2) & 1, post};
            CHECK(sal_ref_shiftconv_fwd(ref, x, w, &epi, &d) == SAL_OK, "ref: %s", sal_last_error());
            for (int isa = 0; isa <= isa_max; isa++) {
                sal_set_isa(ISAS[isa]);
                for (int run = 0; run < 5; run++) {   /* threads 1-3 by size, 1 direct, 1 panel */
                    const int nt = run < 3 ? run + 1 : 1;
                    d.threads = nt, d.mode = run < 3 ? SAL_SHIFTCONV_AUTO : run - 2;
                    float *scr = malloc((sal_shiftconv_scratch(&d) + 1) * 4);
                    memset(y, 0xff, (size_t)ny * 4);   /* NaN: every output must be written */
                    sal_status s = sal_shiftconv_fwd(y, x, w, &epi, &d, scr);
                    CHECK(s == SAL_OK, "fwd: %s", sal_last_error());
                    free(scr);
                    int64_t wi;
                    /* sums of R products of [-1, 1] values in float, against double */
                    const double err = max_rel_err(y, ref, ny, 1e-6 * (double)(R + 4), 1e-5, &wi);
                    CHECK(err <= 1, "fwd %s %s N=%lld C=%lld H=%lld W=%lld S=%lld O=%lld R=%lld "
                          "span=%lld L=%d epi=%d post=%d nt=%d: err %g at %lld (got %g want %g)",
                          ISAS[isa], MODES[d.mode],
                          (long long)N, (long long)C, (long long)H, (long long)W, (long long)S,
                          (long long)O, (long long)R, (long long)span, (int)L, e, post, nt, err,
                          (long long)wi, wi >= 0 ? y[wi] : 0.0, wi >= 0 ? ref[wi] : 0.0);
                    CHECK(guard_ok(y, ny), "fwd %s wrote outside y (S=%lld O=%lld R=%lld L=%d)",
                          ISAS[isa], (long long)S, (long long)O, (long long)R, (int)L);
                    if (run == 0) memcpy(y1, y, (size_t)ny * 4);
                    else if (run < 3) CHECK(memcmp(y1, y, (size_t)ny * 4) == 0,
                                            "fwd %s: %d threads differ from 1", ISAS[isa], nt);
                }
                d.threads = 0, d.mode = 0;
            }
            sal_set_isa(NULL);
        }
    }
    guarded_free(y);
    free(x), free(w), free(bias), free(res), free(ref), free(y1), free(rows);
}

/* backward: dx and dw accumulate onto random contents, against the reference; threads */
static void bwd_case(int64_t N, int64_t C, int64_t H, int64_t W, int64_t S, int64_t O, int64_t R,
                     int64_t span, sal_layout L) {
    int32_t *rows = malloc((size_t)(R ? R : 1) * 12);
    fill_rows(rows, R, C, span);
    sal_shiftconv_desc d = {{N, C, H, W, L}, O, R, rows, S, 0, 0};
    sal_act ya;
    if (sal_shiftconv_check(&d, &ya) != SAL_OK) {
        CHECK(0, "check: %s", sal_last_error());
        free(rows);
        return;
    }
    const int64_t nx = numel(d.x), ny = numel(ya), nw = O * R ? O * R : 1;
    float *x = malloc((size_t)nx * 4), *w = malloc((size_t)nw * 4), *gy = malloc((size_t)ny * 4);
    float *dx0 = malloc((size_t)nx * 4), *dw0 = malloc((size_t)nw * 4);
    float *dxr = malloc((size_t)nx * 4), *dwr = malloc((size_t)nw * 4);
    float *dx = guarded(nx), *dw = guarded(nw), *dx1 = malloc((size_t)nx * 4), *dw1 = malloc((size_t)nw * 4);
    fill_uniform(x, nx), fill_uniform(w, O * R), fill_uniform(gy, ny);
    fill_uniform(dx0, nx), fill_uniform(dw0, O * R);
    memcpy(dxr, dx0, (size_t)nx * 4), memcpy(dwr, dw0, (size_t)nw * 4);
    CHECK(sal_ref_shiftconv_bwd(dxr, dwr, gy, x, w, &d) == SAL_OK, "ref bwd: %s", sal_last_error());
    for (int nt = 1; nt <= 3; nt++) {
        d.threads = nt;
        float *scr = malloc((sal_shiftconv_bwd_scratch(&d) + 1) * 4);
        memcpy(dx, dx0, (size_t)nx * 4), memcpy(dw, dw0, (size_t)nw * 4);
        CHECK(sal_shiftconv_bwd(dx, dw, gy, x, w, &d, scr) == SAL_OK, "bwd: %s", sal_last_error());
        free(scr);
        int64_t wi;
        const int64_t M = N * ya.h * ya.w;
        double e = max_rel_err(dx, dxr, nx, 1e-6 * (double)(O * ((R + C - 1) / C) + 4), 1e-5, &wi);
        CHECK(e <= 1, "bwd dx N=%lld C=%lld H=%lld W=%lld S=%lld O=%lld R=%lld L=%d nt=%d: err %g at %lld",
              (long long)N, (long long)C, (long long)H, (long long)W, (long long)S, (long long)O,
              (long long)R, (int)L, nt, e, (long long)wi);
        e = max_rel_err(dw, dwr, O * R, 1e-6 * (double)(M + 4), 1e-5, &wi);
        CHECK(e <= 1, "bwd dw N=%lld C=%lld H=%lld W=%lld S=%lld O=%lld R=%lld L=%d nt=%d: err %g at %lld",
              (long long)N, (long long)C, (long long)H, (long long)W, (long long)S, (long long)O,
              (long long)R, (int)L, nt, e, (long long)wi);
        CHECK(guard_ok(dx, nx) && guard_ok(dw, nw), "bwd wrote outside dx or dw");
        if (nt == 1) memcpy(dx1, dx, (size_t)nx * 4), memcpy(dw1, dw, (size_t)nw * 4);
        else CHECK(memcmp(dx1, dx, (size_t)nx * 4) == 0, "bwd dx: %d threads differ from 1", nt);
    }
    /* either gradient alone */
    d.threads = 0;
    float *scr = malloc((sal_shiftconv_bwd_scratch(&d) + 1) * 4);
    memcpy(dx, dx0, (size_t)nx * 4);
    CHECK(sal_shiftconv_bwd(dx, NULL, gy, NULL, w, &d, scr) == SAL_OK, "bwd dx only: %s", sal_last_error());
    CHECK(memcmp(dx, dx1, (size_t)nx * 4) == 0, "bwd dx alone differs");
    memcpy(dw, dw0, (size_t)nw * 4);
    CHECK(sal_shiftconv_bwd(NULL, dw, gy, x, NULL, &d, scr) == SAL_OK, "bwd dw only: %s", sal_last_error());
    CHECK(memcmp(dw, dw1, (size_t)nw * 4) == 0, "bwd dw alone differs");
    free(scr);
    guarded_free(dx), guarded_free(dw);
    free(x), free(w), free(gy), free(dx0), free(dw0), free(dxr), free(dwr), free(dx1), free(dw1);
    free(rows);
}

/* the scratch never shrinks as the batch grows (sal_program sizes it once for its largest
 * batch), across the switch from direct to panel mode; a small batch runs in the scratch
 * sized for a large one (ASan checks the bounds) */
static void scratch_monotone(void) {
    const int64_t shapes[][5] = {{96, 32, 16, 1, 96},   {192, 32, 32, 2, 192}, {16, 32, 32, 2, 16},
                                 {384, 16, 64, 2, 384}, {384, 8, 64, 1, 384},  {5, 9, 3, 3, 40}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const int64_t C = shapes[i][0], H = shapes[i][1], O = shapes[i][2], S = shapes[i][3];
        const int64_t R = shapes[i][4];
        int32_t *rows = malloc((size_t)R * 12);
        fill_rows(rows, R, C, 1);
        for (int L = 0; L < 4; L++) {   /* layouts x 1, 2 threads */
            size_t prev = 0;
            for (int64_t N = 1; N <= 160; N += N < 8 ? 1 : 7) {
                sal_shiftconv_desc d = {{N, C, H, H, L % 2 ? SAL_CNHW : SAL_NCHW}, O, R, rows, S,
                                        1 + L / 2, 0};
                const size_t s = sal_shiftconv_scratch(&d);
                CHECK(s >= prev, "scratch shrinks: C=%lld H=%lld S=%lld L=%d N=%lld: %zu < %zu",
                      (long long)C, (long long)H, (long long)S, L, (long long)N, s, prev);
                prev = s;
            }
        }
        sal_shiftconv_desc d = {{40, C, H, H, SAL_CNHW}, O, R, rows, S, 1, 0};
        float *scr = malloc(sal_shiftconv_scratch(&d) * 4);
        d.x.n = 2;
        sal_act ya;
        sal_shiftconv_check(&d, &ya);
        float *x = malloc((size_t)numel(d.x) * 4), *w = malloc((size_t)(O * R) * 4);
        float *y = malloc((size_t)numel(ya) * 4);
        fill_uniform(x, numel(d.x)), fill_uniform(w, O * R);
        CHECK(sal_shiftconv_fwd(y, x, w, NULL, &d, scr) == SAL_OK, "small batch: %s", sal_last_error());
        free(scr), free(x), free(w), free(y), free(rows);
    }
}

static void bad_input(void) {
    int32_t rows[6] = {0, 1, -1, 1, 0, 0};
    sal_shiftconv_desc d = {{1, 2, 5, 5, SAL_CNHW}, 3, 2, rows, 1, 0, 0};
    float x[50] = {0}, w[6] = {0}, y[75], scr[4096];
    CHECK(sal_shiftconv_fwd(y, x, w, NULL, &d, scr) == SAL_OK, "good call: %s", sal_last_error());
    d.stride = 0;
    CHECK(sal_shiftconv_fwd(y, x, w, NULL, &d, scr) == SAL_EINVAL &&
          strstr(sal_last_error(), "stride=0"), "stride 0: %s", sal_last_error());
    d.stride = 1;
    rows[3] = 2;
    CHECK(sal_shiftconv_fwd(y, x, w, NULL, &d, scr) == SAL_EINVAL &&
          strstr(sal_last_error(), "rows[1]"), "src out of range: %s", sal_last_error());
    rows[3] = 1;
    CHECK(sal_shiftconv_fwd(y, x, w, NULL, &d, NULL) == SAL_EINVAL &&
          strstr(sal_last_error(), "scratch"), "no scratch: %s", sal_last_error());
    sal_shiftconv_epi epi = {NULL, NULL, 2, 0};
    CHECK(sal_shiftconv_fwd(y, x, w, &epi, &d, scr) == SAL_EINVAL &&
          strstr(sal_last_error(), "relu=2"), "relu 2: %s", sal_last_error());
    d.mode = 3;
    CHECK(sal_shiftconv_fwd(y, x, w, NULL, &d, scr) == SAL_EINVAL &&
          strstr(sal_last_error(), "mode=3"), "mode 3: %s", sal_last_error());
    d.mode = 0, d.o = 0;
    CHECK(sal_shiftconv_fwd(y, x, w, NULL, &d, scr) == SAL_EINVAL &&
          strstr(sal_last_error(), "O=0"), "O 0: %s", sal_last_error());
    d.o = 3, d.rows = NULL;
    CHECK(sal_shiftconv_fwd(y, x, w, NULL, &d, scr) == SAL_EINVAL &&
          strstr(sal_last_error(), "rows=NULL"), "rows NULL: %s", sal_last_error());
}

int main(void) {
    /* shapes of the networks (SL e=6, shared SAL, their stride-2 layers) at small batch */
    fwd_case(1, 96, 32, 32, 1, 16, 96, 1, SAL_CNHW);
    fwd_case(2, 32, 16, 16, 2, 32, 16, 1, SAL_CNHW);
    fwd_case(1, 64, 8, 8, 1, 64, 63, 1, SAL_CNHW);
    /* sizes around the tiles, odd everything, offsets beyond the image */
    const int64_t RS[] = {1, 3, 17, 95}, OS[] = {1, 3, 17, 95};
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {   /* every other case past 512 positions: wide tiles */
            const int big = (i + 2 * j) % 3 == 0;
            const int64_t N = rng_int(1, big ? 5 : 3), C = rng_int(1, 9);
            const int64_t H = rng_int(big ? 11 : 1, big ? 19 : 13), W = rng_int(big ? 11 : 1, big ? 19 : 13);
            const int64_t S = rng_int(1, 3), span = rng_int(0, 2) == 0 ? H + W : rng_int(1, 3);
            fwd_case(N, C, H, W, S, OS[j], RS[i], span, (i + j) % 2 ? SAL_CNHW : SAL_NCHW);
        }
    fwd_case(3, 5, 7, 9, 2, 17, 0, 1, SAL_NCHW);    /* no rows: y = epi(0) */
    fwd_case(1, 3, 1, 1, 1, 5, 7, 2, SAL_CNHW);     /* 1x1 images */
    fwd_case(2, 4, 3, 40, 5, 9, 11, 3, SAL_CNHW);   /* stride beyond the height */
    for (int i = 0; i < 12; i++) {
        const int64_t N = rng_int(1, 3), C = rng_int(1, 9), H = rng_int(1, 11), W = rng_int(1, 11);
        const int64_t S = rng_int(1, 3), span = rng_int(0, 2) == 0 ? H + W : rng_int(1, 3);
        bwd_case(N, C, H, W, S, RS[i % 4] % 40 + 1, RS[(i / 4) % 4] * 2 + 1, span,
                 i % 2 ? SAL_CNHW : SAL_NCHW);
    }
    bwd_case(3, 16, 8, 8, 1, 16, 144, 1, SAL_CNHW);   /* 9 taps per channel (sparse SAL) */
    scratch_monotone();
    bad_input();
    return check_done("test_shiftconv");
}
