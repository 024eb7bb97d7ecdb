/* Private argument checks shared by the layer kernels (libsal/src/{bn,act,pool,linear,loss,
 * sgd}.c) and their reference twins (libsal/src/ref/layers_ref.c), so that both give the same
 * status and message for the same bad input.  fn names the public function in messages. */
#ifndef SAL_LAYERS_INTERNAL_H
#define SAL_LAYERS_INTERNAL_H

#include "internal/internal.h"
#include "sal/layers.h"

/* "fn: name=NULL: must point to WHAT" */
#define SAL_REQUIRE_PTR(p, fn, name, what) \
    SAL_REQUIRE((p) != NULL, fn, "%s=NULL: must point to %s", name, what)

/* desc valid; training needs N*H*W >= 2; M = N*H*W on success */
sal_status sal_bn_check_fn(const char *fn, const sal_bn_desc *d, int64_t *m);
/* the pointers sal_bn_fwd / sal_bn_relu_fwd need, given the mode */
sal_status sal_bn_fwd_args(const char *fn, const sal_bn_desc *d, const float *y, const float *x,
                           const float *running_mean, const float *running_var);
/* sal_bn_fwd / sal_bn_relu_fwd (relu 0 / 1, residual NULL or not) that also saves, per
 * channel, the (dm, scale) it applied: affine (2C); sal_bn_replay then recomputes that
 * forward's y from x (and the residual), bit for bit, with neither the batch statistics nor
 * the running ones touched (the network program recomputes activations in backward instead
 * of storing them: replayed BN outputs, checkpointed segments) */
sal_status sal_bn_fwd_affine(float *y, float *save_mean, float *save_invstd, float *running_mean,
                             float *running_var, float *affine, const float *x,
                             const float *gamma, const float *beta, const float *residual,
                             int relu, const sal_bn_desc *d);
sal_status sal_bn_replay(float *y, const float *x, const float *affine, const float *beta,
                         const float *residual, int relu, const sal_bn_desc *d);
/* n, i, o >= 1 and their products fit */
sal_status sal_linear_check_fn(const char *fn, int64_t n, int64_t i, int64_t o);
/* n, k >= 1, k < 2^31, labels[j] in [0, k) */
sal_status sal_xent_check_fn(const char *fn, const float *logits, const int32_t *labels,
                             int64_t n, int64_t k);
/* desc rules (PyTorch's), segments cover n, pointers present */
sal_status sal_sgd_check_fn(const char *fn, const float *p, const float *buf, const float *g,
                            int64_t n, const sal_sgd_desc *d, const sal_sgd_segment *segs,
                            int64_t nseg);
#endif
