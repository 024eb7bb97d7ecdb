"""PyTorch twins of salnp's networks (same module names), built in the tests only."""
import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as F


RELU_MARGIN = [float("inf")]


def relu(x):
    """F.relu that records the smallest |input|: a value that close to 0 is a kink where a
    float32 implementation may take the other side than the reference."""
    RELU_MARGIN[0] = min(RELU_MARGIN[0], float(x.detach().abs().min()))
    return F.relu(x)


def sal_probs(a, beta, mask=None):
    """SAL attention in torch: softmax(beta a / std(a)) over the last axis; with a 0/1
    mask the std stays that of all 9 logits and the softmax runs over the allowed
    positions only, p = 0 elsewhere (uniform over them when std or beta is 0)."""
    s = a.std(-1, keepdim=True)
    if mask is None or bool((mask != 0).all()):
        return torch.softmax(beta * a / s, -1)
    m = mask != 0
    flat = (s == 0) | (beta == 0)
    z = torch.where(flat, torch.zeros_like(a), beta * a / torch.where(flat, torch.ones_like(s), s))
    return torch.softmax(z.masked_fill(~m, float("-inf")), -1)


class SALConv(tnn.Module):
    def __init__(self, cin, cout, stride, shared, beta_ref):
        super().__init__()
        self.weight = tnn.Parameter(torch.zeros(cout, cin, 3, 3))
        self.logits = tnn.Parameter(torch.zeros(1 if shared else cout, cin, 9))
        self.register_buffer("mask", torch.ones(1 if shared else cout, cin, 9))
        self.stride, self.beta_ref = stride, beta_ref

    def forward(self, x):
        p = sal_probs(self.logits, self.beta_ref[0], self.mask)
        w = self.weight * p.reshape(p.shape[0], p.shape[1], 3, 3)
        return F.conv2d(x, w, stride=self.stride, padding=1)


def torch_shift(x, off):
    """y[n,c,Y,X] = x[n,c,Y+dy,X+dx], zero outside (one slice per distinct offset)."""
    n, c, h, w = x.shape
    off = np.asarray(off)
    y = torch.zeros_like(x)
    for dy, dx in {(int(a), int(b)) for a, b in off}:
        ch = torch.from_numpy(np.flatnonzero((off[:, 0] == dy) & (off[:, 1] == dx)))
        ys, ye = max(0, -dy), min(h, h - dy)
        xs, xe = max(0, -dx), min(w, w - dx)
        if ys < ye and xs < xe:
            y[:, ch, ys:ye, xs:xe] = x[:, ch, ys + dy:ye + dy, xs + dx:xe + dx]
    return y


def torch_active_shift(x, off):
    """Bilinear sample at (Y + a_c, X + b_c), zero outside, differentiable in x and off."""
    n, c, h, w = x.shape
    ys = torch.arange(h, dtype=x.dtype).view(1, h, 1) + off[:, 0].view(c, 1, 1)
    xs = torch.arange(w, dtype=x.dtype).view(1, 1, w) + off[:, 1].view(c, 1, 1)
    ys = ys.expand(c, h, w)
    xs = xs.expand(c, h, w)
    y0, x0 = torch.floor(ys).detach(), torch.floor(xs).detach()
    out = torch.zeros_like(x)
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            wy = 1 - (ys - yy).abs()
            wx = 1 - (xs - xx).abs()
            valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            yi = yy.clamp(0, h - 1).long()
            xi = xx.clamp(0, w - 1).long()
            idx = (yi * w + xi).view(1, c, h * w).expand(n, c, h * w)
            g = torch.gather(x.reshape(n, c, h * w), 2, idx).view(n, c, h, w)
            out = out + g * (wy * wx * valid).unsqueeze(0)
    return out


class Shift(tnn.Module):
    def __init__(self, off):
        super().__init__()
        self.register_buffer("offsets", torch.tensor(off))

    def forward(self, x):
        return torch_shift(x, self.offsets)


class ActiveShift(tnn.Module):
    def __init__(self, c):
        super().__init__()
        self.shift = tnn.Parameter(torch.zeros(c, 2))

    def forward(self, x):
        return torch_active_shift(x, self.shift)


def _sc(cin, cout, stride):
    if stride == 1 and cin == cout:
        return None
    return tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, 0, bias=False), tnn.BatchNorm2d(cout))


class Block(tnn.Module):
    def __init__(self, cin, cout, stride, layer, shared, expansion, beta_ref):
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
                self.shift = Shift(default_shift_offsets(mid))
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
            h = relu(self.bn1(self.conv1(x)))
            return relu(self.bn2(self.conv2(h)) + r)
        h = relu(self.bn1(self.conv1(x)))
        h = self.conv2(self.shift(h))
        if self.layer == "sl":
            return relu(self.bn2(h)) + r
        return relu(self.bn2(h) + r)


class PreActASLBlock(tnn.Module):
    """Jeon & Kim's ASNet block: BN, ReLU, 1x1, BN, ReLU, ASL (stride), 1x1, + shortcut
    (identity, or a 1x1 conv with the stride and no BN on the pre-activated input)."""

    def __init__(self, cin, cout, stride, expansion):
        super().__init__()
        mid = int(round(expansion * cout))
        self.stride = stride
        self.bn1 = tnn.BatchNorm2d(cin)
        self.conv1 = tnn.Conv2d(cin, mid, 1, 1, 0, bias=False)
        self.bn2 = tnn.BatchNorm2d(mid)
        self.shift = ActiveShift(mid)
        self.conv2 = tnn.Conv2d(mid, cout, 1, 1, 0, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = tnn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        h = relu(self.bn1(x))
        r = self.shortcut(h) if hasattr(self, "shortcut") else x
        t = self.shift(relu(self.bn2(self.conv1(h))))
        if self.stride > 1:    # active shift with a stride: sample at (s*Y + a, s*X + b)
            t = t[:, :, ::self.stride, ::self.stride]
        return self.conv2(t) + r


class TorchResNet(tnn.Module):
    def __init__(self, depth=20, width=16, layer="cl", shared=False, expansion=1, num_classes=10,
                 in_channels=3, beta=1.0):
        super().__init__()
        self.beta_ref = [beta]
        n = (depth - 2) // 6
        self.preact = layer == "asl"
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
                    blocks.append(Block(cin, cout, s, "asl" if layer == "asl-post" else layer,
                                        shared, expansion, self.beta_ref))
                cin = cout
            setattr(self, f"layer{stage}", tnn.Sequential(*blocks))
        if self.preact:
            self.bn_final = tnn.BatchNorm2d(cin)
        self.linear = tnn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        if not self.preact:
            x = relu(self.bn1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.preact:
            x = relu(self.bn_final(x))
        return self.linear(x.mean((2, 3)))


def from_salnp(net, beta=1.0):
    """A TorchResNet with net's config and a copy of its state."""
    cfg = dict(net.config)
    cfg.pop("seed")
    t = TorchResNet(**cfg, beta=beta)
    sd = {k: torch.tensor(np.array(v)) for k, v in net.state_dict().items()}
    t.load_state_dict(sd, strict=True)
    return t
