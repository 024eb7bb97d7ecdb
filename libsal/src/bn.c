/* Batch normalisation, optionally fused with a residual add and a ReLU.
 *
 * One thread owns a channel.  A channel's M = N*H*W values are N runs of H*W floats
 * (NCHW: stride C*H*W between runs; CNHW: one contiguous run of N*H*W, walked as N runs).
 * Sums use 16 float lanes per run (vectorisable without -ffast-math), added into doubles
 * run by run; the statistics are taken about the channel's first value (shifted data),
 * so that a large mean does not cancel the variance.  A training forward given the moments
 * (sal_bn_desc.moments: a network's convolution gathered them while it wrote x) skips that
 * pass: it reads x once instead of twice. */
#include <math.h>
#include <string.h>

#include "internal/cpu.h"
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

typedef struct {
    float *y, *save_mean, *save_invstd, *running_mean, *running_var;
    float *save_affine;          /* (2C) dm, scale per channel, or NULL */
    const float *replay;         /* (2C) dm, scale of an earlier forward: replay it, or NULL */
    const double *moments;       /* training: (2C) mean, variance given (sal_bn_desc), or NULL */
    double *moments_out;         /* sal_bn_moments: (2C) written, and nothing else */
    const float *x, *gamma, *beta, *residual;
    sal_act a;
    int64_t M;
    int relu, training;
    double mom, eps;
} bn_fwd_task;

typedef struct {
    float *dx, *dgamma, *dbeta, *dresidual;
    const float *dy, *y, *x, *gamma, *save_mean, *save_invstd;
    sal_act a;
    int64_t M;
    int training, need_sums, assign;
} bn_bwd_task;

/* ---- the kernels of each instruction set (bn_isa.inc), chosen by sal_cpu_isa() ---- */
typedef void (*bn_channels_fn)(void *p, int64_t c0, int64_t c1, int tid);

#define BN(n) n##_base
#include "bn_isa.inc"
#undef BN

#if defined(__x86_64__) || defined(__i386__)
#define BN_X86 1
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define BN(n) n##_avx2
#include "bn_isa.inc"
#undef BN
#ifdef __clang__
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma"))), \
                             apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#endif
#define BN(n) n##_avx512
#include "bn_isa.inc"
#undef BN
#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

typedef struct {
    bn_channels_fn fwd, bwd;
} bn_kernels;

#ifdef BN_X86
static const bn_kernels BN_KERNELS[SAL_ISA_COUNT] = {
    [SAL_ISA_BASE] = {bn_fwd_channels_base, bn_bwd_channels_base},
    [SAL_ISA_AVX2] = {bn_fwd_channels_avx2, bn_bwd_channels_avx2},
    [SAL_ISA_AVX512] = {bn_fwd_channels_avx512, bn_bwd_channels_avx512}};
#else
static const bn_kernels BN_KERNELS[SAL_ISA_COUNT] = {
    [SAL_ISA_BASE] = {bn_fwd_channels_base, bn_bwd_channels_base},
    [SAL_ISA_AVX2] = {bn_fwd_channels_base, bn_bwd_channels_base},
    [SAL_ISA_AVX512] = {bn_fwd_channels_base, bn_bwd_channels_base}};
#endif

/* the forward of sal_bn_fwd (relu 0, residual NULL) and sal_bn_relu_fwd (relu 1) */
static sal_status bn_forward(const char *fn, float *y, float *save_mean, float *save_invstd,
                             float *running_mean, float *running_var, const float *x,
                             const float *gamma, const float *beta, const float *residual,
                             int relu, const sal_bn_desc *d) {
    int64_t M;
    SAL_TRY(sal_bn_check_fn(fn, d, &M));
    SAL_TRY(sal_bn_fwd_args(fn, d, y, x, running_mean, running_var));
    bn_fwd_task t = {y, save_mean, save_invstd, running_mean, running_var, NULL, NULL,
                     d->moments, NULL, x, gamma, beta, residual, d->x, M, relu, d->training,
                     d->momentum, d->eps};
    sal_parallel_for(d->x.c, sal_threads(), BN_KERNELS[sal_cpu_isa()].fwd, &t);
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
    bn_fwd_task t = {y, save_mean, save_invstd, running_mean, running_var, affine, NULL,
                     d->moments, NULL, x, gamma, beta, residual, d->x, M, relu != 0,
                     d->training, d->momentum, d->eps};
    sal_parallel_for(d->x.c, sal_threads(), BN_KERNELS[sal_cpu_isa()].fwd, &t);
    return SAL_OK;
}

sal_status sal_bn_replay(float *y, const float *x, const float *affine, const float *beta,
                         const float *residual, int relu, const sal_bn_desc *d) {
    const char *fn = "sal_bn_replay";
    int64_t M;
    SAL_TRY(sal_bn_check_fn(fn, d, &M));
    SAL_REQUIRE(y && x && affine, fn, "y, x and affine must not be NULL");
    bn_fwd_task t = {y, NULL, NULL, NULL, NULL, NULL, affine, NULL, NULL, x, NULL, beta,
                     residual, d->x, M, relu != 0, d->training, d->momentum, d->eps};
    sal_parallel_for(d->x.c, sal_threads(), BN_KERNELS[sal_cpu_isa()].fwd, &t);
    return SAL_OK;
}

void sal_bn_moments(double *moments, const float *x, sal_act a) {
    bn_fwd_task t = {NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, moments, x, NULL, NULL,
                     NULL, a, a.n * a.h * a.w, 0, 1, 0.0, 1.0};
    sal_parallel_for(a.c, sal_threads(), BN_KERNELS[sal_cpu_isa()].fwd, &t);
}

void sal_moments_merge(double *moments, const double *part, int64_t nslot, int64_t c) {
    for (int64_t ch = 0; ch < c; ch++) {
        double n = 0.0, mean = 0.0, m2 = 0.0;
        for (int64_t s = 0; s < nslot; s++) {
            const double *q = part + 3 * (s * c + ch);
            if (q[0] == 0.0) continue;
            const double nn = n + q[0], dm = q[1] - mean;
            mean += dm * (q[0] / nn);
            m2 += q[2] + dm * dm * (n * q[0] / nn);
            n = nn;
        }
        moments[2 * ch] = mean;
        moments[2 * ch + 1] = n > 0.0 ? m2 / n : 0.0;
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
                     d->x, M, training, need_sums, d->assign};
    sal_parallel_for(d->x.c, sal_threads(), BN_KERNELS[sal_cpu_isa()].bwd, &t);
    return SAL_OK;
}

/* y (N,C,H,W) = bn(x (N,C,H,W)) with gamma, beta (C); saved pair and running stats (C) */
sal_status sal_bn_fwd(float *y, float *save_mean, float *save_invstd, float *running_mean,
                      float *running_var, const float *x, const float *gamma, const float *beta,
                      const sal_bn_desc *d) {
    return bn_forward("sal_bn_fwd", y, save_mean, save_invstd, running_mean, running_var, x,
                      gamma, beta, NULL, 0, d);
}

/* dx (N,C,H,W), dgamma, dbeta (C) += (dx =: d->assign) from dy, x (N,C,H,W), gamma, save_mean, save_invstd (C) */
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

/* dx, dresidual (N,C,H,W), dgamma, dbeta (C) += (= where d->assign says) from dy, y, x (N,C,H,W) and the saved pair */
sal_status sal_bn_relu_bwd(float *dx, float *dgamma, float *dbeta, float *dresidual,
                           const float *dy, const float *y, const float *x, const float *gamma,
                           const float *save_mean, const float *save_invstd,
                           const sal_bn_desc *d) {
    SAL_REQUIRE_PTR(y, "sal_bn_relu_bwd", "y", "the N*C*H*W outputs of sal_bn_relu_fwd");
    return bn_backward("sal_bn_relu_bwd", dx, dgamma, dbeta, dresidual, dy, y, x, gamma,
                       save_mean, save_invstd, d);
}
