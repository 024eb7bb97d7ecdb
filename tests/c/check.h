/* Tiny test harness for the C tests: exit non-zero on failure, print the seed. */
#ifndef SAL_TEST_CHECK_H
#define SAL_TEST_CHECK_H
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int check_failures = 0;
static uint64_t check_rng = 0x9E3779B97F4A7C15ull;

#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                   \
            fprintf(stderr, "\n");                                          \
            check_failures++;                                               \
        }                                                                   \
    } while (0)

static inline uint64_t rng_next(void) { /* splitmix64 */
    uint64_t z = (check_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline float rng_uniform(void) { return (float)((rng_next() >> 40) / 16777216.0) * 2.0f - 1.0f; }
static inline int64_t rng_int(int64_t lo, int64_t hi) { return lo + (int64_t)(rng_next() % (uint64_t)(hi - lo + 1)); }

static inline void fill_uniform(float *p, int64_t n) { for (int64_t i = 0; i < n; i++) p[i] = rng_uniform(); }

/* worst |a-b| / (atol + rtol |b|) over n elements; > 1 means out of tolerance */
static inline double max_rel_err(const float *a, const float *b, int64_t n, double atol, double rtol,
                                 int64_t *worst) {
    double m = 0.0;
    *worst = -1;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]) / (atol + rtol * fabs((double)b[i]));
        if (!(e <= m)) { m = e; *worst = i; }
    }
    return m;
}

/* moments m (2c: mean, biased variance per channel) of y (n images of c planes of hw
 * floats, image stride sn, plane stride sc) against a two-pass double reference: the worst
 * error as a fraction of its tolerance (mean: 1e-7 |mean| + 1e-5 std; variance: 2e-5) */
static inline double moments_err(const double *m, const float *y, int64_t n, int64_t c,
                                 int64_t hw, int64_t sn, int64_t sc) {
    double worst = 0.0;
    for (int64_t o = 0; o < c; o++) {
        double s = 0.0, v = 0.0;
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < hw; j++) s += y[i * sn + o * sc + j];
        const double mean = s / (double)(n * hw);
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < hw; j++) {
                const double t = y[i * sn + o * sc + j] - mean;
                v += t * t;
            }
        v /= (double)(n * hw);
        const double em = fabs(m[2 * o] - mean) / (1e-7 * fabs(mean) + 1e-5 * sqrt(v) + 1e-30);
        const double ev = fabs(m[2 * o + 1] - v) / (2e-5 * v + 1e-30);
        if (!(em <= worst)) worst = em;
        if (!(ev <= worst)) worst = ev;
    }
    return worst;
}

static inline int check_done(const char *name) {
    if (check_failures) fprintf(stderr, "%s: %d failure(s)\n", name, check_failures);
    else printf("%s: all checks passed\n", name);
    return check_failures ? 1 : 0;
}
#endif
