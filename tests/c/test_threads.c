/* One network, several threads (sal/net.h, "Threads"): a forward (or
 * backward) that starts while another runs on the same network is refused with
 * SAL_EINVAL and a message, never run on the shared buffers.  Every call that runs gives
 * the sequential result for its batch; none crashes (ctest runs this under ASan/UBSan).
 * Before the busy flag, two threads with different batch sizes freed each other's
 * buffers (segfault or a glibc abort) and with equal sizes about 1 output in 10 was wrong. */
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "programs.h"
#include "sal/net.h"

enum { C = 3, H = 6, W = 6, O = 4, NT = 4, ROUNDS = 300, MAXN = 5 };

static sal_net *inet;
static float wts[O * C * 9 + O + O * C + O];
static float xs[MAXN][MAXN * C * H * W];
static float ref[MAXN][MAXN * O];
static int ran[NT], refused[NT], wrong[NT], other[NT];


static void *worker(void *arg) {
    const int t = (int)(intptr_t)arg;
    float logits[MAXN * O];
    for (int r = 0; r < ROUNDS; r++) {
        const int n = 1 + (t + r) % MAXN;
        sal_status s = sal_net_forward(inet, logits, xs[n - 1], (sal_act){n, C, H, W, SAL_NCHW}, wts, wts, 0, 0, 1.0);
        if (s == SAL_OK) {
            ran[t]++;
            if (memcmp(logits, ref[n - 1], sizeof(float) * (size_t)(n * O)) != 0) wrong[t]++;
        } else if (s == SAL_EINVAL && strstr(sal_last_error(), "another forward")) {
            refused[t]++;
        } else {
            other[t]++;
        }
    }
    return NULL;
}

static void test_infer_shared(void) {
    /* conv 3x3 (C -> O) + bias, ReLU; pool */
    int64_t shapes[3][3] = {{C, H, W}, {O, H, W}, {O, 1, 1}};
    sal_op ops[2] = {op_of(SAL_OP_CONV, 0, 1), op_of(SAL_OP_POOL, 1, 2)};
    ops[0].o = O, ops[0].k = 3, ops[0].stride = 1, ops[0].pad = 1, ops[0].p0 = 0;
    ops[0].p1 = O * C * 9, ops[0].relu = 1;
    fill_uniform(wts, (int64_t)(sizeof wts / sizeof *wts));
    const int64_t nw = (int64_t)(sizeof wts / sizeof *wts);
    CHECK(sal_net_create(&inet, &shapes[0][0], 3, ops, 2, NULL, 0, NULL, 0, nw, nw) == SAL_OK,
          "create: %s", sal_last_error());
    if (!inet) return;
    for (int n = 1; n <= MAXN; n++) {
        fill_uniform(xs[n - 1], n * C * H * W);
        CHECK(sal_net_forward(inet, ref[n - 1], xs[n - 1], (sal_act){n, C, H, W, SAL_NCHW}, wts, wts, 0, 0, 1.0) == SAL_OK,
              "reference n=%d: %s", n, sal_last_error());
    }
    pthread_t th[NT];
    for (int t = 0; t < NT; t++) pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t);
    int tot_ran = 0, tot_ref = 0;
    for (int t = 0; t < NT; t++) {
        pthread_join(th[t], NULL);
        CHECK(wrong[t] == 0, "thread %d: %d wrong outputs of %d", t, wrong[t], ran[t]);
        CHECK(other[t] == 0, "thread %d: %d calls failed otherwise", t, other[t]);
        tot_ran += ran[t], tot_ref += refused[t];
    }
    CHECK(tot_ran + tot_ref == NT * ROUNDS && tot_ran > 0, "ran %d refused %d", tot_ran, tot_ref);
    printf("test_threads: infer: %d forwards ran, %d refused as concurrent\n", tot_ran, tot_ref);
    /* the network is intact afterwards */
    float logits[MAXN * O];
    CHECK(sal_net_forward(inet, logits, xs[2], (sal_act){3, C, H, W, SAL_NCHW}, wts, wts, 0, 0, 1.0) == SAL_OK &&
              memcmp(logits, ref[2], sizeof(float) * 3 * O) == 0, "after: %s", sal_last_error());
    sal_net_free(inet);
}

/* the training network: conv -> BN+ReLU -> pool -> linear (eval-mode forwards share it) */
static sal_net *tnet;
static float tparams[146], tbuf[8], tgrads[4][146];
static float tref[MAXN][MAXN * 6];
static float txs[MAXN][MAXN * 3 * 9 * 7];

static void *net_worker(void *arg) {
    const int t = (int)(intptr_t)arg;
    float logits[MAXN * 6], dl[MAXN * 6];
    for (int i = 0; i < MAXN * 6; i++) dl[i] = 0.01f * (float)(i % 5);
    for (int r = 0; r < ROUNDS; r++) {
        const int n = 1 + (t + r) % MAXN;
        sal_status s = sal_net_forward(tnet, logits, txs[n - 1], (sal_act){n, 3, 9, 7, SAL_NCHW},
                                       tparams, tbuf, 0, 0, 1.0);
        if (s == SAL_OK) {
            ran[t]++;
            if (memcmp(logits, tref[n - 1], sizeof(float) * (size_t)(n * 6)) != 0) wrong[t]++;
        } else if (s == SAL_EINVAL && strstr(sal_last_error(), "another forward or backward")) {
            refused[t]++;
        } else {
            other[t]++;
        }
        /* a backward racing the forwards: runs on a consistent batch or is refused */
        s = sal_net_backward(tnet, tgrads[t], dl, tparams);
        if (s != SAL_OK && !strstr(sal_last_error(), "another forward or backward") &&
            !strstr(sal_last_error(), "no forward pass"))
            other[t]++;
    }
    return NULL;
}

static void test_net_shared(void) {
    int64_t shapes[5][3];
    sal_op ops[4];
    conv_bn_pool_linear(shapes, ops);
    CHECK(sal_net_create(&tnet, &shapes[0][0], 5, ops, 4, NULL, 0, NULL, 0, 146, 8) == SAL_OK,
          "create: %s", sal_last_error());
    if (!tnet) return;
    fill_uniform(tparams, 146);
    for (int c = 0; c < 4; c++) tbuf[c] = 0.1f * (float)c, tbuf[4 + c] = 1.0f + 0.5f * (float)c;
    CHECK(sal_net_backward(tnet, tgrads[0], tref[0], tparams) == SAL_EINVAL,
          "backward before any forward accepted");
    for (int n = 1; n <= MAXN; n++) {
        fill_uniform(txs[n - 1], n * 3 * 9 * 7);
        CHECK(sal_net_forward(tnet, tref[n - 1], txs[n - 1], (sal_act){n, 3, 9, 7, SAL_NCHW}, tparams,
                              tbuf, 0, 0, 1.0) == SAL_OK, "reference n=%d: %s", n, sal_last_error());
    }
    memset(ran, 0, sizeof ran), memset(refused, 0, sizeof refused);
    memset(wrong, 0, sizeof wrong), memset(other, 0, sizeof other);
    pthread_t th[NT];
    for (int t = 0; t < NT; t++) pthread_create(&th[t], NULL, net_worker, (void *)(intptr_t)t);
    int tot_ran = 0, tot_ref = 0;
    for (int t = 0; t < NT; t++) {
        pthread_join(th[t], NULL);
        CHECK(wrong[t] == 0, "net thread %d: %d wrong outputs of %d", t, wrong[t], ran[t]);
        CHECK(other[t] == 0, "net thread %d: %d calls failed otherwise", t, other[t]);
        tot_ran += ran[t], tot_ref += refused[t];
    }
    CHECK(tot_ran > 0, "no net forward ran");
    printf("test_threads: net: %d forwards ran, %d refused as concurrent\n", tot_ran, tot_ref);
    /* a forward that fails (here: a bad input shape) leaves no forward to differentiate */
    float lg[6];
    CHECK(sal_net_forward(tnet, lg, txs[0], (sal_act){1, 3, 9, 8, SAL_NCHW}, tparams, tbuf, 0, 0,
                          1.0) == SAL_EINVAL, "bad shape accepted");
    sal_net_free(tnet);
}

/* ---- the pool itself (internal/pool.c): every task of a call has run, once, when the call
 * returns, whether the workers were polling (back-to-back calls), asleep (after a pause
 * longer than the polling) or more than the CPUs (no polling); nested calls run serially */
typedef void (*task_fn)(void *ctx, int tid, int nt);
void sal_parallel(int nt, task_fn fn, void *ctx);   /* internal/internal.h */

typedef struct {
    int round, nested;
    int seen[16];
    int count[16];
} pool_ctx;

static void pool_inner(void *p, int tid, int nt) {
    pool_ctx *c = p;
    c->nested++;   /* serial inside a task (tid 0 runs all three): no race */
}

static void pool_task(void *p, int tid, int nt) {
    pool_ctx *c = p;
    c->seen[tid] = c->round;
    c->count[tid]++;
    if (tid == 0 && c->round % 97 == 0) sal_parallel(3, pool_inner, c);
}

static void test_pool(void) {
    pool_ctx c;
    memset(&c, 0, sizeof c);
    int total[16] = {0}, nested = 0;
    for (int r = 1; r <= 3000; r++) {
        const int nt = 1 + r % 6;   /* up to 6 threads: more than the CPUs of a small machine */
        c.round = r;
        sal_parallel(nt, pool_task, &c);
        for (int t = 0; t < nt; t++) {
            total[t]++;
            CHECK(c.seen[t] == r, "round %d: task %d of %d had not run when the call returned", r,
                  t, nt);
        }
        if (r % 97 == 0) nested += 3;
        if (r % 500 == 0) {   /* longer than the polling: the workers fall asleep */
            struct timespec ts = {0, 2000000};
            nanosleep(&ts, NULL);
        }
    }
    for (int t = 0; t < 6; t++)
        CHECK(c.count[t] == total[t], "task %d ran %d times, want %d", t, c.count[t], total[t]);
    CHECK(c.nested == nested, "nested calls ran %d tasks, want %d", c.nested, nested);
}

int main(void) {
    test_pool();
    test_infer_shared();
    test_net_shared();
    if (check_failures) fprintf(stderr, "test_threads: %d failure(s)\n", check_failures);
    return check_failures != 0;
}
