/* The sparse-tap kernel family of SAL (libsal/src/taps.c): one kernel, a list of
 * (input channel, tap, weight) entries per output channel over shifted copies of the
 * input, serves both sparse SAL training (through sal_sal_fwd / sal_sal_bwd with
 * tap_threshold > 0, sal/attention.h) and the exported network's binarised unshared SAL
 * layer (sal/infer.h's GATHER: one entry per kept (o, i) pair), declared here.
 * Conventions: see core.h. */
#ifndef SAL_TAPS_H
#define SAL_TAPS_H

#include "sal/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The one-tap case (GATHER).  x (N, C, H, W) in either layout (sal_act), y and res
 * (N, O, Ho, Wo) in the same layout, Ho = (H-1)/S + 1, Wo = (W-1)/S + 1;
 * pairs (npair, 4) int32 rows (o, i, dy, dx), |dy|, |dx| <= 1, sorted by o (several rows
 * may share o and i); w (npair) their weights; bias (O) or NULL; res or NULL.
 *     v = sum over the pairs of o: w * x[n, i, S*Y + dy, S*X + dx]   (0 outside) + bias[o]
 *     res and !res_post: v += res;  relu: v = max(v, 0);  res and res_post: v += res
 * threads: the threads the call uses and its scratch is sized for (0: sal_get_num_threads()
 * at the time of each call).  scratch: sal_taps_gather_scratch(...) floats. */
size_t sal_taps_gather_scratch(sal_act xa, int64_t o, int64_t stride, int64_t npair,
                               int threads);
sal_status sal_taps_gather_fwd(float *y, const float *x, sal_act xa, int64_t o, int64_t stride,
                               const int32_t *pairs, const float *w, int64_t npair,
                               const float *bias, const float *res, int relu, int res_post,
                               int threads, float *scratch);

/* The same with its entry lists (the plan: the pairs sorted into the kernel's order, with
 * their offsets and weights) kept between calls, for a caller that runs one layer on many
 * chunks of a batch (sal/net.h "Streams"): plan holds sal_taps_gather_plan_floats(...)
 * floats (the largest over the batch sizes N it runs); with
 * *built = 0 the call builds the lists there (checking the pairs) and sets *built = 1;
 * with *built = 1 it runs the lists as they are: the caller keeps x's geometry, threads,
 * the pairs and the weights of the call that built them.  plan NULL: as
 * sal_taps_gather_fwd. */
size_t sal_taps_gather_plan_floats(sal_act xa, int64_t o, int64_t stride, int64_t npair,
                                   int threads);
sal_status sal_taps_gather_fwd_plan(float *y, const float *x, sal_act xa, int64_t o,
                                    int64_t stride, const int32_t *pairs, const float *w,
                                    int64_t npair, const float *bias, const float *res,
                                    int relu, int res_post, int threads, float *scratch,
                                    float *plan, int *built);

#ifdef __cplusplus
}
#endif
#endif
