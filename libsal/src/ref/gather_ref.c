/* Naive reference of GATHER (sal/gather.h), always built: tests compare the kernel with it. */
#include "internal/internal.h"
#include "sal/gather.h"

sal_status sal_ref_gather_fwd(float *y, const float *x, sal_act xa, int64_t o, int64_t stride,
                              const int32_t *pairs, const float *w, int64_t npair,
                              const float *bias) {
    const char *fn = "sal_ref_gather_fwd";
    SAL_TRY(sal_act_check(fn, "x", xa));
    SAL_REQUIRE(y && x && (npair == 0 || (pairs && w)), fn, "y, x, pairs and w must not be NULL");
    SAL_REQUIRE(o >= 1 && stride >= 1 && npair >= 0, fn, "O=%lld stride=%lld npair=%lld",
                (long long)o, (long long)stride, (long long)npair);
    const sal_act ya = {xa.n, o, (xa.h - 1) / stride + 1, (xa.w - 1) / stride + 1, xa.layout};
    const int64_t xsn = sal_act_sn(xa), xsc = sal_act_sc(xa), ysn = sal_act_sn(ya), ysc = sal_act_sc(ya);
    for (int64_t n = 0; n < ya.n; n++)
        for (int64_t oc = 0; oc < o; oc++)
            for (int64_t Y = 0; Y < ya.h; Y++)
                for (int64_t X = 0; X < ya.w; X++)
                    y[n * ysn + oc * ysc + Y * ya.w + X] = bias ? bias[oc] : 0.0f;
    for (int64_t k = 0; k < npair; k++) {
        const int32_t *r = pairs + 4 * k;
        SAL_REQUIRE(r[0] >= 0 && r[0] < o && r[1] >= 0 && r[1] < xa.c, fn,
                    "pair %lld: (o, i) = (%d, %d) out of range", (long long)k, r[0], r[1]);
        for (int64_t n = 0; n < ya.n; n++)
            for (int64_t Y = 0; Y < ya.h; Y++)
                for (int64_t X = 0; X < ya.w; X++) {
                    const int64_t iy = stride * Y + r[2], ix = stride * X + r[3];
                    if (iy < 0 || iy >= xa.h || ix < 0 || ix >= xa.w) continue;
                    y[n * ysn + r[0] * ysc + Y * ya.w + X] +=
                        w[k] * x[n * xsn + r[1] * xsc + iy * xa.w + ix];
                }
    }
    return SAL_OK;
}
