/* Scalar reference twins of the sparse-tap kernels (internal/taps.h), the copy path's and
 * the direct path's: plain loops over the positions, no tiles, no vectors.  They are the SAL_ISA_BASE entries of taps.c's
 * kernel table, and the tests compare the vector kernels with them (set_isa("base")). */
#include <string.h>

#include "internal/taps.h"

void sal_ref_taps_fwd(const taps_fwd_job *j) {
    const int64_t npos = j->npos;
    float *acc = j->tmp;
    for (int64_t k = j->k0; k < j->k1; k++) {
        memset(acc, 0, (size_t)npos * sizeof *acc);
        for (int64_t e = j->rowptr[k * j->nb]; e < j->rowptr[(k + 1) * j->nb]; e++) {
            const float *s = j->buf + j->off[e];
            const float w = j->w[e];
            for (int64_t p = 0; p < npos; p++) acc[p] += w * s[p];
        }
        float *d = j->dst + (k - j->k0) * j->dstride;
        const float *r = j->res ? j->res + (k - j->k0) * j->dstride : NULL;
        const float b = j->bias ? j->bias[k] : 0.0f;
        for (int64_t p = 0; p < npos; p++) {
            if (j->mode == TAPS_EPI_STORE) {
                d[p] = acc[p];
            } else if (j->mode == TAPS_EPI_ACC) {
                d[p] += acc[p];
            } else {
                float v = acc[p] + b;
                if (r && !j->res_post) v += r[p];
                if (j->relu) v = v > 0.0f ? v : 0.0f;
                if (r && j->res_post) v += r[p];
                d[p] = v;
            }
        }
    }
}

void sal_ref_taps_sddmm(const taps_sddmm_job *j) {
    for (int64_t k = j->k0; k < j->k1; k++)
        for (int64_t e = j->rowptr[k * j->nb]; e < j->rowptr[(k + 1) * j->nb]; e++) {
            float acc = 0.0f;
            for (int64_t m = 0; m < j->nimg; m++) {
                const float *dy = j->dy + k * j->dystride + m * j->dyis;
                const float *s = j->buf + j->off[e] + m * j->bis;
                for (int64_t p = 0; p < j->npos; p++) acc += dy[p] * s[p];
            }
            j->g[e] += acc;
        }
}

/* the value the direct kernels read for output (r, c) through an entry (off, q) */
static float tapd_src(const tapd_job *j, int64_t off, int q, int64_t r, int64_t c) {
    const int64_t dy = q / 3 - 1, dx = q % 3 - 1, y = r % j->h;
    if (y + dy < 0 || y + dy >= j->h || c + dx < 0 || c + dx >= j->w) return 0.0f;
    return j->src[off + r * j->w + c + dx];
}

void sal_ref_tapd_fwd(const tapd_job *j) {
    for (int64_t k = j->k0; k < j->k1; k++) {
        float *d = j->dst + (k - j->k0) * j->dstride;
        for (int64_t r = 0; r < j->nrows; r++)
            for (int64_t c = 0; c < j->w; c++) {
                float acc = 0.0f;
                for (int64_t e = j->rowptr[k]; e < j->rowptr[k + 1]; e++)
                    acc += j->wt[e] * tapd_src(j, j->off[e], j->tap[e], r, c);
                if (j->mode == TAPS_EPI_ACC) d[r * j->w + c] += acc;
                else d[r * j->w + c] = acc;
            }
    }
}

void sal_ref_tapd_sddmm(const tapd_job *j) {
    for (int64_t k = j->k0; k < j->k1; k++) {
        const float *dy = j->dy + (k - j->k0) * j->dystride;
        for (int64_t e = j->rowptr[k]; e < j->rowptr[k + 1]; e++) {
            float acc = 0.0f;
            for (int64_t r = 0; r < j->nrows; r++)
                for (int64_t c = 0; c < j->w; c++)
                    acc += dy[r * j->w + c] * tapd_src(j, j->off[e], j->tap[e], r, c);
            j->g[e] += acc;
        }
    }
}
