/* The epilogue of the ops that write an exported layer's output (sal/net.h): + bias, + a
 * residual before or after the ReLU, ReLU.  epi_run is inlined into the kernels that fuse
 * it (GATHER); sal_epilogue_planes runs it as a pass over a finished output. */
#ifndef SAL_EPILOGUE_H
#define SAL_EPILOGUE_H

#include "internal/internal.h"

/* y (m) = epi(acc (m)): + b, + res before (res_post 0) or after (1) the ReLU; y may be acc */
static inline __attribute__((always_inline)) void sal_epi_run(float *y, const float *acc,
                                                              int64_t m, float b,
                                                              const float *res, int relu,
                                                              int res_post) {
    if (!res) {
        if (relu) for (int64_t j = 0; j < m; j++) { float v = acc[j] + b; y[j] = v > 0.0f ? v : 0.0f; }
        else for (int64_t j = 0; j < m; j++) y[j] = acc[j] + b;
    } else if (!res_post) {
        if (relu) for (int64_t j = 0; j < m; j++) { float v = acc[j] + b + res[j]; y[j] = v > 0.0f ? v : 0.0f; }
        else for (int64_t j = 0; j < m; j++) y[j] = acc[j] + b + res[j];
    } else {
        if (relu) for (int64_t j = 0; j < m; j++) { float v = acc[j] + b; y[j] = (v > 0.0f ? v : 0.0f) + res[j]; }
        else for (int64_t j = 0; j < m; j++) y[j] = acc[j] + b + res[j];
    }
}

/* in place over y (O, M) (channel-major: M = N*H*W per channel), bias (O) or NULL,
 * res (O, M) or NULL; nothing to do (no bias, residual or ReLU) returns at once */
void sal_epilogue_planes(float *y, int64_t O, int64_t M, const float *bias, const float *res,
                         int relu, int res_post);

#endif
