/* The network program (sal/net.h): an exported-style program with GATHER (binarised
 * unshared SAL) against the naive reference with every epilogue, sizes around the tile,
 * strides 1-3, on every ISA the CPU has; shapes derived by sal_net_shapes; accounting; bad
 * programs; backward refused for inference-only forms; gradient slots. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "programs.h"
#include "sal/count.h"
#include "sal/gather.h"
#include "sal/net.h"

/* an op of kind with every optional field at its "none" value */

/* program: b1 = conv1x1_S(x) (the residual), b2 = epi(GATHER(x)), b3 = pool(b2) */
static void gather_case(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t S,
                        double density, int relu, int resmode /* 0 none, 1 pre, 2 post */) {
    const int64_t Ho = (H - 1) / S + 1, Wo = (W - 1) / S + 1;
    int32_t *pairs = malloc((size_t)(O * C + 1) * 16);
    int64_t np = 0;
    for (int64_t o = 0; o < O; o++)
        for (int64_t i = 0; i < C; i++)
            if ((rng_next() >> 11) * (1.0 / 9007199254740992.0) < density) {
                int32_t *r = pairs + 4 * np++;
                r[0] = (int32_t)o, r[1] = (int32_t)i;
                r[2] = (int32_t)rng_int(-1, 1), r[3] = (int32_t)rng_int(-1, 1);
            }
    const int64_t nw = O * C + np + O;
    float *wts = malloc((size_t)nw * 4);
    fill_uniform(wts, nw);
    int64_t shapes[4][3] = {{C, H, W}, {O, Ho, Wo}, {O, Ho, Wo}, {O, 1, 1}};
    sal_op ops[3] = {op_of(SAL_OP_CONV, 0, 1), op_of(SAL_OP_GATHER, 0, 2), op_of(SAL_OP_POOL, 2, 3)};
    ops[0].o = O, ops[0].k = 1, ops[0].stride = S, ops[0].p0 = 0;
    ops[1].o = O, ops[1].stride = S, ops[1].p0 = O * C, ops[1].p1 = O * C + np;
    ops[1].ioff = 0, ops[1].npair = np, ops[1].relu = relu;
    ops[1].res = resmode ? 1 : -1, ops[1].res_post = resmode == 2;
    /* the shapes as the program derives them */
    int64_t channels[4] = {C, O, O, O}, derived[4][3], in_chw[3] = {C, H, W};
    CHECK(sal_net_shapes(&derived[0][0], in_chw, channels, 4, ops, 3) == SAL_OK &&
              memcmp(derived, shapes, sizeof shapes) == 0, "shapes: %s", sal_last_error());
    sal_net *net = NULL;
    sal_status s = sal_net_create(&net, &shapes[0][0], 4, ops, 3, NULL, 0, pairs, np, nw, nw);
    CHECK(s == SAL_OK, "create: %s", sal_last_error());
    if (s != SAL_OK) { free(pairs); free(wts); return; }
    const int64_t nx = N * C * H * W, ny = N * O * Ho * Wo;
    float *x = malloc((size_t)nx * 4), *ref = malloc((size_t)ny * 4), *logits = malloc((size_t)(N * O) * 4);
    fill_uniform(x, nx);
    CHECK(sal_net_forward(net, logits, x, (sal_act){N, C, H, W, SAL_NCHW}, wts, wts, 0, 0, 1.0) == SAL_OK,
          "forward: %s", sal_last_error());
    /* twice: the second run reuses the buffers (and must not depend on stale data) */
    CHECK(sal_net_forward(net, logits, x, (sal_act){N, C, H, W, SAL_NCHW}, wts, wts, 0, 0, 1.0) == SAL_OK,
          "forward 2: %s", sal_last_error());
    sal_act xa = {N, C, H, W, SAL_NCHW};
    CHECK(sal_ref_gather_fwd(ref, x, xa, O, S, pairs, wts + O * C, np, wts + O * C + np) == SAL_OK,
          "ref: %s", sal_last_error());
    const float *res, *got;
    sal_act g1, g2;
    CHECK(sal_net_buffer(net, 1, &res, &g1) == SAL_OK, "buffer 1: %s", sal_last_error());
    CHECK(sal_net_buffer(net, 2, &got, &g2) == SAL_OK, "buffer 2: %s", sal_last_error());
    double worst = 0.0;
    int64_t bad = -1;
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++)
            for (int64_t p = 0; p < Ho * Wo; p++) {
                const int64_t cm = (o * N + n) * Ho * Wo + p;   /* CNHW */
                float v = ref[(n * O + o) * Ho * Wo + p];
                if (resmode == 1) v += res[cm];
                if (relu) v = v > 0.0f ? v : 0.0f;
                if (resmode == 2) v += res[cm];
                const double e = fabs((double)got[cm] - v) / (1e-5 + 1e-5 * fabs((double)v));
                if (!(e <= worst)) worst = e, bad = cm;
            }
    CHECK(worst <= 1.0, "gather N=%lld C=%lld H=%lld W=%lld O=%lld S=%lld np=%lld relu=%d res=%d: "
          "err %g at %lld", (long long)N, (long long)C, (long long)H, (long long)W, (long long)O,
          (long long)S, (long long)np, relu, resmode, worst, (long long)bad);
    sal_count_row rows[3];
    CHECK(sal_net_count(net, rows) == SAL_OK, "count: %s", sal_last_error());
    CHECK(rows[1].kept == np && rows[1].macs == np * Ho * Wo &&
              rows[1].params == (double)np * 36.0 / 32.0 + (double)O && rows[1].shift_moves == 0,
          "gather count: kept %lld macs %lld params %g", (long long)rows[1].kept,
          (long long)rows[1].macs, rows[1].params);
    CHECK(rows[0].macs == O * C * Ho * Wo && rows[0].params == (double)(O * C),
          "conv count: macs %lld params %g", (long long)rows[0].macs, rows[0].params);
    sal_net_free(net);
    free(pairs); free(wts); free(x); free(ref); free(logits);
}

static void bad_programs(void) {
    int64_t shapes[3][3] = {{2, 5, 5}, {3, 5, 5}, {3, 1, 1}};
    int32_t pairs[2][4] = {{1, 0, 0, 0}, {0, 1, 1, -1}};   /* not sorted by o */
    sal_op ops[2] = {op_of(SAL_OP_GATHER, 0, 1), op_of(SAL_OP_POOL, 1, 2)};
    ops[0].o = 3, ops[0].stride = 1, ops[0].p0 = 0, ops[0].ioff = 0, ops[0].npair = 2;
    sal_net *net = NULL;
    CHECK(sal_net_create(&net, &shapes[0][0], 3, ops, 2, NULL, 0, &pairs[0][0], 2, 2, 0) == SAL_EINVAL
              && strstr(sal_last_error(), "sorted"), "unsorted pairs: %s", sal_last_error());
    pairs[0][0] = 0, pairs[1][0] = 1, pairs[1][2] = 2;   /* |dy| = 2 */
    CHECK(sal_net_create(&net, &shapes[0][0], 3, ops, 2, NULL, 0, &pairs[0][0], 2, 2, 0) == SAL_EINVAL,
          "dy=2 accepted");
    pairs[1][2] = 1;
    CHECK(sal_net_create(&net, &shapes[0][0], 3, ops, 2, NULL, 0, &pairs[0][0], 2, 1, 0) == SAL_EINVAL
              && strstr(sal_last_error(), "arena"), "weights past the arena: %s", sal_last_error());
    ops[0].npair = 3;
    CHECK(sal_net_create(&net, &shapes[0][0], 3, ops, 2, NULL, 0, &pairs[0][0], 2, 3, 0) == SAL_EINVAL,
          "pairs past the table accepted");
    ops[0].npair = 2, ops[0].stride = 2;   /* output 3x3, buffer says 5x5 */
    CHECK(sal_net_create(&net, &shapes[0][0], 3, ops, 2, NULL, 0, &pairs[0][0], 2, 2, 0) == SAL_EINVAL
              && strstr(sal_last_error(), "out buffer"), "wrong out shape: %s", sal_last_error());
    ops[0].stride = 1;
    CHECK(sal_net_create(&net, &shapes[0][0], 2, ops, 1, NULL, 0, &pairs[0][0], 2, 2, 0) == SAL_EINVAL
              && strstr(sal_last_error(), "last op"), "no pool at the end: %s", sal_last_error());
    CHECK(sal_net_create(&net, &shapes[0][0], 3, ops, 2, NULL, 0, &pairs[0][0], 2, 2, 0) == SAL_OK,
          "valid program refused: %s", sal_last_error());
    float x[2 * 5 * 5] = {0}, w[2] = {1, 1}, lg[3];
    CHECK(sal_net_forward(net, lg, x, (sal_act){1, 2, 6, 5, SAL_NCHW}, w, w, 0, 0, 1.0) == SAL_EINVAL,
          "wrong input size accepted");
    CHECK(sal_net_forward(net, lg, x, (sal_act){1, 2, 5, 5, SAL_NCHW}, w, w, 0, 0, 1.0) == SAL_OK,
          "forward: %s", sal_last_error());
    float g[2] = {0}, dl[3] = {1, 1, 1};
    int64_t why = -2;
    CHECK(!sal_net_trainable(net, &why) && why == 0, "gather program trainable (why %lld)",
          (long long)why);
    CHECK(sal_net_backward(net, g, dl, w) == SAL_EINVAL && strstr(sal_last_error(), "op 0 (gather)"),
          "backward through a gather: %s", sal_last_error());
    sal_net_free(net);
}

/* the count of a training program: conv -> BN+ReLU -> pool -> linear */
static void net_count_case(void) {
    int64_t shapes[5][3];
    sal_op ops[4];
    conv_bn_pool_linear(shapes, ops);
    sal_net *net = NULL;
    CHECK(sal_net_create(&net, &shapes[0][0], 5, ops, 4, NULL, 0, NULL, 0, 146, 8) == SAL_OK,
          "create: %s", sal_last_error());
    if (!net) return;
    sal_count_row r[4];
    CHECK(sal_net_count(net, r) == SAL_OK, "count: %s", sal_last_error());
    CHECK(r[0].macs == 4 * 3 * 9 * 20 && r[0].params == 108 && r[0].bwd_macs == r[0].macs,
          "conv row: macs %lld params %g bwd %lld", (long long)r[0].macs, r[0].params,
          (long long)r[0].bwd_macs);
    CHECK(r[1].params == 8 && r[1].macs == 0, "bn row: params %g", r[1].params);
    CHECK(r[3].params == 30 && r[3].macs == 24 && r[3].bwd_macs == 48, "linear row");
    CHECK(sal_net_trainable(net, NULL), "training program refused for backward");
    sal_net_free(net);
    /* the same conv with a bias and a ReLU (the exported form): O more params, no backward */
    ops[0].p1 = 146, ops[0].relu = 1;
    CHECK(sal_net_create(&net, &shapes[0][0], 5, ops, 4, NULL, 0, NULL, 0, 150, 8) == SAL_OK,
          "create: %s", sal_last_error());
    if (!net) return;
    CHECK(sal_net_count(net, r) == SAL_OK && r[0].params == 112 && r[0].bwd_macs == 0,
          "conv with bias: params %g bwd %lld", r[0].params, (long long)r[0].bwd_macs);
    sal_net_free(net);
}

/* Backward shares gradient slots by liveness (net.c plan_grads).  Two programs of 1x1
 * convs on x (N=2, C=1, 2x2) with known gradients, dlogits = (1, -2) per sample:
 * (a) a residual chain: 1 = w0 x, 2 = w1 *1, 3 = 2 + 1 (res), 4 = pool 3, 5 = linear 4
 *     (weight (2, 1) = (a, b)): dL/d3 = (a - 2b)/4 everywhere, so dw1 = g sum(1),
 *     dw0 = g (w1 + 1) sum(x);
 * (b) a buffer read before its writer: 1 = pool 2 (2 not yet written), 2 = w x: buffer 2's
 *     gradient must start at zero, so dw = 0 (a slot no one zeroed would give garbage under
 *     ASan's malloc fill). */
static void net_grad_slots_case(void) {
    const float x[8] = {1, 2, 3, 4, -1, 0.5f, 2, -3}, dlogits[4] = {1, -2, 1, -2};
    sal_act xg = {2, 1, 2, 2, SAL_NCHW};
    {
        int64_t shapes[6][3] = {{1, 2, 2}, {1, 2, 2}, {1, 2, 2}, {1, 2, 2}, {1, 1, 1}, {2, 1, 1}};
        sal_op ops[5];
        memset(ops, 0, sizeof ops);
        ops[0] = op_of(SAL_OP_CONV, 0, 1);
        ops[0].o = 1, ops[0].k = 1, ops[0].stride = 1, ops[0].p0 = 0;
        ops[1] = op_of(SAL_OP_CONV, 1, 2);
        ops[1].o = 1, ops[1].k = 1, ops[1].stride = 1, ops[1].p0 = 1;
        ops[2] = op_of(SAL_OP_ADD, 2, 3);
        ops[2].res = 1;
        ops[3] = op_of(SAL_OP_POOL, 3, 4);
        ops[4] = op_of(SAL_OP_LINEAR, 4, 5);
        ops[4].o = 2, ops[4].p0 = 2, ops[4].p1 = 4;
        sal_net *net = NULL;
        CHECK(sal_net_create(&net, &shapes[0][0], 6, ops, 5, NULL, 0, NULL, 0, 6, 0) == SAL_OK,
              "create (a): %s", sal_last_error());
        if (!net) return;
        const float params[6] = {0.5f, -1.5f, 0.25f, 0.75f, 0, 0};
        float logits[4], grads[6] = {0};
        for (int rep = 0; rep < 2; rep++) {   /* twice: the slots are reused */
            memset(grads, 0, sizeof grads);
            CHECK(sal_net_forward(net, logits, x, xg, params, NULL, 1, 0, 0.0) == SAL_OK, "fwd (a)");
            CHECK(sal_net_backward(net, grads, dlogits, params) == SAL_OK, "bwd (a): %s", sal_last_error());
            const double g = (0.25 - 2 * 0.75) / 4, sx = 1 + 2 + 3 + 4 - 1 + 0.5 + 2 - 3;
            const double dw1 = g * 0.5 * sx, dw0 = g * (-1.5 + 1) * sx;
            CHECK(fabs(grads[1] - dw1) < 1e-5 && fabs(grads[0] - dw0) < 1e-5,
                  "residual chain: dw0 %g (want %g), dw1 %g (want %g)", grads[0], dw0, grads[1], dw1);
        }
        sal_net_free(net);
    }
    {
        int64_t shapes[4][3] = {{1, 2, 2}, {1, 1, 1}, {1, 2, 2}, {2, 1, 1}};
        sal_op ops[3];
        memset(ops, 0, sizeof ops);
        ops[0] = op_of(SAL_OP_POOL, 2, 1);
        ops[1] = op_of(SAL_OP_CONV, 0, 2);
        ops[1].o = 1, ops[1].k = 1, ops[1].stride = 1, ops[1].p0 = 0;
        ops[2] = op_of(SAL_OP_LINEAR, 1, 3);
        ops[2].o = 2, ops[2].p0 = 1, ops[2].p1 = 3;
        sal_net *net = NULL;
        if (sal_net_create(&net, &shapes[0][0], 4, ops, 3, NULL, 0, NULL, 0, 5, 0) != SAL_OK) return;  /* refused: fine */
        const float params[5] = {0.5f, 1, 1, 0, 0};
        float logits[4], grads[5] = {0};
        if (sal_net_forward(net, logits, x, xg, params, NULL, 1, 0, 0.0) == SAL_OK &&
            sal_net_backward(net, grads, dlogits, params) == SAL_OK)
            CHECK(grads[0] == 0.0f, "read before write: dw %g, want 0", grads[0]);
        sal_net_free(net);
    }
}

static void gather_cases(void) {
    sal_set_num_threads(2);
    /* sizes 1, odd, prime; flat extents around the tile widths (32, 96, 128); strides 1, 2, 3 */
    const int64_t hw[][2] = {{1, 1}, {2, 3}, {5, 5}, {7, 9}, {8, 8}, {13, 11}, {16, 16}, {31, 32}};
    for (size_t k = 0; k < sizeof hw / sizeof hw[0]; k++)
        for (int64_t S = 1; S <= 3; S++) {
            const int64_t N = rng_int(1, 4), C = rng_int(1, 19), O = rng_int(1, 17);
            gather_case(N, C, hw[k][0], hw[k][1], O, S, 0.7, (int)(k % 2), (int)(S % 3));
        }
    for (int m = 0; m < 3; m++) {
        gather_case(3, 16, 8, 8, 16, 1, 1.0, 1, m);
        gather_case(2, 16, 16, 16, 32, 2, 0.9, 1, m);
        gather_case(1, 5, 6, 6, 4, 1, 0.0, m == 1, m);   /* no pairs: the bias */
    }
    /* many tiles per thread: several tile blocks each, the last one partial */
    gather_case(4, 3, 32, 32, 5, 1, 0.7, 1, 1);
    gather_case(6, 2, 31, 33, 3, 2, 0.7, 0, 2);
    sal_set_num_threads(1);
    gather_case(5, 32, 9, 9, 24, 1, 0.5, 1, 1);
    gather_case(7, 1, 29, 30, 2, 3, 0.7, 1, 0);
    /* stride 3 on 3 x 3 inputs: one output per image and phase-plane rows of width 1, so
     * every position of a tile is a run of its own (a block holds 16 x 96 runs) */
    gather_case(900, 1, 3, 3, 2, 3, 1.0, 1, 1);
}

/* Every activation starts on a 64-byte boundary (the direct sparse-tap kernels read their
 * sources in place only then): per-sample sizes of 105 floats, batch 3, two buffers
 * sharing one checkpointed segment's allocation (the second at 3 x its offset) */
static void net_alignment_case(void) {
    int64_t shapes[6][3] = {{3, 5, 7}, {3, 5, 7}, {3, 5, 7}, {3, 5, 7}, {3, 1, 1}, {2, 1, 1}};
    sal_op ops[5];
    for (int i = 0; i < 3; i++) {
        ops[i] = op_of(SAL_OP_CONV, i, i + 1);
        ops[i].o = 3, ops[i].k = 3, ops[i].stride = 1, ops[i].pad = 1, ops[i].p0 = 81 * i;
    }
    ops[3] = op_of(SAL_OP_POOL, 3, 4);
    ops[4] = op_of(SAL_OP_LINEAR, 4, 5);
    ops[4].o = 2, ops[4].p0 = 243, ops[4].p1 = 249;
    sal_net *net = NULL;
    CHECK(sal_net_create(&net, &shapes[0][0], 6, ops, 5, NULL, 0, NULL, 0, 251, 0) == SAL_OK,
          "create: %s", sal_last_error());
    if (!net) return;
    const int64_t bounds[2] = {0, 3};
    CHECK(sal_net_set_checkpoints(net, bounds, 1) == SAL_OK, "checkpoints: %s", sal_last_error());
    float x[3 * 105], params[251], logits[6];
    for (int i = 0; i < 3 * 105; i++) x[i] = (float)((i * 37) % 11) - 5.0f;
    for (int i = 0; i < 251; i++) params[i] = (float)((i * 13) % 7) * 0.05f - 0.15f;
    const sal_act xg = {3, 3, 5, 7, SAL_NCHW};
    for (int train = 0; train < 2; train++) {
        CHECK(sal_net_forward(net, logits, x, xg, params, NULL, train, 0, 0.0) == SAL_OK,
              "forward: %s", sal_last_error());
        for (int64_t b = 0; b < 6; b++) {
            const float *a = NULL;
            sal_act g;
            CHECK(sal_net_buffer(net, b, &a, &g) == SAL_OK, "buffer %lld: %s", (long long)b,
                  sal_last_error());
            CHECK(a && (uintptr_t)a % 64 == 0, "train %d buffer %lld at %p: not 64-byte aligned",
                  train, (long long)b, (const void *)a);
        }
    }
    sal_net_free(net);
}

/* A batch smaller than the capacity gets the scratch it needs: the sparse-tap plans of 8
 * channels of 16x16 at stride 1 need more scratch for 7 images than for 8 (a plan splits
 * the batch by its size), so a forward of 7 after one of 8 overflowed the scratch sized
 * for 8 (caught by ASan; without it, it wrote over the caller's memory); a streamed
 * forward's last chunk likewise. */
static void net_scratch_case(void) {
    int64_t shapes[4][3] = {{8, 16, 16}, {8, 16, 16}, {8, 1, 1}, {2, 1, 1}};
    sal_op ops[3];
    ops[0] = op_of(SAL_OP_SAL, 0, 1);
    ops[0].o = 8, ops[0].k = 3, ops[0].stride = 1, ops[0].pad = 1, ops[0].p0 = 0;
    ops[0].p1 = 576, ops[0].b0 = 0, ops[0].b1 = 576;
    ops[1] = op_of(SAL_OP_POOL, 1, 2);
    ops[2] = op_of(SAL_OP_LINEAR, 2, 3);
    ops[2].o = 2, ops[2].p0 = 1152, ops[2].p1 = 1168;
    sal_net *net = NULL;
    CHECK(sal_net_create(&net, &shapes[0][0], 4, ops, 3, NULL, 0, NULL, 0, 1170, 577) == SAL_OK,
          "create: %s", sal_last_error());
    if (!net) return;
    static float x[8 * 8 * 256], params[1170], buffers[577];
    float logits[16];
    for (int i = 0; i < 8 * 8 * 256; i++) x[i] = (float)((i * 37) % 11) * 0.2f - 1.0f;
    for (int i = 0; i < 1170; i++) params[i] = (float)((i * 13) % 7) * 0.3f - 0.9f;
    for (int i = 0; i < 576; i++) buffers[i] = 1.0f;
    buffers[576] = 1e-7f;
    sal_set_num_threads(1);
    for (int64_t n = 8; n >= 1; n--) {
        const sal_act xg = {n, 8, 16, 16, SAL_NCHW};
        for (int train = 1; train >= 0; train--)
            CHECK(sal_net_forward(net, logits, x, xg, params, buffers, train, 0, 70.0) == SAL_OK,
                  "forward n=%lld train=%d: %s", (long long)n, train, sal_last_error());
    }
    CHECK(sal_net_set_streams(net, 8) == SAL_OK, "streams: %s", sal_last_error());
    const sal_act xg7 = {7, 8, 16, 16, SAL_NCHW};
    CHECK(sal_net_forward(net, logits, x, xg7, params, buffers, 0, 0, 70.0) == SAL_OK,
          "streamed forward: %s", sal_last_error());
    sal_set_num_threads(2);
    sal_net_free(net);
}

/* Gradients kept in activations backward no longer reads (net.c plan_grads, host_fit):
 * x (1, 4, 4) -> conv 3x3 -> conv 3x3 -> conv 3x3 (2 channels each) -> pool -> linear.  The
 * second conv's output gradient (2 x 16 floats per image) is born after the backward of
 * the pool and the linear, whose outputs' storage (16 floats each, side by side) it then
 * takes.  So backward overwrites the pool's output (checked, else the rest proves
 * nothing); sal_net_buffer after it gives every activation of the forward again, bit for
 * bit, and a second backward of the same forward the same gradients. */
static void net_hosted_grads_case(void) {
    int64_t shapes[6][3] = {{1, 4, 4}, {2, 4, 4}, {2, 4, 4}, {2, 4, 4}, {2, 1, 1}, {2, 1, 1}};
    sal_op ops[5];
    memset(ops, 0, sizeof ops);
    for (int i = 0; i < 3; i++) {
        ops[i] = op_of(SAL_OP_CONV, i, i + 1);
        ops[i].o = 2, ops[i].k = 3, ops[i].stride = 1, ops[i].pad = 1;
        ops[i].p0 = i == 0 ? 0 : 18 + 36 * (i - 1);
    }
    ops[3] = op_of(SAL_OP_POOL, 3, 4);
    ops[4] = op_of(SAL_OP_LINEAR, 4, 5);
    ops[4].o = 2, ops[4].p0 = 90, ops[4].p1 = 94;
    sal_net *net = NULL;
    CHECK(sal_net_create(&net, &shapes[0][0], 6, ops, 5, NULL, 0, NULL, 0, 96, 0) == SAL_OK,
          "create: %s", sal_last_error());
    if (!net) return;
    float x[3 * 16], params[96], logits[6], dl[6] = {1, -2, 0.5f, 3, -1, 0.25f};
    float g1[96], g2[96], saved[6][3 * 32];
    const float *at[6];
    for (int i = 0; i < 48; i++) x[i] = (float)((i * 37) % 11) * 0.2f - 1.0f;
    for (int i = 0; i < 96; i++) params[i] = (float)((i * 13) % 7) * 0.1f - 0.3f;
    const sal_act xg = {3, 1, 4, 4, SAL_NCHW};
    CHECK(sal_net_forward(net, logits, x, xg, params, NULL, 1, 0, 0.0) == SAL_OK, "forward: %s",
          sal_last_error());
    for (int64_t b = 0; b < 6; b++) {
        sal_act g;
        CHECK(sal_net_buffer(net, b, &at[b], &g) == SAL_OK, "buffer %lld", (long long)b);
        memcpy(saved[b], at[b], (size_t)(g.n * g.c * g.h * g.w) * sizeof(float));
    }
    memset(g1, 0, sizeof g1);
    CHECK(sal_net_backward(net, g1, dl, params) == SAL_OK, "backward: %s", sal_last_error());
    CHECK(memcmp(at[4], saved[4], 6 * sizeof(float)) != 0,
          "the pool's output is what the forward wrote: no gradient was kept in it");
    for (int64_t b = 0; b < 6; b++) {
        const float *a = NULL;
        sal_act g;
        CHECK(sal_net_buffer(net, b, &a, &g) == SAL_OK, "buffer %lld after backward: %s",
              (long long)b, sal_last_error());
        CHECK(a && memcmp(a, saved[b], (size_t)(g.n * g.c * g.h * g.w) * sizeof(float)) == 0,
              "buffer %lld after backward: not the forward's activations", (long long)b);
    }
    memset(g2, 0, sizeof g2);
    CHECK(sal_net_backward(net, g2, dl, params) == SAL_OK, "second backward: %s",
          sal_last_error());
    CHECK(memcmp(g1, g2, sizeof g1) == 0, "second backward of one forward: other gradients");
    memset(g2, 0, sizeof g2);   /* a third, without sal_net_buffer in between */
    CHECK(sal_net_backward(net, g2, dl, params) == SAL_OK, "third backward: %s",
          sal_last_error());
    CHECK(memcmp(g1, g2, sizeof g1) == 0, "third backward of one forward: other gradients");
    sal_net_free(net);
}

/* Replayed BN outputs (net.c plan_sharing): a chain of blocks on (2, 5, 5) images, 4
 * channels, conv 3x3 -> BN + ReLU (replayed, slot 0) -> conv 3x3 -> BN + ReLU + residual.
 * The block outputs 6 and 14 are replayed in slot 1; 10 is kept, since 14 is recomputed
 * from it; the stem's 2 is kept (two readers, no residual).  After a forward, training or
 * evaluation, and after a backward, every buffer sal_net_buffer gives is the forward's:
 * each BN + ReLU output against relu(bn(in) + res) in double from the kept input and
 * residual (batch statistics when training, running ones otherwise).  The slots are
 * shared: 4, 8 and 12 in one allocation, 6 and 14 in another. */
static void net_replay_case(void) {
    enum { NB = 17, NOPS = 16, C = 4, N = 3, HW = 25 };
    int64_t shapes[NB][3];
    for (int b = 0; b < NB; b++) shapes[b][0] = C, shapes[b][1] = 5, shapes[b][2] = 5;
    shapes[0][0] = 2;
    shapes[15][1] = shapes[15][2] = 1;
    shapes[16][0] = 3, shapes[16][1] = shapes[16][2] = 1;
    sal_op ops[NOPS];
    int64_t np = 0, nbuf = 0;
    for (int i = 0; i < 14; i += 2) {
        ops[i] = op_of(SAL_OP_CONV, i, i + 1);
        ops[i].o = C, ops[i].k = 3, ops[i].stride = 1, ops[i].pad = 1, ops[i].p0 = np;
        np += C * shapes[i][0] * 9;
        ops[i + 1] = op_of(SAL_OP_BN, i + 1, i + 2);
        ops[i + 1].relu = 1, ops[i + 1].p0 = np, ops[i + 1].p1 = np + C;
        ops[i + 1].b0 = nbuf, ops[i + 1].b1 = nbuf + C;
        np += 2 * C, nbuf += 2 * C;
    }
    ops[5].res = 2, ops[9].res = 6, ops[13].res = 10;
    ops[14] = op_of(SAL_OP_POOL, 14, 15);
    ops[15] = op_of(SAL_OP_LINEAR, 15, 16);
    ops[15].o = 3, ops[15].p0 = np, ops[15].p1 = np + 3 * C;
    np += 3 * C + 3;
    sal_net *net = NULL;
    CHECK(sal_net_create(&net, &shapes[0][0], NB, ops, NOPS, NULL, 0, NULL, 0, np, nbuf) == SAL_OK,
          "create: %s", sal_last_error());
    if (!net) return;
    float *params = malloc((size_t)np * 4), *grads = calloc((size_t)np, 4), *bufs = malloc((size_t)nbuf * 4);
    float x[N * 2 * HW], logits[N * 3], dl[N * 3];
    fill_uniform(params, np), fill_uniform(x, N * 2 * HW), fill_uniform(dl, N * 3);
    for (int i = 1; i < 14; i += 2)    /* running statistics: mean in [-1, 1], var in [0.5, 1.5] */
        for (int c = 0; c < C; c++)
            bufs[ops[i].b0 + c] = rng_uniform(), bufs[ops[i].b1 + c] = 1.0f + 0.5f * rng_uniform();
    const sal_act xg = {N, 2, 5, 5, SAL_NCHW};
    for (int round = 0; round < 3; round++) {   /* train forward, after its backward, eval forward */
        const int train = round < 2;
        if (round != 1)
            CHECK(sal_net_forward(net, logits, x, xg, params, bufs, train, 0, 1.0) == SAL_OK,
                  "forward: %s", sal_last_error());
        else
            CHECK(sal_net_backward(net, grads, dl, params) == SAL_OK, "backward: %s",
                  sal_last_error());
        for (int i = 1; i < 14; i += 2) {
            const sal_op *op = &ops[i];
            float in[C * N * HW], res[C * N * HW];
            const float *a = NULL, *y = NULL;
            sal_act g;
            CHECK(sal_net_buffer(net, op->in, &a, &g) == SAL_OK, "buffer: %s", sal_last_error());
            memcpy(in, a, sizeof in);
            if (op->res >= 0) {
                CHECK(sal_net_buffer(net, op->res, &a, &g) == SAL_OK, "buffer: %s", sal_last_error());
                memcpy(res, a, sizeof res);
            }
            CHECK(sal_net_buffer(net, op->out, &y, &g) == SAL_OK, "buffer: %s", sal_last_error());
            double worst = 0.0;
            for (int c = 0; c < C; c++) {          /* CNHW: channel c's N * HW values in a row */
                const float *xc = in + c * N * HW;
                double mean = bufs[op->b0 + c], var = bufs[op->b1 + c];
                if (train) {
                    double s1 = 0.0, s2 = 0.0;
                    for (int k = 0; k < N * HW; k++) s1 += xc[k];
                    mean = s1 / (N * HW);
                    for (int k = 0; k < N * HW; k++) s2 += (xc[k] - mean) * (xc[k] - mean);
                    var = s2 / (N * HW);
                }
                const double inv = 1.0 / sqrt(var + 1e-5);
                for (int k = 0; k < N * HW; k++) {
                    double v = (xc[k] - mean) * inv * params[op->p0 + c] + params[op->p1 + c];
                    if (op->res >= 0) v += res[c * N * HW + k];
                    v = v > 0.0 ? v : 0.0;
                    const double e = fabs(v - y[c * N * HW + k]);
                    if (e > worst) worst = e;
                }
            }
            CHECK(worst < 1e-4, "round %d: buffer %lld (BN op %d) off the forward's by %g", round,
                  (long long)op->out, i, worst);
        }
        const float *b4, *b8, *b6, *b14, *b10;
        sal_act g;
        sal_net_buffer(net, 4, &b4, &g), sal_net_buffer(net, 8, &b8, &g);
        sal_net_buffer(net, 6, &b6, &g), sal_net_buffer(net, 14, &b14, &g);
        sal_net_buffer(net, 10, &b10, &g);
        CHECK(b4 == b8 && b6 == b14 && b4 != b6 && b10 != b6 && b10 != b4,
              "round %d: the replay slots are not shared as planned", round);
    }
    free(params), free(grads), free(bufs);
    sal_net_free(net);
}

int main(void) {
    /* the GATHER kernels of every ISA this CPU runs (the dispatch table, capped) */
    const char *isas[] = {"base", "avx2", "avx512"};
    for (int k = 0; k < 3; k++)
        if (sal_set_isa(isas[k]) == SAL_OK) gather_cases();
    sal_set_isa(NULL);
    sal_set_num_threads(2);
    bad_programs();
    net_count_case();
    net_grad_slots_case();
    net_alignment_case();
    net_scratch_case();
    net_hosted_grads_case();
    net_replay_case();
    return check_done("test_net");
}
