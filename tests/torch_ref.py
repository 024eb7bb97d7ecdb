"""PyTorch twins of salnp's networks for the tests: the implementation is salnp.torch
(shared with users); this module keeps the names that tests and benchmarks import, and
records how close every ReLU input came to the kink at 0 (RELU_MARGIN)."""
import salnp.torch as _st
from salnp.torch import (ActiveShift, Shift, active_shift as torch_active_shift,  # noqa: F401
                         sal_probs)
from salnp.torch import ResNet as TorchResNet  # noqa: F401
from salnp.torch import SALConv2d as SALConv  # noqa: F401

RELU_MARGIN = [float("inf")]


def _record(x):
    """The smallest |input| of any ReLU: a value that close to 0 is a kink where a float32
    implementation may take the other side than the reference."""
    RELU_MARGIN[0] = min(RELU_MARGIN[0], float(x.detach().abs().min()))


_st.relu_hook = _record
relu = _st.relu


def torch_shift(x, off):
    """y[n,c,Y,X] = x[n,c,Y+dy,X+dx], zero outside."""
    return _st.shift(x, off)


class _BetaRef:
    """tnet.beta_ref[0] (read / assign): the beta of every SAL layer of tnet."""

    def __init__(self, net):
        self.net = net

    def __getitem__(self, i):
        return self.net.beta

    def __setitem__(self, i, v):
        self.net.set_beta(v)


def from_salnp(net, beta=1.0):
    """salnp.torch.to_torch(net) with the SAL layers' beta = beta, in training mode."""
    t = _st.to_torch(net, beta).train()
    t.beta_ref = _BetaRef(t)
    for m in t.sal_layers():
        m.beta_ref = t.beta_ref
    return t
