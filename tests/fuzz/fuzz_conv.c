/* libFuzzer target: the convolution descriptor check (sal_conv_check) and, for valid
 * descriptors small enough to allocate, sal_conv_fwd / sal_conv_bwd against the naive
 * reference kernels.
 *
 * The input decodes to N, C, H, W, O, K, stride, pad (small, edge or raw 64-bit values)
 * and a layout (0/1 or raw).  Properties: no out-of-bounds access and no UB (signed
 * overflow included) in the check or the kernels; the check accepts exactly the
 * descriptors the header's rules allow (re-derived here in 128-bit arithmetic, so an
 * overflow in libsal's own size arithmetic shows as a disagreement); the output geometry
 * is (H + 2P - K) / S + 1; fast and reference kernels agree exactly (small-integer data,
 * so every sum is exact in float32), except a pass that runs Winograd F(4x4, 3x3), whose
 * transforms round (1/6, 1/24) and mix each output with its 4x4 tile's neighbours: there
 * |fast - ref| <= 1e-4 * max over the tensor of (the sum of |terms|: the reference run on
 * |x|, |w|, |dy|) + 1e-6 (measured: below 5e-6 * that max on random data). */
#include <math.h>
#include <string.h>

#include "fuzz_input.h"
#include "sal/sal.h"

#define BUDGET 4096  /* elements of x, w, y; the im2col scratch may be 16x that */

typedef __int128 i128;
static const i128 LIM = (i128)1 << 62;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    if (sal_init() != SAL_OK) { fprintf(stderr, "sal_init: %s\n", sal_last_error()); abort(); }
    sal_set_num_threads(1);
    return 0;
}

static float small_value(uint64_t k) { return (float)((int)(k % 5) - 2); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int initialised = 0;
    if (!initialised) { LLVMFuzzerInitialize(NULL, NULL); initialised = 1; }
    fuzz_in in = {data, size};
    sal_conv_desc d = {0};  /* threads = 0: the current thread count */
    d.x.n = fuzz_size(&in, 4);
    d.x.c = fuzz_size(&in, 5);
    d.x.h = fuzz_size(&in, 12);
    d.x.w = fuzz_size(&in, 12);
    d.o = fuzz_size(&in, 5);
    d.k = fuzz_size(&in, 6);
    d.stride = fuzz_size(&in, 4);
    d.pad = fuzz_size(&in, 5);
    const uint8_t lsel = fuzz_u8(&in);
    d.x.layout = (sal_layout)(lsel < 224 ? (lsel & 1) : (int)(int8_t)(lsel << 3));
    const uint64_t vseed = fuzz_u64(&in, 4);

    /* the rules, in 128-bit arithmetic */
    const i128 N = d.x.n, C = d.x.c, H = d.x.h, W = d.x.w, O = d.o, K = d.k, S = d.stride,
               P = d.pad;
    int ok = N >= 1 && C >= 1 && H >= 1 && W >= 1 && O >= 1 && K >= 1 && S >= 1 && P >= 0 &&
             (d.x.layout == SAL_NCHW || d.x.layout == SAL_CNHW) && N * C <= LIM &&
             N * C * H <= LIM && N * C * H * W <= LIM;
    i128 Ho = 0, Wo = 0;
    if (ok) {
        const i128 hp = H + 2 * P, wp = W + 2 * P;
        ok = hp <= LIM && wp <= LIM && hp >= K && wp >= K && O * C <= LIM && O * C * K <= LIM &&
             O * C * K * K <= LIM;
        if (ok) {
            Ho = (hp - K) / S + 1;
            Wo = (wp - K) / S + 1;
            ok = C * K * K * Ho <= LIM && C * K * K * Ho * Wo <= LIM && N * O <= LIM &&
                 N * O * Ho <= LIM && N * O * Ho * Wo <= LIM;
        }
    }
    sal_act y = {-1, -1, -1, -1, SAL_NCHW};
    sal_status s = sal_conv_check(&d, &y);
    FUZZ_ASSERT((s == SAL_OK) == ok,
                "check status %d, rules say %s: N=%lld C=%lld H=%lld W=%lld O=%lld K=%lld "
                "S=%lld P=%lld layout=%d: %s",
                (int)s, ok ? "valid" : "invalid", (long long)d.x.n, (long long)d.x.c,
                (long long)d.x.h, (long long)d.x.w, (long long)d.o, (long long)d.k,
                (long long)d.stride, (long long)d.pad, (int)d.x.layout, sal_last_error());
    if (s != SAL_OK) {
        FUZZ_ASSERT(s == SAL_EINVAL || s == SAL_EOVERFLOW, "status %d", (int)s);
        FUZZ_ASSERT(sal_last_error()[0] != '\0', "no message");
        return 0;
    }
    FUZZ_ASSERT(y.n == d.x.n && y.c == d.o && y.h == (int64_t)Ho && y.w == (int64_t)Wo &&
                    y.layout == d.x.layout,
                "output geometry (%lld, %lld, %lld, %lld)", (long long)y.n, (long long)y.c,
                (long long)y.h, (long long)y.w);

    /* run the kernels when the buffers fit the budget */
    const i128 nx = N * C * H * W, nw = O * C * K * K, ny = N * O * Ho * Wo;
    const size_t nscr = sal_conv_scratch(&d);
    if (nx > BUDGET || nw > BUDGET || ny > BUDGET || nscr > 16 * BUDGET) return 0;
    float *x = malloc((size_t)nx * sizeof *x), *w = malloc((size_t)nw * sizeof *w);
    float *yf = malloc((size_t)ny * sizeof *yf), *yr = malloc((size_t)ny * sizeof *yr);
    float *dy = malloc((size_t)ny * sizeof *dy);
    float *dxf = calloc((size_t)nx, sizeof *dxf), *dxr = calloc((size_t)nx, sizeof *dxr);
    float *dwf = calloc((size_t)nw, sizeof *dwf), *dwr = calloc((size_t)nw, sizeof *dwr);
    float *scr = nscr ? malloc(nscr * sizeof *scr) : NULL;
    for (i128 i = 0; i < nx; i++) x[i] = small_value((uint64_t)i * 7 + vseed);
    for (i128 i = 0; i < nw; i++) w[i] = small_value((uint64_t)i * 3 + (vseed >> 8));
    for (i128 i = 0; i < ny; i++) dy[i] = small_value((uint64_t)i * 11 + (vseed >> 16));
    /* the sums of |terms|: the reference on |x|, |w|, |dy| (Winograd's tolerance) */
    float *ax = malloc((size_t)nx * sizeof *ax), *aw = malloc((size_t)nw * sizeof *aw);
    float *ady = malloc((size_t)ny * sizeof *ady), *ay = malloc((size_t)ny * sizeof *ay);
    float *adx = calloc((size_t)nx, sizeof *adx), *adw = calloc((size_t)nw, sizeof *adw);
    for (i128 i = 0; i < nx; i++) ax[i] = fabsf(x[i]);
    for (i128 i = 0; i < nw; i++) aw[i] = fabsf(w[i]);
    for (i128 i = 0; i < ny; i++) ady[i] = fabsf(dy[i]);
    FUZZ_ASSERT(sal_ref_conv_fwd(ay, ax, aw, &d) == SAL_OK, "ref |fwd|: %s", sal_last_error());
    FUZZ_ASSERT(sal_ref_conv_bwd(adx, adw, ady, ax, aw, &d) == SAL_OK, "ref |bwd|: %s",
                sal_last_error());
    float my = 0.0f, mx = 0.0f, mw = 0.0f;   /* the largest sums of |terms| */
    for (i128 i = 0; i < ny; i++) my = fmaxf(my, ay[i]);
    for (i128 i = 0; i < nx; i++) mx = fmaxf(mx, adx[i]);
    for (i128 i = 0; i < nw; i++) mw = fmaxf(mw, adw[i]);
    const int wf = strcmp(sal_conv_algo(&d, SAL_CONV_FORWARD), "winograd4x4") == 0;
    const int wx = strcmp(sal_conv_algo(&d, SAL_CONV_INPUT_GRAD), "winograd4x4") == 0;
    const int ww = strcmp(sal_conv_algo(&d, SAL_CONV_WEIGHT_GRAD), "winograd4x4") == 0;
#define CLOSE(f, r, a, wino) ((wino) ? fabsf((f) - (r)) <= 1e-4f * (a) + 1e-6f : (f) == (r))
    s = sal_conv_fwd(yf, x, w, &d, scr);
    FUZZ_ASSERT(s == SAL_OK, "fwd: %s", sal_last_error());
    s = sal_ref_conv_fwd(yr, x, w, &d);
    FUZZ_ASSERT(s == SAL_OK, "ref fwd: %s", sal_last_error());
    for (i128 i = 0; i < ny; i++)
        FUZZ_ASSERT(CLOSE(yf[i], yr[i], my, wf), "y[%lld] = %g, reference %g (%s)",
                    (long long)i, (double)yf[i], (double)yr[i], sal_conv_algo(&d, 0));
    s = sal_conv_bwd(dxf, dwf, dy, x, w, &d, scr);
    FUZZ_ASSERT(s == SAL_OK, "bwd: %s", sal_last_error());
    s = sal_ref_conv_bwd(dxr, dwr, dy, x, w, &d);
    FUZZ_ASSERT(s == SAL_OK, "ref bwd: %s", sal_last_error());
    for (i128 i = 0; i < nx; i++)
        FUZZ_ASSERT(CLOSE(dxf[i], dxr[i], mx, wx), "dx[%lld] = %g, reference %g (%s)",
                    (long long)i, (double)dxf[i], (double)dxr[i], sal_conv_algo(&d, 1));
    for (i128 i = 0; i < nw; i++)
        FUZZ_ASSERT(CLOSE(dwf[i], dwr[i], mw, ww), "dw[%lld] = %g, reference %g (%s)",
                    (long long)i, (double)dwf[i], (double)dwr[i], sal_conv_algo(&d, 2));
#undef CLOSE
    free(x); free(w); free(yf); free(yr); free(dy);
    free(dxf); free(dxr); free(dwf); free(dwr); free(scr);
    free(ax); free(aw); free(ady); free(ay); free(adx); free(adw);
    return 0;
}
