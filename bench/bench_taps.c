/* SAL layer forward and backward, sparse taps against the dense path, in the training
 * network's layout (CNHW), interleaved repeats, medians.  A developer's tool beside
 * bench/bench_sal.py (which compares with PyTorch at the ops level):
 *
 *     cmake --build build/dev && cc -O2 -Ilibsal/include bench/bench_taps.c build/dev/libsal.a \
 *         $(grep -o '/[^ ;]*libblis.so[.0-9]*' build/dev/CMakeCache.txt | head -1) -lpthread -lm \
 *         -o build/dev/bench_taps
 *     build/dev/bench_taps [threads=2] [repeats=9] [shared=0] [batch=128] [betas=20,35,70]
 *                          [layers=01234] [paths=ds] [offset=0]
 *
 * layers: the indices of the shapes below to run; paths: d (dense) and / or s (sparse), the
 * other's columns then read 0 (a profile of one path: perf record -g build/dev/bench_taps 1 20
 * 0 128 70 0 s).  offset: floats by which x, y, dx and dy start past a 64-byte boundary (0:
 * aligned, the stride-1 sparse path then runs on the direct kernels; 4: as glibc's malloc
 * places a large block, 16 bytes past one, the copy path).
 *
 * Shapes: the ResNet-20 SAL layers (16x32x32, 16->32 stride 2, 32x16x16, 32->64 stride 2,
 * 64x8x8).  Logits U[0, 1).  Columns: milliseconds (median, min) of the forward and of the
 * backward (dx, dw, dlogits), dense (tap_threshold 0) and sparse (forced), the mean kept
 * taps per slice, and the sparse kernels' GFLOP/s counting the kept taps' MACs.  With 1
 * thread the times are the thread's CPU time (a loaded host barely disturbs them), else
 * wall clock.
 *
 * The crossover of taps.c (sal_taps_pays) was read off this with betas 1,2,3,4,5,6,8,10,14,20
 * (kept fractions 1.0 .. 0.35): the fraction at which the sparse and the dense column meet. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sal/sal.h"

static int cpu_clock;   /* 1 thread: CLOCK_THREAD_CPUTIME_ID */

static double now(void) {
    struct timespec t;
    clock_gettime(cpu_clock ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static uint64_t rs = 88172645463325252ull;
static float urand(void) {
    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
    return (float)((rs >> 40) / 16777216.0);
}

static int cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void die(const char *what) {
    fprintf(stderr, "%s: %s\n", what, sal_last_error());
    exit(1);
}

int main(int argc, char **argv) {
    const int nt = argc > 1 ? atoi(argv[1]) : 2, reps = argc > 2 ? atoi(argv[2]) : 9;
    const int shared = argc > 3 ? atoi(argv[3]) : 0;
    const int64_t N = argc > 4 ? atoll(argv[4]) : 128;
    double betas[8] = {20, 35, 70};
    int nb = 3;
    if (argc > 5) {
        nb = 0;
        for (char *s = strtok(argv[5], ","); s && nb < 8; s = strtok(NULL, ",")) betas[nb++] = atof(s);
    }
    const char *layers = argc > 6 ? argv[6] : "01234", *pathsel = argc > 7 ? argv[7] : "ds";
    const int64_t offset = argc > 8 ? atoll(argv[8]) : 0;
    sal_set_num_threads(nt);
    cpu_clock = nt == 1;
    if (sal_init() != SAL_OK) die("init");
    const int64_t shapes[][4] = {{16, 32, 16, 1}, {16, 32, 32, 2}, {32, 16, 32, 1},
                                 {32, 16, 64, 2}, {64, 8, 64, 1}};   /* C, H=W, O, S */
    printf("# %d threads, isa %s, batch %lld, %s, CNHW, buffers %lld floats past 64 bytes; "
           "ms median (min), %s\n", nt, sal_get_isa(), (long long)N,
           shared ? "shared" : "unshared", (long long)offset,
           cpu_clock ? "thread CPU time" : "wall clock");
    printf("| layer | beta | kept/9 | fwd dense | fwd sparse | bwd dense | bwd sparse | "
           "sparse fwd GF/s | sparse bwd GF/s |\n|---|---|---|---|---|---|---|---|---|\n");
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        if (!strchr(layers, (int)('0' + si))) continue;
        const int64_t C = shapes[si][0], H = shapes[si][1], O = shapes[si][2], S = shapes[si][3];
        const int64_t L = shared ? C : O * C;
        sal_sal_desc d = {{N, C, H, H, SAL_CNHW}, O, S, 1, shared, 0, 20.0, NULL, nt,
                          SAL_TAP_THRESHOLD_DEFAULT};
        sal_act ya;
        if (sal_sal_check(&d, &ya) != SAL_OK) die("check");
        const int64_t nx = N * C * H * H, ny = N * O * ya.h * ya.w;
        float *xb = aligned_alloc(64, (nx + 16) * 4), *dxb = aligned_alloc(64, (nx + 16) * 4);
        float *yb = aligned_alloc(64, (ny + 16) * 4), *dyb = aligned_alloc(64, (ny + 16) * 4);
        float *x = xb + offset, *dx = dxb + offset, *y = yb + offset, *dy = dyb + offset;
        float *w = malloc(O * C * 9 * 4), *dw = malloc(O * C * 9 * 4), *a = malloc(L * 9 * 4);
        float *da = malloc(L * 9 * 4);
        uint8_t *kept = malloc(L * 9);
        for (int64_t i = 0; i < nx; i++) x[i] = urand() * 2 - 1;
        for (int64_t i = 0; i < ny; i++) dy[i] = urand() * 2 - 1;
        for (int64_t i = 0; i < O * C * 9; i++) w[i] = (urand() * 2 - 1) / sqrtf(9.0f * C);
        for (int64_t i = 0; i < L * 9; i++) a[i] = urand();
        const size_t ns = sal_sal_scratch(&d);
        float *sc = malloc(ns * 4);
        for (int bi = 0; bi < nb; bi++) {
            d.beta = betas[bi];
            int64_t nk;
            if (sal_attn_kept(kept, a, NULL, L, d.beta, 0, d.tap_threshold, &nk) != SAL_OK)
                die("kept");
            double t[4][64] = {{0}};
            const char *paths[2] = {"dense", "sparse"};
            for (int r = 0; r < reps + 1; r++)
                for (int p = 0; p < 2; p++) {
                    if (!strchr(pathsel, paths[p][0])) continue;
                    sal_set_taps_path(paths[p]);
                    double t0 = now();
                    if (sal_sal_fwd(y, x, w, a, &d, sc) != SAL_OK) die("fwd");
                    double t1 = now();
                    memset(dx, 0, nx * 4), memset(dw, 0, O * C * 36), memset(da, 0, L * 36);
                    double t2 = now();
                    if (sal_sal_bwd(dx, dw, da, dy, x, w, a, &d, sc) != SAL_OK) die("bwd");
                    double t3 = now();
                    if (r > 0) t[p][r - 1] = t1 - t0, t[2 + p][r - 1] = t3 - t2;
                }
            double med[4], mn[4];
            for (int k = 0; k < 4; k++) {
                qsort(t[k], reps, sizeof(double), cmpd);
                med[k] = t[k][reps / 2] * 1e3, mn[k] = t[k][0] * 1e3;
            }
            /* MACs of the kept taps: unshared nk pairs (o, i, q); shared nk (i, q) rows x O */
            const double macs = (double)nk * (shared ? O : 1) * ya.h * ya.w * N;
            printf("| %lldx%lldx%lld->%lld s%lld | %g | %.2f | %.2f (%.2f) | %.2f (%.2f) | "
                   "%.2f (%.2f) | %.2f (%.2f) | %.0f | %.0f |\n",
                   (long long)C, (long long)H, (long long)H, (long long)O, (long long)S, d.beta,
                   (double)nk / L, med[0], mn[0], med[1], mn[1], med[2], mn[2], med[3], mn[3],
                   2 * macs / med[1] / 1e6, 4 * macs / med[3] / 1e6);
            fflush(stdout);
        }
        free(xb), free(dxb), free(yb), free(dyb), free(w), free(dw), free(a), free(da), free(kept),
            free(sc);
    }
    sal_set_taps_path("auto");
    return 0;
}
