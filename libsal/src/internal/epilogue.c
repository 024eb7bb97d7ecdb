/* The epilogue as a pass over a finished output (internal/epilogue.h). */
#include "internal/epilogue.h"

typedef struct {
    float *y;
    int64_t M;
    const float *bias, *res;
    int relu, res_post;
} epi_task;

static void epi_planes_run(void *p, int64_t lo, int64_t hi, int tid) {
    const epi_task *t = p;
    float *y = t->y;
    const int64_t M = t->M;
    for (int64_t o = lo; o < hi; o++)
        sal_epi_run(y + o * M, y + o * M, M, t->bias ? t->bias[o] : 0.0f,
                    t->res ? t->res + o * M : NULL, t->relu, t->res_post);
}

void sal_epilogue_planes(float *y, int64_t O, int64_t M, const float *bias, const float *res,
                         int relu, int res_post) {
    if (!bias && !res && !relu) return;
    epi_task t = {y, M, bias, res, relu, res_post};
    sal_parallel_for(O, sal_threads(), epi_planes_run, &t);
}
