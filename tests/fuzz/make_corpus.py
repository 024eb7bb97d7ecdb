"""Writes the seed corpus of the fuzz targets: tiny synthetic inputs (a few KB at most),
in the byte layouts the harnesses decode (see the comment at the top of each fuzz_*.c).

    python3 tests/fuzz/make_corpus.py        # rewrites tests/fuzz/corpus/<target>/seed_*

Inputs of crashes found by fuzzing live beside them as crash_* files and are kept."""
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "corpus"


def write(target, name, data):
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed_{name}").write_bytes(bytes(data))


def pixels(n, k=0):
    return bytes((i * 7 + k) % 256 for i in range(n))


# ---- cifar: [label_bytes sel, nc0..nc3 (nc = byte + 1), cap mode, probe u64 BE] + records
def cifar(lb, nc, cap, probe, body):
    ncb = [0 if v == 0 else 255 if v == 257 else v - 1 for v in (list(nc) + [1] * 4)[:4]]
    return bytes([lb] + ncb + [cap]) + struct.pack(">Q", probe) + body


rec10 = bytes([3]) + pixels(3072)
rec100 = bytes([19, 99]) + pixels(3072, 1)
write("cifar", "cifar10_one_record", cifar(1, [10], 0, 2 * 3073, rec10))
write("cifar", "cifar100_one_record", cifar(2, [20, 100], 3, 3074, rec100))
write("cifar", "cifar10_truncated", cifar(1, [10], 0, 3073 + 5, rec10[:2000]))
write("cifar", "cifar10_bad_label", cifar(1, [10], 0, 0, bytes([10]) + rec10[1:]))
write("cifar", "cifar10_small_capacity", cifar(1, [10], 1, 1, rec10))
write("cifar", "cifar_empty", cifar(1, [10], 0, 2**64 - 1, b""))


# ---- idx: [cap mode] + IDX bytes
def idx(dims, data, type_byte=0x08):
    return bytes([0, 0, type_byte, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + data


write("idx", "labels_1d", b"\x00" + idx([10], bytes(range(10))))
write("idx", "images_3d", b"\x02" + idx([2, 4, 4], pixels(32)))
write("idx", "images_4d", b"\x00" + idx([1, 2, 3, 4], pixels(24)))
write("idx", "truncated", b"\x00" + idx([2, 4, 4], pixels(20)))
write("idx", "trailing", b"\x00" + idx([3], pixels(5)))
write("idx", "float_type", b"\x00" + idx([2], pixels(8), 0x0D))
write("idx", "overflowing_dims", b"\x00" + idx([0xFFFFFFFF] * 4, b""))
write("idx", "header_cut", b"\x00" + idx([2, 4, 4], b"")[:9])


# ---- batch / conv: sizes as fuzz_size encodings
def small(v):      # sel >= 0x40: u16 % small
    return bytes([0x40]) + struct.pack(">H", v)


def raw(v):        # sel 0x20..0x3F: raw 64 bits
    return bytes([0x20]) + struct.pack(">q", v)


def num(v):        # fuzz_float, "reasonable" branch: byte / 64 - 2 (+ 2.5 for an even sel)
    k = round((v + 2.0) * 64)
    return bytes([0x41, k])


def rawf(f):       # fuzz_float, raw bits
    return bytes([0x00]) + struct.pack(">f", f)


def batch(b, c, h, w, n, pad, flip, layout, mean, std, index, seed=12345, epoch=1):
    out = b"".join(small(v) if 0 <= v < 4096 else raw(v) for v in (b, c, h, w, n, pad))
    out += bytes([flip, layout]) + struct.pack(">Q", seed) + struct.pack(">H", epoch)
    for m, s in zip(mean, std):
        out += (rawf(m) if abs(m) > 2 or m != m else num(m)) + b"\x00" + \
               (rawf(s) if abs(s) > 2 or s != s or s <= 0 else num(s))
    return out + b"".join(small(i) if 0 <= i < 4096 else raw(i) for i in index)


M3, S3 = [0.5, 0.25, 0.0], [0.25, 0.5, 1.0]
write("batch", "rgb_crop_flip", batch(2, 3, 8, 8, 3, 2, 1, 0, M3, S3, [2, 0]))
write("batch", "rgb_cnhw", batch(3, 3, 5, 7, 4, 1, 1, 1, M3, S3, [1, 3, 0]))
write("batch", "gray_no_aug", batch(1, 1, 6, 6, 1, 0, 0, 0, [0.25], [0.5], [0]))
write("batch", "std_nan", batch(1, 1, 4, 4, 2, 1, 0, 0, [0.0], [float("nan")], [1]))
write("batch", "std_zero", batch(1, 1, 4, 4, 2, 1, 0, 0, [0.0], [0.0], [1]))
write("batch", "pad_1025", batch(1, 1, 4, 4, 2, 1025, 0, 0, [0.0], [1.0], [0]))
write("batch", "index_out_of_range", batch(2, 1, 4, 4, 2, 1, 0, 0, [0.0], [1.0], [0, 2]))
write("batch", "index_negative", batch(1, 1, 4, 4, 2, 0, 0, 0, [0.0], [1.0], [-1]))
write("batch", "dims_overflow", batch(2**40, 1, 2**20, 2**20, 1, 0, 0, 0, [0.0], [1.0], [0]))


def conv(n, c, h, w, o, k, stride, pad, layout=0, vseed=7):
    return b"".join(small(v) if 0 <= v < 4096 else raw(v) for v in (n, c, h, w, o, k, stride, pad)) \
        + bytes([layout]) + struct.pack(">I", vseed)


write("conv", "3x3_pad1", conv(2, 3, 6, 6, 4, 3, 1, 1))
write("conv", "1x1_pointwise", conv(2, 3, 5, 5, 2, 1, 1, 0))
write("conv", "1x1_pointwise_cnhw", conv(3, 2, 4, 4, 2, 1, 1, 0, layout=1))
write("conv", "5x5_stride2_cnhw", conv(3, 2, 9, 7, 3, 5, 2, 2, layout=1))
write("conv", "kernel_too_big", conv(1, 1, 3, 3, 1, 6, 1, 1))
write("conv", "stride_huge", conv(1, 1, 4, 4, 1, 3, 2**63 - 1, 1))


# ---- net: [options] + nbuf, nops, nshift, npairs, nweights, shapes, op rows, shift rows,
# pair rows, every value a raw fuzz_size encoding.  Seeds are real programs (the training
# programs and the exports of tiny CL / SL / SAL / shared-SAL networks, 8x8 inputs) when
# salnp is importable, plus hand-made edge programs.
FIELDS = ("kind", "in", "out", "res", "relu", "res_post", "o", "k", "stride", "pad", "p0", "p1",
          "b0", "b1", "shared", "ioff", "npair", "index_bits")
KINDS = dict(conv=0, sal=1, gather=2, shift=3, ashift=4, bn=5, add=6, pool=7, linear=8)
PLUS1 = ("res", "p0", "p1", "b0", "b1", "ioff")    # decoded as (value - 1): -1 is 0


def op(kind, inp, out, **f):
    row = dict.fromkeys(FIELDS, 0)
    row.update(res=-1, p0=-1, p1=-1, b0=-1, b1=-1, ioff=-1)
    row.update(f, kind=KINDS[kind], **{"in": inp, "out": out})
    return [row[k] for k in FIELDS]


def net(opt, shapes, ops, shifts, pairs, nweights, segments=()):
    ops = [[v + 1 if FIELDS[j] in PLUS1 else v for j, v in enumerate(r)] for r in ops]
    shifts = [[r[0], r[1] + 1, r[2] + 1] for r in shifts]
    pairs = [[r[0], r[1], r[2] + 1, r[3] + 1] for r in pairs]
    vals = [len(shapes), len(ops), len(shifts), len(pairs), nweights]
    vals += [v for s in shapes for v in s] + [v for r in ops for v in r]
    vals += [v for r in shifts for v in r] + [v for r in pairs for v in r]
    if opt & 32:                  # checkpointed segments (first op, end op)
        vals += [len(segments)] + [v for seg in segments for v in seg]
    return bytes([opt]) + b"".join(raw(int(v)) for v in vals)


try:
    import salnp

    for name, layer, shared in (("cl", "cl", False), ("sl", "sl", False), ("sal", "sal", False),
                                ("sal_shared", "sal", True), ("asl", "asl", False)):
        m = salnp.models.resnet(8, 2, layer, shared=shared, num_classes=3, seed=1).eval()
        if layer == "sal":
            m.beta = 50.0
        for what, prog, nw in (("train", m.program, m.arena.params.size),
                               ("export", None, None)):
            if what == "export":
                inf = salnp.export(m)
                prog, nw = inf.program, inf.weights.size
            # the training program reads two arenas; the harness passes one of nweights, whose
            # values are no 0/1 mask: the SAL ops run without their masks
            nw = max(nw, m.arena.buffers.size) if what == "train" else nw
            rows = prog.table()
            rows[rows[:, FIELDS.index("kind")] == KINDS["sal"], FIELDS.index("b0")] = -1
            write("net", f"{what}_{name}", net(0x1E if what == "train" else 0x0E,
                                               prog.shapes((3, 8, 8)), rows.tolist(),
                                               prog.shift_table().tolist(),
                                               prog.pair_table().tolist(), nw))
            if what == "train":   # the same with each residual block checkpointed
                m.checkpointing = "blocks"
                segs = m.engine._checkpoints.tolist()
                write("net", f"{what}_{name}_checkpointed",
                      net(0x3E, prog.shapes((3, 8, 8)), rows.tolist(),
                          prog.shift_table().tolist(), prog.pair_table().tolist(), nw, segs))
except ImportError:     # salnp not built: the hand-made seeds below still cover every op
    pass

# conv 3x3 -> pool -> linear, 1 channel 4x4
CONV = op("conv", 0, 1, o=2, k=3, stride=1, pad=1, p0=0)
POOL = op("pool", 1, 2)
LIN = op("linear", 2, 3, o=3, p0=18, p1=24)
write("net", "conv_pool_linear", net(0x1F, [(1, 4, 4), (2, 4, 4), (2, 1, 1), (3, 1, 1)],
                                     [CONV, POOL, LIN], [], [], 29))
# shift (stride 2) -> gather -> pool
SH = op("shift", 0, 1, stride=2, ioff=0, index_bits=4)
GA = op("gather", 1, 2, relu=1, o=2, k=3, stride=1, pad=1, p0=0, p1=3, ioff=0, npair=3)
write("net", "shift_gather_pool", net(0x05, [(2, 5, 5), (2, 3, 3), (2, 3, 3), (2, 1, 1)],
                                      [SH, GA, op("pool", 2, 3)], [(1, -1, 1), (0, 1, 0)],
                                      [(0, 0, -1, 1), (0, 1, 0, 0), (1, 1, 1, -1)], 5))
# SAL (masked) -> BN+ReLU -> pool, trained
SAL = op("sal", 0, 1, o=2, stride=1, pad=1, p0=0, p1=36)
BN = op("bn", 1, 2, relu=1, p0=108, p1=110, b0=112, b1=114)
write("net", "sal_bn_pool_train", net(0x1B, [(2, 4, 4), (2, 4, 4), (2, 4, 4), (2, 1, 1)],
                                      [SAL, BN, op("pool", 2, 3)], [], [], 116))
# the overflow shapes the checked loader must refuse: p0 near INT64_MAX, ioff + npair
# wrapping, a huge stride in a gather (scratch size S*S), a buffer of 2**62 elements
write("net", "p0_overflow", net(0x00, [(1, 4, 4), (2, 4, 4), (2, 1, 1)],
                                [op("conv", 0, 1, o=2, k=3, stride=1, pad=1, p0=2**63 - 5), POOL],
                                [], [], 29))
write("net", "pairs_wrap", net(0x00, [(2, 3, 3), (2, 3, 3), (2, 1, 1)],
                               [op("gather", 0, 1, o=2, stride=1, p0=0, ioff=2**63 - 2, npair=4),
                                op("pool", 1, 2)], [], [(0, 0, 0, 0)] * 3, 5))
write("net", "gather_stride_huge", net(0x00, [(2, 3, 3), (2, 1, 1), (2, 1, 1)],
                                       [op("gather", 0, 1, o=2, stride=2**62, p0=0, ioff=0,
                                           npair=0), op("pool", 1, 2)], [], [(0, 0, 0, 0)] * 3, 5))
write("net", "buffer_2p62", net(0x00, [(1, 4, 4), (2**31, 2**31, 1), (2, 1, 1)],
                                [CONV, POOL], [], [], 29))
