/* libsal's threads: one small persistent pool of POSIX threads, no OpenMP.
 *
 * Why not OpenMP: GNU libgomp keeps its team threads across fork(), so a child forked
 * after a multi-threaded region waits forever in its first region; and its idle threads
 * spin (GOMP_SPINCOUNT) before they sleep, which steals a core from the other processes
 * of a shared machine.  Here:
 *   - idle workers sleep on a condition variable.  Before they do, a worker waiting for
 *     the next task and the caller waiting for its workers poll for at most SPIN_NS
 *     (SAL_SPIN_US overrides, 0 turns it off): waking a sleeping thread costs 40-70 us on
 *     a VM (measured: a 2-thread call with 1.6 us of work took 47 us, 1.9 us polling),
 *     more than many of the ops of a training step, which follow each other within
 *     microseconds.  A pool nobody calls is asleep within SPIN_NS, and no thread polls
 *     when a task has more threads than the process has CPUs;
 *   - a caller waking sleeping workers keeps them off its own CPU for that wake, and moves
 *     a polling worker that sits on its CPU (move_workers_away: the kernel of the 2-vCPU
 *     VM often woke the worker behind the caller, or the caller onto the worker's CPU, and
 *     a 2-thread call then ran at one thread's speed); no thread stays pinned;
 *   - pthread_atfork resets the pool in a forked child, which then starts new workers
 *     on its first parallel call (the parent's workers do not exist there);
 *   - one caller at a time owns the workers: a second thread that calls a parallel op
 *     meanwhile (or a task that calls one from inside the pool) runs its tasks itself,
 *     one after the other: correct, never a deadlock;
 *   - tasks never wait for one another (no barriers): an op that needs two phases makes
 *     two calls, so a preempted thread delays only the call it belongs to;
 *   - each thread of a call takes its own task id, then any id nobody took (run_claimed):
 *     a worker that wakes late (200 us after the whole VM was idle, measured) or not at
 *     all leaves its id to the caller instead of stalling it.  Results do not depend on
 *     which thread ran an id, only on the count nt.
 * BLIS is only ever called with one thread (internal/blas.c splits a large GEMM over
 * these workers), so no other thread runtime runs inside or beside ours. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal/internal.h"

#define POOL_MAX SAL_MAX_THREADS

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;   /* guards the fields below */
static pthread_cond_t work_cv = PTHREAD_COND_INITIALIZER;     /* workers wait for a task */
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;     /* the caller waits for them */
static pthread_mutex_t owner_mu = PTHREAD_MUTEX_INITIALIZER;  /* one caller owns the pool */
static int n_workers;             /* started workers (thread ids 1 .. n_workers) */
static atomic_ulong generation;   /* bumped for every task (under pool_mu; polled without) */
static atomic_int pending;        /* tasks of the current call not yet finished */
static int sleepers;              /* workers asleep on work_cv */
static sal_task_fn task_fn;
static void *task_ctx;
static int task_nt;
static int forks;                 /* child resets (for show_config/tests) */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static _Thread_local int in_task;  /* set while this thread runs a task */
static _Thread_local atomic_int *my_cpu;  /* a worker's entry of worker_cpu, NULL: caller */

/* ---- bounded polling before sleeping ---- */
#define SPIN_NS_DEFAULT 100000   /* 100 us */
static long spin_ns = -1;        /* -1: SAL_SPIN_US not read yet */
static int spin_cpus;            /* CPUs this process may run on, read with it */
static atomic_int spin_on;       /* the current task's threads fit the CPUs: poll */
static int wake_away = -1;       /* wake workers off the caller's CPU (SAL_WAKE_AWAY) */
static pthread_once_t spin_once = PTHREAD_ONCE_INIT;
static void spin_init(void) {
    const char *s = getenv("SAL_SPIN_US");
    long v = SPIN_NS_DEFAULT;
    if (s && *s) {
        char *end;
        long us = strtol(s, &end, 10);
        if (*end == '\0' && us >= 0 && us <= 100000) v = us * 1000;
    }
    spin_ns = v;
    spin_cpus = sal_cpu_count();
    const char *w = getenv("SAL_WAKE_AWAY");
    wake_away = !(w && w[0] == '0' && w[1] == '\0');
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Poll for at most spin_ns until a call newer than `seen` is posted (a waiting worker;
 * done = 0) or every task of the current call has finished (the caller; done = 1); true if
 * it happened.  Between rounds of 64 pauses the thread yields: another process's runnable
 * thread goes first. */
static bool spin_until(int done, unsigned long seen) {
    if (spin_ns <= 0 || !atomic_load_explicit(&spin_on, memory_order_relaxed)) return false;
    const int64_t end = now_ns() + spin_ns;
    for (;;) {
        if (my_cpu)   /* a polling worker says where it polls (move_workers_away) */
            atomic_store_explicit(my_cpu, sched_getcpu(), memory_order_relaxed);
        for (int i = 0; i < 64; i++) {
            if (done ? atomic_load_explicit(&pending, memory_order_acquire) == 0
                     : atomic_load_explicit(&generation, memory_order_acquire) != seen)
                return true;
            cpu_relax();
        }
        if (now_ns() > end) return false;
        sched_yield();
    }
}

typedef struct {
    int id;
    unsigned long seen;
} worker_arg;

/* taken[i] == g: task id i of call g has a thread.  Generations only grow, so an id whose
 * mark is older than the call is free, and a late worker holding an older call's fn finds
 * every id of a newer call marked with a larger generation: it takes nothing. */
static atomic_ulong taken[POOL_MAX];

static bool take(unsigned long gen, int i) {
    unsigned long v = atomic_load_explicit(&taken[i], memory_order_relaxed);
    while (v < gen)
        if (atomic_compare_exchange_weak_explicit(&taken[i], &v, gen, memory_order_acq_rel,
                                                  memory_order_relaxed))
            return true;
    return false;
}

/* Run the task ids of call `gen` nobody has taken, this thread's own id (self) first, then
 * any other.  The ids, not the threads, own the work and its scratch, so which thread runs
 * an id changes nothing in the results; a worker slow to wake costs nothing, the caller
 * runs its id; and in the common case every thread runs its own id, call after call, near
 * the data its id touched in the call before. */
static void run_claimed(unsigned long gen, sal_task_fn fn, void *ctx, int nt, int self) {
    for (int k = 0; k < nt; k++) {
        const int i = (self + k) % nt;
        if (!take(gen, i)) continue;
        fn(ctx, i, nt);
        if (atomic_fetch_sub_explicit(&pending, 1, memory_order_acq_rel) == 1 && self != 0) {
            pthread_mutex_lock(&pool_mu);   /* the caller checks pending under the lock */
            pthread_cond_signal(&done_cv);
            pthread_mutex_unlock(&pool_mu);
        }
    }
}

/* Keeping workers off their caller's CPU.  On the 2-vCPU VM the kernel often woke the
 * worker onto the CPU its caller was running on (after a pause of the process, while the
 * other vCPU stood idle): it then waits there behind the caller, which runs every task id
 * itself, and a batch-1 forward on 2 threads ran at one thread's speed (the worker got
 * 13-77 us of CPU per 400 us forward, /proc schedstat) for as long as the calls kept
 * coming.  So a caller that wakes sleeping workers first takes its own CPU out of their
 * CPU masks (when they have another CPU), which makes the kernel wake them elsewhere.
 * The same happened the other way: a caller that slept on done_cv was woken onto its
 * worker's CPU, and in the next call, made within the worker's polling time, both shared
 * one CPU (an exported CL forward at batch 8, 2 threads, right after another: 3.2 ms, one
 * thread's 3.0, against 2.1 for the first call after a pause, with the vCPUs apart).  So
 * a worker that polls publishes its CPU (worker_cpu, every round of its polling), and a
 * caller that may have been moved onto it (it slept in its last call, or runs on another
 * CPU than it ended that call on) and finds a polling worker on its own CPU takes that CPU
 * out of the worker's mask too: the kernel then moves it at once.  Each worker puts its
 * mask back as soon as it has the call: no thread stays pinned, a mask the user set is
 * kept (only the caller's CPU is left out, for microseconds).  SAL_WAKE_AWAY=0 turns both
 * off. */
static pid_t worker_tid[POOL_MAX];
static cpu_set_t worker_mask[POOL_MAX];      /* the mask to put back */
static atomic_int worker_moved[POOL_MAX];    /* 1: worker_mask to put back */
static int asleep[POOL_MAX];                 /* on work_cv (under pool_mu): no put-back due */
static atomic_int worker_cpu[POOL_MAX];      /* a polling worker's CPU, -1: not polling */
static int caller_slept;   /* the last call's caller slept on done_cv (under pool_mu) */
static int caller_cpu = -1;   /* the CPU the last call's caller ended on (under owner_mu) */

static void restore_mask(int id) {
    if (atomic_load_explicit(&worker_moved[id], memory_order_acquire) &&
        atomic_exchange(&worker_moved[id], 0))
        (void)sched_setaffinity(0, sizeof worker_mask[id], &worker_mask[id]);
}

/* under pool_mu, after posting a call: the masks of the workers that will run it without
 * the caller's CPU, for those asleep (about to be woken) and those polling on that CPU;
 * only a worker whose last put-back is done (worker_moved 0: an asleep one, or a polling
 * one that has put its mask back when it took its last call), so a narrowed mask is never
 * kept */
static void move_workers_away(int nt, int cpu, bool polling) {
    if (cpu < 0) return;
    for (int id = 1; id <= n_workers && id < nt; id++) {
        cpu_set_t m;
        const bool polling_here =
            polling && !asleep[id] &&
            atomic_load_explicit(&worker_cpu[id], memory_order_relaxed) == cpu;
        if (!(asleep[id] || polling_here) || worker_tid[id] == 0 ||
            atomic_load(&worker_moved[id]) ||
            sched_getaffinity(worker_tid[id], sizeof m, &m) != 0 || !CPU_ISSET(cpu, &m) ||
            CPU_COUNT(&m) < 2)
            continue;
        worker_mask[id] = m;
        CPU_CLR(cpu, &m);
        if (sched_setaffinity(worker_tid[id], sizeof m, &m) == 0)
            atomic_store_explicit(&worker_moved[id], 1, memory_order_release);
    }
}

static void *worker_main(void *p) {
    worker_arg *wa = p;
    const int id = wa->id;
    unsigned long seen = wa->seen;
    free(wa);
    in_task = 1;  /* everything a worker runs is inside a task */
    pthread_mutex_lock(&pool_mu);
    worker_tid[id] = gettid();
    pthread_mutex_unlock(&pool_mu);
    my_cpu = &worker_cpu[id];
    for (;;) {
        (void)spin_until(0, seen);
        pthread_mutex_lock(&pool_mu);
        atomic_store_explicit(&worker_cpu[id], -1, memory_order_relaxed);   /* not polling */
        while (atomic_load(&generation) == seen) {
            sleepers++, asleep[id] = 1;
            pthread_cond_wait(&work_cv, &pool_mu);
            sleepers--, asleep[id] = 0;
        }
        seen = atomic_load(&generation);
        const int nt = task_nt;
        sal_task_fn fn = task_fn;
        void *ctx = task_ctx;
        pthread_mutex_unlock(&pool_mu);
        restore_mask(id);
        if (id < nt) run_claimed(seen, fn, ctx, nt, id);   /* else not needed for this call */
    }
    return NULL;
}

/* fork: the parent holds pool_mu across fork(), so the child's copy of the pool is in a
 * consistent state; the child then forgets the workers (they do not exist there) and
 * starts new ones on demand.  The child's mutexes are made anew: a caller thread of the
 * parent that owned the pool does not exist in the child either. */
static void atfork_prepare(void) { pthread_mutex_lock(&pool_mu); }
static void atfork_parent(void) { pthread_mutex_unlock(&pool_mu); }
static void atfork_child(void) {
    pthread_mutex_init(&pool_mu, NULL);
    pthread_mutex_init(&owner_mu, NULL);
    pthread_cond_init(&work_cv, NULL);
    pthread_cond_init(&done_cv, NULL);
    n_workers = 0;
    sleepers = 0;
    caller_slept = 0;
    caller_cpu = -1;
    atomic_store(&pending, 0);
    for (int i = 0; i < POOL_MAX; i++) {
        atomic_store(&taken[i], 0);
        atomic_store(&worker_moved[i], 0);
        atomic_store(&worker_cpu[i], -1);
        worker_tid[i] = 0, asleep[i] = 0;
    }
    atomic_store(&generation, 0);
    task_fn = NULL;
    task_ctx = NULL;
    task_nt = 0;
    in_task = 0;
    forks++;
}
static void register_atfork(void) {
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* start workers until there are `want`; fewer when the system refuses threads */
static void grow(int want) {
    while (n_workers < want) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa) return;
        wa->id = n_workers + 1;
        wa->seen = atomic_load(&generation);
        atomic_store(&worker_cpu[wa->id], -1);   /* not polling yet */
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        pthread_t th;
        int rc = pthread_create(&th, &at, worker_main, wa);
        pthread_attr_destroy(&at);
        if (rc != 0) { free(wa); return; }
        n_workers++;
    }
}

static void run_serial(int nt, sal_task_fn fn, void *ctx) {
    const int was = in_task;
    in_task = 1;
    for (int i = 0; i < nt; i++) fn(ctx, i, nt);
    in_task = was;
}

void sal_parallel(int nt, sal_task_fn fn, void *ctx) {
    if (nt > POOL_MAX) nt = POOL_MAX;
    if (nt <= 1 || in_task || pthread_mutex_trylock(&owner_mu) != 0) {
        run_serial(nt < 1 ? 1 : nt, fn, ctx);
        return;
    }
    pthread_once(&atfork_once, register_atfork);
    pthread_once(&spin_once, spin_init);
    pthread_mutex_lock(&pool_mu);
    grow(nt - 1);
    task_fn = fn;
    task_ctx = ctx;
    task_nt = nt;
    /* more threads than CPUs: a polling thread would hold a CPU another one needs */
    const int run = n_workers + 1 < nt ? n_workers + 1 : nt;  /* threads that may take part */
    atomic_store_explicit(&spin_on, run <= spin_cpus, memory_order_relaxed);
    atomic_store(&pending, nt);
    const unsigned long gen = atomic_load(&generation) + 1;
    atomic_store_explicit(&generation, gen, memory_order_release);
    if (run > 1 && wake_away && run <= spin_cpus) {
        /* polling workers only when the caller may have been moved onto one: it slept in
         * its last call (and was woken), or it runs on another CPU than it ended on (a
         * check in every call measured 2 % slower batch-1 forwards) */
        const int cpu = sched_getcpu();
        const bool polling = caller_slept || cpu != caller_cpu;
        if (sleepers > 0 || polling) move_workers_away(nt, cpu, polling);
    }
    caller_slept = 0;
    if (run > 1 && sleepers > 0) pthread_cond_broadcast(&work_cv);
    pthread_mutex_unlock(&pool_mu);
    in_task = 1;
    run_claimed(gen, fn, ctx, nt, 0);   /* with the workers; every id a worker did not take */
    in_task = 0;
    if (!spin_until(1, 0)) {
        pthread_mutex_lock(&pool_mu);
        while (atomic_load(&pending) > 0) {
            pthread_cond_wait(&done_cv, &pool_mu);
            caller_slept = 1;
        }
        pthread_mutex_unlock(&pool_mu);
    }
    caller_cpu = sched_getcpu();
    pthread_mutex_unlock(&owner_mu);
}

int sal_serial_begin(void) {
    const int was = in_task;
    in_task = 1;
    return was;
}
void sal_serial_end(int was) { in_task = was; }

/* ---- parallel for: static contiguous blocks, like OpenMP's schedule(static) ---- */
typedef struct {
    int64_t n;
    sal_range_fn fn;
    void *ctx;
} range_task;

void sal_block(int64_t n, int tid, int nt, int64_t *lo, int64_t *hi) {
    const int64_t q = n / nt, r = n % nt;
    *lo = tid * q + (tid < r ? tid : r);
    *hi = *lo + q + (tid < r);
}

static void range_run(void *p, int tid, int nt) {
    const range_task *t = p;
    int64_t lo, hi;
    sal_block(t->n, tid, nt, &lo, &hi);
    if (lo < hi) t->fn(t->ctx, lo, hi, tid);
}

void sal_parallel_for(int64_t n, int nt, sal_range_fn fn, void *ctx) {
    if (n <= 0) return;
    if (nt > n) nt = (int)n;
    if (nt <= 1) {
        fn(ctx, 0, n, 0);
        return;
    }
    range_task t = {n, fn, ctx};
    sal_parallel(nt, range_run, &t);
}

/* ---- the thread count ---- */
static int user_threads;  /* 0: the default */

static int env_threads(const char *name) {
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    char *end;
    long v = strtol(s, &end, 10);
    while (*end == ' ') end++;
    if (*end != '\0' && *end != ',') return 0;  /* OMP_NUM_THREADS may be a list */
    return v >= 1 && v <= POOL_MAX ? (int)v : 0;
}

int sal_cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int c = CPU_COUNT(&set);
        if (c >= 1) return c;
    }
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    return c >= 1 ? (int)(c > POOL_MAX ? POOL_MAX : c) : 1;
}

/* read once per process (a forked child keeps its parent's answer) */
static int default_threads;
static pthread_once_t default_once = PTHREAD_ONCE_INIT;
static void default_init(void) {
    int v = env_threads("SAL_NUM_THREADS");
    if (!v) v = env_threads("OMP_NUM_THREADS");
    if (!v) v = sal_cpu_count();
    default_threads = v;
}
int sal_default_threads(void) {
    pthread_once(&default_once, default_init);
    return default_threads;
}

int sal_max_threads(void) {
    int c = 4 * sal_cpu_count();
    return c < POOL_MAX ? c : POOL_MAX;
}

void sal_set_num_threads(int n) {
    if (n > POOL_MAX) n = POOL_MAX;
    __atomic_store_n(&user_threads, n < 1 ? 0 : n, __ATOMIC_RELAXED);
}

int sal_get_num_threads(void) { return sal_threads(); }

int sal_threads(void) {
    int n = __atomic_load_n(&user_threads, __ATOMIC_RELAXED);
    return n > 0 ? n : sal_default_threads();
}

int sal_pool_workers(void) {
    pthread_mutex_lock(&pool_mu);
    int n = n_workers;
    pthread_mutex_unlock(&pool_mu);
    return n;
}

int sal_pool_forks(void) { return forks; }
