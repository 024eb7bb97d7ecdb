/* GATHER, the binarised unshared SAL layer (sal/gather.h), forward only: the one-tap case of
 * the sparse-tap kernel family (sal/taps.h, libsal/src/taps.c), which sparse SAL training
 * runs too.  This file checks the layer's arguments and hands it over. */
#include "internal/internal.h"
#include "sal/gather.h"
#include "sal/taps.h"

static const char *FN = "sal_gather";

sal_status sal_gather_check(const sal_gather_desc *d, sal_act *y) {
    SAL_REQUIRE(d != NULL, FN, "desc=NULL: must point to a sal_gather_desc");
    SAL_TRY(sal_act_check(FN, "x", d->x));
    const sal_act x = d->x;
    SAL_REQUIRE(x.layout == SAL_CNHW, FN, "x: must be channel-major (SAL_CNHW)");
    SAL_REQUIRE(d->o >= 1 && d->o <= ((int64_t)1 << 40), FN, "O=%lld: must be in [1, 2**40]",
                (long long)d->o);
    /* a stride beyond the padded input changes nothing (one output row and column) */
    const int64_t hw = x.h > x.w ? x.h : x.w;
    SAL_REQUIRE(d->stride >= 1 && d->stride <= hw + 2, FN,
                "stride=%lld: must be in [1, max(H, W) + 2 = %lld] (the padded input)",
                (long long)d->stride, (long long)(hw + 2));
    SAL_REQUIRE(d->npair >= 0 && d->npair <= ((int64_t)1 << 40) && (d->npair == 0 || d->pairs),
                FN, "npair=%lld: must be in [0, 2**40] with the pairs given", (long long)d->npair);
    SAL_REQUIRE(d->threads >= 0 && d->threads <= 1024, FN, "threads=%d: must be in [0, 1024]",
                d->threads);
    int64_t prev = 0;
    for (int64_t k = 0; k < d->npair; k++) {
        const int32_t *r = d->pairs + 4 * k;
        SAL_REQUIRE(r[0] >= prev && r[0] < d->o && r[1] >= 0 && r[1] < x.c && r[2] >= -1 &&
                        r[2] <= 1 && r[3] >= -1 && r[3] <= 1, FN,
                    "pair %lld = (%d, %d, %d, %d): needs o sorted in [0, %lld), i in [0, %lld), "
                    "|dy|, |dx| <= 1", (long long)k, r[0], r[1], r[2], r[3], (long long)d->o,
                    (long long)x.c);
        prev = r[0];
    }
    const sal_act out = {x.n, d->o, (x.h - 1) / d->stride + 1, (x.w - 1) / d->stride + 1,
                         SAL_CNHW};
    SAL_TRY(sal_act_check(FN, "y", out));
    SAL_REQUIRE(sal_taps_gather_scratch(x, d->o, d->stride, d->npair, d->threads) != 0, FN,
                "scratch of C=%lld, stride %lld: size does not fit", (long long)x.c,
                (long long)d->stride);
    if (y) *y = out;
    return SAL_OK;
}

size_t sal_gather_scratch(const sal_gather_desc *d) {
    if (sal_gather_check(d, NULL) != SAL_OK) return 0;
    const size_t s = sal_taps_gather_scratch(d->x, d->o, d->stride, d->npair, d->threads);
    return s ? s : SIZE_MAX;
}

/* y (O, N, Ho, Wo) = epi(GATHER(x (C, N, H, W))) */
sal_status sal_gather_fwd(float *y, const float *x, const float *w, const float *bias,
                          const float *res, int relu, int res_post, const sal_gather_desc *d,
                          float *scratch) {
    SAL_TRY(sal_gather_check(d, NULL));
    SAL_REQUIRE(y && x && (w || d->npair == 0), FN, "y, x and w must not be NULL");
    SAL_REQUIRE(scratch != NULL, FN, "scratch=NULL: needs %zu floats", sal_gather_scratch(d));
    SAL_REQUIRE((relu == 0 || relu == 1) && (res_post == 0 || res_post == 1), FN,
                "relu=%d res_post=%d: must be 0 or 1", relu, res_post);
    return sal_taps_gather_fwd(y, x, d->x, d->o, d->stride, d->pairs, w, d->npair, bias, res,
                               relu, res_post, d->threads, scratch);
}
