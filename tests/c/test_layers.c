/* Fast layer kernels against the naive references: batch norm (plain and fused with
 * residual + ReLU), ReLU, add, global average pooling, Linear, cross-entropy, SGD; both
 * layouts, accumulation into non-zero gradients, and bad input. */
#include <string.h>

#include "check.h"
#include "sal/sal.h"

static float *alloc_f(int64_t n) { return malloc((size_t)(n > 0 ? n : 1) * sizeof(float)); }
static float *dup_f(const float *a, int64_t n) {
    float *b = alloc_f(n);
    memcpy(b, a, (size_t)n * sizeof(float));
    return b;
}
static float *rand_f(int64_t n) {
    float *a = alloc_f(n);
    fill_uniform(a, n);
    return a;
}

#define CLOSE(got, ref, n, atol, rtol, ...)                                         \
    do {                                                                            \
        int64_t wi_;                                                                \
        double e_ = max_rel_err(got, ref, n, atol, rtol, &wi_);                     \
        CHECK(e_ <= 1, "%s err=%g at %lld (got %g ref %g) " __VA_ARGS__, #got, e_,  \
              (long long)wi_, wi_ >= 0 ? (double)(got)[wi_] : 0.0,                  \
              wi_ >= 0 ? (double)(ref)[wi_] : 0.0);                                 \
    } while (0)

static void bn_case(int64_t N, int64_t C, int64_t H, int64_t W, sal_layout L, int training) {
    const int64_t T = N * C * H * W;
    sal_bn_desc d = {{N, C, H, W, L}, training, 0.1, 1e-5, 0};
    float *x = rand_f(T), *dy = rand_f(T), *res = rand_f(T);
    float *gamma = rand_f(C), *beta = rand_f(C);
    for (int64_t i = 0; i < T; i++) x[i] = 3.0f + 2.0f * x[i];   /* a mean far from 0 */
    float *rm1 = rand_f(C), *rv1 = alloc_f(C);
    for (int64_t c = 0; c < C; c++) rv1[c] = 0.5f + rm1[c] * rm1[c];
    float *rm2 = dup_f(rm1, C), *rv2 = dup_f(rv1, C);
    float *y1 = alloc_f(T), *y2 = alloc_f(T), *m1 = alloc_f(C), *m2 = alloc_f(C);
    float *s1 = alloc_f(C), *s2 = alloc_f(C);
    CHECK(sal_bn_fwd(y1, m1, s1, rm1, rv1, x, gamma, beta, &d) == SAL_OK, "%s", sal_last_error());
    CHECK(sal_ref_bn_fwd(y2, m2, s2, rm2, rv2, x, gamma, beta, &d) == SAL_OK, "%s",
          sal_last_error());
    CLOSE(y1, y2, T, 1e-4, 1e-4, "N=%lld C=%lld H=%lld W=%lld L=%d tr=%d", (long long)N,
          (long long)C, (long long)H, (long long)W, (int)L, training);
    CLOSE(m1, m2, C, 1e-5, 1e-5, "mean");
    CLOSE(s1, s2, C, 1e-5, 1e-4, "invstd");
    CLOSE(rm1, rm2, C, 1e-5, 1e-5, "running_mean");
    CLOSE(rv1, rv2, C, 1e-5, 1e-4, "running_var");

    /* backward accumulates: start from the same non-zero values */
    float *dx1 = rand_f(T), *dx2 = dup_f(dx1, T), *dg1 = rand_f(C), *dg2 = dup_f(dg1, C);
    float *db1 = rand_f(C), *db2 = dup_f(db1, C);
    CHECK(sal_bn_bwd(dx1, dg1, db1, dy, x, gamma, m1, s1, &d) == SAL_OK, "%s", sal_last_error());
    CHECK(sal_ref_bn_bwd(dx2, dg2, db2, dy, x, gamma, m1, s1, &d) == SAL_OK, "%s",
          sal_last_error());
    CLOSE(dx1, dx2, T, 1e-4, 1e-4, "bn dx L=%d tr=%d", (int)L, training);
    CLOSE(dg1, dg2, C, 1e-4, 1e-4, "bn dgamma");
    CLOSE(db1, db2, C, 1e-4, 1e-4, "bn dbeta");

    /* fused relu(bn(x) + res) against ref bn, then add and relu by hand */
    float *yf = alloc_f(T), *mf = alloc_f(C), *sf = alloc_f(C);
    float *rm3 = dup_f(rm2, C), *rv3 = dup_f(rv2, C), *rm4 = dup_f(rm2, C), *rv4 = dup_f(rv2, C);
    CHECK(sal_bn_relu_fwd(yf, mf, sf, rm3, rv3, x, gamma, beta, res, &d) == SAL_OK, "%s",
          sal_last_error());
    CHECK(sal_ref_bn_fwd(y2, m2, s2, rm4, rv4, x, gamma, beta, &d) == SAL_OK, "%s",
          sal_last_error());
    float *z = alloc_f(T);
    for (int64_t i = 0; i < T; i++) z[i] = y2[i] + res[i];
    CHECK(sal_ref_relu_fwd(y2, z, d.x) == SAL_OK, "%s", sal_last_error());
    CLOSE(yf, y2, T, 1e-4, 1e-4, "fused y");
    CLOSE(rm3, rm4, C, 1e-5, 1e-5, "fused running_mean");
    /* backward: dz = relu'(z) dy; dres = dz; bn backward of dz */
    float *dz = alloc_f(T);
    memset(dz, 0, (size_t)T * sizeof(float));
    CHECK(sal_ref_relu_bwd(dz, dy, z, d.x) == SAL_OK, "%s", sal_last_error());
    float *dr1 = rand_f(T), *dr2 = dup_f(dr1, T);
    for (int64_t i = 0; i < T; i++) dr2[i] += dz[i];
    float *dxf = rand_f(T), *dxr = dup_f(dxf, T), *dgf = rand_f(C), *dgr = dup_f(dgf, C);
    float *dbf = rand_f(C), *dbr = dup_f(dbf, C);
    CHECK(sal_bn_relu_bwd(dxf, dgf, dbf, dr1, dy, yf, x, gamma, mf, sf, &d) == SAL_OK, "%s",
          sal_last_error());
    CHECK(sal_ref_bn_bwd(dxr, dgr, dbr, dz, x, gamma, mf, sf, &d) == SAL_OK, "%s",
          sal_last_error());
    /* where z sits within float rounding of 0 the two masks may differ: a handful of
     * elements, so compare only where |z| is clearly away from 0 */
    int64_t mism = 0;
    for (int64_t i = 0; i < T; i++)
        if (fabsf(z[i]) < 1e-5f) { dxf[i] = dxr[i]; dr1[i] = dr2[i]; mism++; }
    CHECK(mism <= T / 100 + 1, "too many near-zero pre-activations: %lld", (long long)mism);
    CLOSE(dxf, dxr, T, 1e-4, 1e-4, "fused dx");
    CLOSE(dr1, dr2, T, 1e-5, 1e-5, "fused dresidual");
    if (mism == 0) {
        CLOSE(dgf, dgr, C, 1e-4, 1e-4, "fused dgamma");
        CLOSE(dbf, dbr, C, 1e-4, 1e-4, "fused dbeta");
    }
    /* assign (d.assign bits): dx and dresidual written, not added to, whatever the buffers
     * held: the accumulation into zeros (dresidual bit for bit; dx to rounding, since the
     * compiler may contract the two expressions into FMAs differently) */
    {
        float *za = alloc_f(T), *zb = alloc_f(T), *wa = rand_f(T), *wb = rand_f(T);
        float *ga = alloc_f(C), *ba = alloc_f(C);
        memset(ga, 0, (size_t)C * sizeof(float)), memset(ba, 0, (size_t)C * sizeof(float));
        memset(za, 0, (size_t)T * sizeof(float)), memset(zb, 0, (size_t)T * sizeof(float));
        for (int64_t i = 0; i < T; i++) wa[i] = 1e30f * wa[i], wb[i] = -7.0f;
        sal_bn_desc da = d;
        da.assign = SAL_BN_ASSIGN_DX | SAL_BN_ASSIGN_DRES;
        CHECK(sal_bn_relu_bwd(za, ga, ba, zb, dy, yf, x, gamma, mf, sf, &d) == SAL_OK, "%s",
              sal_last_error());
        CHECK(sal_bn_relu_bwd(wa, ga, ba, wb, dy, yf, x, gamma, mf, sf, &da) == SAL_OK, "%s",
              sal_last_error());
        CLOSE(wa, za, T, 1e-6, 1e-6, "assigned fused dx");
        CHECK(!memcmp(zb, wb, (size_t)T * sizeof(float)), "assigned fused dresidual differs");
        for (int64_t i = 0; i < T; i++) wa[i] = 3.0f, wb[i] = 5.0f;
        da.assign = SAL_BN_ASSIGN_DRES;     /* one bit: the other gradient still adds */
        CHECK(sal_bn_relu_bwd(wa, ga, ba, wb, dy, yf, x, gamma, mf, sf, &da) == SAL_OK, "%s",
              sal_last_error());
        for (int64_t i = 0; i < T; i++) wa[i] -= 3.0f;
        CLOSE(wa, za, T, 1e-5, 1e-5, "dx added to under the dresidual bit");
        CHECK(!memcmp(zb, wb, (size_t)T * sizeof(float)), "assigned dresidual (one bit) differs");
        memset(za, 0, (size_t)T * sizeof(float));
        for (int64_t i = 0; i < T; i++) wa[i] = NAN;
        da.assign = SAL_BN_ASSIGN_DX;
        CHECK(sal_bn_bwd(za, ga, ba, dy, x, gamma, m1, s1, &d) == SAL_OK, "%s", sal_last_error());
        CHECK(sal_bn_bwd(wa, ga, ba, dy, x, gamma, m1, s1, &da) == SAL_OK, "%s", sal_last_error());
        CLOSE(wa, za, T, 1e-6, 1e-6, "assigned bn dx");
        free(za), free(zb), free(wa), free(wb), free(ga), free(ba);
    }
    /* NULL gradients are skipped, and the kernels still run */
    CHECK(sal_bn_bwd(NULL, NULL, NULL, dy, x, gamma, m1, s1, &d) == SAL_OK, "%s",
          sal_last_error());
    CHECK(sal_bn_relu_bwd(NULL, dgf, NULL, NULL, dy, yf, x, NULL, mf, sf, &d) == SAL_OK, "%s",
          sal_last_error());

    /* the double twin agrees with the float reference */
    double *xd = malloc((size_t)T * sizeof(double)), *yd = malloc((size_t)T * sizeof(double));
    double *gd = malloc((size_t)C * sizeof(double)), *bd = malloc((size_t)C * sizeof(double));
    double *md = malloc((size_t)C * sizeof(double)), *sd = malloc((size_t)C * sizeof(double));
    double *rmd = malloc((size_t)C * sizeof(double)), *rvd = malloc((size_t)C * sizeof(double));
    for (int64_t i = 0; i < T; i++) xd[i] = x[i];
    for (int64_t c = 0; c < C; c++) {
        gd[c] = gamma[c]; bd[c] = beta[c]; rmd[c] = rm4[c]; rvd[c] = rv4[c];
    }
    CHECK(sal_ref_bn_fwd_f64(yd, md, sd, rmd, rvd, xd, gd, bd, &d) == SAL_OK, "%s",
          sal_last_error());
    CHECK(sal_ref_bn_fwd(y2, NULL, NULL, rm4, rv4, x, gamma, beta, &d) == SAL_OK, "%s",
          sal_last_error());
    int bad = 0;
    for (int64_t i = 0; i < T; i++) bad += fabs(yd[i] - y2[i]) > 1e-4 + 1e-4 * fabs(yd[i]);
    CHECK(bad == 0, "f64 twin differs from float reference at %d elements", bad);

    free(x); free(dy); free(res); free(gamma); free(beta); free(rm1); free(rv1); free(rm2);
    free(rv2); free(y1); free(y2); free(m1); free(m2); free(s1); free(s2); free(dx1); free(dx2);
    free(dg1); free(dg2); free(db1); free(db2); free(yf); free(mf); free(sf); free(rm3);
    free(rv3); free(rm4); free(rv4); free(z); free(dz); free(dr1); free(dr2); free(dxf);
    free(dxr); free(dgf); free(dgr); free(dbf); free(dbr);
    free(xd); free(yd); free(gd); free(bd); free(md); free(sd); free(rmd); free(rvd);
}

static void elementwise_case(int64_t N, int64_t C, int64_t H, int64_t W, sal_layout L) {
    const sal_act a = {N, C, H, W, L};
    const int64_t T = N * C * H * W;
    float *x = rand_f(T), *b = rand_f(T), *dy = rand_f(T), *y1 = alloc_f(T), *y2 = alloc_f(T);
    CHECK(sal_relu_fwd(y1, x, a) == SAL_OK, "%s", sal_last_error());
    CHECK(sal_ref_relu_fwd(y2, x, a) == SAL_OK, "%s", sal_last_error());
    CLOSE(y1, y2, T, 1e-30, 0, "relu");
    float *dx1 = rand_f(T), *dx2 = dup_f(dx1, T);
    CHECK(sal_relu_bwd(dx1, dy, y1, a) == SAL_OK, "%s", sal_last_error());
    CHECK(sal_ref_relu_bwd(dx2, dy, x, a) == SAL_OK, "%s", sal_last_error()); /* input mask */
    CLOSE(dx1, dx2, T, 1e-30, 0, "relu bwd");
    CHECK(sal_add_fwd(y1, x, b, a) == SAL_OK, "%s", sal_last_error());
    for (int64_t i = 0; i < T; i++) y2[i] = x[i] + b[i];
    CLOSE(y1, y2, T, 1e-30, 0, "add");
    float *da = rand_f(T), *da2 = dup_f(da, T);
    CHECK(sal_add_bwd(da, NULL, dy, a) == SAL_OK, "%s", sal_last_error());
    for (int64_t i = 0; i < T; i++) da2[i] += dy[i];
    CLOSE(da, da2, T, 1e-30, 0, "add bwd");
    /* global average pooling */
    float *p1 = alloc_f(N * C), *p2 = alloc_f(N * C), *dp = rand_f(N * C);
    CHECK(sal_gap_fwd(p1, x, a) == SAL_OK, "%s", sal_last_error());
    CHECK(sal_ref_gap_fwd(p2, x, a) == SAL_OK, "%s", sal_last_error());
    CLOSE(p1, p2, N * C, 1e-6, 1e-5, "gap L=%d", (int)L);
    CHECK(sal_gap_bwd(dx1, dp, a) == SAL_OK, "%s", sal_last_error());
    CHECK(sal_ref_gap_bwd(dx2, dp, a) == SAL_OK, "%s", sal_last_error());
    CLOSE(dx1, dx2, T, 1e-6, 1e-6, "gap bwd L=%d", (int)L);
    free(x); free(b); free(dy); free(y1); free(y2); free(dx1); free(dx2); free(da); free(da2);
    free(p1); free(p2); free(dp);
}

static void linear_case(int64_t N, int64_t I, int64_t O, int bias) {
    float *x = rand_f(N * I), *w = rand_f(O * I), *b = bias ? rand_f(O) : NULL;
    float *dy = rand_f(N * O), *y1 = alloc_f(N * O), *y2 = alloc_f(N * O);
    CHECK(sal_linear_fwd(y1, x, w, b, N, I, O) == SAL_OK, "%s", sal_last_error());
    CHECK(sal_ref_linear_fwd(y2, x, w, b, N, I, O) == SAL_OK, "%s", sal_last_error());
    CLOSE(y1, y2, N * O, 1e-4, 1e-4, "linear N=%lld I=%lld O=%lld", (long long)N, (long long)I,
          (long long)O);
    float *dx1 = rand_f(N * I), *dx2 = dup_f(dx1, N * I), *dw1 = rand_f(O * I);
    float *dw2 = dup_f(dw1, O * I), *db1 = rand_f(O), *db2 = dup_f(db1, O);
    CHECK(sal_linear_bwd(dx1, dw1, db1, dy, x, w, N, I, O) == SAL_OK, "%s", sal_last_error());
    CHECK(sal_ref_linear_bwd(dx2, dw2, db2, dy, x, w, N, I, O) == SAL_OK, "%s", sal_last_error());
    CLOSE(dx1, dx2, N * I, 1e-4, 1e-4, "linear dx");
    CLOSE(dw1, dw2, O * I, 1e-4, 1e-4, "linear dw");
    CLOSE(db1, db2, O, 1e-4, 1e-4, "linear db");
    free(x); free(w); free(b); free(dy); free(y1); free(y2); free(dx1); free(dx2); free(dw1);
    free(dw2); free(db1); free(db2);
}

static void xent_case(int64_t N, int64_t K, float spread) {
    float *z = rand_f(N * K);
    for (int64_t i = 0; i < N * K; i++) z[i] *= spread;   /* large spread: overflow without max */
    int32_t *lab = malloc((size_t)N * sizeof(int32_t));
    for (int64_t r = 0; r < N; r++) lab[r] = (int32_t)rng_int(0, K - 1);
    float l1, l2;
    int64_t c1, c2;
    CHECK(sal_xent_fwd(&l1, &c1, z, lab, N, K) == SAL_OK, "%s", sal_last_error());
    CHECK(sal_ref_xent_fwd(&l2, &c2, z, lab, N, K) == SAL_OK, "%s", sal_last_error());
    CHECK(isfinite(l1) && fabs(l1 - l2) <= 1e-5 + 1e-5 * fabs(l2), "xent %g vs %g", l1, l2);
    CHECK(c1 == c2, "ncorrect %lld vs %lld", (long long)c1, (long long)c2);
    float *g1 = rand_f(N * K), *g2 = dup_f(g1, N * K);
    CHECK(sal_xent_bwd(g1, z, lab, N, K, 0.7f) == SAL_OK, "%s", sal_last_error());
    CHECK(sal_ref_xent_bwd(g2, z, lab, N, K, 0.7f) == SAL_OK, "%s", sal_last_error());
    CLOSE(g1, g2, N * K, 1e-6, 1e-5, "xent bwd N=%lld K=%lld", (long long)N, (long long)K);
    int32_t *pred = malloc((size_t)N * sizeof(int32_t));
    CHECK(sal_argmax(pred, z, N, K) == SAL_OK, "%s", sal_last_error());
    int64_t c3 = 0;
    for (int64_t r = 0; r < N; r++) c3 += pred[r] == lab[r];
    CHECK(c3 == c1, "argmax count %lld vs %lld", (long long)c3, (long long)c1);
    free(z); free(lab); free(g1); free(g2); free(pred);
}

static void sgd_case(int64_t n, double mom, double damp, double wd, int nesterov, int segmented) {
    float *p1 = rand_f(n), *p2 = dup_f(p1, n), *b1 = alloc_f(n), *b2 = alloc_f(n);
    sal_sgd_desc d = {0.05, mom, damp, wd, nesterov};
    sal_sgd_segment segs[3] = {{n / 3, 1.0, 1.0}, {0, 2.0, 2.0}, {n - n / 3, 0.01, 0.0}};
    for (int step = 0; step < 4; step++) {
        float *g = rand_f(n);
        CHECK(sal_sgd_step(p1, b1, g, n, &d, segmented ? segs : NULL, segmented ? 3 : 0,
                           step == 0) == SAL_OK, "%s", sal_last_error());
        CHECK(sal_ref_sgd_step(p2, b2, g, n, &d, segmented ? segs : NULL, segmented ? 3 : 0,
                               step == 0) == SAL_OK, "%s", sal_last_error());
        free(g);
    }
    CLOSE(p1, p2, n, 1e-6, 1e-6, "sgd p mom=%g damp=%g wd=%g nest=%d seg=%d", mom, damp, wd,
          nesterov, segmented);
    if (mom != 0) CLOSE(b1, b2, n, 1e-6, 1e-6, "sgd buf");
    free(p1); free(p2); free(b1); free(b2);
}

static int has(const char *frag) { return strstr(sal_last_error(), frag) != NULL; }

static void bad_inputs(void) {
    float v[64] = {0}, g[64] = {0};
    sal_bn_desc d = {{1, 2, 1, 1, SAL_NCHW}, 1, 0.1, 1e-5, 0};
    CHECK(sal_bn_fwd(v, v, v, NULL, NULL, v, NULL, NULL, &d) == SAL_EINVAL, "M=1 accepted");
    CHECK(has("N*H*W=1") && has("sal_bn_fwd"), "message: %s", sal_last_error());
    d = (sal_bn_desc){{2, 2, 2, 2, SAL_NCHW}, 1, 0.1, 0.0, 0};
    CHECK(sal_bn_fwd(v, v, v, NULL, NULL, v, NULL, NULL, &d) == SAL_EINVAL, "eps 0 accepted");
    CHECK(has("eps=0"), "message: %s", sal_last_error());
    d.eps = 1e-5;
    d.training = 0;
    CHECK(sal_bn_fwd(v, v, v, NULL, NULL, v, NULL, NULL, &d) == SAL_EINVAL, "eval without stats");
    CHECK(has("running_mean=NULL"), "message: %s", sal_last_error());
    d.training = 1;
    d.momentum = 1.5;
    CHECK(sal_bn_fwd(v, v, v, NULL, NULL, v, NULL, NULL, &d) == SAL_EINVAL, "momentum accepted");
    CHECK(has("momentum=1.5"), "message: %s", sal_last_error());
    d.momentum = 0.1;
    CHECK(sal_bn_fwd(v, v, v, v, NULL, v, NULL, NULL, &d) == SAL_EINVAL, "one running stat");
    d.x.c = 0;
    CHECK(sal_bn_fwd(v, v, v, NULL, NULL, v, NULL, NULL, &d) == SAL_EINVAL, "C=0 accepted");
    CHECK(has("C=0"), "message: %s", sal_last_error());
    sal_act big = {INT64_C(1) << 40, 1 << 20, 1 << 20, 1, SAL_NCHW};
    CHECK(sal_relu_fwd(v, v, big) == SAL_EOVERFLOW, "overflow accepted");

    int32_t lab[2] = {1, 3};
    float loss;
    CHECK(sal_xent_fwd(&loss, NULL, v, lab, 2, 3) == SAL_EINVAL, "label 3 of K=3 accepted");
    CHECK(has("labels[1]=3") && has("K=3"), "message: %s", sal_last_error());
    lab[1] = -1;
    CHECK(sal_xent_bwd(g, v, lab, 2, 3, 1.0f) == SAL_EINVAL, "label -1 accepted");
    CHECK(has("labels[1]=-1"), "message: %s", sal_last_error());

    CHECK(sal_linear_fwd(v, v, v, NULL, 2, 0, 3) == SAL_EINVAL, "I=0 accepted");
    CHECK(has("I=0"), "message: %s", sal_last_error());

    sal_sgd_desc sd = {0.1, 0.9, 0.5, 0.0, 1};
    CHECK(sal_sgd_step(v, g, v, 4, &sd, NULL, 0, 1) == SAL_EINVAL, "nesterov+dampening accepted");
    CHECK(has("nesterov"), "message: %s", sal_last_error());
    sd = (sal_sgd_desc){-0.1, 0.9, 0.0, 0.0, 0};
    CHECK(sal_sgd_step(v, g, v, 4, &sd, NULL, 0, 1) == SAL_EINVAL, "negative lr accepted");
    CHECK(has("lr=-0.1"), "message: %s", sal_last_error());
    sd.lr = 0.1;
    CHECK(sal_sgd_step(v, NULL, v, 4, &sd, NULL, 0, 1) == SAL_EINVAL, "NULL buffer accepted");
    sal_sgd_segment segs[2] = {{3, 1.0, 1.0}, {2, 1.0, 1.0}};
    CHECK(sal_sgd_step(v, g, v, 4, &sd, segs, 2, 1) == SAL_EINVAL, "segments past n accepted");
    CHECK(has("segs[1].n=2"), "message: %s", sal_last_error());
    segs[1].n = 0;
    CHECK(sal_sgd_step(v, g, v, 4, &sd, segs, 2, 1) == SAL_EINVAL, "short segments accepted");
    CHECK(has("cover 3"), "message: %s", sal_last_error());
}

int main(void) {
    uint64_t seed = getenv("SAL_TEST_SEED") ? strtoull(getenv("SAL_TEST_SEED"), 0, 10) : 4242;
    check_rng = seed;
    printf("test_layers: seed %llu\n", (unsigned long long)seed);
    CHECK(sal_init() == SAL_OK, "init: %s", sal_last_error());
    for (int L = 0; L < 2; L++)
        for (int tr = 0; tr < 2; tr++) {
            bn_case(1, 1, 1, 2, (sal_layout)L, tr);
            bn_case(2, 3, 5, 7, (sal_layout)L, tr);
            bn_case(1, 16, 4, 4, (sal_layout)L, tr);
            bn_case(3, 10, 13, 6, (sal_layout)L, tr);   /* runs longer and shorter than 16 */
            bn_case(4, 5, 17, 17, (sal_layout)L, tr);
            for (int t = 0; t < 6; t++)
                bn_case(rng_int(1, 4), rng_int(1, 12), rng_int(1, 9), rng_int(2, 9),
                        (sal_layout)L, tr);
        }
    for (int L = 0; L < 2; L++) {
        elementwise_case(1, 1, 1, 1, (sal_layout)L);
        elementwise_case(2, 3, 5, 7, (sal_layout)L);
        elementwise_case(3, 17, 8, 8, (sal_layout)L);
        elementwise_case(2, 4, 11, 3, (sal_layout)L);
    }
    linear_case(1, 1, 1, 1);
    linear_case(3, 7, 5, 0);
    linear_case(5, 64, 10, 1);
    linear_case(17, 33, 13, 1);
    xent_case(1, 1, 1.0f);
    xent_case(1, 10, 1.0f);
    xent_case(7, 10, 3.0f);
    xent_case(13, 100, 200.0f);
    for (int seg = 0; seg < 2; seg++) {
        sgd_case(1, 0.9, 0.0, 0.0, 0, seg);
        sgd_case(37, 0.9, 0.0, 5e-4, 0, seg);
        sgd_case(101, 0.9, 0.0, 1e-2, 1, seg);
        sgd_case(50, 0.5, 0.3, 1e-3, 0, seg);
        sgd_case(20, 0.0, 0.0, 1e-3, 0, seg);
    }
    bad_inputs();
    return check_done("test_layers");
}
