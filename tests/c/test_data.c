/* Data parsers on synthetic buffers (well-formed and malformed, every truncation
 * length), permutations, and the batch kernel against a naive reimplementation.
 * Buffers are malloc'ed at their exact size so ASan catches any read past the end. */
#include <string.h>

#include "check.h"
#include "sal/sal.h"

/* exact-size heap copy, so an over-read is a heap-buffer-overflow under ASan */
static uint8_t *dup_exact(const uint8_t *p, size_t n) {
    uint8_t *q = malloc(n ? n : 1);
    if (n) memcpy(q, p, n);
    return q;
}

static void test_cifar(void) {
    const int n = 3, nc10[1] = {10}, nc100[2] = {20, 100};
    const size_t rec1 = 1 + SAL_CIFAR_PIXELS, rec2 = 2 + SAL_CIFAR_PIXELS;
    uint8_t *buf = malloc(n * rec2);
    for (int i = 0; i < n; i++) {
        buf[i * rec1] = (uint8_t)(7 + i) % 10;
        for (int p = 0; p < SAL_CIFAR_PIXELS; p++) buf[i * rec1 + 1 + p] = (uint8_t)(p * 7 + i);
    }
    uint8_t *img = malloc(n * SAL_CIFAR_PIXELS);
    int32_t lab[2 * 3];
    int64_t cnt = -1;
    CHECK(sal_cifar_count(n * rec1, 1, &cnt) == SAL_OK && cnt == n, "count %lld", (long long)cnt);
    CHECK(sal_cifar_parse(buf, n * rec1, 1, nc10, img, n * SAL_CIFAR_PIXELS, lab, n) == SAL_OK,
          "cifar10 parse: %s", sal_last_error());
    for (int i = 0; i < n; i++) {
        CHECK(lab[i] == (7 + i) % 10, "label %d = %d", i, lab[i]);
        CHECK(img[i * SAL_CIFAR_PIXELS + 1000] == (uint8_t)(1000 * 7 + i), "pixel of image %d", i);
    }
    /* every length from 0 to 2 records + 1: OK exactly at multiples, EFORMAT elsewhere */
    for (size_t len = 0; len <= 2 * rec1 + 1; len++) {
        uint8_t *b = dup_exact(buf, len);
        sal_status s = sal_cifar_parse(b, len, 1, nc10, img, n * SAL_CIFAR_PIXELS, lab, n);
        int whole = len > 0 && len % rec1 == 0;
        CHECK(whole ? s == SAL_OK : s == SAL_EFORMAT, "len %zu: status %d (%s)", len, (int)s,
              sal_last_error());
        free(b);
    }
    sal_cifar_parse(buf, rec1 + 5, 1, nc10, img, n * SAL_CIFAR_PIXELS, lab, n);
    CHECK(strstr(sal_last_error(), "not a multiple") != NULL, "message: %s", sal_last_error());
    /* bad label in record 2 */
    buf[2 * rec1] = 10;
    CHECK(sal_cifar_parse(buf, n * rec1, 1, nc10, img, n * SAL_CIFAR_PIXELS, lab, n) == SAL_EFORMAT,
          "label 10 accepted");
    CHECK(strstr(sal_last_error(), "record 2") && strstr(sal_last_error(), "= 10"), "message: %s",
          sal_last_error());
    buf[2 * rec1] = 0;
    /* output capacity too small, bad label_bytes */
    CHECK(sal_cifar_parse(buf, n * rec1, 1, nc10, img, n * SAL_CIFAR_PIXELS - 1, lab, n) ==
              SAL_EINVAL, "small images capacity accepted");
    CHECK(sal_cifar_parse(buf, n * rec1, 1, nc10, img, n * SAL_CIFAR_PIXELS, lab, n - 1) ==
              SAL_EINVAL, "small labels capacity accepted");
    CHECK(sal_cifar_parse(buf, n * rec1, 0, nc10, img, n * SAL_CIFAR_PIXELS, lab, n) == SAL_EINVAL,
          "label_bytes 0 accepted");
    CHECK(sal_cifar_count(0, 1, &cnt) == SAL_EFORMAT, "empty accepted");
    /* CIFAR-100: (coarse, fine) */
    for (int i = 0; i < n; i++) {
        buf[i * rec2] = (uint8_t)(19 - i);
        buf[i * rec2 + 1] = (uint8_t)(99 - i);
        memset(buf + i * rec2 + 2, i, SAL_CIFAR_PIXELS);
    }
    CHECK(sal_cifar_parse(buf, n * rec2, 2, nc100, img, n * SAL_CIFAR_PIXELS, lab, 2 * n) == SAL_OK,
          "cifar100 parse: %s", sal_last_error());
    for (int i = 0; i < n; i++) {
        CHECK(lab[2 * i] == 19 - i && lab[2 * i + 1] == 99 - i, "cifar100 labels of %d", i);
        CHECK(img[i * SAL_CIFAR_PIXELS + 3071] == i, "cifar100 pixel of %d", i);
    }
    buf[rec2] = 20; /* coarse label out of range */
    CHECK(sal_cifar_parse(buf, n * rec2, 2, nc100, img, n * SAL_CIFAR_PIXELS, lab, 2 * n) ==
              SAL_EFORMAT, "coarse 20 accepted");
    CHECK(strstr(sal_last_error(), "record 1") != NULL, "message: %s", sal_last_error());
    free(buf);
    free(img);
}

/* an IDX buffer of unsigned bytes with the given dims, data = i % 251 */
static size_t make_idx(uint8_t *b, int ndim, const uint32_t *dims) {
    b[0] = b[1] = 0;
    b[2] = 0x08;
    b[3] = (uint8_t)ndim;
    size_t cnt = 1, o = 4;
    for (int k = 0; k < ndim; k++, o += 4) {
        b[o] = (uint8_t)(dims[k] >> 24);
        b[o + 1] = (uint8_t)(dims[k] >> 16);
        b[o + 2] = (uint8_t)(dims[k] >> 8);
        b[o + 3] = (uint8_t)dims[k];
        cnt *= dims[k];
    }
    for (size_t i = 0; i < cnt; i++) b[o + i] = (uint8_t)(i % 251);
    return o + cnt;
}

static void test_idx(void) {
    uint8_t b[4096], out[4096];
    sal_idx_info info;
    const uint32_t d3[3] = {5, 7, 9}, d1[1] = {13};
    size_t len = make_idx(b, 3, d3);
    CHECK(sal_idx_parse_u8(b, len, &info, out, sizeof out) == SAL_OK, "idx3: %s", sal_last_error());
    CHECK(info.ndim == 3 && info.dims[0] == 5 && info.dims[1] == 7 && info.dims[2] == 9 &&
              info.count == 315 && info.offset == 16, "idx3 header");
    CHECK(out[0] == 0 && out[300] == 300 % 251, "idx3 data");
    CHECK(sal_idx_parse_u8(b, len, &info, out, 314) == SAL_EINVAL, "small capacity accepted");
    /* every truncation of the 3-D buffer, and one trailing byte */
    for (size_t l = 0; l < len; l++) {
        uint8_t *t = dup_exact(b, l);
        CHECK(sal_idx_header(t, l, &info) == SAL_EFORMAT, "truncated to %zu accepted", l);
        free(t);
    }
    b[len] = 0;
    CHECK(sal_idx_header(b, len + 1, &info) == SAL_EFORMAT, "trailing byte accepted");
    CHECK(strstr(sal_last_error(), "trailing") != NULL, "message: %s", sal_last_error());
    sal_idx_header(b, len - 1, &info);
    CHECK(strstr(sal_last_error(), "truncated") != NULL, "message: %s", sal_last_error());
    len = make_idx(b, 1, d1);
    CHECK(sal_idx_parse_u8(b, len, &info, out, sizeof out) == SAL_OK && info.count == 13, "idx1");
    /* bad magic, type, dimension count, zero size, overflowing sizes */
    uint8_t m[64];
    len = make_idx(m, 1, d1);
    m[0] = 0x1F;
    CHECK(sal_idx_header(m, len, &info) == SAL_EFORMAT, "bad magic accepted");
    CHECK(strstr(sal_last_error(), "magic") != NULL, "message: %s", sal_last_error());
    m[0] = 0;
    m[2] = 0x0D;
    CHECK(sal_idx_header(m, len, &info) == SAL_EFORMAT, "float type accepted");
    CHECK(strstr(sal_last_error(), "float32") != NULL, "message: %s", sal_last_error());
    m[2] = 0x08;
    m[3] = 0;
    CHECK(sal_idx_header(m, len, &info) == SAL_EFORMAT, "0 dims accepted");
    m[3] = 5;
    CHECK(sal_idx_header(m, len, &info) == SAL_EFORMAT, "5 dims accepted");
    const uint32_t dz[2] = {3, 0}, dbig[4] = {0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, 2};
    len = make_idx(m, 2, dz);
    CHECK(sal_idx_header(m, len, &info) == SAL_EFORMAT, "zero size accepted");
    memset(m, 0, sizeof m);
    m[2] = 0x08;
    m[3] = 4;
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < 4; j++) m[4 + 4 * k + j] = (uint8_t)(dbig[k] >> (24 - 8 * j));
    CHECK(sal_idx_header(m, 20, &info) == SAL_EFORMAT, "overflowing sizes accepted");
    CHECK(sal_idx_header(NULL, 0, &info) == SAL_EFORMAT, "empty accepted");
}

/* random buffers: any status, never a crash (ASan/UBSan) */
static void test_random_bytes(void) {
    uint8_t *img = malloc(4 * SAL_CIFAR_PIXELS), out[512];
    int32_t lab[8];
    const int nc[2] = {20, 100};
    sal_idx_info info;
    for (int t = 0; t < 3000; t++) {
        size_t len = (size_t)rng_int(0, t % 3 == 0 ? 4 * 3074 : 64);
        uint8_t *b = malloc(len ? len : 1);
        for (size_t i = 0; i < len; i++) b[i] = (uint8_t)rng_next();
        if (t % 2 && len >= 4) { b[0] = b[1] = 0; b[2] = 0x08; b[3] = (uint8_t)rng_int(0, 5); }
        sal_status s = sal_idx_parse_u8(b, len, &info, out, sizeof out);
        CHECK(s == SAL_OK || s == SAL_EFORMAT || s == SAL_EINVAL, "idx status %d", (int)s);
        s = sal_cifar_parse(b, len, 1 + t % 2, nc, img, 4 * SAL_CIFAR_PIXELS, lab, 8);
        CHECK(s == SAL_OK || s == SAL_EFORMAT || s == SAL_EINVAL, "cifar status %d", (int)s);
        free(b);
    }
    free(img);
}

static void test_permutation(void) {
    enum { N = 1000 };
    int64_t *p = malloc(N * sizeof *p), *q = malloc(N * sizeof *q);
    char *seen = calloc(N, 1);
    CHECK(sal_permutation(p, N, 42, 3) == SAL_OK, "perm: %s", sal_last_error());
    int ok = 1, fixed = 0;
    for (int i = 0; i < N; i++) {
        if (p[i] < 0 || p[i] >= N || seen[p[i]]) ok = 0;
        else seen[p[i]] = 1;
        fixed += p[i] == i;
    }
    CHECK(ok, "not a permutation");
    CHECK(fixed < 10, "%d fixed points: not shuffled", fixed);
    sal_permutation(q, N, 42, 3);
    CHECK(memcmp(p, q, N * sizeof *p) == 0, "same (seed, epoch) differs");
    sal_permutation(q, N, 42, 4);
    CHECK(memcmp(p, q, N * sizeof *p) != 0, "epochs 3 and 4 give the same permutation");
    sal_permutation(q, N, 43, 3);
    CHECK(memcmp(p, q, N * sizeof *p) != 0, "seeds 42 and 43 give the same permutation");
    CHECK(sal_permutation(q, 1, 0, 0) == SAL_OK && q[0] == 0, "n=1");
    CHECK(sal_permutation(q, 0, 0, 0) == SAL_EINVAL, "n=0 accepted");
    free(p);
    free(q);
    free(seen);
}

/* naive batch: pad the raw image with zeros, crop, flip, normalise */
static void naive_batch(float *out, const uint8_t *images, const int64_t *index, int64_t B,
                        const sal_batch_desc *d, const int32_t *aug) {
    const int64_t C = d->c, H = d->h, W = d->w, P = d->pad;
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t y = 0; y < H; y++)
                for (int64_t x = 0; x < W; x++) {
                    int64_t xc = aug[3 * b + 2] ? W - 1 - x : x;   /* flip of the crop */
                    int64_t sy = y + aug[3 * b] - P, sx = xc + aug[3 * b + 1] - P;
                    int v = (sy < 0 || sy >= H || sx < 0 || sx >= W)
                                ? 0 : images[((index[b] * C + c) * H + sy) * W + sx];
                    float f = ((float)v / 255.0f - d->mean[c]) / d->std[c];
                    int64_t o = d->layout == SAL_NCHW ? ((b * C + c) * H + y) * W + x
                                                      : ((c * B + b) * H + y) * W + x;
                    out[o] = f;
                }
}

static void test_batch(void) {
    const int64_t NS = 7, C = 3, H = 6, W = 5, B = 11;
    const float mean[3] = {0.4914f, 0.4822f, 0.4465f}, stdv[3] = {0.2023f, 0.1994f, 0.2010f};
    uint8_t *img = malloc(NS * C * H * W);
    for (int64_t i = 0; i < NS * C * H * W; i++) img[i] = (uint8_t)rng_next();
    int64_t index[11];
    for (int64_t b = 0; b < B; b++) index[b] = rng_int(0, NS - 1);
    float *o1 = malloc(B * C * H * W * 4), *o2 = malloc(B * C * H * W * 4);
    int32_t aug[33];
    for (int L = 0; L < 2; L++)
        for (int64_t pad = 0; pad <= 4; pad += 2)
            for (int flip = 0; flip <= 1; flip++) {
                sal_batch_desc d = {C, H, W, mean, stdv, pad, flip, 7, 2, (sal_layout)L};
                CHECK(sal_batch_augment(aug, index, B, &d) == SAL_OK, "augment: %s", sal_last_error());
                for (int64_t b = 0; b < B; b++)
                    CHECK(aug[3 * b] >= 0 && aug[3 * b] <= 2 * pad && aug[3 * b + 1] >= 0 &&
                              aug[3 * b + 1] <= 2 * pad && (flip || aug[3 * b + 2] == 0),
                          "draw out of range");
                CHECK(sal_make_batch(o1, img, NS, index, B, &d) == SAL_OK, "batch: %s",
                      sal_last_error());
                naive_batch(o2, img, index, B, &d, aug);
                CHECK(memcmp(o1, o2, B * C * H * W * 4) == 0, "batch != naive (L=%d pad=%lld flip=%d)",
                      L, (long long)pad, flip);
                sal_set_num_threads(1);
                memset(o2, 0, B * C * H * W * 4);
                sal_make_batch(o2, img, NS, index, B, &d);
                sal_set_num_threads(2);
                CHECK(memcmp(o1, o2, B * C * H * W * 4) == 0, "1 thread != 2 threads");
            }
    /* draw statistics: all 9 offsets appear, flips about half */
    enum { M = 4000 };
    int64_t *idx = malloc(M * sizeof *idx);
    int32_t *a = malloc(3 * M * sizeof *a);
    for (int64_t i = 0; i < M; i++) idx[i] = i;
    sal_batch_desc d = {C, H, W, mean, stdv, 4, 1, 1, 0, SAL_NCHW};
    sal_batch_augment(a, idx, M, &d);
    int hist[9] = {0}, flips = 0;
    for (int64_t i = 0; i < M; i++) { hist[a[3 * i]]++; flips += a[3 * i + 2]; }
    for (int k = 0; k < 9; k++) CHECK(hist[k] > M / 9 / 2, "offset %d drawn %d times", k, hist[k]);
    CHECK(flips > M * 0.45 && flips < M * 0.55, "%d flips of %d", flips, M);
    free(idx);
    free(a);
    /* bad arguments */
    sal_batch_desc bad = {C, H, W, mean, stdv, 4, 1, 0, 0, SAL_NCHW};
    index[3] = NS;
    CHECK(sal_make_batch(o1, img, NS, index, B, &bad) == SAL_EINVAL, "index out of range accepted");
    CHECK(strstr(sal_last_error(), "index[3]=7") != NULL, "message: %s", sal_last_error());
    index[3] = 0;
    const float zstd[3] = {0.2f, 0.0f, 0.2f};
    bad.std = zstd;
    CHECK(sal_make_batch(o1, img, NS, index, B, &bad) == SAL_EINVAL, "std 0 accepted");
    bad.std = stdv;
    bad.pad = -1;
    CHECK(sal_make_batch(o1, img, NS, index, B, &bad) == SAL_EINVAL, "pad -1 accepted");
    bad.pad = 0;
    CHECK(sal_make_batch(o1, img, NS, index, 0, &bad) == SAL_EINVAL, "B=0 accepted");
    free(img);
    free(o1);
    free(o2);
}

int main(void) {
    uint64_t seed = getenv("SAL_TEST_SEED") ? strtoull(getenv("SAL_TEST_SEED"), 0, 10) : 12345;
    check_rng = seed;
    printf("test_data: seed %llu\n", (unsigned long long)seed);
    test_cifar();
    test_idx();
    test_random_bytes();
    test_permutation();
    test_batch();
    return check_done("test_data");
}
