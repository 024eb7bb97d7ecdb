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

#include "internal/cpu.h"
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
    const sal_isa isa = sal_cpu_isa_max();   /* BLIS is not capped by SAL_ISA */
    const int avx512 = isa >= SAL_ISA_AVX512, avx2 = isa >= SAL_ISA_AVX2;
    const int amd = __builtin_cpu_is("amd");
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

/* one serial BLIS call */
static void gemm1(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t rsa,
                  int64_t csa, const float *b, int64_t rsb, int64_t csb, float beta, float *c,
                  int64_t rsc, int64_t csc) {
    rntm_t rntm;
    bli_rntm_init(&rntm);
    bli_rntm_set_num_threads(1, &rntm);
    /* No small-matrix ("sup") path: on AVX2 hosts (zen3/haswell sub-configurations) BLIS
     * 0.9.0's sup kernels read out of bounds for some strided small problems -- fuzz_conv
     * hit a SEGV inside BLIS on the im2col weight-gradient GEMM within a minute, and none in
     * 378k executions with sup off.  The packed path reads only the given matrices. */
    bli_rntm_disable_l3_sup(&rntm);
    bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE,
                 (dim_t)m, (dim_t)n, (dim_t)k, &alpha, (float *)a, (inc_t)rsa, (inc_t)csa,
                 (float *)b, (inc_t)rsb, (inc_t)csb, &beta, c, (inc_t)rsc, (inc_t)csc, NULL, &rntm);
}

/* A GEMM split over the pool: by columns of C, by rows of C, or (C small, k large: a
 * weight gradient) by k into per-thread partial products that are added in thread order
 * afterwards, so the result depends on the thread count only through that order. */
typedef struct {
    int64_t m, n, k;
    float alpha, beta;
    const float *a, *b;
    float *c, *part;
    int64_t rsa, csa, rsb, csb, rsc, csc;
    int64_t gran;  /* block granularity of the split dimension */
    int how;       /* 0 columns, 1 rows, 2 k */
} gemm_task;

static void split_block(int64_t len, int64_t gran, int tid, int nt, int64_t *lo, int64_t *hi) {
    const int64_t units = (len + gran - 1) / gran;
    int64_t ulo, uhi;
    sal_block(units, tid, nt, &ulo, &uhi);
    *lo = ulo * gran < len ? ulo * gran : len;
    *hi = uhi * gran < len ? uhi * gran : len;
}

static void gemm_part(void *p, int tid, int nt) {
    const gemm_task *t = p;
    int64_t lo, hi;
    if (t->how == 0) {
        split_block(t->n, t->gran, tid, nt, &lo, &hi);
        if (hi > lo)
            gemm1(t->m, hi - lo, t->k, t->alpha, t->a, t->rsa, t->csa, t->b + lo * t->csb, t->rsb,
                  t->csb, t->beta, t->c + lo * t->csc, t->rsc, t->csc);
    } else if (t->how == 1) {
        split_block(t->m, t->gran, tid, nt, &lo, &hi);
        if (hi > lo)
            gemm1(hi - lo, t->n, t->k, t->alpha, t->a + lo * t->rsa, t->rsa, t->csa, t->b, t->rsb,
                  t->csb, t->beta, t->c + lo * t->rsc, t->rsc, t->csc);
    } else {
        split_block(t->k, t->gran, tid, nt, &lo, &hi);
        float *c = tid == 0 ? t->c : t->part + (int64_t)(tid - 1) * t->m * t->n;
        const int64_t rsc = tid == 0 ? t->rsc : t->n, csc = tid == 0 ? t->csc : 1;
        const float beta = tid == 0 ? t->beta : 0.0f;
        if (hi > lo)
            gemm1(t->m, t->n, hi - lo, t->alpha, t->a + lo * t->csa, t->rsa, t->csa,
                  t->b + lo * t->rsb, t->rsb, t->csb, beta, c, rsc, csc);
        else if (tid != 0)
            memset(c, 0, (size_t)(t->m * t->n) * sizeof *c);
        else if (beta != 1.0f)
            for (int64_t i = 0; i < t->m; i++)
                for (int64_t j = 0; j < t->n; j++) {
                    float *e = &c[i * rsc + j * csc];
                    *e = beta == 0.0f ? 0.0f : beta * *e;
                }
    }
}

#define GEMM_PAR_MIN ((int64_t)1 << 18)  /* MACs per thread below which one thread does it */

sal_status sal_sgemm(int64_t m, int64_t n, int64_t k, float alpha,
                     const float *a, int64_t rsa, int64_t csa,
                     const float *b, int64_t rsb, int64_t csb, float beta,
                     float *c, int64_t rsc, int64_t csc, int nt) {
    SAL_TRY(sal_init());
    if (m == 0 || n == 0) return SAL_OK;
    const double macs = (double)m * (double)n * (double)(k > 0 ? k : 1);
    if (nt > 1 && macs < (double)GEMM_PAR_MIN * nt) {
        nt = (int)(macs / (double)GEMM_PAR_MIN);
    }
    if (nt <= 1 || k == 0) {
        gemm1(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
        return SAL_OK;
    }
    gemm_task t = {m, n, k, alpha, beta, a, b, c, NULL, rsa, csa, rsb, csb, rsc, csc, 1, 0};
    const int64_t mn = m > n ? m : n;
    if (k >= 256 * nt && k >= 8 * mn && m * n <= ((int64_t)1 << 18)) {
        /* a weight gradient: C is small, k is the batch: split k */
        t.how = 2;
        t.gran = 64;
        t.part = malloc((size_t)(nt - 1) * (size_t)(m * n) * sizeof(float));
        if (!t.part) {
            gemm1(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
            return SAL_OK;
        }
    } else if (n >= 64 * nt && n >= m) {
        t.how = 0;
        t.gran = 64;
    } else if (m >= 16 * nt) {
        t.how = 1;
        t.gran = 16;
    } else if (n >= 16 * nt) {
        t.how = 0;
        t.gran = 16;
    } else {
        gemm1(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
        return SAL_OK;
    }
    sal_parallel(nt, gemm_part, &t);
    if (t.how == 2) {
        for (int i = 1; i < nt; i++) {
            const float *p = t.part + (int64_t)(i - 1) * m * n;
            for (int64_t r = 0; r < m; r++)
                for (int64_t j = 0; j < n; j++) c[r * rsc + j * csc] += p[r * n + j];
        }
        free(t.part);
    }
    return SAL_OK;
}
