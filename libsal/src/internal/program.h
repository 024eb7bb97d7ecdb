/* The runtime of the network program (net.c, sal/net.h): buffers and memory.
 *
 * A program is a list of ops over activation buffers.  Buffer b holds, per sample, a
 * (C, H, W) = shapes[3b .. 3b+3) activation, channel-major (CNHW) for the whole batch;
 * buffer 0 is the input.  The runtime owns the shapes (validated and copied), checks
 * the buffer and arena references every op makes, allocates the activations and one
 * scratch block once per batch size (again when the thread count changes), and moves
 * the caller's NCHW input into buffer 0.  net.c keeps the op table and the executor.
 *
 * Frames.  Every buffer's activations for some number of images, laid out as the
 * program's sharing says, plus one scratch block sized for some thread count: the
 * whole-batch activations (act, cap, threads, scratch) are one frame, and a streamed
 * evaluation forward (sal/net.h "Streams") gives each of its threads a frame of its own
 * for a chunk of images (frames), all made by one allocator. */
#ifndef SAL_PROGRAM_H
#define SAL_PROGRAM_H

#include <stdatomic.h>
#include <stdbool.h>

#include "internal/internal.h"

typedef struct {
    float **act;         /* per buffer: cap images (program.h share, share_off) */
    int64_t cap;         /* images it holds (0: none) */
    int threads;         /* thread count its scratch is sized for */
    float *scratch;
    size_t scratch_n;
    float *extra;        /* extra floats per frame the owner asked for (e.g. BN statistics) */
    float *store;        /* the one allocation every buffer's storage lies in
                            (sal_program_layout) */
} sal_frame;

typedef struct {
    const char *fn;      /* the runtime's name in messages: "sal_net" */
    const char *arena;   /* what its float arena holds: "parameters" */
    int64_t nbuf;
    int64_t *shapes;     /* (nbuf, 3) per-sample C, H, W */
    int64_t narena;      /* floats in the arena that ops index with p0, p1 */
    int64_t cap;         /* batch size the activations are allocated for (0: none) */
    int64_t n;           /* batch size of the last complete forward (0: none) */
    int threads;         /* thread count the scratch is sized for */
    float **act;         /* per buffer, cap * C * H * W floats */
    int64_t *share;      /* per buffer: the buffer whose allocation it uses (itself: its own) */
    int64_t *share_off;  /* per buffer: its offset in that allocation, floats per sample (the
                            allocation holds cap times the per-sample layout); both set by
                            net.c (replayed BN outputs, checkpointed segments) before the
                            activations are allocated, or followed by sal_program_release */
    float *store;        /* the whole-batch activations' one allocation: cap times the
                            per-sample layout of sal_program_layout(share, share_off) */
    float *scratch;
    size_t scratch_n;
    int64_t *fshare;     /* the sharing of the stream frames, as share and share_off: set by */
    int64_t *fshare_off; /* net.c (buffers whose lives do not overlap in an evaluation
                            forward share storage) before any frame is made */
    sal_frame *frames;   /* per stream thread (nframes), NULL: none */
    int nframes;
    int64_t frames_made; /* counts the frame sets made: what their owner built in them (the
                            extra floats) is stale when it changes */
    size_t frame_extra;  /* the extra floats each of them has */
    atomic_int busy;     /* a forward/backward is running (sal_program_enter) */
} sal_program;

/* [off, off + len) inside [0, total), decided without forming off + len: every offset and
 * count a program reads from a file goes through this (no wrap-around near 2**63) */
static inline bool sal_span_ok(int64_t off, int64_t len, int64_t total) {
    return off >= 0 && len >= 0 && total >= 0 && off <= total && len <= total - off;
}

/* One call at a time per program (sal/net.h: "Threads"): enter fails with
 * SAL_EINVAL and a message when another forward/backward is running on it; a call that
 * entered leaves with sal_program_leave on every path. */
sal_status sal_program_enter(sal_program *p, const char *what);
static inline void sal_program_leave(sal_program *p) { atomic_store(&p->busy, 0); }

/* a static table of names and, in *n, its length (the op tables' self-description) */
#define SAL_NAMES(table, n) (*(n) = (int64_t)(sizeof(table) / sizeof *(table)), (table))

/* Copies and validates shapes (nbuf >= 2 buffers for nops >= 1 ops, every size >= 1,
 * products that fit). */
sal_status sal_program_init(sal_program *p, const char *fn, const char *arena,
                            const int64_t *shapes, int64_t nbuf, int64_t nops, int64_t narena);
void sal_program_free(sal_program *p);
/* frees the activations, scratch and frames (the next forward allocates them again):
 * after the buffers' sharing changed; leaves no forward to differentiate */
void sal_program_release(sal_program *p);

/* buffer b for batch n: its geometry (CNHW) and element count */
static inline sal_act sal_program_act(const sal_program *p, int64_t b, int64_t n) {
    const int64_t *s = p->shapes + 3 * b;
    return (sal_act){n, s[0], s[1], s[2], SAL_CNHW};
}
static inline int64_t sal_program_numel(const sal_program *p, int64_t b, int64_t n) {
    const int64_t *s = p->shapes + 3 * b;
    return n * s[0] * s[1] * s[2];
}
/* the floats per image buffer b takes when it shares an allocation: its size rounded up to
 * 16, so that every buffer of a frame of any batch starts on a 64-byte boundary */
static inline int64_t sal_program_span(const sal_program *p, int64_t b) {
    return sal_align_floats(sal_program_numel(p, b, 1));
}

/* Op i reads in (and res, -1: none) and writes out: distinct buffers, out not the input. */
sal_status sal_program_check_io(const sal_program *p, int64_t i, int64_t in, int64_t out,
                                int64_t res);
/* Op i makes out (and adds res) of per-sample shape want, and reads pw arena floats at p0
 * and pb at p1 (0: none): the shapes match and the ranges fit the arena. */
sal_status sal_program_check_fit(const sal_program *p, int64_t i, int64_t out, int64_t res,
                                 const int64_t want[3], int64_t p0, int64_t pw, int64_t p1,
                                 int64_t pb);

/* scratch floats op i needs at batch n on `threads` threads (the runtime takes the
 * largest); SIZE_MAX when the size does not fit (the runtime then refuses the batch) */
typedef size_t (*sal_program_scratch_fn)(const void *owner, int64_t i, int64_t n, int threads);

/* Starts a forward: x (N, C, H, W) NCHW must match buffer 0; activations and scratch for
 * batch N (reallocated, with their contents lost, when N exceeds the capacity or the
 * thread count changed); x copied channel-major into buffer 0; p->n = 0 (set first, so a
 * failure here also leaves no forward to differentiate) until the caller sets it when
 * the pass completes.  The reallocation is all or nothing: the new buffers replace the
 * old ones only once every allocation succeeded. */
sal_status sal_program_start(sal_program *p, const float *x, sal_act xg, int64_t nops,
                             sal_program_scratch_fn scratch, const void *owner);

/* Frames for a streamed forward: nt frames of c images each, their scratch sized for
 * `threads` threads (1: a frame per stream thread; nt = 1 and more threads: one stream
 * whose ops split over the pool), extra floats each (kept when nt, c, threads and extra
 * are those of the frames there are).  All or nothing, like the whole-batch activations;
 * never touches those. */
sal_status sal_program_frames(sal_program *p, int nt, int64_t c, int threads, size_t extra,
                              int64_t nops, sal_program_scratch_fn scratch, const void *owner);
/* The per-sample layout of a frame's one allocation under the sharing (share, off): the
 * storage of each buffer that owns some (share[b] == b), the furthest end of the buffers
 * in it rounded up to 64 bytes, one after the other in buffer order; boff[b] (nbuf):
 * floats per sample before the storage b lies in (its owner's).  Returns the floats per
 * sample; a frame of n images holds buffer b at store + n * (boff[b] + off[b]). */
int64_t sal_program_layout(const sal_program *p, const int64_t *share, const int64_t *off,
                           int64_t *boff);
/* images [n0, n0 + n) of x (N, C, H, W) NCHW into buffer 0 of frame f (C, n, H, W) */
void sal_program_load(const sal_program *p, const sal_frame *f, const float *x, int64_t n0,
                      int64_t n);

/* activations of buffer b after the last forward */
sal_status sal_program_buffer(const sal_program *p, int64_t b, const float **act, sal_act *geom);

#endif
