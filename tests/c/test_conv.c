/* Fast convolution against the naive reference: random shapes, both layouts; the fused
 * epilogue (sal_conv_fwd_epi) against sal_conv_fwd and the epilogue written out, bit for
 * bit; the weights cache (a changed weight is always seen, limits, threads) and its
 * digest against the scalar twin; the output's moments (sal_conv_epi.moments) against a
 * double reference, and a BN given them. */
#include <math.h>
#include <pthread.h>
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

/* ---- the fused epilogue and the weights cache ------------------------------------------- */

static const char *const ISAS[] = {"base", "avx2", "avx512"};

/* y = epilogue(acc) as internal/epilogue.c's pass writes it (sal_epi_run) */
static void epi_expect(float *y, const float *acc, const sal_act *ya, const float *bias,
                       const float *res, int relu, int res_post) {
    const int64_t hw = ya->h * ya->w;
    for (int64_t n = 0; n < ya->n; n++)
        for (int64_t o = 0; o < ya->c; o++)
            for (int64_t j = 0; j < hw; j++) {
                const int64_t i = ya->layout == SAL_NCHW ? (n * ya->c + o) * hw + j
                                                         : (o * ya->n + n) * hw + j;
                const float b = bias ? bias[o] : 0.0f;
                float v;
                if (!res) v = acc[i] + b, v = relu ? (v > 0.0f ? v : 0.0f) : v;
                else if (!res_post) v = acc[i] + b + res[i], v = relu ? (v > 0.0f ? v : 0.0f) : v;
                else if (relu) v = acc[i] + b, v = (v > 0.0f ? v : 0.0f) + res[i];
                else v = acc[i] + b + res[i];
                y[i] = v;
            }
}

/* every epilogue (bias, residual before / after the ReLU, ReLU) with and without the cache:
 * sal_conv_fwd_epi equals sal_conv_fwd followed by the epilogue, bit for bit */
static void epi_case(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t K, int64_t S,
                     int64_t P, sal_layout L) {
    sal_conv_desc d = {{N, C, H, W, L}, O, K, S, P, 0};
    sal_act ya;
    if (sal_conv_check(&d, &ya) != SAL_OK) { CHECK(0, "check: %s", sal_last_error()); return; }
    const int64_t nx = N * C * H * W, nw = O * C * K * K, ny = ya.n * ya.c * ya.h * ya.w;
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *b = malloc(O * 4), *r = malloc(ny * 4);
    float *acc = malloc(ny * 4), *want = malloc(ny * 4), *got = malloc(ny * 4);
    float *sc = malloc(sal_conv_scratch(&d) * 4 + 4);
    fill_uniform(x, nx), fill_uniform(w, nw), fill_uniform(b, O), fill_uniform(r, ny);
    CHECK(sal_conv_fwd(acc, x, w, &d, sc) == SAL_OK, "fwd: %s", sal_last_error());
    for (int v = 0; v < 24; v++) {
        const int bias = v & 1, resk = v / 2 % 3, relu = v / 6 % 2, reuse = v / 12;
        const sal_conv_epi e = {bias ? b : NULL, resk ? r : NULL, relu, resk == 2, reuse};
        epi_expect(want, acc, &ya, e.bias, e.res, relu, e.res_post);
        for (int rep = 0; rep < 2; rep++) {   /* reuse: a miss, then a hit */
            memset(got, 0x7f, ny * 4);
            CHECK(sal_conv_fwd_epi(got, x, w, &e, &d, sc) == SAL_OK, "epi: %s", sal_last_error());
            int64_t bad = -1;
            for (int64_t i = 0; i < ny && bad < 0; i++)
                if (memcmp(got + i, want + i, 4) != 0) bad = i;
            CHECK(bad < 0,
                  "epi %s N=%lld C=%lld H=%lld W=%lld O=%lld K=%lld S=%lld L=%d bias=%d res=%d "
                  "relu=%d reuse=%d rep=%d isa=%s: y[%lld] = %.9g, want %.9g",
                  sal_conv_algo(&d, SAL_CONV_FORWARD), (long long)N, (long long)C, (long long)H,
                  (long long)W, (long long)O, (long long)K, (long long)S, (int)L, bias, resk, relu,
                  reuse, rep, sal_get_isa(), (long long)bad, bad >= 0 ? got[bad] : 0.0,
                  bad >= 0 ? want[bad] : 0.0);
        }
    }
    free(x), free(w), free(b), free(r), free(acc), free(want), free(got), free(sc);
}

/* sal_conv_epi.moments: y bit for bit as without them; the mean and variance of every
 * channel against a two-pass double reference over y, also about a large mean (bias 1000:
 * the partials about a slot's first value must not cancel); with the blocks holding whole
 * images, the same bits on 1 and 2 threads; a NaN in y stays NaN in its channel's moments;
 * and a training BN given them (sal_bn_desc.moments) as one that computes its own. */
static void moments_case(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t K,
                         int64_t S, int64_t P, sal_layout L, int whole) {
    sal_conv_desc d = {{N, C, H, W, L}, O, K, S, P, 2};
    sal_act ya;
    if (sal_conv_check(&d, &ya) != SAL_OK) { CHECK(0, "check: %s", sal_last_error()); return; }
    const int64_t nx = N * C * H * W, nw = O * C * K * K, ny = ya.n * ya.c * ya.h * ya.w;
    const int64_t sn = sal_act_sn(ya), sc = sal_act_sc(ya);
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *b = malloc(O * 4), *y0 = malloc(ny * 4);
    float *y1 = malloc(ny * 4), *scr = malloc(sal_conv_scratch(&d) * 4 + 4);
    double *m1 = malloc(O * 16), *m2 = malloc(O * 16);
    fill_uniform(x, nx), fill_uniform(w, nw);
    const char *algo = sal_conv_algo(&d, SAL_CONV_FORWARD);
    for (int big = 0; big < 2; big++) {
        for (int64_t o = 0; o < O; o++) b[o] = big ? 1000.0f + (float)o : 0.1f * (float)o;
        const sal_conv_epi e0 = {b, NULL, 0, 0, 0, NULL}, e1 = {b, NULL, 0, 0, 0, m1};
        CHECK(sal_conv_fwd_epi(y0, x, w, &e0, &d, scr) == SAL_OK, "%s", sal_last_error());
        CHECK(sal_conv_fwd_epi(y1, x, w, &e1, &d, scr) == SAL_OK, "%s", sal_last_error());
        CHECK(memcmp(y0, y1, ny * 4) == 0, "moments %s: y changed", algo);
        const double worst = moments_err(m1, y0, N, O, ya.h * ya.w, sn, sc);
        CHECK(worst <= 1,
              "moments %s N=%lld C=%lld H=%lld W=%lld O=%lld K=%lld S=%lld L=%d big=%d isa=%s: "
              "err %g of the tolerance", algo, (long long)N, (long long)C,
              (long long)H, (long long)W, (long long)O, (long long)K, (long long)S, (int)L, big,
              sal_get_isa(), worst);
        if (whole) {   /* the same bits on one thread */
            sal_conv_desc d1 = d;
            d1.threads = 1;
            const sal_conv_epi e2 = {b, NULL, 0, 0, 0, m2};
            CHECK(sal_conv_fwd_epi(y1, x, w, &e2, &d1, scr) == SAL_OK, "%s", sal_last_error());
            CHECK(memcmp(m1, m2, O * 16) == 0, "moments %s: 1 and 2 threads differ", algo);
        }
    }
    /* a training BN given the moments normalises as one that computes them */
    const sal_bn_desc bd0 = {ya, 1, 0.1, 1e-5, 0, NULL}, bd1 = {ya, 1, 0.1, 1e-5, 0, m1};
    float *z0 = malloc(ny * 4), *z1 = malloc(ny * 4), *st = malloc(O * 16);
    for (int64_t o = 0; o < O; o++) st[o] = st[2 * O + o] = 0.0f, st[O + o] = st[3 * O + o] = 1.0f;
    CHECK(sal_bn_fwd(z0, NULL, NULL, st, st + O, y0, NULL, NULL, &bd0) == SAL_OK, "%s",
          sal_last_error());
    CHECK(sal_bn_fwd(z1, NULL, NULL, st + 2 * O, st + 3 * O, y0, NULL, NULL, &bd1) == SAL_OK,
          "%s", sal_last_error());
    int64_t wi;
    double e = max_rel_err(z1, z0, ny, 1e-4, 1e-4, &wi);
    CHECK(e <= 1, "bn with moments (%s): err %g at %lld", algo, e, (long long)wi);
    e = max_rel_err(st + 2 * O, st, 2 * O, 1e-5, 1e-5, &wi);
    CHECK(e <= 1, "bn running stats with moments (%s): err %g at %lld", algo, e, (long long)wi);
    /* NaN in the input: the channels it reaches have NaN moments, not a number */
    x[0] = NAN;
    const sal_conv_epi e3 = {NULL, NULL, 0, 0, 0, m1};
    CHECK(sal_conv_fwd_epi(y1, x, w, &e3, &d, scr) == SAL_OK, "%s", sal_last_error());
    for (int64_t o = 0; o < O; o++) {
        int nan = 0;
        for (int64_t n = 0; n < N && !nan; n++)
            for (int64_t i = 0; i < ya.h * ya.w && !nan; i++) nan = isnan(y1[n * sn + o * sc + i]);
        CHECK(!nan || (isnan(m1[2 * o]) && isnan(m1[2 * o + 1])),
              "moments %s: channel %lld has NaN in y, moments %g %g", algo, (long long)o,
              m1[2 * o], m1[2 * o + 1]);
    }
    free(x), free(w), free(b), free(y0), free(y1), free(scr), free(m1), free(m2), free(z0),
        free(z1), free(st);
}

/* sal_conv_bwd_assign: dx written whatever it held (NaN here), equal to sal_conv_bwd into
 * zeros (to rounding: the compiler may contract the two differently), dw accumulated as by
 * sal_conv_bwd, under the algorithm `algo` ("auto", "winograd", "direct", "im2col") */
static void assign_case(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t K,
                        int64_t S, int64_t P, sal_layout L, const char *algo) {
    sal_conv_desc d = {{N, C, H, W, L}, O, K, S, P, 0};
    sal_act ya;
    if (sal_conv_check(&d, &ya) != SAL_OK) { CHECK(0, "check: %s", sal_last_error()); return; }
    CHECK(sal_conv_set_algo(algo) == SAL_OK, "set_algo: %s", sal_last_error());
    const int64_t nx = N * C * H * W, nw = O * C * K * K, ny = ya.n * ya.c * ya.h * ya.w;
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *dy = malloc(ny * 4);
    float *dx0 = calloc(nx, 4), *dx1 = malloc(nx * 4), *dw0 = malloc(nw * 4), *dw1 = malloc(nw * 4);
    float *sc = malloc(sal_conv_scratch(&d) * 4 + 4);
    fill_uniform(x, nx), fill_uniform(w, nw), fill_uniform(dy, ny), fill_uniform(dw0, nw);
    memcpy(dw1, dw0, nw * 4);
    for (int64_t i = 0; i < nx; i++) dx1[i] = NAN;
    CHECK(sal_conv_bwd(dx0, dw0, dy, x, w, &d, sc) == SAL_OK, "bwd: %s", sal_last_error());
    CHECK(sal_conv_bwd_assign(dx1, dw1, dy, x, w, &d, sc) == SAL_OK, "assign: %s",
          sal_last_error());
    double e = 0, ew = 0;
    for (int64_t i = 0; i < nx; i++) {
        const double t = fabs((double)dx1[i] - dx0[i]) / (1e-5 + fabs(dx0[i]));
        e = t > e || t != t ? t : e;
    }
    for (int64_t i = 0; i < nw; i++) {
        const double t = fabs((double)dw1[i] - dw0[i]) / (1e-5 + fabs(dw0[i]));
        ew = t > ew || t != t ? t : ew;
    }
    CHECK(e <= 1e-5 && ew <= 1e-5,
          "assign %s (%s) N=%lld C=%lld H=%lld W=%lld O=%lld K=%lld S=%lld L=%d: dx err %g, dw err %g",
          algo, sal_conv_algo(&d, SAL_CONV_INPUT_GRAD), (long long)N, (long long)C, (long long)H,
          (long long)W, (long long)O, (long long)K, (long long)S, (int)L, e, ew);
    /* dx only, no dw */
    for (int64_t i = 0; i < nx; i++) dx1[i] = NAN;
    CHECK(sal_conv_bwd_assign(dx1, NULL, dy, x, w, &d, sc) == SAL_OK, "assign dx: %s",
          sal_last_error());
    e = 0;
    for (int64_t i = 0; i < nx; i++) {
        const double t = fabs((double)dx1[i] - dx0[i]) / (1e-5 + fabs(dx0[i]));
        e = t > e || t != t ? t : e;
    }
    CHECK(e <= 1e-5, "assign dx only %s K=%lld S=%lld L=%d: err %g", algo, (long long)K,
          (long long)S, (int)L, e);
    CHECK(sal_conv_set_algo("auto") == SAL_OK, "set_algo: %s", sal_last_error());
    free(x), free(w), free(dy), free(dx0), free(dx1), free(dw0), free(dw1), free(sc);
}

/* NaN and -0 through the ReLU of every kernel's epilogue: a residual of NaN / -0 at
 * chosen places with zero weights (the accumulator is +0 there) */
static void epi_relu_case(int64_t K, int64_t S, sal_layout L) {
    sal_conv_desc d = {{2, 17, 9, 7, L}, 19, K, S, K / 2, 0};
    sal_act ya;
    if (sal_conv_check(&d, &ya) != SAL_OK) { CHECK(0, "check: %s", sal_last_error()); return; }
    const int64_t nx = 2 * 17 * 9 * 7, ny = ya.n * ya.c * ya.h * ya.w, nw = 19 * 17 * K * K;
    float *x = malloc(nx * 4), *w = calloc(nw, 4), *r = malloc(ny * 4), *y = malloc(ny * 4);
    float *sc = malloc(sal_conv_scratch(&d) * 4 + 4);
    fill_uniform(x, nx);
    for (int64_t i = 0; i < ny; i++) r[i] = i % 3 == 0 ? NAN : i % 3 == 1 ? -0.0f : -1.0f;
    const sal_conv_epi e = {NULL, r, 1, 0, 1};
    CHECK(sal_conv_fwd_epi(y, x, w, &e, &d, sc) == SAL_OK, "epi: %s", sal_last_error());
    int64_t bad = -1;
    for (int64_t i = 0; i < ny && bad < 0; i++)   /* relu(0 + r): NaN -> 0, -0 -> +0, -1 -> 0 */
        if (memcmp(y + i, &(float){0.0f}, 4) != 0) bad = i;
    CHECK(bad < 0, "relu of NaN / -0 (%s, isa %s): y[%lld] = %g", sal_conv_algo(&d, 0),
          sal_get_isa(), (long long)bad, bad >= 0 ? y[bad] : 0.0);
    free(x), free(w), free(r), free(y), free(sc);
}

/* The cache: a hit returns what the weights give, and a change of any one weight -- at the
 * start, the end, in the digest's tail, by one ulp -- is seen (the result equals the
 * uncached one and differs from before); in place, so the address is the cached one. */
static void cache_case(int64_t C, int64_t O, int64_t S, sal_layout L) {
    sal_conv_desc d = {{2, C, 11, 9, L}, O, 3, S, 1, 0};
    sal_act ya;
    if (sal_conv_check(&d, &ya) != SAL_OK) { CHECK(0, "check: %s", sal_last_error()); return; }
    const int64_t nx = 2 * C * 11 * 9, nw = O * C * 9, ny = ya.n * ya.c * ya.h * ya.w;
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *y0 = malloc(ny * 4), *y1 = malloc(ny * 4);
    float *yf = malloc(ny * 4), *sc = malloc(sal_conv_scratch(&d) * 4 + 4);
    fill_uniform(x, nx), fill_uniform(w, nw);
    const sal_conv_epi cached = {NULL, NULL, 0, 0, 1}, fresh = {NULL, NULL, 0, 0, 0};
    sal_conv_cache_clear();
    sal_conv_cache_info i0, i1;
    CHECK(sal_conv_fwd_epi(y0, x, w, &cached, &d, sc) == SAL_OK, "%s", sal_last_error());
    sal_conv_cache_stats(&i0);
    CHECK(i0.misses == 1 && i0.hits == 0 && i0.entries == 1 && i0.bytes > 0,
          "first call (%s): misses %lld hits %lld entries %lld bytes %lld",
          sal_conv_algo(&d, 0), (long long)i0.misses, (long long)i0.hits, (long long)i0.entries,
          (long long)i0.bytes);
    CHECK(sal_conv_fwd_epi(y1, x, w, &cached, &d, sc) == SAL_OK, "%s", sal_last_error());
    sal_conv_cache_stats(&i1);
    CHECK(i1.hits == 1 && i1.misses == 1, "second call: hits %lld misses %lld",
          (long long)i1.hits, (long long)i1.misses);
    CHECK(memcmp(y0, y1, ny * 4) == 0, "a hit changed the result");
    const int64_t at[] = {0, nw - 1, nw - 2, nw / 2, (nw / 64) * 64, 37 % nw};
    for (int k = 0; k < (int)(sizeof at / sizeof *at); k++)
        for (int ulp = 0; ulp < 2; ulp++) {
            const int64_t i = at[k];
            const float old = w[i];
            w[i] = ulp ? nextafterf(old, 2.0f) : old + 1.0f;
            CHECK(sal_conv_fwd_epi(y1, x, w, &cached, &d, sc) == SAL_OK, "%s", sal_last_error());
            CHECK(sal_conv_fwd_epi(yf, x, w, &fresh, &d, sc) == SAL_OK, "%s", sal_last_error());
            CHECK(memcmp(y1, yf, ny * 4) == 0,
                  "w[%lld] changed (%s) in place, %s C=%lld O=%lld S=%lld isa=%s: the cached "
                  "result is not the fresh one", (long long)i, ulp ? "1 ulp" : "+1",
                  sal_conv_algo(&d, 0), (long long)C, (long long)O, (long long)S, sal_get_isa());
            if (!ulp)
                CHECK(memcmp(y1, y0, ny * 4) != 0, "w[%lld] + 1 left y as it was", (long long)i);
            w[i] = old;
        }
    CHECK(sal_conv_fwd_epi(y1, x, w, &cached, &d, sc) == SAL_OK, "%s", sal_last_error());
    CHECK(memcmp(y0, y1, ny * 4) == 0, "back to the first weights: not the first result");
    /* limit 0: the cache is off and empty, the results the same */
    CHECK(sal_conv_cache_limit(0) == SAL_OK, "%s", sal_last_error());
    sal_conv_cache_stats(&i1);
    CHECK(i1.bytes == 0 && i1.entries == 0 && i1.limit == 0, "limit 0 left %lld bytes",
          (long long)i1.bytes);
    CHECK(sal_conv_fwd_epi(y1, x, w, &cached, &d, sc) == SAL_OK, "%s", sal_last_error());
    CHECK(memcmp(y0, y1, ny * 4) == 0, "cache off: another result");
    sal_conv_cache_stats(&i1);
    CHECK(i1.entries == 0, "cache off but %lld entries", (long long)i1.entries);
    /* room for one layer's form only: a second layer evicts the first, both stay right */
    CHECK(sal_conv_cache_limit(i0.bytes) == SAL_OK, "%s", sal_last_error());
    float *w2 = malloc(nw * 4), *y2 = malloc(ny * 4), *y2f = malloc(ny * 4);
    fill_uniform(w2, nw);
    for (int rep = 0; rep < 3; rep++) {
        CHECK(sal_conv_fwd_epi(y1, x, w, &cached, &d, sc) == SAL_OK, "%s", sal_last_error());
        CHECK(sal_conv_fwd_epi(y2, x, w2, &cached, &d, sc) == SAL_OK, "%s", sal_last_error());
        CHECK(memcmp(y0, y1, ny * 4) == 0, "evicted layer 1: another result");
        sal_conv_cache_stats(&i1);
        CHECK(i1.bytes <= i1.limit && i1.entries == 1, "limit %lld: %lld bytes, %lld entries",
              (long long)i1.limit, (long long)i1.bytes, (long long)i1.entries);
    }
    CHECK(sal_conv_fwd_epi(y2f, x, w2, &fresh, &d, sc) == SAL_OK, "%s", sal_last_error());
    CHECK(memcmp(y2, y2f, ny * 4) == 0, "evicting layer 2: another result");
    CHECK(sal_conv_cache_limit(64 << 20) == SAL_OK, "%s", sal_last_error());
    sal_conv_cache_clear();
    sal_conv_cache_stats(&i1);
    CHECK(i1.entries == 0 && i1.bytes == 0 && i1.hits == 0 && i1.misses == 0, "clear");
    free(x), free(w), free(w2), free(y0), free(y1), free(y2), free(y2f), free(yf), free(sc);
}

/* two threads run the same cached layers at once, another pair of weights in between */
typedef struct {
    const sal_conv_desc *d;
    const float *x, *w, *want;
    int64_t ny;
    int bad;
} cache_thread;

static void *cache_thread_run(void *p) {
    cache_thread *t = p;
    float *y = malloc(t->ny * 4), *sc = malloc(sal_conv_scratch(t->d) * 4 + 4);
    const sal_conv_epi e = {NULL, NULL, 1, 0, 1};
    for (int rep = 0; rep < 200; rep++)
        if (sal_conv_fwd_epi(y, t->x, t->w, &e, t->d, sc) != SAL_OK ||
            memcmp(y, t->want, t->ny * 4) != 0)
            t->bad++;
    free(y), free(sc);
    return NULL;
}

static void cache_threads_case(void) {
    sal_conv_desc d = {{1, 24, 12, 12, SAL_CNHW}, 24, 3, 1, 1, 1};
    const int64_t nx = 24 * 144, nw = 24 * 24 * 9, ny = 24 * 144;
    float *x = malloc(nx * 4), *w[2], *want[2], *sc = malloc(sal_conv_scratch(&d) * 4 + 4);
    fill_uniform(x, nx);
    const sal_conv_epi fresh = {NULL, NULL, 1, 0, 0};
    for (int k = 0; k < 2; k++) {
        w[k] = malloc(nw * 4), want[k] = malloc(ny * 4);
        fill_uniform(w[k], nw);
        CHECK(sal_conv_fwd_epi(want[k], x, w[k], &fresh, &d, sc) == SAL_OK, "%s", sal_last_error());
    }
    cache_thread t[4];
    pthread_t th[4];
    for (int k = 0; k < 4; k++) {
        t[k] = (cache_thread){&d, x, w[k % 2], want[k % 2], ny, 0};
        pthread_create(&th[k], NULL, cache_thread_run, &t[k]);
    }
    for (int k = 0; k < 4; k++) {
        pthread_join(th[k], NULL);
        CHECK(t[k].bad == 0, "thread %d: %d wrong results", k, t[k].bad);
    }
    for (int k = 0; k < 2; k++) free(w[k]), free(want[k]);
    free(x), free(sc);
}

/* the digest at the current ISA equals the scalar twin at every length (the tails), and a
 * change of one float -- any bit -- always changes it; two sign flips in one lane too */
static void digest_case(void) {
    const int64_t nmax = 1100;
    float *w = malloc(nmax * 4);
    fill_uniform(w, nmax);
    uint64_t a[SAL_CONV_DIGEST_LANES], b[SAL_CONV_DIGEST_LANES], c[SAL_CONV_DIGEST_LANES];
    for (int64_t n = 0; n <= nmax; n += n < 200 ? 1 : 37) {
        sal_conv_cache_digest(w, n, a);
        sal_ref_conv_cache_digest(w, n, b);
        CHECK(memcmp(a, b, sizeof a) == 0, "digest of %lld floats at %s: not the twin's",
              (long long)n, sal_get_isa());
    }
    sal_conv_cache_digest(w, 1000, a);
    uint32_t *u = (uint32_t *)w;
    for (int t = 0; t < 3000; t++) {
        const int64_t i = rng_int(0, 999);
        const uint32_t bit = 1u << rng_int(0, 31);
        u[i] ^= bit;
        sal_conv_cache_digest(w, 1000, c);
        CHECK(memcmp(a, c, sizeof a) != 0, "flip of bit %u of float %lld: same digest", bit,
              (long long)i);
        u[i] ^= bit;
    }
    u[0] ^= 1u << 31, u[64] ^= 1u << 31;   /* floats 0 and 64: lane 0 of rounds 0 and 1 */
    sal_conv_cache_digest(w, 1000, c);
    CHECK(memcmp(a, c, sizeof a) != 0, "two sign flips in lane 0: same digest");
    u[0] ^= 1u << 31, u[64] ^= 1u << 31;
    sal_conv_cache_digest(w, 1000, c);
    CHECK(memcmp(a, c, sizeof a) == 0, "the same floats: another digest");
    free(w);
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
    /* sal_conv_bwd_assign under every algorithm: Winograd, direct 3x3, the 1x1 GEMM (written
     * in place), stride 2 (blocked) and im2col (zeroed, then added to) */
    for (int L = 0; L < 2; L++) {
        const char *algos[] = {"auto", "winograd", "direct", "im2col"};
        for (int a = 0; a < 4; a++) {
            assign_case(2, 5, 9, 7, 6, 3, 1, 1, (sal_layout)L, algos[a]);
            assign_case(1, 17, 16, 16, 16, 3, 1, 1, (sal_layout)L, algos[a]);
            assign_case(3, 7, 11, 9, 9, 3, 2, 1, (sal_layout)L, algos[a]);
            assign_case(2, 13, 6, 6, 10, 1, 1, 0, (sal_layout)L, algos[a]);
            assign_case(2, 4, 8, 8, 6, 1, 2, 0, (sal_layout)L, algos[a]);
            assign_case(1, 2, 5, 3, 3, 5, 1, 2, (sal_layout)L, algos[a]);
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
    const char *algos[] = {"auto", "winograd", "direct", "im2col"};
    /* the moments of the output (sal_conv_epi.moments), every family, every ISA: Winograd
     * with whole images per block and (1 x 96 x 96) parts of one, the blocked stride-2
     * kernels, the stem, the 1x1 GEMM and im2col (a pass over y) */
    for (int i = 0; i < 3; i++) {
        if (sal_set_isa(ISAS[i]) != SAL_OK) continue;
        for (int a = 0; a < 4; a++) {
            CHECK(sal_conv_set_algo(algos[a]) == SAL_OK, "set_algo: %s", sal_last_error());
            for (int L = 0; L < 2; L++) {
                moments_case(6, 16, 8, 8, 16, 3, 1, 1, (sal_layout)L, 1);
                moments_case(3, 17, 9, 11, 19, 3, 1, 1, (sal_layout)L, 1);
                moments_case(1, 32, 96, 96, 24, 3, 1, 1, (sal_layout)L, 0);
                moments_case(1, 5, 7, 6, 33, 3, 1, 1, (sal_layout)L, 0);
                moments_case(4, 16, 9, 7, 33, 3, 2, 1, (sal_layout)L, 1);
                moments_case(2, 3, 32, 32, 16, 3, 1, 1, (sal_layout)L, 1);
                moments_case(2, 9, 6, 5, 7, 1, 2, 0, (sal_layout)L, 1);
                moments_case(2, 6, 5, 5, 4, 1, 1, 0, (sal_layout)L, 1);
            }
        }
    }
    CHECK(sal_conv_set_algo(NULL) == SAL_OK, "auto");
    /* the fused epilogue and the cache, every family, every ISA */
    for (int i = 0; i < 3; i++) {
        if (sal_set_isa(ISAS[i]) != SAL_OK) continue;
        digest_case();
        for (int a = 0; a < 4; a++) {
            CHECK(sal_conv_set_algo(algos[a]) == SAL_OK, "set_algo: %s", sal_last_error());
            for (int L = 0; L < 2; L++) {
                epi_case(1, 17, 9, 11, 19, 3, 1, 1, (sal_layout)L);
                epi_case(2, 8, 8, 8, 16, 3, 1, 1, (sal_layout)L);
                epi_case(3, 5, 7, 6, 33, 3, 2, 1, (sal_layout)L);
                epi_case(1, 3, 32, 32, 16, 3, 1, 1, (sal_layout)L);   /* the stem */
                epi_case(2, 9, 6, 5, 7, 1, 2, 0, (sal_layout)L);
                epi_case(2, 6, 5, 5, 4, 1, 1, 0, (sal_layout)L);      /* one GEMM */
                epi_relu_case(3, 1, (sal_layout)L);
                epi_relu_case(3, 2, (sal_layout)L);
                epi_relu_case(1, 2, (sal_layout)L);
            }
        }
        CHECK(sal_conv_set_algo(NULL) == SAL_OK, "auto");
        for (int L = 0; L < 2; L++) {
            cache_case(17, 19, 1, (sal_layout)L);   /* Winograd */
            cache_case(9, 33, 2, (sal_layout)L);    /* blocked direct */
        }
        cache_threads_case();
    }
    /* one weights array at two ISAs: two entries, each that ISA's result */
    if (sal_set_isa("avx2") == SAL_OK && sal_set_isa("avx512") == SAL_OK) {
        sal_conv_desc d = {{1, 16, 8, 8, SAL_CNHW}, 16, 3, 1, 1, 0};
        float x[1024], w[2304], y[1024], yf[1024], *sc = malloc(sal_conv_scratch(&d) * 4 + 4);
        fill_uniform(x, 1024), fill_uniform(w, 2304);
        const sal_conv_epi e = {NULL, NULL, 0, 0, 1}, f = {NULL, NULL, 0, 0, 0};
        for (int r = 0; r < 4; r++) {
            sal_set_isa(r % 2 ? "avx2" : "avx512");
            CHECK(sal_conv_fwd_epi(y, x, w, &e, &d, sc) == SAL_OK, "%s", sal_last_error());
            CHECK(sal_conv_fwd_epi(yf, x, w, &f, &d, sc) == SAL_OK, "%s", sal_last_error());
            CHECK(memcmp(y, yf, sizeof y) == 0, "isa %s: the other ISA's cached form",
                  sal_get_isa());
        }
        free(sc);
    }
    sal_set_isa(NULL);
    /* bad epilogues and limits: a status and a message */
    {
        sal_conv_desc d = {{1, 2, 4, 4, SAL_NCHW}, 2, 3, 1, 1, 0};
        float x[32] = {0}, w[36] = {0}, y[32], *sc = malloc(sal_conv_scratch(&d) * 4 + 4);
        sal_conv_epi e = {NULL, NULL, 2, 0, 0};
        CHECK(sal_conv_fwd_epi(y, x, w, &e, &d, sc) == SAL_EINVAL, "relu=2 accepted");
        CHECK(strstr(sal_last_error(), "epi.relu=2") != NULL, "message: %s", sal_last_error());
        e = (sal_conv_epi){NULL, NULL, 0, -1, 0};
        CHECK(sal_conv_fwd_epi(y, x, w, &e, &d, sc) == SAL_EINVAL, "res_post=-1 accepted");
        CHECK(strstr(sal_last_error(), "epi.res_post=-1") != NULL, "message: %s", sal_last_error());
        e = (sal_conv_epi){NULL, NULL, 0, 0, 7};
        CHECK(sal_conv_fwd_epi(y, x, w, &e, &d, sc) == SAL_EINVAL, "reuse=7 accepted");
        CHECK(strstr(sal_last_error(), "epi.reuse=7") != NULL, "message: %s", sal_last_error());
        e = (sal_conv_epi){NULL, y, 0, 0, 0};
        CHECK(sal_conv_fwd_epi(y, x, w, &e, &d, sc) == SAL_EINVAL, "res = y accepted");
        CHECK(strstr(sal_last_error(), "epi.res=y") != NULL, "message: %s", sal_last_error());
        CHECK(sal_conv_fwd_epi(y, x, w, NULL, &d, sc) == SAL_OK, "epi NULL: %s", sal_last_error());
        CHECK(sal_conv_cache_limit(-1) == SAL_EINVAL, "limit -1 accepted");
        CHECK(strstr(sal_last_error(), "bytes=-1") != NULL, "message: %s", sal_last_error());
        free(sc);
    }
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
