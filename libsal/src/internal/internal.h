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

/* Threads: number our own loops and BLIS use. */
int sal_threads(void);

/* C (m, n) = alpha * A (m, k) * B (k, n) + beta * C, with general strides: element
 * (i, p) of A is a[i*rsa + p*csa] (a transpose is a swap of the two strides).
 * nt: threads for this call (1 inside our own parallel regions). */
sal_status sal_sgemm(int64_t m, int64_t n, int64_t k, float alpha,
                     const float *a, int64_t rsa, int64_t csa,
                     const float *b, int64_t rsb, int64_t csb, float beta,
                     float *c, int64_t rsc, int64_t csc, int nt);

#endif
