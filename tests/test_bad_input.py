"""Bad input is a feature: every mistake is a Python exception that names the argument.
Nothing here may crash the interpreter or read out of bounds (the sanitizer build runs
this file too)."""
import numpy as np
import pytest

from fastmlp import MLP, _core


@pytest.fixture
def model():
    return MLP(27, 3, 10, 20, seed=0)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return rng.integers(0, 27, (8, 3)).astype(np.int32), rng.integers(0, 27, 8).astype(np.int32)


# -- the MLP methods ----------------------------------------------------------
@pytest.mark.parametrize("method", ["forward", "loss", "loss_and_grad"])
def test_float_indices_are_a_type_error(model, batch, method):
    X, Y = batch
    args = (X.astype(np.float32),) if method == "forward" else (X.astype(np.float32), Y)
    with pytest.raises(TypeError, match="X must hold integers"):
        getattr(model, method)(*args)


def test_float_targets_are_a_type_error(model, batch):
    with pytest.raises(TypeError, match="Y must hold integers"):
        model.loss(batch[0], batch[1].astype(np.float64))


@pytest.mark.parametrize("X,msg", [
    (np.zeros(3, np.int32), "X must be 2-D"),
    (np.zeros((2, 3, 1), np.int32), "X must be 2-D"),
    (np.zeros((2, 4), np.int32), r"X must have shape \(N, block_size\)"),
])
def test_wrong_x_shape(model, X, msg):
    with pytest.raises(ValueError, match=msg):
        model.forward(X)


def test_wrong_y_shape(model, batch):
    X, Y = batch
    with pytest.raises(ValueError, match="Y must be 1-D"):
        model.loss(X, Y[:, None])
    with pytest.raises(ValueError, match=r"Y must have shape \(N,\)"):
        model.loss(X, Y[:5])


@pytest.mark.parametrize("bad", [27, 1000, -1, -2**31])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_out_of_range_indices(model, batch, bad, dtype):
    X, Y = batch
    X = X.astype(dtype)
    X[3, 1] = bad
    with pytest.raises(IndexError, match="X contains"):
        model.forward(X)
    Y = Y.astype(dtype)
    Y[2] = bad
    with pytest.raises(IndexError, match="Y contains"):
        model.loss(batch[0], Y)


def test_int64_values_do_not_wrap_into_range(model, batch):
    X = batch[0].astype(np.int64)
    X[0, 0] = 2**32 + 1  # would be 1 after a careless cast to int32
    with pytest.raises(IndexError, match="4294967297"):
        model.forward(X)


def test_empty_batch(model):
    with pytest.raises(ValueError, match="X is empty"):
        model.forward(np.zeros((0, 3), np.int32))
    with pytest.raises(ValueError, match="X is empty"):
        model.loss_and_grad(np.zeros((0, 3), np.int32), np.zeros(0, np.int32))


@pytest.mark.parametrize("name", ["C", "W1", "b1", "W2", "b2"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_parameters(model, batch, name, value):
    model.params[name].flat[0] = value
    with pytest.raises(ValueError, match=f"{name} contains NaN or inf"):
        model.loss(*batch)


@pytest.mark.parametrize("name", ["C", "W1", "b1", "W2", "b2"])
def test_replaced_parameter_with_wrong_dtype_or_shape(model, batch, name):
    good = model.params[name]
    model.params[name] = good.astype(np.float64)
    with pytest.raises(TypeError, match=f"{name} must have dtype float32, got float64"):
        model.loss(*batch)
    model.params[name] = np.zeros(good.shape + (1,), np.float32)
    with pytest.raises(ValueError, match=name):
        model.loss(*batch)
    model.params[name] = np.zeros(good.shape[:-1] + (2 * good.shape[-1],), np.float32)[..., ::2]  # strided view
    with pytest.raises(ValueError, match=f"{name} must be C-contiguous"):
        model.loss(*batch)
    del model.params[name]
    with pytest.raises(KeyError, match=name):
        model.loss(*batch)


@pytest.mark.parametrize("lr", [np.nan, np.inf, -0.1])
def test_bad_learning_rate(model, batch, lr):
    loss, grads = model.loss_and_grad(*batch)
    with pytest.raises(ValueError, match="lr must be a finite float32 number"):
        model.sgd_step(grads, lr)


def test_sgd_step_grads_must_match(model, batch):
    loss, grads = model.loss_and_grad(*batch)
    with pytest.raises(KeyError, match="W2"):
        model.sgd_step({k: v for k, v in grads.items() if k != "W2"}, 0.1)
    grads["b1"] = grads["b1"][:-1].copy()
    with pytest.raises(ValueError, match="g must have shape"):
        model.sgd_step(grads, 0.1)


@pytest.mark.parametrize("kwargs,exc,msg", [
    (dict(vocab_size=1), ValueError, "vocab_size must be >= 2"),
    (dict(vocab_size=27, block_size=0), ValueError, r"block_size must be an integer in \[1, "),
    (dict(vocab_size=27, n_hidden=-5), ValueError, r"n_hidden must be an integer in \[1, "),
    (dict(vocab_size=27, n_embd=2.5), TypeError, "n_embd must be an int"),
    (dict(vocab_size=27, init="xavier"), ValueError, "init must be one of"),
])
def test_bad_model_config(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        MLP(**kwargs)


# -- the kernels directly -------------------------------------------------------
def test_kernels_reject_non_arrays_and_wrong_dtypes():
    C = np.zeros((5, 2), np.float32)
    with pytest.raises(TypeError, match="C must be a numpy.ndarray, got list"):
        _core.embedding_forward([[0.0, 1.0]], np.zeros((1, 1), np.int32))
    with pytest.raises(TypeError, match="X must have dtype int32, got int64"):
        _core.embedding_forward(C, np.zeros((1, 1), np.int64))
    with pytest.raises(TypeError, match="x must have dtype float32, got float64"):
        _core.linear_forward(np.zeros((2, 2)), np.zeros((2, 2), np.float32), np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="Y must have dtype int32"):
        _core.cross_entropy(np.zeros((2, 3), np.float32), np.zeros(2, np.float64))


def test_kernels_reject_non_contiguous_and_readonly():
    W = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        _core.linear_forward(np.zeros((4, 8), np.float32)[:, ::2], W, np.zeros(6, np.float32))
    p = np.zeros(5, np.float32)
    p.flags.writeable = False
    with pytest.raises(ValueError, match="p must be writable"):
        _core.sgd_update(p, np.zeros(5, np.float32), 0.1)
    raw = np.zeros(4 * 10 + 1, np.uint8)[1:].view(np.float32).reshape(2, 5)  # misaligned by one byte
    with pytest.raises(ValueError, match="must be aligned"):
        _core.linear_forward(raw, np.zeros((5, 3), np.float32), np.zeros(3, np.float32))


def test_kernels_check_shapes_against_each_other():
    with pytest.raises(ValueError, match=r"x must have shape \(N, K\) = \(\*, 4\)"):
        _core.linear_forward(np.zeros((3, 5), np.float32), np.zeros((4, 2), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"b must have shape \(M,\)"):
        _core.linear_forward(np.zeros((3, 4), np.float32), np.zeros((4, 2), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="dh must have shape"):
        _core.linear_tanh_backward(np.zeros((3, 3), np.float32), np.zeros((3, 2), np.float32),
                                   np.zeros((3, 4), np.float32), np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="W1 must have T\\*E rows"):
        _core.mlp_forward((np.zeros((5, 3), np.float32), np.zeros((4, 2), np.float32), np.zeros(2, np.float32),
                           np.zeros((2, 5), np.float32), np.zeros(5, np.float32)), np.zeros((1, 1), np.int32))
    with pytest.raises(ValueError, match="d_emb must have T\\*E columns"):
        _core.embedding_backward(np.zeros((2, 5), np.float32), np.zeros((2, 2), np.int32), 3)


def test_kernel_indices_out_of_range():
    C = np.zeros((5, 2), np.float32)
    with pytest.raises(IndexError, match=r"X contains 5 .* outside \[0, 5\)"):
        _core.embedding_forward(C, np.array([[0, 5]], np.int32))
    with pytest.raises(IndexError, match="X contains -1"):
        _core.embedding_backward(np.zeros((1, 2), np.float32), np.array([[-1]], np.int32), 5)
    with pytest.raises(IndexError, match="Y contains 3"):
        _core.cross_entropy(np.zeros((1, 3), np.float32), np.array([3], np.int32))


def test_train_steps_arguments(model, batch):
    X, Y = batch
    P = model.arrays()
    lrs = np.full(4, 0.1, np.float32)
    s = _core.rng_state(0)
    with pytest.raises(ValueError, match=r"batch_size must be an integer in \[1, "):
        _core.train_steps(P, X, Y, lrs, batch_size=0, rng_state=s)
    with pytest.raises(ValueError, match=r"every learning rate in lrs must be a finite float32 number"):
        _core.train_steps(P, X, Y, np.array([0.1, np.nan], np.float32), batch_size=2, rng_state=s)
    with pytest.raises(IndexError, match="batches contains 8"):
        _core.train_steps(P, X, Y, lrs, batches=np.full((4, 2), 8, np.int64))
    with pytest.raises(ValueError, match=r"batches must have shape"):
        _core.train_steps(P, X, Y, lrs, batches=np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match="rng_state must have shape"):
        _core.train_steps(P, X, Y, lrs, batch_size=2, rng_state=np.zeros(3, np.uint64))
    with pytest.raises(TypeError, match="needs batch_size and rng_state"):
        _core.train_steps(P, X, Y, lrs, batch_size=2)
    with pytest.raises(ValueError, match=r"params must be \(C, W1, b1, ..., WL, bL, W\{L\+1\}, b\{L\+1\}\), 2 L \+ 3 "
                                         r"arrays .* got 4 arrays"):
        _core.train_steps(P[:4], X, Y, lrs, batch_size=2, rng_state=s)


def test_sample_arguments(model):
    P = model.arrays()
    with pytest.raises(ValueError, match="temperature must be"):
        _core.sample(P, 3, 10, 0, 0.0)
    with pytest.raises(ValueError, match=r"top_k must be an integer in \[0, "):
        _core.sample(P, 3, 10, 0, 1.0, -1)
    with pytest.raises(ValueError, match=r"max_len must be an integer in \[1, "):
        _core.sample(P, 3, 0, 0)
    with pytest.raises(ValueError, match=r"n must be an integer in \[0, 1073741824\], got 3000000000"):
        _core.sample(P, 3_000_000_000, 10, 0)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\), got -1"):
        _core.sample(P, 3, 10, -1)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\), got 1180591620717411303424"):
        _core.sample(P, 3, 10, 2**70)
