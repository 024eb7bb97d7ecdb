/* Sparse taps (taps.c): the sparse SAL paths against the dense path and the naive
 * reference on every ISA this CPU runs, both layouts, strides 1-3, odd sizes, masks, hard
 * mode; the exported GATHER kernel (sal_taps_gather_fwd) against sal_ref_gather_fwd with
 * every epilogue; refused thresholds.  Runs under ASan + UBSan in the sanitizer build. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "sal/sal.h"

static const char *const ISAS[] = {"base", "avx2", "avx512"};

/* internal/taps.h: whether the layer's sparse path runs on the direct kernels */
int sal_taps_direct(const sal_sal_desc *d, const float *a, const float *b, const float *c);

static int64_t numel(sal_act a) { return a.n * a.c * a.h * a.w; }

/* worst |a - b| / (atol + rtol |b|) > 1: a CHECK failure naming what */
static void close_to(const float *a, const float *b, int64_t n, double atol, double rtol,
                     const char *what, const char *ctx) {
    int64_t wi;
    const double e = max_rel_err(a, b, n, atol, rtol, &wi);
    CHECK(e <= 1, "%s %s: err %g at %lld (%g vs %g)", what, ctx, e, (long long)wi,
          wi >= 0 ? (double)a[wi] : 0.0, wi >= 0 ? (double)b[wi] : 0.0);
}

/* one layer: the sparse path (forced), the dense path (tap_threshold 0) and the reference;
 * the logits U[0, 1) as in the paper, so that beta >= 20 skips most taps */
/* offset: floats past a 64-byte boundary at which every activation buffer starts (0: the
 * stride-1 sparse path of widths 16, 32, 64 runs on the direct kernels, 4: the copy path) */
static float *act_alloc(int64_t n, int64_t offset) {
    float *p = aligned_alloc(64, (size_t)((n + offset + 15) / 16 * 16) * 4);
    return p ? p + offset : NULL;
}
static void act_free(float *p, int64_t offset) { free(p ? p - offset : NULL); }

static void sal_case_at(const char *isa, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O,
                        int64_t S, int shared, int hard, double beta, sal_layout L, int masked,
                        int64_t off) {
    sal_sal_desc d = {{N, C, H, W, L}, O, S, 1, shared, hard, beta, NULL, 0,
                      SAL_TAP_THRESHOLD_DEFAULT};
    sal_act y;
    if (sal_sal_check(&d, &y) != SAL_OK) {
        CHECK(0, "check: %s", sal_last_error());
        return;
    }
    char ctx[160];
    snprintf(ctx, sizeof ctx, "isa=%s N=%lld C=%lld H=%lld W=%lld O=%lld S=%lld sh=%d hard=%d "
             "beta=%g L=%d mask=%d off=%lld direct=%d", isa, (long long)N, (long long)C,
             (long long)H, (long long)W, (long long)O, (long long)S, shared, hard, beta, (int)L,
             masked, (long long)off, 0);
    char *dflag = strstr(ctx, "direct=0");
    const int64_t nx = N * C * H * W, ny = numel(y), nw = O * C * 9, na = (shared ? 1 : O) * C * 9;
    sal_sal_desc dd = d;
    dd.tap_threshold = 0.0;
    const size_t ns = sal_sal_scratch(&d), nsd = sal_sal_scratch(&dd);
    CHECK(ns > 0 && nsd > 0, "scratch sizes %zu %zu", ns, nsd);
    float *x = act_alloc(nx, off), *w = malloc(nw * 4), *a = malloc(na * 4);
    float *g = act_alloc(ny, off), *ys = act_alloc(ny, off), *yd = act_alloc(ny, off);
    float *yr = malloc(ny * 4);
    float *sc = malloc((ns > nsd ? ns : nsd) * 4 + 4);   /* + 4: an unaligned scratch */
    float *dx[3], *dw[3], *da[3];
    for (int k = 0; k < 3; k++)
        dx[k] = act_alloc(nx, off), dw[k] = malloc(nw * 4), da[k] = malloc(na * 4);
    /* the direct kernels run where they should (so that these cases test them) */
    const int direct = sal_taps_direct(&d, x, NULL, NULL) && sal_taps_direct(&d, x, g, NULL);
    const int want = S == 1 && (W == 16 || W == 32 || W == 64) && off == 0 &&
                     strcmp(isa, "avx2") != 0;
    CHECK(direct == want, "direct path %d, expected %d: %s", direct, want, ctx);
    if (dflag) dflag[7] = (char)('0' + direct);
    fill_uniform(x, nx), fill_uniform(w, nw), fill_uniform(g, ny);
    for (int64_t i = 0; i < na; i++) a[i] = (rng_uniform() + 1.0f) / 2.0f;
    float *mk = NULL;
    if (masked) {
        mk = malloc(na * 4);
        for (int64_t i = 0; i < na / 9; i++) {
            const int64_t keep = rng_int(1, 9);
            for (int q = 0; q < 9; q++) mk[9 * i + q] = 0.0f;
            for (int64_t k = 0; k < keep;) {
                const int64_t q = rng_int(0, 8);
                if (mk[9 * i + q] == 0.0f) mk[9 * i + q] = 1.0f, k++;
            }
        }
        d.mask = dd.mask = mk;
    }
    fill_uniform(dx[0], nx), fill_uniform(dw[0], nw), fill_uniform(da[0], na);
    for (int k = 1; k < 3; k++) {   /* the backward functions accumulate: same start */
        memcpy(dx[k], dx[0], nx * 4), memcpy(dw[k], dw[0], nw * 4), memcpy(da[k], da[0], na * 4);
    }
    sal_set_taps_path("sparse");
    CHECK(sal_sal_fwd(ys, x, w, a, &d, sc + 1) == SAL_OK, "sparse fwd: %s", sal_last_error());
    CHECK(sal_sal_bwd(dx[0], dw[0], da[0], g, x, w, a, &d, sc + 1) == SAL_OK, "sparse bwd: %s",
          sal_last_error());
    sal_set_taps_path("auto");
    CHECK(sal_sal_fwd(yd, x, w, a, &dd, sc) == SAL_OK, "dense fwd: %s", sal_last_error());
    CHECK(sal_sal_bwd(dx[1], dw[1], da[1], g, x, w, a, &dd, sc) == SAL_OK, "dense bwd: %s",
          sal_last_error());
    CHECK(sal_ref_sal_fwd(yr, x, w, a, &dd) == SAL_OK, "ref fwd: %s", sal_last_error());
    CHECK(sal_ref_sal_bwd(dx[2], dw[2], da[2], g, x, w, a, &dd) == SAL_OK, "ref bwd: %s",
          sal_last_error());
    const double big = sqrt((double)(N * y.h * y.w)), f = beta > 1 ? beta : 1;
    const double fa = 1e-4 * big * f * (shared ? sqrt((double)O) : 1);
    for (int r = 1; r < 3; r++) {
        const char *what = r == 1 ? "vs dense" : "vs reference";
        char c2[200];
        snprintf(c2, sizeof c2, "%s %s", what, ctx);
        close_to(ys, r == 1 ? yd : yr, ny, 1e-4, 1e-4, "y", c2);
        close_to(dx[0], dx[r], nx, 1e-4, 1e-4, "dx", c2);
        close_to(dw[0], dw[r], nw, 1e-4 * big, 1e-4, "dw", c2);
        close_to(da[0], da[r], na, fa, 1e-3, "da", c2);
    }
    act_free(x, off), free(w), free(a), act_free(g, off), act_free(ys, off), act_free(yd, off);
    free(yr), free(sc), free(mk);
    for (int k = 0; k < 3; k++) act_free(dx[k], off), free(dw[k]), free(da[k]);
}

/* every case with aligned buffers and with buffers 16 bytes past a 64-byte boundary */
static void sal_case(const char *isa, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O,
                     int64_t S, int shared, int hard, double beta, sal_layout L, int masked) {
    for (int64_t off = 0; off <= 4; off += 4)
        sal_case_at(isa, N, C, H, W, O, S, shared, hard, beta, L, masked, off);
}

/* the exported GATHER: random pairs (one per (o, i) kept with probability 0.8, plus a few
 * duplicates), every epilogue, against the reference plus a hand-written epilogue */
static void gather_case(const char *isa, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O,
                        int64_t S, sal_layout L, int threads) {
    const sal_act xa = {N, C, H, W, L};
    const sal_act ya = {N, O, (H - 1) / S + 1, (W - 1) / S + 1, L};
    const int64_t nx = numel(xa), ny = numel(ya);
    int32_t *pairs = malloc((size_t)(O * C * 2 + 1) * 16);
    float *wp = malloc((size_t)(O * C * 2 + 1) * 4);
    int64_t np = 0;
    for (int64_t o = 0; o < O; o++)
        for (int64_t i = 0; i < C; i++) {
            const int reps = rng_int(0, 9) < 8 ? (rng_int(0, 9) == 0 ? 2 : 1) : 0;
            for (int r = 0; r < reps; r++) {
                pairs[4 * np] = (int32_t)o, pairs[4 * np + 1] = (int32_t)i;
                pairs[4 * np + 2] = (int32_t)rng_int(-1, 1);
                pairs[4 * np + 3] = (int32_t)rng_int(-1, 1);
                wp[np++] = rng_uniform();
            }
        }
    float *x = malloc(nx * 4), *y = malloc(ny * 4), *yr = malloc(ny * 4), *res = malloc(ny * 4);
    float *bias = malloc(O * 4);
    fill_uniform(x, nx), fill_uniform(res, ny), fill_uniform(bias, O);
    const size_t ns = sal_taps_gather_scratch(xa, O, S, np, threads);
    CHECK(ns > 0, "gather scratch: %s", sal_last_error());
    float *sc = malloc(ns * 4 + 4);
    CHECK(sal_ref_gather_fwd(yr, x, xa, O, S, pairs, wp, np, bias) == SAL_OK, "ref gather: %s",
          sal_last_error());
    for (int e = 0; e < 8; e++) {
        const int use_res = e & 1, relu = e >> 1 & 1, post = e >> 2 & 1;
        if (post && !use_res) continue;
        for (int64_t i = 0; i < ny; i++) y[i] = NAN;   /* every output must be written */
        CHECK(sal_taps_gather_fwd(y, x, xa, O, S, pairs, wp, np, bias, use_res ? res : NULL, relu,
                                  post, threads, sc + 1) == SAL_OK,
              "gather: %s", sal_last_error());
        float *want = malloc(ny * 4);
        for (int64_t i = 0; i < ny; i++) {
            float v = yr[i];
            if (use_res && !post) v += res[i];
            if (relu) v = v > 0.0f ? v : 0.0f;
            if (use_res && post) v += res[i];
            want[i] = v;
        }
        char ctx[160];
        snprintf(ctx, sizeof ctx, "isa=%s N=%lld C=%lld H=%lld W=%lld O=%lld S=%lld L=%d t=%d "
                 "res=%d relu=%d post=%d", isa, (long long)N, (long long)C, (long long)H,
                 (long long)W, (long long)O, (long long)S, (int)L, threads, use_res, relu, post);
        close_to(y, want, ny, 1e-5, 1e-5, "gather y", ctx);
        free(want);
    }
    free(pairs), free(wp), free(x), free(y), free(yr), free(res), free(bias), free(sc);
}

/* a skipped tap really is skipped: p_q ~ 1e-12 * p_max with a weight of 1e9 changes the
 * dense result by ~1e-3, the sparse one not at all */
static void skip_case(void) {
    const int64_t N = 1, C = 1, H = 4, W = 5, O = 1;
    sal_sal_desc d = {{N, C, H, W, SAL_NCHW}, O, 1, 1, 0, 0, 1.0, NULL, 1,
                      SAL_TAP_THRESHOLD_DEFAULT};
    float x[20], w[9], a[9], ys[20], yd[20];
    for (int i = 0; i < 20; i++) x[i] = 1.0f;
    for (int q = 0; q < 9; q++) w[q] = 1.0f, a[q] = 0.0f;
    /* std of (1, 0 x 8) is 1/3; z = beta * a / s: tap 4 at 3 beta, the others 0 */
    a[4] = 1.0f;
    d.beta = 10.0 * log(10.0) / 3.0;   /* p_other / p_max = 1e-10 < 2^-27: skipped */
    w[0] = 1e7f;                       /* dense: + 1e-3 at the outputs that read tap 0 */
    sal_sal_desc dd = d;
    dd.tap_threshold = 0.0;
    float *sc = malloc((sal_sal_scratch(&d) + sal_sal_scratch(&dd)) * 4);
    sal_set_taps_path("sparse");
    CHECK(sal_sal_fwd(ys, x, w, a, &d, sc) == SAL_OK, "skip sparse: %s", sal_last_error());
    sal_set_taps_path("auto");
    CHECK(sal_sal_fwd(yd, x, w, a, &dd, sc) == SAL_OK, "skip dense: %s", sal_last_error());
    /* output (1, 1) reads tap 0 at x[0][0] = 1 */
    CHECK(fabsf(yd[W + 1] - ys[W + 1]) > 5e-4f, "tap 0 not skipped: dense %g sparse %g",
          (double)yd[W + 1], (double)ys[W + 1]);
    CHECK(fabsf(ys[W + 1] - 1.0f) < 1e-6f, "sparse keeps only tap 4: %g", (double)ys[W + 1]);
    uint8_t kept[9];
    int64_t nk;
    CHECK(sal_attn_kept(kept, a, NULL, 1, d.beta, 0, d.tap_threshold, &nk) == SAL_OK && nk == 1 &&
              kept[4] == 1, "kept: %lld", (long long)nk);
    free(sc);
}

static void bad_thresholds(void) {
    sal_sal_desc d = {{1, 2, 4, 4, SAL_NCHW}, 3, 1, 1, 0, 0, 1.0, NULL, 0, 0.0};
    const double bad[] = {-1e-9, -1.0, NAN, INFINITY, -INFINITY, 1.0000001, 2.0};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        d.tap_threshold = bad[i];
        CHECK(sal_sal_check(&d, NULL) == SAL_EINVAL, "tap_threshold=%g accepted", bad[i]);
        CHECK(strstr(sal_last_error(), "tap_threshold=") != NULL, "message: %s", sal_last_error());
    }
    const double good[] = {0.0, 1e-30, SAL_TAP_THRESHOLD_DEFAULT, 0.5, 1.0};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        d.tap_threshold = good[i];
        CHECK(sal_sal_check(&d, NULL) == SAL_OK, "tap_threshold=%g refused: %s", good[i],
              sal_last_error());
    }
    CHECK(sal_set_taps_path("fast") == SAL_EINVAL, "taps path 'fast' accepted");
    CHECK(strcmp(sal_get_taps_path(), "auto") == 0, "path %s", sal_get_taps_path());
    float a[9] = {0};
    uint8_t k[9];
    CHECK(sal_attn_kept(k, a, NULL, 1, 1.0, 0, 0.0, NULL) == SAL_EINVAL, "kept at t=0 accepted");
    /* the gather: unsorted pairs, |dy| > 1 */
    const sal_act xa = {1, 2, 4, 4, SAL_CNHW};
    int32_t pairs[8] = {1, 0, 0, 0, 0, 1, 0, 0};
    float w[2] = {1, 1}, x[32] = {0}, y[48];
    float *sc = malloc(sal_taps_gather_scratch(xa, 3, 1, 2, 1) * 4);
    CHECK(sal_taps_gather_fwd(y, x, xa, 3, 1, pairs, w, 2, NULL, NULL, 0, 0, 1, sc) == SAL_EINVAL,
          "unsorted pairs accepted");
    int32_t far[4] = {0, 0, 2, 0};
    CHECK(sal_taps_gather_fwd(y, x, xa, 3, 1, far, w, 1, NULL, NULL, 0, 0, 1, sc) == SAL_EINVAL,
          "dy = 2 accepted");
    free(sc);
}

/* sal_sal_bwd_assign: dx written whatever it held (NaN here), equal to sal_sal_bwd into
 * zeros to rounding, dw and da accumulated alike; dense (threshold 0) and sparse */
static void assign_case(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t S,
                        int shared, double t) {
    sal_sal_desc d = {{N, C, H, W, SAL_CNHW}, O, S, 1, shared, 0, 40.0, NULL, 0, t};
    sal_act y;
    if (sal_sal_check(&d, &y) != SAL_OK) { CHECK(0, "check: %s", sal_last_error()); return; }
    const int64_t nx = N * C * H * W, ny = numel(y), nw = O * C * 9, na = (shared ? 1 : O) * C * 9;
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *a = malloc(na * 4), *g = malloc(ny * 4);
    float *dx0 = calloc(nx, 4), *dx1 = malloc(nx * 4), *dw0 = calloc(nw, 4), *dw1 = calloc(nw, 4);
    float *da0 = calloc(na, 4), *da1 = calloc(na, 4), *sc = malloc(sal_sal_scratch(&d) * 4 + 4);
    fill_uniform(x, nx), fill_uniform(w, nw), fill_uniform(g, ny);
    for (int64_t i = 0; i < na; i++) a[i] = (rng_uniform() + 1.0f) / 2.0f;
    for (int64_t i = 0; i < nx; i++) dx1[i] = NAN;
    CHECK(sal_sal_bwd(dx0, dw0, da0, g, x, w, a, &d, sc) == SAL_OK, "bwd: %s", sal_last_error());
    CHECK(sal_sal_bwd_assign(dx1, dw1, da1, g, x, w, a, &d, sc) == SAL_OK, "assign: %s",
          sal_last_error());
    double e = 0;
    for (int64_t i = 0; i < nx; i++) {
        const double r = fabs((double)dx1[i] - dx0[i]) / (1e-5 + fabs(dx0[i]));
        e = r > e || r != r ? r : e;
    }
    CHECK(e <= 1e-5 && !memcmp(dw0, dw1, nw * 4) && !memcmp(da0, da1, na * 4),
          "sal assign N=%lld C=%lld H=%lld W=%lld O=%lld S=%lld shared=%d t=%g: dx err %g%s%s",
          (long long)N, (long long)C, (long long)H, (long long)W, (long long)O, (long long)S,
          shared, t, e, memcmp(dw0, dw1, nw * 4) ? ", dw differs" : "",
          memcmp(da0, da1, na * 4) ? ", da differs" : "");
    free(x), free(w), free(a), free(g), free(dx0), free(dx1), free(dw0), free(dw1), free(da0),
        free(da1), free(sc);
}

/* sal_sal_desc.moments on the dense (tap_threshold 0) and the sparse path: y bit for bit
 * as without them, each channel's mean and variance against a two-pass double reference */
static void moments_case(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t S,
                         int shared, double t, sal_layout L) {
    sal_sal_desc d = {{N, C, H, W, L}, O, S, 1, shared, 0, 40.0, NULL, 0, t, NULL};
    sal_act y;
    if (sal_sal_check(&d, &y) != SAL_OK) { CHECK(0, "check: %s", sal_last_error()); return; }
    const int64_t nx = N * C * H * W, ny = numel(y), nw = O * C * 9, na = (shared ? 1 : O) * C * 9;
    const int64_t sn = sal_act_sn(y), sc = sal_act_sc(y);
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *a = malloc(na * 4), *y0 = malloc(ny * 4);
    float *y1 = malloc(ny * 4), *scr = malloc(sal_sal_scratch(&d) * 4 + 4);
    double *m = malloc(O * 16);
    fill_uniform(x, nx), fill_uniform(w, nw);
    for (int64_t i = 0; i < na; i++) a[i] = (rng_uniform() + 1.0f) / 2.0f;
    CHECK(sal_sal_fwd(y0, x, w, a, &d, scr) == SAL_OK, "%s", sal_last_error());
    d.moments = m;
    CHECK(sal_sal_fwd(y1, x, w, a, &d, scr) == SAL_OK, "%s", sal_last_error());
    CHECK(memcmp(y0, y1, ny * 4) == 0, "moments: y changed (t=%g)", t);
    const double worst = moments_err(m, y0, N, O, y.h * y.w, sn, sc);
    CHECK(worst <= 1, "moments N=%lld C=%lld H=%lld W=%lld O=%lld S=%lld sh=%d t=%g L=%d: err %g "
          "of the tolerance", (long long)N, (long long)C, (long long)H, (long long)W,
          (long long)O, (long long)S, shared, t, (int)L, worst);
    free(x), free(w), free(a), free(y0), free(y1), free(scr), free(m);
}

int main(void) {
    sal_set_num_threads(2);
    for (int sh = 0; sh < 2; sh++)
        for (int k = 0; k < 2; k++) {
            const double t = k ? SAL_TAP_THRESHOLD_DEFAULT : 0.0;
            assign_case(2, 5, 9, 7, 6, 1, sh, t);
            assign_case(1, 16, 16, 16, 16, 1, sh, t);
            assign_case(3, 7, 11, 9, 9, 2, sh, t);
        }
    for (int sh = 0; sh < 2; sh++)
        for (int L = 0; L < 2; L++)
            for (int k = 0; k < 2; k++) {
                const double t = k ? SAL_TAP_THRESHOLD_DEFAULT : 0.0;
                moments_case(2, 16, 16, 16, 16, 1, sh, t, (sal_layout)L);
                moments_case(3, 5, 9, 7, 6, 1, sh, t, (sal_layout)L);
                moments_case(2, 7, 11, 9, 9, 2, sh, t, (sal_layout)L);
            }
    const char *top = sal_get_isa();
    skip_case();
    bad_thresholds();
    for (int k = 0; k < 3; k++) {
        if (sal_set_isa(ISAS[k]) != SAL_OK) continue;   /* this CPU lacks it */
        /* N C H W O S: batch 1, odd and prime sizes, channels not divisible by 8 or 9, wide
         * odd rows (partial tiles), stride 1, 2, 3 */
        const int64_t shapes[][6] = {
            {1, 3, 7, 5, 4, 1},    {2, 5, 11, 13, 7, 2}, {3, 10, 5, 4, 3, 1},
            {1, 17, 8, 8, 19, 1},  {2, 7, 9, 9, 6, 3},   {1, 4, 33, 35, 5, 1},
            {2, 6, 16, 16, 11, 2}, {1, 1, 1, 1, 1, 1},   {2, 12, 32, 32, 9, 1},
            {2, 5, 9, 10, 65, 2},  {1, 6, 8, 8, 64, 1},   /* >= 64 outputs: shared by GEMM */
            /* stride 1, widths 16, 32, 64 (direct kernels when aligned): odd heights, a
             * partial last tile, batch 1, channels not divisible by 8 or 9, >= 64 outputs */
            {3, 7, 16, 16, 5, 1},  {1, 5, 9, 64, 6, 1},  {2, 10, 17, 32, 3, 1},
            {1, 3, 5, 16, 70, 1},  {4, 11, 3, 32, 13, 1}};
        for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
            for (int sh = 0; sh < 2; sh++)
                for (int L = 0; L < 2; L++) {
                    const int64_t *p = shapes[s];
                    sal_case(ISAS[k], p[0], p[1], p[2], p[3], p[4], p[5], sh, 0, 20.0,
                             (sal_layout)L, 0);
                    sal_case(ISAS[k], p[0], p[1], p[2], p[3], p[4], p[5], sh, 0, 70.0,
                             (sal_layout)L, s % 2);
                }
        sal_case(ISAS[k], 2, 5, 6, 7, 4, 1, 0, 0, 1.0, SAL_CNHW, 0);
        sal_case(ISAS[k], 2, 5, 6, 7, 4, 2, 1, 0, 200.0, SAL_NCHW, 1);
        sal_case(ISAS[k], 2, 6, 9, 8, 5, 1, 0, 1, 20.0, SAL_CNHW, 0);   /* hard */
        sal_case(ISAS[k], 2, 6, 9, 8, 5, 2, 1, 1, 70.0, SAL_NCHW, 1);
        const int64_t gs[][6] = {
            {1, 3, 7, 5, 4, 1},     {2, 16, 32, 32, 16, 1}, {3, 16, 32, 32, 32, 2},
            {2, 32, 16, 16, 32, 1}, {4, 64, 8, 8, 64, 1},   {1, 5, 9, 11, 7, 2},
            {2, 3, 6, 6, 5, 3},     {1, 1, 1, 1, 2, 1}};
        for (size_t s = 0; s < sizeof gs / sizeof *gs; s++)
            for (int L = 0; L < 2; L++)
                for (int t = 1; t <= 2; t++)
                    gather_case(ISAS[k], gs[s][0], gs[s][1], gs[s][2], gs[s][3], gs[s][4], gs[s][5],
                                (sal_layout)L, t);
    }
    sal_set_isa(top);
    return check_done("test_taps");
}
