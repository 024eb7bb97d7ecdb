/* CPU feature dispatch (internal/cpu.h). */
#include "internal/cpu.h"

#include "internal/internal.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static const char *const NAMES[SAL_ISA_COUNT] = {"base", "avx2", "avx512"};
static atomic_int detected = -1;   /* sal_cpu_isa_max, once */
static atomic_int cap = -1;        /* -1: not read yet (SAL_ISA) */

const char *sal_isa_name(sal_isa isa) {
    return isa >= 0 && isa < SAL_ISA_COUNT ? NAMES[isa] : "unknown";
}

sal_isa sal_cpu_isa_max(void) {
    int d = atomic_load(&detected);
    if (d >= 0) return (sal_isa)d;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        d = SAL_ISA_AVX512;
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        d = SAL_ISA_AVX2;
    else
        d = SAL_ISA_BASE;
#else
    d = SAL_ISA_BASE;
#endif
    atomic_store(&detected, d);
    return (sal_isa)d;
}

static int env_cap(void) {
    const char *s = getenv("SAL_ISA");
    if (s)
        for (int i = 0; i < SAL_ISA_COUNT; i++)
            if (strcmp(s, NAMES[i]) == 0) return i;
    return SAL_ISA_COUNT;
}

sal_isa sal_cpu_isa(void) {
    int c = atomic_load(&cap);
    if (c < 0) {
        int expect = -1;
        atomic_compare_exchange_strong(&cap, &expect, env_cap());
        c = atomic_load(&cap);
    }
    const sal_isa m = sal_cpu_isa_max();
    return c < (int)m ? (sal_isa)c : m;
}

sal_isa sal_set_isa_cap(sal_isa c) {
    (void)sal_cpu_isa();   /* the environment's cap is read before it is replaced */
    if (c < SAL_ISA_BASE || c > SAL_ISA_COUNT) c = SAL_ISA_COUNT;
    return (sal_isa)atomic_exchange(&cap, (int)c);
}

const char *sal_get_isa(void) { return sal_isa_name(sal_cpu_isa()); }

sal_status sal_set_isa(const char *name) {
    if (!name || strcmp(name, "auto") == 0) {
        sal_set_isa_cap(SAL_ISA_COUNT);
        return SAL_OK;
    }
    for (int i = 0; i < SAL_ISA_COUNT; i++)
        if (strcmp(name, NAMES[i]) == 0) {
            SAL_REQUIRE(i <= (int)sal_cpu_isa_max(), "sal_set_isa",
                        "name=\"%s\": this CPU runs at most \"%s\"", name,
                        NAMES[sal_cpu_isa_max()]);
            sal_set_isa_cap((sal_isa)i);
            return SAL_OK;
        }
    return sal_fail(SAL_EINVAL, "sal_set_isa", "name=\"%s\": must be \"base\", \"avx2\", "
                    "\"avx512\" or \"auto\"", name);
}
