"""Shared fixtures: the kernel builds (ISAs) this CPU can run, thread settings,
and the float32 rounding helpers the equality tests state their tolerances with."""
import numpy as np
import pytest

import fastmlp
from fastmlp import _core

AVAILABLE_ISAS = fastmlp.build_info()["isas_available"]

# unit roundoff of float32: every correctly rounded float32 operation has relative error <= U
U = 2.0 ** -24


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
