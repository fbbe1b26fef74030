"""Optimizer kernels (SGD with momentum / Nesterov / weight decay, AdamW) against
torch.optim, alone and inside the fused training loop."""
import numpy as np
import pytest
import torch

import fastmlp
from fastmlp import MLP, _core
from fastmlp.model import PARAM_NAMES
import torch_reference as ref
from conftest import normwise_close


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
    with pytest.raises(ValueError, match="step must be >= 1"):
        _core.adamw_update(p, p.copy(), p.copy(), p.copy(), 0, 0.1)
    with pytest.raises(ValueError, match="beta2 must be"):
        _core.adamw_update(p, p.copy(), p.copy(), p.copy(), 1, 0.1, beta2=1.0)
    with pytest.raises(ValueError, match="nesterov needs momentum"):
        _core.momentum_update(p, p.copy(), p.copy(), 0.1, 0.0, True)


# -- inside the training loop ------------------------------------------------------------
@pytest.fixture(scope="module")
def names():
    rng = np.random.default_rng(7)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(600)]
    return fastmlp.data.make_dataset(words, block_size=3)


def zeros_like(params, copies):
    return [np.zeros_like(params[k]) for _ in range(copies) for k in PARAM_NAMES]


@pytest.mark.parametrize("kind", ["momentum", "nesterov+wd", "adamw"])
def test_training_loop_with_optimizer_matches_torch(isa, names, kind):
    X, Y = names.train
    m = MLP(names.vocab.size, 3, 10, 64, seed=5, init="scaled")
    batches = np.random.default_rng(1).integers(0, len(Y), (200, 32))
    P = {k: v.copy() for k, v in m.params.items()}
    lr = 0.01 if kind == "adamw" else 0.05
    if kind == "adamw":
        kw = dict(optimizer="adamw", weight_decay=0.01, state=zeros_like(P, 2))
        make = lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=0.01)
    else:
        nest = kind.startswith("nesterov")
        wd = 1e-3 if nest else 0.0
        kw = dict(optimizer="sgd", momentum=0.9, nesterov=nest, weight_decay=wd, state=zeros_like(P, 1))
        make = lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9, nesterov=nest, weight_decay=wd)
    losses = _core.train_steps(*(P[k] for k in PARAM_NAMES), X, Y, 32, np.full(200, lr, np.float32),
                               _core.rng_state(0), batches, **kw)
    tl, tp = ref.sgd_trajectory(m.params, X, Y, batches, lr, make_opt=make)
    # as in the SGD trajectory test: stable dynamics keep rounding differences at ~1e-6
    np.testing.assert_allclose(losses, tl, rtol=0, atol=2e-5)
    for k in PARAM_NAMES:
        normwise_close(P[k], tp[k], 2e-5, k)


def test_optimizer_state_carries_across_calls_bit_exactly(names, threads):
    X, Y = names.train
    m = MLP(names.vocab.size, 3, 10, 64, seed=5, init="scaled")
    lrs = np.full(200, 0.01, np.float32)
    results = []
    for split, nthreads in ((200, 1), (80, 2), (200, 2)):
        fastmlp.set_num_threads(nthreads)
        P = {k: v.copy() for k, v in m.params.items()}
        state = zeros_like(P, 2)
        rng = _core.rng_state(3)
        a = _core.train_steps(*(P[k] for k in PARAM_NAMES), X, Y, 32, lrs[:split], rng, optimizer="adamw",
                              state=state, opt_step=0)
        b = _core.train_steps(*(P[k] for k in PARAM_NAMES), X, Y, 32, lrs[split:], rng, optimizer="adamw",
                              state=state, opt_step=split)
        results.append((np.concatenate([a, b]), P))
    for losses, P in results[1:]:
        np.testing.assert_array_equal(losses, results[0][0])
        for k in PARAM_NAMES:
            np.testing.assert_array_equal(P[k], results[0][1][k])


def test_train_steps_optimizer_arguments(names):
    X, Y = names.train
    m = MLP(names.vocab.size, 3, 10, 16, seed=5)
    P = [m.params[k] for k in PARAM_NAMES]
    lrs = np.full(3, 0.01, np.float32)
    with pytest.raises(ValueError, match="optimizer must be"):
        _core.train_steps(*P, X, Y, 4, lrs, _core.rng_state(0), optimizer="adam")
    with pytest.raises(ValueError, match="state must be a sequence of 10"):
        _core.train_steps(*P, X, Y, 4, lrs, _core.rng_state(0), optimizer="adamw")
    with pytest.raises(ValueError, match="plain SGD keeps no state"):
        _core.train_steps(*P, X, Y, 4, lrs, _core.rng_state(0), state=zeros_like(m.params, 1))
    bad = zeros_like(m.params, 1)
    bad[1] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError):
        _core.train_steps(*P, X, Y, 4, lrs, _core.rng_state(0), momentum=0.9, state=bad)


# -- dropout on the hidden layer --------------------------------------------------------------
def torch_loss_and_grad_with_mask(params, X, Y, mask, dtype=torch.float64):
    import torch.nn.functional as F

    P = ref.mlp_params(params, dtype)
    emb = P["C"][torch.tensor(X, dtype=torch.long)]
    h = torch.tanh(emb.reshape(len(X), -1) @ P["W1"] + P["b1"]) * torch.tensor(mask, dtype=dtype)
    loss = F.cross_entropy(h @ P["W2"] + P["b2"], torch.tensor(Y, dtype=torch.long))
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in P.items()}


def test_dropout_with_a_fixed_mask_matches_torch(isa):
    rng = np.random.default_rng(3)
    m = MLP(27, 3, 10, 200, seed=1, init="scaled")
    X, Y = rng.integers(0, 27, (64, 3)), rng.integers(0, 27, 64)
    mask = _core.dropout_mask(7, 0, 64, 200, 0.3)
    loss, grads = m.loss_and_grad(X, Y, dropout_mask=mask)
    rloss, rgrads = torch_loss_and_grad_with_mask(m.params, X, Y, mask)
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
def test_training_loop_with_dropout_uses_the_documented_masks(names, kind):
    X, Y = names.train
    m = MLP(names.vocab.size, 3, 10, 64, seed=5, init="scaled")
    batches = np.random.default_rng(1).integers(0, len(Y), (30, 32))
    P = {k: v.copy() for k, v in m.params.items()}
    kw = dict(optimizer="adamw", weight_decay=0.01, state=zeros_like(P, 2)) if kind == "adamw" else {}
    losses = _core.train_steps(*(P[k] for k in PARAM_NAMES), X, Y, 32, np.full(30, 0.01, np.float32),
                               _core.rng_state(0), batches, dropout=0.2, dropout_seed=9, step0=100, **kw)
    # the same steps in PyTorch with the masks of global steps 100..129
    import torch.nn.functional as F

    T = ref.mlp_params(m.params, torch.float32)
    opt = torch.optim.AdamW(list(T.values()), lr=0.01, weight_decay=0.01) if kind == "adamw" else \
        torch.optim.SGD(list(T.values()), lr=0.01)
    tl = []
    for s, ix in enumerate(batches):
        mask = torch.tensor(_core.dropout_mask(9, 100 + s, 32, 64, 0.2))
        emb = T["C"][torch.tensor(X[ix], dtype=torch.long)]
        h = torch.tanh(emb.reshape(32, -1) @ T["W1"] + T["b1"]) * mask
        loss = F.cross_entropy(h @ T["W2"] + T["b2"], torch.tensor(Y[ix], dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
        tl.append(loss.item())
    np.testing.assert_allclose(losses, tl, rtol=0, atol=2e-5)  # as in the trajectory tests
    for k in PARAM_NAMES:
        normwise_close(P[k], T[k].detach().numpy(), 2e-5, k)
