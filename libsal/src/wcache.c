/* The weights cache of the convolution family (sal/conv.h, "The weights cache").
 *
 * An evaluation forward (sal_conv_fwd_epi with epi->reuse) of a Winograd or blocked-direct
 * layer needs its weights in a prepared form (Winograd's U = G g G^T, the blocked kernels'
 * vectors of output channels); preparing them costs as much as the whole batch-1 layer
 * does, and an evaluation program passes the same weights on every call.  Each prepared
 * form is kept here, keyed by
 *   - the weights' address and float count, the layer's shape and the kernel family and
 *     vector width that prepared them (a form of one ISA never serves another), and
 *   - a digest of the weights' bits (32 lanes of 64 bits, ref/wcache_ref.c), computed on
 *     every call: a training step, a load, or a write through a NumPy view of the arena
 *     changes it, and the form is made again.  Each lane runs h = f(h ^ word) over its
 *     words with f a bijection (an odd multiply, then xor with the high half), and all 32
 *     lanes are kept: a change of one float always changes its lane; changes of several
 *     floats of one lane go unseen with probability about 2^-64.  It reads the weights
 *     once (bench/RESULTS_conv.md: its cost against preparing them).
 * Entries are pinned while a call uses them; the least recently used unpinned ones are
 * freed when the total would pass the limit (sal_conv_cache_limit, default 64 MiB).  A call
 * that finds its entry being filled or pinned with other contents, or no room, prepares
 * the weights in its own scratch as if there were no cache: the cache only ever saves
 * work.  A mutex guards the table (held for lookups and bookkeeping, never while a form is
 * prepared); pthread_atfork keeps it usable in a forked child. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal/conv_internal.h"
#include "internal/cpu.h"

#define WC_DEFAULT_LIMIT ((int64_t)64 << 20)

struct sal_wcache_entry {
    struct sal_wcache_entry *next;
    const float *w;              /* the weights' address (a key, never read through) */
    int64_t nw;                  /* floats of weights */
    sal_wcache_key key;
    uint64_t digest[SAL_CONV_DIGEST_LANES];
    uint64_t used;               /* clock of the last lookup */
    int pins;                    /* calls using data now */
    int ready;                   /* data holds the form of digest */
    size_t n;                    /* floats of data */
    float *data;                 /* 64-byte aligned */
};

static pthread_mutex_t wc_mu = PTHREAD_MUTEX_INITIALIZER;
static struct sal_wcache_entry *wc_head;
static int64_t wc_bytes, wc_limit = -1;   /* -1: SAL_CONV_CACHE_MB not read yet */
static uint64_t wc_clock, wc_hits, wc_misses;
static pthread_once_t wc_once = PTHREAD_ONCE_INIT;

static void wc_prepare(void) { pthread_mutex_lock(&wc_mu); }
static void wc_parent(void) { pthread_mutex_unlock(&wc_mu); }
static void wc_child(void) { pthread_mutex_init(&wc_mu, NULL); }
static void wc_init(void) {
    pthread_atfork(wc_prepare, wc_parent, wc_child);
    const char *s = getenv("SAL_CONV_CACHE_MB");
    char *end = NULL;
    long long mb = s ? strtoll(s, &end, 10) : -1;
    wc_limit = s && end != s && *end == '\0' && mb >= 0 && mb <= ((int64_t)1 << 40)
                   ? (int64_t)mb << 20
                   : WC_DEFAULT_LIMIT;
}

/* The digest (ref/wcache_ref.c defines it) with AVX-512: four vectors of eight lanes,
 * vpmullq; the same values as the scalar twin. */
#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx512f,avx512dq"))) static void
digest_avx512(const float *w, int64_t nw, uint64_t out[SAL_CONV_DIGEST_LANES]) {
    const __m512i m = _mm512_set1_epi64((long long)0x9E3779B97F4A7C15ull);
    __m512i h[4];
    for (int q = 0; q < 4; q++) {
        uint64_t s[8];
        for (int j = 0; j < 8; j++)
            s[j] = (uint64_t)(8 * q + j + 1) * 0xD6E8FEB86659FD93ull ^ (uint64_t)nw;
        h[q] = _mm512_loadu_si512(s);
    }
    const unsigned char *p = (const unsigned char *)w;
    const int64_t nb = nw * (int64_t)sizeof(float);
    int64_t i = 0;
    for (; i + 256 <= nb; i += 256)
        for (int q = 0; q < 4; q++) {
            const __m512i x = _mm512_mullo_epi64(
                _mm512_xor_si512(h[q], _mm512_loadu_si512(p + i + 64 * q)), m);
            h[q] = _mm512_xor_si512(x, _mm512_srli_epi64(x, 32));
        }
    uint64_t hs[SAL_CONV_DIGEST_LANES];
    for (int q = 0; q < 4; q++) _mm512_storeu_si512(hs + 8 * q, h[q]);   /* 4 x 8 = 32 lanes */
    sal_wcache_digest_tail(hs, p + i, nb - i);
    memcpy(out, hs, sizeof hs);
}
#endif

typedef void (*digest_fn)(const float *, int64_t, uint64_t *);
static const digest_fn DIGEST[SAL_ISA_COUNT] = {
    [SAL_ISA_BASE] = sal_ref_conv_cache_digest, [SAL_ISA_AVX2] = sal_ref_conv_cache_digest,
#if defined(__x86_64__)
    [SAL_ISA_AVX512] = digest_avx512,
#else
    [SAL_ISA_AVX512] = sal_ref_conv_cache_digest,
#endif
};

void sal_conv_cache_digest(const float *w, int64_t nw, uint64_t out[SAL_CONV_DIGEST_LANES]) {
    DIGEST[sal_cpu_isa()](w, nw, out);
}

static void wc_free_entry(struct sal_wcache_entry *e) {
    wc_bytes -= (int64_t)(e->n * sizeof(float));
    free(e->data);
    free(e);
}

/* free least recently used unpinned entries until `bytes` more fit; false: they cannot */
static bool wc_make_room(int64_t bytes) {
    while (wc_bytes + bytes > wc_limit) {
        struct sal_wcache_entry **victim = NULL;
        for (struct sal_wcache_entry **pe = &wc_head; *pe; pe = &(*pe)->next)
            if ((*pe)->pins == 0 && (!victim || (*pe)->used < (*victim)->used)) victim = pe;
        if (!victim) return false;
        struct sal_wcache_entry *e = *victim;
        *victim = e->next;
        wc_free_entry(e);
    }
    return true;
}

const float *sal_wcache_get(const float *w, int64_t nw, const sal_wcache_key *key, size_t n,
                            sal_wcache_fill_fn fill, void *ctx, sal_wcache_entry **pin) {
    *pin = NULL;
    pthread_once(&wc_once, wc_init);
    uint64_t dg[SAL_CONV_DIGEST_LANES];
    sal_conv_cache_digest(w, nw, dg);
    const int64_t bytes = (int64_t)(n * sizeof(float));
    pthread_mutex_lock(&wc_mu);
    struct sal_wcache_entry *e = wc_head;
    while (e && !(e->w == w && e->nw == nw && memcmp(&e->key, key, sizeof *key) == 0))
        e = e->next;
    if (e && e->ready && memcmp(e->digest, dg, sizeof dg) == 0) {   /* a hit */
        e->pins++;
        e->used = ++wc_clock;
        wc_hits++;
        pthread_mutex_unlock(&wc_mu);
        *pin = e;
        return e->data;
    }
    wc_misses++;
    if (e && (e->pins || !e->ready || e->n != n)) {   /* in use, being filled: not now */
        pthread_mutex_unlock(&wc_mu);
        return NULL;
    }
    if (!e) {
        if (bytes > wc_limit || !wc_make_room(bytes)) {
            pthread_mutex_unlock(&wc_mu);
            return NULL;
        }
        e = calloc(1, sizeof *e);
        float *data = e ? sal_alloc_floats((size_t)n) : NULL;
        if (!data) {
            free(e);
            pthread_mutex_unlock(&wc_mu);
            return NULL;
        }
        e->w = w, e->nw = nw, e->key = *key, e->n = n, e->data = data;
        e->next = wc_head;
        wc_head = e;
        wc_bytes += bytes;
    }
    /* stale or new: filled outside the lock, by this call alone (pinned, not ready) */
    e->ready = 0;
    e->pins = 1;
    e->used = ++wc_clock;
    memcpy(e->digest, dg, sizeof dg);
    pthread_mutex_unlock(&wc_mu);
    fill(ctx, e->data);
    pthread_mutex_lock(&wc_mu);
    e->ready = 1;
    pthread_mutex_unlock(&wc_mu);
    *pin = e;
    return e->data;
}

void sal_wcache_release(sal_wcache_entry *e) {
    if (!e) return;
    pthread_mutex_lock(&wc_mu);
    e->pins--;
    if (wc_bytes > wc_limit) (void)wc_make_room(0);   /* the limit was lowered meanwhile */
    pthread_mutex_unlock(&wc_mu);
}

sal_status sal_conv_cache_limit(int64_t bytes) {
    SAL_REQUIRE(bytes >= 0 && bytes <= ((int64_t)1 << 50), "sal_conv_cache_limit",
                "bytes=%lld: must be in [0, 2^50]", (long long)bytes);
    pthread_once(&wc_once, wc_init);
    pthread_mutex_lock(&wc_mu);
    wc_limit = bytes;
    (void)wc_make_room(0);
    pthread_mutex_unlock(&wc_mu);
    return SAL_OK;
}

void sal_conv_cache_stats(sal_conv_cache_info *info) {
    pthread_once(&wc_once, wc_init);
    pthread_mutex_lock(&wc_mu);
    int64_t entries = 0;
    for (struct sal_wcache_entry *e = wc_head; e; e = e->next) entries++;
    *info = (sal_conv_cache_info){.limit = wc_limit, .bytes = wc_bytes, .entries = entries,
                                  .hits = (int64_t)wc_hits, .misses = (int64_t)wc_misses};
    pthread_mutex_unlock(&wc_mu);
}

void sal_conv_cache_clear(void) {
    pthread_once(&wc_once, wc_init);
    pthread_mutex_lock(&wc_mu);
    for (struct sal_wcache_entry **pe = &wc_head; *pe;) {
        struct sal_wcache_entry *e = *pe;
        if (e->pins) {   /* in use: freed when a later call finds no room, or by a clear */
            pe = &e->next;
            continue;
        }
        *pe = e->next;
        wc_free_entry(e);
    }
    wc_hits = wc_misses = 0;
    pthread_mutex_unlock(&wc_mu);
}
