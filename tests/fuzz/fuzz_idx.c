/* libFuzzer target: sal_idx_header and sal_idx_parse_u8 (IDX files, MNIST format).
 *
 * Input: one byte of options, then the file bytes (copied to a heap block of exactly
 * that size).  Options: bit 0-1 output capacity: 0 exact, 1 one short, 2 + 16, 3 none
 * (out=NULL).
 * Properties: no out-of-bounds access or UB; SAL_OK only when the header is a valid
 * unsigned-byte IDX header whose sizes multiply to exactly the bytes that follow it, and
 * then the output equals those bytes; a failure leaves a message. */
#include "fuzz_input.h"
#include "sal/sal.h"

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size};
    const int cap_mode = fuzz_u8(&in) & 3;
    const size_t nbytes = in.n;
    uint8_t *buf = fuzz_dup(in.p, nbytes);
    sal_idx_info info;
    sal_status s = sal_idx_header(buf, nbytes, &info);
    if (s == SAL_OK) {
        /* independent re-derivation of what the header says */
        FUZZ_ASSERT(nbytes >= 4 && buf[0] == 0 && buf[1] == 0 && buf[2] == 0x08, "magic");
        FUZZ_ASSERT(info.ndim == buf[3] && info.ndim >= 1 && info.ndim <= SAL_IDX_MAX_DIMS,
                    "ndim %d", info.ndim);
        FUZZ_ASSERT(info.offset == 4 + 4 * (size_t)info.ndim, "offset %zu", info.offset);
        unsigned __int128 prod = 1;
        for (int k = 0; k < info.ndim; k++) {
            FUZZ_ASSERT(info.dims[k] == be32(buf + 4 + 4 * k) && info.dims[k] >= 1, "dim %d", k);
            prod *= (uint64_t)info.dims[k];
        }
        FUZZ_ASSERT(prod == (unsigned __int128)info.count &&
                        (size_t)info.count == nbytes - info.offset,
                    "count %lld, %zu bytes", (long long)info.count, nbytes);
    } else {
        FUZZ_ASSERT(s == SAL_EFORMAT, "header status %d", (int)s);
        FUZZ_ASSERT(sal_last_error()[0] != '\0', "no message");
    }
    /* the parser, whatever the header said: it re-checks everything itself */
    size_t cap = s == SAL_OK ? (size_t)info.count : 0;
    if (cap_mode == 1 && cap) cap--;
    if (cap_mode == 2) cap += 16;
    uint8_t *out = cap_mode == 3 ? NULL : malloc(cap ? cap : 1);
    sal_idx_info info2;
    sal_status s2 = sal_idx_parse_u8(buf, nbytes, &info2, out, cap_mode == 3 ? 1u << 20 : cap);
    if (s2 == SAL_OK) {
        FUZZ_ASSERT(s == SAL_OK && (cap_mode == 0 || cap_mode == 2), "parse accepted, mode %d",
                    cap_mode);
        FUZZ_ASSERT(memcmp(out, buf + info2.offset, (size_t)info2.count) == 0, "data differ");
    } else {
        FUZZ_ASSERT(s != SAL_OK || cap_mode == 1 || cap_mode == 3,
                    "parse failed (%s) where the header was fine", sal_last_error());
    }
    free(out);
    free(buf);
    return 0;
}
