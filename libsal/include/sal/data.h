/* Data: dataset parsers on in-memory byte buffers, seeded shuffling, and batch
 * preparation (normalisation + augmentation) from uint8 images.
 *
 * The parsers never touch files: the caller reads (and decompresses) the bytes and
 * adds the file name to the message of a failure.  They read only inside
 * [buf, buf + nbytes) and write only inside the output capacities they are given,
 * whatever the bytes say, so they can be fuzzed directly.  A malformed buffer gives
 * SAL_EFORMAT with a message saying what is wrong and where (record, byte offset).
 *
 * Randomness is counter-based: every draw is a pure function of (seed, epoch, ...),
 * so results do not depend on the thread count, the batch size or the batch order.
 */
#ifndef SAL_DATA_H
#define SAL_DATA_H

#include "sal/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- CIFAR binary records ------------------------------------------------------ */
/* A record is L label bytes then C*H*W = 3*32*32 pixel bytes (R, G, B planes, rows
 * top to bottom).  CIFAR-10: L = 1 (label < 10).  CIFAR-100: L = 2 (coarse < 20,
 * fine < 100).  No header: the record count is nbytes / (L + 3072). */
#define SAL_CIFAR_C 3
#define SAL_CIFAR_H 32
#define SAL_CIFAR_W 32
#define SAL_CIFAR_PIXELS 3072
#define SAL_CIFAR_MAX_LABELS 4

/* *n = number of records; SAL_EFORMAT when nbytes is 0 or not a multiple of the
 * record size (message gives the whole records and the leftover bytes). */
sal_status sal_cifar_count(size_t nbytes, int label_bytes, int64_t *n);

/* Parses N records into images (N, 3, 32, 32) and labels (N, L), label k of record i
 * at labels[i*L + k].  num_classes[k] (L entries) bounds label byte k: a label
 * >= num_classes[k] is SAL_EFORMAT naming the record and its byte offset.
 * images_cap and labels_cap are the capacities in elements of the two outputs;
 * they must hold N*3072 and N*L. */
sal_status sal_cifar_parse(const uint8_t *buf, size_t nbytes, int label_bytes,
                           const int *num_classes, uint8_t *images, size_t images_cap,
                           int32_t *labels, size_t labels_cap);

/* ---- IDX (MNIST / Fashion-MNIST) ---------------------------------------------- */
/* Big-endian: 2 zero bytes, a type byte (0x08 = unsigned byte, the only type read
 * here), a dimension count D, then D 32-bit sizes, then the data row-major.  The
 * data must fill the rest of the buffer exactly (truncated or trailing bytes are
 * SAL_EFORMAT). */
#define SAL_IDX_MAX_DIMS 4

typedef struct {
    int type;                         /* type byte, 0x08 */
    int ndim;                         /* D, 1 .. SAL_IDX_MAX_DIMS */
    int64_t dims[SAL_IDX_MAX_DIMS];   /* sizes, each >= 1 */
    int64_t count;                    /* product of the sizes (elements = bytes) */
    size_t offset;                    /* header size: data starts at buf + offset */
} sal_idx_info;

/* Reads and validates the header, and that the data size matches nbytes. */
sal_status sal_idx_header(const uint8_t *buf, size_t nbytes, sal_idx_info *info);
/* Header check, then copies the count data bytes to out (capacity out_cap bytes). */
sal_status sal_idx_parse_u8(const uint8_t *buf, size_t nbytes, sal_idx_info *info,
                            uint8_t *out, size_t out_cap);

/* ---- shuffling ------------------------------------------------------------------- */
/* perm (N) = a permutation of 0 .. N-1, a pure function of (N, seed, epoch)
 * (Fisher-Yates driven by a counter-based generator, unbiased bounded draws). */
sal_status sal_permutation(int64_t *perm, int64_t n, uint64_t seed, uint64_t epoch);

/* ---- batch preparation --------------------------------------------------------- */
/* Output pixel (b, c, y, x) of a batch, for source image i = index[b] of images
 * (Nsrc, C, H, W), uint8, with drawn (dy, dx, flip):
 *   x' = flip ? W-1-x : x
 *   v  = images[i, c, y + dy - pad, x' + dx - pad], or 0 outside the image
 *   out = (v / 255 - mean[c]) / std[c]                     (float32 arithmetic)
 * This is torchvision's RandomCrop(size=(H, W), padding=pad) on the raw image (zero
 * fill), then RandomHorizontalFlip, then ToTensor and Normalize: padded pixels
 * become (0 - mean) / std.  dy, dx are uniform in [0, 2*pad], flip is 0/1 with
 * p = 0.5 (always 0 when the flip option is off); with pad = 0 and no flip the
 * batch is only normalised.
 *
 * The draws for one sample are a pure function of (seed, epoch, index[b]): an image
 * gets the same augmentation within an epoch wherever it lands in the batches, and
 * a different one in another epoch. */
typedef struct {
    int64_t c, h, w;       /* C, H, W of the source images and of the output */
    const float *mean;     /* C values */
    const float *std;      /* C values, each finite and > 0 */
    int64_t pad;           /* random-crop zero padding P, 0 .. 1024 (0: no crop) */
    int flip;              /* 1: horizontal flip with p = 0.5 */
    uint64_t seed, epoch;  /* key of the augmentation draws */
    sal_layout layout;     /* of out: SAL_NCHW (B, C, H, W) or SAL_CNHW (C, B, H, W) */
} sal_batch_desc;

/* aug (B, 3) = (dy, dx, flip) drawn for samples index[0 .. B-1] (what sal_make_batch
 * uses; for tests and logging).  Index values are not range-checked here. */
sal_status sal_batch_augment(int32_t *aug, const int64_t *index, int64_t b,
                             const sal_batch_desc *d);

/* out (B, C, H, W) or (C, B, H, W) = normalised, augmented images[index[0 .. B-1]].
 * images (n_images, C, H, W) uint8; every index value must be in [0, n_images). */
sal_status sal_make_batch(float *out, const uint8_t *images, int64_t n_images,
                          const int64_t *index, int64_t b, const sal_batch_desc *d);

#ifdef __cplusplus
}
#endif
#endif
