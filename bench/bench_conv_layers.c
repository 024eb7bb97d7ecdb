/* The convolutions of an exported CL ResNet-20 (w=16), one layer at a time, as the
 * executor's evaluation forward runs them: CNHW, sal_conv_fwd_epi with bias + ReLU (+ the
 * residual where the block adds one), interleaved repeats, medians.  A developer's tool
 * for the batch-1 inference target of issue 21:
 *
 *     cmake --build build/dev && cc -O2 -Ilibsal/include bench/bench_conv_layers.c \
 *         build/dev/libsal.a $(grep -o '/[^ ;]*libblis.so[.0-9]*' build/dev/CMakeCache.txt \
 *         | head -1) -lpthread -lm -o build/dev/bench_conv_layers
 *     build/dev/bench_conv_layers [batch=1] [threads=1] [repeats=15]
 *
 * Columns per layer (microseconds, median of the repeats; with 1 thread the thread's CPU
 * time, else wall clock): the auto algorithm with the weights cache (reuse = 1), without
 * it (the weights prepared every call), and the direct family (SAL_CONV_ALGO=direct) with
 * the cache. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sal/sal.h"

static int cpu_clock;

static double now(void) {
    struct timespec t;
    clock_gettime(cpu_clock ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static uint64_t rs = 88172645463325252ull;
static float urand(void) {
    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
    return (float)((rs >> 40) / 16777216.0) - 0.5f;
}

static int cmp(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    int64_t c, o, hw, k, s, res;
} layer;

/* ResNet-20 w=16: stem, then per stage its layers (the 1x1 shortcut runs as a shifted-row
 * GEMM in the executor, not here) */
static const layer LAYERS[] = {{3, 16, 32, 3, 1, 0},  {16, 16, 32, 3, 1, 0}, {16, 16, 32, 3, 1, 1},
                               {16, 32, 32, 3, 2, 0}, {32, 32, 16, 3, 1, 1}, {32, 32, 16, 3, 1, 0},
                               {32, 64, 16, 3, 2, 0}, {64, 64, 8, 3, 1, 1},  {64, 64, 8, 3, 1, 0}};
static const int COUNT[] = {1, 3, 3, 1, 3, 2, 1, 3, 2};   /* how often each occurs */

int main(int argc, char **argv) {
    const int64_t N = argc > 1 ? atoll(argv[1]) : 1;
    const int nt = argc > 2 ? atoi(argv[2]) : 1;
    const int reps = argc > 3 ? atoi(argv[3]) : 15;
    sal_set_num_threads(nt);
    cpu_clock = nt == 1;
    const int nl = (int)(sizeof LAYERS / sizeof *LAYERS);
    double tot[3] = {0};
    printf("batch %lld, %d thread(s), %s, median of %d (us)\n", (long long)N, nt,
           cpu_clock ? "thread CPU time" : "wall clock", reps);
    printf("%-22s %-14s %9s %9s %9s\n", "layer", "algorithm", "cached", "uncached", "direct");
    for (int l = 0; l < nl; l++) {
        const layer *L = &LAYERS[l];
        const sal_conv_desc d = {.x = {N, L->c, L->hw, L->hw, SAL_CNHW}, .o = L->o, .k = L->k,
                                 .stride = L->s, .pad = 1, .threads = nt};
        sal_act ya;
        if (sal_conv_check(&d, &ya) != SAL_OK) return 1;
        const size_t nx = (size_t)(N * L->c * L->hw * L->hw), ny = (size_t)(N * L->o * ya.h * ya.w);
        const size_t nw = (size_t)(L->o * L->c * 9), ns = sal_conv_scratch(&d);
        float *x = malloc(nx * 4), *y = malloc(ny * 4), *r = malloc(ny * 4), *w = malloc(nw * 4);
        float *b = malloc((size_t)L->o * 4), *scr = malloc(ns * 4 + 64);
        for (size_t i = 0; i < nx; i++) x[i] = urand();
        for (size_t i = 0; i < ny; i++) r[i] = urand();
        for (size_t i = 0; i < nw; i++) w[i] = urand();
        for (int64_t i = 0; i < L->o; i++) b[i] = urand();
        sal_conv_epi e = {b, L->res ? r : NULL, 1, 0, 1};
        const int64_t calls = N == 1 ? 200 : 2;
        double *t[3];
        for (int v = 0; v < 3; v++) t[v] = malloc(sizeof(double) * reps);
        for (int rep = 0; rep < reps; rep++)
            for (int v = 0; v < 3; v++) {
                e.reuse = v != 1;
                if (v == 2) sal_conv_set_algo("direct");
                const double t0 = now();
                for (int64_t c = 0; c < calls; c++) {
                    if (sal_conv_fwd_epi(y, x, w, &e, &d, scr) != SAL_OK) {
                        fprintf(stderr, "%s\n", sal_last_error());
                        return 1;
                    }
                }
                t[v][rep] = (now() - t0) / calls * 1e6;
                if (v == 2) sal_conv_set_algo("auto");
            }
        for (int v = 0; v < 3; v++) qsort(t[v], reps, sizeof(double), cmp);
        char name[64];
        snprintf(name, sizeof name, "%lld->%lld %lldx%lld s%lld%s", (long long)L->c,
                 (long long)L->o, (long long)L->hw, (long long)L->hw, (long long)L->s,
                 L->res ? " +res" : "");
        printf("%-22s %-14s %9.1f %9.1f %9.1f  x%d\n", name, sal_conv_algo(&d, SAL_CONV_FORWARD),
               t[0][reps / 2], t[1][reps / 2], t[2][reps / 2], COUNT[l]);
        for (int v = 0; v < 3; v++) tot[v] += COUNT[l] * t[v][reps / 2];
        for (int v = 0; v < 3; v++) free(t[v]);
        free(x), free(y), free(r), free(w), free(b), free(scr);
    }
    printf("%-22s %-14s %9.1f %9.1f %9.1f\n", "network (x count)", "", tot[0], tot[1], tot[2]);
    return 0;
}
