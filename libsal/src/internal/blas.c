/* The only file that calls BLIS.
 *
 * Debian's BLIS 0.9.0 may not recognise a recent CPU and then silently runs its
 * generic reference kernels.  sal_init() therefore picks the sub-configuration
 * itself from the CPU's features (unless the user set BLIS_ARCH_TYPE), before the
 * first BLIS call, and verifies it with a small GEMM against a plain loop. */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <blis.h>

#include "internal/internal.h"

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static sal_status blas_status = SAL_OK;
static char blas_errmsg[256];
static char arch_source[320];
static char cpu_features[64];
static const char *arch_name = "unknown";
static int blas_verified = 0;
static int blas_generic = 0;

/* Choose the BLIS sub-configuration for this CPU: -1 leaves BLIS to decide. */
static int pick_arch(void) {
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                 __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int amd = __builtin_cpu_is("amd");
    snprintf(cpu_features, sizeof cpu_features, "%s%s%s", amd ? "AMD " : "",
             avx512 ? "avx512f/dq/bw/vl" : (avx2 ? "avx2+fma" : "no avx2"),
             "");
    /* skx kernels were measured fastest on AVX-512 Zen 5 for our forward GEMMs */
    if (avx512) return BLIS_ARCH_SKX;
    if (avx2) return amd ? BLIS_ARCH_ZEN3 : BLIS_ARCH_HASWELL;
    return -1;
}

/* A 37 x 29 x 23 GEMM with strided operands against a double-precision loop. */
static int verify_gemm(void) {
    enum { M = 37, N = 29, K = 23 };
    static float a[M * K], b[K * N], c[M * N];
    for (int i = 0; i < M * K; i++) a[i] = (float)((i * 7 % 13) - 6) / 8.0f;
    for (int i = 0; i < K * N; i++) b[i] = (float)((i * 5 % 11) - 5) / 4.0f;
    for (int i = 0; i < M * N; i++) c[i] = 1.0f;
    float one = 1.0f, half = 0.5f;
    bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, M, N, K, &one, a, K, 1, b, N, 1, &half, c, N, 1);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.5;
            for (int p = 0; p < K; p++) s += (double)a[i * K + p] * b[p * N + j];
            if (fabs(s - c[i * N + j]) > 1e-4 * (1.0 + fabs(s))) return 0;
        }
    return 1;
}

static void blas_init_once(void) {
    const char *user = getenv("BLIS_ARCH_TYPE");
    int want = pick_arch();
    if (user && *user) {
        snprintf(arch_source, sizeof arch_source, "user (BLIS_ARCH_TYPE=%s)", user);
        want = -2;
    } else if (want >= 0) {
        char v[16];
        snprintf(v, sizeof v, "%d", want);
        setenv("BLIS_ARCH_TYPE", v, 1);
        snprintf(arch_source, sizeof arch_source, "auto-selected by libsal for %s", cpu_features);
    } else {
        snprintf(arch_source, sizeof arch_source, "BLIS auto-detection (%s)", cpu_features);
    }
    bli_init();
    arch_t id = bli_arch_query_id();
    arch_name = bli_arch_string(id);
    blas_generic = id == BLIS_ARCH_GENERIC;
    if (want >= 0 && (int)id != want) {
        /* BLIS was initialised before us (e.g. by another library in this process) */
        snprintf(arch_source + strlen(arch_source), sizeof arch_source - strlen(arch_source),
                 "; BLIS was already initialised, runs '%s'", arch_name);
    }
    blas_verified = verify_gemm();
    if (!blas_verified) {
        blas_status = SAL_EBLAS;
        snprintf(blas_errmsg, sizeof blas_errmsg,
                 "BLIS sub-configuration '%s' failed the verification GEMM", arch_name);
    }
}

sal_status sal_init(void) {
    pthread_once(&blas_once, blas_init_once);
    if (blas_status != SAL_OK) return sal_fail(blas_status, "sal_init", "%s", blas_errmsg);
    return SAL_OK;
}

sal_status sal_blas_query(sal_blas_info *info) {
    SAL_REQUIRE(info != NULL, "sal_blas_query", "info=NULL: must point to a sal_blas_info");
    pthread_once(&blas_once, blas_init_once);
    info->blis_version = bli_info_get_version_str();
    info->flavour = bli_info_get_enable_openmp() ? "openmp"
                    : bli_info_get_enable_pthreads() ? "pthread" : "serial";
    info->arch = arch_name;
    info->arch_source = arch_source;
    info->cpu_features = cpu_features;
    info->verified = blas_verified;
    info->generic = blas_generic;
    return SAL_OK;
}

sal_status sal_sgemm(int64_t m, int64_t n, int64_t k, float alpha,
                     const float *a, int64_t rsa, int64_t csa,
                     const float *b, int64_t rsb, int64_t csb, float beta,
                     float *c, int64_t rsc, int64_t csc, int nt) {
    SAL_TRY(sal_init());
    if (m == 0 || n == 0) return SAL_OK;
    rntm_t rntm;
    bli_rntm_init(&rntm);
    bli_rntm_set_num_threads(nt < 1 ? 1 : nt, &rntm);
    bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE,
                 (dim_t)m, (dim_t)n, (dim_t)k, &alpha, (float *)a, (inc_t)rsa, (inc_t)csa,
                 (float *)b, (inc_t)rsb, (inc_t)csb, &beta, c, (inc_t)rsc, (inc_t)csc, NULL, &rntm);
    return SAL_OK;
}
