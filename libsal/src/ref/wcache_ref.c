/* The weights cache's digest (wcache.c) as plain scalar code: the reference twin of the
 * vector version, and the one the baseline and AVX2 levels run.
 *
 * 32 lanes of 64 bits.  The nw floats are bytes b[0 .. 4nw); round r (256 bytes) gives
 * lane j the little-endian 64-bit word at b[256r + 8j]; after the last whole round, lane j
 * takes the word at 8j of the rest, and a last 4 bytes (nw odd) go to the next lane,
 * zero-extended.  Lane j starts at (j + 1) * K ^ nw, and each word v does
 *     x = (h ^ v) * M (mod 2^64),  h = x ^ (x >> 32)
 * -- for a fixed v a bijection of h, for a fixed h a bijection of v: a change of one
 * word always changes its lane's final value. */
#include <string.h>

#include "internal/conv_internal.h"

#define WC_M 0x9E3779B97F4A7C15ull
#define WC_K 0xD6E8FEB86659FD93ull

static inline uint64_t wc_step(uint64_t h, uint64_t v) {
    const uint64_t x = (h ^ v) * WC_M;
    return x ^ (x >> 32);
}

void sal_ref_conv_cache_digest(const float *w, int64_t nw,
                               uint64_t out[SAL_CONV_DIGEST_LANES]) {
    uint64_t h[SAL_CONV_DIGEST_LANES];
    for (int j = 0; j < SAL_CONV_DIGEST_LANES; j++) h[j] = (uint64_t)(j + 1) * WC_K ^ (uint64_t)nw;
    const unsigned char *p = (const unsigned char *)w;
    const int64_t nb = nw * (int64_t)sizeof(float), round = 8 * SAL_CONV_DIGEST_LANES;
    int64_t i = 0;
    for (; i + round <= nb; i += round)
        for (int j = 0; j < SAL_CONV_DIGEST_LANES; j++) {
            uint64_t v;
            memcpy(&v, p + i + 8 * j, 8);
            h[j] = wc_step(h[j], v);
        }
    sal_wcache_digest_tail(h, p + i, nb - i);
    memcpy(out, h, sizeof h);
}

/* the rest after the whole rounds: nb < 256 bytes (see above) */
void sal_wcache_digest_tail(uint64_t h[SAL_CONV_DIGEST_LANES], const unsigned char *p,
                            int64_t nb) {
    int j = 0;
    for (; 8 * (j + 1) <= nb; j++) {
        uint64_t v;
        memcpy(&v, p + 8 * j, 8);
        h[j] = wc_step(h[j], v);
    }
    if (8 * j < nb) {   /* 4 bytes */
        uint32_t v;
        memcpy(&v, p + 8 * j, 4);
        h[j] = wc_step(h[j], v);
    }
}
