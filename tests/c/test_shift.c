/* Fast shift, active shift and SAL kernels against the naive references, both layouts. */
#include <string.h>

#include "check.h"
#include "sal/sal.h"

static int64_t numel(sal_act a) { return a.n * a.c * a.h * a.w; }

/* integer shift: fast == reference bitwise, forward and (accumulating) backward */
static void shift_case(int64_t N, int64_t C, int64_t H, int64_t W, int64_t S, int64_t span,
                       sal_layout L) {
    sal_shift_desc d = {{N, C, H, W, L}, S};
    sal_act y;
    if (sal_shift_check(&d, &y) != SAL_OK) { CHECK(0, "check: %s", sal_last_error()); return; }
    int64_t nx = numel(d.x), ny = numel(y);
    float *x = malloc(nx * 4), *y1 = malloc(ny * 4), *y2 = malloc(ny * 4), *g = malloc(ny * 4);
    float *dx1 = malloc(nx * 4), *dx2 = malloc(nx * 4);
    int32_t *off = malloc(C * 8);
    for (int64_t i = 0; i < 2 * C; i++) off[i] = (int32_t)rng_int(-span, span);
    if (C > 2) { off[0] = INT32_MIN; off[3] = INT32_MAX; }  /* far beyond the image */
    fill_uniform(x, nx); fill_uniform(g, ny);
    fill_uniform(dx1, nx); memcpy(dx2, dx1, nx * 4);
    memset(y1, 0xff, ny * 4);  /* NaN pattern: every output must be written */
    CHECK(sal_shift_fwd(y1, x, off, &d) == SAL_OK, "fwd: %s", sal_last_error());
    CHECK(sal_ref_shift_fwd(y2, x, off, &d) == SAL_OK, "ref fwd: %s", sal_last_error());
    CHECK(memcmp(y1, y2, ny * 4) == 0, "shift fwd N=%lld C=%lld H=%lld W=%lld S=%lld L=%d differs",
          (long long)N, (long long)C, (long long)H, (long long)W, (long long)S, (int)L);
    CHECK(sal_shift_bwd(dx1, g, off, &d) == SAL_OK, "bwd: %s", sal_last_error());
    CHECK(sal_ref_shift_bwd(dx2, g, off, &d) == SAL_OK, "ref bwd: %s", sal_last_error());
    CHECK(memcmp(dx1, dx2, nx * 4) == 0, "shift bwd H=%lld W=%lld S=%lld L=%d differs",
          (long long)H, (long long)W, (long long)S, (int)L);
    /* the active shift with the same integer offsets is the same function, bitwise */
    float *offf = malloc(C * 8);
    for (int64_t i = 0; i < 2 * C; i++) offf[i] = (float)off[i];
    CHECK(sal_ashift_fwd(y2, x, offf, &d) == SAL_OK, "ashift fwd: %s", sal_last_error());
    CHECK(memcmp(y1, y2, ny * 4) == 0, "ashift with integer offsets != shift (S=%lld L=%d)",
          (long long)S, (int)L);
    free(x); free(y1); free(y2); free(g); free(dx1); free(dx2); free(off); free(offf);
}

static void ashift_case(int64_t N, int64_t C, int64_t H, int64_t W, int64_t S, float span,
                        sal_layout L) {
    sal_shift_desc d = {{N, C, H, W, L}, S};
    sal_act y;
    if (sal_shift_check(&d, &y) != SAL_OK) { CHECK(0, "check: %s", sal_last_error()); return; }
    int64_t nx = numel(d.x), ny = numel(y);
    float *x = malloc(nx * 4), *y1 = malloc(ny * 4), *y2 = malloc(ny * 4), *g = malloc(ny * 4);
    float *dx1 = malloc(nx * 4), *dx2 = malloc(nx * 4), *off = malloc(C * 8);
    float *do1 = malloc(C * 8), *do2 = malloc(C * 8);
    for (int64_t i = 0; i < 2 * C; i++) off[i] = span * rng_uniform();
    if (C > 1) off[1] = 3.0f;                 /* an integer and a half-integer column */
    if (C > 2) off[4] = -0.5f;
    if (C > 3) off[6] = 1e30f;                /* far beyond the image */
    fill_uniform(x, nx); fill_uniform(g, ny);
    fill_uniform(dx1, nx); memcpy(dx2, dx1, nx * 4);
    fill_uniform(do1, 2 * C); memcpy(do2, do1, C * 8);
    memset(y1, 0xff, ny * 4);
    CHECK(sal_ashift_fwd(y1, x, off, &d) == SAL_OK, "fwd: %s", sal_last_error());
    CHECK(sal_ref_ashift_fwd(y2, x, off, &d) == SAL_OK, "ref fwd: %s", sal_last_error());
    CHECK(sal_ashift_bwd(dx1, do1, g, x, off, &d) == SAL_OK, "bwd: %s", sal_last_error());
    CHECK(sal_ref_ashift_bwd(dx2, do2, g, x, off, &d) == SAL_OK, "ref bwd: %s", sal_last_error());
    int64_t wi;
    double e = max_rel_err(y1, y2, ny, 1e-5, 1e-5, &wi);
    CHECK(e <= 1, "ashift y H=%lld W=%lld S=%lld L=%d err=%g at %lld", (long long)H, (long long)W,
          (long long)S, (int)L, e, (long long)wi);
    e = max_rel_err(dx1, dx2, nx, 1e-5, 1e-5, &wi);
    CHECK(e <= 1, "ashift dx S=%lld L=%d err=%g at %lld", (long long)S, (int)L, e, (long long)wi);
    /* sums over N*Ho*Wo products in float */
    e = max_rel_err(do1, do2, 2 * C, 1e-5 * sqrt((double)(N * y.h * y.w)), 1e-4, &wi);
    CHECK(e <= 1, "ashift doff S=%lld L=%d err=%g at %lld", (long long)S, (int)L, e, (long long)wi);
    free(x); free(y1); free(y2); free(g); free(dx1); free(dx2); free(off); free(do1); free(do2);
}

/* masked: a random stepwise-pruning mask, 1..9 allowed positions per slice */
static void sal_case(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t S, int shared,
                     int hard, double beta, sal_layout L, int masked) {
    sal_sal_desc d = {{N, C, H, W, L}, O, S, 1, shared, hard, beta, NULL, 0};
    sal_act y;
    if (sal_sal_check(&d, &y) != SAL_OK) { CHECK(0, "check: %s", sal_last_error()); return; }
    int64_t nx = numel(d.x), ny = numel(y), nw = O * C * 9, na = (shared ? 1 : O) * C * 9;
    size_t ns = sal_sal_scratch(&d);
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *a = malloc(na * 4), *g = malloc(ny * 4);
    float *y1 = malloc(ny * 4), *y2 = malloc(ny * 4), *sc = malloc(ns * 4);
    float *dx1 = malloc(nx * 4), *dx2 = malloc(nx * 4), *dw1 = malloc(nw * 4), *dw2 = malloc(nw * 4);
    float *da1 = malloc(na * 4), *da2 = malloc(na * 4);
    fill_uniform(x, nx); fill_uniform(w, nw); fill_uniform(a, na); fill_uniform(g, ny);
    for (int q = 0; q < 9; q++) a[q] = 0.25f;   /* std = 0: uniform, no NaN */
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
        d.mask = mk;
    }
    fill_uniform(dx1, nx); memcpy(dx2, dx1, nx * 4);
    fill_uniform(dw1, nw); memcpy(dw2, dw1, nw * 4);
    fill_uniform(da1, na); memcpy(da2, da1, na * 4);
    CHECK(sal_sal_fwd(y1, x, w, a, &d, sc) == SAL_OK, "fwd: %s", sal_last_error());
    CHECK(sal_ref_sal_fwd(y2, x, w, a, &d) == SAL_OK, "ref fwd: %s", sal_last_error());
    CHECK(sal_sal_bwd(dx1, dw1, da1, g, x, w, a, &d, sc) == SAL_OK, "bwd: %s", sal_last_error());
    CHECK(sal_ref_sal_bwd(dx2, dw2, da2, g, x, w, a, &d) == SAL_OK, "ref bwd: %s", sal_last_error());
    int64_t wi;
    double e, big = sqrt((double)(N * y.h * y.w)), f = beta > 1 ? beta : 1;
    e = max_rel_err(y1, y2, ny, 1e-4, 1e-4, &wi);
    CHECK(e <= 1, "sal y C=%lld O=%lld S=%lld sh=%d hard=%d beta=%g L=%d err=%g at %lld",
          (long long)C, (long long)O, (long long)S, shared, hard, beta, (int)L, e, (long long)wi);
    e = max_rel_err(dx1, dx2, nx, 1e-4, 1e-4, &wi);
    CHECK(e <= 1, "sal dx sh=%d hard=%d beta=%g L=%d err=%g at %lld", shared, hard, beta, (int)L, e,
          (long long)wi);
    e = max_rel_err(dw1, dw2, nw, 1e-4 * big, 1e-4, &wi);
    CHECK(e <= 1, "sal dw sh=%d hard=%d beta=%g L=%d err=%g at %lld", shared, hard, beta, (int)L, e,
          (long long)wi);
    /* dL/da scales with beta/std(a) times a sum over N*Ho*Wo (and O when shared) */
    e = max_rel_err(da1, da2, na, 1e-4 * big * f * (shared ? sqrt((double)O) : 1), 1e-3, &wi);
    CHECK(e <= 1, "sal da sh=%d hard=%d beta=%g L=%d err=%g at %lld", shared, hard, beta, (int)L, e,
          (long long)wi);
    for (int64_t i = 0; i < ny; i++) if (!isfinite(y1[i])) { CHECK(0, "non-finite y"); break; }
    for (int64_t i = 0; i < na; i++) if (!isfinite(da1[i])) { CHECK(0, "non-finite da"); break; }
    free(x); free(w); free(a); free(g); free(y1); free(y2); free(sc);
    free(dx1); free(dx2); free(dw1); free(dw2); free(da1); free(da2); free(mk);
}

static void bad_inputs(void) {
    sal_shift_desc sd = {{1, 2, 4, 4, SAL_NCHW}, 0};
    CHECK(sal_shift_check(&sd, NULL) == SAL_EINVAL, "stride 0 accepted");
    CHECK(strstr(sal_last_error(), "stride=0") != NULL, "message: %s", sal_last_error());
    sd.stride = 1;
    float x[32], y[32], off[4] = {0, 0, NAN, 1};
    CHECK(sal_ashift_fwd(y, x, off, &sd) == SAL_ENONFINITE, "NaN offset accepted");
    CHECK(strstr(sal_last_error(), "off[1, 0]") != NULL, "message: %s", sal_last_error());
    sal_sal_desc d = {{1, 2, 4, 4, SAL_NCHW}, 3, 1, 2, 0, 0, 1.0, NULL, 0};
    CHECK(sal_sal_check(&d, NULL) == SAL_EINVAL, "pad 2 accepted");
    CHECK(strstr(sal_last_error(), "pad=2") != NULL, "message: %s", sal_last_error());
    d.pad = 1;
    d.beta = INFINITY;
    CHECK(sal_sal_check(&d, NULL) == SAL_ENONFINITE, "beta inf accepted");
    d.beta = -1.0;
    CHECK(sal_sal_check(&d, NULL) == SAL_EINVAL, "beta < 0 accepted");
    CHECK(strstr(sal_last_error(), "beta=-1") != NULL, "message: %s", sal_last_error());
    float a[9] = {0, 1, 2, 3, 4, 5, 6, 7, NAN}, p[9];
    CHECK(sal_attn_probs(p, a, 1, 1.0, 0) == SAL_ENONFINITE, "NaN logit accepted");
    /* degenerate rows: equal logits and beta = 0 give 1/9; huge beta stays finite */
    float eq[9] = {3, 3, 3, 3, 3, 3, 3, 3, 3};
    CHECK(sal_attn_probs(p, eq, 1, 1000.0, 0) == SAL_OK, "equal logits: %s", sal_last_error());
    for (int q = 0; q < 9; q++) CHECK(p[q] == 1.0f / 9.0f, "equal logits p[%d]=%g", q, p[q]);
    a[8] = 8;
    CHECK(sal_attn_probs(p, a, 1, 0.0, 0) == SAL_OK, "beta 0: %s", sal_last_error());
    for (int q = 0; q < 9; q++) CHECK(p[q] == 1.0f / 9.0f, "beta 0 p[%d]=%g", q, p[q]);
    CHECK(sal_attn_probs(p, a, 1, 1e6, 1) == SAL_OK, "huge beta: %s", sal_last_error());
    for (int q = 0; q < 9; q++) CHECK(p[q] == (q == 8 ? 1.0f : 0.0f), "hard p[%d]=%g", q, p[q]);
    float m9[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
    CHECK(sal_attn_probs_masked(p, a, m9, 1, 1.0, 0) == SAL_EINVAL, "empty mask row accepted");
    CHECK(strstr(sal_last_error(), "no allowed position") != NULL, "message: %s", sal_last_error());
    m9[3] = 0.5f;
    CHECK(sal_attn_probs_masked(p, a, m9, 1, 1.0, 0) == SAL_EINVAL, "mask 0.5 accepted");
    m9[3] = 1.0f;
    CHECK(sal_attn_probs_masked(p, a, m9, 1, 1.0, 0) == SAL_OK, "one position: %s", sal_last_error());
    for (int q = 0; q < 9; q++) CHECK(p[q] == (q == 3 ? 1.0f : 0.0f), "one position p[%d]=%g", q, p[q]);
    int32_t offs[2 * 20];
    CHECK(sal_shift_default_offsets(offs, 20) == SAL_OK, "default offsets");
    CHECK(offs[0] == -1 && offs[1] == -1 && offs[2 * 4] == 0 && offs[2 * 4 + 1] == 0 &&
          offs[2 * 17] == 1 && offs[2 * 17 + 1] == 1 && offs[2 * 18] == 0 && offs[2 * 19 + 1] == 0,
          "default offsets wrong");
}

int main(void) {
    uint64_t seed = getenv("SAL_TEST_SEED") ? strtoull(getenv("SAL_TEST_SEED"), 0, 10) : 4242;
    check_rng = seed;
    printf("test_shift: seed %llu\n", (unsigned long long)seed);
    CHECK(sal_init() == SAL_OK, "init: %s", sal_last_error());
    for (int L = 0; L < 2; L++) {
        const sal_layout lay = (sal_layout)L;
        shift_case(1, 1, 1, 1, 1, 2, lay);
        shift_case(2, 9, 7, 5, 1, 2, lay);
        shift_case(3, 11, 13, 6, 2, 4, lay);
        shift_case(2, 5, 8, 8, 3, 9, lay);
        ashift_case(1, 1, 1, 1, 1, 1.5f, lay);
        ashift_case(2, 7, 9, 11, 1, 2.5f, lay);
        ashift_case(3, 6, 10, 7, 2, 3.0f, lay);
        const double betas[] = {0.0, 0.15, 1.0, 20.0, 70.0, 1000.0};
        for (int b = 0; b < 6; b++) {
            sal_case(2, 3, 7, 5, 4, 1, 0, 0, betas[b], lay, 0);
            sal_case(2, 5, 6, 9, 3, 2, 1, 0, betas[b], lay, 0);
        }
        sal_case(1, 1, 1, 1, 1, 1, 0, 0, 20.0, lay, 0);
        sal_case(3, 4, 5, 5, 6, 1, 0, 1, 70.0, lay, 0);
        sal_case(2, 4, 5, 5, 6, 2, 1, 1, 1000.0, lay, 0);
        for (int b = 1; b < 5; b++) {                  /* stepwise-pruning masks */
            sal_case(2, 3, 7, 5, 4, 1, 0, 0, betas[b], lay, 1);
            sal_case(2, 5, 6, 9, 3, 2, 1, 0, betas[b], lay, 1);
            sal_case(2, 4, 5, 5, 6, 1, 0, 1, betas[b], lay, 1);
        }
        /* strides near 2^63 (one output pixel): index arithmetic must not overflow
         * (found by scripts/asan-pytest.sh: sal_valid_range and the ASL clamp did) */
        shift_case(2, 5, 4, 3, INT64_MAX, 3, lay);
        shift_case(1, 3, 5, 5, (int64_t)1 << 62, 7, lay);
        ashift_case(2, 3, 4, 5, INT64_MAX, 3.0f, lay);
        ashift_case(1, 2, 6, 3, (int64_t)1 << 62, 2.5f, lay);
        for (int t = 0; t < 12; t++) {
            shift_case(rng_int(1, 3), rng_int(1, 12), rng_int(1, 12), rng_int(1, 12), rng_int(1, 3),
                       rng_int(0, 14), lay);
            ashift_case(rng_int(1, 3), rng_int(1, 12), rng_int(1, 12), rng_int(1, 12),
                        rng_int(1, 3), 4.0f, lay);
            sal_case(rng_int(1, 3), rng_int(1, 8), rng_int(1, 9), rng_int(1, 9), rng_int(1, 8),
                     rng_int(1, 2), (int)rng_int(0, 1), 0, 20.0, lay, 0);
        }
    }
    bad_inputs();
    return check_done("test_shift");
}
