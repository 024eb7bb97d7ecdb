/* libFuzzer target: the network program's loader and executor (sal_net_create,
 * sal_net_forward, sal_net_backward, sal_net_count), i.e. what salnp.export.load hands to
 * libsal from a file.  Structure-aware: the input decodes into a whole program -- counts, buffer
 * shapes, op rows, shift and pair tables -- so mutations land on fields (an offset, a
 * count, a stride, a buffer index) rather than on a file format.
 *
 * Input: one byte of options (bits 0-1: batch n - 1; bit 2: a second forward with
 * another batch size; bit 3: also count; bit 4: forwards in training mode, each followed by
 * a backward; bit 5: activation checkpointing over segments read at the end of the input:
 * a count, then (first op, end op) pairs), then, each as a fuzz_size encoding (a selector byte: mostly a small value,
 * sometimes an edge value such as 2**62 or INT64_MAX, or raw 64 bits): nbuf, nops, nshift,
 * npairs, nweights; nbuf shapes (C, H, W); nops rows of the 18 sal_op fields (res, p0, p1,
 * b0, b1 and ioff encoded + 1, so that -1 is 0); nshift rows (src, dy, dx); npairs rows
 * (o, i, dy, dx).  The weight arena is also the buffer arena (as an exported network's).  Counts that
 * decode negative are passed as they are (the library must refuse them); positive counts
 * are reduced to what the harness allocates.  Weights and the input are deterministic.
 * Properties: no out-of-bounds access, overflow or other UB anywhere; create either
 * succeeds or fails with a message; a created program runs forward (or refuses with a
 * message) at any batch size, repeatedly; a backward succeeds or refuses with a message
 * (an inference-only op); count succeeds on a created program. */
#include <math.h>

#include "fuzz_input.h"
#include "sal/sal.h"

#define MAX_BUF 64
#define MAX_OPS 64
#define MAX_ROWS 4096
#define MAX_WEIGHTS 65536
#define MAX_ACT (1 << 18) /* floats of activations the harness lets a forward allocate */

static int64_t count_of(fuzz_in *in, int64_t small, int64_t cap) {
    int64_t v = fuzz_size(in, small);
    if (v < 0) return v;
    return v > cap ? v % (cap + 1) : v;
}

static int64_t field(fuzz_in *in, int64_t small) { return fuzz_size(in, small > 0 ? small : 1); }
/* v - 1 without overflow (fields that may be -1 are encoded + 1) */
static int64_t minus1(int64_t v) { return v == INT64_MIN ? v : v - 1; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size};
    const uint8_t opt = fuzz_u8(&in);
    const int64_t nbuf = count_of(&in, 10, MAX_BUF), nops = count_of(&in, 10, MAX_OPS);
    const int64_t nshift = count_of(&in, 40, MAX_ROWS), npairs = count_of(&in, 60, MAX_ROWS);
    const int64_t nweights = count_of(&in, 4096, MAX_WEIGHTS);
    int64_t *shapes = calloc(3 * (size_t)(nbuf > 0 ? nbuf : 1), sizeof *shapes);
    sal_op *ops = calloc((size_t)(nops > 0 ? nops : 1), sizeof *ops);
    int32_t *shifts = calloc(3 * (size_t)(nshift > 0 ? nshift : 1), sizeof *shifts);
    int32_t *pairs = calloc(4 * (size_t)(npairs > 0 ? npairs : 1), sizeof *pairs);
    float *weights = malloc(sizeof(float) * (size_t)(nweights > 0 ? nweights : 1));
    if (!shapes || !ops || !shifts || !pairs || !weights) abort();
    for (int64_t i = 0; i < 3 * (nbuf > 0 ? nbuf : 0); i++) shapes[i] = fuzz_size(&in, 12);
    const int64_t B = nbuf > 0 ? nbuf : 1;
    for (int64_t i = 0; i < (nops > 0 ? nops : 0); i++) {
        sal_op *op = &ops[i];
        op->kind = field(&in, 10);
        op->in = field(&in, B);
        op->out = field(&in, B);
        op->res = minus1(field(&in, B + 1));
        op->relu = field(&in, 2);
        op->res_post = field(&in, 2);
        op->o = field(&in, 12);
        op->k = field(&in, 6);
        op->stride = field(&in, 4);
        op->pad = field(&in, 3);
        op->p0 = minus1(field(&in, nweights + 2));
        op->p1 = minus1(field(&in, nweights + 2));
        op->b0 = minus1(field(&in, nweights + 2));
        op->b1 = minus1(field(&in, nweights + 2));
        op->shared = field(&in, 2);
        op->ioff = minus1(field(&in, (nshift > npairs ? nshift : npairs) + 2));
        op->npair = field(&in, npairs + 1);
        op->index_bits = field(&in, 5);
    }
    for (int64_t i = 0; i < 3 * (nshift > 0 ? nshift : 0); i++) shifts[i] = (int32_t)(i % 3 ? minus1(fuzz_size(&in, 12)) : fuzz_size(&in, 12));
    for (int64_t i = 0; i < 4 * (npairs > 0 ? npairs : 0); i++) pairs[i] = (int32_t)(i % 4 >= 2 ? minus1(fuzz_size(&in, 12)) : fuzz_size(&in, 12));
    for (int64_t i = 0; i < (nweights > 0 ? nweights : 0); i++) weights[i] = (float)((i * 37) % 17 - 8) / 16.0f;

    sal_net *net = NULL;
    sal_status s = sal_net_create(&net, shapes, nbuf, ops, nops, nshift ? shifts : NULL, nshift,
                                  npairs ? pairs : NULL, npairs, nweights, nweights);
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "create: %s\n", s == SAL_OK ? "ok" : sal_last_error());
    if (s != SAL_OK) {
        FUZZ_ASSERT(net == NULL, "a failed create returned a network");
        FUZZ_ASSERT(sal_last_error()[0] != '\0', "create failed without a message");
    } else {
        FUZZ_ASSERT(nbuf >= 2 && nops >= 1 && nweights >= 0, "create accepted counts %lld %lld",
                    (long long)nbuf, (long long)nops);
        /* run only programs whose activations stay small (a valid program may be huge) */
        unsigned __int128 per = 0;
        for (int64_t b = 0; b < nbuf; b++)
            per += (unsigned __int128)shapes[3 * b] * (uint64_t)shapes[3 * b + 1] * (uint64_t)shapes[3 * b + 2];
        const int64_t n1 = (opt & 3) + 1, n2 = n1 == 1 ? 3 : n1 - 1;
        const int64_t K = sal_net_output_width(net);
        const int train = (opt & 16) != 0;
        if (opt & 32) {           /* checkpointed segments: refused or taken, never a crash */
            int64_t nseg = count_of(&in, 4, 16), bounds[32];
            if (nseg < 0) nseg = 0;
            for (int64_t k = 0; k < 2 * nseg; k++) bounds[k] = fuzz_size(&in, nops + 1);
            sal_status c = sal_net_set_checkpoints(net, nseg ? bounds : NULL, nseg);
            if (c != SAL_OK) FUZZ_ASSERT(sal_last_error()[0] != '\0', "checkpoints refused silently");
        }
        /* evaluation forwards: streams of 1-2 images, never, or auto (sal/net.h "Streams");
         * opt2 & 4: after one, sal_net_buffer and backward (the whole-batch forward again) */
        const uint8_t opt2 = fuzz_u8(&in);
        const int64_t chunk = (opt2 & 3) == 3 ? -1 : (opt2 & 3) == 2 ? 0 : (opt2 & 3) + 1;
        FUZZ_ASSERT(sal_net_set_streams(net, chunk) == SAL_OK, "set_streams: %s", sal_last_error());
        float *grads = calloc((size_t)(nweights > 0 ? nweights : 1), sizeof *grads);
        if (!grads) abort();
        FUZZ_ASSERT(K >= 1, "output width %lld", (long long)K);
        for (int pass = 0; pass < ((opt & 4) ? 3 : 1); pass++) {
            const int64_t n = pass == 1 ? n2 : n1;
            if (per * (uint64_t)n > MAX_ACT) break;
            const int64_t C = shapes[0], H = shapes[1], W = shapes[2];
            float *x = malloc(sizeof(float) * (size_t)(n * C * H * W));
            float *logits = malloc(sizeof(float) * (size_t)(n * K));
            if (!x || !logits) abort();
            for (int64_t i = 0; i < n * C * H * W; i++) x[i] = (float)(i % 11) / 8.0f - 0.5f;
            sal_act xg = {n, C, H, W, SAL_NCHW};
            sal_status f = sal_net_forward(net, logits, x, xg, weights, weights, train, 0, 20.0);
            if (getenv("FUZZ_VERBOSE"))
                fprintf(stderr, "forward n=%lld: %s\n", (long long)n, f == SAL_OK ? "ok" : sal_last_error());
            if (f != SAL_OK) FUZZ_ASSERT(sal_last_error()[0] != '\0', "forward failed silently");
            if (f == SAL_OK && !train && (opt2 & 4)) {   /* what a streamed forward leaves */
                const float *act;
                sal_act g;
                const int64_t b = fuzz_size(&in, nbuf);
                sal_status v = sal_net_buffer(net, b, &act, &g);
                if (v != SAL_OK) FUZZ_ASSERT(sal_last_error()[0] != '\0', "buffer failed silently");
                FUZZ_ASSERT(v != SAL_OK || (g.n == n && g.c == shapes[3 * b]),
                            "buffer %lld: batch %lld", (long long)b, (long long)g.n);
                if (v == SAL_OK && b == ops[nops - 1].out)   /* the logits' buffer: (N, K) */
                    for (int64_t e = 0; e < n * K; e++)
                        FUZZ_ASSERT(!isfinite(logits[e]) || !isfinite(act[e]) ||
                                        fabs((double)act[e] - logits[e]) <=
                                            1e-3 * (1.0 + fabs((double)logits[e])),
                                    "logit %lld: %g after streams, %g whole batch", (long long)e,
                                    (double)logits[e], (double)act[e]);
                sal_status bw = sal_net_backward(net, grads, logits, weights);
                if (bw != SAL_OK) FUZZ_ASSERT(sal_last_error()[0] != '\0', "backward failed silently");
            }
            if (f == SAL_OK && train) {   /* the logits as their own gradient */
                sal_status b = sal_net_backward(net, grads, logits, weights);
                if (getenv("FUZZ_VERBOSE"))
                    fprintf(stderr, "backward: %s\n", b == SAL_OK ? "ok" : sal_last_error());
                if (b != SAL_OK) FUZZ_ASSERT(sal_last_error()[0] != '\0', "backward failed silently");
                FUZZ_ASSERT(b == SAL_OK || !sal_net_trainable(net, NULL) || b == SAL_ENOMEM ||
                                b == SAL_ENONFINITE,
                            "backward of a trainable program refused: %s", sal_last_error());
            }
            free(x);
            free(logits);
        }
        if (opt & 8) {
            sal_count_row *rows = calloc((size_t)nops, sizeof *rows);
            if (!rows) abort();
            FUZZ_ASSERT(sal_net_count(net, rows) == SAL_OK, "count failed: %s", sal_last_error());
            free(rows);
        }
        free(grads);
        sal_net_free(net);
    }
    free(shapes);
    free(ops);
    free(shifts);
    free(pairs);
    free(weights);
    return 0;
}
