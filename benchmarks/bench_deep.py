"""The deeper nets of makemore part 3 (Linear -> BatchNorm1d -> tanh, stacked) against
PyTorch eager as part 3 writes them (an nn.Sequential of nn.Linear, nn.BatchNorm1d,
nn.Tanh and a manual SGD step), measured in one run, taking turns block by block.

    python benchmarks/bench_deep.py            # ~2 minutes on 2 cores
    python benchmarks/bench_deep.py --quick

Reported: median microseconds per training step (forward, backward, SGD update of every
parameter, BatchNorm's running statistics) on 1 and 2 threads, the ratio against PyTorch
at its default thread count, and GFLOP/s against the FMA peak measured here. A step is
3 * B * (T*E*H + (L-1)*H*H + H*V) multiply-adds (BatchNorm and tanh not counted); the
last column counts the work fastmlp's step does, less where its batch takes the first layer
through the embedding table (the wide net's).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from fastmlp import MLP, _core
from fastmlp.data import load_dataset

# name: (block, E, H, layers, batch)
CONFIGS = {"part 3's net (5 x 100, batch 32)": (3, 10, 100, 5, 32),
           "wide (block 8, E 24, 3 x 512, batch 256)": (8, 24, 512, 3, 256)}


def flops(cfg, V):
    T, E, H, L, B = cfg
    return 6.0 * B * (T * E * H + (L - 1) * H * H + H * V)


def flops_done(cfg, V):
    """fastmlp's: where the batch takes the first layer through the embedding table
    (_core.first_layer_tables), that layer's three products are C's (V rows, not B)."""
    T, E, H, L, B = cfg
    if not _core.first_layer_tables(V, T, E, H, B):
        return flops(cfg, V)
    return 6.0 * (V * T * E * H + B * (L - 1) * H * H + B * H * V) + 2.0 * B * T * H


def fastmlp_runner(cfg, X, Y, V, threads):
    T, E, H, L, B = cfg
    m = MLP(V, T, E, H, n_layers=L, batchnorm=True, init="kaiming")
    state = _core.rng_state(0)
    bn = m.bn_args()

    def run(n):
        _core.train_steps(m.arrays(), X, Y, np.full(n, 0.01, np.float32), batch_size=B, rng_state=state,
                          threads=threads, batchnorm=bn)
    return run


def torch_runner(cfg, X, Y, V, threads):
    import torch
    from torch import nn

    T, E, H, L, B = cfg
    C = torch.randn(V, E, requires_grad=True)
    layers = []
    for l in range(L):
        layers += [nn.Linear(T * E if l == 0 else H, H, bias=False), nn.BatchNorm1d(H), nn.Tanh()]
    net = nn.Sequential(*layers, nn.Linear(H, V))
    params = [C] + list(net.parameters())
    Xt, Yt = torch.tensor(X, dtype=torch.long), torch.tensor(Y, dtype=torch.long)

    def run(n):
        torch.set_num_threads(threads)
        for _ in range(n):
            ix = torch.randint(0, len(Yt), (B,))
            loss = nn.functional.cross_entropy(net(C[Xt[ix]].view(B, -1)), Yt[ix])
            for p in params:
                p.grad = None
            loss.backward()
            with torch.no_grad():
                for p in params:
                    p += -0.01 * p.grad
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args()
    import torch

    torch_threads = torch.get_num_threads()
    repeats = 3 if args.quick else 7
    peak = _core.fma_peak_gflops(threads=1)
    print(f"FMA peak, one thread, measured now: {peak:.0f} GFLOP/s; kernels {_core.get_isa()}; torch "
          f"{torch.__version__} default threads {torch_threads}\n")
    print("| net | fastmlp 1 thread µs | 2 threads µs | PyTorch eager µs | PyTorch 1 thread µs | ratio | "
          "fastmlp GFLOP/s (1 thread) | of peak | of peak, work done |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, cfg in CONFIGS.items():
        ds = load_dataset(block_size=cfg[0])
        X, Y = ds.train
        V = ds.vocab.size
        steps = 2000 if cfg[4] <= 32 else 100
        runners = {"f1": fastmlp_runner(cfg, X, Y, V, 1), "f2": fastmlp_runner(cfg, X, Y, V, 2),
                   "t": torch_runner(cfg, X, Y, V, torch_threads), "t1": torch_runner(cfg, X, Y, V, 1)}
        for run in runners.values():
            run(max(steps // 10, 1))
        times = {k: [] for k in runners}
        for _ in range(repeats):
            for k, run in runners.items():
                time.sleep(0.05)
                t0 = time.perf_counter()
                run(steps)
                times[k].append((time.perf_counter() - t0) / steps * 1e6)
        med = {k: statistics.median(v) for k, v in times.items()}
        best_torch = min(med["t"], med["t1"])
        gflops, done = flops(cfg, V) / med["f1"] / 1e3, flops_done(cfg, V) / med["f1"] / 1e3
        print(f"| {name} | {med['f1']:.1f} | {med['f2']:.1f} | {med['t']:.1f} | {med['t1']:.1f} | "
              f"{best_torch / min(med['f1'], med['f2']):.1f}x | {gflops:.0f} | {100 * gflops / peak:.0f}% | "
              f"{100 * done / peak:.0f}% |")


if __name__ == "__main__":
    main()
