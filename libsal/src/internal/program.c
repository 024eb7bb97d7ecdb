/* The runtime of the network program: buffers, scratch, the input copy (see program.h). */
#include "internal/program.h"

#include <stdlib.h>
#include <string.h>

sal_status sal_program_init(sal_program *p, const char *fn, const char *arena,
                            const int64_t *shapes, int64_t nbuf, int64_t nops, int64_t narena) {
    memset(p, 0, sizeof *p);
    SAL_REQUIRE(shapes, fn, "net, shapes and ops must not be NULL");
    SAL_REQUIRE(nbuf >= 2 && nops >= 1, fn, "nbuf=%lld nops=%lld: need >= 2 buffers and >= 1 op",
                (long long)nbuf, (long long)nops);
    SAL_REQUIRE(nbuf <= ((int64_t)1 << 40) && nops <= ((int64_t)1 << 40), fn,
                "nbuf=%lld nops=%lld: must be <= 2**40", (long long)nbuf, (long long)nops);
    p->fn = fn, p->arena = arena, p->nbuf = nbuf, p->narena = narena;
    SAL_REQUIRE(narena >= 0, fn, "%s: arena size %lld: must be >= 0", arena, (long long)narena);
    p->shapes = malloc((size_t)nbuf * 3 * sizeof *p->shapes);
    p->act = calloc((size_t)nbuf, sizeof *p->act);
    p->share = malloc((size_t)nbuf * sizeof *p->share);
    p->share_off = calloc((size_t)nbuf, sizeof *p->share_off);
    if (!p->shapes || !p->act || !p->share || !p->share_off)
        return sal_fail(SAL_ENOMEM, fn, "out of memory");
    for (int64_t b = 0; b < nbuf; b++) p->share[b] = b;
    memcpy(p->shapes, shapes, (size_t)nbuf * 3 * sizeof *shapes);
    for (int64_t b = 0; b < nbuf; b++) {
        int64_t tot;
        const int64_t *sb = shapes + 3 * b;
        SAL_REQUIRE(sb[0] >= 1 && sb[1] >= 1 && sb[2] >= 1, fn,
                    "buffer %lld: shape (%lld, %lld, %lld): sizes must be >= 1", (long long)b,
                    (long long)sb[0], (long long)sb[1], (long long)sb[2]);
        SAL_TRY(sal_checked_prod(fn, "buffer size", &tot, 3, sb[0], sb[1], sb[2]));
    }
    return SAL_OK;
}

static void free_act(sal_program *p) {
    if (p->act)
        for (int64_t b = 0; b < p->nbuf; b++) {
            if (p->share[b] == b && p->act[b]) free(p->act[b] - p->cap * p->share_off[b]);
            p->act[b] = NULL;
        }
    free(p->scratch);
    p->scratch = NULL;
    p->scratch_n = 0;
    p->cap = 0;
}

void sal_program_release(sal_program *p) {
    free_act(p);
    p->n = 0;
}

void sal_program_free(sal_program *p) {
    free_act(p);
    free(p->act);
    free(p->shapes);
    free(p->share);
    free(p->share_off);
    p->share = NULL;
    p->share_off = NULL;
    p->act = NULL;
    p->shapes = NULL;
}

sal_status sal_program_check_io(const sal_program *p, int64_t i, int64_t in, int64_t out,
                                int64_t res) {
    const int64_t B = p->nbuf;
    SAL_REQUIRE(in >= 0 && in < B && out > 0 && out < B && in != out, p->fn,
                "op %lld: in=%lld out=%lld: must be distinct buffers in [0, %lld)",
                (long long)i, (long long)in, (long long)out, (long long)B);
    SAL_REQUIRE(res >= -1 && res < B && res != out, p->fn,
                "op %lld: res=%lld: must be -1 or another buffer", (long long)i, (long long)res);
    return SAL_OK;
}

sal_status sal_program_check_fit(const sal_program *p, int64_t i, int64_t out, int64_t res,
                                 const int64_t want[3], int64_t p0, int64_t pw, int64_t p1,
                                 int64_t pb) {
    const char *fn = p->fn;
    if (res >= 0) {
        const int64_t *sr = p->shapes + 3 * res;
        SAL_REQUIRE(sr[0] == want[0] && sr[1] == want[1] && sr[2] == want[2], fn,
                    "op %lld: res buffer %lld has shape (%lld, %lld, %lld), not the output's",
                    (long long)i, (long long)res, (long long)sr[0], (long long)sr[1],
                    (long long)sr[2]);
    }
    const int64_t *so = p->shapes + 3 * out, P = p->narena;
    SAL_REQUIRE(so[0] == want[0] && so[1] == want[1] && so[2] == want[2], fn,
                "op %lld: out buffer %lld has shape (%lld, %lld, %lld), the op makes (%lld, %lld, %lld)",
                (long long)i, (long long)out, (long long)so[0], (long long)so[1],
                (long long)so[2], (long long)want[0], (long long)want[1], (long long)want[2]);
    SAL_REQUIRE(pw == 0 || sal_span_ok(p0, pw, P), fn,
                "op %lld: p0=%lld: %lld %s do not fit the arena (%lld)", (long long)i,
                (long long)p0, (long long)pw, p->arena, (long long)P);
    SAL_REQUIRE(pb == 0 || sal_span_ok(p1, pb, P), fn,
                "op %lld: p1=%lld: %lld %s do not fit the arena (%lld)", (long long)i,
                (long long)p1, (long long)pb, p->arena, (long long)P);
    return SAL_OK;
}

sal_status sal_program_enter(sal_program *p, const char *what) {
    int idle = 0;
    if (!atomic_compare_exchange_strong(&p->busy, &idle, 1))
        return sal_fail(SAL_EINVAL, p->fn, "%s: another forward or backward is running on this "
                        "network: one call at a time per network", what);
    return SAL_OK;
}

/* Activations and scratch for batch size n, all or nothing: the new blocks are allocated
 * first and replace the old ones only when every allocation succeeded, so a failure
 * leaves the previous capacity and buffers as they were. */
static sal_status reserve(sal_program *p, int64_t n, int64_t nops, sal_program_scratch_fn need,
                          const void *owner) {
    if (n <= p->cap && p->threads == sal_threads()) return SAL_OK;
    if (n < p->cap) n = p->cap;  /* a thread-count change keeps the capacity */
    const int threads = sal_threads(), old_threads = p->threads;
    p->threads = threads;        /* the scratch functions size for it */
    size_t scratch = 0;
    for (int64_t i = 0; i < nops; i++) {
        size_t s = need(owner, i, n);
        if (s > scratch) scratch = s;
    }
    p->threads = old_threads;
    if (scratch > (((size_t)1 << 62) / sizeof(float)))
        return sal_fail(SAL_EOVERFLOW, p->fn, "scratch for batch %lld: size does not fit",
                        (long long)n);
    float **act = calloc((size_t)p->nbuf, sizeof *act), *scr = NULL;
    sal_status s = act ? SAL_OK : sal_fail(SAL_ENOMEM, p->fn, "out of memory");
    for (int64_t b = 0; b < p->nbuf && s == SAL_OK; b++) {
        if (p->share[b] != b) continue;          /* its storage is another buffer's */
        int64_t per = sal_program_numel(p, b, 1), numel;
        for (int64_t o = 0; o < p->nbuf; o++)    /* the furthest end of the buffers in it */
            if (p->share[o] == b && p->share_off[o] + sal_program_numel(p, o, 1) > per)
                per = p->share_off[o] + sal_program_numel(p, o, 1);
        s = sal_checked_prod(p->fn, "activation", &numel, 2, n, per);
        if (s == SAL_OK && !(act[b] = malloc((size_t)numel * sizeof(float))))
            s = sal_fail(SAL_ENOMEM, p->fn, "activations for batch %lld: out of memory",
                         (long long)n);
    }
    if (s == SAL_OK && !(scr = malloc((scratch ? scratch : 1) * sizeof(float))))
        s = sal_fail(SAL_ENOMEM, p->fn, "scratch of %zu floats: out of memory", scratch);
    if (s != SAL_OK) {
        if (act)
            for (int64_t b = 0; b < p->nbuf; b++) free(act[b]);
        free(act);
        return s;    /* p untouched */
    }
    free_act(p);
    for (int64_t b = 0; b < p->nbuf; b++) p->act[b] = act[p->share[b]] + n * p->share_off[b];
    free(act);
    p->scratch = scr;
    p->scratch_n = scratch;
    p->threads = threads;
    p->cap = n;
    return SAL_OK;
}

typedef struct {
    float *dst;
    const float *x;
    int64_t n, c, hw;
} cm_task;

/* idx in [0, c * n): channel ci = idx / n, image ni = idx % n */
static void to_channel_major_run(void *p, int64_t lo, int64_t hi, int tid) {
    const cm_task *t = p;
    const int64_t n = t->n, c = t->c, hw = t->hw;
    for (int64_t idx = lo; idx < hi; idx++) {
        const int64_t ci = idx / n, ni = idx % n;
        memcpy(t->dst + (ci * n + ni) * hw, t->x + (ni * c + ci) * hw, (size_t)hw * sizeof(float));
    }
}

/* x (N, C, H, W) NCHW -> dst (C, N, H, W) */
static void to_channel_major(float *dst, const float *x, int64_t n, int64_t c, int64_t hw) {
    cm_task t = {dst, x, n, c, hw};
    sal_parallel_for(c * n, sal_threads(), to_channel_major_run, &t);
}

sal_status sal_program_start(sal_program *p, const float *x, sal_act xg, int64_t nops,
                             sal_program_scratch_fn scratch, const void *owner) {
    SAL_TRY(sal_act_check(p->fn, "x", xg));
    const int64_t *s0 = p->shapes;
    SAL_REQUIRE(xg.layout == SAL_NCHW && xg.c == s0[0] && xg.h == s0[1] && xg.w == s0[2], p->fn,
                "x: (C, H, W) = (%lld, %lld, %lld): the network was built for (%lld, %lld, %lld) NCHW",
                (long long)xg.c, (long long)xg.h, (long long)xg.w, (long long)s0[0],
                (long long)s0[1], (long long)s0[2]);
    p->n = 0;  /* no valid forward until this one completes (nor after a failed reserve) */
    SAL_TRY(reserve(p, xg.n, nops, scratch, owner));
    to_channel_major(p->act[0], x, xg.n, s0[0], s0[1] * s0[2]);
    return SAL_OK;
}

sal_status sal_program_buffer(const sal_program *p, int64_t b, const float **act, sal_act *geom) {
    SAL_REQUIRE(act && geom, p->fn, "net, act, geom must not be NULL");
    SAL_REQUIRE(b >= 0 && b < p->nbuf, p->fn, "b=%lld: must be in [0, %lld)", (long long)b,
                (long long)p->nbuf);
    SAL_REQUIRE(p->n >= 1, p->fn, "no forward pass yet");
    *act = p->act[b];
    *geom = sal_program_act(p, b, p->n);
    return SAL_OK;
}
