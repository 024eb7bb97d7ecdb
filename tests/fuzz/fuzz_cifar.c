/* libFuzzer target: sal_cifar_count and sal_cifar_parse (CIFAR-10/100 binary records).
 *
 * Input: a 14-byte header, then the file bytes.
 *   [0]      label_bytes selector: label_bytes = byte % 6 (0 and 5 are invalid)
 *   [1..4]   num_classes[k] = 0 (byte 0), 257 (byte 255) or byte + 1 (0 and 257 invalid)
 *   [5]      output capacities: 0 exact, 1 images one short, 2 labels one short, 3 + 64
 *   [6..13]  a raw size_t for sal_cifar_count alone (no buffer involved)
 *   [14..]   the records, copied to a heap block of exactly that size
 * Properties: no out-of-bounds access (ASan), no UB (UBSan); a status other than SAL_OK
 * leaves a message; SAL_OK only for a whole number of records with every label in
 * range and both capacities large enough, and then images and labels equal the bytes. */
#include "fuzz_input.h"
#include "sal/sal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size};
    const int lb = fuzz_u8(&in) % 6;
    int nc[SAL_CIFAR_MAX_LABELS];
    for (int k = 0; k < SAL_CIFAR_MAX_LABELS; k++) {
        const int b = fuzz_u8(&in);
        nc[k] = b == 0 ? 0 : b == 255 ? 257 : b + 1;
    }
    const int cap_mode = fuzz_u8(&in) % 4;
    const size_t probe = (size_t)fuzz_u64(&in, 8);
    const int lb_ok = lb >= 1 && lb <= SAL_CIFAR_MAX_LABELS;

    /* count alone, on an arbitrary size */
    int64_t n = -7;
    sal_status s = sal_cifar_count(probe, lb, &n);
    if (s == SAL_OK) {
        const size_t rec = (size_t)lb + SAL_CIFAR_PIXELS;
        FUZZ_ASSERT(lb_ok && probe > 0 && probe % rec == 0 && (size_t)n == probe / rec,
                    "count(%zu, %d) = %lld", probe, lb, (long long)n);
    } else {
        FUZZ_ASSERT(n == -7 && sal_last_error()[0] != '\0', "count failed but wrote n");
    }

    /* the parser on the rest */
    const size_t nbytes = in.n;
    uint8_t *buf = fuzz_dup(in.p, nbytes);
    int64_t count = 0;
    const int whole = sal_cifar_count(nbytes, lb, &count) == SAL_OK;
    size_t img_cap = whole ? (size_t)count * SAL_CIFAR_PIXELS : 1;
    size_t lab_cap = whole ? (size_t)count * (size_t)lb : 1;
    if (cap_mode == 1 && img_cap) img_cap--;
    if (cap_mode == 2 && lab_cap) lab_cap--;
    if (cap_mode == 3) { img_cap += 64; lab_cap += 64; }
    /* exact-size outputs: a write past the capacity is a heap-buffer-overflow */
    uint8_t *img = malloc(img_cap ? img_cap : 1);
    int32_t *lab = malloc((lab_cap ? lab_cap : 1) * sizeof *lab);
    s = sal_cifar_parse(buf, nbytes, lb, nc, img, img_cap, lab, lab_cap);
    if (s == SAL_OK) {
        FUZZ_ASSERT(lb_ok && whole && cap_mode != 1 && cap_mode != 2, "parse accepted lb=%d "
                    "nbytes=%zu cap_mode=%d", lb, nbytes, cap_mode);
        const size_t rec = (size_t)lb + SAL_CIFAR_PIXELS;
        for (int64_t i = 0; i < count; i++) {
            const uint8_t *r = buf + (size_t)i * rec;
            for (int k = 0; k < lb; k++) {
                FUZZ_ASSERT(nc[k] >= 1 && nc[k] <= 256 && r[k] < nc[k] &&
                                lab[i * lb + k] == r[k],
                            "record %lld label %d", (long long)i, k);
            }
            FUZZ_ASSERT(memcmp(img + (size_t)i * SAL_CIFAR_PIXELS, r + lb, SAL_CIFAR_PIXELS) == 0,
                        "record %lld pixels differ", (long long)i);
        }
    } else {
        FUZZ_ASSERT(s == SAL_EINVAL || s == SAL_EFORMAT || s == SAL_EOVERFLOW,
                    "status %d", (int)s);
        FUZZ_ASSERT(sal_last_error()[0] != '\0', "no message for status %d", (int)s);
    }
    free(img);
    free(lab);
    free(buf);
    return 0;
}
