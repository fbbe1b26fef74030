"""The deeper model (makemore part 3: n_layers tanh layers, BatchNorm, Kaiming init)
against PyTorch: the twin fastmlp.torch_module.TorchMLP (F.batch_norm, torch's own
BatchNorm1d function) and a plain nn.Sequential of nn.Linear / nn.BatchNorm1d / nn.Tanh.

Bounds, as for the one-layer model (test_model.py): a chain of float32 products (K <= 1024
here, so a product's rounding is below K * 2^-24 ~ 6e-5 of |x||W| and ~sqrt(K) * 2^-24 in
practice), tanh and BatchNorm's column reductions (B <= 257 rows). Loss: 1e-5 relative.
Gradients: normwise, 1e-4 of the largest entry (1 - h^2 of a saturated unit keeps few
digits in any float32 implementation). PyTorch's own float32 result must meet the same
bounds: the bound is the arithmetic's, not fastmlp's luck.
"""
import numpy as np
import pytest
import torch
from torch import nn

from fastmlp import MLP, _core, optim
from fastmlp.model import param_names
from fastmlp.torch_module import TorchMLP
from conftest import U, copy_params, normwise_close


SHAPES = [  # V, T, E, H, N
    (27, 3, 10, 100, 32),   # part 3's five-layer net's width
    (7, 5, 3, 33, 257),     # odd sizes everywhere
    (30, 4, 16, 129, 64),   # a width one past a vector multiple
]
# Smallest: without BatchNorm only. Under BatchNorm the gradient below a layer sums to zero
# over the batch (d/dpre removes the batch mean), so with two symbols, one unit and three
# rows dC and dW1 are differences of nearly equal terms whose true value is ~1e-6 of the
# terms; rounding of the terms (any float32 implementation's, torch's too) dominates it.
CASES = [(shape, bn) for shape in SHAPES for bn in (False, True)] + [((2, 1, 1, 2, 3), False)]


def batch(rng, V, T, N):
    return rng.integers(0, V, (N, T)).astype(np.int32), rng.integers(0, V, N).astype(np.int32)


def twin(m, dtype=torch.float64, train=True):
    t = m.to_torch().to(dtype)
    return t.train(train)


def torch_loss_and_grad(m, X, Y, dtype=torch.float64, mask=None):
    t = twin(m, dtype)
    logits = t(torch.as_tensor(X, dtype=torch.long)) if mask is None else None
    if mask is not None:  # dropout on the last hidden layer: the twin's forward, by hand
        x = t.C[torch.as_tensor(X, dtype=torch.long)].view(len(X), -1)
        for l in range(1, m.n_layers + 1):
            x = torch.tanh(x @ getattr(t, f"W{l}") + getattr(t, f"b{l}"))
        x = x * torch.as_tensor(mask, dtype=dtype)
        logits = x @ getattr(t, f"W{m.n_layers + 1}") + getattr(t, f"b{m.n_layers + 1}")
    loss = nn.functional.cross_entropy(logits, torch.as_tensor(Y, dtype=torch.long))
    loss.backward()
    return loss.item(), {k: getattr(t, k).grad.numpy() for k in m.param_names}, t


@pytest.mark.parametrize("shape,bn", CASES)
@pytest.mark.parametrize("L", [1, 2, 5])
@pytest.mark.parametrize("init", ["kaiming", "scaled"])
def test_deep_loss_and_grad_match_torch(isa, shape, bn, L, init):
    V, T, E, H, N = shape
    rng = np.random.default_rng(V + T + E + H + N + L)
    m = MLP(V, T, E, H, seed=3, init=init, n_layers=L, batchnorm=bn)
    assert m.param_names == param_names(L, bn)
    if bn:  # gamma and beta away from their start, so their gradients and roles are all exercised
        for l in range(1, L + 1):
            m.params[f"gamma{l}"][:] = rng.uniform(0.5, 1.5, H).astype(np.float32)
            m.params[f"beta{l}"][:] = rng.normal(0, 0.3, H).astype(np.float32)
    X, Y = batch(rng, V, T, N)
    loss, grads = m.loss_and_grad(X, Y)
    rloss, rgrads, _ = torch_loss_and_grad(m, X, Y)
    tloss, tgrads, _ = torch_loss_and_grad(m, X, Y, torch.float32)
    assert abs(loss - rloss) <= 1e-5 * max(1.0, abs(rloss))
    assert abs(tloss - rloss) <= 1e-5 * max(1.0, abs(rloss))
    assert list(grads) == list(m.param_names)
    for k in m.param_names:
        assert grads[k].shape == m.params[k].shape and grads[k].dtype == np.float32
        normwise_close(grads[k], rgrads[k], 1e-4, f"d{k}")
        normwise_close(tgrads[k], rgrads[k], 1e-4, f"torch float32 d{k}")


@pytest.mark.parametrize("L", [1, 3])
def test_eval_mode_uses_the_running_statistics(isa, L):
    # evaluation folds BatchNorm into the layer: W s, beta - mean s with s = gamma / sqrt(var + eps),
    # one more rounding of each weight (2^-24 relative) than torch's (x W) s: within the forward's bound
    rng = np.random.default_rng(L)
    m = MLP(27, 3, 10, 64, seed=1, init="kaiming", n_layers=L, batchnorm=True)
    for l in range(1, L + 1):
        m.buffers[f"running_mean{l}"][:] = rng.normal(0, 1, 64).astype(np.float32)
        m.buffers[f"running_var{l}"][:] = rng.uniform(0.1, 4, 64).astype(np.float32)
        m.params[f"gamma{l}"][:] = rng.uniform(0.5, 1.5, 64).astype(np.float32)
    X, Y = batch(rng, 27, 3, 300)
    ref = twin(m, train=False)
    with torch.no_grad():
        rlogits = ref(torch.as_tensor(X, dtype=torch.long))
    normwise_close(m.forward(X), rlogits.numpy(), 1e-5, "eval logits")
    rloss = nn.functional.cross_entropy(rlogits, torch.as_tensor(Y, dtype=torch.long)).item()
    assert abs(m.loss(X, Y) - rloss) <= 1e-5 * rloss
    # training mode differs (the batch's statistics): the two modes are not confused
    assert abs(m.loss_and_grad(X, Y)[0] - rloss) > 1e-3


def sequential_twin(m):
    """The same network as the lecture's part 3 writes it with torch.nn modules."""
    layers = []
    for l in range(1, m.n_layers + 1):
        W = torch.tensor(m.params[f"W{l}"], dtype=torch.float64)
        lin = nn.Linear(W.shape[0], W.shape[1], bias=not m.batchnorm).double()
        with torch.no_grad():
            lin.weight.copy_(W.T)
            if m.batchnorm:
                layers += [lin]
                bn = nn.BatchNorm1d(W.shape[1], momentum=m.bn_momentum).double()
                bn.weight.copy_(torch.tensor(m.params[f"gamma{l}"]))
                bn.bias.copy_(torch.tensor(m.params[f"beta{l}"]))
                bn.running_mean.copy_(torch.tensor(m.buffers[f"running_mean{l}"]))
                bn.running_var.copy_(torch.tensor(m.buffers[f"running_var{l}"]))
                layers += [bn]
            else:
                lin.bias.copy_(torch.tensor(m.params[f"b{l}"]))
                layers += [lin]
        layers += [nn.Tanh()]
    W = torch.tensor(m.params[f"W{m.n_layers + 1}"], dtype=torch.float64)
    out = nn.Linear(W.shape[0], W.shape[1]).double()
    with torch.no_grad():
        out.weight.copy_(W.T)
        out.bias.copy_(torch.tensor(m.params[f"b{m.n_layers + 1}"]))
    return nn.Sequential(*layers, out)


@pytest.mark.parametrize("bn", [False, True])
def test_equal_to_an_nn_sequential_of_linear_batchnorm_tanh(bn):
    rng = np.random.default_rng(7)
    m = MLP(27, 3, 10, 100, seed=2, init="kaiming", n_layers=5, batchnorm=bn)
    X, Y = batch(rng, 27, 3, 32)
    C = torch.tensor(m.params["C"], dtype=torch.float64)
    emb = C[torch.as_tensor(X, dtype=torch.long)].view(32, -1)
    net = sequential_twin(m).eval()
    with torch.no_grad():
        elog = net(emb).numpy()
    normwise_close(m.forward(X), elog, 1e-5, "eval logits")
    net.train()  # (its forward moves the running statistics, as train_steps does)
    logits = net(emb)
    rloss = nn.functional.cross_entropy(logits, torch.as_tensor(Y, dtype=torch.long)).item()
    loss, grads = m.loss_and_grad(X, Y)
    assert abs(loss - rloss) <= 1e-5 * rloss


def test_constant_columns_and_batches_of_one():
    rng = np.random.default_rng(3)
    m = MLP(27, 3, 10, 40, seed=1, init="kaiming", n_layers=2, batchnorm=True)
    m.params["W1"][:, :5] = 0  # five pre-activations constant over the batch: variance 0, eps alone
    X, Y = batch(rng, 27, 3, 16)
    loss, grads = m.loss_and_grad(X, Y)
    rloss, rgrads, _ = torch_loss_and_grad(m, X, Y)
    assert abs(loss - rloss) <= 1e-5 * rloss
    for k in m.param_names:
        assert np.isfinite(grads[k]).all()
        normwise_close(grads[k], rgrads[k], 1e-4, f"d{k}")
    # a batch of one row has no variance: refused in training, as torch's BatchNorm1d refuses it
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        twin(m)(torch.as_tensor(X[:1], dtype=torch.long))
    with pytest.raises(ValueError, match="BatchNorm needs at least 2 rows per batch in training"):
        m.loss_and_grad(X[:1], Y[:1])
    with pytest.raises(ValueError, match="BatchNorm needs at least 2 rows .* batch_size = 1"):
        _core.train_steps(m.arrays(), X, Y, np.full(2, 0.1, np.float32), batch_size=1,
                          rng_state=_core.rng_state(0), batchnorm=m.bn_args())
    # evaluation of one row is fine (the running statistics)
    assert m.forward(X[:1]).shape == (1, 27)


def run_steps(m, X, Y, batches, lr, threads=None, optimizer=None):
    return _core.train_steps(m.arrays(), X, Y, np.full(len(batches), lr, np.float32), batches=batches,
                             batchnorm=m.bn_args(), threads=threads, optimizer=optimizer)


@pytest.mark.parametrize("bn", [False, True])
def test_sgd_trajectory_1000_steps_every_step_within_one_steps_bounds(small_names, bn):
    # As the lecture-init trajectory (test_model.py): from the parameters fastmlp holds at
    # step s, its loss, its update of every parameter and (BatchNorm) of the running
    # statistics must be what float64 computes from the same state, within one step's
    # bounds: loss 1e-5 relative; update lr * 1e-4 of the largest gradient entry plus the
    # storing rounding U |p|; running statistics (1 - m) r + m batch, the batch's moments
    # of a float32 product: 1e-5 normwise. Every one of 1,000 steps, five layers deep.
    X, Y = small_names.train
    m = MLP(small_names.vocab.size, 3, 10, 48, seed=5, init="kaiming", n_layers=5, batchnorm=bn)
    batches = np.random.default_rng(3).integers(0, len(Y), (1000, 32))
    lr = 0.1
    whole = m.copy()
    losses = run_steps(whole, X, Y, batches, lr)
    for s, ix in enumerate(batches):
        before = m.copy()
        loss = run_steps(m, X, Y, ix[None], lr)[0]
        assert loss == losses[s], f"step {s}: one step at a time differs from one call"
        rloss, rgrads, t = torch_loss_and_grad(before, X[ix], Y[ix])  # float64; t's buffers moved on
        assert abs(loss - rloss) <= 1e-5 * max(1.0, abs(rloss)), (s, loss, rloss)
        for k in m.param_names:
            err = np.abs((m.params[k].astype(np.float64) - before.params[k]) + lr * rgrads[k]) - U * np.abs(m.params[k])
            bound = lr * 1e-4 * np.abs(rgrads[k]).max()
            assert err.max() <= bound, f"step {s} d{k}: {err.max():.3e} > {bound:.3e}"
        for k in m.buffers:
            normwise_close(m.buffers[k], getattr(t, k).numpy(), 1e-5, f"step {s} {k}")
    for k in m.param_names:  # and the single call ended where the 1,000 calls did
        assert np.array_equal(whole.params[k], m.params[k]), k
    for k in m.buffers:
        assert np.array_equal(whole.buffers[k], m.buffers[k]), k


def test_adamw_trajectory_matches_torch(small_names):
    # A well-conditioned start (kaiming, BatchNorm, AdamW lr 1e-3), compared with float64
    # torch: measured, a 1-ulp change of the float32 start moves the losses by < 3e-7 and
    # every tensor by < 3e-6 of its largest entry over these 1,000 steps (no chaos), while
    # float32's per-step roundings add up to 3.6e-6 in the losses, 1.9e-5 in the parameters
    # and 5.5e-5 in the running variances, for fastmlp and torch float32 alike. Bounds with
    # 4-5x room: 2e-5 (losses), 1e-4 (parameters), 2e-4 (running statistics); a wrong
    # moment, bias correction or momentum moves them by > 1e-3.
    X, Y = small_names.train
    m = MLP(small_names.vocab.size, 3, 10, 48, seed=5, init="kaiming", n_layers=4, batchnorm=True)
    batches = np.random.default_rng(4).integers(0, len(Y), (1000, 32))
    t = twin(m)
    topt = torch.optim.AdamW([getattr(t, k) for k in m.param_names], lr=1e-3, weight_decay=0.01)
    Xt, Yt = torch.as_tensor(X, dtype=torch.long), torch.as_tensor(Y, dtype=torch.long)
    tl = []
    for ix in batches:
        ix = torch.as_tensor(ix)
        loss = nn.functional.cross_entropy(t(Xt[ix]), Yt[ix])
        topt.zero_grad()
        loss.backward()
        topt.step()
        tl.append(loss.item())
    opt = optim.AdamW(m.params, weight_decay=0.01)
    losses = run_steps(m, X, Y, batches, 1e-3, optimizer=opt)
    assert opt.step == 1000
    np.testing.assert_allclose(losses, tl, rtol=0, atol=2e-5)
    for k in m.param_names:
        normwise_close(m.params[k], getattr(t, k).detach().numpy(), 1e-4, k)
    for k in m.buffers:
        normwise_close(m.buffers[k], getattr(t, k).numpy(), 2e-4, k)


@pytest.mark.parametrize("bn", [False, True])
def test_deep_training_is_identical_for_any_thread_count(small_names, bn):
    X, Y = small_names.train
    batches = np.random.default_rng(5).integers(0, len(Y), (20, 256))  # a team's size of work
    out = []
    for threads in (1, 2, 3):
        m = MLP(small_names.vocab.size, 3, 10, 130, seed=5, init="kaiming", n_layers=4, batchnorm=bn)
        losses = run_steps(m, X, Y, batches, 0.1, threads=threads)
        out.append((losses, m))
    for losses, m in out[1:]:
        assert np.array_equal(losses, out[0][0])
        for k in m.param_names:
            assert np.array_equal(m.params[k], out[0][1].params[k]), k
        for k in m.buffers:
            assert np.array_equal(m.buffers[k], out[0][1].buffers[k]), k


def test_dropout_with_depth_matches_torch():
    rng = np.random.default_rng(9)
    m = MLP(27, 3, 10, 50, seed=4, init="kaiming", n_layers=3)
    X, Y = batch(rng, 27, 3, 40)
    mask = (rng.random((40, 50)) > 0.3).astype(np.float32) / np.float32(0.7)
    loss, grads = m.loss_and_grad(X, Y, dropout_mask=mask)
    rloss, rgrads, _ = torch_loss_and_grad(m, X, Y, mask=mask)
    assert abs(loss - rloss) <= 1e-5 * rloss
    for k in m.param_names:
        normwise_close(grads[k], rgrads[k], 1e-4, f"d{k}")


def test_kaiming_init_follows_part_3():
    m = MLP(27, 3, 10, 200, seed=0, init="kaiming", n_layers=3, batchnorm=False)
    for l, fan_in in ((1, 30), (2, 200), (3, 200)):
        assert abs(m.params[f"W{l}"].std() * np.sqrt(fan_in) / (5 / 3) - 1) < 0.05
        assert not m.params[f"b{l}"].any()
    assert abs(m.params["W4"].std() * np.sqrt(200) / 0.1 - 1) < 0.1
    assert not m.params["b4"].any()
    bn = MLP(27, 3, 10, 200, seed=0, init="kaiming", n_layers=2, batchnorm=True)
    assert "b1" not in bn.params and (bn.params["gamma1"] == 1).all() and not bn.params["beta1"].any()
    assert (bn.buffers["running_var2"] == 1).all() and not bn.buffers["running_mean2"].any()
    # the first loss is close to a uniform guess's (a less confident output layer)
    X, Y = batch(np.random.default_rng(0), 27, 3, 1000)
    assert abs(m.loss(X, Y) - np.log(27)) < 0.05


def test_torch_round_trip_keeps_buffers_and_refuses_strangers():
    m = MLP(27, 3, 10, 30, seed=0, init="kaiming", n_layers=3, batchnorm=True, bn_momentum=0.01)
    m.buffers["running_var2"][:] = 2.5
    t = m.to_torch()
    assert t.bn_momentum == 0.01 and float(t.running_var2[0]) == 2.5
    back = MLP.from_torch(t)
    assert back.n_layers == 3 and back.batchnorm and back.bn_momentum == 0.01
    for k in m.param_names:
        assert np.array_equal(back.params[k], m.params[k])
    for k in m.buffers:
        assert np.array_equal(back.buffers[k], m.buffers[k])
    state = t.state_dict()
    state["W9"] = state["W1"]
    with pytest.raises(ValueError, match="W9"):
        MLP.from_torch(state)
