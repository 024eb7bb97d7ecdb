/* Data: CIFAR and IDX parsers on byte buffers, seeded permutations, batch preparation.
 *
 * Parsers: every read is checked against nbytes before it happens and every write
 * against the output capacity; sizes are computed with overflow checks.  Nothing in
 * the buffer can make them read or write out of bounds.
 *
 * Randomness: a counter-based generator.  key = mix(seed, epoch[, sample]) and draw j
 * of that key is splitmix64's output function applied to key + (j+1)*golden, so any
 * draw can be computed alone, in any order, on any thread. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal/internal.h"
#include "sal/data.h"

/* ---- counter-based generator ------------------------------------------------- */

#define SAL_GOLDEN 0x9E3779B97F4A7C15ull

static inline uint64_t mix64(uint64_t z) { /* splitmix64 finaliser */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* distinct streams for distinct (seed, epoch, stream id, sample) */
static inline uint64_t rng_key(uint64_t seed, uint64_t epoch, uint64_t stream, uint64_t sample) {
    uint64_t k = mix64(seed + SAL_GOLDEN);
    k = mix64(k ^ (epoch + 0x632BE59BD9B4E019ull));
    k = mix64(k ^ (stream * SAL_GOLDEN + 0x8CB92BA72F3D8DD7ull));
    return mix64(k ^ (sample + 0xD1B54A32D192ED03ull));
}

static inline uint64_t rng_draw(uint64_t key, uint64_t j) { return mix64(key + (j + 1) * SAL_GOLDEN); }

enum { STREAM_PERMUTATION = 1, STREAM_AUGMENT = 2 };

/* ---- CIFAR ----------------------------------------------------------------------- */

static sal_status cifar_check_label_bytes(const char *fn, int label_bytes) {
    SAL_REQUIRE(label_bytes >= 1 && label_bytes <= SAL_CIFAR_MAX_LABELS, fn,
                "label_bytes=%d: must be in [1, %d] (CIFAR-10: 1, CIFAR-100: 2)", label_bytes,
                SAL_CIFAR_MAX_LABELS);
    return SAL_OK;
}

sal_status sal_cifar_count(size_t nbytes, int label_bytes, int64_t *n) {
    const char *fn = "sal_cifar_count";
    SAL_TRY(cifar_check_label_bytes(fn, label_bytes));
    SAL_REQUIRE(n != NULL, fn, "n=NULL: must point to an int64_t");
    const size_t rec = (size_t)label_bytes + SAL_CIFAR_PIXELS;
    if (nbytes == 0) return sal_fail(SAL_EFORMAT, fn, "empty (0 bytes): no records");
    if (nbytes % rec != 0)
        return sal_fail(SAL_EFORMAT, fn,
                        "size %zu bytes is not a multiple of the record size %zu "
                        "(%d label byte(s) + %d pixels): %zu whole records and %zu bytes "
                        "left over (truncated or not a CIFAR binary file)",
                        nbytes, rec, label_bytes, SAL_CIFAR_PIXELS, nbytes / rec, nbytes % rec);
    if (nbytes / rec > (size_t)INT64_MAX / rec)
        return sal_fail(SAL_EOVERFLOW, fn, "size %zu bytes: too many records", nbytes);
    *n = (int64_t)(nbytes / rec);
    return SAL_OK;
}

sal_status sal_cifar_parse(const uint8_t *buf, size_t nbytes, int label_bytes,
                           const int *num_classes, uint8_t *images, size_t images_cap,
                           int32_t *labels, size_t labels_cap) {
    const char *fn = "sal_cifar_parse";
    SAL_TRY(cifar_check_label_bytes(fn, label_bytes));
    SAL_REQUIRE(buf != NULL || nbytes == 0, fn, "buf=NULL with nbytes=%zu", nbytes);
    SAL_REQUIRE(num_classes != NULL, fn, "num_classes=NULL: needs %d value(s)", label_bytes);
    for (int k = 0; k < label_bytes; k++)
        SAL_REQUIRE(num_classes[k] >= 1 && num_classes[k] <= 256, fn,
                    "num_classes[%d]=%d: must be in [1, 256]", k, num_classes[k]);
    int64_t n = 0;
    sal_status s = sal_cifar_count(nbytes, label_bytes, &n);
    if (s != SAL_OK) return s;  /* message already names sal_cifar_count's rule */
    const size_t L = (size_t)label_bytes, rec = L + SAL_CIFAR_PIXELS, N = (size_t)n;
    /* N * rec == nbytes fits in size_t, so N * 3072 and N * L do as well */
    SAL_REQUIRE(images != NULL && images_cap >= N * SAL_CIFAR_PIXELS, fn,
                "images: capacity %zu: must hold N*3072 = %zu bytes (N=%zu)", images_cap,
                N * SAL_CIFAR_PIXELS, N);
    SAL_REQUIRE(labels != NULL && labels_cap >= N * L, fn,
                "labels: capacity %zu: must hold N*L = %zu values (N=%zu)", labels_cap, N * L, N);
    /* labels first (cheap, and a bad file fails before the big copy) */
    for (size_t i = 0; i < N; i++) {
        const uint8_t *r = buf + i * rec;
        for (size_t k = 0; k < L; k++) {
            if (r[k] >= num_classes[k])
                return sal_fail(SAL_EFORMAT, fn,
                                "record %zu (byte offset %zu): label byte %zu = %u: must be < %d "
                                "(corrupted, or not this dataset's format)",
                                i, i * rec + k, k, (unsigned)r[k], num_classes[k]);
            labels[i * L + k] = r[k];
        }
    }
    for (int64_t i = 0; i < n; i++)  /* serial: a memory-bound copy */
        memcpy(images + (size_t)i * SAL_CIFAR_PIXELS, buf + (size_t)i * rec + L, SAL_CIFAR_PIXELS);
    return SAL_OK;
}

/* ---- IDX ------------------------------------------------------------------------- */

static const char *idx_type_name(int t) {
    switch (t) {
    case 0x08: return "unsigned byte";
    case 0x09: return "signed byte";
    case 0x0B: return "int16";
    case 0x0C: return "int32";
    case 0x0D: return "float32";
    case 0x0E: return "float64";
    }
    return "unknown type";
}

static inline uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

sal_status sal_idx_header(const uint8_t *buf, size_t nbytes, sal_idx_info *info) {
    const char *fn = "sal_idx_header";
    SAL_REQUIRE(info != NULL, fn, "info=NULL: must point to a sal_idx_info");
    SAL_REQUIRE(buf != NULL || nbytes == 0, fn, "buf=NULL with nbytes=%zu", nbytes);
    memset(info, 0, sizeof *info);
    if (nbytes < 4)
        return sal_fail(SAL_EFORMAT, fn, "%zu bytes: too short for an IDX magic number (4 bytes)",
                        nbytes);
    const uint32_t magic = be32(buf);
    if (buf[0] != 0 || buf[1] != 0)
        return sal_fail(SAL_EFORMAT, fn,
                        "magic number 0x%08X: the first two bytes must be 0 (not an IDX file, or "
                        "still compressed)",
                        (unsigned)magic);
    const int type = buf[2], ndim = buf[3];
    if (type != 0x08)
        return sal_fail(SAL_EFORMAT, fn,
                        "magic number 0x%08X: data type 0x%02X (%s): only 0x08 (unsigned byte) "
                        "is supported",
                        (unsigned)magic, (unsigned)type, idx_type_name(type));
    if (ndim < 1 || ndim > SAL_IDX_MAX_DIMS)
        return sal_fail(SAL_EFORMAT, fn, "magic number 0x%08X: %d dimensions: must be in [1, %d]",
                        (unsigned)magic, ndim, SAL_IDX_MAX_DIMS);
    const size_t offset = 4 + 4 * (size_t)ndim;
    if (nbytes < offset)
        return sal_fail(SAL_EFORMAT, fn,
                        "%zu bytes: truncated header (%d dimensions need %zu header bytes)", nbytes,
                        ndim, offset);
    int64_t count = 1;
    for (int k = 0; k < ndim; k++) {
        const uint32_t dk = be32(buf + 4 + 4 * (size_t)k);
        if (dk == 0)
            return sal_fail(SAL_EFORMAT, fn, "size of dimension %d is 0: must be >= 1", k);
        info->dims[k] = dk;
        if (!sal_mul_ok(count, (int64_t)dk, &count) || count > ((int64_t)1 << 62))
            return sal_fail(SAL_EFORMAT, fn, "sizes overflow int64 at dimension %d (size %u)", k,
                            (unsigned)dk);
    }
    const size_t have = nbytes - offset;
    if ((uint64_t)count > (uint64_t)have)
        return sal_fail(SAL_EFORMAT, fn,
                        "truncated: the header announces %lld data bytes, the file has %zu after "
                        "the %zu-byte header",
                        (long long)count, have, offset);
    if ((uint64_t)count < (uint64_t)have)
        return sal_fail(SAL_EFORMAT, fn,
                        "%zu trailing bytes after the %lld data bytes the header announces",
                        have - (size_t)count, (long long)count);
    info->type = type;
    info->ndim = ndim;
    info->count = count;
    info->offset = offset;
    return SAL_OK;
}

sal_status sal_idx_parse_u8(const uint8_t *buf, size_t nbytes, sal_idx_info *info,
                            uint8_t *out, size_t out_cap) {
    SAL_TRY(sal_idx_header(buf, nbytes, info));
    SAL_REQUIRE(out != NULL && out_cap >= (size_t)info->count, "sal_idx_parse_u8",
                "out: capacity %zu: must hold %lld bytes", out_cap, (long long)info->count);
    memcpy(out, buf + info->offset, (size_t)info->count);
    return SAL_OK;
}

/* ---- shuffling ------------------------------------------------------------------- */

/* uniform in [0, range) for range >= 1 (Lemire's multiply-shift with rejection);
 * *j counts the draws consumed from key */
static inline uint64_t rng_below(uint64_t key, uint64_t *j, uint64_t range) {
    for (;;) {
        const __uint128_t m = (__uint128_t)rng_draw(key, (*j)++) * range;
        const uint64_t lo = (uint64_t)m;
        if (lo >= range || lo >= (0 - range) % range) return (uint64_t)(m >> 64);
    }
}

sal_status sal_permutation(int64_t *perm, int64_t n, uint64_t seed, uint64_t epoch) {
    const char *fn = "sal_permutation";
    SAL_REQUIRE(n >= 1, fn, "n=%lld: must be >= 1", (long long)n);
    SAL_REQUIRE(perm != NULL, fn, "perm=NULL: must hold n=%lld values", (long long)n);
    const uint64_t key = rng_key(seed, epoch, STREAM_PERMUTATION, 0);
    uint64_t j = 0;
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        const int64_t r = (int64_t)rng_below(key, &j, (uint64_t)i + 1);
        const int64_t t = perm[i];
        perm[i] = perm[r];
        perm[r] = t;
    }
    return SAL_OK;
}

/* ---- batch preparation ----------------------------------------------------------- */

#define SAL_BATCH_MAX_PAD 1024

static sal_status batch_check(const char *fn, const sal_batch_desc *d, int64_t b) {
    SAL_REQUIRE(d != NULL, fn, "desc=NULL: must point to a sal_batch_desc");
    SAL_REQUIRE(b >= 1, fn, "B=%lld: must be >= 1", (long long)b);
    SAL_TRY(sal_act_check(fn, "batch", (sal_act){b, d->c, d->h, d->w, d->layout}));
    SAL_REQUIRE(d->pad >= 0 && d->pad <= SAL_BATCH_MAX_PAD, fn, "pad=%lld: must be in [0, %d]",
                (long long)d->pad, SAL_BATCH_MAX_PAD);
    SAL_REQUIRE(d->flip == 0 || d->flip == 1, fn, "flip=%d: must be 0 or 1", d->flip);
    SAL_REQUIRE(d->mean != NULL && d->std != NULL, fn, "mean and std must point to C=%lld values",
                (long long)d->c);
    for (int64_t c = 0; c < d->c; c++) {
        SAL_REQUIRE(isfinite(d->mean[c]), fn, "mean[%lld]=%g: must be finite", (long long)c,
                    (double)d->mean[c]);
        SAL_REQUIRE(isfinite(d->std[c]) && d->std[c] > 0.0f, fn,
                    "std[%lld]=%g: must be finite and > 0", (long long)c, (double)d->std[c]);
    }
    return SAL_OK;
}

/* (dy, dx, flip) of one sample */
static inline void augment_draw(const sal_batch_desc *d, int64_t sample, int32_t a[3]) {
    const uint64_t key = rng_key(d->seed, d->epoch, STREAM_AUGMENT, (uint64_t)sample);
    uint64_t j = 0;
    const uint64_t range = 2 * (uint64_t)d->pad + 1;
    a[0] = (int32_t)rng_below(key, &j, range);
    a[1] = (int32_t)rng_below(key, &j, range);
    a[2] = d->flip ? (int32_t)(rng_draw(key, j) >> 63) : 0;
}

sal_status sal_batch_augment(int32_t *aug, const int64_t *index, int64_t b,
                             const sal_batch_desc *d) {
    const char *fn = "sal_batch_augment";
    SAL_TRY(batch_check(fn, d, b));
    SAL_REQUIRE(aug != NULL && index != NULL, fn, "aug and index must point to B=%lld rows",
                (long long)b);
    for (int64_t i = 0; i < b; i++) augment_draw(d, index[i], aug + 3 * i);
    return SAL_OK;
}

typedef struct {
    float *out;
    const uint8_t *images;
    const int64_t *index;
    const float *lut;
    const sal_batch_desc *d;
    int64_t C, H, W, P, osn, osc, isn, isc;
} batch_task;

/* batch images [i0, i1) */
static void batch_images(void *q, int64_t i0, int64_t i1, int tid) {
    const batch_task *bt = q;
    float *out = bt->out;
    const uint8_t *images = bt->images;
    const int64_t *index = bt->index;
    const float *lut = bt->lut;
    const sal_batch_desc *d = bt->d;
    const int64_t C = bt->C, H = bt->H, W = bt->W, P = bt->P;
    const int64_t osn = bt->osn, osc = bt->osc, isn = bt->isn, isc = bt->isc;
    for (int64_t i = i0; i < i1; i++) {
        int32_t a[3];
        augment_draw(d, index[i], a);
        const int64_t dy = a[0] - P, dx = a[1] - P;
        const int flip = a[2];
        /* valid output columns: source column sx = (flip ? W-1-x : x) + dx in [0, W);
         * both ends are clamped to [0, W]: with |dx| > W (pad > W) no column is valid,
         * and an unclamped lo ran the zero-fill loop past the end of the row */
        int64_t lo, hi;
        if (!flip) { lo = -dx; hi = W - dx; }
        else { lo = dx; hi = W + dx; }        /* W-1-x+dx in [0, W)  <=>  x in [dx, W+dx) */
        if (lo < 0) lo = 0;
        if (lo > W) lo = W;
        if (hi > W) hi = W;
        if (hi < lo) hi = lo;
        for (int64_t c = 0; c < C; c++) {
            const float *t = lut + c * 256;
            const uint8_t *src = images + index[i] * isn + c * isc;
            float *dst = out + i * osn + c * osc;
            for (int64_t y = 0; y < H; y++, dst += W) {
                const int64_t sy = y + dy;
                if (sy < 0 || sy >= H) {
                    for (int64_t x = 0; x < W; x++) dst[x] = t[0];
                    continue;
                }
                const uint8_t *row = src + sy * W;
                for (int64_t x = 0; x < lo; x++) dst[x] = t[0];
                if (!flip)
                    for (int64_t x = lo; x < hi; x++) dst[x] = t[row[x + dx]];
                else
                    for (int64_t x = lo; x < hi; x++) dst[x] = t[row[W - 1 - x + dx]];
                for (int64_t x = hi; x < W; x++) dst[x] = t[0];
            }
        }
    }
}

sal_status sal_make_batch(float *out, const uint8_t *images, int64_t n_images,
                          const int64_t *index, int64_t b, const sal_batch_desc *d) {
    const char *fn = "sal_make_batch";
    SAL_TRY(batch_check(fn, d, b));
    SAL_REQUIRE(n_images >= 1, fn, "n_images=%lld: must be >= 1", (long long)n_images);
    SAL_REQUIRE(out != NULL && images != NULL && index != NULL, fn,
                "out, images and index must not be NULL");
    int64_t tmp;
    SAL_TRY(sal_checked_prod(fn, "images (N, C, H, W)", &tmp, 4, n_images, d->c, d->h, d->w));
    for (int64_t i = 0; i < b; i++)
        SAL_REQUIRE(index[i] >= 0 && index[i] < n_images, fn,
                    "index[%lld]=%lld: must be in [0, n_images=%lld)", (long long)i,
                    (long long)index[i], (long long)n_images);
    const int64_t C = d->c, H = d->h, W = d->w, P = d->pad;
    /* lut[c][v] = (v/255 - mean[c]) / std[c]; the zero padding is lut[c][0] */
    float *lut = malloc((size_t)C * 256 * sizeof *lut);
    if (!lut) return sal_fail(SAL_ENOMEM, fn, "lookup table of C*256=%lld floats",
                              (long long)(C * 256));
    for (int64_t c = 0; c < C; c++)
        for (int v = 0; v < 256; v++)
            lut[c * 256 + v] = ((float)v / 255.0f - d->mean[c]) / d->std[c];
    const sal_act oa = {b, C, H, W, d->layout};
    const int64_t osn = sal_act_sn(oa), osc = sal_act_sc(oa), isn = C * H * W, isc = H * W;
    batch_task bt = {out, images, index, lut, d, C, H, W, P, osn, osc, isn, isc};
    sal_parallel_for(b, sal_threads(), batch_images, &bt);
    free(lut);
    return SAL_OK;
}
