/* The round trip of one cache line between two threads, measured: the caller and a
 * second thread hand a counter back and forth N times.
 *
 *     cc -O2 -pthread bench/core_latency.c -o core_latency && ./core_latency
 *
 * prints nanoseconds per round trip.  On this 2-vCPU virtual machine it is not a constant:
 * in some minutes the two vCPUs sit on cores that share an L3 (50-160 ns), in others on
 * cores that do not (320-580 ns), as the host moves them.  Everything that hands data
 * from one thread to the other (a batch-1 forward split over 2 threads, the BN that reads
 * by channel what a convolution wrote by image) runs slower in the far placement, so
 * bench/run.py measures it before and after each of its timed workers. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#define N 100000

static _Alignas(64) atomic_long turn;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void *other(void *p) {
    (void)p;
    for (long i = 0; i < N; i++) {
        while (atomic_load_explicit(&turn, memory_order_acquire) != 2 * i + 1) {}
        atomic_store_explicit(&turn, 2 * i + 2, memory_order_release);
    }
    return NULL;
}

int main(void) {
    pthread_t th;
    if (pthread_create(&th, NULL, other, NULL) != 0) return 1;
    const double t0 = now();
    for (long i = 0; i < N; i++) {
        atomic_store_explicit(&turn, 2 * i + 1, memory_order_release);
        while (atomic_load_explicit(&turn, memory_order_acquire) != 2 * i + 2) {}
    }
    const double dt = now() - t0;
    pthread_join(th, NULL);
    printf("%.0f\n", dt / N * 1e9);
    return 0;
}
