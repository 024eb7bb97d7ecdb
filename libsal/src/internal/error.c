/* Errors, checked sizes and aligned allocations (the thread count: internal/pool.c). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal/internal.h"

static _Thread_local char sal_err_buf[512];

const char *sal_last_error(void) { return sal_err_buf; }

const char *sal_status_name(sal_status s) {
    switch (s) {
    case SAL_OK: return "ok";
    case SAL_EINVAL: return "invalid argument";
    case SAL_ENOMEM: return "out of memory";
    case SAL_EOVERFLOW: return "size overflow";
    case SAL_EBLAS: return "BLIS error";
    case SAL_EIO: return "I/O error";
    case SAL_EFORMAT: return "bad file format";
    case SAL_ENONFINITE: return "non-finite value";
    }
    return "unknown status";
}

sal_status sal_fail(sal_status s, const char *func, const char *fmt, ...) {
    int len = snprintf(sal_err_buf, sizeof sal_err_buf, "%s: ", func);
    if (len < 0 || (size_t)len >= sizeof sal_err_buf) len = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sal_err_buf + len, sizeof sal_err_buf - (size_t)len, fmt, ap);
    va_end(ap);
    return s;
}

sal_status sal_checked_prod(const char *func, const char *what, int64_t *out, int n, ...) {
    va_list ap;
    va_start(ap, n);
    int64_t p = 1;
    bool ok = true;
    for (int i = 0; i < n; i++) {
        int64_t f = va_arg(ap, int64_t);
        if (!sal_mul_ok(p, f, &p) || p > ((int64_t)1 << 62)) ok = false;
    }
    va_end(ap);
    if (!ok) return sal_fail(SAL_EOVERFLOW, func, "%s: size product overflows int64", what);
    *out = p;
    return SAL_OK;
}

void *sal_alloc_floats(size_t n) {
    if (n > (SIZE_MAX - 63) / sizeof(float)) return NULL;
    const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    return aligned_alloc(64, bytes ? bytes : 64);
}

sal_status sal_act_check(const char *func, const char *name, sal_act a) {
    SAL_REQUIRE(a.n >= 1, func, "%s: N=%lld: must be >= 1", name, (long long)a.n);
    SAL_REQUIRE(a.c >= 1, func, "%s: C=%lld: must be >= 1", name, (long long)a.c);
    SAL_REQUIRE(a.h >= 1, func, "%s: H=%lld: must be >= 1", name, (long long)a.h);
    SAL_REQUIRE(a.w >= 1, func, "%s: W=%lld: must be >= 1", name, (long long)a.w);
    SAL_REQUIRE(a.layout == SAL_NCHW || a.layout == SAL_CNHW, func,
                "%s: layout=%d: must be SAL_NCHW or SAL_CNHW", name, (int)a.layout);
    int64_t tot;
    return sal_checked_prod(func, name, &tot, 4, a.n, a.c, a.h, a.w);
}
