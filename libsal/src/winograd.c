/* Winograd F(4x4, 3x3) convolution for 3x3 / stride 1 / padding 1: forward, input gradient
 * and weight gradient, in either activation layout (NCHW or CNHW).
 *
 * Each 4x4 output tile is A^T [ U (.) V ] A with V = B^T d B of its 6x6 input patch d and
 * U = G g G^T of each 3x3 kernel g; summed over input channels, the 36 elements are 36
 * independent products M[xi] (tiles x O) = V[xi] (tiles x C) . U[xi] (C x O): 4x fewer
 * multiplies than the direct convolution (36 per tile against 144), plus the transforms.
 *
 * The tiles are processed in blocks sized so that V and M stay in the L2 cache: for each
 * block, the input rows are transposed into a channel-interleaved buffer (WL channels per
 * vector), transformed into V, multiplied (register-blocked kernels, one vector load of U and
 * a broadcast of V per FMA group), and M is transformed back and transposed into the output
 * planes -- one pass over the block, not three passes over memory.  Tiles past the image
 * read zeros and their outputs are dropped, so any H and W work.
 *
 * Input gradient: the same convolution of dy with the kernel flipped in space and
 * transposed in channels.  Weight gradient: dU[xi] (O x C) = sum over tiles of
 * (A dY A^T)[xi] (.) V[xi], accumulated per thread over its blocks, then summed in thread
 * order and transformed back, dw += G^T dU G.
 *
 * Kernels per instruction set (winograd_isa.inc, one table indexed by sal_cpu_isa()).
 * The naive twin is ref/winograd_ref.c. */
#include <string.h>

#include "internal/conv_internal.h"
#include "internal/cpu.h"

typedef struct {
    int wl;
    void (*weights)(float *u, const float *w, int64_t ci, int64_t co, int64_t cip, int64_t cop,
                    int flip, int64_t a0, int64_t a1);
    void (*wback)(float *dw, const float *du, int np, int64_t pstride, int64_t C, int64_t cip,
                  int64_t cop, int64_t o0, int64_t o1);
    void (*interleave)(float *dst, const float *src, int64_t sc, int nch, int64_t H, int64_t W,
                       int64_t y0, int64_t x0, int64_t nr, int64_t ncol);
    void (*deinterleave)(float *dst, int64_t sc, int nch, int64_t W, int64_t y0, int64_t x0,
                         const float *src, int64_t srow, int64_t nr, int64_t ncol, int acc);
    void (*epi_rows)(float *dst, int64_t sc, int nch, int64_t W, int64_t y0, int64_t x0,
                     int64_t nr, int64_t ncol, const float *bias, const float *res, int relu,
                     int res_post);
    void (*rows_moments)(double *part, const float *dst, int64_t sc, int nch, int64_t W,
                         int64_t y0, int64_t x0, int64_t nr, int64_t ncol);
    void (*tf_in)(float *v, const float *xi, int64_t xrow, int64_t nty, int64_t ntx,
                  int64_t t0);
    void (*tf_out)(float *yi, int64_t yrow, const float *m, int64_t nty, int64_t ntx,
                   int64_t t0);
    void (*tf_dy)(float *dyt, const float *di, int64_t drow, int64_t nty, int64_t ntx,
                  int64_t t0);
    void (*gemm)(float *m, const float *v, const float *u, int64_t tp, int64_t C, int64_t cp,
                 int64_t op);
    void (*wgemm)(float *du, const float *v, const float *dyt, int64_t tp, int64_t cp,
                  int64_t op);
} wino_kernels;

#define SIMD_KERNELS "winograd_isa.inc"
#include "simd_isas.inc"

#ifdef SIMD_X86
static const wino_kernels *const WINO[SAL_ISA_COUNT] = {
    [SAL_ISA_BASE] = &kernels_base, [SAL_ISA_AVX2] = &kernels_avx2,
    [SAL_ISA_AVX512] = &kernels_avx512};
#else
static const wino_kernels *const WINO[SAL_ISA_COUNT] = {
    [SAL_ISA_BASE] = &kernels_base, [SAL_ISA_AVX2] = &kernels_base,
    [SAL_ISA_AVX512] = &kernels_base};
#endif

/* ---- plan: blocks of tiles and buffer sizes -------------------------------------------- */

/* bytes of V and M per block (the rest of a block's buffers is smaller): half of a 1 MiB L2 */
#define WINO_BLOCK_BYTES (512 * 1024)

/* passes; BOTH: the input and the weight gradient in one sweep over the blocks, dy
 * transposed once for both */
enum { WINO_FWD = 0, WINO_BWD_DATA = 1, WINO_BWD_WEIGHTS = 2, WINO_BWD_BOTH = 3 };

typedef struct {
    int64_t wl, n, h, w;
    int64_t ci, co, cip, cop;  /* channels of the pass's input and output, padded to wl */
    int64_t ty, tx;            /* tiles per image */
    int64_t kimg, kty, ktx;    /* block: images, tile rows, tile columns (at most) */
    int64_t nblk, tp;          /* blocks; tile slots per block (even) */
    int64_t nxi, nv, nm, nyi, ndu, per, shared;   /* floats */
    int64_t nslot, umom;       /* forward: moment slots (blocks x images per block), and the
                                  float offset of their partials in shared, after U */
    int64_t nv2, nm2;          /* BOTH: V of dy (cop channels), M of dx (cip channels) */
    int nt;                    /* threads that get blocks */
} wplan;

static int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
static int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

/* The plan of a pass at wl lanes for nt threads; false when a size passes 2^62. */
static bool wino_plan(wplan *p, const sal_conv_desc *d, int pass, int64_t wl, int nt) {
    memset(p, 0, sizeof *p);
    p->wl = wl;
    p->n = d->x.n;
    p->h = d->x.h;
    p->w = d->x.w;
    /* sizes no network has (2^20 channels, 4M-pixel rows): not for these kernels, and no
     * product below can overflow */
    const int64_t big = (int64_t)1 << 20;
    if (d->x.c > big || d->o > big || d->x.h > 4 * big || d->x.w > 4 * big) return false;
    p->ci = pass == WINO_BWD_DATA ? d->o : d->x.c;
    p->co = pass == WINO_BWD_DATA ? d->x.c : d->o;
    p->cip = round_up(p->ci, wl);
    p->cop = round_up(p->co, wl);
    p->ty = (p->h + 3) / 4;
    p->tx = (p->w + 3) / 4;
    const int64_t N = p->n, TY = p->ty, TX = p->tx;
    /* tiles per block: V and M of a block within the budget, at least 2 (BOTH holds two of
     * each: the same tiles per block measured faster than half as many) */
    int64_t tmax = WINO_BLOCK_BYTES / (36 * 4 * (p->cip + p->cop));
    tmax = imax(2, tmax);
    const int64_t per_img = TY * TX;
    int64_t nb_img = 0;
    if (per_img <= tmax && N >= nt) {
        /* whole images, nb_img blocks of N/nb_img images (+1), nb_img a multiple of the
         * threads where that is possible, so that they share the work evenly */
        const int64_t k = tmax / per_img;
        nb_img = imin(N, round_up((N + k - 1) / k, nt));
        p->kimg = (N + nb_img - 1) / nb_img;
        p->kty = TY;
        p->ktx = TX;
    } else if (TX <= tmax) {
        /* whole tile rows of one image; an image in at least nt pieces when N < nt */
        p->kimg = 1;
        p->ktx = TX;
        p->kty = imax(1, imin(TY, tmax / TX));
        if (N < nt) p->kty = imin(p->kty, imax(1, (TY + nt - 1) / nt));
    } else {
        p->kimg = 1;
        p->kty = 1;
        p->ktx = tmax;
    }
    const int64_t by = (TY + p->kty - 1) / p->kty, bx = (TX + p->ktx - 1) / p->ktx;
    p->nblk = nb_img ? nb_img : N * by * bx;
    p->tp = round_up(p->kimg * p->kty * p->ktx, 2);
    p->nt = (int)imin(nt, p->nblk);
    /* sizes in 128 bits: no product below can wrap */
    typedef unsigned __int128 u128;
    const u128 xr = 4 * (u128)p->kty + 2, xc = 4 * (u128)p->ktx + 2;
    const u128 nxi = xr * xc * (u128)wl;
    const u128 nv = 36 * (u128)p->tp * (u128)p->cip, nm = 36 * (u128)p->tp * (u128)p->cop;
    const u128 nyi = 16 * (u128)p->kty * (u128)p->ktx * (u128)wl;
    const bool wg = pass == WINO_BWD_WEIGHTS || pass == WINO_BWD_BOTH;
    const u128 ndu = wg ? 36 * (u128)p->cop * (u128)p->cip : 0;
    const u128 nv2 = pass == WINO_BWD_BOTH ? nm : 0, nm2 = pass == WINO_BWD_BOTH ? nv : 0;
    const u128 r16 = 15;
    const u128 per = ((nxi + r16) & ~r16) + ((nv + r16) & ~r16) + ((nm + r16) & ~r16) +
                     ((nyi + r16) & ~r16) + ((ndu + r16) & ~r16) + ((nv2 + r16) & ~r16) +
                     ((nm2 + r16) & ~r16);
    /* forward: U, then 3 doubles per slot and output channel (sal_conv_epi.moments) */
    p->nslot = p->nblk * p->kimg;
    const u128 nu = pass == WINO_BWD_WEIGHTS ? 0 : ((36 * (u128)p->cip * (u128)p->cop + r16) & ~r16);
    const u128 nmom = pass == WINO_FWD ? ((6 * (u128)p->nslot * (u128)p->co + r16) & ~r16) : 0;
    const u128 shared = nu + nmom;
    const u128 lim = (u128)1 << 62;
    if (per > lim || shared + (u128)p->nt * per > lim) return false;
    p->nxi = (int64_t)((nxi + r16) & ~r16);
    p->nv = (int64_t)((nv + r16) & ~r16);
    p->nm = (int64_t)((nm + r16) & ~r16);
    p->nyi = (int64_t)((nyi + r16) & ~r16);
    p->ndu = (int64_t)((ndu + r16) & ~r16);
    p->nv2 = (int64_t)((nv2 + r16) & ~r16);
    p->nm2 = (int64_t)((nm2 + r16) & ~r16);
    p->per = (int64_t)per;
    p->shared = (int64_t)shared;
    p->umom = (int64_t)nu;
    return true;
}

/* block b: images [n0, n0 + ni), tile rows [ty0, ty0 + nty), columns [tx0, tx0 + ntx) */
typedef struct {
    int64_t n0, ni, ty0, nty, tx0, ntx;
} wblock;

static wblock wino_block(const wplan *p, int64_t b) {
    wblock k;
    if (p->kty == p->ty && p->ktx == p->tx && p->nblk <= p->n) {   /* whole images */
        k.n0 = (int64_t)((__int128)b * p->n / p->nblk);
        k.ni = (int64_t)((__int128)(b + 1) * p->n / p->nblk) - k.n0;
        k.ty0 = k.tx0 = 0;
        k.nty = p->ty;
        k.ntx = p->tx;
        return k;
    }
    const int64_t by = (p->ty + p->kty - 1) / p->kty, bx = (p->tx + p->ktx - 1) / p->ktx;
    k.n0 = b / (by * bx);
    k.ni = 1;
    const int64_t r = b % (by * bx);
    k.ty0 = r / bx * p->kty;
    k.tx0 = r % bx * p->ktx;
    k.nty = imin(p->kty, p->ty - k.ty0);
    k.ntx = imin(p->ktx, p->tx - k.tx0);
    return k;
}

static int wino_threads(const sal_conv_desc *d) {
    return d->threads > 0 ? d->threads : sal_threads();
}

/* floats of scratch of the three passes at every ISA's vector width (+ 15 for the
 * alignment); SIZE_MAX when too big */
size_t sal_wino_scratch(const sal_conv_desc *d) {
    const int nt = wino_threads(d);
    size_t most = 0;
    for (int64_t wl = 4; wl <= 16; wl *= 2)
        for (int pass = 0; pass < 4; pass++) {
            wplan p;
            if (!wino_plan(&p, d, pass, wl, nt)) return SIZE_MAX;
            const size_t s = (size_t)(p.shared + p.nt * p.per);
            if (s > most) most = s;
        }
    return most + 15;
}

bool sal_wino_applies(const sal_conv_desc *d) {
    return d->k == 3 && d->stride == 1 && d->pad == 1 && sal_wino_scratch(d) != SIZE_MAX;
}

/* ---- weights ----------------------------------------------------------------------------- */

typedef struct {
    const wino_kernels *k;
    float *u;
    const float *w;
    const wplan *p;
    int64_t c;      /* C of the weights (O, C, 3, 3) */
    int flip;       /* input gradient: flipped kernel, channels transposed */
    float *dw;
    const float *du;
    int64_t ndu_stride;   /* floats between the threads' dU */
    int nparts;
    int nt;         /* threads that transform the weights */
} wts_task;

/* the transformed weights of rows [a0, a1) (sal_range_fn) */
static void wino_weights_rows(void *ctx, int64_t a0, int64_t a1, int tid) {
    const wts_task *t = ctx;
    const wplan *p = t->p;
    t->k->weights(t->u, t->w, p->ci, p->co, p->cip, p->cop, t->flip, a0, a1);
}

/* U (36, cip, cop) into dst (sal_wcache_fill_fn) */
static void wino_weights_into(void *ctx, float *dst) {
    wts_task *t = ctx;
    t->u = dst;
    sal_parallel_for(t->p->cip, t->nt, wino_weights_rows, t);
}

/* ---- forward and input gradient ------------------------------------------------------- */

typedef struct {
    const wino_kernels *k;
    const wplan *p;
    float *out;            /* y, or dx (accumulated) */
    const float *in;       /* x, or dy */
    const float *u;
    float *scratch;        /* per-thread buffers start here */
    int64_t isn, isc, osn, osc;
    int acc;
    const sal_conv_epi *epi;   /* forward: the epilogue, or NULL */
    double *part;              /* forward: the moment partials (epi->moments), or NULL */
} run_task;

static void wino_run_blocks(void *ctx, int tid, int nt) {
    const run_task *t = ctx;
    const wplan *p = t->p;
    const wino_kernels *k = t->k;
    const int64_t wl = p->wl, cip = p->cip, cop = p->cop, H = p->h, W = p->w;
    float *xi = t->scratch + tid * p->per, *v = xi + p->nxi, *m = v + p->nv, *yi = m + p->nm;
    int64_t b0, b1;
    sal_block(p->nblk, tid, nt, &b0, &b1);
    for (int64_t b = b0; b < b1; b++) {
        const wblock bk = wino_block(p, b);
        const int64_t per_img = bk.nty * bk.ntx, T = bk.ni * per_img;
        const int64_t xrow = (4 * bk.ntx + 2) * wl, yrow = 4 * bk.ntx * wl;
        for (int64_t cg = 0; cg < cip / wl; cg++) {
            const int nch = (int)imin(wl, p->ci - cg * wl);
            for (int64_t i = 0; i < bk.ni; i++) {
                k->interleave(xi, t->in + (bk.n0 + i) * t->isn + cg * wl * t->isc, t->isc, nch, H,
                              W, 4 * bk.ty0 - 1, 4 * bk.tx0 - 1, 4 * bk.nty + 2, 4 * bk.ntx + 2);
                k->tf_in(v + cg * p->tp * 36 * wl, xi, xrow, bk.nty, bk.ntx, i * per_img);
            }
        }
        if (T < p->tp)   /* the padding tiles read zeros */
            for (int64_t cg = 0; cg < cip / wl; cg++)
                memset(v + (cg * p->tp + T) * 36 * wl, 0,
                       (size_t)((p->tp - T) * 36 * wl) * sizeof(float));
        k->gemm(m, v, t->u, p->tp, p->ci, cip, cop);
        const int64_t nr = imin(4 * bk.nty, H - 4 * bk.ty0), nc = imin(4 * bk.ntx, W - 4 * bk.tx0);
        const sal_conv_epi *e = t->epi;
        for (int64_t og = 0; og < cop / wl; og++) {
            const int nch = (int)imin(wl, p->co - og * wl);
            for (int64_t i = 0; i < bk.ni; i++) {
                k->tf_out(yi, yrow, m + og * p->tp * 36 * wl, bk.nty, bk.ntx, i * per_img);
                const int64_t off = (bk.n0 + i) * t->osn + og * wl * t->osc;
                k->deinterleave(t->out + off, t->osc, nch, W, 4 * bk.ty0, 4 * bk.tx0, yi, yrow,
                                nr, nc, t->acc);
                if (e)
                    k->epi_rows(t->out + off, t->osc, nch, W, 4 * bk.ty0, 4 * bk.tx0, nr, nc,
                                e->bias ? e->bias + og * wl : NULL, e->res ? e->res + off : NULL,
                                e->relu, e->res_post);
                if (t->part)   /* slot b * kimg + i: one image's part, written once */
                    k->rows_moments(t->part + 3 * ((b * p->kimg + i) * p->co + og * wl),
                                    t->out + off, t->osc, nch, W, 4 * bk.ty0, 4 * bk.tx0, nr,
                                    nc);
            }
        }
    }
}

/* out = (acc: +=) conv3x3(in) for the pass (forward, or input gradient with dy as input);
 * the forward's epilogue and weights cache: epi (or NULL) */
static void wino_conv(float *out, const float *in, const float *w, const sal_conv_desc *d,
                      float *scratch, int pass, const sal_conv_epi *epi, int acc) {
    const int nt = wino_threads(d);
    const wino_kernels *k = WINO[sal_cpu_isa()];
    wplan p;
    (void)wino_plan(&p, d, pass, k->wl, nt);   /* true: sal_wino_applies checked it */
    scratch = sal_align64(scratch);
    const sal_act xa = d->x, ya = {d->x.n, d->o, d->x.h, d->x.w, d->x.layout};
    const sal_act ia = pass == WINO_BWD_DATA ? ya : xa, oa = pass == WINO_BWD_DATA ? xa : ya;
    wts_task wt = {k, scratch, w, &p, d->x.c, pass == WINO_BWD_DATA, NULL, NULL, 0, 0, nt};
    const float *u = NULL;
    sal_wcache_entry *pin = NULL;
    if (epi && epi->reuse && pass == WINO_FWD) {
        const sal_wcache_key key = {SAL_WC_WINO_FWD, k->wl, d->x.c, d->o, 3};
        u = sal_wcache_get(w, d->o * d->x.c * 9, &key, (size_t)(36 * p.cip * p.cop),
                           wino_weights_into, &wt, &pin);
    }
    if (!u) {
        wino_weights_into(&wt, scratch);
        u = scratch;
    }
    double *part = NULL;
    if (pass == WINO_FWD && epi && epi->moments) {
        part = (double *)(void *)(scratch + p.umom);
        memset(part, 0, (size_t)(3 * p.nslot * p.co) * sizeof *part);
    }
    run_task rt = {k, &p, out, in, u, scratch + p.shared, sal_act_sn(ia), sal_act_sc(ia),
                   sal_act_sn(oa), sal_act_sc(oa), acc, pass == WINO_FWD ? epi : NULL, part};
    sal_parallel(p.nt, wino_run_blocks, &rt);
    sal_wcache_release(pin);
    if (part) sal_moments_merge(epi->moments, part, p.nslot, p.co);
}

void sal_wino_fwd(float *y, const float *x, const float *w, const sal_conv_desc *d,
                  float *scratch, const sal_conv_epi *epi) {
    wino_conv(y, x, w, d, scratch, WINO_FWD, epi, 0);
}

void sal_wino_bwd_data(float *dx, const float *dy, const float *w, const sal_conv_desc *d,
                       float *scratch, int acc) {
    wino_conv(dx, dy, w, d, scratch, WINO_BWD_DATA, NULL, acc);
}

/* ---- weight gradient --------------------------------------------------------------------- */

typedef struct {
    const wino_kernels *k;
    const wplan *p;
    const float *x, *dy;
    float *scratch;
    int64_t sn, sc, ysn, ysc;
} wg_task;

static void wino_wgrad_blocks(void *ctx, int tid, int nt) {
    const wg_task *t = ctx;
    const wplan *p = t->p;
    const wino_kernels *k = t->k;
    const int64_t wl = p->wl, cip = p->cip, cop = p->cop, H = p->h, W = p->w;
    float *xi = t->scratch + tid * p->per, *v = xi + p->nxi, *dyt = v + p->nv, *di = dyt + p->nm;
    float *du = di + p->nyi;
    memset(du, 0, (size_t)p->ndu * sizeof(float));
    int64_t b0, b1;
    sal_block(p->nblk, tid, nt, &b0, &b1);
    for (int64_t b = b0; b < b1; b++) {
        const wblock bk = wino_block(p, b);
        const int64_t per_img = bk.nty * bk.ntx, T = bk.ni * per_img;
        const int64_t xrow = (4 * bk.ntx + 2) * wl, drow = 4 * bk.ntx * wl;
        for (int64_t cg = 0; cg < cip / wl; cg++) {
            const int nch = (int)imin(wl, p->ci - cg * wl);
            for (int64_t i = 0; i < bk.ni; i++) {
                k->interleave(xi, t->x + (bk.n0 + i) * t->sn + cg * wl * t->sc, t->sc, nch, H, W,
                              4 * bk.ty0 - 1, 4 * bk.tx0 - 1, 4 * bk.nty + 2, 4 * bk.ntx + 2);
                k->tf_in(v + cg * p->tp * 36 * wl, xi, xrow, bk.nty, bk.ntx, i * per_img);
            }
        }
        for (int64_t og = 0; og < cop / wl; og++) {
            const int nch = (int)imin(wl, p->co - og * wl);
            for (int64_t i = 0; i < bk.ni; i++) {
                k->interleave(di, t->dy + (bk.n0 + i) * t->ysn + og * wl * t->ysc, t->ysc, nch, H,
                              W, 4 * bk.ty0, 4 * bk.tx0, 4 * bk.nty, 4 * bk.ntx);
                k->tf_dy(dyt + og * p->tp * 36 * wl, di, drow, bk.nty, bk.ntx, i * per_img);
            }
        }
        if (T < p->tp) {  /* the padding tiles add nothing */
            const size_t pad = (size_t)((p->tp - T) * 36 * wl) * sizeof(float);
            for (int64_t cg = 0; cg < cip / wl; cg++)
                memset(v + (cg * p->tp + T) * 36 * wl, 0, pad);
            for (int64_t og = 0; og < cop / wl; og++)
                memset(dyt + (og * p->tp + T) * 36 * wl, 0, pad);
        }
        k->wgemm(du, v, dyt, p->tp, cip, cop);
    }
}

/* dw[o][c] += G^T (sum over threads of dU[.][o][c]) G, threads summed in order */
static void wino_wgrad_finish(void *ctx, int64_t o0, int64_t o1, int tid) {
    const wts_task *t = ctx;
    const wplan *p = t->p;
    t->k->wback(t->dw, t->du, t->nparts, t->ndu_stride, p->ci, p->cip, p->cop, o0, o1);
}

void sal_wino_bwd_weights(float *dw, const float *dy, const float *x, const sal_conv_desc *d,
                          float *scratch) {
    const int nt = wino_threads(d);
    const wino_kernels *k = WINO[sal_cpu_isa()];
    wplan p;
    (void)wino_plan(&p, d, WINO_BWD_WEIGHTS, k->wl, nt);
    scratch = sal_align64(scratch);
    const sal_act ya = {d->x.n, d->o, d->x.h, d->x.w, d->x.layout};
    wg_task gt = {k, &p, x, dy, scratch, sal_act_sn(d->x), sal_act_sc(d->x), sal_act_sn(ya),
                  sal_act_sc(ya)};
    sal_parallel(p.nt, wino_wgrad_blocks, &gt);
    const float *du0 = scratch + p.nxi + p.nv + p.nm + p.nyi;
    wts_task ft = {k, NULL, NULL, &p, d->x.c, 0, dw, du0, p.per, p.nt, nt};
    sal_parallel_for(d->o, nt, wino_wgrad_finish, &ft);
}

/* ---- both gradients in one sweep ----------------------------------------------------------- */

typedef struct {
    const wino_kernels *k;
    const wplan *p;
    float *dx;
    const float *x, *dy, *u;
    float *scratch;
    int64_t sn, sc, ysn, ysc;
    int acc;               /* dx += (1) or = (0) */
} both_task;

static void wino_both_blocks(void *ctx, int tid, int nt) {
    const both_task *t = ctx;
    const wplan *p = t->p;
    const wino_kernels *k = t->k;
    const int64_t wl = p->wl, cip = p->cip, cop = p->cop, H = p->h, W = p->w;
    float *xi = t->scratch + tid * p->per, *vx = xi + p->nxi, *dyt = vx + p->nv;
    float *yi = dyt + p->nm, *du = yi + p->nyi, *vdy = du + p->ndu, *mdx = vdy + p->nv2;
    memset(du, 0, (size_t)p->ndu * sizeof(float));
    int64_t b0, b1;
    sal_block(p->nblk, tid, nt, &b0, &b1);
    for (int64_t b = b0; b < b1; b++) {
        const wblock bk = wino_block(p, b);
        const int64_t per_img = bk.nty * bk.ntx, T = bk.ni * per_img;
        const int64_t xrow = (4 * bk.ntx + 2) * wl, yrow = 4 * bk.ntx * wl;
        /* dy, bordered as an input: B^T dy B for the input gradient, and A dy A^T from the
         * same rows without the border for the weight gradient */
        for (int64_t og = 0; og < cop / wl; og++) {
            const int nch = (int)imin(wl, p->co - og * wl);
            for (int64_t i = 0; i < bk.ni; i++) {
                k->interleave(xi, t->dy + (bk.n0 + i) * t->ysn + og * wl * t->ysc, t->ysc, nch, H,
                              W, 4 * bk.ty0 - 1, 4 * bk.tx0 - 1, 4 * bk.nty + 2, 4 * bk.ntx + 2);
                k->tf_in(vdy + og * p->tp * 36 * wl, xi, xrow, bk.nty, bk.ntx, i * per_img);
                k->tf_dy(dyt + og * p->tp * 36 * wl, xi + xrow + wl, xrow, bk.nty, bk.ntx,
                         i * per_img);
            }
        }
        for (int64_t cg = 0; cg < cip / wl; cg++) {
            const int nch = (int)imin(wl, p->ci - cg * wl);
            for (int64_t i = 0; i < bk.ni; i++) {
                k->interleave(xi, t->x + (bk.n0 + i) * t->sn + cg * wl * t->sc, t->sc, nch, H, W,
                              4 * bk.ty0 - 1, 4 * bk.tx0 - 1, 4 * bk.nty + 2, 4 * bk.ntx + 2);
                k->tf_in(vx + cg * p->tp * 36 * wl, xi, xrow, bk.nty, bk.ntx, i * per_img);
            }
        }
        if (T < p->tp) {  /* the padding tiles read zeros and add nothing */
            const size_t pad = (size_t)((p->tp - T) * 36 * wl) * sizeof(float);
            for (int64_t cg = 0; cg < cip / wl; cg++)
                memset(vx + (cg * p->tp + T) * 36 * wl, 0, pad);
            for (int64_t og = 0; og < cop / wl; og++) {
                memset(dyt + (og * p->tp + T) * 36 * wl, 0, pad);
                memset(vdy + (og * p->tp + T) * 36 * wl, 0, pad);
            }
        }
        k->wgemm(du, vx, dyt, p->tp, cip, cop);
        k->gemm(mdx, vdy, t->u, p->tp, p->co, cop, cip);
        const int64_t nr = imin(4 * bk.nty, H - 4 * bk.ty0), nc = imin(4 * bk.ntx, W - 4 * bk.tx0);
        for (int64_t cg = 0; cg < cip / wl; cg++) {
            const int nch = (int)imin(wl, p->ci - cg * wl);
            for (int64_t i = 0; i < bk.ni; i++) {
                k->tf_out(yi, yrow, mdx + cg * p->tp * 36 * wl, bk.nty, bk.ntx, i * per_img);
                k->deinterleave(t->dx + (bk.n0 + i) * t->sn + cg * wl * t->sc, t->sc, nch, W,
                                4 * bk.ty0, 4 * bk.tx0, yi, yrow, nr, nc, t->acc);
            }
        }
    }
}

void sal_wino_bwd(float *dx, float *dw, const float *dy, const float *x, const float *w,
                  const sal_conv_desc *d, float *scratch, int acc) {
    const int nt = wino_threads(d);
    const wino_kernels *k = WINO[sal_cpu_isa()];
    wplan p;
    (void)wino_plan(&p, d, WINO_BWD_BOTH, k->wl, nt);
    scratch = sal_align64(scratch);
    /* the input gradient's weights: from dy's O channels (rows, cop) to x's C (cip) */
    wplan pu = p;
    pu.ci = p.co;
    pu.co = p.ci;
    pu.cip = p.cop;
    pu.cop = p.cip;
    wts_task wt = {k, scratch, w, &pu, d->x.c, 1, NULL, NULL, 0, 0, nt};
    sal_parallel_for(pu.cip, nt, wino_weights_rows, &wt);
    const sal_act ya = {d->x.n, d->o, d->x.h, d->x.w, d->x.layout};
    both_task bt = {k, &p, dx, x, dy, scratch, scratch + p.shared, sal_act_sn(d->x),
                    sal_act_sc(d->x), sal_act_sn(ya), sal_act_sc(ya), acc};
    sal_parallel(p.nt, wino_both_blocks, &bt);
    const float *du0 = scratch + p.shared + p.nxi + p.nv + p.nm + p.nyi;
    wts_task ft = {k, NULL, NULL, &p, d->x.c, 0, dw, du0, p.per, p.nt, nt};
    sal_parallel_for(d->o, nt, wino_wgrad_finish, &ft);
}
