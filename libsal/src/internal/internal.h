/* Private helpers shared by the libsal sources: errors, checked sizes, threads, GEMM.
 * internal/blas.c is the only file that includes blis.h. */
#ifndef SAL_INTERNAL_H
#define SAL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sal/core.h"

/* Record "func: message" as the thread's last error and return status s. */
sal_status sal_fail(sal_status s, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Checks that return SAL_EINVAL with a message naming the parameter and the rule. */
#define SAL_REQUIRE(cond, func, ...) \
    do { if (!(cond)) return sal_fail(SAL_EINVAL, func, __VA_ARGS__); } while (0)
#define SAL_TRY(expr) \
    do { sal_status sal_try_s_ = (expr); if (sal_try_s_ != SAL_OK) return sal_try_s_; } while (0)

/* a*b into *out; false on overflow or a negative factor */
static inline bool sal_mul_ok(int64_t a, int64_t b, int64_t *out) {
    if (a < 0 || b < 0) return false;
    return !__builtin_mul_overflow(a, b, out);
}
/* Product of n non-negative factors, SAL_EOVERFLOW when it passes 2^62 (room for sums). */
sal_status sal_checked_prod(const char *func, const char *what, int64_t *out, int n, ...);

/* Validates an activation geometry: positive sizes, product fits. */
sal_status sal_act_check(const char *func, const char *name, sal_act a);
static inline int64_t sal_act_numel(sal_act a) { return a.n * a.c * a.h * a.w; }

/* Activations, gradients and scratch start on a 64-byte boundary (one cache line, one
 * AVX-512 vector): the direct sparse-tap kernels (taps.c) read their sources in place only
 * when aligned.  sal_alloc_floats(n): n floats (at least one line), free() releases it. */
#define SAL_ALIGN_FLOATS 16
static inline int64_t sal_align_floats(int64_t n) {
    return (n + SAL_ALIGN_FLOATS - 1) / SAL_ALIGN_FLOATS * SAL_ALIGN_FLOATS;
}
void *sal_alloc_floats(size_t n);
/* the first 64-byte boundary at or after p: a caller's scratch with its buffers on cache
 * lines (a vector access that straddles two lines costs two) */
static inline void *sal_align64(void *p) {
    return (void *)(((uintptr_t)p + 63) & ~(uintptr_t)63);
}

/* Threads (internal/pool.c): a persistent pthread pool, fork-safe, workers sleep when idle.
 * sal_threads(): the count our loops and GEMMs use (sal_set_num_threads, else
 * SAL_NUM_THREADS, OMP_NUM_THREADS, else the CPUs this process may run on). */
#define SAL_MAX_THREADS 256
/* The calling thread's parallel regions run serially (on it alone) from sal_serial_begin
 * until sal_serial_end(the value begin returned); for work too small to pay for waking the
 * workers.  Nests. */
int sal_serial_begin(void);
void sal_serial_end(int was);
int sal_threads(void);
int sal_default_threads(void);
int sal_cpu_count(void);
int sal_max_threads(void);     /* 4 x CPUs, at most SAL_MAX_THREADS */
int sal_pool_workers(void);    /* workers started so far in this process */
int sal_pool_forks(void);      /* times a forked child reset the pool */

/* fn(ctx, tid, nt) for tid = 0 .. nt-1, in parallel on the pool (the caller runs tid 0);
 * returns when all have returned.  Tasks must not wait for one another.  Nested calls,
 * and calls while another thread owns the pool, run the nt tasks serially. */
typedef void (*sal_task_fn)(void *ctx, int tid, int nt);
void sal_parallel(int nt, sal_task_fn fn, void *ctx);

/* fn(ctx, lo, hi, tid) over static contiguous blocks of [0, n) on min(nt, n) threads */
typedef void (*sal_range_fn)(void *ctx, int64_t lo, int64_t hi, int tid);
void sal_parallel_for(int64_t n, int nt, sal_range_fn fn, void *ctx);
/* block [lo, hi) of [0, n) for thread tid of nt (the split sal_parallel_for uses) */
void sal_block(int64_t n, int tid, int nt, int64_t *lo, int64_t *hi);

/* Channel moments (bn.c; sal_conv_epi.moments, sal_bn_desc.moments).  sal_moments_merge:
 * moments (2C: mean, biased variance per channel) from nslot partials (n, mean, M2 about
 * that mean) per channel, part[3 (s C + c) + 0..2], merged in slot order (Chan, Golub and
 * LeVeque's pairwise update, in double); slots with n = 0 are empty.  sal_bn_moments:
 * moments of x (N, C, H, W) by a pass over it, as a training BN computes them. */
void sal_moments_merge(double *moments, const double *part, int64_t nslot, int64_t c);
void sal_bn_moments(double *moments, const float *x, sal_act a);

/* C (m, n) = alpha * A (m, k) * B (k, n) + beta * C, with general strides: element
 * (i, p) of A is a[i*rsa + p*csa] (a transpose is a swap of the two strides).
 * nt: threads for this call (1 inside our own parallel regions). */
sal_status sal_sgemm(int64_t m, int64_t n, int64_t k, float alpha,
                     const float *a, int64_t rsa, int64_t csa,
                     const float *b, int64_t rsb, int64_t csb, float beta,
                     float *c, int64_t rsc, int64_t csc, int nt);

#endif
