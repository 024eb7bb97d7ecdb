/* Per-layer timing of the shift + 1x1 forms of the exported networks (built and run by
 * bench/bench_shiftconv.py, which also times onnxruntime on the same layers):
 *
 *   today   the exported runtime's path: a SHIFT pass writing shifted planes (sal_shift_fwd
 *           over channel-major planes), the 1x1 convolution (sal_conv_fwd: a BLIS GEMM, or
 *           im2col + GEMM when it carries the stride, as in the SL block), then the
 *           epilogue pass (bias, residual, ReLU) over the output, as infer.c runs them;
 *   fused   sal_shiftconv_fwd: the shift folded into the kernel's loads, epilogue fused;
 *   panel   BLIS on a packed shifted panel: per block of output positions, the R shifted
 *           rows gathered into a cache-sized panel, one sal_sgemm, the epilogue on the block.
 *
 * Every method is checked against the naive reference first.  Interleaved repeats,
 * medians; prints one line per (layer, method): name method median_us lo_us hi_us.
 *
 *   bench_shiftconv THREADS BATCH REPEATS [ISA] */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal/internal.h"
#include "sal/sal.h"
#include "sal/shiftconv.h"

typedef struct {
    const char *name;
    int64_t C, H, O, S;
    int conv_stride;   /* today's path: 1 = the shift carries the stride, else the 1x1 conv */
    int plain;         /* rows (c, 0, 0): a plain 1x1 convolution */
    int relu, res, post;
} layer;

static const layer LAYERS[] = {
    /* ShiftResNet-20 e=6 (w=16): the reduce 1x1 after the shift (res added after the ReLU);
     * its stride-2 blocks put the stride on the 1x1 convolution */
    {"sl.s1 96>16 32x32", 96, 32, 16, 1, 0, 0, 1, 1, 1},
    {"sl.s2.0 192>32 32x32/2", 192, 32, 32, 2, 1, 0, 1, 1, 1},
    {"sl.s2 192>32 16x16", 192, 16, 32, 1, 0, 0, 1, 1, 1},
    {"sl.s3.0 384>64 16x16/2", 384, 16, 64, 2, 1, 0, 1, 1, 1},
    {"sl.s3 384>64 8x8", 384, 8, 64, 1, 0, 0, 1, 1, 1},
    /* its expand 1x1 (no shift) */
    {"sl.exp 16>96 32x32", 16, 32, 96, 1, 0, 1, 1, 0, 0},
    {"sl.exp 64>384 8x8", 64, 8, 384, 1, 0, 1, 1, 0, 0},
    /* shared SAL ResNet-20 (w=16): shift (with the stride) + 1x1, BN folded, ReLU */
    {"sals.s1 16>16 32x32", 16, 32, 16, 1, 0, 0, 1, 0, 0},
    {"sals.s2.0 16>32 32x32/2", 16, 32, 32, 2, 0, 0, 1, 0, 0},
    {"sals.s2 32>32 16x16", 32, 16, 32, 1, 0, 0, 1, 1, 0},
    {"sals.s3.0 32>64 16x16/2", 32, 16, 64, 2, 0, 0, 1, 0, 0},
    {"sals.s3 64>64 8x8", 64, 8, 64, 1, 0, 0, 1, 1, 0},
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static uint64_t rs = 88172645463325252ull;
static float frand(void) {
    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
    return (float)((rs >> 40) / 16777216.0) * 2.0f - 1.0f;
}

/* ---- today's path ------------------------------------------------------------------ */
typedef struct {
    float *y;
    int64_t M;
    const float *bias, *res;
    int relu, post;
} epi_task;

static void epi_run(void *p, int64_t lo, int64_t hi, int tid) {
    const epi_task *t = p;
    for (int64_t o = lo; o < hi; o++) {
        float *y = t->y + o * t->M;
        const float *r = t->res ? t->res + o * t->M : NULL;
        const float b = t->bias[o];
        for (int64_t j = 0; j < t->M; j++) {
            float v = y[j] + b;
            if (r && !t->post) v += r[j];
            if (t->relu) v = v > 0.0f ? v : 0.0f;
            if (r && t->post) v += r[j];
            y[j] = v;
        }
    }
}

typedef struct {
    const layer *L;
    int64_t N, Ho, Wo, R;
    const float *x, *w, *bias, *res;
    float *y, *z, *scratch, *cscratch;
    int32_t *rows, *off;
    sal_shiftconv_desc d;
} ctx;

static void run_today(ctx *c) {
    const layer *L = c->L;
    const int64_t N = c->N, H = L->H, S = L->S;
    if (L->plain) {
        sal_conv_desc cd = {{N, L->C, H, H, SAL_CNHW}, L->O, 1, S, 0, 0};
        sal_conv_fwd(c->y, c->x, c->w, &cd, c->cscratch);
    } else {
        const int64_t ss = L->conv_stride ? 1 : S;   /* the shift's stride */
        sal_shift_desc sd = {{N, L->C, H, H, SAL_CNHW}, ss};
        sal_shift_fwd(c->z, c->x, c->off, &sd);
        const int64_t Hz = (H - 1) / ss + 1;
        sal_conv_desc cd = {{N, L->C, Hz, Hz, SAL_CNHW}, L->O, 1, L->conv_stride ? S : 1, 0, 0};
        sal_conv_fwd(c->y, c->z, c->w, &cd, c->cscratch);
    }
    epi_task t = {c->y, N * c->Ho * c->Wo, c->bias, L->res ? c->res : NULL, L->relu, L->post};
    sal_parallel_for(L->O, sal_threads(), epi_run, &t);
}

static void run_mode(ctx *c, int mode) {
    sal_shiftconv_epi e = {c->bias, c->L->res ? c->res : NULL, c->L->relu, c->L->post};
    c->d.mode = mode;
    if (sal_shiftconv_fwd(c->y, c->x, c->w, &e, &c->d, c->scratch) != SAL_OK) {
        fprintf(stderr, "fused: %s\n", sal_last_error());
        exit(1);
    }
}
static void run_fused(ctx *c) { run_mode(c, SAL_SHIFTCONV_AUTO); }
static void run_direct(ctx *c) { run_mode(c, SAL_SHIFTCONV_DIRECT); }
static void run_fpanel(ctx *c) { run_mode(c, SAL_SHIFTCONV_PANEL); }

/* ---- BLIS on a packed shifted panel --------------------------------------------------- */
#define PANEL_POS 512   /* output positions per panel block */

typedef struct {
    ctx *c;
    int64_t nblk;
} panel_task;

static void panel_run(void *p, int64_t lo, int64_t hi, int tid) {
    const panel_task *pt = p;
    ctx *c = pt->c;
    const layer *L = c->L;
    const int64_t R = c->R, H = L->H, S = L->S, Ho = c->Ho, Wo = c->Wo, HWo = Ho * Wo;
    const int64_t M = c->N * HWo, xsc = c->N * H * H;
    float *panel = c->scratch + (int64_t)tid * R * PANEL_POS;
    for (int64_t b = lo; b < hi; b++) {
        const int64_t q0 = b * PANEL_POS, mb = M - q0 < PANEL_POS ? M - q0 : PANEL_POS;
        for (int64_t k = 0; k < R; k++) {   /* row by row of the output, runs copied */
            const int32_t *row = c->rows + 3 * k;
            const float *xc = c->x + row[0] * xsc;
            float *dst = panel + k * mb - q0;
            int64_t xlo = 0, xhi = Wo;   /* columns X with S*X + dx inside */
            while (xlo < Wo && S * xlo + row[2] < 0) xlo++;
            while (xhi > xlo && S * (xhi - 1) + row[2] >= H) xhi--;
            for (int64_t p = q0; p < q0 + mb;) {
                const int64_t n = p / HWo, Y = p % HWo / Wo, X0 = p % Wo;
                const int64_t len = Wo - X0 < q0 + mb - p ? Wo - X0 : q0 + mb - p;
                const int64_t iy = S * Y + row[1];
                float *out = dst + p - X0;   /* out[X] */
                p += len;
                if (iy < 0 || iy >= H) {
                    memset(out + X0, 0, len * 4);
                    continue;
                }
                const float *xr = xc + (n * H + iy) * H;
                const int64_t a = xlo > X0 ? xlo : X0, b = xhi < X0 + len ? xhi : X0 + len;
                for (int64_t X = X0; X < a; X++) out[X] = 0.0f;
                if (S == 1 && a < b) memcpy(out + a, xr + a + row[2], (b - a) * 4);
                else for (int64_t X = a; X < b; X++) out[X] = xr[S * X + row[2]];
                for (int64_t X = (b > a ? b : a); X < X0 + len; X++) out[X] = 0.0f;
            }
        }
        sal_sgemm(L->O, mb, R, 1.0f, c->w, R, 1, panel, mb, 1, 0.0f, c->y + q0, M, 1, 1);
        for (int64_t o = 0; o < L->O; o++) {
            float *y = c->y + o * M + q0;
            const float *r = L->res ? c->res + o * M + q0 : NULL;
            for (int64_t j = 0; j < mb; j++) {
                float v = y[j] + c->bias[o];
                if (r && !L->post) v += r[j];
                if (L->relu) v = v > 0.0f ? v : 0.0f;
                if (r && L->post) v += r[j];
                y[j] = v;
            }
        }
    }
}

static void run_panel(ctx *c) {
    const int64_t M = c->N * c->Ho * c->Wo;
    panel_task pt = {c, (M + PANEL_POS - 1) / PANEL_POS};
    sal_parallel_for(pt.nblk, sal_threads(), panel_run, &pt);
}

static int cmp_d(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s THREADS BATCH REPEATS [ISA] [LAYER-SUBSTRING]\n", argv[0]);
        return 2;
    }
    const int nt = atoi(argv[1]);
    const int64_t N = atoll(argv[2]);
    const int reps = atoi(argv[3]);
    if (argc > 4 && sal_set_isa(argv[4]) != SAL_OK) {
        fprintf(stderr, "%s\n", sal_last_error());
        return 2;
    }
    sal_init();
    sal_set_num_threads(nt);
    for (size_t li = 0; li < sizeof LAYERS / sizeof *LAYERS; li++) {
        const layer *L = &LAYERS[li];
        if (argc > 5 && !strstr(L->name, argv[5])) continue;
        ctx c = {0};
        c.L = L, c.N = N, c.R = L->C;
        c.Ho = (L->H - 1) / L->S + 1, c.Wo = c.Ho;
        const int64_t nx = L->C * N * L->H * L->H, ny = L->O * N * c.Ho * c.Wo;
        float *x = malloc(nx * 4), *w = malloc(L->O * L->C * 4), *bias = malloc(L->O * 4);
        float *res = malloc(ny * 4), *ref = malloc(ny * 4);
        c.y = malloc(ny * 4), c.z = malloc(nx * 4);
        c.rows = malloc(L->C * 12), c.off = malloc(L->C * 8);
        for (int64_t i = 0; i < nx; i++) x[i] = frand();
        for (int64_t i = 0; i < L->O * L->C; i++) w[i] = frand();
        for (int64_t i = 0; i < L->O; i++) bias[i] = frand();
        for (int64_t i = 0; i < ny; i++) res[i] = frand();
        if (!L->plain && L->name[1] == 'l') {   /* SL: Wu et al.'s fixed assignment */
            sal_shift_default_offsets(c.off, L->C);
        } else {                                /* shared SAL: one learned 3x3 position */
            for (int64_t k = 0; k < 2 * L->C; k++) {
                frand();
                c.off[k] = L->plain ? 0 : (int32_t)(rs % 3) - 1;
            }
        }
        for (int64_t k = 0; k < L->C; k++) {
            c.rows[3 * k] = (int32_t)k, c.rows[3 * k + 1] = c.off[2 * k];
            c.rows[3 * k + 2] = c.off[2 * k + 1];
        }
        c.x = x, c.w = w, c.bias = bias, c.res = res;
        c.d = (sal_shiftconv_desc){{N, L->C, L->H, L->H, SAL_CNHW}, L->O, L->C, c.rows, L->S, nt,
                                   0};
        c.d.mode = SAL_SHIFTCONV_DIRECT;
        size_t ns = sal_shiftconv_scratch(&c.d);
        c.d.mode = SAL_SHIFTCONV_PANEL;
        if (sal_shiftconv_scratch(&c.d) > ns) ns = sal_shiftconv_scratch(&c.d);
        const size_t np = (size_t)nt * c.R * PANEL_POS;
        c.scratch = malloc((ns > np ? ns : np) * 4);
        sal_conv_desc cd = {{N, L->C, L->H, L->H, SAL_CNHW}, L->O, 1, L->S, 0, nt};
        c.cscratch = malloc((sal_conv_scratch(&cd) + 1) * 4);
        /* check every method against the reference */
        sal_shiftconv_epi e = {bias, L->res ? res : NULL, L->relu, L->post};
        sal_ref_shiftconv_fwd(ref, x, w, &e, &c.d);
        enum { NM = 5 };
        void (*fns[NM])(ctx *) = {run_today, run_fused, run_direct, run_fpanel, run_panel};
        const char *names[NM] = {"today", "fused", "fused-direct", "fused-panel", "blis-panel"};
        for (int m = 0; m < NM; m++) {
            memset(c.y, 0xff, ny * 4);
            fns[m](&c);
            double err = 0.0;
            for (int64_t i = 0; i < ny; i++) {
                const double d =
                    fabs((double)c.y[i] - ref[i]) / (1e-4 + 1e-4 * fabs((double)ref[i]));
                if (!(d <= err)) err = d;
            }
            if (!(err <= 1.0)) {
                fprintf(stderr, "%s: %s disagrees with the reference (%g)\n", L->name,
                        names[m], err);
                return 1;
            }
        }
        double *t[NM];
        for (int m = 0; m < NM; m++) t[m] = malloc(reps * sizeof(double));
        for (int m = 0; m < NM; m++) fns[m](&c), fns[m](&c);   /* warm up */
        for (int r = 0; r < reps; r++)
            for (int m = 0; m < NM; m++) {
                const double t0 = now();
                fns[m](&c);
                t[m][r] = now() - t0;
            }
        const double macs = (double)L->O * L->C * N * c.Ho * c.Wo;
        for (int m = 0; m < NM; m++) {
            qsort(t[m], reps, sizeof(double), cmp_d);
            printf("%s|%s|%.2f|%.2f|%.2f|%.1f\n", L->name, names[m], 1e6 * t[m][reps / 2],
                   1e6 * t[m][0], 1e6 * t[m][reps - 1], 1e-9 * macs / t[m][reps / 2]);
            free(t[m]);
        }
        fflush(stdout);
        free(x), free(w), free(bias), free(res), free(ref), free(c.y), free(c.z), free(c.rows);
        free(c.off), free(c.scratch), free(c.cscratch);
    }
    return 0;
}
