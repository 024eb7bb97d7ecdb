/* The FP32 peak this machine sustains, measured: independent FMA chains on every core.
 *
 *     cc -O3 -mavx2 -mfma -pthread bench/fma_peak.c -o fma_peak && ./fma_peak 2
 *     cc -O3 -mavx512f -pthread bench/fma_peak.c -o fma_peak512 && ./fma_peak512 2
 *
 * (the second: 512-bit FMAs, for CPUs with AVX-512; on Zen 4 they are double-pumped and
 * give the AVX2 figure, on Zen 5 and Intel's server cores twice it)
 * prints GFLOP/s for the given thread count (default: 1).  bench/run.py builds and runs it
 * because a virtual machine's /proc/cpuinfo reports the nominal clock, not the boost clock
 * the cores run at (here: PyTorch's 3x3 convolutions beat the nominal peak). */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHAINS 12            /* independent accumulators: 2 FMA units x latency 4-6 */
#define ITERS 200000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

#ifdef __AVX512F__
#define LANES 16
typedef __m512 vec;
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define STORE _mm512_storeu_ps
#else
#define LANES 8
typedef __m256 vec;
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define STORE _mm256_storeu_ps
#endif

static void *run(void *out) {
    vec a[CHAINS];
    const vec m = SET1(0.999999f), c = SET1(1e-7f);
    for (int i = 0; i < CHAINS; i++) a[i] = SET1((float)i);
    for (long k = 0; k < ITERS / CHAINS; k++)
#pragma GCC unroll 12
        for (int i = 0; i < CHAINS; i++) a[i] = FMA(a[i], m, c);
    float s = 0.0f, v[LANES];
    for (int i = 0; i < CHAINS; i++) {
        STORE(v, a[i]);
        s += v[0];
    }
    *(float *)out = s;
    return NULL;
}

int main(int argc, char **argv) {
    const int nt = argc > 1 ? atoi(argv[1]) : 1;
    if (nt < 1 || nt > 256) return 2;
    pthread_t th[256];
    float sink[256];
    const double t0 = now();
    for (int i = 0; i < nt; i++) pthread_create(&th[i], NULL, run, &sink[i]);
    for (int i = 0; i < nt; i++) pthread_join(th[i], NULL);
    const double dt = now() - t0;
    const double flops = (double)nt * (ITERS / CHAINS) * CHAINS * LANES * 2;
    printf("%.1f\n", flops / dt / 1e9);
    return sink[0] == 12345.0f;  /* keeps the work */
}
