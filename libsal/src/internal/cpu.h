/* The one place that asks the CPU what it runs.  Every kernel family keeps a table of
 * implementations indexed by sal_isa and takes entry sal_cpu_isa():
 *
 *     static const tile_fn TILE[SAL_ISA_COUNT] = {
 *         [SAL_ISA_BASE] = tile_base, [SAL_ISA_AVX2] = tile_avx2, [SAL_ISA_AVX512] = tile_avx512};
 *     ... TILE[sal_cpu_isa()] ...
 *
 * The environment variable SAL_ISA=base|avx2|avx512 (read once), or sal_set_isa_cap (tests),
 * caps the level, so that the AVX2 kernels run and are tested on an AVX-512 machine too. */
#ifndef SAL_CPU_H
#define SAL_CPU_H

typedef enum {
    SAL_ISA_BASE = 0,    /* x86-64 baseline (SSE2) or any other CPU: portable C */
    SAL_ISA_AVX2 = 1,    /* AVX2 + FMA, 16 ymm registers */
    SAL_ISA_AVX512 = 2,  /* AVX-512 F/DQ/BW/VL, 32 zmm registers */
    SAL_ISA_COUNT = 3
} sal_isa;

/* the best level this CPU runs, under the cap */
sal_isa sal_cpu_isa(void);
/* the level the CPU itself supports (no cap) */
sal_isa sal_cpu_isa_max(void);
/* caps the level (SAL_ISA_COUNT: no cap beyond SAL_ISA's); returns the previous cap */
sal_isa sal_set_isa_cap(sal_isa cap);
const char *sal_isa_name(sal_isa isa);   /* "base", "avx2", "avx512" */

#endif
