"""salnp: shift networks and the Shift Attention Layer (SAL) on the CPU.

A C11 core (libsal, BLIS for the GEMMs) with a thin NumPy interface::

    import salnp
    salnp.show_config()
    y = salnp.ops.conv2d(x, w, stride=1, padding=1)
"""
from . import _core
from ._core import SalError, __version__
from . import ops
from . import data
from . import program
from . import nn
from . import models
from .models import load, save
from . import infer
from . import export   # a callable module: salnp.export(net), salnp.export.load(path)
from . import flops
from .flops import count
from . import runconfig
from .runconfig import RunConfig
from .train import fit, evaluate
from . import prune
from . import attention   # what SAL attention chose and what training changed (no matplotlib)
from . import sweep    # a callable module: salnp.sweep(configs, ...), salnp.sweep.grid(...)

__all__ = ["SalError", "__version__", "ops", "data", "program", "nn", "models", "save", "load",
           "infer", "runconfig", "RunConfig", "fit", "evaluate", "flops", "count", "export",
           "prune", "attention", "sweep",
           "show_config", "config", "set_num_threads", "get_num_threads"]


def __getattr__(name):
    """salnp.viz (imports matplotlib) and salnp.torch (imports PyTorch, optional:
    pip install "salnp[torch]") on first use; import salnp itself imports neither."""
    if name in ("viz", "torch"):
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'salnp' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"viz", "torch"})


from ._threads import set_num_threads, get_num_threads  # noqa: E402


def config() -> dict:
    """The build and run-time configuration as a dict (what show_config prints)."""
    import platform
    import numpy

    info = dict(_core.blas_info())
    info["salnp"] = __version__
    info["numpy"] = numpy.__version__
    info["python"] = platform.python_version()
    info["conv_cache"] = _core.conv_cache()
    return info


def show_config() -> None:
    """Print the salnp version, BLIS (version, flavour, sub-configuration) and threads."""
    c = config()
    status = "verified" if c["verified"] else "FAILED verification"
    warn = "  (WARNING: generic reference kernels, slow)" if c["generic"] else ""
    print(f"salnp {c['salnp']}  (numpy {c['numpy']}, python {c['python']})")
    print(f"BLIS {c['blis_version']}  flavour: {c['flavour']}")
    print(f"  sub-configuration: {c['arch']} ({status}){warn}")
    print(f"  chosen by: {c['arch_source']}")
    print(f"kernels: {c['isa']} (SAL_ISA=avx2|base caps them)")
    print(f"threads: {c['threads']} (libsal's pthread pool: loops and GEMMs, BLIS called with "
          f"1 thread; salnp.set_num_threads)")
    cc = c["conv_cache"]
    print(f"convolution weights cache: {cc['entries']} entries, {cc['bytes'] / 2**20:.1f} of "
          f"{cc['limit'] / 2**20:.0f} MiB (salnp._core.conv_cache; SAL_CONV_CACHE_MB)")
