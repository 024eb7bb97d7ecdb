/* Blocked direct convolution for K x K kernels (K = 1 or 3, padding K/2), stride 2:
 * forward, input gradient and weight gradient, either activation layout.  It runs the
 * stride-2 layers of a ResNet (3x3 and the 1x1 shortcuts' weight gradient).
 *
 * oneDNN's manner on our planes: for a block of images (or output rows), the input rows are
 * transposed once into the channel-interleaved domain (simd_common.inc); then each output
 * row is an implicit GEMM, TR positions x OR vectors of output channels held in registers,
 * summed over input channels and taps with one weight-vector load per OR FMAs and one
 * broadcast per position (dconv_isa.inc); the block is transposed back into the output
 * planes.  Borders are zeros of the interleaved rows, not branches.
 *
 * Input gradient with stride S: dx splits into S x S phases (row and column parities);
 * phase (p, q) is a stride-1 sum over the taps (ky, kx) with p + P - ky and q + P - kx
 * divisible by S, reading dy at row i + (p + P - ky)/S: the same implicit GEMM with dy
 * broadcast and the weights as vectors over input channels, written every S-th position.
 * Weight gradient: per tap, dW (O x C) += sum over positions of dy[o] x_tap[c], vectors
 * over input channels, per-thread partial sums added in thread order.
 *
 * The naive twin is the convolution reference (ref/conv_ref.c). */
#include <string.h>

#include "internal/conv_internal.h"
#include "internal/cpu.h"

typedef struct {
    int wl;
    void (*interleave)(float *dst, const float *src, int64_t sc, int nch, int64_t H, int64_t W,
                       int64_t y0, int64_t x0, int64_t nr, int64_t ncol);
    void (*deinterleave)(float *dst, int64_t sc, int nch, int64_t W, int64_t y0, int64_t x0,
                         const float *src, int64_t srow, int64_t nr, int64_t ncol, int acc);
    void (*epi_rows)(float *dst, int64_t sc, int nch, int64_t W, int64_t y0, int64_t x0,
                     int64_t nr, int64_t ncol, const float *bias, const float *res, int relu,
                     int res_post);
    void (*rows_moments)(double *part, const float *dst, int64_t sc, int nch, int64_t W,
                         int64_t y0, int64_t x0, int64_t nr, int64_t ncol);
    void (*row)(float *out, int64_t ogs, const float *in, int64_t igs, const float *wt,
                int64_t C, int nq, const int64_t *toff, const int *tix, int ntw, int64_t op,
                int64_t nx, int si, int so);
    void (*wblock)(float *dw, int64_t cp, int64_t op, const float *in, int64_t igs,
                   int64_t irow, const float *dy, int64_t dgs, int64_t drow, int64_t ny,
                   int64_t nx, int s, int nq, const int64_t *toff);
    void (*wstem)(float *part, const float *xp, int64_t xps, int64_t wp, int64_t C,
                  const float *dy, int64_t H, int64_t W);
} dconv_kernels;

#define SIMD_KERNELS "dconv_isa.inc"
#include "simd_isas.inc"

#ifdef SIMD_X86
static const dconv_kernels *const DCONV[SAL_ISA_COUNT] = {
    [SAL_ISA_BASE] = &kernels_base, [SAL_ISA_AVX2] = &kernels_avx2,
    [SAL_ISA_AVX512] = &kernels_avx512};
#else
static const dconv_kernels *const DCONV[SAL_ISA_COUNT] = {
    [SAL_ISA_BASE] = &kernels_base, [SAL_ISA_AVX2] = &kernels_base,
    [SAL_ISA_AVX512] = &kernels_base};
#endif

/* bytes of a block's interleaved buffers: half of a 1 MiB L2 */
#define DCONV_BLOCK_BYTES (512 * 1024)

enum { DC_FWD = 0, DC_BWD_DATA = 1, DC_BWD_WEIGHTS = 2 };

static int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
static int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

typedef struct {
    int64_t wl, n, h, w, ho, wo, k, s, p;
    int64_t cp, op;            /* C and O padded to wl */
    int64_t kimg, ky;          /* block: images, or output rows of one image */
    int64_t nblk;
    int64_t drmin, drmax;      /* input gradient: dy rows (and columns) i + dr it reads */
    /* per block (at most): interleaved input rows x cols, dy rows x cols, dx rows x cols */
    int64_t xr, xc, dyr, dyc, dxr, dxc;
    int64_t nin, nout, ndw, per, shared;   /* floats */
    int64_t nslot, umom;   /* forward: moment slots (blocks x images per block), and the float
                              offset of their partials in shared, after the weights */
    int nt;
} dplan;

static int dconv_threads(const sal_conv_desc *d) {
    return d->threads > 0 ? d->threads : sal_threads();
}

/* the plan of a pass at wl lanes for nt threads; false when a size passes 2^62 */
static bool dconv_plan(dplan *p, const sal_conv_desc *d, int pass, int64_t wl, int nt) {
    memset(p, 0, sizeof *p);
    /* sizes no network has (2^20 channels, 4M-pixel rows): not for these kernels, and no
     * product below can overflow */
    const int64_t big = (int64_t)1 << 20;
    if (d->x.c > big || d->o > big || d->x.h > 4 * big || d->x.w > 4 * big) return false;
    p->wl = wl;
    p->n = d->x.n;
    p->h = d->x.h;
    p->w = d->x.w;
    p->k = d->k;
    p->s = d->stride;
    p->p = d->pad;
    p->ho = (p->h + 2 * p->p - p->k) / p->s + 1;
    p->wo = (p->w + 2 * p->p - p->k) / p->s + 1;
    p->cp = round_up(d->x.c, wl);
    p->op = round_up(d->o, wl);
    const int64_t S = p->s, K = p->k, P = p->p;
    p->drmin = K;   /* over the taps of every phase: dr = (pr + P - ky) / S */
    p->drmax = -K;
    for (int64_t pr = 0; pr < S; pr++)
        for (int64_t ky = 0; ky < K; ky++)
            if ((pr + P - ky) % S == 0) {
                p->drmin = imin(p->drmin, (pr + P - ky) / S);
                p->drmax = imax(p->drmax, (pr + P - ky) / S);
            }
    /* floats per image of each buffer at ny output rows */
    const int64_t in_rows_per = S, in_cols = S * (p->wo - 1) + K;
    const int64_t per_row = imax(in_rows_per * in_cols * p->cp + p->wo * p->op,
                                 S * S * p->wo * p->cp + (p->wo + p->drmax - p->drmin) * p->op);
    int64_t rows = imax(1, DCONV_BLOCK_BYTES / 4 / imax(1, per_row));
    if (rows >= p->ho && p->n >= nt) {
        /* whole images, as many blocks as a multiple of the threads where that is possible */
        /* nb blocks of n/nb images (+1), nb a multiple of the threads where possible */
        const int64_t k = imax(1, rows / p->ho);
        const int64_t nb = imin(p->n, round_up((p->n + k - 1) / k, nt));
        p->kimg = (p->n + nb - 1) / nb;
        p->ky = p->ho;
        p->nblk = nb;
    } else {
        p->kimg = 1;
        p->ky = imin(p->ho, rows);
        if (p->n < nt) p->ky = imin(p->ky, imax(1, (p->ho + nt - 1) / nt));
        p->nblk = p->n * ((p->ho + p->ky - 1) / p->ky);
    }
    p->nt = (int)imin(nt, p->nblk);
    p->xr = S * (p->ky - 1) + K;
    p->xc = in_cols;
    p->dyr = p->ky + p->drmax - p->drmin;
    p->dyc = p->wo + p->drmax - p->drmin;
    p->dxr = S * p->ky;
    p->dxc = S * p->wo;
    typedef unsigned __int128 u128;
    const u128 r16 = 15, kimg = (u128)p->kimg;
    u128 nin, nout, ndw = 0;
    if (pass == DC_FWD) {
        nin = kimg * (u128)p->xr * (u128)p->xc * (u128)p->cp;
        nout = kimg * (u128)p->ky * (u128)p->wo * (u128)p->op;
    } else if (pass == DC_BWD_DATA) {
        nin = kimg * (u128)p->dyr * (u128)p->dyc * (u128)p->op;
        nout = kimg * (u128)p->dxr * (u128)p->dxc * (u128)p->cp;
    } else {
        nin = kimg * (u128)p->xr * (u128)p->xc * (u128)p->cp;
        nout = kimg * (u128)p->ky * (u128)p->wo * (u128)p->op;
        ndw = (u128)(K * K) * (u128)p->op * (u128)p->cp;
    }
    nin = (nin + r16) & ~r16;
    nout = (nout + r16) & ~r16;
    ndw = (ndw + r16) & ~r16;
    const u128 per = nin + nout + ndw;
    /* forward: the weights, then 3 doubles per slot and output channel (sal_conv_epi.moments) */
    p->nslot = p->nblk * p->kimg;
    const u128 nw = pass == DC_BWD_WEIGHTS ? 0 : (((u128)(K * K) * p->cp * p->op + r16) & ~r16);
    const u128 nmom = pass == DC_FWD ? ((6 * (u128)p->nslot * (u128)d->o + r16) & ~r16) : 0;
    const u128 shared = nw + nmom;
    const u128 lim = (u128)1 << 62;
    if (per > lim || shared + (u128)p->nt * per > lim) return false;
    p->nin = (int64_t)nin;
    p->nout = (int64_t)nout;
    p->ndw = (int64_t)ndw;
    p->per = (int64_t)per;
    p->shared = (int64_t)shared;
    p->umom = (int64_t)nw;
    return true;
}

/* block b: images [n0, n0 + ni), output rows [y0, y0 + ny) */
static void dconv_block(const dplan *p, int64_t b, int64_t *n0, int64_t *ni, int64_t *y0,
                        int64_t *ny) {
    if (p->ky == p->ho && p->nblk <= p->n) {   /* whole images */
        *n0 = (int64_t)((__int128)b * p->n / p->nblk);
        *ni = (int64_t)((__int128)(b + 1) * p->n / p->nblk) - *n0;
        *y0 = 0;
        *ny = p->ho;
        return;
    }
    const int64_t per = (p->ho + p->ky - 1) / p->ky;
    *n0 = b / per;
    *ni = 1;
    *y0 = b % per * p->ky;
    *ny = imin(p->ky, p->ho - *y0);
}

size_t sal_dconv_scratch(const sal_conv_desc *d) {
    const int nt = dconv_threads(d);
    size_t most = 0;
    for (int64_t wl = 4; wl <= 16; wl *= 2)
        for (int pass = 0; pass < 3; pass++) {
            dplan p;
            if (!dconv_plan(&p, d, pass, wl, nt)) return SIZE_MAX;
            const size_t s = (size_t)(p.shared + p.nt * p.per);
            if (s > most) most = s;
        }
    return most + 15;
}

/* stride 2 only: at stride 1 the direct 3x3 kernel and Winograd were measured faster (the
 * code is written for any stride S, phases and all) */
bool sal_dconv_applies(const sal_conv_desc *d) {
    return (d->k == 3 || d->k == 1) && d->pad == d->k / 2 && d->stride == 2 &&
           sal_dconv_scratch(d) != SIZE_MAX;
}

/* ---- weights --------------------------------------------------------------------------- */

typedef struct {
    float *wt;
    const float *w;
    int64_t c, o, kk, cp, op;
    int grad;
    int nt;   /* threads that reorder them */
} wt_task;

/* forward: wt[c][q][o] (o padded to op) = w[o][c][q]; input gradient: wt[o][q][c] (c padded
 * to cp) = w[o][c][q] */
static void dconv_weights(void *ctx, int64_t a0, int64_t a1, int tid) {
    const wt_task *t = ctx;
    for (int64_t a = a0; a < a1; a++)
        for (int64_t q = 0; q < t->kk; q++) {
            if (t->grad) {
                float *row = t->wt + (a * t->kk + q) * t->cp;
                for (int64_t c = 0; c < t->cp; c++)
                    row[c] = c < t->c ? t->w[(a * t->c + c) * t->kk + q] : 0.0f;
            } else {
                float *row = t->wt + (a * t->kk + q) * t->op;
                for (int64_t o = 0; o < t->op; o++)
                    row[o] = o < t->o ? t->w[(o * t->c + a) * t->kk + q] : 0.0f;
            }
        }
}

/* the forward's weights into dst (sal_wcache_fill_fn) */
static void dconv_weights_into(void *ctx, float *dst) {
    wt_task *t = ctx;
    t->wt = dst;
    sal_parallel_for(t->c, t->nt, dconv_weights, t);
}

/* ---- forward ------------------------------------------------------------------------------ */

typedef struct {
    const dconv_kernels *k;
    const dplan *p;
    float *out;
    const float *in, *wt;
    float *scratch;
    int64_t c, o, xsn, xsc, ysn, ysc;   /* channels and strides of x and y (dx and dy) */
    const sal_conv_epi *epi;            /* forward: the epilogue, or NULL */
    double *part;                       /* forward: the moment partials, or NULL */
} run_task;

static void dconv_fwd_blocks(void *ctx, int tid, int nt) {
    const run_task *t = ctx;
    const dplan *p = t->p;
    const dconv_kernels *k = t->k;
    const int64_t wl = p->wl, S = p->s, K = p->k, P = p->p;
    float *xi = t->scratch + tid * p->per, *yi = xi + p->nin;
    int64_t toff[9];
    int tix[9];
    int64_t b0, b1;
    sal_block(p->nblk, tid, nt, &b0, &b1);
    for (int64_t b = b0; b < b1; b++) {
        int64_t n0, ni, y0, ny;
        dconv_block(p, b, &n0, &ni, &y0, &ny);
        const int64_t xr = S * (ny - 1) + K, xc = p->xc, ximg = xr * xc * wl;
        const int64_t yimg = ny * p->wo * wl;
        for (int64_t cg = 0; cg < p->cp / wl; cg++) {
            const int nch = (int)imin(wl, t->c - cg * wl);
            for (int64_t i = 0; i < ni; i++)
                k->interleave(xi + (cg * ni + i) * ximg,
                              t->in + (n0 + i) * t->xsn + cg * wl * t->xsc, t->xsc, nch, p->h,
                              p->w, S * y0 - P, -P, xr, xc);
        }
        for (int q = 0; q < K * K; q++) {
            toff[q] = (q / K) * xc * wl + (q % K) * wl;
            tix[q] = q;
        }
        for (int64_t i = 0; i < ni; i++)
            for (int64_t y = 0; y < ny; y++)
                k->row(yi + i * yimg + y * p->wo * wl, ni * yimg, xi + i * ximg + S * y * xc * wl,
                       ni * ximg, t->wt, t->c, (int)(K * K), toff, tix, (int)(K * K), p->op, p->wo,
                       (int)S, 1);
        const sal_conv_epi *e = t->epi;
        for (int64_t og = 0; og < p->op / wl; og++) {
            const int nch = (int)imin(wl, t->o - og * wl);
            for (int64_t i = 0; i < ni; i++) {
                const int64_t off = (n0 + i) * t->ysn + og * wl * t->ysc;
                k->deinterleave(t->out + off, t->ysc, nch, p->wo, y0, 0,
                                yi + (og * ni + i) * yimg, p->wo * wl, ny, p->wo, 0);
                if (e)
                    k->epi_rows(t->out + off, t->ysc, nch, p->wo, y0, 0, ny, p->wo,
                                e->bias ? e->bias + og * wl : NULL, e->res ? e->res + off : NULL,
                                e->relu, e->res_post);
                if (t->part)   /* slot b * kimg + i: one image's part, written once */
                    k->rows_moments(t->part + 3 * ((b * p->kimg + i) * t->o + og * wl),
                                    t->out + off, t->ysc, nch, p->wo, y0, 0, ny, p->wo);
            }
        }
    }
}

void sal_dconv_fwd(float *y, const float *x, const float *w, const sal_conv_desc *d,
                   float *scratch, const sal_conv_epi *epi) {
    const int nt = dconv_threads(d);
    const dconv_kernels *k = DCONV[sal_cpu_isa()];
    dplan p;
    (void)dconv_plan(&p, d, DC_FWD, k->wl, nt);   /* true: sal_dconv_applies checked it */
    scratch = sal_align64(scratch);
    const sal_act ya = {d->x.n, d->o, p.ho, p.wo, d->x.layout};
    wt_task wt = {scratch, w, d->x.c, d->o, p.k * p.k, p.cp, p.op, 0, nt};
    const float *wp = NULL;
    sal_wcache_entry *pin = NULL;
    if (epi && epi->reuse) {
        const sal_wcache_key key = {SAL_WC_DCONV_FWD, k->wl, d->x.c, d->o, d->k};
        wp = sal_wcache_get(w, d->o * d->x.c * p.k * p.k, &key,
                            (size_t)(d->x.c * p.k * p.k * p.op), dconv_weights_into, &wt, &pin);
    }
    if (!wp) {
        dconv_weights_into(&wt, scratch);
        wp = scratch;
    }
    double *part = NULL;
    if (epi && epi->moments) {
        part = (double *)(void *)(scratch + p.umom);
        memset(part, 0, (size_t)(3 * p.nslot * d->o) * sizeof *part);
    }
    run_task rt = {k, &p, y, x, wp, scratch + p.shared, d->x.c, d->o, sal_act_sn(d->x),
                   sal_act_sc(d->x), sal_act_sn(ya), sal_act_sc(ya), epi, part};
    sal_parallel(p.nt, dconv_fwd_blocks, &rt);
    sal_wcache_release(pin);
    if (part) sal_moments_merge(epi->moments, part, p.nslot, d->o);
}

/* ---- input gradient ------------------------------------------------------------------------ */

static void dconv_dgrad_blocks(void *ctx, int tid, int nt) {
    const run_task *t = ctx;   /* in: dy (o channels), out: dx (c channels) */
    const dplan *p = t->p;
    const dconv_kernels *k = t->k;
    const int64_t wl = p->wl, S = p->s, K = p->k, P = p->p;
    float *dyi = t->scratch + tid * p->per, *dxi = dyi + p->nin;
    int64_t toff[9];
    int tix[9];
    int64_t b0, b1;
    sal_block(p->nblk, tid, nt, &b0, &b1);
    for (int64_t b = b0; b < b1; b++) {
        int64_t n0, ni, y0, ny;
        dconv_block(p, b, &n0, &ni, &y0, &ny);
        const int64_t dyr = ny + p->drmax - p->drmin, dyc = p->dyc, dyimg = dyr * dyc * wl;
        const int64_t dxr = S * ny, dxc = p->dxc, dximg = dxr * dxc * wl;
        for (int64_t og = 0; og < p->op / wl; og++) {
            const int nch = (int)imin(wl, t->o - og * wl);
            for (int64_t i = 0; i < ni; i++)
                k->interleave(dyi + (og * ni + i) * dyimg,
                              t->in + (n0 + i) * t->ysn + og * wl * t->ysc, t->ysc, nch, p->ho,
                              p->wo, y0 + p->drmin, p->drmin, dyr, dyc);
        }
        if (K < S)   /* 1x1, stride 2: only the even positions receive anything */
            memset(dxi, 0, (size_t)(p->cp / wl * ni * dximg) * sizeof(float));
        for (int64_t ph = 0; ph < S * S; ph++) {
            const int64_t pr = ph / S, pc = ph % S;
            int nq = 0;
            for (int64_t ky = 0; ky < K; ky++)
                for (int64_t kx = 0; kx < K; kx++) {
                    if ((pr + P - ky) % S || (pc + P - kx) % S) continue;
                    const int64_t dr = (pr + P - ky) / S - p->drmin;
                    const int64_t dc = (pc + P - kx) / S - p->drmin;
                    toff[nq] = dr * dyc * wl + dc * wl;
                    tix[nq++] = (int)(ky * K + kx);
                }
            if (!nq) continue;
            for (int64_t i = 0; i < ni; i++)
                for (int64_t r = 0; r < ny; r++)
                    k->row(dxi + i * dximg + ((S * r + pr) * dxc + pc) * wl, ni * dximg,
                           dyi + i * dyimg + r * dyc * wl, ni * dyimg, t->wt, t->o, nq, toff, tix,
                           (int)(K * K), p->cp, p->wo, 1, (int)S);
        }
        const int64_t nr = imin(dxr, p->h - S * y0), nc = imin(dxc, p->w);
        for (int64_t cg = 0; cg < p->cp / wl; cg++) {
            const int nch = (int)imin(wl, t->c - cg * wl);
            for (int64_t i = 0; i < ni; i++)
                k->deinterleave(t->out + (n0 + i) * t->xsn + cg * wl * t->xsc, t->xsc, nch, p->w,
                                S * y0, 0, dxi + (cg * ni + i) * dximg, dxc * wl, nr, nc, 1);
        }
    }
}

void sal_dconv_bwd_data(float *dx, const float *dy, const float *w, const sal_conv_desc *d,
                        float *scratch) {
    const int nt = dconv_threads(d);
    const dconv_kernels *k = DCONV[sal_cpu_isa()];
    dplan p;
    (void)dconv_plan(&p, d, DC_BWD_DATA, k->wl, nt);
    scratch = sal_align64(scratch);
    const sal_act ya = {d->x.n, d->o, p.ho, p.wo, d->x.layout};
    wt_task wt = {scratch, w, d->x.c, d->o, p.k * p.k, p.cp, p.op, 1, nt};
    sal_parallel_for(d->o, nt, dconv_weights, &wt);
    run_task rt = {k, &p, dx, dy, scratch, scratch + p.shared, d->x.c, d->o, sal_act_sn(d->x),
                   sal_act_sc(d->x), sal_act_sn(ya), sal_act_sc(ya), NULL, NULL};
    sal_parallel(p.nt, dconv_dgrad_blocks, &rt);
}

/* ---- weight gradient ----------------------------------------------------------------------- */

typedef struct {
    const dconv_kernels *k;
    const dplan *p;
    const float *x, *dy;
    float *scratch, *dw;
    int64_t c, o, sn, sc, ysn, ysc;
} wg_task;

static void dconv_wgrad_blocks(void *ctx, int tid, int nt) {
    const wg_task *t = ctx;
    const dplan *p = t->p;
    const dconv_kernels *k = t->k;
    const int64_t wl = p->wl, S = p->s, K = p->k, P = p->p;
    float *xi = t->scratch + tid * p->per, *dyi = xi + p->nin, *part = dyi + p->nout;
    memset(part, 0, (size_t)p->ndw * sizeof(float));
    int64_t toff[9];
    int64_t b0, b1;
    sal_block(p->nblk, tid, nt, &b0, &b1);
    for (int64_t b = b0; b < b1; b++) {
        int64_t n0, ni, y0, ny;
        dconv_block(p, b, &n0, &ni, &y0, &ny);
        const int64_t xr = S * (ny - 1) + K, xc = p->xc, ximg = xr * xc * wl;
        const int64_t dyimg = ny * p->wo * wl;
        for (int64_t cg = 0; cg < p->cp / wl; cg++) {
            const int nch = (int)imin(wl, t->c - cg * wl);
            for (int64_t i = 0; i < ni; i++)
                k->interleave(xi + (cg * ni + i) * ximg, t->x + (n0 + i) * t->sn + cg * wl * t->sc,
                              t->sc, nch, p->h, p->w, S * y0 - P, -P, xr, xc);
        }
        for (int64_t og = 0; og < p->op / wl; og++) {
            const int nch = (int)imin(wl, t->o - og * wl);
            for (int64_t i = 0; i < ni; i++)
                k->interleave(dyi + (og * ni + i) * dyimg,
                              t->dy + (n0 + i) * t->ysn + og * wl * t->ysc, t->ysc, nch, p->ho,
                              p->wo, y0, 0, ny, p->wo);
        }
        for (int q = 0; q < K * K; q++) toff[q] = (q / K) * xc * wl + (q % K) * wl;
        for (int64_t i = 0; i < ni; i++)
            k->wblock(part, p->cp, p->op, xi + i * ximg, ni * ximg, S * xc * wl, dyi + i * dyimg,
                      ni * dyimg, p->wo * wl, ny, p->wo, (int)S, (int)(K * K), toff);
    }
}

/* dw[o][c][q] += the sum over threads (in order) of part[q][o][c] */
static void dconv_wgrad_sum(void *ctx, int64_t o0, int64_t o1, int tid) {
    const wg_task *t = ctx;
    const dplan *p = t->p;
    const int64_t KK = p->k * p->k;
    for (int64_t o = o0; o < o1; o++)
        for (int64_t c = 0; c < t->c; c++)
            for (int64_t q = 0; q < KK; q++) {
                float s = 0.0f;
                for (int i = 0; i < p->nt; i++)
                    s += t->scratch[i * p->per + p->nin + p->nout + (q * p->op + o) * p->cp + c];
                t->dw[(o * t->c + c) * KK + q] += s;
            }
}

void sal_dconv_bwd_weights(float *dw, const float *dy, const float *x, const sal_conv_desc *d,
                           float *scratch) {
    const int nt = dconv_threads(d);
    const dconv_kernels *k = DCONV[sal_cpu_isa()];
    dplan p;
    (void)dconv_plan(&p, d, DC_BWD_WEIGHTS, k->wl, nt);
    scratch = sal_align64(scratch);
    const sal_act ya = {d->x.n, d->o, p.ho, p.wo, d->x.layout};
    wg_task gt = {k, &p, x, dy, scratch, dw, d->x.c, d->o, sal_act_sn(d->x), sal_act_sc(d->x),
                  sal_act_sn(ya), sal_act_sc(ya)};
    sal_parallel(p.nt, dconv_wgrad_blocks, &gt);
    sal_parallel_for(d->o, nt, dconv_wgrad_sum, &gt);
}

/* ---- the weight gradient of a stem: 3x3, stride 1, padding 1, few input channels ---------- */

/* channels up to which the stem kernel runs (a vector per output group and tap, summed over
 * every position: for many inputs the blocked or Winograd kernels reuse more) */
#define STEM_MAX_C 4

typedef struct {
    int64_t wl, op, wp, xps, per, nt, dyi;   /* dyi: floats of one interleaved dy group */
} splan;

static void stem_plan(splan *p, const sal_conv_desc *d, int64_t wl, int nt) {
    p->wl = wl;
    p->op = round_up(d->o, wl);
    p->wp = d->x.w + 2;
    p->xps = (d->x.h + 2) * p->wp;
    p->dyi = d->x.h * d->x.w * wl;
    /* per thread: the bordered planes, one interleaved dy group, the partial sums */
    p->per = round_up(d->x.c * p->xps, 16) + round_up(p->dyi, 16) + p->op * d->x.c * 9;
    p->nt = (int)imin(nt, d->x.n);
}

bool sal_dconv_stem_applies(const sal_conv_desc *d) {
    return d->k == 3 && d->stride == 1 && d->pad == 1 && d->x.c <= STEM_MAX_C &&
           d->o <= ((int64_t)1 << 20) && d->x.h <= ((int64_t)1 << 14) &&
           d->x.w <= ((int64_t)1 << 14);
}

size_t sal_dconv_stem_scratch(const sal_conv_desc *d) {
    const int nt = dconv_threads(d);
    size_t most = 0;
    for (int64_t wl = 4; wl <= 16; wl *= 2) {
        splan p;
        stem_plan(&p, d, wl, nt);
        if ((size_t)(p.nt * p.per) > most) most = (size_t)(p.nt * p.per);
    }
    return most + 15;
}

typedef struct {
    const dconv_kernels *k;
    const splan *p;
    const float *x, *dy;
    float *scratch, *dw;
    int64_t c, o, h, w, n, sn, sc, ysn, ysc;
} stem_task;

static void stem_images(void *ctx, int tid, int nt) {
    const stem_task *t = ctx;
    const splan *p = t->p;
    const int64_t wl = p->wl, C = t->c, H = t->h, W = t->w;
    float *xp = t->scratch + tid * p->per, *dyi = xp + round_up(C * p->xps, 16);
    float *part = dyi + round_up(p->dyi, 16);
    memset(xp, 0, (size_t)(C * p->xps) * sizeof(float));   /* the borders stay 0 */
    memset(part, 0, (size_t)(p->op * C * 9) * sizeof(float));
    int64_t n0, n1;
    sal_block(t->n, tid, nt, &n0, &n1);
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t c = 0; c < C; c++)
            for (int64_t y = 0; y < H; y++)
                memcpy(xp + c * p->xps + (y + 1) * p->wp + 1, t->x + n * t->sn + c * t->sc + y * W,
                       (size_t)W * sizeof(float));
        for (int64_t og = 0; og < p->op / wl; og++) {
            const int nch = (int)imin(wl, t->o - og * wl);
            t->k->interleave(dyi, t->dy + n * t->ysn + og * wl * t->ysc, t->ysc, nch, H, W, 0, 0,
                             H, W);
            t->k->wstem(part + og * C * 9 * wl, xp, p->xps, p->wp, C, dyi, H, W);
        }
    }
}

/* dw[o][c][q] += the sum over threads (in order) of part[o/wl][c][q][o%wl] */
static void stem_sum(void *ctx, int64_t o0, int64_t o1, int tid) {
    const stem_task *t = ctx;
    const splan *p = t->p;
    const int64_t wl = p->wl, C = t->c;
    for (int64_t o = o0; o < o1; o++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t q = 0; q < 9; q++) {
                const int64_t at = ((o / wl * C + c) * 9 + q) * wl + o % wl;
                const int64_t off = round_up(C * p->xps, 16) + round_up(p->dyi, 16) + at;
                float s = 0.0f;
                for (int i = 0; i < p->nt; i++) s += t->scratch[i * p->per + off];
                t->dw[(o * C + c) * 9 + q] += s;
            }
}

void sal_dconv_stem_wgrad(float *dw, const float *dy, const float *x, const sal_conv_desc *d,
                          float *scratch) {
    const int nt = dconv_threads(d);
    const dconv_kernels *k = DCONV[sal_cpu_isa()];
    splan p;
    stem_plan(&p, d, k->wl, nt);
    scratch = sal_align64(scratch);
    const sal_act ya = {d->x.n, d->o, d->x.h, d->x.w, d->x.layout};
    stem_task st = {k, &p, x, dy, scratch, dw, d->x.c, d->o, d->x.h, d->x.w, d->x.n,
                    sal_act_sn(d->x), sal_act_sc(d->x), sal_act_sn(ya), sal_act_sc(ya)};
    sal_parallel(p.nt, stem_images, &st);
    sal_parallel_for(d->o, nt, stem_sum, &st);
}
