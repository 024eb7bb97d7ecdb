/* Batch normalisation, optionally fused with a residual add and a ReLU.
 *
 * One thread owns a channel.  A channel's M = N*H*W values are N runs of H*W floats
 * (NCHW: stride C*H*W between runs; CNHW: one contiguous run of N*H*W, walked as N runs).
 * Sums use 16 float lanes per run (vectorisable without -ffast-math), added into doubles
 * run by run; the statistics are taken about the channel's first value (shifted data),
 * so that a large mean does not cancel the variance. */
#include <math.h>
#include <string.h>

#include "internal/layers_internal.h"

#define LANES 16

sal_status sal_bn_check_fn(const char *fn, const sal_bn_desc *d, int64_t *m) {
    SAL_REQUIRE(d != NULL, fn, "desc=NULL: must point to a sal_bn_desc");
    SAL_TRY(sal_act_check(fn, "x", d->x));
    SAL_REQUIRE(d->training == 0 || d->training == 1, fn, "training=%d: must be 0 or 1",
                d->training);
    SAL_REQUIRE(d->eps > 0 && isfinite(d->eps), fn, "eps=%g: must be finite and > 0", d->eps);
    SAL_REQUIRE(d->momentum >= 0 && d->momentum <= 1, fn, "momentum=%g: must be in [0, 1]",
                d->momentum);
    const int64_t M = d->x.n * d->x.h * d->x.w;
    SAL_REQUIRE(!d->training || M >= 2, fn,
                "N*H*W=%lld: must be >= 2 in training mode (batch variance per channel)",
                (long long)M);
    if (m) *m = M;
    return SAL_OK;
}

sal_status sal_bn_check(const sal_bn_desc *d) { return sal_bn_check_fn("sal_bn", d, NULL); }

sal_status sal_bn_fwd_args(const char *fn, const sal_bn_desc *d, const float *y, const float *x,
                           const float *running_mean, const float *running_var) {
    SAL_REQUIRE_PTR(y, fn, "y", "N*C*H*W floats");
    SAL_REQUIRE_PTR(x, fn, "x", "N*C*H*W floats");
    if (d->training)
        SAL_REQUIRE((running_mean == NULL) == (running_var == NULL), fn,
                    "running_mean=%s, running_var=%s: give both or neither",
                    running_mean ? "set" : "NULL", running_var ? "set" : "NULL");
    else {
        SAL_REQUIRE_PTR(running_mean, fn, "running_mean", "C floats (eval mode)");
        SAL_REQUIRE_PTR(running_var, fn, "running_var", "C floats (eval mode)");
    }
    return SAL_OK;
}

/* s1 += sum (x - k), s2 += sum (x - k)^2 over a run of L values */
static inline void run_moments(const float *x, int64_t L, float k, double *s1, double *s2) {
    float a1[LANES] = {0}, a2[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= L; i += LANES)
        for (int j = 0; j < LANES; j++) {
            const float t = x[i + j] - k;
            a1[j] += t;
            a2[j] += t * t;
        }
    double r1 = 0, r2 = 0;
    for (; i < L; i++) {
        const double t = (double)x[i] - k;
        r1 += t;
        r2 += t * t;
    }
    for (int j = 0; j < LANES; j++) { r1 += a1[j]; r2 += a2[j]; }
    *s1 += r1;
    *s2 += r2;
}

/* d where y > 0, else +0: as bits (d & -(y > 0)), so that loops have no branch and
 * vectorise (a ternary here stays a branch once GCC unrolls or versions the loop) */
static inline float relu_mask(float d, float y) {
    uint32_t b;
    memcpy(&b, &d, sizeof b);
    b &= -(uint32_t)(y > 0.0f);
    float r;
    memcpy(&r, &b, sizeof r);
    return r;
}

/* s1 += sum dz, s2 += sum dz (x - mean), dz = dy masked by y > 0 when y != NULL */
static inline void run_grad_sums(const float *dy, const float *y, const float *x, float mean,
                                 int64_t L, double *s1, double *s2) {
    float a1[LANES] = {0}, a2[LANES] = {0};
    int64_t i = 0;
    if (y) {
        for (; i + LANES <= L; i += LANES) {
            float g[LANES];
            for (int j = 0; j < LANES; j++) g[j] = relu_mask(dy[i + j], y[i + j]);
            for (int j = 0; j < LANES; j++) {
                a1[j] += g[j];
                a2[j] += g[j] * (x[i + j] - mean);
            }
        }
    } else {
        for (; i + LANES <= L; i += LANES)
            for (int j = 0; j < LANES; j++) {
                const float g = dy[i + j];
                a1[j] += g;
                a2[j] += g * (x[i + j] - mean);
            }
    }
    double r1 = 0, r2 = 0;
    for (; i < L; i++) {
        const double g = (y && !(y[i] > 0.0f)) ? 0.0 : dy[i];
        r1 += g;
        r2 += g * ((double)x[i] - mean);
    }
    for (int j = 0; j < LANES; j++) { r1 += a1[j]; r2 += a2[j]; }
    *s1 += r1;
    *s2 += r2;
}

typedef struct {
    float *y, *save_mean, *save_invstd, *running_mean, *running_var;
    float *save_affine;          /* (2C) dm, scale per channel, or NULL */
    const float *replay;         /* (2C) dm, scale of an earlier forward: replay it, or NULL */
    const float *x, *gamma, *beta, *residual;
    sal_act a;
    int64_t M;
    int relu, training;
    double mom, eps;
} bn_fwd_task;

static void bn_fwd_channels(void *p, int64_t c0, int64_t c1, int tid) {
    const bn_fwd_task *t = p;
    float *y = t->y, *save_mean = t->save_mean, *save_invstd = t->save_invstd;
    float *running_mean = t->running_mean, *running_var = t->running_var;
    const float *x = t->x, *gamma = t->gamma, *beta = t->beta, *residual = t->residual;
    const sal_act a = t->a;
    const int64_t N = a.n, HW = a.h * a.w, sn = sal_act_sn(a), sc = sal_act_sc(a), M = t->M;
    const int training = t->training, relu = t->relu;
    const double mom = t->mom, eps = t->eps;
    for (int64_t c = c0; c < c1; c++) {
        double mean = 0.0, invstd = 0.0;
        float k = 0.0f;  /* the shift: x - k is exact for x near k (float32 near a large mean) */
        if (t->replay) {
            k = training ? x[c * sc] : 0.0f;
        } else if (training) {
            k = x[c * sc];
            double s1 = 0.0, s2 = 0.0;
            for (int64_t n = 0; n < N; n++) run_moments(x + n * sn + c * sc, HW, k, &s1, &s2);
            const double dm = s1 / (double)M;
            double var = s2 / (double)M - dm * dm;
            if (var < 0.0) var = 0.0;
            mean = k + dm;
            invstd = 1.0 / sqrt(var + eps);
            if (running_mean) {
                running_mean[c] = (float)((1.0 - mom) * running_mean[c] + mom * mean);
                running_var[c] = (float)((1.0 - mom) * running_var[c] +
                                         mom * var * (double)M / (double)(M - 1));
            }
        } else {
            mean = running_mean[c];
            invstd = 1.0 / sqrt((double)running_var[c] + eps);
        }
        if (save_mean && !t->replay) save_mean[c] = (float)mean;
        if (save_invstd && !t->replay) save_invstd[c] = (float)invstd;
        /* y = ((x - k) - (mean - k)) scale + shift: centring before scaling, about the
         * shift k, keeps a large mean from cancelling the information in x */
        const double g = gamma ? gamma[c] : 1.0;
        const float dm = t->replay ? t->replay[2 * c] : (float)(mean - k);
        const float scale = t->replay ? t->replay[2 * c + 1] : (float)(g * invstd);
        if (t->save_affine) t->save_affine[2 * c] = dm, t->save_affine[2 * c + 1] = scale;
        const float shift = beta ? beta[c] : 0.0f;
        for (int64_t n = 0; n < N; n++) {
            const int64_t off = n * sn + c * sc;
            const float *xr = x + off;
            float *yr = y + off;
            if (residual) {
                const float *rr = residual + off;
                if (relu)
                    for (int64_t i = 0; i < HW; i++) {
                        const float v = (xr[i] - k - dm) * scale + shift + rr[i];
                        yr[i] = v < 0.0f ? 0.0f : v;
                    }
                else
                    for (int64_t i = 0; i < HW; i++) yr[i] = (xr[i] - k - dm) * scale + shift + rr[i];
            } else if (relu) {
                for (int64_t i = 0; i < HW; i++) {
                    const float v = (xr[i] - k - dm) * scale + shift;
                    yr[i] = v < 0.0f ? 0.0f : v;
                }
            } else {
                for (int64_t i = 0; i < HW; i++) yr[i] = (xr[i] - k - dm) * scale + shift;
            }
        }
    }
}

/* the forward of sal_bn_fwd (relu 0, residual NULL) and sal_bn_relu_fwd (relu 1) */
static sal_status bn_forward(const char *fn, float *y, float *save_mean, float *save_invstd,
                             float *running_mean, float *running_var, const float *x,
                             const float *gamma, const float *beta, const float *residual,
                             int relu, const sal_bn_desc *d) {
    int64_t M;
    SAL_TRY(sal_bn_check_fn(fn, d, &M));
    SAL_TRY(sal_bn_fwd_args(fn, d, y, x, running_mean, running_var));
    bn_fwd_task t = {y, save_mean, save_invstd, running_mean, running_var, NULL, NULL, x, gamma,
                     beta, residual, d->x, M, relu, d->training, d->momentum, d->eps};
    sal_parallel_for(d->x.c, sal_threads(), bn_fwd_channels, &t);
    return SAL_OK;
}

sal_status sal_bn_fwd_affine(float *y, float *save_mean, float *save_invstd, float *running_mean,
                             float *running_var, float *affine, const float *x,
                             const float *gamma, const float *beta, const float *residual,
                             int relu, const sal_bn_desc *d) {
    const char *fn = relu ? "sal_bn_relu_fwd" : "sal_bn_fwd";
    int64_t M;
    SAL_TRY(sal_bn_check_fn(fn, d, &M));
    SAL_TRY(sal_bn_fwd_args(fn, d, y, x, running_mean, running_var));
    SAL_REQUIRE_PTR(affine, fn, "affine", "2*C floats");
    bn_fwd_task t = {y, save_mean, save_invstd, running_mean, running_var, affine, NULL, x, gamma,
                     beta, residual, d->x, M, relu != 0, d->training, d->momentum, d->eps};
    sal_parallel_for(d->x.c, sal_threads(), bn_fwd_channels, &t);
    return SAL_OK;
}

sal_status sal_bn_replay(float *y, const float *x, const float *affine, const float *beta,
                         const float *residual, int relu, const sal_bn_desc *d) {
    const char *fn = "sal_bn_replay";
    int64_t M;
    SAL_TRY(sal_bn_check_fn(fn, d, &M));
    SAL_REQUIRE(y && x && affine, fn, "y, x and affine must not be NULL");
    bn_fwd_task t = {y, NULL, NULL, NULL, NULL, NULL, affine, x, NULL, beta, residual, d->x, M,
                     relu != 0, d->training, d->momentum, d->eps};
    sal_parallel_for(d->x.c, sal_threads(), bn_fwd_channels, &t);
    return SAL_OK;
}

typedef struct {
    float *dx, *dgamma, *dbeta, *dresidual;
    const float *dy, *y, *x, *gamma, *save_mean, *save_invstd;
    sal_act a;
    int64_t M;
    int training, need_sums;
} bn_bwd_task;

static void bn_bwd_channels(void *p, int64_t c0, int64_t c1, int tid) {
    const bn_bwd_task *t = p;
    float *dx = t->dx, *dgamma = t->dgamma, *dbeta = t->dbeta, *dresidual = t->dresidual;
    const float *dy = t->dy, *y = t->y, *x = t->x, *gamma = t->gamma;
    const float *save_mean = t->save_mean, *save_invstd = t->save_invstd;
    const sal_act a = t->a;
    const int64_t N = a.n, HW = a.h * a.w, sn = sal_act_sn(a), sc = sal_act_sc(a), M = t->M;
    const int training = t->training, need_sums = t->need_sums;
    for (int64_t c = c0; c < c1; c++) {
        const float mean = save_mean[c];
        const double invstd = save_invstd[c], g = gamma ? gamma[c] : 1.0;
        double s1 = 0.0, s2 = 0.0;  /* sum dz, sum dz (x - mean) */
        if (need_sums)
            for (int64_t n = 0; n < N; n++) {
                const int64_t off = n * sn + c * sc;
                run_grad_sums(dy + off, y ? y + off : NULL, x + off, mean, HW, &s1, &s2);
            }
        if (dgamma) dgamma[c] += (float)(s2 * invstd);
        if (dbeta) dbeta[c] += (float)s1;
        /* dx = k1 dz - k2 (x - mean) - k3 */
        const float k1 = (float)(g * invstd);
        const float k2 = training ? (float)(g * invstd * invstd * invstd * s2 / (double)M) : 0.0f;
        const float k3 = training ? (float)(g * invstd * s1 / (double)M) : 0.0f;
        for (int64_t n = 0; n < N && (dx || dresidual); n++) {
            const int64_t off = n * sn + c * sc;
            const float *dyr = dy + off, *xr = x + off, *yr = y ? y + off : NULL;
            if (dx) {
                float *dxr = dx + off;
                if (yr)
                    for (int64_t i = 0; i < HW; i++) {
                        const float dz = relu_mask(dyr[i], yr[i]);
                        dxr[i] += k1 * dz - k2 * (xr[i] - mean) - k3;
                    }
                else
                    for (int64_t i = 0; i < HW; i++)
                        dxr[i] += k1 * dyr[i] - k2 * (xr[i] - mean) - k3;
            }
            if (dresidual) {
                float *drr = dresidual + off;
                if (yr)
                    for (int64_t i = 0; i < HW; i++) drr[i] += relu_mask(dyr[i], yr[i]);
                else
                    for (int64_t i = 0; i < HW; i++) drr[i] += dyr[i];
            }
        }
    }
}

/* the backward of sal_bn_bwd (y NULL) and sal_bn_relu_bwd (y: the fused output, mask y > 0) */
static sal_status bn_backward(const char *fn, float *dx, float *dgamma, float *dbeta,
                              float *dresidual, const float *dy, const float *y, const float *x,
                              const float *gamma, const float *save_mean,
                              const float *save_invstd, const sal_bn_desc *d) {
    int64_t M;
    SAL_TRY(sal_bn_check_fn(fn, d, &M));
    SAL_REQUIRE_PTR(dy, fn, "dy", "N*C*H*W floats");
    SAL_REQUIRE_PTR(x, fn, "x", "N*C*H*W floats");
    SAL_REQUIRE_PTR(save_mean, fn, "save_mean", "C floats from the forward");
    SAL_REQUIRE_PTR(save_invstd, fn, "save_invstd", "C floats from the forward");
    const int training = d->training;
    const int need_sums = training ? dx != NULL || dgamma || dbeta : dgamma || dbeta;
    bn_bwd_task t = {dx, dgamma, dbeta, dresidual, dy, y, x, gamma, save_mean, save_invstd,
                     d->x, M, training, need_sums};
    sal_parallel_for(d->x.c, sal_threads(), bn_bwd_channels, &t);
    return SAL_OK;
}

/* y (N,C,H,W) = bn(x (N,C,H,W)) with gamma, beta (C); saved pair and running stats (C) */
sal_status sal_bn_fwd(float *y, float *save_mean, float *save_invstd, float *running_mean,
                      float *running_var, const float *x, const float *gamma, const float *beta,
                      const sal_bn_desc *d) {
    return bn_forward("sal_bn_fwd", y, save_mean, save_invstd, running_mean, running_var, x,
                      gamma, beta, NULL, 0, d);
}

/* dx (N,C,H,W), dgamma, dbeta (C) += from dy, x (N,C,H,W), gamma, save_mean, save_invstd (C) */
sal_status sal_bn_bwd(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                      const float *gamma, const float *save_mean, const float *save_invstd,
                      const sal_bn_desc *d) {
    return bn_backward("sal_bn_bwd", dx, dgamma, dbeta, NULL, dy, NULL, x, gamma, save_mean,
                       save_invstd, d);
}

/* y (N,C,H,W) = relu(bn(x (N,C,H,W)) + residual (N,C,H,W) or 0) */
sal_status sal_bn_relu_fwd(float *y, float *save_mean, float *save_invstd, float *running_mean,
                           float *running_var, const float *x, const float *gamma,
                           const float *beta, const float *residual, const sal_bn_desc *d) {
    return bn_forward("sal_bn_relu_fwd", y, save_mean, save_invstd, running_mean, running_var,
                      x, gamma, beta, residual, 1, d);
}

/* dx, dresidual (N,C,H,W), dgamma, dbeta (C) += from dy, y, x (N,C,H,W) and the saved pair */
sal_status sal_bn_relu_bwd(float *dx, float *dgamma, float *dbeta, float *dresidual,
                           const float *dy, const float *y, const float *x, const float *gamma,
                           const float *save_mean, const float *save_invstd,
                           const sal_bn_desc *d) {
    SAL_REQUIRE_PTR(y, "sal_bn_relu_bwd", "y", "the N*C*H*W outputs of sal_bn_relu_fwd");
    return bn_backward("sal_bn_relu_bwd", dx, dgamma, dbeta, dresidual, dy, y, x, gamma,
                       save_mean, save_invstd, d);
}
