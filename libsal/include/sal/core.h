/* libsal core: status codes, threads, BLIS report, activation geometry.
 *
 * Conventions (the contract every function follows):
 * - float32 tensors, rows contiguous.  An activation tensor (N, C, H, W) lives in
 *   one of two layouts: SAL_NCHW (the NumPy boundary) or SAL_CNHW (channel-major,
 *   used inside networks so that a 1x1 convolution over the batch is one GEMM).
 * - Forward functions overwrite their outputs.  Backward functions ACCUMULATE into
 *   gradient buffers; zeroing them is the caller's job.  A NULL gradient pointer
 *   means "not needed" and skips that work.
 * - Every function returns a sal_status; on error sal_last_error() holds a message
 *   naming the function, the parameter, its value and the rule it broke.
 * - Ops that need temporary memory report its size (in floats) through a *_scratch
 *   function; the caller allocates once and passes it in.
 */
#ifndef SAL_CORE_H
#define SAL_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SAL_VERSION "0.1.0"

typedef enum {
    SAL_OK = 0,
    SAL_EINVAL = 1,     /* an argument broke a rule */
    SAL_ENOMEM = 2,     /* allocation failed */
    SAL_EOVERFLOW = 3,  /* a size product does not fit */
    SAL_EBLAS = 4,      /* BLIS missing, unverified or failed */
    SAL_EIO = 5,        /* reading or writing a file failed */
    SAL_EFORMAT = 6,    /* a file is truncated or not in the expected format */
    SAL_ENONFINITE = 7  /* NaN or inf where a finite value is required */
} sal_status;

typedef enum { SAL_NCHW = 0, SAL_CNHW = 1 } sal_layout;

/* ---- library state ------------------------------------------------------ */
const char *sal_last_error(void);          /* thread-local, valid until next error */
const char *sal_status_name(sal_status s);
sal_status sal_init(void);                 /* idempotent; picks and verifies BLIS */
void sal_set_num_threads(int n);           /* threads of our loops and GEMMs; n < 1: default */
int sal_get_num_threads(void);
/* Instruction set of libsal's own kernels: "base", "avx2" or "avx512", the best this CPU
 * runs unless capped by the environment (SAL_ISA=avx2) or by sal_set_isa (tests and
 * benchmarks run the AVX2 kernels on an AVX-512 machine so).  name NULL or "auto": no cap;
 * a level the CPU lacks: SAL_EINVAL.  BLIS is not affected. */
const char *sal_get_isa(void);
sal_status sal_set_isa(const char *name);

typedef struct {
    const char *blis_version;   /* e.g. "0.9.0" */
    const char *flavour;        /* "openmp", "pthread" or "serial" */
    const char *arch;           /* sub-configuration BLIS runs, e.g. "skx" */
    const char *arch_source;    /* "auto-selected by libsal", "user (BLIS_ARCH_TYPE=...)", ... */
    const char *cpu_features;   /* what the run-time CPU check saw */
    int verified;               /* 1 when a test GEMM matched the reference loop */
    int generic;                /* 1 when BLIS runs its slow reference kernels */
} sal_blas_info;
sal_status sal_blas_query(sal_blas_info *info);

/* ---- activation geometry ------------------------------------------------- */
typedef struct {
    int64_t n, c, h, w;   /* N, C, H, W */
    sal_layout layout;
} sal_act;

/* element strides of image n and channel c; the row stride is w, the column 1 */
static inline int64_t sal_act_sn(sal_act a) { return a.layout == SAL_NCHW ? a.c * a.h * a.w : a.h * a.w; }
static inline int64_t sal_act_sc(sal_act a) { return a.layout == SAL_NCHW ? a.h * a.w : a.n * a.h * a.w; }

#ifdef __cplusplus
}
#endif
#endif
