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
    p->fshare = malloc((size_t)nbuf * sizeof *p->fshare);
    p->fshare_off = calloc((size_t)nbuf, sizeof *p->fshare_off);
    if (!p->shapes || !p->act || !p->share || !p->share_off || !p->fshare || !p->fshare_off)
        return sal_fail(SAL_ENOMEM, fn, "out of memory");
    for (int64_t b = 0; b < nbuf; b++) p->share[b] = p->fshare[b] = b;
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

int64_t sal_program_layout(const sal_program *p, const int64_t *share, const int64_t *off,
                           int64_t *boff) {
    int64_t total = 0;
    for (int64_t b = 0; b < p->nbuf; b++) {
        if (share[b] != b) continue;             /* its storage is another buffer's */
        int64_t per = off[b] + sal_program_numel(p, b, 1);
        for (int64_t o = 0; o < p->nbuf; o++)    /* the furthest end of the buffers in it */
            if (share[o] == b && off[o] + sal_program_numel(p, o, 1) > per)
                per = off[o] + sal_program_numel(p, o, 1);
        boff[b] = total;
        total += sal_align_floats(per);
    }
    for (int64_t b = 0; b < p->nbuf; b++) boff[b] = boff[share[b]];
    return total;
}

/* frees the storage frame_make made, not f's table of buffer pointers (left NULL): they
 * point into it */
static void frame_free_storage(const sal_program *p, sal_frame *f) {
    if (f->act)
        for (int64_t b = 0; b < p->nbuf; b++) f->act[b] = NULL;
    free(f->store);
    f->store = NULL;
    free(f->scratch);
    f->scratch = f->extra = NULL;
    f->scratch_n = 0;
    f->cap = 0;
}

static void frame_free(const sal_program *p, sal_frame *f) {
    frame_free_storage(p, f);
    free(f->act);
    *f = (sal_frame){0};
}

static void frames_free(sal_program *p) {
    for (int k = 0; k < p->nframes; k++) frame_free(p, &p->frames[k]);
    free(p->frames);
    p->frames = NULL;
    p->nframes = 0;
}

/* the whole-batch frame's storage (its table stays) and the stream frames */
static void free_act(sal_program *p) {
    sal_frame f = {p->act, p->cap, p->threads, p->scratch, p->scratch_n, NULL, p->store};
    frame_free_storage(p, &f);
    p->store = NULL;
    p->scratch = NULL;
    p->scratch_n = 0;
    p->cap = 0;
    frames_free(p);
}

void sal_program_release(sal_program *p) {
    free_act(p);
    p->n = 0;
}

void sal_program_free(sal_program *p) {
    if (p->share && p->fshare) free_act(p);   /* init may have failed before the tables */
    free(p->act);
    free(p->shapes);
    free(p->share);
    free(p->share_off);
    free(p->fshare);
    free(p->fshare_off);
    p->fshare = p->fshare_off = NULL;
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

/* scratch floats the ops need at batch n on `threads` threads: the largest over the ops
 * (SIZE_MAX: does not fit).  Not monotone in n (a kernel's plan splits a batch by its size:
 * the sparse-tap layouts of 8 16x16 channels need 177 k floats at 8 images, 288 k at 7),
 * so a frame is sized for every batch it will run, not only its capacity. */
static size_t scratch_need(int64_t n, int threads, int64_t nops, sal_program_scratch_fn need,
                           const void *owner) {
    size_t scratch = 0;
    for (int64_t i = 0; i < nops; i++) {
        size_t s = need(owner, i, n, threads);
        if (s > scratch) scratch = s;
    }
    return scratch;
}

/* A frame for n images with the sharing (share, off), its scratch sized for `threads`
 * threads and at least `floor` floats, plus extra floats, all or nothing: on failure *f
 * is left empty and nothing stays allocated. */
static sal_status frame_make(const sal_program *p, sal_frame *f, int64_t n, int threads,
                             size_t extra, size_t floor, const int64_t *share,
                             const int64_t *off, int64_t nops, sal_program_scratch_fn need,
                             const void *owner) {
    *f = (sal_frame){0};
    size_t scratch = scratch_need(n, threads, nops, need, owner);
    if (floor > scratch) scratch = floor;
    if (scratch > (((size_t)1 << 62) / sizeof(float)) - extra)
        return sal_fail(SAL_EOVERFLOW, p->fn, "scratch for batch %lld: size does not fit",
                        (long long)n);
    float **act = calloc((size_t)p->nbuf, sizeof *act), *scr = NULL, *store = NULL;
    int64_t *boff = malloc((size_t)p->nbuf * sizeof *boff), numel = 0;
    sal_status s = act && boff ? SAL_OK : sal_fail(SAL_ENOMEM, p->fn, "out of memory");
    if (s == SAL_OK) s = sal_checked_prod(p->fn, "activation", &numel, 2, n,
                                          sal_program_layout(p, share, off, boff));
    if (s == SAL_OK && !(store = sal_alloc_floats((size_t)numel)))
        s = sal_fail(SAL_ENOMEM, p->fn, "activations for batch %lld: out of memory",
                     (long long)n);
    if (s == SAL_OK && !(scr = sal_alloc_floats(scratch + extra)))
        s = sal_fail(SAL_ENOMEM, p->fn, "scratch of %zu floats: out of memory", scratch + extra);
    if (s != SAL_OK) {
        free(act), free(boff), free(store);
        return s;
    }
    for (int64_t b = 0; b < p->nbuf; b++) act[b] = store + n * (boff[b] + off[b]);
    free(boff);
    *f = (sal_frame){act, n, threads, scr, scratch, scr + scratch, store};
    return SAL_OK;
}

/* Activations and scratch for batch size n, all or nothing: the new blocks are allocated
 * first and replace the old ones only when every allocation succeeded, so a failure
 * leaves the previous capacity and buffers as they were. */
static sal_status reserve(sal_program *p, int64_t n, int64_t nops, sal_program_scratch_fn need,
                          const void *owner) {
    const int threads = sal_threads();
    const size_t want = scratch_need(n, threads, nops, need, owner);   /* this batch's */
    if (n <= p->cap && p->threads == threads && want <= p->scratch_n) return SAL_OK;
    if (n < p->cap) n = p->cap;  /* a thread-count change keeps the capacity */
    sal_frame f;
    SAL_TRY(frame_make(p, &f, n, threads, 0, want, p->share, p->share_off, nops, need, owner));
    sal_frame old = {p->act, p->cap, p->threads, p->scratch, p->scratch_n, NULL, p->store};
    frame_free(p, &old);          /* its table too: the new frame brings its own */
    p->act = f.act;
    p->store = f.store;
    p->scratch = f.scratch;
    p->scratch_n = f.scratch_n;
    p->threads = f.threads;
    p->cap = n;
    return SAL_OK;
}

sal_status sal_program_frames(sal_program *p, int nt, int64_t c, int threads, size_t extra,
                              int64_t nops, sal_program_scratch_fn need, const void *owner) {
    if (p->frames && p->nframes == nt && p->frames[0].cap == c &&
        p->frames[0].threads == threads && p->frame_extra == extra)
        return SAL_OK;
    size_t floor = 0;    /* every chunk size up to c: the last chunk is a remainder */
    for (int64_t m = 1; m < c; m++) {
        const size_t s = scratch_need(m, threads, nops, need, owner);
        if (s > floor) floor = s;
    }
    sal_frame *fr = calloc((size_t)nt, sizeof *fr);
    if (!fr) return sal_fail(SAL_ENOMEM, p->fn, "out of memory");
    sal_status s = SAL_OK;
    for (int k = 0; k < nt && s == SAL_OK; k++)
        s = frame_make(p, &fr[k], c, threads, extra, floor, p->fshare, p->fshare_off, nops, need,
                       owner);
    if (s != SAL_OK) {
        for (int k = 0; k < nt; k++) frame_free(p, &fr[k]);
        free(fr);
        return s;
    }
    frames_free(p);
    p->frames = fr;
    p->nframes = nt;
    p->frames_made++;
    p->frame_extra = extra;
    return SAL_OK;
}

void sal_program_load(const sal_program *p, const sal_frame *f, const float *x, int64_t n0,
                      int64_t n) {
    const int64_t c = p->shapes[0], hw = p->shapes[1] * p->shapes[2];
    for (int64_t ci = 0; ci < c; ci++)
        for (int64_t k = 0; k < n; k++)
            memcpy(f->act[0] + (ci * n + k) * hw, x + ((n0 + k) * c + ci) * hw,
                   (size_t)hw * sizeof(float));
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
