/* Streamed evaluation forwards (sal/net.h "Streams"): a program with every frame-relevant
 * feature (a 1x1 CONV as the shifted-row GEMM, a SHIFT folded into the strided 1x1 after
 * it, a residual, GATHER, BN + ReLU, pool, linear) at batches 1, 4, 7 with chunks of 1, 2,
 * 3, auto and never, on 1 and 2 threads: the logits equal the whole-batch forward's, and
 * sal_net_buffer after a streamed forward gives the whole-batch activations; a trainable
 * program's backward after a streamed forward equals the one after a whole-batch forward;
 * bad chunk settings; an inference-only program still refuses backward.  Run under ASan
 * and UBSan by the sanitizer build (the frames and their liveness sharing). */
#include <string.h>

#include "check.h"
#include "programs.h"
#include "sal/core.h"
#include "sal/net.h"

enum { NB = 8, NOPS = 7, C = 5, H = 9, W = 7, E = 12, O2 = 6, G = 7, K = 3 };

static sal_net *mixed_program(float **wts, int64_t *nw, int32_t **pairs_out) {
    const int64_t H2 = (H - 1) / 2 + 1, W2 = (W - 1) / 2 + 1;
    int64_t shapes[NB][3] = {{C, H, W}, {E, H, W}, {E, H, W}, {O2, H2, W2}, {G, H2, W2},
                             {G, H2, W2}, {G, 1, 1}, {K, 1, 1}};
    static int32_t shifts[E][3];
    for (int c = 0; c < E; c++)
        shifts[c][0] = c, shifts[c][1] = c % 3 - 1, shifts[c][2] = (c / 3) % 3 - 1;
    int32_t *pairs = malloc((size_t)O2 * G * 16);
    int64_t np = 0;
    for (int o = 0; o < G; o++)
        for (int i = 0; i < O2; i++)
            if ((o + 2 * i) % 3) {
                int32_t *r = pairs + 4 * np++;
                r[0] = o, r[1] = i, r[2] = (int32_t)rng_int(-1, 1), r[3] = (int32_t)rng_int(-1, 1);
            }
    /* parameters: conv0 E*C + E bias, conv2 O2*E + O2 bias, gather np + G bias, BN gamma,
     * beta G each, linear K*G + K; buffers after them: running mean, var G each */
    int64_t at = 0;
    sal_op ops[NOPS];
    ops[0] = op_of(SAL_OP_CONV, 0, 1);
    ops[0].o = E, ops[0].k = 1, ops[0].stride = 1, ops[0].p0 = at, ops[0].p1 = at + E * C;
    ops[0].relu = 1;
    at += E * C + E;
    ops[1] = op_of(SAL_OP_SHIFT, 1, 2);
    ops[1].stride = 1, ops[1].ioff = 0;
    ops[2] = op_of(SAL_OP_CONV, 2, 3);
    ops[2].o = O2, ops[2].k = 1, ops[2].stride = 2, ops[2].p0 = at, ops[2].p1 = at + O2 * E;
    at += O2 * E + O2;
    ops[3] = op_of(SAL_OP_GATHER, 3, 4);
    ops[3].o = G, ops[3].stride = 1, ops[3].p0 = at, ops[3].p1 = at + np, ops[3].ioff = 0;
    ops[3].npair = np;
    at += np + G;
    ops[4] = op_of(SAL_OP_BN, 4, 5);
    ops[4].relu = 1, ops[4].p0 = at, ops[4].p1 = at + G;
    at += 2 * G;
    ops[5] = op_of(SAL_OP_POOL, 5, 6);
    ops[6] = op_of(SAL_OP_LINEAR, 6, 7);
    ops[6].o = K, ops[6].p0 = at, ops[6].p1 = at + K * G;
    at += K * G + K;
    ops[4].b0 = at, ops[4].b1 = at + G;   /* one arena as both params and buffers */
    *nw = at + 2 * G;
    *wts = malloc((size_t)*nw * sizeof(float));
    fill_uniform(*wts, *nw);
    for (int64_t g = 0; g < G; g++) (*wts)[at + G + g] = 0.5f + 0.5f * (float)g / G;  /* var > 0 */
    *pairs_out = pairs;
    sal_net *net = NULL;
    CHECK(sal_net_create(&net, &shapes[0][0], NB, ops, NOPS, &shifts[0][0], E, pairs, np, *nw,
                         *nw) == SAL_OK, "create: %s", sal_last_error());
    return net;
}

static void mixed(void) {
    float *wts;
    int64_t nw;
    int32_t *pairs;
    sal_net *net = mixed_program(&wts, &nw, &pairs);
    if (!net) return;
    enum { NMAX = 7 };
    float *x = malloc((size_t)NMAX * C * H * W * sizeof(float));
    fill_uniform(x, NMAX * C * H * W);
    float ref[NMAX * K], got[NMAX * K];
    float *keep[NB] = {0};
    const int64_t ns[3] = {1, 4, 7}, chunks[4] = {1, 2, 3, -1};
    for (int t = 1; t <= 2; t++) {
        sal_set_num_threads(t);
        for (int a = 0; a < 3; a++) {
            const int64_t n = ns[a];
            const sal_act xg = {n, C, H, W, SAL_NCHW};
            CHECK(sal_net_set_streams(net, 0) == SAL_OK, "never: %s", sal_last_error());
            CHECK(sal_net_forward(net, ref, x, xg, wts, wts, 0, 0, 1.0) == SAL_OK, "whole: %s",
                  sal_last_error());
            for (int64_t b = 0; b < NB; b++) {   /* the whole-batch activations */
                const float *act;
                sal_act g;
                CHECK(sal_net_buffer(net, b, &act, &g) == SAL_OK, "buffer: %s", sal_last_error());
                const size_t len = (size_t)(g.n * g.c * g.h * g.w);
                free(keep[b]);
                keep[b] = malloc(len * sizeof(float));
                memcpy(keep[b], act, len * sizeof(float));
            }
            for (int k = 0; k < 4; k++) {
                CHECK(sal_net_set_streams(net, chunks[k]) == SAL_OK, "set: %s", sal_last_error());
                memset(got, 0, sizeof got);
                CHECK(sal_net_forward(net, got, x, xg, wts, wts, 0, 0, 1.0) == SAL_OK,
                      "streams: %s", sal_last_error());
                CHECK(memcmp(got, ref, (size_t)(n * K) * sizeof(float)) == 0,
                      "threads %d n %lld chunk %lld: logits differ", t, (long long)n,
                      (long long)chunks[k]);
                CHECK(sal_net_last_batch(net) == n, "last batch %lld", (long long)sal_net_last_batch(net));
                for (int64_t b = 0; b < NB; b++) {
                    if (b == 2) continue;   /* the folded SHIFT's output: never written */
                    const float *act;
                    sal_act g;
                    CHECK(sal_net_buffer(net, b, &act, &g) == SAL_OK, "buffer: %s",
                          sal_last_error());
                    CHECK(g.n == n && memcmp(act, keep[b], (size_t)(g.n * g.c * g.h * g.w) *
                                                               sizeof(float)) == 0,
                          "threads %d n %lld chunk %lld: buffer %lld differs", t, (long long)n,
                          (long long)chunks[k], (long long)b);
                }
            }
        }
    }
    float g[1] = {0}, dl[NMAX * K] = {0};
    CHECK(sal_net_set_streams(net, 2) == SAL_OK, "set: %s", sal_last_error());
    CHECK(sal_net_forward(net, got, x, (sal_act){5, C, H, W, SAL_NCHW}, wts, wts, 0, 0, 1.0) == SAL_OK,
          "forward: %s", sal_last_error());
    CHECK(sal_net_backward(net, g, dl, wts) == SAL_EINVAL && strstr(sal_last_error(), "inference-only"),
          "backward of an exported program: %s", sal_last_error());
    CHECK(sal_net_set_streams(net, -2) == SAL_EINVAL && strstr(sal_last_error(), "chunk=-2"),
          "chunk -2: %s", sal_last_error());
    CHECK(sal_net_set_streams(NULL, 1) == SAL_EINVAL, "NULL net accepted");
    sal_set_num_threads(0);
    for (int64_t b = 0; b < NB; b++) free(keep[b]);
    sal_net_free(net);
    free(x), free(wts), free(pairs);
}

/* conv + BN + ReLU + pool + linear: backward after a streamed evaluation forward */
static void backward_after_streams(void) {
    int64_t shapes[5][3];
    sal_op ops[4];
    conv_bn_pool_linear(shapes, ops);
    sal_net *net = NULL;
    CHECK(sal_net_create(&net, &shapes[0][0], 5, ops, 4, NULL, 0, NULL, 0, 146, 8) == SAL_OK,
          "create: %s", sal_last_error());
    if (!net) return;
    enum { N = 5 };
    float params[146], bufs[8], x[N * 3 * 9 * 7], lg[N * 6], dl[N * 6];
    fill_uniform(params, 146);
    fill_uniform(x, N * 3 * 9 * 7);
    fill_uniform(dl, N * 6);
    for (int c = 0; c < 4; c++) bufs[c] = 0.1f * (float)c, bufs[4 + c] = 1.0f + 0.2f * (float)c;
    float g0[146], g1[146];
    for (int t = 1; t <= 2; t++) {
        sal_set_num_threads(t);
        for (int k = 0; k < 2; k++) {
            float *g = k ? g1 : g0;
            memset(g, 0, sizeof g0);
            CHECK(sal_net_set_streams(net, k ? 2 : 0) == SAL_OK, "set: %s", sal_last_error());
            CHECK(sal_net_forward(net, lg, x, (sal_act){N, 3, 9, 7, SAL_NCHW}, params, bufs, 0,
                                  0, 1.0) == SAL_OK, "forward: %s", sal_last_error());
            CHECK(sal_net_backward(net, g, dl, params) == SAL_OK, "backward: %s", sal_last_error());
        }
        CHECK(memcmp(g0, g1, sizeof g0) == 0, "threads %d: gradients after streams differ", t);
    }
    /* a set_checkpoints after a streamed forward leaves nothing to differentiate */
    CHECK(sal_net_forward(net, lg, x, (sal_act){N, 3, 9, 7, SAL_NCHW}, params, bufs, 0, 0, 1.0) == SAL_OK,
          "forward: %s", sal_last_error());
    CHECK(sal_net_set_checkpoints(net, NULL, 0) == SAL_OK, "checkpoints: %s", sal_last_error());
    CHECK(sal_net_backward(net, g0, dl, params) == SAL_EINVAL, "backward after checkpoints ran");
    sal_set_num_threads(0);
    sal_net_free(net);
}

/* a program that reads a buffer no earlier op wrote is refused at create (its forwards
 * would read memory no op wrote: garbage that differs between whole batch and streams) */
static void read_before_write(void) {
    int64_t shapes[4][3] = {{2, 5, 5}, {2, 5, 5}, {2, 5, 5}, {2, 1, 1}};
    sal_op ops[3] = {op_of(SAL_OP_ADD, 0, 1), op_of(SAL_OP_ADD, 1, 2), op_of(SAL_OP_POOL, 2, 3)};
    ops[0].res = 2;   /* buffer 2 is written only by op 1 */
    ops[1].res = 0;
    sal_net *net = NULL;
    CHECK(sal_net_create(&net, &shapes[0][0], 4, ops, 3, NULL, 0, NULL, 0, 0, 0) == SAL_EINVAL &&
              strstr(sal_last_error(), "op 0 (add): reads buffer 2 before any op writes it"),
          "read before write: %s", sal_last_error());
    ops[0].res = 0;
    CHECK(sal_net_create(&net, &shapes[0][0], 4, ops, 3, NULL, 0, NULL, 0, 0, 0) == SAL_OK,
          "valid program refused: %s", sal_last_error());
    sal_net_free(net);
}

int main(void) {
    read_before_write();
    mixed();
    backward_after_streams();
    if (check_failures) fprintf(stderr, "%d check(s) failed\n", check_failures);
    return check_failures ? 1 : 0;
}
