/* Byte consumer for the fuzz harnesses: turns the fuzzer's input into parameters.
 * Reads past the end give zeros, so every input decodes to something. */
#ifndef SAL_FUZZ_INPUT_H
#define SAL_FUZZ_INPUT_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *p;
    size_t n;
} fuzz_in;

static inline uint64_t fuzz_u64(fuzz_in *in, int nbytes) {
    uint64_t v = 0;
    for (int i = 0; i < nbytes; i++) {
        v = v << 8 | (in->n ? in->p[0] : 0);
        if (in->n) { in->p++; in->n--; }
    }
    return v;
}
static inline uint8_t fuzz_u8(fuzz_in *in) { return (uint8_t)fuzz_u64(in, 1); }
static inline float fuzz_f32_bits(fuzz_in *in) {
    uint32_t b = (uint32_t)fuzz_u64(in, 4);
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

/* A size: mostly small (0 .. small-1), sometimes an interesting edge value, sometimes
 * raw 64 bits (negative, huge, overflowing products). */
static inline int64_t fuzz_size(fuzz_in *in, int64_t small) {
    const uint8_t sel = fuzz_u8(in);
    switch (sel >> 5) {
    case 0: {
        static const int64_t edge[16] = {0, -1, 1, 2, INT64_MAX, INT64_MIN, INT64_MAX / 2,
                                         (int64_t)1 << 31, ((int64_t)1 << 31) - 1,
                                         (int64_t)1 << 32, (int64_t)1 << 62,
                                         ((int64_t)1 << 62) + 1, (int64_t)1 << 21, 1024, 1025,
                                         -((int64_t)1 << 62)};
        return edge[sel & 15];
    }
    case 1: return (int64_t)fuzz_u64(in, 8);
    default: return (int64_t)(fuzz_u64(in, 2) % (uint64_t)small);
    }
}

/* A float: mostly "reasonable" (k/64 - 2), sometimes raw bits (NaN, inf, denormals, < 0). */
static inline float fuzz_float(fuzz_in *in) {
    const uint8_t sel = fuzz_u8(in);
    if (sel < 64) return fuzz_f32_bits(in);
    return (float)(int)fuzz_u8(in) / 64.0f - 2.0f + (sel & 1 ? 0.0f : 2.5f);
}

#define FUZZ_ASSERT(cond, ...)                                                         \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: FUZZ_ASSERT(%s) failed: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                              \
            fprintf(stderr, "\n");                                                     \
            abort();                                                                   \
        }                                                                              \
    } while (0)

/* heap copy of exactly n bytes, so ASan sees a read one byte past the end */
static inline uint8_t *fuzz_dup(const uint8_t *p, size_t n) {
    uint8_t *q = (uint8_t *)calloc(n ? n : 1, 1);
    if (!q) abort();  /* a harness, not the library: out of memory ends the fuzz run */
    if (n) memcpy(q, p, n);
    return q;
}
#endif
