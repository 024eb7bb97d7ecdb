/* The ordinary layers of a CIFAR ResNet, forward and backward, and SGD, with naive
 * reference twins: batch normalisation (optionally fused with + residual and ReLU),
 * ReLU, residual add, global average pooling, Linear, softmax cross-entropy, SGD.
 *
 * Letters: N batch, C channels, H, W spatial, I inputs and O outputs of a Linear,
 * K classes, M = N*H*W values per channel.  Activations (N, C, H, W) follow a sal_act
 * (SAL_NCHW or SAL_CNHW); parameters and per-sample vectors are plain row-major arrays.
 * Backward functions ACCUMULATE into gradient buffers (the caller zeroes them); a NULL
 * gradient pointer skips that gradient. */
#ifndef SAL_LAYERS_H
#define SAL_LAYERS_H

#include "sal/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- batch normalisation --------------------------------------------------- */
/* PyTorch's defaults, used by the network programs (sal/net.h) and the binding */
#define SAL_BN_MOMENTUM 0.1
#define SAL_BN_EPS 1e-5

typedef struct {
    sal_act x;        /* input (N, C, H, W); the output has the same geometry and layout */
    int training;     /* 1: batch statistics (and running-stat update); 0: running statistics */
    double momentum;  /* running = (1 - momentum) * running + momentum * batch; PyTorch: 0.1 */
    double eps;       /* invstd = 1 / sqrt(var + eps); PyTorch: 1e-5 */
    int assign;       /* backward: SAL_BN_ASSIGN_DX / _DRES bits: that gradient is written
                       * (=) rather than accumulated (+=), so its caller need not zero it */
    const double *moments;  /* training forward: (2 C) the batch mean and biased variance of
                       * each channel of x when the caller has them (sal_conv_epi.moments:
                       * gathered while the convolution wrote x), saving the pass over x
                       * that computes them; NULL: computed here.  Ignored in eval mode. */
} sal_bn_desc;

#define SAL_BN_ASSIGN_DX 1
#define SAL_BN_ASSIGN_DRES 2

sal_status sal_bn_check(const sal_bn_desc *d);

/* y (N,C,H,W) = gamma (C) * (x (N,C,H,W) - mean) * invstd + beta (C), per channel.
 * training: mean, var over N,H,W of x (biased var normalises; M >= 2); save_mean and
 *   save_invstd (C) receive them (NULL: not saved); running_mean, running_var (C) are
 *   updated in place with momentum, running_var with the UNBIASED variance (both NULL:
 *   no update; PyTorch's semantics).
 * eval: mean = running_mean, invstd = 1/sqrt(running_var + eps) (both required);
 *   save_mean, save_invstd receive those (NULL: not saved), so the backward always
 *   takes the saved pair.
 * gamma NULL means 1, beta NULL means 0.  y may be x (then no backward: it needs x). */
sal_status sal_bn_fwd(float *y, float *save_mean, float *save_invstd, float *running_mean,
                      float *running_var, const float *x, const float *gamma, const float *beta,
                      const sal_bn_desc *d);
/* dx (N,C,H,W) +=, dgamma (C) += sum dy*xhat, dbeta (C) += sum dy, given dy (N,C,H,W),
 * x (N,C,H,W), gamma (C) (NULL: 1) and save_mean, save_invstd (C) from sal_bn_fwd.
 * training: xhat = (x - mean) invstd,
 *   dx = gamma invstd (dy - sum(dy)/M - xhat sum(dy xhat)/M)   (the batch-statistics formula)
 * eval: dx = gamma invstd dy. */
sal_status sal_bn_bwd(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                      const float *gamma, const float *save_mean, const float *save_invstd,
                      const sal_bn_desc *d);

/* Fused: y (N,C,H,W) = relu(bn(x (N,C,H,W)) + residual (N,C,H,W)); residual NULL: no add.
 * Statistics, saved pair and running update exactly as sal_bn_fwd.  y may be x (then no
 * backward: it needs x). */
sal_status sal_bn_relu_fwd(float *y, float *save_mean, float *save_invstd, float *running_mean,
                           float *running_var, const float *x, const float *gamma,
                           const float *beta, const float *residual, const sal_bn_desc *d);
/* Backward of sal_bn_relu_fwd from its output y (N,C,H,W) (the ReLU mask y > 0) and dy:
 * dz = dy * (y > 0); dresidual (N,C,H,W) += dz; dx, dgamma, dbeta as sal_bn_bwd given dz. */
sal_status sal_bn_relu_bwd(float *dx, float *dgamma, float *dbeta, float *dresidual,
                           const float *dy, const float *y, const float *x, const float *gamma,
                           const float *save_mean, const float *save_invstd,
                           const sal_bn_desc *d);

/* ---- ReLU and residual add (elementwise: any layout, x gives the geometry) ----- */
/* y (N,C,H,W) = max(x (N,C,H,W), 0); y may be x */
sal_status sal_relu_fwd(float *y, const float *x, sal_act xa);
/* dx (N,C,H,W) += dy (N,C,H,W) * (y > 0), y (N,C,H,W) the output or the input of the ReLU */
sal_status sal_relu_bwd(float *dx, const float *dy, const float *y, sal_act xa);
/* y (N,C,H,W) = a (N,C,H,W) + b (N,C,H,W); y may be a or b */
sal_status sal_add_fwd(float *y, const float *a, const float *b, sal_act xa);
/* da (N,C,H,W) += dy, db (N,C,H,W) += dy */
sal_status sal_add_bwd(float *da, float *db, const float *dy, sal_act xa);

/* ---- global average pooling -------------------------------------------------- */
/* y (N, C) row-major (whatever the layout of x) = mean over H, W of x (N,C,H,W) */
sal_status sal_gap_fwd(float *y, const float *x, sal_act xa);
/* dx (N,C,H,W) += dy (N, C) / (H W) */
sal_status sal_gap_bwd(float *dx, const float *dy, sal_act xa);

/* ---- Linear with bias ------------------------------------------------------------ */
/* y (N, O) = x (N, I) w (O, I)^T + b (O); b NULL: no bias */
sal_status sal_linear_fwd(float *y, const float *x, const float *w, const float *b, int64_t n,
                          int64_t i, int64_t o);
/* dx (N, I) += dy w, dw (O, I) += dy^T x, db (O) += sum over N of dy, given dy (N, O) */
sal_status sal_linear_bwd(float *dx, float *dw, float *db, const float *dy, const float *x,
                          const float *w, int64_t n, int64_t i, int64_t o);

/* ---- softmax cross-entropy --------------------------------------------------------- */
/* *loss = mean over n of (logsumexp(logits[n, :]) - logits[n, labels[n]]), logits (N, K),
 * labels (N) in [0, K).  *ncorrect (NULL: skipped) = number of n with argmax = label
 * (ties: the first maximum).  Numerically stable (the row maximum is subtracted). */
sal_status sal_xent_fwd(float *loss, int64_t *ncorrect, const float *logits,
                        const int32_t *labels, int64_t n, int64_t k);
/* dlogits (N, K) += scale * (softmax(logits) - onehot(labels)) / N; scale = dL/dloss */
sal_status sal_xent_bwd(float *dlogits, const float *logits, const int32_t *labels, int64_t n,
                        int64_t k, float scale);
/* pred (N) = argmax over K of logits (N, K) (the first maximum) */
sal_status sal_argmax(int32_t *pred, const float *logits, int64_t n, int64_t k);

/* ---- SGD over a flat arena (torch.optim.SGD) ---------------------------------------- */
typedef struct {
    double lr;            /* >= 0 */
    double momentum;      /* >= 0; 0: no buffer (buf may be NULL) */
    double dampening;     /* >= 0 */
    double weight_decay;  /* >= 0 */
    int nesterov;         /* needs momentum > 0 and dampening = 0 (as PyTorch) */
} sal_sgd_desc;

/* A run of the arena with its own multipliers (PyTorch's parameter groups), e.g. ASL
 * shifts: lr_mult 0.01, wd_mult 0. */
typedef struct {
    int64_t n;        /* elements, >= 0 */
    double lr_mult;   /* lr of the run = lr * lr_mult, >= 0 */
    double wd_mult;   /* weight decay of the run = weight_decay * wd_mult, >= 0 */
} sal_sgd_segment;

/* One step over p, g, buf (n), in order per element:
 *   g' = g + wd * p
 *   buf = g' (first step) or momentum * buf + (1 - dampening) * g'   (momentum > 0)
 *   g' = g' + momentum * buf (nesterov) or buf                          (momentum > 0)
 *   p -= lr * g'
 * segs: nseg runs that cover the n elements exactly, in order; NULL (nseg 0): one run
 * with multipliers 1.  first != 0 on the first step (PyTorch's buffer initialisation). */
sal_status sal_sgd_step(float *p, float *buf, const float *g, int64_t n, const sal_sgd_desc *d,
                        const sal_sgd_segment *segs, int64_t nseg, int first);

/* ---- naive reference kernels, always built (tests, gradient checks) ---------------- */
sal_status sal_ref_bn_fwd(float *y, float *save_mean, float *save_invstd, float *running_mean,
                          float *running_var, const float *x, const float *gamma,
                          const float *beta, const sal_bn_desc *d);
sal_status sal_ref_bn_bwd(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                          const float *gamma, const float *save_mean, const float *save_invstd,
                          const sal_bn_desc *d);
sal_status sal_ref_bn_fwd_f64(double *y, double *save_mean, double *save_invstd,
                              double *running_mean, double *running_var, const double *x,
                              const double *gamma, const double *beta, const sal_bn_desc *d);
sal_status sal_ref_bn_bwd_f64(double *dx, double *dgamma, double *dbeta, const double *dy,
                              const double *x, const double *gamma, const double *save_mean,
                              const double *save_invstd, const sal_bn_desc *d);
sal_status sal_ref_relu_fwd(float *y, const float *x, sal_act xa);
sal_status sal_ref_relu_bwd(float *dx, const float *dy, const float *y, sal_act xa);
sal_status sal_ref_gap_fwd(float *y, const float *x, sal_act xa);
sal_status sal_ref_gap_bwd(float *dx, const float *dy, sal_act xa);
sal_status sal_ref_linear_fwd(float *y, const float *x, const float *w, const float *b, int64_t n,
                              int64_t i, int64_t o);
sal_status sal_ref_linear_bwd(float *dx, float *dw, float *db, const float *dy, const float *x,
                              const float *w, int64_t n, int64_t i, int64_t o);
sal_status sal_ref_xent_fwd(float *loss, int64_t *ncorrect, const float *logits,
                            const int32_t *labels, int64_t n, int64_t k);
sal_status sal_ref_xent_bwd(float *dlogits, const float *logits, const int32_t *labels,
                            int64_t n, int64_t k, float scale);
sal_status sal_ref_sgd_step(float *p, float *buf, const float *g, int64_t n,
                            const sal_sgd_desc *d, const sal_sgd_segment *segs, int64_t nseg,
                            int first);

#ifdef __cplusplus
}
#endif
#endif
