"""Shared fixtures: the kernel builds (ISAs) this CPU can run, thread settings, the
word lists made here, the one helper for the training call, and the float32 rounding
helpers the equality tests state their tolerances with."""
import numpy as np
import pytest

import fastmlp
from fastmlp import _core
from fastmlp.model import PARAM_NAMES

AVAILABLE_ISAS = fastmlp.build_info()["isas_available"]

# unit roundoff of float32: every correctly rounded float32 operation has relative error <= U
U = 2.0 ** -24
# fastmlp's tanh (a 9/8 rational function, csrc/simd-inl.h) is within 5.6 U relative of
# tanh with FMA and 6.4 U without (SSE2), measured over every float32;
# test_kernels.test_tanh_error_bound keeps it there on each ISA. Bounds allow TANH_U.
TANH_U = 7 * U


@pytest.fixture(params=AVAILABLE_ISAS)
def isa(request):
    """Runs a test once per kernel build this CPU supports (generic, avx2, avx512)."""
    before = _core.get_isa()
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(before)


@pytest.fixture
def threads():
    """Restores the thread count after a test changes it."""
    before = fastmlp.get_num_threads()
    yield
    fastmlp.set_num_threads(before)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# -- word lists made here (no data file needed) -------------------------------------
def make_words(n=400, seed=0):
    """n name-like words from a few syllables."""
    rng = np.random.default_rng(seed)
    syll = ["ka", "li", "mo", "ra", "an", "el", "is", "ta", "on", "be", "su", "ny"]
    return ["".join(rng.choice(syll, rng.integers(1, 4))) for _ in range(n)]


@pytest.fixture(scope="session")
def small_names():
    """The lecture's split of 600 made-up words, block_size 3."""
    return fastmlp.data.make_dataset(make_words(600, seed=7), block_size=3)


@pytest.fixture
def words_file(tmp_path):
    p = tmp_path / "words.txt"
    p.write_text("\n".join(make_words()) + "\n")
    return p


# -- the training call ------------------------------------------------------------------
def copy_params(params):
    return {k: v.copy() for k, v in params.items()}


def train_steps(P, X, Y, lrs, **kw):
    """_core.train_steps on a dict of parameters (updated in place); lrs: an array, or
    (steps, lr) for a constant rate."""
    if isinstance(lrs, tuple):
        lrs = np.full(lrs[0], lrs[1], np.float32)
    return _core.train_steps(tuple(P[k] for k in PARAM_NAMES), X, Y, lrs, **kw)


def assert_within(actual, reference, bound, what=""):
    """|actual - reference| <= bound elementwise (reference in float64, bound >= 0 broadcastable).
    Reports the worst element so a failure says how far off it was."""
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} != {reference.shape}"
    err = np.abs(actual - reference)
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), err.shape)
    ok = err <= bound
    if not ok.all():
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(f"{what}: |err| {err[i]:.3e} > bound {bound[i]:.3e} at {i} "
                             f"(actual {actual[i]!r}, reference {reference[i]!r}); "
                             f"{(~ok).sum()} of {ok.size} elements out of bound")


def normwise_close(actual, reference, rel, what=""):
    """max|actual - reference| <= rel * max|reference|: for chains of operations where
    elementwise bounds are not tractable (tanh saturation cancels digits in 1 - h^2)."""
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} != {reference.shape}"
    scale = max(np.abs(reference).max(initial=0.0), 1e-30)
    err = np.abs(actual - reference).max(initial=0.0)
    assert err <= rel * scale, f"{what}: max error {err:.3e} > {rel:.1e} * max|ref| {scale:.3e}"


# -- browser tests: deselected (not skipped) where there is no Chromium ------------------------
def _chromium():
    import os
    import shutil

    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def pytest_collection_modifyitems(config, items):
    try:
        import playwright  # noqa: F401
        ready = _chromium() is not None
    except ImportError:
        ready = False
    if ready:
        return
    browser = [i for i in items if i.get_closest_marker("browser")]
    if browser:
        config.hook.pytest_deselected(items=browser)
        items[:] = [i for i in items if not i.get_closest_marker("browser")]
