"""Optimizer kernels (SGD with momentum / Nesterov / weight decay, AdamW) against
torch.optim, alone and inside the fused training loop."""
import numpy as np
import pytest
import torch

from fastmlp import MLP, _core, optim
from fastmlp.model import PARAM_NAMES
import torch_reference as ref
from conftest import copy_params, normwise_close, train_steps


def torch_steps(p0, grads, make_opt):
    p = torch.tensor(p0.copy(), requires_grad=True)
    opt = make_opt([p])
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    return p.detach().numpy()


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("wd", [0.0, 1e-2])
def test_momentum_matches_torch_sgd(isa, nesterov, wd):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((30, 200)).astype(np.float32)
    grads = [rng.standard_normal(p0.shape).astype(np.float32) for _ in range(150)]
    p, buf = p0.copy(), np.zeros_like(p0)
    for g in grads:
        _core.momentum_update(p, g, buf, 0.05, 0.9, nesterov, wd)
    expect = torch_steps(p0, grads, lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=nesterov,
                                                               weight_decay=wd))
    # 150 steps of a few float32 operations each; with FMA we round less often than
    # PyTorch, so the two drift apart by rounding only: measured <= 2e-7 of the largest
    # parameter. A wrong formula (dampening, Nesterov term, decay order) is off by > 1e-2.
    normwise_close(p, expect, 1e-5, "p")


@pytest.mark.parametrize("wd", [0.0, 0.01, 0.1])
def test_adamw_matches_torch(isa, wd):
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal((200, 27)).astype(np.float32)
    grads = [(rng.standard_normal(p0.shape) * rng.uniform(0.01, 3)).astype(np.float32) for _ in range(150)]
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(grads, 1):
        _core.adamw_update(p, g, m, v, t, 0.01, 0.9, 0.999, 1e-8, wd)
    expect = torch_steps(p0, grads, lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=wd))
    # AdamW normalises each update to ~lr, so rounding differences stay at the level of
    # lr * 1e-7 per step; measured <= 1.2e-6 of max|p| after 150 steps.
    normwise_close(p, expect, 1e-5, "p")


def test_optimizer_kernels_reject_bad_arguments():
    p = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="momentum must be"):
        _core.momentum_update(p, p.copy(), p.copy(), 0.1, 1.5)
    with pytest.raises(ValueError, match="buf must have shape"):
        _core.momentum_update(p, p.copy(), np.zeros(3, np.float32), 0.1, 0.9)
    with pytest.raises(ValueError, match=r"step must be an integer in \[1, "):
        _core.adamw_update(p, p.copy(), p.copy(), p.copy(), 0, 0.1)
    with pytest.raises(ValueError, match="beta2 must be"):
        _core.adamw_update(p, p.copy(), p.copy(), p.copy(), 1, 0.1, beta2=1.0)
    with pytest.raises(ValueError, match="nesterov needs the sgd optimizer with momentum > 0"):
        _core.momentum_update(p, p.copy(), p.copy(), 0.1, 0.0, True)
    # an update whose arrays overlap would give a different answer on each ISA: refused
    with pytest.raises(ValueError, match="p and buf share memory"):
        _core.momentum_update(p, p.copy(), p, 0.1, 0.9)
    g = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="share memory"):
        _core.adamw_update(g[:4], g[4:].copy(), g[2:6], np.zeros(4, np.float32), 1, 0.1)
    with pytest.raises(ValueError, match="p and g share memory"):
        _core.sgd_update(p, p, 0.1)


# -- inside the training loop ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["momentum", "nesterov+wd", "adamw"])
def test_training_loop_with_optimizer_matches_torch(isa, small_names, kind):
    X, Y = small_names.train
    m = MLP(small_names.vocab.size, 3, 10, 64, seed=5, init="scaled")
    batches = np.random.default_rng(1).integers(0, len(Y), (200, 32))
    P = copy_params(m.params)
    lr = 0.01 if kind == "adamw" else 0.05
    if kind == "adamw":
        opt = optim.AdamW(P, weight_decay=0.01)
        make = lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=0.01)
    else:
        nest = kind.startswith("nesterov")
        wd = 1e-3 if nest else 0.0
        opt = optim.SGD(P, momentum=0.9, nesterov=nest, weight_decay=wd)
        make = lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9, nesterov=nest, weight_decay=wd)
    losses = train_steps(P, X, Y, (200, lr), batches=batches, optimizer=opt)
    assert opt.step == 200
    tl, tp = ref.sgd_trajectory(m.params, X, Y, batches, lr, make_opt=make)
    # as in the SGD trajectory test: stable dynamics keep rounding differences at ~1e-6
    np.testing.assert_allclose(losses, tl, rtol=0, atol=2e-5)
    for k in PARAM_NAMES:
        normwise_close(P[k], tp[k], 2e-5, k)


def test_optimizer_state_carries_across_calls_bit_exactly(small_names):
    X, Y = small_names.train
    m = MLP(small_names.vocab.size, 3, 10, 64, seed=5, init="scaled")
    lrs = np.full(200, 0.01, np.float32)
    results = []
    for split, nthreads in ((200, 1), (80, 2), (200, 2)):
        P = copy_params(m.params)
        opt = optim.AdamW(P)
        rng = _core.rng_state(3)
        a = train_steps(P, X, Y, lrs[:split], batch_size=32, rng_state=rng, optimizer=opt, threads=nthreads)
        b = train_steps(P, X, Y, lrs[split:], batch_size=32, rng_state=rng, optimizer=opt, threads=nthreads)
        assert opt.step == 200
        results.append((np.concatenate([a, b]), P))
    for losses, P in results[1:]:
        np.testing.assert_array_equal(losses, results[0][0])
        for k in PARAM_NAMES:
            np.testing.assert_array_equal(P[k], results[0][1][k])


# batch 128: the first layer through the embedding table, in both (table-inl.h)
@pytest.mark.parametrize("batch_size", [32, 128])
def test_per_call_optimizer_update_follows_the_fused_loop(small_names, batch_size):
    # loss_and_grad + optim.AdamW.update (Python loop) and train_steps (C++ loop)
    X, Y = small_names.train
    m = MLP(small_names.vocab.size, 3, 10, 64, seed=5, init="scaled")
    batches = np.random.default_rng(3).integers(0, len(Y), (50, batch_size))
    P = copy_params(m.params)
    fused = train_steps(P, X, Y, (50, 0.01), batches=batches, optimizer=optim.AdamW(P, weight_decay=0.1))
    opt = optim.AdamW(m.params, weight_decay=0.1)
    losses = []
    for ix in batches:
        loss, g = m.loss_and_grad(X[ix], Y[ix])
        opt.update(m.params, g, 0.01)
        losses.append(loss)
    # the same element-wise rule on the same gradients: equal to the last bit
    np.testing.assert_array_equal(fused, np.float32(losses))
    for k in PARAM_NAMES:
        np.testing.assert_array_equal(P[k], m.params[k])


def test_optimizers_check_their_hyperparameters_once():
    # one bound per field, the kernels' own: the same message from every entry point
    with pytest.raises(ValueError, match=r"beta2 must be a finite number in \[0.0, 1.0\), got 0.9999999999 \(1.0 in float32\)"):
        optim.AdamW(beta2=0.9999999999)
    with pytest.raises(ValueError, match="momentum must be"):
        optim.SGD(momentum=1.0)
    with pytest.raises(ValueError, match="nesterov needs"):
        optim.SGD(nesterov=True)
    with pytest.raises(ValueError, match="dropout must be"):
        _core.check_dropout(0.995 + 0.005)
    _core.check_dropout(0.995)  # what the C++ accepts, Python accepts: TrainConfig calls the same check
    from fastmlp.config import TrainConfig

    with pytest.raises(ValueError, match=r"beta2 must be a finite number in \[0.0, 1.0\)"):
        TrainConfig(optimizer="adamw", beta2=1.0).check()
    TrainConfig(dropout=0.995).check()


def test_train_steps_optimizer_arguments(small_names):
    X, Y = small_names.train
    m = MLP(small_names.vocab.size, 3, 10, 16, seed=5)
    P = copy_params(m.params)
    kw = dict(batch_size=4, rng_state=_core.rng_state(0))
    with pytest.raises(TypeError, match="optimizer must be a fastmlp.optim optimizer"):
        train_steps(P, X, Y, (3, 0.01), optimizer="adam", **kw)
    opt = optim.AdamW(P)
    opt.state["exp_avg"]["W1"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="state"):
        train_steps(P, X, Y, (3, 0.01), optimizer=opt, **kw)
    shared = optim.SGD(P, momentum=0.9)
    shared.state["momentum_buffer"]["W2"] = P["W2"]  # the state aliasing a parameter
    with pytest.raises(ValueError, match="share memory"):
        train_steps(P, X, Y, (3, 0.01), optimizer=shared, **kw)


# -- dropout on the hidden layer --------------------------------------------------------------
def test_dropout_with_a_fixed_mask_matches_torch(isa):
    rng = np.random.default_rng(3)
    m = MLP(27, 3, 10, 200, seed=1, init="scaled")
    X, Y = rng.integers(0, 27, (64, 3)), rng.integers(0, 27, 64)
    mask = _core.dropout_mask(7, 0, 64, 200, 0.3)
    loss, grads = m.loss_and_grad(X, Y, dropout_mask=mask)
    rloss, rgrads = ref.mlp_loss_and_grad(m.params, X, Y, mask=mask)
    assert abs(loss - rloss) <= 1e-5 * abs(rloss)
    for k in PARAM_NAMES:  # as in test_loss_and_grad_match_autograd
        normwise_close(grads[k], rgrads[k], 1e-4, f"d{k}")


def test_dropout_masks_keep_the_right_share_and_are_reproducible():
    a = _core.dropout_mask(1, 5, 256, 512, 0.25)
    assert set(np.unique(a)) == {0.0, np.float32(1 / 0.75)}
    assert abs((a > 0).mean() - 0.75) < 0.01
    np.testing.assert_array_equal(a, _core.dropout_mask(1, 5, 256, 512, 0.25))
    assert (a != _core.dropout_mask(1, 6, 256, 512, 0.25)).any() and (a != _core.dropout_mask(2, 5, 256, 512, 0.25)).any()


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_training_loop_with_dropout_uses_the_documented_masks(small_names, kind):
    X, Y = small_names.train
    m = MLP(small_names.vocab.size, 3, 10, 64, seed=5, init="scaled")
    batches = np.random.default_rng(1).integers(0, len(Y), (30, 32))
    P = copy_params(m.params)
    opt = optim.AdamW(P, weight_decay=0.01) if kind == "adamw" else None
    losses = train_steps(P, X, Y, (30, 0.01), batches=batches, optimizer=opt, dropout=0.2, dropout_seed=9, step0=100)
    # the same steps in PyTorch with the masks of global steps 100..129
    masks = [_core.dropout_mask(9, 100 + s, 32, 64, 0.2) for s in range(30)]
    make = (lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.01)) if kind == "adamw" else None
    tl, tp = ref.sgd_trajectory(m.params, X, Y, batches, 0.01, make_opt=make, masks=masks)
    np.testing.assert_allclose(losses, tl, rtol=0, atol=2e-5)  # as in the trajectory tests
    for k in PARAM_NAMES:
        normwise_close(P[k], tp[k], 2e-5, k)
