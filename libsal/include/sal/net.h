/* A network as a program: activation buffers and a flat list of ops over them, run by one
 * executor, forward and backward.  The training network (salnp.models) and the exported
 * inference network (salnp.export, a program-to-program rewrite of the training one) are
 * programs of the same op type; the inference-only kinds and forms are refused by backward.
 *
 * Buffers.  Buffer b holds per sample a (C, H, W) = shapes[3b .. 3b+3) activation,
 * channel-major (CNHW) for the whole batch, allocated once per batch size; buffer 0 is the
 * input; the last op makes the logits (N, K) (a pool or a linear).  sal_net_shapes derives
 * every buffer's (H, W) from the input's by the ops' own rules, so a caller never repeats
 * the output-size arithmetic.
 *
 * Arenas.  Ops name their pieces by offsets into two float arenas passed to every call:
 * params (p0, p1: weights, biases, logits, BN gamma/beta, ASL offsets; gradients live in a
 * second arena of the same length) and buffers (b0, b1: BN running statistics, SAL masks and
 * tap thresholds).  An exported network has one weight arena: it passes it as both.  Integer
 * tables: shift rows (src, dy, dx) int32 that SHIFT ops index (ioff), and SAL pairs
 * (o, i, dy, dx) int32 that GATHER ops index (ioff, npair).
 *
 * Epilogue of CONV and GATHER (per output channel o, bias b = params[p1 + o], none if p1 < 0):
 *   v = acc + b;  res >= 0 and !res_post: v += res;  relu: v = max(v, 0);
 *   res >= 0 and res_post: v += res          (the SL block adds after its ReLU).
 * A CONV with an epilogue (bias, residual or ReLU) is the exported form: forward only.
 *
 * The kinds, with the fields each reads (every other field must be 0, or -1 for res, p0,
 * p1, b0, b1, ioff):
 *   CONV    out = epi(conv(in, params[p0]: (O,C,K,K)), stride, pad)          o k stride pad
 *   SAL     out = SAL(in; w = params[p0] (O,C,3,3), logits = params[p1] (O|1,C,9)), stride,
 *           pad 1, shared; b0 >= 0: mask (O|1,C,9) of allowed positions = buffers[b0]
 *           (sal/attention.h "Masks"); b1 >= 0: the layer's tap threshold = buffers[b1]
 *           (sal/attention.h; -1: 0, the dense path); beta and hard come with the forward
 *   GATHER  out = epi(binarised unshared SAL): pairs[ioff .. ioff + npair) sorted by o,
 *           |dy|, |dx| <= 1, one weight each at params[p0 ..]; forward only (sal/gather.h)
 *   SHIFT   out[c] = in[src_c] shifted by (dy_c, dx_c), stride: shift rows ioff .. ioff +
 *           C_out; drops or reorders channels (backward: only the identity src_c = c);
 *           index_bits: bits per channel counted as parameters (4: a learned 3x3
 *           position, 0: a fixed pattern)
 *   ASHIFT  out = active_shift(in, params[p0]: (C,2)), stride
 *   BN      out = [relu](bn(in; gamma = params[p0], beta = params[p1], running mean/var =
 *           buffers[b0], buffers[b1]) [+ res]) (a residual needs relu)
 *   ADD     out = [relu](in + res)
 *   POOL    out (N, C) = global average of in
 *   LINEAR  out (N, O) = in (N, I) params[p0]^T (O,I) + params[p1] (O)
 */
#ifndef SAL_NET_H
#define SAL_NET_H

#include "sal/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    SAL_OP_CONV = 0,
    SAL_OP_SAL = 1,
    SAL_OP_GATHER = 2,
    SAL_OP_SHIFT = 3,
    SAL_OP_ASHIFT = 4,
    SAL_OP_BN = 5,
    SAL_OP_ADD = 6,
    SAL_OP_POOL = 7,
    SAL_OP_LINEAR = 8
} sal_op_kind;

/* One op; sal_net_op_fields names the fields in this order (salnp packs rows by name). */
typedef struct {
    int64_t kind, in, out, res, relu, res_post, o, k, stride, pad, p0, p1, b0, b1, shared, ioff,
        npair, index_bits;
} sal_op;

/* The op table describes itself: the names of sal_op's fields in order (nfields =
 * sizeof(sal_op) / sizeof(int64_t)) and of the op kinds by value ("conv", "sal", "gather",
 * "shift", "ashift", "bn", "add", "pool", "linear"). */
const char *const *sal_net_op_fields(int64_t *nfields);
const char *const *sal_net_op_kinds(int64_t *nkinds);

typedef struct sal_net sal_net;

/* shapes (nbuf, 3) of every buffer for an input of per-sample shape in_chw (C, H, W), from
 * the ops and channels (nbuf): the channel count of every buffer (the ops are checked just
 * enough to apply their rules; sal_net_create checks the rest).  A buffer no op writes, a
 * write before the read of its source, or an output smaller than 1x1: SAL_EINVAL. */
sal_status sal_net_shapes(int64_t *shapes, const int64_t in_chw[3], const int64_t *channels,
                          int64_t nbuf, const sal_op *ops, int64_t nops);

/* shapes (nbuf, 3): per-sample (C, H, W) of each buffer; ops (nops); shifts (nshift, 3) int32
 * rows (src, dy, dx); pairs (npairs, 4) int32 rows (o, i, dy, dx); nparams, nbuffers: the arena
 * sizes.  Everything is validated (every offset and count with overflow-free arithmetic:
 * programs come from files) and copied. */
sal_status sal_net_create(sal_net **net, const int64_t *shapes, int64_t nbuf, const sal_op *ops,
                          int64_t nops, const int32_t *shifts, int64_t nshift, const int32_t *pairs,
                          int64_t npairs, int64_t nparams, int64_t nbuffers);
void sal_net_free(sal_net *net);

/* Threads: a network is used by one call at a time.  sal_net_forward and sal_net_backward
 * refuse (SAL_EINVAL, "another forward or backward is running") a call that starts
 * while another is running on the same network, instead of sharing its buffers; they
 * never corrupt memory.  Callers that share a network serialise the calls (salnp holds
 * a per-network lock); different networks run in parallel.  A failed forward (bad input,
 * out of memory) leaves no forward to differentiate: the next backward fails with a
 * message, and the buffers of earlier batches stay consistent.  A whole-batch evaluation
 * forward (streams off, or run again for backward or sal_net_buffer) of fewer than 2^25
 * MACs runs on the calling thread alone (waking the pool costs more). */

/* Streams.  An evaluation forward (train = 0) of a large batch runs as streams: the batch
 * is cut into chunks of c images, and each of the sal_threads() threads takes chunk after
 * chunk and runs every op on it, one thread per kernel, in a frame of its own (the
 * activations and scratch of c images, allocated once per (c, threads)): a chunk's
 * activations stay in the L2 cache from op to op, where the whole batch would stream
 * every activation through DRAM between ops.  The chunk boundaries do not depend on which
 * thread runs a chunk: results are deterministic for a given thread count (and chunk), and
 * agree with the whole-batch forward within float32 rounding (bit for bit where a kernel's
 * sums do not depend on the batch size).
 *   Auto (the default): frames of c = clamp(256 KiB / the largest per-image buffer, 1, 16)
 * images; chunks of c, lowered to ceil(N / threads) when N < threads * c so that every
 * thread gets one, and to N.  Every evaluation forward streams, batch 1 too: a frame's
 * buffers share storage by liveness (a few buffers' worth per image, not the whole
 * network's), so even one image's activations stay in the L2 cache.  A batch smaller
 * than the threads (batch 1 on 2) runs as one stream on the calling thread whose ops
 * split over all the threads where that pays (the shift + 1x1 GEMMs; a GATHER stays on
 * one thread, small convolutions too, see conv.c), or on one thread, whichever was
 * faster lately: every such forward is timed, the first 4 alternate, then every 16th runs
 * the other way, and the way with the smaller best of its last 3 times runs (which one
 * wins changes from second to second on the 2-core VM); the logits are the same bit for
 * bit either way.  Training forwards never stream.
 *   A streamed forward writes the logits only: it neither allocates nor writes the
 * whole-batch activations (an earlier whole-batch forward's stay allocated), but keeps a
 * copy of the input.  Its frames also keep each GATHER's entry lists (sal/taps.h
 * sal_taps_gather_fwd_plan) for as long as the frames live, taking the weights afresh
 * from the params arena on every call (a batch-1 forward no longer sorts them: 1.4x
 * faster for SAL-ResNet-20).  sal_net_backward and
 * sal_net_buffer after it first run the whole-batch evaluation forward of that input, with
 * the params and buffers arenas of the streamed forward (which must still be alive and
 * unchanged, as the SAL masks for backward), so they see exactly what a whole-batch
 * forward would have left.
 * chunk: -1 auto, 0 never (every forward over the whole batch), k >= 1: every evaluation
 * forward streams chunks of k images (benchmarks and tests). */
sal_status sal_net_set_streams(sal_net *net, int64_t chunk);

/* logits (N, K) from x (N, C, H, W) NCHW; (C, H, W) must be the program's input shape.
 * train: batch statistics and running-stat update (buffers written); hard: binarised SAL
 * attention; beta: SAL inverse temperature (finite, >= 0, read when the program has SAL). */
sal_status sal_net_forward(sal_net *net, float *logits, const float *x, sal_act xg,
                           const float *params, float *buffers, int train, int hard, double beta);
/* grads (nparams) += dL/dparams for the last forward, given dlogits (N, K).  SAL masks are
 * read from the buffer arena passed to that forward: it must still be alive.  A program with
 * an inference-only op (GATHER, a CONV with an epilogue, a SHIFT that moves channels) is
 * refused with the op named.
 *   Memory: a gradient born when enough activations that backward no longer reads lie side
 * by side (the later stages' while the first stage's gradients are born) is kept in their
 * storage instead of an allocation of its own: 18 MiB less for CL ResNet-20 at batch 128.
 * Another backward of the same forward, or sal_net_buffer after a backward, first
 * recomputes the forward's activations from its input with params (training BN replayed
 * from the statistics the forward used, running statistics not updated again): bit for
 * bit the forward's when params are unchanged. */
sal_status sal_net_backward(sal_net *net, float *grads, const float *dlogits, const float *params);

/* Activation checkpointing: bounds (nseg, 2) = [first op, one past the last) of each segment,
 * non-empty, ascending, disjoint; nseg 0: none.  The buffers only a segment writes and reads
 * are not kept between forward and backward: every segment's share one allocation, and
 * backward runs each segment's forward again (its BN with the statistics of the first run,
 * bit for bit, touching no running statistic) just before its ops' backward.  Memory for
 * about one more forward of the segments.  Frees the activations (the next forward
 * allocates them again); no forward to differentiate afterwards. */
sal_status sal_net_set_checkpoints(sal_net *net, const int64_t *bounds, int64_t nseg);

/* Profile of evaluation and training forwards, per op (bench/bench_streams.py --profile):
 * seconds (nops, may be NULL) receives the thread CPU seconds each op took, summed over
 * the forwards since profiling was turned on and over the threads that ran streams (a
 * whole-batch op's pool workers are not counted: profile at 1 thread); then on = 1
 * restarts the sums from zero, on = 0 stops profiling (two clock reads per op). */
sal_status sal_net_profile(sal_net *net, int on, double *seconds);

/* width K of the output (N, K); batch size of the last forward (0: none); arena sizes;
 * whether backward is defined (1) or the op that forbids it (*why, may be NULL) */
int64_t sal_net_output_width(const sal_net *net);
int64_t sal_net_last_batch(const sal_net *net);
void sal_net_arena_sizes(const sal_net *net, int64_t *nparams, int64_t *nbuffers);
int sal_net_trainable(const sal_net *net, int64_t *why);
/* per image: forward multiply-adds of CONV, SAL (dense), GATHER and LINEAR ops (saturates at 2^62) */
int64_t sal_net_macs(const sal_net *net);
/* (C, H, W) of buffer b, for inspection; activations of the last forward (CNHW).  A BN + ReLU
 * output that backward recomputes (a block's first BN + ReLU, and every other block's output:
 * net.c plan_sharing) shares its allocation with the others of its kind, so reading one
 * recomputes it there: the pointer stays valid until the next call of sal_net_buffer,
 * forward or backward. */
/* After a streamed forward it first runs the whole-batch forward of that input (see
 * "Streams"), after a backward it recomputes the activations (see sal_net_backward); one
 * call at a time per network, like forward. */
sal_status sal_net_buffer(sal_net *net, int64_t b, const float **act, sal_act *geom);
/* read-only views of the program as validated and copied by sal_net_create; any output
 * pointer may be NULL */
void sal_net_program(const sal_net *net, const int64_t **shapes, int64_t *nbuf,
                     const sal_op **ops, int64_t *nops);

#ifdef __cplusplus
}
#endif
#endif
