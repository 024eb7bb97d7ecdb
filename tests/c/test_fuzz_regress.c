/* Regression tests for the bugs the fuzzers found (tests/fuzz; their crash inputs are
 * replayed by the fuzz_corpus_* tests as well).  Each case failed before its fix: the
 * batch case wrote past the output (a canary catches it even without ASan), the
 * convolution cases were signed overflows (UBSan in the sanitizer build) that accepted
 * nonsense sizes. */
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

/* sal_conv_check: H + 2*pad overflowed int64 for huge pad (pad = 2^63-1 on a 10x10 input
 * gave an 8x8 output of zeros); now rejected with a message */
static void test_conv_pad_overflow(void) {
    sal_conv_desc d = {{1, 1, 10, 10, SAL_NCHW}, 1, 1, 1, INT64_MAX};
    sal_act y;
    CHECK(sal_conv_check(&d, &y) == SAL_EINVAL, "pad=INT64_MAX accepted: y (%lld, %lld)",
          (long long)y.h, (long long)y.w);
    CHECK(strstr(sal_last_error(), "pad=") && strstr(sal_last_error(), "too large"),
          "message: %s", sal_last_error());
    const int64_t big[] = {(int64_t)1 << 62, ((int64_t)1 << 61) + 1, INT64_MAX / 2 + 7};
    for (int i = 0; i < 3; i++) {
        d.pad = big[i];
        CHECK(sal_conv_check(&d, &y) == SAL_EINVAL, "pad=%lld accepted", (long long)big[i]);
    }
    /* the largest accepted pad (H + 2P = 2^62), with a stride that keeps the output 1x1:
     * the kernels then see only padding, y = 0 and dx = 0 */
    d = (sal_conv_desc){{1, 1, 4, 4, SAL_NCHW}, 1, 3, (int64_t)1 << 62, (((int64_t)1 << 62) - 4) / 2};
    CHECK(sal_conv_check(&d, &y) == SAL_OK && y.h == 1 && y.w == 1, "boundary pad: %s",
          sal_last_error());
    d.pad++;
    CHECK(sal_conv_check(&d, &y) == SAL_EINVAL, "pad one past the boundary accepted");
    d.pad--;
    float x[16], w[9], yy[1] = {7}, dx[16] = {0}, dw[9] = {0}, dy[1] = {1};
    for (int k = 0; k < 16; k++) x[k] = (float)(k + 1);
    for (int k = 0; k < 9; k++) w[k] = (float)(k - 4);
    float *scr = malloc((sal_conv_scratch(&d) + 1) * sizeof *scr);
    CHECK(sal_conv_fwd(yy, x, w, &d, scr) == SAL_OK && yy[0] == 0.0f, "fwd y=%g: %s",
          (double)yy[0], sal_last_error());
    CHECK(sal_conv_bwd(dx, dw, dy, x, w, &d, scr) == SAL_OK, "bwd: %s", sal_last_error());
    for (int k = 0; k < 16; k++) CHECK(dx[k] == 0.0f, "dx[%d]=%g", k, (double)dx[k]);
    free(scr);
}

/* conv_valid_range: ceil((P - kx) / S) as (a + S - 1) / S overflowed for S near 2^63
 * (stride = 2^63-1, pad = 1) */
static void test_conv_stride_overflow(void) {
    sal_conv_desc d = {{1, 1, 4, 4, SAL_NCHW}, 1, 3, INT64_MAX, 1};
    sal_act y;
    CHECK(sal_conv_check(&d, &y) == SAL_OK && y.h == 1 && y.w == 1, "check: %s",
          sal_last_error());
    float x[16], w[9], yf[1], yr[1], dxf[16] = {0}, dxr[16] = {0}, dwf[9] = {0}, dwr[9] = {0};
    float dy[1] = {2};
    for (int k = 0; k < 16; k++) x[k] = (float)(k % 5 - 2);
    for (int k = 0; k < 9; k++) w[k] = (float)(k % 3 - 1);
    float *scr = malloc((sal_conv_scratch(&d) + 1) * sizeof *scr);
    CHECK(sal_conv_fwd(yf, x, w, &d, scr) == SAL_OK, "fwd: %s", sal_last_error());
    CHECK(sal_ref_conv_fwd(yr, x, w, &d) == SAL_OK, "ref fwd: %s", sal_last_error());
    /* output (0, 0) sees input rows/cols -1 .. 1 */
    float want = 0.0f;
    for (int ky = 0; ky < 3; ky++)
        for (int kx = 0; kx < 3; kx++)
            if (ky >= 1 && kx >= 1) want += w[ky * 3 + kx] * x[(ky - 1) * 4 + kx - 1];
    CHECK(yf[0] == want && yr[0] == want, "y=%g ref=%g want %g", (double)yf[0], (double)yr[0],
          (double)want);
    CHECK(sal_conv_bwd(dxf, dwf, dy, x, w, &d, scr) == SAL_OK, "bwd: %s", sal_last_error());
    CHECK(sal_ref_conv_bwd(dxr, dwr, dy, x, w, &d) == SAL_OK, "ref bwd: %s", sal_last_error());
    CHECK(memcmp(dxf, dxr, sizeof dxf) == 0 && memcmp(dwf, dwr, sizeof dwf) == 0,
          "bwd differs from the reference");
    free(scr);
}

/* im2col / col2im_add formed the pointer xc + iy*W + kx - P before indexing it: with a
 * huge pad that pointer lies far outside the image (UBSan: pointer index expression
 * overflowed) even though only in-range elements were read.  pad = stride = 2^60 on a
 * 4x4 input gives a 3x3 output whose centre (1, 1) is a real 3x3 convolution. */
static void test_conv_huge_pad_pointer(void) {
    const int64_t big = (int64_t)1 << 60;
    for (int layout = 0; layout <= 1; layout++) {
        sal_conv_desc d = {{1, 1, 4, 4, (sal_layout)layout}, 1, 3, big, big};
        sal_act y;
        CHECK(sal_conv_check(&d, &y) == SAL_OK && y.h == 3 && y.w == 3, "check: %s",
              sal_last_error());
        float x[16], w[9], yf[9], yr[9], dy[9], dxf[16] = {0}, dxr[16] = {0}, dwf[9] = {0},
              dwr[9] = {0};
        for (int k = 0; k < 16; k++) x[k] = (float)(k % 7 - 3);
        for (int k = 0; k < 9; k++) w[k] = (float)(k % 4 - 1), dy[k] = (float)(k + 1);
        float *scr = malloc((sal_conv_scratch(&d) + 1) * sizeof *scr);
        CHECK(sal_conv_fwd(yf, x, w, &d, scr) == SAL_OK, "fwd: %s", sal_last_error());
        CHECK(sal_ref_conv_fwd(yr, x, w, &d) == SAL_OK, "ref fwd: %s", sal_last_error());
        float centre = 0.0f;
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) centre += w[ky * 3 + kx] * x[ky * 4 + kx];
        for (int k = 0; k < 9; k++)
            CHECK(yf[k] == (k == 4 ? centre : 0.0f) && yr[k] == yf[k],
                  "layout %d: y[%d] = %g, ref %g", layout, k, (double)yf[k], (double)yr[k]);
        CHECK(sal_conv_bwd(dxf, dwf, dy, x, w, &d, scr) == SAL_OK, "bwd: %s", sal_last_error());
        CHECK(sal_ref_conv_bwd(dxr, dwr, dy, x, w, &d) == SAL_OK, "ref bwd: %s",
              sal_last_error());
        CHECK(memcmp(dxf, dxr, sizeof dxf) == 0 && memcmp(dwf, dwr, sizeof dwf) == 0,
              "layout %d: bwd differs from the reference", layout);
        free(scr);
    }
}

int main(void) {
    CHECK(sal_init() == SAL_OK, "init: %s", sal_last_error());
    test_batch_pad_wider_than_image();
    test_conv_pad_overflow();
    test_conv_stride_overflow();
    test_conv_huge_pad_pointer();
    return check_done("test_fuzz_regress");
}
