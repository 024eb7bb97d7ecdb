/* Private: index ranges of shifted, strided sampling (shift, active shift). */
#ifndef SAL_RANGE_H
#define SAL_RANGE_H

#include <stdint.h>

/* [*lo, *hi): the outputs Y in [0, Yo) whose source S*Y + off lies inside [0, H).
 * |off| must stay below 2^62 / S (callers clamp larger offsets first). */
static inline void sal_valid_range(int64_t off, int64_t S, int64_t H, int64_t Yo, int64_t *lo,
                                   int64_t *hi) {
    const int64_t a = -off;          /* need S*Y >= a */
    const int64_t b = H - 1 - off;   /* need S*Y <= b */
    *lo = a <= 0 ? 0 : (a - 1) / S + 1;   /* ceil(a / S); a + S - 1 overflowed for S near 2^63 */
    *hi = b < 0 ? 0 : b / S + 1;
    if (*hi > Yo) *hi = Yo;
    if (*lo > *hi) *lo = *hi;
}

/* Offsets beyond [-(S*(Yo-1)) - 2, H + 1] sample only zeros (so do their +1 neighbours):
 * clamping to that interval changes no result and keeps the index arithmetic small. */
static inline int64_t sal_clamp_offset(int64_t off, int64_t S, int64_t H, int64_t Yo) {
    const int64_t lo = -(S * (Yo - 1)) - 2, hi = H + 1;
    return off < lo ? lo : (off > hi ? hi : off);
}

/* One plane of the integer shift (shift.c; active_shift.c reuses it for integer offsets):
 * y (Ho,Wo)[Y,X] = x (H,W)[S*Y + oy, S*X + ox], 0 outside; oy, ox already clamped. */
void sal_shift_plane(float *y, const float *x, int64_t oy, int64_t ox, int64_t S, int64_t H,
                     int64_t W, int64_t Ho, int64_t Wo);

#endif
