"""fastmlp against PyTorch (eager, torch.compile) and JAX, measured in one run on one machine.

    python benchmarks/bench_train.py            # everything (~5 minutes on 2 cores)
    python benchmarks/bench_train.py --quick    # fewer repeats, no torch.compile, no 1M-step run
    (bench_threads.py adds the busy-neighbour and thread-scaling tables; --no-threads skips them)

Prints a markdown table and writes it, with the raw numbers, to benchmarks/results/
(latest.md, latest.json). Reported: median microseconds per training step over
repeated timed blocks, the ratio against PyTorch eager as a user runs it (default
threads), achieved GFLOP/s against the one-core FMA peak (the median of samples taken
between the same blocks, so that a busy neighbour weighs on both alike), whole-split
evaluation, the lecture's full recipe, time to dev loss <= 2.17, and memory over
a 1,000,000-step run.

A step is forward + backward + SGD update of the lecture's MLP: 3 * B * (T*E*H + H*V)
multiply-adds (2 flops each). Where the batch is several times the vocabulary (the large
configuration), fastmlp's step takes the first layer through the embedding table and does
less: the table's last column is the peak's share of the work done.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import fastmlp
from fastmlp import MLP, _core
from fastmlp.data import load_dataset
from fastmlp.model import PARAM_NAMES
from fastmlp.train import PRESETS, TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Config:
    name: str
    block_size: int
    n_embd: int
    n_hidden: int
    batch_size: int

    def flops(self, V: int) -> float:
        TE, H = self.block_size * self.n_embd, self.n_hidden
        return 6.0 * self.batch_size * (TE * H + H * V)

    def flops_done(self, V: int) -> float:
        """The floating-point operations fastmlp's step executes: where its batch takes the first
        layer through the embedding table (_core.first_layer_tables), that layer's three products
        are C's, V*T*E*H multiply-adds each, beside T*H additions a row forward and backward."""
        T, E, H, B = self.block_size, self.n_embd, self.n_hidden, self.batch_size
        if not _core.first_layer_tables(V, T, E, H, B):
            return self.flops(V)
        return 6.0 * (B * H * V + V * T * E * H) + 2.0 * B * T * H


LECTURE = Config("lecture", 3, 10, 200, 32)
LARGE = Config("large", 8, 24, 512, 256)


def interleaved(runners: dict, repeats: int) -> dict:
    """Median seconds per step of each runner (name -> (run_block, steps)). The runners take
    turns, block by block, so a noisy neighbour on these shared cores hits them all alike."""
    for run_block, steps in runners.values():
        run_block(max(steps // 10, 1))  # warm-up
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, (run_block, steps) in runners.items():
            time.sleep(0.05)  # let the previous runner's thread pool stop spinning on the cores
            t0 = time.perf_counter()
            run_block(steps)
            times[name].append((time.perf_counter() - t0) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------
# implementations
# ---------------------------------------------------------------------------
def bench_fastmlp(cfg: Config, X, Y, V, threads):
    m = MLP(V, cfg.block_size, cfg.n_embd, cfg.n_hidden, init="scaled")
    state = _core.rng_state(0)

    def run(n):
        _core.train_steps(m.arrays(), X, Y, np.full(n, 0.01, np.float32), batch_size=cfg.batch_size,
                          rng_state=state, threads=threads)

    return run


def torch_setup(cfg: Config, X, Y, V):
    import torch

    g = torch.Generator().manual_seed(2147483647)
    T, E, H = cfg.block_size, cfg.n_embd, cfg.n_hidden
    P = [torch.randn((V, E), generator=g), torch.randn((T * E, H), generator=g) * 0.2,
         torch.randn(H, generator=g) * 0.01, torch.randn((H, V), generator=g) * 0.01, torch.zeros(V)]
    for p in P:
        p.requires_grad = True
    return P, torch.tensor(X, dtype=torch.long), torch.tensor(Y, dtype=torch.long)


def bench_torch(cfg: Config, X, Y, V, threads, compiled=False):
    """The lecture's training loop, as a user writes it."""
    import torch
    import torch.nn.functional as F

    P, Xt, Yt = torch_setup(cfg, X, Y, V)
    C, W1, b1, W2, b2 = P
    N = len(Yt)

    def loss_fn(Xb, Yb):
        emb = C[Xb]
        h = torch.tanh(emb.view(-1, W1.shape[0]) @ W1 + b1)
        logits = h @ W2 + b2
        return F.cross_entropy(logits, Yb)

    if compiled:
        loss_fn = torch.compile(loss_fn)

    def run(n):
        torch.set_num_threads(threads)
        for _ in range(n):
            ix = torch.randint(0, N, (cfg.batch_size,))
            loss = loss_fn(Xt[ix], Yt[ix])
            for p in P:
                p.grad = None
            loss.backward()
            for p in P:
                p.data += -0.01 * p.grad

    return run


def jax_setup(cfg: Config, X, Y, V):
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(0)
    ks = jax.random.split(key, 5)
    T, E, H = cfg.block_size, cfg.n_embd, cfg.n_hidden
    params = (jax.random.normal(ks[0], (V, E)), jax.random.normal(ks[1], (T * E, H)) * 0.2,
              jax.random.normal(ks[2], (H,)) * 0.01, jax.random.normal(ks[3], (H, V)) * 0.01, jnp.zeros(V))

    def loss_fn(params, Xb, Yb):
        C, W1, b1, W2, b2 = params
        emb = C[Xb].reshape(Xb.shape[0], -1)
        h = jnp.tanh(emb @ W1 + b1)
        logits = h @ W2 + b2
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, Yb[:, None], axis=1))

    return jax, jnp, params, loss_fn, jnp.asarray(X), jnp.asarray(Y)


def bench_jax_step(cfg, X, Y, V):
    """jit of one step; the Python loop draws the batch indices each step."""
    jax, jnp, params, loss_fn, Xj, Yj = jax_setup(cfg, X, Y, V)

    @jax.jit
    def step(params, ix, lr):
        loss, grads = jax.value_and_grad(loss_fn)(params, Xj[ix], Yj[ix])
        return tuple(p - lr * g for p, g in zip(params, grads)), loss

    rng = np.random.default_rng(0)
    state = [params]

    def run(n):
        p = state[0]
        for _ in range(n):
            ix = rng.integers(0, len(Y), cfg.batch_size)
            p, loss = step(p, ix, 0.01)
        jax.block_until_ready(p)
        state[0] = p

    return run


def bench_jax_loop(cfg, X, Y, V, steps):
    """The whole K-step loop in one jit (lax.fori_loop, jax.random inside)."""
    jax, jnp, params, loss_fn, Xj, Yj = jax_setup(cfg, X, Y, V)
    N = len(Y)

    def make(k):
        @jax.jit
        def loop(params, key):
            def body(i, carry):
                params, key = carry
                key, sub = jax.random.split(key)
                ix = jax.random.randint(sub, (cfg.batch_size,), 0, N)
                grads = jax.grad(loss_fn)(params, Xj[ix], Yj[ix])
                return tuple(p - 0.01 * g for p, g in zip(params, grads)), key

            return jax.lax.fori_loop(0, k, body, (params, key))

        return loop

    loops = {}
    state = [(params, jax.random.PRNGKey(1))]

    def run(n):
        if n not in loops:
            loops[n] = make(n)
            jax.block_until_ready(loops[n](*state[0]))  # compile outside the timing
        state[0] = loops[n](*state[0])
        jax.block_until_ready(state[0])

    run(steps)  # compile the timed size first
    return run


# ---------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats; skip torch.compile and the 1M-step run")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--no-jax", action="store_true", help="skip JAX even if installed")
    ap.add_argument("--no-threads", action="store_true", help="skip the busy-neighbour and thread-scaling runs")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(RESULTS), help="folder for latest.md / latest.json")
    args = ap.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    cores = os.cpu_count() or 1
    default_threads = fastmlp.get_num_threads()

    ds = load_dataset(block_size=3)
    V = ds.vocab.size
    data = {3: ds.train}
    ds8 = load_dataset(block_size=8)
    data[8] = ds8.train

    have = {}
    try:
        import torch

        have["torch"] = torch.__version__
        torch_default_threads = torch.get_num_threads()
    except ImportError:
        torch_default_threads = None
    if not args.no_jax:
        try:
            import jax

            have["jax"] = jax.__version__
        except ImportError:
            pass

    info = fastmlp.build_info()
    peak1 = _core.fma_peak_gflops(1)
    peak_all = _core.fma_peak_gflops(cores)
    machine = {
        "cpu": cpu_name(), "cores": cores, "python": platform.python_version(), "fastmlp": info,
        "fma_peak_gflops_1_core": round(peak1, 1), f"fma_peak_gflops_{cores}_cores": round(peak_all, 1),
        **{k: v for k, v in have.items()},
    }
    print(f"# machine: {machine['cpu']}, {cores} cores; fastmlp {info['version']} ({info['isa']}, "
          f"OpenMP {info['openmp']}); measured FMA peak {peak1:.0f} GFLOP/s per core ({info['isa']})", flush=True)

    rows = []  # (config, implementation, threads, us/step)
    plan = {LECTURE.name: (LECTURE, 20000, 2000), LARGE.name: (LARGE, 500, 100)}
    for cname, (cfg, fast_steps, slow_steps) in plan.items():
        X, Y = data[cfg.block_size]
        if args.quick:
            fast_steps, slow_steps = fast_steps // 4, slow_steps // 4

        runners = {}  # (impl, threads) -> (run_block, steps)
        for t in sorted({default_threads, 1}):
            runners[("fastmlp", t)] = (bench_fastmlp(cfg, X, Y, V, t), fast_steps)
        if "torch" in have:
            for t in sorted({torch_default_threads, 1}, reverse=True):
                runners[("pytorch eager", t)] = (bench_torch(cfg, X, Y, V, t), slow_steps)
            if not (args.quick or args.no_compile):
                runners[("torch.compile", torch_default_threads)] = (
                    bench_torch(cfg, X, Y, V, torch_default_threads, compiled=True), slow_steps)
        if "jax" in have:
            runners[("jax jit per step", cores)] = (bench_jax_step(cfg, X, Y, V), slow_steps)
            runners[("jax jit whole loop", cores)] = (bench_jax_loop(cfg, X, Y, V, fast_steps // 4), fast_steps // 4)
        # the one-core FMA peak, sampled between the blocks: on a shared host the neighbours
        # move it as much as the steps (78-102 GFLOP/s at four runs' starts within half an hour
        # on one Zen 3), so a step's % of the peak compares medians taken over the same minutes
        peaks = []
        runners[("fma peak", 1)] = (lambda n: peaks.append(_core.fma_peak_gflops(1, 0.05)), 1)
        for (impl, threads), seconds in interleaved(runners, repeats).items():
            if impl == "fma peak":
                continue
            done = cfg.flops_done(V) if impl == "fastmlp" else cfg.flops(V)
            rows.append({"config": cname, "impl": impl, "threads": threads, "us": seconds * 1e6,
                         "gflops": cfg.flops(V) / seconds / 1e9, "gflops_done": done / seconds / 1e9})
            print(f"  {cname:8s} {impl:28s} threads={threads}: {seconds * 1e6:9.1f} us/step", flush=True)
        peaks = peaks[1:]  # the first is the warm-up's, not between timed blocks
        peak_here = statistics.median(peaks)
        for x in rows:
            if x["config"] == cname:
                x["peak_gflops_1_core"] = round(peak_here, 1)
        print(f"  {cname:8s} FMA peak between its blocks: {peak_here:.1f} GFLOP/s per core (median of "
              f"{len(peaks)}: {min(peaks):.0f}-{max(peaks):.0f})", flush=True)
        if "torch" in have:
            torch.set_num_threads(torch_default_threads)

    # whole-split evaluation, large config, the training split (182,625 examples)
    X, Y = data[8]
    m = MLP(V, LARGE.block_size, LARGE.n_embd, LARGE.n_hidden, init="scaled")
    eval_runners = {"fastmlp": (lambda n: [m.loss(X, Y) for _ in range(n)], 1)}
    if "torch" in have:
        import torch
        import torch.nn.functional as F

        Pt = [torch.tensor(m.params[k]) for k in PARAM_NAMES]
        Xt, Yt = torch.tensor(X, dtype=torch.long), torch.tensor(Y, dtype=torch.long)

        def torch_eval(n):
            with torch.no_grad():
                for _ in range(n):
                    emb = Pt[0][Xt]
                    h = torch.tanh(emb.view(-1, Pt[1].shape[0]) @ Pt[1] + Pt[2])
                    F.cross_entropy(h @ Pt[3] + Pt[4], Yt).item()

        eval_runners["pytorch"] = (torch_eval, 1)
    evals = interleaved(eval_runners, repeats)
    print(f"  eval (large, {len(Y):,} examples): " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in evals.items()))

    # the lecture's recipe, and the fastest recipe to dev <= 2.17 (their run output is thrown away)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = train(TrainConfig(work_dir=str(Path(tmp) / "lecture")), progress=False, log=lambda s: None,
                       dataset=ds)
        print(f"  lecture recipe: {recipe['seconds']:.2f} s training, dev {recipe['dev_loss']:.4f}")
        fast = time_to_target(ds, Path(tmp) / "fast")
    print(f"  dev <= 2.17: {fast['seconds_to_target']} s with {fast['recipe']}")

    memory = None
    if not args.quick:
        memory = memory_run()
        print(f"  1,000,000 steps: RSS {memory['rss_mb_after_100k']:.1f} MB after 100k, "
              f"{memory['rss_mb_after_1m']:.1f} MB after 1M; peak {memory['peak_rss_mb']:.1f} MB")

    threads = None
    if not args.no_threads:
        from bench_threads import measure

        threads = measure()
        print(threads["markdown"])
    results = {"machine": machine, "steps": rows, "eval_seconds": evals, "lecture_recipe": {
        k: recipe[k] for k in ("seconds", "steps", "train_loss", "dev_loss", "us_per_step")},
        "fast_recipe": fast, "memory": memory, "threads": threads, "date": time.strftime("%Y-%m-%d")}
    md = render(results)
    print()
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.md").write_text(md)
    (out / "latest.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


FAST_RECIPE = dict(PRESETS["fast"])  # python -m fastmlp.train --preset fast


def time_to_target(ds, work_dir: Path, target: float = 2.17) -> dict:
    """Trains FAST_RECIPE, evaluating dev every eval_interval steps; reports the training
    seconds (excluding evaluation) at the first evaluation with dev <= target."""
    cfg = TrainConfig(work_dir=str(work_dir), **FAST_RECIPE)
    m = train(cfg, progress=False, log=lambda s: None, dataset=ds)
    per_step = m["seconds"] / m["steps"]
    hit = next((s for s, d in m["dev_curve"] if d <= target), None)
    return {"recipe": "--preset fast (" + ", ".join(f"{k}={v}" for k, v in FAST_RECIPE.items()) + ")",
            "final_dev": m["dev_loss"],
            "seconds_total": m["seconds"], "step_at_target": hit,
            "seconds_to_target": round(hit * per_step, 3) if hit else None}


MEMORY_SCRIPT = """
import json, numpy as np
from fastmlp import MLP, _core
from fastmlp.data import load_dataset
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
X, Y = load_dataset(block_size=3).train
m = MLP(27, 3, 10, 200, init="scaled")
state = _core.rng_state(0)
out = {"rss_mb_start": rss()}
for i in range(100):
    _core.train_steps(m.arrays(), X, Y, np.full(10_000, 0.01, np.float32), batch_size=32, rng_state=state)
    if i == 9:
        out["rss_mb_after_100k"] = rss()
out["rss_mb_after_1m"] = rss()
out["peak_rss_mb"] = [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps(out))
"""


def memory_run() -> dict:
    """1,000,000 lecture steps in a fresh process that imports only fastmlp."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def render(r: dict) -> str:
    m = r["machine"]
    info = m["fastmlp"]
    cores = m["cores"]
    peak1 = m["fma_peak_gflops_1_core"]
    between = {x["config"]: x["peak_gflops_1_core"] for x in r["steps"] if "peak_gflops_1_core" in x}
    lines = [f"Measured {r['date']} on {m['cpu']}, {cores} cores; fastmlp {info['version']} "
             f"({info['isa']} kernels, OpenMP {'on' if info['openmp'] else 'off'}), "
             + ", ".join(f"{k} {m[k]}" for k in ("torch", "jax") if k in m)
             + f". FMA peak measured here: {peak1:.0f} GFLOP/s per core ({info['isa']}) at the start"
             + (f"; between each config's blocks (its rows' % of peak): " + ", ".join(
                 f"{c} {p:.0f}" for c, p in sorted(between.items(), reverse=True)) if between else "")
             + ".", ""]
    lines += ["| config | implementation | threads | µs/step (median) | × vs PyTorch eager | GFLOP/s | % of peak "
              "| % of peak, work done |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for cname in ("lecture", "large"):
        rows = [x for x in r["steps"] if x["config"] == cname]
        base = [x for x in rows if x["impl"] == "pytorch eager"]
        base_us = max(base, key=lambda x: x["threads"])["us"] if base else None  # default threads
        for x in rows:
            ratio = f"{base_us / x['us']:.1f}×" if base_us else "–"
            peak = x.get("peak_gflops_1_core", peak1) * x["threads"]  # older results have only the start's
            done = x.get("gflops_done", x["gflops"])  # (older results: the nominal work)
            lines.append(f"| {cname} | {x['impl']} | {x['threads']} | {x['us']:.1f} | {ratio} | "
                         f"{x['gflops']:.1f} | {100 * x['gflops'] / peak:.0f}% | {100 * done / peak:.0f}% |")
    lines += ["", "lecture = block 3, E 10, H 200, batch 32; large = block 8, E 24, H 512, batch 256. "
              "Ratios are against PyTorch eager with its default thread count, measured in the same run. "
              "GFLOP/s and % of peak count the model's work, 3 * B * (T*E*H + H*V) multiply-adds a step; the "
              "last column the work each implementation's step does: fastmlp's large batch takes the first "
              "layer through the embedding table (C W1's rows summed, V instead of B rows in three products).",
              ""]
    ev = r["eval_seconds"]
    if "pytorch" in ev:
        lines.append(f"Whole-split evaluation (large config, 182,625 examples): fastmlp {ev['fastmlp'] * 1e3:.1f} ms, "
                     f"PyTorch {ev['pytorch'] * 1e3:.1f} ms ({ev['pytorch'] / ev['fastmlp']:.1f}× faster).")
    lr = r["lecture_recipe"]
    lines.append(f"The lecture's recipe (200,000 steps): {lr['seconds']:.2f} s of training, dev loss "
                 f"{lr['dev_loss']:.4f}.")
    f = r["fast_recipe"]
    lines.append(f"Dev loss ≤ 2.17 reached after {f['seconds_to_target']} s of training (step {f['step_at_target']:,}) "
                 f"with `{f['recipe']}`; final dev {f['final_dev']:.4f}." if f["step_at_target"] else
                 f"Dev loss ≤ 2.17 not reached with {f['recipe']} (final {f['final_dev']:.4f}).")
    if r["memory"]:
        mem = r["memory"]
        lines.append(f"Memory over 1,000,000 lecture steps (a process with only fastmlp and the data): RSS "
                     f"{mem['rss_mb_after_100k']:.1f} MB after 100k steps, {mem['rss_mb_after_1m']:.1f} MB after 1M "
                     f"(peak {mem['peak_rss_mb']:.1f} MB); growth {mem['rss_mb_after_1m'] - mem['rss_mb_after_100k']:+.1f} MB.")
    if r.get("threads"):
        lines += ["", r["threads"]["markdown"].rstrip()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
