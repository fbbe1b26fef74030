"""fastmlp: a fast character-level MLP language model (Bengio et al. 2003, makemore).

The arithmetic runs in C++ kernels (``fastmlp._core``); this package is the thin
Python layer around them: data sets, the model, training, sampling.

    >>> import fastmlp
    >>> ds = fastmlp.data.load_dataset(block_size=3)          # names.txt, lecture split
    >>> model = fastmlp.MLP(ds.vocab.size, block_size=3)
    >>> model.loss(*ds.dev)                                    # mean cross-entropy
"""
import os as _os
import warnings as _warnings

# OpenMP threads between two parallel regions (between chunks of training, while Python
# evaluates or prints) spin before they sleep: GCC's libgomp for 300,000 turns, LLVM's
# for 200 ms, taking cores from the main thread and from other processes. Inside a
# region fastmlp uses its own barrier (csrc/team-inl.h). Read once, when the OpenMP
# runtime loads with _core: set before it, and only if the user has not.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")
_os.environ.setdefault("KMP_BLOCKTIME", "1")

from . import _core  # noqa: E402
from ._core import get_num_threads, set_num_threads  # noqa: E402
from .model import MLP  # noqa: E402
from . import data, optim  # noqa: E402
from .data import load_dataset  # noqa: E402

__version__ = _core.build_info()["version"]

_isa = _os.environ.get("FASTMLP_ISA")
if _isa and _isa not in ("auto", *_core.build_info()["isas_available"]):
    _warnings.warn(f"FASTMLP_ISA={_isa!r} is not one of auto, {', '.join(_core.build_info()['isas_available'])} "
                   f"on this CPU and build: using {_core.get_isa()}", RuntimeWarning, stacklevel=2)


def build_info() -> dict:
    """How this copy of fastmlp was built: version, compiler, flags, OpenMP on/off,
    thread count, and which kernel instruction set (ISA) runs on this CPU."""
    return _core.build_info()


__all__ = ["MLP", "build_info", "data", "get_num_threads", "load_dataset", "optim", "set_num_threads",
           "__version__"]
