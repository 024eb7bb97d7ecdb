/* Regression tests for the bugs the fuzzers found (tests/fuzz; their crash inputs are
 * replayed by the fuzz_corpus_* tests as well).  Each case failed before its fix: the
 * batch case wrote past the output (a canary catches it even without ASan). */
#include <string.h>

#include "check.h"
#include "sal/sal.h"

/* sal_make_batch with pad > W: crop offsets |dx| > W made the zero-fill run past the row
 * (heap overflow, reached from Python by Dataset(pad=8) on 3x3 images) */
static void test_batch_pad_wider_than_image(void) {
    const int64_t N = 2, C = 2, H = 3, W = 3, B = 6;
    uint8_t img[2 * 2 * 3 * 3];
    for (int k = 0; k < (int)sizeof img; k++) img[k] = (uint8_t)(k * 37 + 11);
    const float mean[2] = {0.25f, -0.5f}, std[2] = {0.5f, 2.0f};
    const int64_t index[6] = {0, 1, 1, 0, 1, 0};
    const int64_t n = B * C * H * W, guard = 64;
    float *out = malloc((size_t)(n + guard) * sizeof *out);
    int32_t aug[6 * 3];
    for (int64_t pad = 3; pad <= 9; pad += 3)
        for (int flip = 0; flip <= 1; flip++)
            for (int layout = 0; layout <= 1; layout++)
                for (uint64_t epoch = 0; epoch < 8; epoch++) {
                    sal_batch_desc d = {C, H, W, mean, std, pad, flip, 5, epoch, (sal_layout)layout};
                    for (int64_t k = 0; k < n + guard; k++) out[k] = -1234.5f;
                    CHECK(sal_make_batch(out, img, N, index, B, &d) == SAL_OK, "make_batch: %s",
                          sal_last_error());
                    CHECK(sal_batch_augment(aug, index, B, &d) == SAL_OK, "augment: %s",
                          sal_last_error());
                    for (int64_t k = n; k < n + guard; k++)
                        CHECK(out[k] == -1234.5f, "pad %lld flip %d layout %d epoch %llu: "
                              "wrote out[%lld], past the end (%lld)", (long long)pad, flip,
                              layout, (unsigned long long)epoch, (long long)k, (long long)n);
                    int bad = 0;
                    for (int64_t i = 0; i < B; i++)
                        for (int64_t c = 0; c < C; c++)
                            for (int64_t y = 0; y < H; y++)
                                for (int64_t x = 0; x < W; x++) {
                                    const int64_t sy = y + aug[3 * i] - pad,
                                                  sx = (aug[3 * i + 2] ? W - 1 - x : x) +
                                                       aug[3 * i + 1] - pad;
                                    const uint8_t v =
                                        sy >= 0 && sy < H && sx >= 0 && sx < W
                                            ? img[((index[i] * C + c) * H + sy) * W + sx] : 0;
                                    const float want = ((float)v / 255.0f - mean[c]) / std[c];
                                    const int64_t o = layout == 0 ? ((i * C + c) * H + y) * W + x
                                                                  : ((c * B + i) * H + y) * W + x;
                                    bad += out[o] != want;
                                }
                    CHECK(bad == 0, "pad %lld flip %d layout %d: %d wrong values", (long long)pad,
                          flip, layout, bad);
                }
    free(out);
}

int main(void) {
    CHECK(sal_init() == SAL_OK, "init: %s", sal_last_error());
    test_batch_pad_wider_than_image();
    return check_done("test_fuzz_regress");
}
