"""PyTorch ResNets written the fastest way PyTorch allows, for bench/run.py.

Same architecture and the same parameter and buffer names as the test twins
(tests/torch_ref.py), so ``load_salnp(model, net)`` copies a salnp network's state in and
the results can be checked against salnp before timing.  What differs from the twins:
- no instrumentation (the twins' relu records min |x| for the tests: one reduction per call);
- SAL: the softmax of the attention and the weight product only (the all-ones mask is
  skipped);
- SL: the shift is either a depthwise 3x3 convolution with one-hot kernels ("onehot") or
  slicing into a preallocated tensor with the channels *grouped by offset* ("slab"): the
  expansion's channels are permuted once (conv1 rows, BN, conv2 columns: the same
  function), so a layer's shift is 9 slab copies instead of one sliver per channel;
- ASL (Jeon & Kim's pre-activation ASNet, layer "asl", and salnp's post-activation
  "asl-post"): bilinear interpolation as a depthwise 3x3 convolution whose kernel is built from the
  offsets (exact and differentiable for |offset| <= 1, which holds at initialisation and
  for the small offsets ASL learns with its lr x 0.01; larger offsets would need
  grid_sample, which is slower);
- in-place ReLU where autograd allows it.
"""
import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as F


class SALConv(tnn.Module):
    def __init__(self, cin, cout, stride, shared, beta_ref):
        super().__init__()
        self.weight = tnn.Parameter(torch.empty(cout, cin, 3, 3))
        tnn.init.kaiming_normal_(self.weight)
        self.logits = tnn.Parameter(torch.rand(1 if shared else cout, cin, 9))
        self.register_buffer("mask", torch.ones(1 if shared else cout, cin, 9))
        self.stride, self.beta_ref = stride, beta_ref

    def forward(self, x):
        a = self.logits
        p = torch.softmax(a * (self.beta_ref[0] / a.std(-1, keepdim=True)), -1)
        w = self.weight * p.view(p.shape[0], p.shape[1], 3, 3)
        return F.conv2d(x, w, stride=self.stride, padding=1)


def grouped_order(off):
    """A permutation of the channels that makes equal offsets contiguous, and the slabs
    [(c0, c1, dy, dx)] of the permuted order."""
    off = np.asarray(off)
    keys = [(int(a), int(b)) for a, b in off]
    perm = sorted(range(len(keys)), key=lambda i: (keys[i], i))
    slabs, c0 = [], 0
    while c0 < len(perm):
        k = keys[perm[c0]]
        c1 = c0
        while c1 < len(perm) and keys[perm[c1]] == k:
            c1 += 1
        slabs.append((c0, c1, k[0], k[1]))
        c0 = c1
    return np.array(perm), slabs


class Shift(tnn.Module):
    """y[n,c,Y,X] = x[n,c,Y+dy_c,X+dx_c], zero outside."""

    def __init__(self, off, how="slab"):
        super().__init__()
        self.register_buffer("offsets", torch.tensor(np.asarray(off), dtype=torch.int32))
        self.how = how
        self._prepare()

    def _prepare(self):
        off = self.offsets.numpy()
        c = len(off)
        k = torch.zeros(c, 1, 3, 3)
        for i, (dy, dx) in enumerate(off):
            k[i, 0, 1 + int(dy), 1 + int(dx)] = 1.0
        self.onehot = k
        _, self.slabs = grouped_order(off)
        self.contiguous_groups = all(
            (off[c0:c1] == off[c0]).all() for c0, c1, _, _ in self.slabs)

    def forward(self, x):
        if self.how == "onehot":
            k = self.onehot
            if x.is_contiguous(memory_format=torch.channels_last):
                k = k.contiguous(memory_format=torch.channels_last)
            return F.conv2d(x, k, padding=1, groups=x.shape[1])
        assert self.contiguous_groups, "slab shift needs channels grouped by offset"
        n, c, h, w = x.shape
        y = torch.zeros_like(x)
        for c0, c1, dy, dx in self.slabs:
            ys, ye = max(0, -dy), min(h, h - dy)
            xs, xe = max(0, -dx), min(w, w - dx)
            if ys < ye and xs < xe:
                y[:, c0:c1, ys:ye, xs:xe] = x[:, c0:c1, ys + dy:ye + dy, xs + dx:xe + dx]
        return y


class ActiveShift(tnn.Module):
    """Bilinear shift by (a_c, b_c) as a depthwise 3x3 conv (|a|, |b| <= 1); with a stride
    the conv's stride samples at (s*Y + a, s*X + b), as Jeon & Kim's strided ASL does."""

    def __init__(self, c, stride=1):
        super().__init__()
        self.shift = tnn.Parameter(torch.zeros(c, 2))
        self.stride = stride
        self.register_buffer("taps", torch.tensor([-1.0, 0.0, 1.0]), persistent=False)

    def forward(self, x):
        a, b = self.shift[:, 0:1], self.shift[:, 1:2]
        wy = torch.relu(1 - (self.taps.view(1, 3) - a).abs())   # (C, 3)
        wx = torch.relu(1 - (self.taps.view(1, 3) - b).abs())
        k = (wy.unsqueeze(2) * wx.unsqueeze(1)).unsqueeze(1)     # (C, 1, 3, 3)
        if x.is_contiguous(memory_format=torch.channels_last):
            k = k.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, k, stride=self.stride, padding=1, groups=x.shape[1])


def _sc(cin, cout, stride):
    if stride == 1 and cin == cout:
        return None
    return tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, 0, bias=False), tnn.BatchNorm2d(cout))


class Block(tnn.Module):
    def __init__(self, cin, cout, stride, layer, shared, expansion, beta_ref, shift_how):
        super().__init__()
        self.layer = layer
        if layer in ("cl", "sal"):
            if layer == "sal":
                self.conv1 = SALConv(cin, cout, stride, shared, beta_ref)
                self.conv2 = SALConv(cout, cout, 1, shared, beta_ref)
            else:
                self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
                self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn1, self.bn2 = tnn.BatchNorm2d(cout), tnn.BatchNorm2d(cout)
        else:
            mid = int(round(expansion * cout))
            self.conv1 = tnn.Conv2d(cin, mid, 1, 1, 0, bias=False)
            self.bn1 = tnn.BatchNorm2d(mid)
            if layer == "sl":
                from salnp.models import default_shift_offsets
                self.shift = Shift(default_shift_offsets(mid), shift_how)
            else:
                self.shift = ActiveShift(mid)
            self.conv2 = tnn.Conv2d(mid, cout, 1, stride, 0, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
        sc = _sc(cin, cout, stride)
        if sc is not None:
            self.shortcut = sc

    def forward(self, x):
        r = self.shortcut(x) if hasattr(self, "shortcut") else x
        if self.layer in ("cl", "sal"):
            h = F.relu(self.bn1(self.conv1(x)), inplace=True)
            return F.relu(self.bn2(self.conv2(h)) + r, inplace=True)
        h = F.relu(self.bn1(self.conv1(x)), inplace=True)
        h = self.conv2(self.shift(h))
        if self.layer == "sl":
            return F.relu(self.bn2(h), inplace=True) + r
        return F.relu(self.bn2(h) + r, inplace=True)


class PreActASLBlock(tnn.Module):
    """Jeon & Kim's ASNet block (salnp layer "asl"): BN, ReLU, 1x1, BN, ReLU, ASL (stride),
    1x1, + shortcut (identity, or a bare 1x1 conv with the stride on the pre-activated
    input)."""

    def __init__(self, cin, cout, stride, expansion):
        super().__init__()
        mid = int(round(expansion * cout))
        self.bn1 = tnn.BatchNorm2d(cin)
        self.conv1 = tnn.Conv2d(cin, mid, 1, 1, 0, bias=False)
        self.bn2 = tnn.BatchNorm2d(mid)
        self.shift = ActiveShift(mid, stride)
        self.conv2 = tnn.Conv2d(mid, cout, 1, 1, 0, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = tnn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        h = F.relu(self.bn1(x))
        r = self.shortcut(h) if hasattr(self, "shortcut") else x
        t = self.shift(F.relu(self.bn2(self.conv1(h)), inplace=True))
        return self.conv2(t) + r


class FastResNet(tnn.Module):
    def __init__(self, depth=20, width=16, layer="cl", shared=False, expansion=1, num_classes=10,
                 in_channels=3, beta=1.0, shift_how="slab"):
        super().__init__()
        self.beta_ref = [beta]
        self.preact = layer == "asl"    # Jeon & Kim's ASNet: bare stem, final BN + ReLU
        n = (depth - 2) // 6
        self.conv1 = tnn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        if not self.preact:
            self.bn1 = tnn.BatchNorm2d(width)
        cin = width
        for stage, (cout, stride) in enumerate([(width, 1), (2 * width, 2), (4 * width, 2)], 1):
            blocks = []
            for b in range(n):
                s = stride if b == 0 else 1
                if self.preact:
                    blocks.append(PreActASLBlock(cin, cout, s, expansion))
                else:
                    blocks.append(Block(cin, cout, s, layer, shared, expansion, self.beta_ref,
                                        shift_how))
                cin = cout
            setattr(self, f"layer{stage}", tnn.Sequential(*blocks))
        if self.preact:
            self.bn_final = tnn.BatchNorm2d(cin)
        self.linear = tnn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        if not self.preact:
            x = F.relu(self.bn1(x), inplace=True)
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.preact:
            x = F.relu(self.bn_final(x), inplace=True)
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def group_shift_channels(model):
    """Permute every SL block's expansion channels so that equal offsets are contiguous
    (conv1 output rows, bn1, conv2 input columns, the offsets): the same function."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Block) and m.layer == "sl":
                perm, _ = grouped_order(m.shift.offsets.numpy())
                p = torch.from_numpy(perm)
                m.conv1.weight.copy_(m.conv1.weight[p])
                for name in ("weight", "bias", "running_mean", "running_var"):
                    t = getattr(m.bn1, name)
                    t.copy_(t[p])
                m.conv2.weight.copy_(m.conv2.weight[:, p])
                m.shift.offsets.copy_(m.shift.offsets[p])
                m.shift._prepare()
    return model


def build(net, beta=1.0, shift_how="slab"):
    """A FastResNet with salnp network net's config and a copy of its state."""
    cfg = dict(net.config)
    cfg.pop("seed", None)
    t = FastResNet(**cfg, beta=beta, shift_how=shift_how)
    sd = {k: torch.tensor(np.array(v)) for k, v in net.state_dict().items()
          if not k.endswith(".tap_threshold")}       # salnp's sparse-training setting
    t.load_state_dict(sd, strict=True)
    for m in t.modules():
        if isinstance(m, Shift):
            m._prepare()
    if cfg.get("layer") == "sl" and shift_how == "slab":
        group_shift_channels(t)
    return t
