"""fastmlp.diagnostics against the same numbers computed by PyTorch (float64) from the same
parameters on the same batch, within bounds derived from float32 rounding; and the
records of --diagnostics inside the training loop."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastmlp
from fastmlp import MLP, _core, checkpoint as ckpt_io
from fastmlp.diagnostics import BINS, PRE_RANGE, SATURATED, diag_arg, diagnose, parse_record, record_length
from fastmlp.model import PARAM_NAMES
from fastmlp.optim import AdamW
import torch_reference as ref
from conftest import TANH_U, U, copy_params, make_words, train_steps


def twin(params, X, Y, lr=None, adamw=None, grads32=None):
    """What the lecture's notebook computes (float64): hpreact, h with retain_grad, the
    parameters' gradients, and the update lr * grad (or, adamw = its weight decay, AdamW's
    first step from the float32 gradients grads32, run in float32 like ours)."""
    P = ref.mlp_params(params)
    emb = P["C"][torch.as_tensor(X, dtype=torch.long)]
    pre = emb.reshape(len(X), -1) @ P["W1"] + P["b1"]
    h = torch.tanh(pre)
    h.retain_grad()
    loss = F.cross_entropy(h @ P["W2"] + P["b2"], torch.as_tensor(Y, dtype=torch.long))
    loss.backward()
    grads = {k: v.grad.numpy() for k, v in P.items()}
    update = None
    if adamw is not None:
        p = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
        opt = torch.optim.AdamW(list(p.values()), lr=lr, weight_decay=adamw)
        for k in PARAM_NAMES:
            p[k].grad = torch.tensor(grads32[k])
        opt.step()
        update = {k: p[k].detach().numpy().astype(np.float64) - params[k] for k in PARAM_NAMES}
    elif lr is not None:
        update = {k: -lr * g for k, g in grads.items()}
    return loss.item(), pre.detach().numpy(), h.detach().numpy(), h.grad.numpy(), grads, update


def forward_bounds(params, X):
    """Elementwise bounds of |pre - pre64| and |h - h64| for fastmlp's float32 forward: a
    dot product of K = T*E terms plus a bias has error <= (K + 1) U sum|x||w| (each term
    exactly rounded, then K additions), and tanh adds TANH_U |h| (conftest's bound)."""
    emb = np.abs(params["C"][X].reshape(len(X), -1).astype(np.float64))
    K = emb.shape[1]
    pre_err = (K + 1) * U * (emb @ np.abs(params["W1"]) + np.abs(params["b1"]))
    return pre_err, pre_err + TANH_U


def near(values, edges, delta):
    """How many values lie within delta of an interior edge (they may fall either side)."""
    v = np.asarray(values).ravel()[:, None]
    return int((np.abs(v - np.asarray(edges)[1:-1][None, :]) <= np.asarray(delta).ravel()[:, None]).any(1).sum())


def std_bound(err_max, n):
    """|std(a) - std(b)| <= std(a - b) <= sqrt(n / (n - 1)) max|a - b| (std is a seminorm)."""
    return math.sqrt(n / (n - 1)) * err_max


def check_hist(ours, ref_values, edges, delta, what):
    counts, _ = np.histogram(np.clip(ref_values, edges[0], edges[-1]), bins=edges)
    moved = near(ref_values, edges, delta)
    assert ours.counts.sum() == ref_values.size, what
    assert np.abs(ours.counts - counts).sum() <= 2 * moved, (what, np.abs(ours.counts - counts).sum(), moved)


@pytest.mark.parametrize("V,T,E,H,N,init", [
    (27, 3, 10, 200, 32, "lecture"),   # the lecture's batch, before the init fix
    (27, 3, 10, 200, 32, "scaled"),    # and after
    (7, 5, 3, 33, 257, "scaled"),      # odd sizes everywhere
    (50, 8, 24, 130, 100, "lecture"),
])
@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_diagnose_equals_the_torch_twin(isa, V, T, E, H, N, init, opt):
    rng = np.random.default_rng(V + T + H + N)
    m = MLP(V, T, E, H, seed=3, init=init)
    X, Y = rng.integers(0, V, (N, T)).astype(np.int32), rng.integers(0, V, N).astype(np.int32)
    lr = 0.1 if opt == "sgd" else 0.01
    before = copy_params(m.params)
    d = diagnose(m, X, Y, lr=lr, optimizer=AdamW(m.params, weight_decay=0.01) if opt == "adamw" else None)
    for k in PARAM_NAMES:  # the model is not touched
        np.testing.assert_array_equal(m.params[k], before[k])
    # (AdamW's twin steps from the same float32 gradients: AdamW's arithmetic is compared)
    loss, pre, h, dh, grads, update = twin(m.params, X, Y, lr, adamw=0.01 if opt == "adamw" else None,
                                           grads32=d.grads)
    pre_err, h_err = forward_bounds(m.params, X)
    n = h.size
    layer = d.layers[0]
    assert abs(d.loss - loss) <= 1e-5 * max(1.0, loss)  # as test_loss_and_grad
    # the tanh outputs and their inputs: means and stds within the elementwise bounds
    assert abs(layer.mean - h.mean()) <= h_err.max()
    assert abs(layer.std - h.std(ddof=1)) <= std_bound(h_err.max(), n)
    assert abs(layer.pre_mean - pre.mean()) <= pre_err.max()
    assert abs(layer.pre_std - pre.std(ddof=1)) <= std_bound(pre_err.max(), n)
    # saturation and dead units: only entries within the bound of 0.97 may count otherwise
    a = np.abs(h)
    close = np.abs(a - SATURATED) <= h_err
    assert abs(layer.saturation - (a > SATURATED).mean()) <= close.sum() / n
    assert abs(layer.dead - (a > SATURATED).all(0).sum()) <= close.any(0).sum()
    check_hist(layer.hist, h, np.linspace(-1, 1, BINS + 1), h_err, "act_hist")
    check_hist(layer.pre_hist, pre, np.linspace(-PRE_RANGE, PRE_RANGE, BINS + 1), pre_err, "pre_hist")
    # the layer output's gradient: to 1e-4 of its largest entry (test_loss_and_grad's bound)
    g_err = 1e-4 * np.abs(dh).max()
    assert abs(layer.grad_std - dh.std(ddof=1)) <= std_bound(g_err, n)
    assert abs(layer.grad_hist.edges[-1] - np.abs(dh).max()) <= g_err
    check_hist(layer.grad_hist, dh, np.linspace(-np.abs(dh).max(), np.abs(dh).max(), BINS + 1), 2 * g_err, "grad")
    # every parameter: std of the same float32 numbers; gradients to 1e-4 normwise; the
    # update also carries the rounding of the stored result (U |p|)
    for k in PARAM_NAMES:
        p = m.params[k].astype(np.float64)
        assert d.param_std[k] == pytest.approx(p.std(ddof=1), rel=1e-9, abs=1e-300), k
        ge = 1e-4 * np.abs(grads[k]).max()
        assert abs(d.grad_std[k] - grads[k].std(ddof=1)) <= std_bound(ge, p.size), k
        if opt == "sgd":
            ue = lr * ge + U * np.abs(p).max() * 1.01
        else:  # from the same gradients, AdamW's float32 step 1: m, v, two bias corrections, sqrt, + eps,
            # the quotient, * lr and the decay are 10 roundings of numbers whose |m^/(sqrt(v^)+eps)| <= 1,
            # so |update error| <= 10 U lr (+ the decay's lr wd |p| U, and U |p| for the stored result)
            ue = 10 * U * lr + U * lr * 0.01 * np.abs(p).max() + U * np.abs(p).max() * 1.01
        assert abs(d.update_std[k] - update[k].std(ddof=1)) <= std_bound(ue, p.size), (k, d.update_std[k])
    assert d.grad_data["W1"] == pytest.approx(d.grad_std["W1"] / d.param_std["W1"])
    assert d.saturation_map.shape == (N, H)
    np.testing.assert_array_equal(d.saturation_map, np.abs(d.act) > SATURATED)


def test_diagnose_refuses_bad_input_and_needs_lr_for_updates():
    m = MLP(27, 3, 10, 20, init="scaled")
    X, Y = np.zeros((4, 3), np.int32), np.zeros(4, np.int32)
    d = diagnose(m, X, Y)
    assert d.update_std is None and d.update_data is None and d.to_dict()["update_data"] is None
    json.dumps(d.to_dict())  # plain JSON
    assert d.to_dict()["grad_data"]["b2"] is None  # scaled init: b2 = 0, no ratio
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        diagnose(m, X, Y, lr=float("nan"))
    with pytest.raises(ValueError, match="same number"):
        diagnose(m, X, Y[:3])
    with pytest.raises(TypeError, match="optimizer must be"):
        diagnose(m, X, Y, lr=0.1, optimizer=42)
    with pytest.raises(IndexError):
        diagnose(m, X + 30, Y)


# batch 128: the first layer through the embedding table (table-inl.h)
@pytest.mark.parametrize("batch_size", [32, 128])
def test_the_loop_records_what_diagnose_computes_and_trains_the_same(isa, small_names, batch_size):
    # the loop's record of step s is diagnose() on the model (and optimizer) as they were at
    # step s and that step's batch, bit for bit; and a recording call trains exactly as one
    # that does not record
    X, Y = small_names.train
    m = MLP(small_names.vocab.size, 3, 10, 64, seed=1, init="lecture")
    batches = np.random.default_rng(0).integers(0, len(Y), (20, batch_size))
    for opt in (None, "adamw"):
        plain, recorded = copy_params(m.params), copy_params(m.params)
        o1 = AdamW(plain) if opt else None
        o2 = AdamW(recorded) if opt else None
        l1 = train_steps(plain, X, Y, (20, 0.05), batches=batches, optimizer=o1)
        out = np.empty((5, record_length()))  # global steps 3..22: 5, 10, 15, 20 are recorded
        l2 = train_steps(recorded, X, Y, (20, 0.05), batches=batches, optimizer=o2, step0=3,
                         diag=diag_arg(out, every=5))
        np.testing.assert_array_equal(l1, l2)
        for k in PARAM_NAMES:
            np.testing.assert_array_equal(plain[k], recorded[k])
        assert np.isfinite(out[:4, 0]).all() and np.isnan(out[4:]).all()
        for row, s in enumerate((2, 7, 12, 17)):  # global steps 5, 10, 15, 20
            at = copy_params(m.params)
            o = AdamW(at) if opt else None
            if s:
                train_steps(at, X, Y, (s, 0.05), batches=batches[:s], optimizer=o)
            d = diagnose(MLP.from_params(at), X[batches[s]], Y[batches[s]], lr=0.05, optimizer=o)
            assert parse_record(out[row]).to_dict() == d.to_dict(), (opt, row)


def test_diag_argument_is_checked():
    m = MLP(27, 3, 10, 20)
    X, Y = np.zeros((40, 3), np.int32), np.zeros(40, np.int32)
    P = m.arrays()
    lrs = np.full(2, 0.1, np.float32)
    with pytest.raises(ValueError, match="diag out must have shape"):
        _core.train_steps(P, X, Y, lrs, batches=np.zeros((2, 8), np.int64), diag=(np.empty(3), BINS, 10.0, 0.97,
                                                                                 None, 1))
    with pytest.raises(ValueError, match="sat in"):
        _core.train_steps(P, X, Y, lrs, batches=np.zeros((2, 8), np.int64),
                          diag=(np.empty(record_length()), BINS, 10.0, 1.5, None, 1))
    with pytest.raises(TypeError, match="diag must be a tuple"):
        _core.train_steps(P, X, Y, lrs, batches=np.zeros((2, 8), np.int64), diag=[1, 2])
    out = np.empty(record_length())
    with pytest.raises(ValueError, match="share memory"):
        _core.train_steps(P, X, Y, lrs, batches=np.zeros((2, 8), np.int64),
                          diag=(out, BINS, 10.0, 0.97, P[1].reshape(-1)[:160].reshape(8, 20), 1))


# -- training with --diagnostics -------------------------------------------------------
def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_a_run_with_diagnostics_records_saves_resumes_and_draws(tmp_path, words_file):
    out = tmp_path / "run"
    r = cli("fastmlp.train", "-i", words_file, "-o", out, "--n-hidden", 32, "--max-steps", 1000,
            "--eval-interval", 500, "--diagnostics", "--diag-interval", 100, "--json", "--no-progress")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.splitlines()[0])
    diag = m["diagnostics"]
    assert diag["steps"] == list(range(0, 1000, 100))
    assert all(0 <= s <= 1 for s in diag["saturation"][0]) and len(diag["update_data"]["W1"]) == 10
    assert set(diag["last"]["grad_data"]) == set(PARAM_NAMES) and diag["last"]["layers"][0]["hist"]["counts"]
    assert "diagnostics.png" in m["files"] and "saturation.png" in m["files"]
    import matplotlib.image

    for f, shape in (("diagnostics.png", (1020, 1560)), ("saturation.png", None)):
        img = matplotlib.image.imread(out / f)  # a real picture, of the figure's size (13 x 8.5 in at 120 dpi)
        assert img.ndim == 3 and (shape is None or img.shape[:2] == shape) and img.std() > 0, (f, img.shape)
    ck = ckpt_io.load(out)
    assert list(ck.diag_steps) == diag["steps"] and ck.diag_records.shape == (10, record_length())
    # the lecture's init: the first line after the model's says so
    err = r.stderr.splitlines()
    assert err[1].startswith("loss at step 0: ") and "-log(1/" in err[1] and "--init scaled" in err[1], err
    # resume keeps the records and goes on recording
    r = cli("fastmlp.train", "-o", out, "--resume", "--max-steps", 1500, "--json", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["diagnostics"]["steps"] == list(range(0, 1500, 100))
    assert "loss at step 0" not in r.stderr
    # python -m fastmlp.plot draws them again from the checkpoint
    (out / "diagnostics.png").unlink()
    (out / "saturation.png").unlink()
    r = cli("fastmlp.plot", "-o", out)
    assert r.returncode == 0 and (out / "diagnostics.png").is_file() and (out / "saturation.png").is_file(), r.stderr


def test_a_scaled_init_is_not_warned_about(tmp_path, words_file):
    r = cli("fastmlp.train", "-i", words_file, "-o", tmp_path / "o", "--n-hidden", 32, "--max-steps", 50,
            "--init", "scaled", "--no-progress")
    assert r.returncode == 0, r.stderr
    line = r.stderr.splitlines()[1]
    assert line.startswith("loss at step 0: ") and "too confident" not in line


def test_the_initial_loss_of_the_lecture_init_on_names(tmp_path):
    # the numbers: the lecture's init on names.txt starts near 27, a uniform guess at 3.2958
    from fastmlp.train import initial_loss_note

    note = initial_loss_note(27.5, 27)
    assert "-log(1/27) = 3.2958" in note and "8.3x" in note and "--init scaled" in note
    assert "too confident" not in initial_loss_note(3.30, 27)


@pytest.mark.parametrize("args,msg", [
    (["--diag-interval", "0"], "argument --diag-interval: must be an integer in [1, "),
    (["--diag-interval", "5000"], "diag_interval must be an integer in [1, max_steps = 100]"),
    (["--tensorboard", "FILE"], "exists and is not a folder"),
])
def test_bad_diagnostics_flags_are_one_line_before_training(tmp_path, words_file, args, msg):
    (tmp_path / "afile").write_text("x")
    args = [str(tmp_path / "afile") if a == "FILE" else a for a in args]
    r = cli("fastmlp.train", "-i", words_file, "-o", tmp_path / "o", "--max-steps", 100, "--no-progress", *args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) <= 2 and msg in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o" / "model.npz").exists()


def test_tensorboard_events_read_back_with_tensorboards_reader(tmp_path, words_file):
    pytest.importorskip("tensorboardX")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    r = cli("fastmlp.train", "-i", words_file, "-o", tmp_path / "o", "--n-hidden", 32, "--max-steps", 600,
            "--eval-interval", 200, "--diag-interval", 100, "--tensorboard", tb, "--no-progress")
    assert r.returncode == 0, r.stderr
    ea = EventAccumulator(str(tb), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    tags = ea.Tags()
    for t in ("loss/train", "loss/dev", "lr", "saturation/layer1", "update_data/W1", "grad_data/W2"):
        assert t in tags["scalars"], (t, tags["scalars"])
    assert [e.step for e in ea.Scalars("loss/dev")] == [200, 400, 600]
    assert [e.step for e in ea.Scalars("saturation/layer1")] == list(range(0, 600, 100))
    hist = ea.Histograms("act/layer1")
    assert [h.step for h in hist] == list(range(0, 600, 100))
    assert hist[0].histogram_value.num == 32 * 32  # batch 32 x 32 units
    assert {"act_grad/layer1", "pre_act/layer1"} <= set(tags["histograms"])


@pytest.mark.parametrize("opt,dropout", [(None, 0.0), ("adamw", 0.0), (None, 0.2), ("adamw", 0.2)])
def test_records_are_the_same_for_any_thread_count_and_do_not_change_training(small_names, opt, dropout):
    # the threads' epilogues count integers and sum rows; one thread adds them in row order.
    # The batch is big enough for a team of threads (kTeamMacs); with dropout the output
    # gradient is the dropped layer's
    X, Y = small_names.train
    m = MLP(small_names.vocab.size, 3, 16, 256, seed=4, init="scaled")
    batches = np.random.default_rng(5).integers(0, len(Y), (6, 512))
    runs = []
    for n, record in ((1, True), (2, True), (3, True), (2, False)):
        P = copy_params(m.params)
        o = AdamW(P) if opt else None
        out = np.empty((3, record_length()))
        losses = train_steps(P, X, Y, (6, 0.05), batches=batches, threads=n, optimizer=o, dropout=dropout,
                             dropout_seed=9, diag=diag_arg(out, every=2) if record else None)
        runs.append((out, losses, P))
    for out, losses, P in runs[1:]:
        if out is not runs[3][0]:
            np.testing.assert_array_equal(out, runs[0][0])
        np.testing.assert_array_equal(losses, runs[0][1])
        for k in PARAM_NAMES:
            np.testing.assert_array_equal(P[k], runs[0][2][k])
    assert np.isfinite(runs[0][0]).all()


def test_a_missing_tensorboard_extra_is_one_line_before_training(tmp_path, words_file, monkeypatch):
    from fastmlp.train import TrainConfig, train

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX now fails
    cfg = TrainConfig(input_file=str(words_file), work_dir=str(tmp_path / "o"), n_hidden=16, max_steps=50,
                      tensorboard=str(tmp_path / "tb"))
    with pytest.raises(ImportError, match=r'--tensorboard needs tensorboardX: pip install "fastmlp\[tensorboard\]"'):
        train(cfg, progress=False, log=lambda s: None)
    assert not (tmp_path / "o").exists()  # nothing was made


# -- a deeper net: one record per hidden layer ---------------------------------------------------
def deep_twin(m, X, Y, lr):
    """The per-layer numbers part 3 plots, from the torch twin (float64, training mode)."""
    t = m.to_torch().double().train()
    x = t.C[torch.as_tensor(X, dtype=torch.long)].view(len(X), -1)
    pres, hs = [], []
    for l in range(1, m.n_layers + 1):
        W = getattr(t, f"W{l}")
        if m.batchnorm:
            pre = F.batch_norm(x @ W, getattr(t, f"running_mean{l}"), getattr(t, f"running_var{l}"),
                               getattr(t, f"gamma{l}"), getattr(t, f"beta{l}"), True, m.bn_momentum, 1e-5)
        else:
            pre = x @ W + getattr(t, f"b{l}")
        x = torch.tanh(pre)
        x.retain_grad()
        pres.append(pre)
        hs.append(x)
    L1 = m.n_layers + 1
    loss = F.cross_entropy(x @ getattr(t, f"W{L1}") + getattr(t, f"b{L1}"), torch.as_tensor(Y, dtype=torch.long))
    loss.backward()
    grads = {k: getattr(t, k).grad.numpy() for k in m.param_names}
    return loss.item(), [p.detach().numpy() for p in pres], [h.detach().numpy() for h in hs], \
        [h.grad.numpy() for h in hs], grads


@pytest.mark.parametrize("bn", [False, True])
def test_deep_records_every_layer_as_the_torch_twin(isa, bn):
    # Bounds: five products deep (K <= 60) the forward keeps ~1e-6 absolute on pre and h
    # (measured 1e-7; (K + 1) U sum|x||w| per layer, compounded over 5 layers, stays below
    # 1e-5); d loss / d h and the parameter gradients to 1e-4 normwise (test_deep.py's bound).
    rng = np.random.default_rng(11)
    m = MLP(27, 3, 10, 60, seed=2, init="kaiming", n_layers=5, batchnorm=bn)
    X, Y = rng.integers(0, 27, (64, 3)).astype(np.int32), rng.integers(0, 27, 64).astype(np.int32)
    d = diagnose(m, X, Y, lr=0.1)
    loss, pres, hs, dhs, grads = deep_twin(m, X, Y, 0.1)
    assert len(d.layers) == 5 and d.acts.shape == (5, 64, 60) and np.array_equal(d.act, d.acts[0])
    assert abs(d.loss - loss) <= 1e-5 * loss
    tol = 1e-5
    for layer, pre, h, dh, act in zip(d.layers, pres, hs, dhs, d.acts):
        n = h.size
        np.testing.assert_allclose(act, h, rtol=0, atol=tol)
        assert abs(layer.mean - h.mean()) <= tol and abs(layer.std - h.std(ddof=1)) <= std_bound(tol, n)
        assert abs(layer.pre_mean - pre.mean()) <= tol and abs(layer.pre_std - pre.std(ddof=1)) <= std_bound(tol, n)
        a = np.abs(h)
        close = np.abs(a - SATURATED) <= tol
        assert abs(layer.saturation - (a > SATURATED).mean()) <= close.sum() / n
        gerr = 1e-4 * np.abs(dh).max()
        assert abs(layer.grad_std - dh.std(ddof=1)) <= std_bound(gerr, n)
        check_hist(layer.hist, h, np.linspace(-1, 1, BINS + 1), tol, "act_hist")
        check_hist(layer.pre_hist, pre, np.linspace(-PRE_RANGE, PRE_RANGE, BINS + 1), tol, "pre_hist")
    assert list(d.param_std) == list(m.param_names)
    for k in m.param_names:
        p = m.params[k]
        assert d.param_std[k] == pytest.approx(p.std(ddof=1) if p.size > 1 else d.param_std[k], rel=1e-6)
        g = grads[k]
        assert abs(d.grad_std[k] - g.std(ddof=1)) <= std_bound(1e-4 * np.abs(g).max(), g.size)
        # the update of plain SGD is -lr g, stored in float32: std within the same bound plus rounding
        assert abs(d.update_std[k] - 0.1 * g.std(ddof=1)) <= std_bound(0.1 * 1e-4 * np.abs(g).max()
                                                                      + 2 * U * np.abs(p).max(), g.size)
    for k in m.buffers:  # diagnose ran on copies: the running statistics did not move
        assert (m.buffers[k] == (0 if "mean" in k else 1)).all()


def test_deep_records_are_the_same_for_any_thread_count(small_names):
    X, Y = small_names.train
    batches = np.random.default_rng(5).integers(0, len(Y), (6, 256))
    names = MLP(small_names.vocab.size, 3, 10, 130, n_layers=3, batchnorm=True).param_names
    outs = []
    for threads in (1, 2, 3):
        m = MLP(small_names.vocab.size, 3, 10, 130, seed=5, init="kaiming", n_layers=3, batchnorm=True)
        out = np.empty((3, record_length(names=names)))
        losses = _core.train_steps(m.arrays(), X, Y, np.full(6, 0.1, np.float32), batches=batches, threads=threads,
                                   diag=diag_arg(out, every=2), batchnorm=m.bn_args())
        plain = MLP(small_names.vocab.size, 3, 10, 130, seed=5, init="kaiming", n_layers=3, batchnorm=True)
        plain_losses = _core.train_steps(plain.arrays(), X, Y, np.full(6, 0.1, np.float32), batches=batches,
                                         threads=threads, batchnorm=plain.bn_args())
        assert np.array_equal(losses, plain_losses)  # recording does not change training
        for k in m.param_names:
            assert np.array_equal(m.params[k], plain.params[k]), k
        outs.append(out)
    assert np.isfinite(outs[0]).all()
    for o in outs[1:]:
        assert np.array_equal(o, outs[0])
    r = parse_record(outs[0][-1], step=4, names=names)
    assert len(r.layers) == 3 and set(r.update_std) == set(names)
