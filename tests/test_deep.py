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
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fastmlp import MLP, _core, optim
from fastmlp.model import param_names
from fastmlp.torch_module import TorchMLP
from conftest import U, assert_within, copy_params, normwise_close


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
    if mask is not None:  # dropout on every hidden layer's output (mask (L, N, H)): the twin's forward, by hand
        x = t.C[torch.as_tensor(X, dtype=torch.long)].view(len(X), -1)
        for l in range(1, m.n_layers + 1):
            pre = x @ getattr(t, f"W{l}")
            if m.batchnorm:
                pre = F.batch_norm(pre, getattr(t, f"running_mean{l}"), getattr(t, f"running_var{l}"),
                                   getattr(t, f"gamma{l}"), getattr(t, f"beta{l}"), True, m.bn_momentum, 1e-5)
            else:
                pre = pre + getattr(t, f"b{l}")
            x = torch.tanh(pre) * torch.as_tensor(mask[l - 1], dtype=dtype)
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
    emb = emb.detach().requires_grad_(True)
    logits = net(emb)
    rl = nn.functional.cross_entropy(logits, torch.as_tensor(Y, dtype=torch.long))
    rl.backward()
    loss, grads = m.loss_and_grad(X, Y)
    assert abs(loss - rl.item()) <= 1e-5 * rl.item()
    linears = [mod for mod in net if isinstance(mod, nn.Linear)]
    norms = [mod for mod in net if isinstance(mod, nn.BatchNorm1d)]
    for l, lin in enumerate(linears, 1):
        normwise_close(grads[f"W{l}"], lin.weight.grad.numpy().T, 1e-4, f"dW{l}")
        if lin.bias is not None:
            normwise_close(grads[f"b{l}"], lin.bias.grad.numpy(), 1e-4, f"db{l}")
    for l, norm in enumerate(norms, 1):
        normwise_close(grads[f"gamma{l}"], norm.weight.grad.numpy(), 1e-4, f"dgamma{l}")
        normwise_close(grads[f"beta{l}"], norm.bias.grad.numpy(), 1e-4, f"dbeta{l}")
    # and one fused training step moves the running statistics as the modules' forward did
    if bn:
        _core.train_steps(m.arrays(), X, Y, np.zeros(1, np.float32), batches=np.arange(32)[None],
                          batchnorm=m.bn_args())
        for l, norm in enumerate(norms, 1):
            normwise_close(m.buffers[f"running_mean{l}"], norm.running_mean.numpy(), 1e-5, f"running_mean{l}")
            normwise_close(m.buffers[f"running_var{l}"], norm.running_var.numpy(), 1e-5, f"running_var{l}")


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


@pytest.mark.parametrize("bn,opt,dropout", [(False, None, 0.0), (True, None, 0.0), (True, "adamw", 0.2),
                                            (False, "momentum", 0.1)])
def test_deep_training_is_identical_for_any_thread_count(small_names, bn, opt, dropout):
    X, Y = small_names.train
    batches = np.random.default_rng(5).integers(0, len(Y), (20, 256))  # a team's size of work
    out = []
    for threads in (1, 2, 3):
        m = MLP(small_names.vocab.size, 3, 10, 130, seed=5, init="kaiming", n_layers=4, batchnorm=bn)
        o = optim.AdamW(m.params) if opt == "adamw" else optim.SGD(m.params, momentum=0.9) if opt else None
        losses = _core.train_steps(m.arrays(), X, Y, np.full(20, 1e-3 if o else 0.1, np.float32), batches=batches,
                                   batchnorm=m.bn_args(), threads=threads, optimizer=o, dropout=dropout)
        out.append((losses, m))
    for losses, m in out[1:]:
        assert np.array_equal(losses, out[0][0])
        for k in m.param_names:
            assert np.array_equal(m.params[k], out[0][1].params[k]), k
        for k in m.buffers:
            assert np.array_equal(m.buffers[k], out[0][1].buffers[k]), k


@pytest.mark.parametrize("bn", [False, True])
def test_dropout_on_every_layer_matches_torch(bn):
    rng = np.random.default_rng(9)
    m = MLP(27, 3, 10, 50, seed=4, init="kaiming", n_layers=3, batchnorm=bn)
    X, Y = batch(rng, 27, 3, 40)
    mask = (rng.random((3, 40, 50)) > 0.3).astype(np.float32) / np.float32(0.7)
    loss, grads = m.loss_and_grad(X, Y, dropout_mask=mask)
    rloss, rgrads, _ = torch_loss_and_grad(m, X, Y, mask=mask)
    assert abs(loss - rloss) <= 1e-5 * rloss
    for k in m.param_names:
        normwise_close(grads[k], rgrads[k], 1e-4, f"d{k}")
    with pytest.raises(ValueError, match=r"dropout_mask must be 3-D with shape \(n_layers, N, H\), "
                                         r"got shape \(40, 50\)"):
        m.loss_and_grad(X, Y, dropout_mask=mask[0])


@pytest.mark.parametrize("bn", [False, True])
def test_the_training_loop_drops_each_layer_with_its_documented_mask(small_names, bn):
    # Each step of train_steps with dropout is loss_and_grad with the masks dropout_mask
    # documents (one a layer; the last layer's is the one-layer model's): the same forward,
    # so the same loss to the last bit, step after step.
    X, Y = small_names.train
    m = MLP(small_names.vocab.size, 3, 10, 40, seed=5, init="kaiming", n_layers=3, batchnorm=bn)
    batches = np.random.default_rng(2).integers(0, len(Y), (20, 32))
    p, seed = 0.25, 7
    lr = 0.1
    for s, ix in enumerate(batches):
        masks = np.stack([_core.dropout_mask(seed, s, 32, 40, p, layer=l, n_layers=3) for l in (1, 2, 3)])
        expect, grads = m.loss_and_grad(X[ix], Y[ix], dropout_mask=masks)
        before = {k: v.copy() for k, v in m.params.items()}
        got = _core.train_steps(m.arrays(), X, Y, np.full(1, lr, np.float32), batches=ix[None], dropout=p,
                                dropout_seed=seed, step0=s, batchnorm=m.bn_args())[0]
        assert got == np.float32(expect), (s, got, expect)
        # and the fused update is the per-call one: p - lr g, within the two roundings of storing it
        for k in m.param_names:
            want = before[k].astype(np.float64) - lr * grads[k]
            assert_within(m.params[k], want, 2 * U * (np.abs(want) + lr * np.abs(grads[k])) + 1e-30, f"step {s} {k}")
    first, second = (_core.dropout_mask(seed, 0, 32, 40, p, layer, 3) for layer in (1, 2))
    assert not np.array_equal(first, second)
    assert np.array_equal(_core.dropout_mask(seed, 0, 32, 40, p, 3, 3), _core.dropout_mask(seed, 0, 32, 40, p))


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


# -- checkpoints and the command line --------------------------------------------------------------
def rewrite_meta(path, change, drop=()):
    """The checkpoint at path with its JSON metadata edited (and arrays `drop` removed)."""
    import json
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k not in drop}
    meta = json.loads(str(arrays["meta"]))
    change(meta)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


def test_deep_checkpoints_round_trip_and_older_versions_load(tmp_path, small_names):
    from fastmlp import checkpoint as ckpt_io
    from fastmlp.train import TrainConfig, train
    cfg = dict(work_dir=str(tmp_path / "deep"), n_layers=3, n_hidden=24, batchnorm=True, bn_momentum=0.05,
               init="kaiming", max_steps=300, eval_interval=100, optimizer="adamw", learning_rate=1e-3)
    m = train(TrainConfig(**cfg), dataset=small_names, progress=False, log=lambda s: None)
    assert m["config"]["n_layers"] == 3 and m["config"]["batchnorm"] is True
    ck = ckpt_io.load(tmp_path / "deep")
    model = ck.model
    assert (model.n_layers, model.batchnorm, model.bn_momentum) == (3, True, 0.05)
    assert set(ck.optimizer_state["exp_avg"]) == set(model.param_names)
    assert not np.array_equal(model.buffers["running_var3"], np.ones(24, np.float32))  # trained, and saved
    assert abs(model.loss(*small_names.dev) - m["dev_loss"]) < 1e-6  # evaluation: the running statistics
    # resumed, it ends where one run of the same length ends
    train(TrainConfig(**dict(cfg, max_steps=300)), dataset=small_names, progress=False, log=lambda s: None,
          overwrite=True)
    whole = train(TrainConfig(**dict(cfg, work_dir=str(tmp_path / "whole"), max_steps=600)), dataset=small_names,
                  progress=False, log=lambda s: None)
    resumed = train(TrainConfig(**dict(cfg, max_steps=600)), dataset=small_names, progress=False,
                    log=lambda s: None, resume=True, overrides={"max_steps": 600})
    assert resumed["dev_loss"] == whole["dev_loss"]
    with pytest.raises(ValueError, match="cannot change n_layers"):
        train(TrainConfig(**cfg), dataset=small_names, progress=False, log=lambda s: None, resume=True,
              overrides={"n_layers": 2})
    # a version-2 file (the one-layer format, no depth keys) still loads
    train(TrainConfig(work_dir=str(tmp_path / "v2"), n_hidden=16, max_steps=50, eval_interval=50),
          dataset=small_names, progress=False, log=lambda s: None)
    path = tmp_path / "v2" / "model.npz"

    def as_v2(meta):
        meta["version"] = 2
        for k in ("n_layers", "batchnorm"):
            meta["model"].pop(k)
    rewrite_meta(path, as_v2)
    old = ckpt_io.load(path).model
    assert (old.n_layers, old.batchnorm, old.param_names) == (1, False, ("C", "W1", "b1", "W2", "b2"))
    # hostile depth metadata: one line each
    deep = tmp_path / "deep" / "model.npz"
    for change, drop, message in (
            (lambda meta: meta["model"].update(n_layers=999), (), r"n_layers must be an integer in \[1, 16\]"),
            (lambda meta: meta["model"].update(batchnorm="yes"), (), "batchnorm must be true or false"),
            (lambda meta: meta["model"].update(bn_momentum=7), (), r"bn_momentum must be a number in \[0, 1\]"),
            (lambda meta: None, ("bn.running_mean1",), r"lacks \['bn.running_mean1'\]"),
            (lambda meta: meta["model"].update(n_layers=2), (),
             r"lacks \['b3'\], which its model \(2 hidden layers, BatchNorm\) needs")):
        import shutil
        bad = tmp_path / "bad.npz"
        shutil.copy(deep, bad)
        rewrite_meta(bad, change, drop)
        with pytest.raises(ckpt_io.CheckpointError, match=message):
            ckpt_io.load(bad)


def test_depth_flags_and_their_bad_values(tmp_path, words_file):
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "fastmlp.train", "-i", str(words_file), "-o",
                               str(tmp_path / "run"), "--no-progress", *map(str, args)], capture_output=True,
                              text=True)
    r = cli("--n-layers", 3, "--n-hidden", 16, "--batchnorm", "--init", "kaiming", "--max-steps", 200,
            "--eval-interval", 100, "--json", "--diagnostics", "--diag-interval", 50)
    assert r.returncode == 0, r.stderr
    assert "n_layers=3, batchnorm=True" in r.stderr
    import json
    out = json.loads(r.stdout)
    assert out["config"]["n_layers"] == 3 and len(out["diagnostics"]["saturation"]) == 3  # one series a layer
    assert (tmp_path / "run" / "diagnostics.png").exists()
    for args, message in (
            (("--n-layers", 0), r"--n-layers: must be an integer in \[1, 16\], got 0"),
            (("--n-layers", 17), r"--n-layers: must be an integer in \[1, 16\], got 17"),
            (("--batchnorm", "-b", 1), "batchnorm needs batch_size >= 2"),
            (("--bn-momentum", 2, "--batchnorm"), r"bn_momentum must be a number in \[0, 1\]"),
            (("--bn-momentum", 0.5), "bn_momentum 0.5 belongs to BatchNorm: add --batchnorm"),
            (("--n-layers", 16, "--n-hidden", 4_000_000, "--overwrite"), r"needs about [\d,.]+ GiB to train, and this "
                                                                         r"machine has")):
        r = cli(*args)
        assert r.returncode == 2 and (message in r.stderr or re.search(message, r.stderr)), (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_what_a_hostile_second_look_found(tmp_path, small_names):
    from fastmlp import checkpoint as ckpt_io
    from fastmlp.train import TrainConfig, train
    m = MLP(small_names.vocab.size, 3, 10, 32, n_layers=3, batchnorm=True, bn_momentum=0.2, init="kaiming")
    # a checkpoint saved by hand resumes with the model's own depth, not the defaults
    ckpt_io.save(tmp_path / "h1" / "model.npz", ckpt_io.Checkpoint(model=m, vocab=small_names.vocab))
    r = train(TrainConfig(work_dir=str(tmp_path / "h1")), dataset=small_names, resume=True, progress=False,
              log=lambda s: None, overrides={"max_steps": 100, "eval_interval": 100})
    assert (r["config"]["n_layers"], r["config"]["batchnorm"], r["config"]["bn_momentum"], r["config"]["init"]) \
        == (3, True, 0.2, "kaiming")
    # a configuration that contradicts its model is refused
    import json
    path = tmp_path / "h1" / "model.npz"
    rewrite_meta(path, lambda meta: meta["train_config"].update(n_layers=5))
    with pytest.raises(ckpt_io.CheckpointError, match=r"holds a model with .* = \(3, 10, 32, 3, True, 0.2\), but "
                                                      r"its configuration says \(3, 10, 32, 5, True"):
        train(TrainConfig(work_dir=str(tmp_path / "h1")), dataset=small_names, resume=True, progress=False,
              log=lambda s: None, overrides={"max_steps": 200})
    # arrays the model does not have are refused, not dropped
    ckpt_io.save(tmp_path / "h2" / "model.npz", ckpt_io.Checkpoint(model=m, vocab=small_names.vocab))
    with np.load(tmp_path / "h2" / "model.npz") as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(tmp_path / "h2" / "model.npz", **arrays, W5=arrays["W4"])
    with pytest.raises(ckpt_io.CheckpointError, match=r"holds arrays its model \(3 hidden layers, BatchNorm\) does "
                                                      r"not have: \['W5'\]"):
        ckpt_io.load(tmp_path / "h2")
    # a state_dict has no momentum: from_torch takes it
    assert MLP.from_torch(m.to_torch().state_dict(), bn_momentum=0.2).bn_momentum == 0.2
    # evaluation whose folded BatchNorm overflows float32 says so instead of returning NaN
    bad = m.copy()
    bad.buffers["running_var1"][:] = 0
    bad.params["gamma1"][:] = 3e38
    X, Y = small_names.dev
    with pytest.raises(ValueError, match="BatchNorm layer 1 cannot be evaluated in float32"):
        bad.loss(X, Y)
    # BatchNorm's momentum without BatchNorm is a mistake, said so
    with pytest.raises(ValueError, match="bn_momentum 0.5 belongs to BatchNorm"):
        TrainConfig(bn_momentum=0.5).check()
    with pytest.raises(TypeError, match="batchnorm eps must be a number, got str"):
        _core.mlp_forward(m.arrays(), X, batchnorm=m.bn_args()[:2] + ("x", 0.1))


# -- BatchNorm1d alone: the step's column-shared kernels against torch.nn.BatchNorm1d ------------
@pytest.mark.parametrize("N,H", [(32, 100), (2, 1), (257, 33), (64, 129)])
def test_batchnorm_alone_equals_torch_batchnorm1d(isa, N, H):
    # Training mode: the batch's mean and biased variance, summed in float32 over N rows
    # (error <= N U max|x| on the mean in row order; torch's pairwise sums do better), then a
    # few roundings a row. The output's error is then at most |gamma| invstd (N U max|x|) + 4 U
    # a column: tiny for a spread column, but a constant one has invstd = 1/sqrt(eps) = 316
    # and any float32 mean's last bit shows (torch float32 errs by 1.3e-5 there at N = 257).
    # Gradients: 1e-4 normwise, as the model's. Torch float32 meets every bound too.
    rng = np.random.default_rng(N + H)
    pre = (rng.normal(0.5, 2.0, (N, H))).astype(np.float32)
    pre[:, 0] = 1.25  # a constant column: variance 0, eps alone
    gamma = rng.uniform(0.5, 1.5, H).astype(np.float32)
    beta = rng.normal(0, 0.3, H).astype(np.float32)
    dh = rng.normal(0, 1, (N, H)).astype(np.float32)
    h, xhat, stats = _core.batchnorm_tanh_forward(pre, gamma, beta)
    dpre, dgamma, dbeta = _core.batchnorm_tanh_backward(dh, h, xhat, stats, gamma)
    for dtype in (torch.float64, torch.float32):
        bn = nn.BatchNorm1d(H, eps=1e-5, momentum=0.1).to(dtype)
        with torch.no_grad():
            bn.weight.copy_(torch.from_numpy(gamma))
            bn.bias.copy_(torch.from_numpy(beta))
        x = torch.tensor(pre, dtype=dtype, requires_grad=True)
        th = torch.tanh(bn(x))
        th.backward(torch.tensor(dh, dtype=dtype))
        if dtype == torch.float64:
            ref = (th.detach().numpy(), x.grad.numpy(), bn.weight.grad.numpy(), bn.bias.grad.numpy(),
                   bn.running_mean.numpy(), bn.running_var.numpy())
            ours = (h, dpre, dgamma, dbeta)
        else:
            ours = (th.detach().numpy(), x.grad.numpy(), bn.weight.grad.numpy(), bn.bias.grad.numpy())
        invstd = 1 / np.sqrt(pre.astype(np.float64).var(0) + 1e-5)
        bound = np.abs(gamma) * invstd * (N * U * np.abs(pre).max(0)) + 4 * U
        assert_within(ours[0], ref[0], bound, f"h ({dtype})")
        for got, want, what in zip(ours[1:], ref[1:4], ("dpre", "dgamma", "dbeta")):
            normwise_close(got, want, 1e-4, f"{what} ({dtype})")
    # the statistics the backward uses, and the running ones torch's module moved to
    np.testing.assert_allclose(stats[0], pre.astype(np.float64).mean(0), rtol=0, atol=N * U * np.abs(pre).max())
    np.testing.assert_allclose(stats[1], pre.astype(np.float64).var(0), rtol=1e-5, atol=1e-6)
    assert ref[5][0] == pytest.approx(0.9) and ref[4][0] == pytest.approx(0.125)  # (torch's own momentum rule)
    with pytest.raises(ValueError, match="BatchNorm needs at least 2 rows in training"):
        _core.batchnorm_tanh_forward(pre[:1], gamma, beta)


def test_sampling_uses_the_running_statistics(small_names):
    # greedy sampling (top_k 1) is the argmax of the evaluation forward, character by character
    m = MLP(small_names.vocab.size, 3, 10, 40, seed=5, init="kaiming", n_layers=2, batchnorm=True)
    X, Y = small_names.train
    _core.train_steps(m.arrays(), X, Y, np.full(300, 0.1, np.float32), batch_size=32, rng_state=_core.rng_state(1),
                      batchnorm=m.bn_args())
    out = _core.sample(m.arrays(), 4, 12, 0, 1.0, 1, batchnorm=m.eval_bn_args())
    ctx, expect = np.zeros((1, 3), np.int32), []
    # (a forward of 256 rows, as the sampler's batch: both take the first layer through the
    # embedding table, or both do not; kernels.h's first_layer_tables)
    for _ in range(12):
        nxt = int(np.argmax(m.forward(np.repeat(ctx, 256, 0))[0]))
        expect.append(nxt)
        if nxt == 0:
            break
        ctx = np.concatenate([ctx[:, 1:], [[nxt]]], 1).astype(np.int32)
    assert list(out[0][:len(expect)]) == expect and (out == out[0]).all()
    # other running statistics, other words: the sampler reads them
    m.buffers["running_mean1"][:] += 3.0
    assert not np.array_equal(_core.sample(m.arrays(), 4, 12, 0, 1.0, 1, batchnorm=m.bn_args()), out)


def test_optimizers_keep_the_kernels_order_whatever_the_dicts(small_names):
    m = MLP(small_names.vocab.size, 3, 10, 20, seed=5, n_layers=2, batchnorm=True)
    shuffled = {k: m.params[k] for k in reversed(m.param_names)}
    opt = optim.AdamW(shuffled)
    assert opt.names == m.param_names
    state = {slot: {k: v for k, v in reversed(list(d.items()))} for slot, d in opt.state.items()}
    opt.load_state(state, 3)
    assert opt.names == m.param_names and list(opt.state["exp_avg"]) == list(m.param_names)
    sgd = optim.SGD()  # no parameters given: they are the update's
    _, grads = m.loss_and_grad(*small_names.dev)
    before = m.params["W3"].copy()
    sgd.update(m.params, grads, lr=0.1)
    assert not np.array_equal(m.params["W3"], before)  # every layer, not the lecture's five
    with pytest.raises(ValueError, match="are not the parameters of a model"):
        optim.AdamW({"C": m.params["C"], "W1": m.params["W1"]})


def test_an_eval_guard_per_unit_and_in_the_kernels():
    m = MLP(27, 3, 10, 8, seed=1, init="kaiming", n_layers=1, batchnorm=True)
    m.params["W1"][:, 3] = 0  # a unit with no weights and no mean: max|W| x max s would miss it
    m.params["gamma1"][3] = 3e38
    m.buffers["running_var1"][3] = 0
    X = np.zeros((2, 3), np.int32)
    with pytest.raises(ValueError, match="BatchNorm layer 1 cannot be evaluated in float32"):
        m.forward(X)
    with pytest.raises(ValueError, match="a BatchNorm layer cannot be evaluated in float32"):
        _core.mlp_forward(m.arrays(), X, batchnorm=m.bn_args())  # the kernels' own check
