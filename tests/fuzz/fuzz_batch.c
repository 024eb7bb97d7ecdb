/* libFuzzer target: sal_batch_augment and sal_make_batch with fuzzed descriptors.
 *
 * The input decodes to B, C, H, W, n_images, pad (small, edge or raw 64-bit values),
 * flip and layout (0/1 or raw), seed, epoch, mean/std (reasonable, or raw float bits:
 * NaN, inf, <= 0) and B index values (in range, n_images, negative, huge).
 *
 * Every buffer the contract asks for is allocated at its exact size (so ASan sees one
 * element too far); where the descriptor is invalid the harness passes 1-element
 * buffers, and the kernel must reject it before touching them.  Valid descriptors whose
 * buffers exceed a small budget are skipped (the harness cannot honour the contract).
 *
 * Properties: no out-of-bounds access or UB; the status is SAL_OK exactly when the
 * descriptor is valid (re-derived here from the header's rules); a SAL_OK batch equals
 * an independent naive implementation of the header's formula bit for bit, with the
 * (dy, dx, flip) that sal_batch_augment reports, which lie in [0, 2*pad] and {0, flip}. */
#include <math.h>

#include "fuzz_input.h"
#include "sal/sal.h"

#define BUDGET ((int64_t)1 << 16)  /* floats in out, bytes per image set / 4 */
#define MAX_C 4096

/* product of n factors >= 1 without passing 2^62 (libsal's size rule); 0 when it does */
static int64_t prod_ok(int n, const int64_t *f) {
    int64_t p = 1;
    for (int i = 0; i < n; i++) {
        if (f[i] < 1 || __builtin_mul_overflow(p, f[i], &p) || p > ((int64_t)1 << 62)) return 0;
    }
    return p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size};
    const int64_t b = fuzz_size(&in, 9), c = fuzz_size(&in, 5), h = fuzz_size(&in, 12),
                  w = fuzz_size(&in, 12), n_images = fuzz_size(&in, 6), pad = fuzz_size(&in, 8);
    const uint8_t fsel = fuzz_u8(&in), lsel = fuzz_u8(&in);
    const int flip = fsel < 224 ? (fsel & 1) : (int)(int8_t)(fsel << 3);
    const int layout = lsel < 224 ? (lsel & 1) : (int)(int8_t)(lsel << 3);
    const uint64_t seed = fuzz_u64(&in, 8), epoch = fuzz_u64(&in, 2);

    const int64_t dims[4] = {b, c, h, w};
    const int64_t numel = prod_ok(4, dims);        /* B*C*H*W, 0 when invalid */
    if (numel > BUDGET || (numel && c > MAX_C)) return 0;   /* valid but too big to honour */
    const int sizes_ok = numel > 0;
    const int64_t C = sizes_ok ? c : 1, B = sizes_ok ? b : 1;

    float *mean = malloc((size_t)C * sizeof *mean), *std = malloc((size_t)C * sizeof *std);
    int stats_ok = 1;
    for (int64_t k = 0; k < C; k++) {
        mean[k] = fuzz_float(&in);
        const uint8_t m = fuzz_u8(&in);
        std[k] = fuzz_float(&in);
        if (m & 1) std[k] = fabsf(std[k]) + 0.015625f;
        stats_ok &= isfinite(mean[k]) && isfinite(std[k]) && std[k] > 0.0f;
    }
    const int desc_ok = sizes_ok && pad >= 0 && pad <= 1024 && (flip == 0 || flip == 1) &&
                        (layout == 0 || layout == 1) && stats_ok;
    int64_t *index = malloc((size_t)B * sizeof *index);
    const int64_t nsmall = n_images >= 1 && n_images < 64 ? n_images + 1 : 7;
    for (int64_t i = 0; i < B; i++) index[i] = fuzz_size(&in, nsmall);

    sal_batch_desc d = {c, h, w, mean, std, pad, flip, seed, epoch, (sal_layout)layout};

    /* ---- sal_batch_augment: index values are not range-checked there */
    int32_t *aug = malloc((size_t)B * 3 * sizeof *aug);
    sal_status s = sal_batch_augment(aug, index, b, &d);
    FUZZ_ASSERT((s == SAL_OK) == desc_ok, "augment status %d, descriptor %s: %s", (int)s,
                desc_ok ? "valid" : "invalid", sal_last_error());
    if (s == SAL_OK)
        for (int64_t i = 0; i < B; i++)
            FUZZ_ASSERT(aug[3 * i] >= 0 && aug[3 * i] <= 2 * pad && aug[3 * i + 1] >= 0 &&
                            aug[3 * i + 1] <= 2 * pad && (aug[3 * i + 2] == 0 ||
                                                          (flip && aug[3 * i + 2] == 1)),
                        "aug[%lld] = (%d, %d, %d), pad %lld, flip %d", (long long)i, aug[3 * i],
                        aug[3 * i + 1], aug[3 * i + 2], (long long)pad, flip);
    else
        FUZZ_ASSERT(s == SAL_EINVAL || s == SAL_EOVERFLOW, "augment status %d", (int)s);

    /* ---- sal_make_batch */
    const int64_t idims[4] = {n_images, c, h, w};
    const int64_t img_n = prod_ok(4, idims);       /* 0: n_images or the product invalid */
    if (sizes_ok && img_n > 4 * BUDGET) goto done; /* valid but too big to honour */
    int index_ok = 1;
    for (int64_t i = 0; i < B; i++) index_ok &= index[i] >= 0 && index[i] < n_images;
    const int batch_ok = desc_ok && img_n > 0 && index_ok;
    /* a 1-byte stand-in when the sizes are invalid: the kernel must not read it */
    const size_t nimg = img_n > 0 && img_n <= 4 * BUDGET ? (size_t)img_n : 1;
    uint8_t *images = malloc(nimg);
    for (size_t k = 0; k < nimg; k++) images[k] = (uint8_t)(k * 131u + seed);
    float *out = malloc((size_t)(sizes_ok ? numel : 1) * sizeof *out);
    for (int64_t k = 0; k < (sizes_ok ? numel : 1); k++) out[k] = NAN;
    s = sal_make_batch(out, images, n_images, index, b, &d);
    FUZZ_ASSERT((s == SAL_OK) == batch_ok, "make_batch status %d, arguments %s: %s", (int)s,
                batch_ok ? "valid" : "invalid", sal_last_error());
    if (s == SAL_OK) {
        const int64_t H = h, W = w;
        for (int64_t i = 0; i < B; i++) {
            const int64_t dy = aug[3 * i] - pad, dx = aug[3 * i + 1] - pad;
            const int fl = aug[3 * i + 2];
            for (int64_t ch = 0; ch < C; ch++)
                for (int64_t y = 0; y < H; y++)
                    for (int64_t x = 0; x < W; x++) {
                        const int64_t sy = y + dy, sx = (fl ? W - 1 - x : x) + dx;
                        const uint8_t v = sy >= 0 && sy < H && sx >= 0 && sx < W
                                              ? images[((index[i] * C + ch) * H + sy) * W + sx]
                                              : 0;
                        const float want = ((float)v / 255.0f - mean[ch]) / std[ch];
                        const int64_t o = layout == SAL_NCHW ? ((i * C + ch) * H + y) * W + x
                                                             : ((ch * B + i) * H + y) * W + x;
                        FUZZ_ASSERT(out[o] == want, "out[b=%lld, c=%lld, y=%lld, x=%lld] = %g, "
                                    "want %g", (long long)i, (long long)ch, (long long)y,
                                    (long long)x, (double)out[o], (double)want);
                    }
        }
    } else {
        FUZZ_ASSERT(s == SAL_EINVAL || s == SAL_EOVERFLOW, "make_batch status %d", (int)s);
    }
    free(images);
    free(out);
done:
    free(aug);
    free(index);
    free(mean);
    free(std);
    return 0;
}
