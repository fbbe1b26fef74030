"""Fuzzing the public kernels and the MLP methods with hypothesis: random dtypes,
shapes (empty ones included), strides, index values (huge, negative, out of range)
and NaN/inf. Every call must either raise TypeError/ValueError/IndexError or return
what PyTorch returns; a crash would take the test process down with it."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fastmlp import MLP, _core
import torch_reference as ref

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
ERRORS = (TypeError, ValueError, IndexError)

DTYPES = [np.float32, np.float64, np.float16, np.int32, np.int64, np.int8, np.uint8, np.uint64, np.bool_]
FLOAT_VALUES = [0.0, 1.0, -2.5, 1e4, -1e4, np.nan, np.inf, -np.inf, 1e38]


MUTATIONS = ["none", "none", "none", "dtype", "shape", "ndim", "strided", "fortran", "readonly", "values",
             "empty", "object"]


def mutate(draw, a, kind):
    """A valid array, or the same with one thing wrong about it."""
    m = draw(st.sampled_from(MUTATIONS))
    if m == "dtype":
        with np.errstate(all="ignore"):
            return np.nan_to_num(a).astype(draw(st.sampled_from(DTYPES)))
    if m == "shape" and a.ndim:
        shape = tuple(max(0, d + draw(st.integers(-1, 2))) for d in a.shape)
        return np.resize(a, shape)
    if m == "ndim":
        return a[..., None] if draw(st.booleans()) else a.reshape(-1)
    if m == "strided" and a.ndim and a.shape[-1]:
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        wide[..., ::2] = a
        return wide[..., ::2]
    if m == "fortran":
        return np.asfortranarray(a)
    if m == "readonly":
        a = a.copy()
        a.flags.writeable = False
        return a
    if m == "values" and a.size:
        a = a.copy()
        pool = FLOAT_VALUES if kind == "f" else [-1, -2**31, 2**31 - 1, 27, 100]
        a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from(pool))
        return a
    if m == "empty" and a.ndim:
        return a[:0]
    if m == "object":
        return draw(st.sampled_from([None, 3, 2.5, "x", [[1, 2]]]))
    return a


def randn(draw, *shape):
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def indices(draw, high, *shape):
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(0, high, shape).astype(np.int32)


dims = st.integers(1, 9)


@FUZZ
@given(data=st.data(), V=dims, E=dims, N=dims, T=dims)
def test_fuzz_embedding_forward(data, V, E, N, T):
    C = mutate(data.draw, randn(data.draw, V, E), "f")
    X = mutate(data.draw, indices(data.draw, V, N, T), "i")
    try:
        out = _core.embedding_forward(C, X)
    except ERRORS:
        event("rejected")
        return
    event("accepted")
    np.testing.assert_array_equal(out, ref.embedding(C, X, torch.float32))


@FUZZ
@given(data=st.data(), V=dims, E=dims, N=dims, T=dims, bad_v=st.sampled_from([None, None, -1, 0, 2**40]))
def test_fuzz_embedding_backward(data, V, E, N, T, bad_v):
    d = mutate(data.draw, randn(data.draw, N, T * E), "f")
    X = mutate(data.draw, indices(data.draw, V, N, T), "i")
    V = V if bad_v is None else bad_v
    try:
        out = _core.embedding_backward(d, X, V)
    except ERRORS:
        event("rejected")
        return
    event("accepted")
    np.testing.assert_allclose(out, ref.embedding_backward(d, X, V), rtol=1e-5, atol=1e-5, equal_nan=True)


@FUZZ
@given(data=st.data(), N=dims, K=dims, M=dims, tanh=st.booleans())
def test_fuzz_linear_forward(data, N, K, M, tanh):
    x = mutate(data.draw, randn(data.draw, N, K), "f")
    W = mutate(data.draw, randn(data.draw, K, M), "f")
    b = mutate(data.draw, randn(data.draw, M), "f")
    fn = _core.linear_tanh_forward if tanh else _core.linear_forward
    try:
        out = fn(x, W, b)
    except ERRORS:
        event("rejected")
        return
    event("accepted")
    expect = ref.linear(x, W, b, tanh, torch.float32)
    # inputs here include 1e38 and 1e4: overflow to inf (and inf - inf = NaN) happens in
    # both implementations; compare where PyTorch's result is finite
    fin = np.isfinite(expect)
    np.testing.assert_allclose(out[fin], expect[fin], rtol=1e-4, atol=1e-3)


@FUZZ
@given(data=st.data(), N=dims, V=dims)
def test_fuzz_cross_entropy(data, N, V):
    logits = mutate(data.draw, randn(data.draw, N, V) * data.draw(st.sampled_from([1.0, 100.0, 1e4])), "f")
    Y = mutate(data.draw, indices(data.draw, V, N), "i")
    try:
        loss, d = _core.cross_entropy(logits, Y)
    except ERRORS:
        event("rejected")
        return
    event("accepted")
    with np.errstate(all="ignore"):
        rloss, rd = ref.cross_entropy(logits, Y, torch.float32)
    if np.isfinite(rloss):
        assert loss == pytest.approx(rloss, rel=1e-4, abs=1e-3)
        np.testing.assert_allclose(d, rd, rtol=1e-4, atol=1e-5)
    else:
        assert not np.isfinite(loss)


@FUZZ
@given(data=st.data(), shape=st.lists(dims, min_size=1, max_size=3),
       lr=st.sampled_from([0.1, 0.1, 0.0, -1.0, np.nan, np.inf, 1e30]))
def test_fuzz_sgd_update(data, shape, lr):
    p = mutate(data.draw, randn(data.draw, *shape), "f")
    g = mutate(data.draw, randn(data.draw, *shape), "f")
    before = p.copy() if isinstance(p, np.ndarray) else None  # (a read-only p stays read-only: it is rejected)
    try:
        _core.sgd_update(p, g, lr)
    except ERRORS:
        event("rejected")
        if before is not None:
            np.testing.assert_array_equal(p, before)  # a rejected call changes nothing
        return
    event("accepted")
    with np.errstate(all="ignore"):
        expect = torch.tensor(before).add_(torch.tensor(g), alpha=-lr).numpy()
    np.testing.assert_allclose(p, expect, rtol=1e-6, atol=0, equal_nan=True)


@FUZZ
@given(data=st.data(), N=dims, method=st.sampled_from(["forward", "loss", "loss_and_grad"]),
       poison=st.sampled_from([None, None, None, "C", "W1", "b2"]))
def test_fuzz_mlp_methods(data, N, method, poison):
    X = mutate(data.draw, indices(data.draw, 27, N, 3), "i")
    Y = mutate(data.draw, indices(data.draw, 27, N), "i")
    m = MLP(27, 3, 4, 8, seed=0, init="scaled")
    if poison:
        m.params[poison].flat[0] = np.nan
    try:
        out = getattr(m, method)(X) if method == "forward" else getattr(m, method)(X, Y)
    except ERRORS:
        event("rejected")
        return
    event("accepted")
    assert poison is None  # NaN parameters are always rejected
    X32 = np.asarray(X).astype(np.int32)
    if method == "forward":
        expect = ref.mlp_logits(ref.mlp_params(m.params, torch.float32), X32).detach().numpy()
        np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)
    else:
        loss = out[0] if method == "loss_and_grad" else out
        rloss, _ = ref.mlp_loss_and_grad(m.params, X32, np.asarray(Y).astype(np.int32), torch.float32)
        assert loss == pytest.approx(rloss, rel=1e-5, abs=1e-6)


@FUZZ
@given(n=st.sampled_from([-5, 0, 1, 3]), max_len=st.sampled_from([-1, 0, 1, 7]),
       seed=st.sampled_from([0, 2**63, 2**64 - 1]), temperature=st.sampled_from([1.0, 0.0, -1.0, np.nan, 1e-30, 1e30]),
       top_k=st.sampled_from([-1, 0, 1, 5, 27, 10**6]))
def test_fuzz_sample(n, max_len, seed, temperature, top_k):
    m = MLP(27, 3, 4, 8, seed=0)
    try:
        out = _core.sample(m.arrays(), n, max_len, seed, temperature, top_k)
    except (*ERRORS, OverflowError):
        event("rejected")
        return
    event("accepted")
    assert out.shape == (n, max_len) and out.dtype == np.int32
    assert ((out >= 0) & (out < 27)).all()
