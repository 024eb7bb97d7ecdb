/* Convolution (CL): k x k, stride S, zero padding P, no bias.
 *
 * The 1x1 / stride-1 / no-padding case goes straight to GEMM (no copy at all); every
 * other case lowers a chunk of B images to a column matrix (im2col) and makes one GEMM
 * of it.  In the channel-major layout a chunk of images is one contiguous run of
 * columns, so B > 1; in NCHW each image is its own GEMM.
 *
 *   col (C*K*K, B*Ho*Wo):  col[(c*K + ky)*K + kx][b*Ho*Wo + oy*Wo + ox]
 *                          = x[n0 + b, c, oy*S + ky - P, ox*S + kx - P]   (0 outside) */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal/conv_internal.h"
#include "internal/epilogue.h"

#define SAL_CONV_SCRATCH_CAP ((int64_t)1 << 22)  /* floats of im2col per chunk (16 MiB) */

sal_status sal_conv_check(const sal_conv_desc *d, sal_act *y) {
    const char *fn = "sal_conv";
    SAL_REQUIRE(d != NULL, fn, "desc=NULL: must point to a sal_conv_desc");
    SAL_TRY(sal_act_check(fn, "x", d->x));
    SAL_REQUIRE(d->o >= 1, fn, "O=%lld: must be >= 1", (long long)d->o);
    SAL_REQUIRE(d->k >= 1, fn, "K=%lld: must be >= 1", (long long)d->k);
    SAL_REQUIRE(d->stride >= 1, fn, "stride=%lld: must be >= 1", (long long)d->stride);
    SAL_REQUIRE(d->pad >= 0, fn, "pad=%lld: must be >= 0", (long long)d->pad);
    SAL_REQUIRE(d->threads >= 0 && d->threads <= 1024, fn, "threads=%d: must be in [0, 1024]",
                d->threads);
    /* H + 2P and W + 2P must not overflow: bounded like every other size (2^62), so the
     * index arithmetic of the kernels (oy*S + ky - P, W - 1 + P - kx) fits as well */
    const int64_t lim = (int64_t)1 << 62, hw = d->x.h > d->x.w ? d->x.h : d->x.w;
    SAL_REQUIRE(d->pad <= (lim - hw) / 2, fn,
                "pad=%lld: too large (padded size max(H, W) + 2*pad must be <= 2^62)",
                (long long)d->pad);
    int64_t hp = d->x.h + 2 * d->pad, wp = d->x.w + 2 * d->pad;
    SAL_REQUIRE(hp >= d->k && wp >= d->k, fn,
                "K=%lld: must be <= padded input size (%lld, %lld)", (long long)d->k,
                (long long)hp, (long long)wp);
    sal_act out = {d->x.n, d->o, (hp - d->k) / d->stride + 1, (wp - d->k) / d->stride + 1,
                   d->x.layout};
    int64_t tmp;
    SAL_TRY(sal_checked_prod(fn, "weights O*C*K*K", &tmp, 4, d->o, d->x.c, d->k, d->k));
    SAL_TRY(sal_checked_prod(fn, "columns C*K*K*Ho*Wo", &tmp, 4, d->x.c * d->k, d->k, out.h, out.w));
    SAL_TRY(sal_act_check(fn, "y", out));
    if (y) *y = out;
    return SAL_OK;
}

static bool conv_is_pointwise(const sal_conv_desc *d) {
    return d->k == 1 && d->stride == 1 && d->pad == 0;
}

/* ---- which algorithm runs a pass ------------------------------------------------------
 * The rule, measured on a 2-core Zen 4 (bench/bench_conv3x3.py, bench/RESULTS_conv.md),
 * batch 128, one thread:
 * - 3x3 / stride 1 / padding 1: Winograd F(4x4, 3x3) from 8 input and output channels on
 *   (2-3.3x the direct kernel); below that the direct kernel (the stem's 3 input channels
 *   would leave 13 of 16 lanes of the transforms and of a blocked kernel empty: 1.6 ms
 *   forward direct against 1.9 blocked), but for up to 4 input channels the weight
 *   gradient runs the stem kernel of dconv.c (vectors over outputs, every tap in registers:
 *   2.0 ms against 2.8 direct).
 * - 3x3 / stride 2 / padding 1: the blocked direct kernel (16 -> 32 channels, 32x32:
 *   3.6 / 4.3 / 3.6 ms against im2col + GEMM's 9.4 / 7.5 / 10.3 ms).
 * - 1x1 / stride 2: im2col + GEMM for the forward and input gradient (1.0 / 1.2 ms against
 *   1.2 / 2.0), the blocked kernel for the weight gradient (1.0 against 2.4 ms). */
typedef enum { ALGO_GEMM1X1, ALGO_IM2COL, ALGO_DIRECT3X3, ALGO_WINOGRAD, ALGO_BLOCKED } conv_algo;
static const char *const ALGO_NAMES[] = {"gemm1x1", "im2col-gemm", "direct3x3", "winograd4x4",
                                         "blocked-direct"};

enum { FORCE_AUTO = 0, FORCE_WINOGRAD = 1, FORCE_DIRECT = 2, FORCE_IM2COL = 3, FORCE_COUNT };
static const char *const FORCE_NAMES[FORCE_COUNT] = {"auto", "winograd", "direct", "im2col"};
static atomic_int conv_force = -1;   /* -1: SAL_CONV_ALGO not read yet */

#define WINO_MIN_CHANNELS 8

static int force_get(void) {
    int f = atomic_load(&conv_force);
    if (f >= 0) return f;
    const char *s = getenv("SAL_CONV_ALGO");
    int want = FORCE_AUTO;
    if (s)
        for (int i = 0; i < FORCE_COUNT; i++)
            if (strcmp(s, FORCE_NAMES[i]) == 0) want = i;
    int expect = -1;
    atomic_compare_exchange_strong(&conv_force, &expect, want);
    return atomic_load(&conv_force);
}

sal_status sal_conv_set_algo(const char *name) {
    if (!name) name = "auto";
    for (int i = 0; i < FORCE_COUNT; i++)
        if (strcmp(name, FORCE_NAMES[i]) == 0) {
            (void)force_get();   /* the environment is read before it is overridden */
            atomic_store(&conv_force, i);
            return SAL_OK;
        }
    return sal_fail(SAL_EINVAL, "sal_conv_set_algo",
                    "name=\"%s\": must be \"auto\", \"winograd\", \"direct\" or \"im2col\"", name);
}

const char *sal_conv_get_algo(void) { return FORCE_NAMES[force_get()]; }

/* the algorithm of pass `pass` of a valid descriptor */
static conv_algo conv_choose(const sal_conv_desc *d, int pass) {
    if (conv_is_pointwise(d)) return ALGO_GEMM1X1;
    const int f = force_get();
    if (f == FORCE_IM2COL) return ALGO_IM2COL;
    const bool wino = sal_wino_applies(d), direct = sal_conv3x3_applies(d);
    const bool blocked = sal_dconv_applies(d);
    if (f == FORCE_WINOGRAD && wino) return ALGO_WINOGRAD;
    if (f == FORCE_DIRECT) {
        if (pass == SAL_CONV_WEIGHT_GRAD && sal_dconv_stem_applies(d)) return ALGO_BLOCKED;
        return direct ? ALGO_DIRECT3X3 : blocked ? ALGO_BLOCKED : ALGO_IM2COL;
    }
    if (wino && (f == FORCE_WINOGRAD || (d->x.c >= WINO_MIN_CHANNELS && d->o >= WINO_MIN_CHANNELS)))
        return ALGO_WINOGRAD;
    if (pass == SAL_CONV_WEIGHT_GRAD && sal_dconv_stem_applies(d)) return ALGO_BLOCKED;
    if (direct) return ALGO_DIRECT3X3;
    /* stride 2: the blocked kernel, but for a 1x1 kernel only its weight gradient (its
     * forward and input gradient interleave 4x the positions they use) */
    if (blocked && d->stride == 2 && (d->k == 3 || pass == SAL_CONV_WEIGHT_GRAD))
        return ALGO_BLOCKED;
    return ALGO_IM2COL;
}

const char *sal_conv_algo(const sal_conv_desc *d, int pass) {
    if (pass < SAL_CONV_FORWARD || pass > SAL_CONV_WEIGHT_GRAD) return NULL;
    if (sal_conv_check(d, NULL) != SAL_OK) return NULL;
    return ALGO_NAMES[conv_choose(d, pass)];
}

/* images per im2col chunk */
static int64_t conv_chunk(const sal_conv_desc *d, const sal_act *y) {
    if (d->x.layout == SAL_NCHW) return 1;
    int64_t per = d->x.c * d->k * d->k * y->h * y->w;
    int64_t b = SAL_CONV_SCRATCH_CAP / per;
    return b < 1 ? 1 : (b > d->x.n ? d->x.n : b);
}

/* the most any algorithm that may run this descriptor needs (a forced choice fits too) */
size_t sal_conv_scratch(const sal_conv_desc *d) {
    sal_act y;
    if (sal_conv_check(d, &y) != SAL_OK || conv_is_pointwise(d)) return 0;
    size_t most = (size_t)(conv_chunk(d, &y) * d->x.c * d->k * d->k * y.h * y.w);
    if (sal_conv3x3_applies(d) && sal_conv3x3_scratch(d) > most) most = sal_conv3x3_scratch(d);
    if (sal_wino_applies(d) && sal_wino_scratch(d) > most) most = sal_wino_scratch(d);
    if (sal_dconv_applies(d) && sal_dconv_scratch(d) > most) most = sal_dconv_scratch(d);
    if (sal_dconv_stem_applies(d) && sal_dconv_stem_scratch(d) > most)
        most = sal_dconv_stem_scratch(d);
    return most;
}

/* first and one-past-last output column whose input column ox*S + kx - P is inside [0, W) */
static inline void conv_valid_range(int64_t kx, int64_t S, int64_t P, int64_t W, int64_t Wo,
                                    int64_t *lo, int64_t *hi) {
    int64_t a = P - kx;                       /* need ox*S >= a */
    *lo = a <= 0 ? 0 : (a - 1) / S + 1;       /* ceil(a / S); a + S - 1 overflowed for huge S */
    int64_t b = W - 1 + P - kx;               /* need ox*S <= b */
    *hi = b < 0 ? 0 : b / S + 1;
    if (*hi > Wo) *hi = Wo;
    if (*lo > *hi) *lo = *hi;
}

typedef struct {
    float *col;          /* im2col: written; col2im: dx, added to */
    const float *src;    /* im2col: x; col2im: dcol */
    const sal_conv_desc *d;
    const sal_act *y;
    int64_t n0, B;
} cols_task;

/* rows [r0, r1) of col (C*K*K, B*Ho*Wo) from images n0 .. n0+B-1 of x */
static void im2col_rows(void *p, int64_t r0, int64_t r1, int tid) {
    const cols_task *t = p;
    const sal_conv_desc *d = t->d;
    float *col = t->col;
    const float *x = t->src;
    const int64_t n0 = t->n0, B = t->B;
    const int64_t C = d->x.c, H = d->x.h, W = d->x.w, K = d->k, S = d->stride, P = d->pad;
    const int64_t Ho = t->y->h, Wo = t->y->w, cols = B * Ho * Wo;
    const int64_t sn = sal_act_sn(d->x), sc = sal_act_sc(d->x);
    (void)C;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t c = r / (K * K), ky = r / K % K, kx = r % K;
        int64_t lo, hi;
        conv_valid_range(kx, S, P, W, Wo, &lo, &hi);
        for (int64_t b = 0; b < B; b++) {
            const float *xc = x + (n0 + b) * sn + c * sc;
            float *dst = col + r * cols + b * Ho * Wo;
            for (int64_t oy = 0; oy < Ho; oy++, dst += Wo) {
                const int64_t iy = oy * S + ky - P;
                if (iy < 0 || iy >= H) { memset(dst, 0, (size_t)Wo * sizeof *dst); continue; }
                /* element offset of input column ox*S + kx - P in xc: an index, not a
                 * pointer, because kx - P alone can lie far outside the image (huge pad) */
                const int64_t off = iy * W + kx - P;
                for (int64_t ox = 0; ox < lo; ox++) dst[ox] = 0.0f;
                if (S == 1) {
                    if (hi > lo) memcpy(dst + lo, xc + (off + lo), (size_t)(hi - lo) * sizeof *dst);
                } else {
                    for (int64_t ox = lo; ox < hi; ox++) dst[ox] = xc[off + ox * S];
                }
                for (int64_t ox = hi; ox < Wo; ox++) dst[ox] = 0.0f;
            }
        }
    }
}

/* col (C*K*K, B*Ho*Wo) from images n0 .. n0+B-1 of x */
static void im2col(float *col, const float *x, const sal_conv_desc *d, const sal_act *y,
                   int64_t n0, int64_t B) {
    cols_task t = {col, x, d, y, n0, B};
    sal_parallel_for(d->x.c * d->k * d->k, sal_threads(), im2col_rows, &t);
}

/* channels [c0, c1) of dx += col2im(dcol) */
static void col2im_channels(void *p, int64_t c0, int64_t c1, int tid) {
    const cols_task *t = p;
    const sal_conv_desc *d = t->d;
    float *dx = t->col;
    const float *dcol = t->src;
    const int64_t n0 = t->n0, B = t->B;
    const int64_t H = d->x.h, W = d->x.w, K = d->k, S = d->stride, P = d->pad;
    const int64_t Ho = t->y->h, Wo = t->y->w, cols = B * Ho * Wo;
    const int64_t sn = sal_act_sn(d->x), sc = sal_act_sc(d->x);
    for (int64_t c = c0; c < c1; c++) {
        for (int64_t kk = 0; kk < K * K; kk++) {
            const int64_t ky = kk / K, kx = kk % K, r = c * K * K + kk;
            int64_t lo, hi;
            conv_valid_range(kx, S, P, W, Wo, &lo, &hi);
            for (int64_t b = 0; b < B; b++) {
                float *xc = dx + (n0 + b) * sn + c * sc;
                const float *src = dcol + r * cols + b * Ho * Wo;
                for (int64_t oy = 0; oy < Ho; oy++, src += Wo) {
                    const int64_t iy = oy * S + ky - P;
                    if (iy < 0 || iy >= H) continue;
                    const int64_t off = iy * W + kx - P;   /* an index: see im2col */
                    if (S == 1) for (int64_t ox = lo; ox < hi; ox++) xc[off + ox] += src[ox];
                    else for (int64_t ox = lo; ox < hi; ox++) xc[off + ox * S] += src[ox];
                }
            }
        }
    }
}

/* dx (images n0 .. n0+B-1) += col2im(dcol); one thread owns a channel, so no races */
static void col2im_add(float *dx, const float *dcol, const sal_conv_desc *d, const sal_act *y,
                       int64_t n0, int64_t B) {
    cols_task t = {dx, dcol, d, y, n0, B};
    sal_parallel_for(d->x.c, sal_threads(), col2im_channels, &t);
}

/* the epilogue as a pass over a finished y (the kernels that do not fuse it), then the
 * moments as another */
static void conv_epilogue_pass(float *y, const sal_act *ya, const sal_conv_epi *e) {
    if (!e) return;
    const int64_t hw = ya->h * ya->w;
    const bool any = e->bias || e->res || e->relu;
    if (any && ya->layout == SAL_CNHW)   /* O planes of N*Ho*Wo */
        sal_epilogue_planes(y, ya->c, ya->n * hw, e->bias, e->res, e->relu, e->res_post);
    else if (any)
        for (int64_t n = 0; n < ya->n; n++)   /* NCHW: per image, O planes of Ho*Wo */
            sal_epilogue_planes(y + n * ya->c * hw, ya->c, hw, e->bias,
                                e->res ? e->res + n * ya->c * hw : NULL, e->relu, e->res_post);
    if (e->moments) sal_bn_moments(e->moments, y, *ya);
}

static sal_status conv_fwd(float *y, const float *x, const float *w, const sal_conv_desc *d,
                           float *scratch, const sal_conv_epi *epi);

/* y (N,O,Ho,Wo) = conv(x (N,C,H,W), w (O,C,K,K)); scratch: sal_conv_scratch(d) floats */
sal_status sal_conv_fwd(float *y, const float *x, const float *w, const sal_conv_desc *d,
                        float *scratch) {
    return conv_fwd(y, x, w, d, scratch, NULL);
}

/* y = epi(conv(x, w)) (sal/conv.h) */
sal_status sal_conv_fwd_epi(float *y, const float *x, const float *w, const sal_conv_epi *epi,
                            const sal_conv_desc *d, float *scratch) {
    const char *fn = "sal_conv_fwd_epi";
    if (epi) {
        SAL_REQUIRE(epi->relu == 0 || epi->relu == 1, fn, "epi.relu=%d: must be 0 or 1",
                    epi->relu);
        SAL_REQUIRE(epi->res_post == 0 || epi->res_post == 1, fn,
                    "epi.res_post=%d: must be 0 or 1", epi->res_post);
        SAL_REQUIRE(epi->reuse == 0 || epi->reuse == 1, fn, "epi.reuse=%d: must be 0 or 1",
                    epi->reuse);
        SAL_REQUIRE(!epi->res || epi->res != y, fn,
                    "epi.res=y: the residual must not be the output (the kernels write y "
                    "while they read it)");
    }
    return conv_fwd(y, x, w, d, scratch, epi);
}

/* A call of fewer multiply-adds than this (direct convolution's count, N O C K^2 Ho Wo)
 * runs on the calling thread alone.  It was 2^22 (every batch-1 layer of a CIFAR ResNet on
 * one thread) when handing work to the pool cost 18-30 us; the pool now polls before it
 * sleeps (internal/pool.c), and a batch-1 Winograd layer on 2 threads took, against 1
 * (a C probe, 30 x 100 calls, best, quiet machine): 16->16 32x32 22.9 -> 15.4 us, 32->32
 * 16x16 16.3 -> 11.5, 64->64 8x8 16.1 -> 13.3.  2^20 keeps the stem (0.44M) and the
 * smallest layers serial.  A batch-1 exported forward on 2 threads times its stream with
 * and without the pool (net.c WIDE_TRIALS), so a machine where the split loses runs it on
 * one. */
#define CONV_SERIAL_MACS ((int64_t)1 << 20)

static int64_t conv_macs(const sal_conv_desc *d, const sal_act *ya) {
    int64_t m = d->x.n;   /* sal_conv_check bounded every factor: saturate, never wrap */
    const int64_t f[5] = {d->o, d->x.c, d->k * d->k, ya->h, ya->w};
    for (int i = 0; i < 5; i++)
        if (!sal_mul_ok(m, f[i], &m)) return INT64_MAX;
    return m;
}

/* *one: d with one thread, when the call is too small to share (CONV_SERIAL_MACS): the
 * pass then runs serially (sal_serial_begin); returns d or one */
static const sal_conv_desc *conv_small(const sal_conv_desc *d, const sal_act *ya,
                                       sal_conv_desc *one) {
    if (conv_macs(d, ya) >= CONV_SERIAL_MACS) return d;
    *one = *d;
    one->threads = 1;
    return one;
}

static sal_status conv_fwd_run(float *y, const float *x, const float *w, const sal_conv_desc *d,
                               float *scratch, const sal_conv_epi *epi);

static sal_status conv_fwd(float *y, const float *x, const float *w, const sal_conv_desc *d,
                           float *scratch, const sal_conv_epi *epi) {
    sal_act ya;
    SAL_TRY(sal_conv_check(d, &ya));
    sal_conv_desc one;
    const sal_conv_desc *dd = conv_small(d, &ya, &one);
    const int serial = dd == d ? -1 : sal_serial_begin();
    const sal_status s = conv_fwd_run(y, x, w, dd, scratch, epi);
    if (serial >= 0) sal_serial_end(serial);
    return s;
}

static sal_status conv_fwd_run(float *y, const float *x, const float *w, const sal_conv_desc *d,
                               float *scratch, const sal_conv_epi *epi) {
    sal_act ya;
    SAL_TRY(sal_conv_check(d, &ya));
    const int nt = sal_threads();
    const int64_t N = d->x.n, C = d->x.c, O = d->o, CKK = C * d->k * d->k, HWo = ya.h * ya.w;
    const int64_t xsn = sal_act_sn(d->x), xsc = sal_act_sc(d->x);
    const int64_t ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);
    if (conv_is_pointwise(d)) {
        if (d->x.layout == SAL_CNHW)  /* Y (O, N*HW) = W (O, C) X (C, N*HW) */
            SAL_TRY(sal_sgemm(O, N * HWo, C, 1.0f, w, C, 1, x, xsc, 1, 0.0f, y, ysc, 1, nt));
        else
            for (int64_t n = 0; n < N; n++)
                SAL_TRY(sal_sgemm(O, HWo, C, 1.0f, w, C, 1, x + n * xsn, xsc, 1, 0.0f,
                                  y + n * ysn, ysc, 1, nt));
        conv_epilogue_pass(y, &ya, epi);
        return SAL_OK;
    }
    SAL_REQUIRE(scratch != NULL, "sal_conv_fwd", "scratch=NULL: needs %zu floats",
                sal_conv_scratch(d));
    const conv_algo algo = conv_choose(d, SAL_CONV_FORWARD);
    if (algo == ALGO_WINOGRAD) {   /* the epilogue fused */
        sal_wino_fwd(y, x, w, d, scratch, epi);
        return SAL_OK;
    }
    if (algo == ALGO_BLOCKED) {
        sal_dconv_fwd(y, x, w, d, scratch, epi);
        return SAL_OK;
    }
    if (algo == ALGO_DIRECT3X3) {
        sal_conv3x3_run(y, 0, x, d->x, O, w, 0, scratch, sal_conv3x3_threads(d));
        conv_epilogue_pass(y, &ya, epi);
        return SAL_OK;
    }
    const int64_t chunk = conv_chunk(d, &ya);
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
        const int64_t B = N - n0 < chunk ? N - n0 : chunk;
        im2col(scratch, x, d, &ya, n0, B);
        SAL_TRY(sal_sgemm(O, B * HWo, CKK, 1.0f, w, CKK, 1, scratch, B * HWo, 1, 0.0f,
                          y + n0 * ysn, ysc, 1, nt));
    }
    conv_epilogue_pass(y, &ya, epi);
    return SAL_OK;
}

static sal_status conv_bwd_run(float *dx, float *dw, const float *dy, const float *x,
                               const float *w, const sal_conv_desc *d, float *scratch,
                               int assign);

static sal_status conv_bwd_any(float *dx, float *dw, const float *dy, const float *x,
                               const float *w, const sal_conv_desc *d, float *scratch,
                               int assign) {
    sal_act ya;
    SAL_TRY(sal_conv_check(d, &ya));
    sal_conv_desc one;
    const sal_conv_desc *dd = conv_small(d, &ya, &one);
    const int serial = dd == d ? -1 : sal_serial_begin();
    const sal_status s = conv_bwd_run(dx, dw, dy, x, w, dd, scratch, assign);
    if (serial >= 0) sal_serial_end(serial);
    return s;
}

/* dx (N,C,H,W) += dL/dx, dw (O,C,K,K) += dL/dw, from dy (N,O,Ho,Wo); either may be NULL */
sal_status sal_conv_bwd(float *dx, float *dw, const float *dy, const float *x, const float *w,
                        const sal_conv_desc *d, float *scratch) {
    return conv_bwd_any(dx, dw, dy, x, w, d, scratch, 0);
}

/* the same with dx = dL/dx: written where the kernel writes every element once (Winograd,
 * the direct 3x3 kernel, the 1x1 GEMM), zeroed and then added to elsewhere */
sal_status sal_conv_bwd_assign(float *dx, float *dw, const float *dy, const float *x,
                               const float *w, const sal_conv_desc *d, float *scratch) {
    return conv_bwd_any(dx, dw, dy, x, w, d, scratch, dx != NULL);
}

static sal_status conv_bwd_run(float *dx, float *dw, const float *dy, const float *x,
                               const float *w, const sal_conv_desc *d, float *scratch,
                               int assign) {
    sal_act ya;
    SAL_TRY(sal_conv_check(d, &ya));
    const int nt = sal_threads();
    const int64_t N = d->x.n, C = d->x.c, O = d->o, CKK = C * d->k * d->k, HWo = ya.h * ya.w;
    const int64_t xsn = sal_act_sn(d->x), xsc = sal_act_sc(d->x);
    const int64_t ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);
    if (conv_is_pointwise(d)) {
        const int64_t nb = d->x.layout == SAL_CNHW ? 1 : N;     /* GEMMs */
        const int64_t cols = d->x.layout == SAL_CNHW ? N * HWo : HWo;
        for (int64_t n = 0; n < nb; n++) {
            const float *dyn = dy + n * ysn, *xn = x + n * xsn;
            if (dw)  /* dW (O, C) += dY (O, cols) X^T (cols, C) */
                SAL_TRY(sal_sgemm(O, C, cols, 1.0f, dyn, ysc, 1, xn, 1, xsc, 1.0f, dw, C, 1, nt));
            if (dx)  /* dX (C, cols) += (assign: =) W^T (C, O) dY (O, cols) */
                SAL_TRY(sal_sgemm(C, cols, O, 1.0f, w, 1, C, dyn, ysc, 1, assign ? 0.0f : 1.0f,
                                  dx + n * xsn, xsc, 1, nt));
        }
        return SAL_OK;
    }
    if (!dx && !dw) return SAL_OK;
    SAL_REQUIRE(scratch != NULL, "sal_conv_bwd", "scratch=NULL: needs %zu floats",
                sal_conv_scratch(d));
    const conv_algo adw = dw ? conv_choose(d, SAL_CONV_WEIGHT_GRAD) : ALGO_IM2COL;
    const conv_algo adx = dx ? conv_choose(d, SAL_CONV_INPUT_GRAD) : ALGO_IM2COL;
    const int t = sal_conv3x3_threads(d);
    if (assign && adx != ALGO_WINOGRAD && adx != ALGO_DIRECT3X3) {   /* these add: from 0 */
        memset(dx, 0, (size_t)(N * C * d->x.h * d->x.w) * sizeof(float));
        assign = 0;
    }
    if (dw && dx && adw == ALGO_WINOGRAD && adx == ALGO_WINOGRAD) {
        sal_wino_bwd(dx, dw, dy, x, w, d, scratch, !assign);   /* dy transposed once for both */
        return SAL_OK;
    }
    if (dw && adw == ALGO_WINOGRAD) sal_wino_bwd_weights(dw, dy, x, d, scratch);
    if (dw && adw == ALGO_DIRECT3X3) sal_conv3x3_wgrad(dw, dy, x, d->x, O, scratch, t);
    if (dx && adx == ALGO_WINOGRAD) sal_wino_bwd_data(dx, dy, w, d, scratch, !assign);
    if (dx && adx == ALGO_DIRECT3X3) sal_conv3x3_run(dx, !assign, dy, ya, C, w, 1, scratch, t);
    if (dw && adw == ALGO_BLOCKED && d->stride == 1) sal_dconv_stem_wgrad(dw, dy, x, d, scratch);
    if (dw && adw == ALGO_BLOCKED && d->stride == 2) sal_dconv_bwd_weights(dw, dy, x, d, scratch);
    if (dx && adx == ALGO_BLOCKED) sal_dconv_bwd_data(dx, dy, w, d, scratch);
    if (dw && adw != ALGO_IM2COL) dw = NULL;   /* done */
    if (dx && adx != ALGO_IM2COL) dx = NULL;
    const int64_t chunk = conv_chunk(d, &ya);
    for (int64_t n0 = 0; n0 < N && (dw || dx); n0 += chunk) {
        const int64_t B = N - n0 < chunk ? N - n0 : chunk, cols = B * HWo;
        const float *dyn = dy + n0 * ysn;
        if (dw) {  /* dW (O, CKK) += dY (O, cols) col^T (cols, CKK) */
            im2col(scratch, x, d, &ya, n0, B);
            SAL_TRY(sal_sgemm(O, CKK, cols, 1.0f, dyn, ysc, 1, scratch, 1, cols, 1.0f, dw, CKK, 1,
                              nt));
        }
        if (dx) {  /* dcol (CKK, cols) = W^T (CKK, O) dY (O, cols), then scatter-add */
            SAL_TRY(sal_sgemm(CKK, cols, O, 1.0f, w, 1, CKK, dyn, ysc, 1, 0.0f, scratch, cols, 1,
                              nt));
            col2im_add(dx, scratch, d, &ya, n0, B);
        }
    }
    return SAL_OK;
}
