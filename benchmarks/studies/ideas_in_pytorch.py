"""Issue 11's ideas, measured in PyTorch before building any of them into the kernels:
a baseline AdamW MLP (block 8, E 24, H 512, batch 256, cosine from 3e-3, wd 0.1) against
the same with dropout on whole characters of the context (0.1, 0.2) and with Bengio et
al.'s direct input-to-output connections, each also evaluated with an exponential
moving average of the weights (decay 0.999). Same seed, batches and steps for all.

    python benchmarks/studies/ideas_in_pytorch.py 2 12000     # threads, steps (~6 min)

Results on the lecture's split: benchmarks/studies/README.md."""
import sys, time, math, copy, torch, torch.nn.functional as F, numpy as np
import fastmlp
torch.manual_seed(0)
T, E, H, B, STEPS = 8, 24, 512, 256, int(sys.argv[2]) if len(sys.argv) > 2 else 12000
ds = fastmlp.load_dataset(block_size=T)
Xtr, Ytr = (torch.tensor(a, dtype=torch.long) for a in ds.train)
Xdv, Ydv = (torch.tensor(a, dtype=torch.long) for a in ds.dev)
V = ds.vocab.size
def run(name, ema=0.0, edrop=0.0, direct=False, hdrop=0.0, wd=0.1, lr=3e-3):
    g = torch.Generator().manual_seed(1)
    C = torch.randn(V, E, generator=g); W1 = torch.randn(T*E, H, generator=g) * (5/3) / math.sqrt(T*E)
    b1 = torch.randn(H, generator=g) * 0.01; W2 = torch.randn(H, V, generator=g) * 0.01; b2 = torch.zeros(V)
    P = [C, W1, b1, W2, b2] + ([torch.zeros(T*E, V)] if direct else [])
    for p in P: p.requires_grad = True
    opt = torch.optim.AdamW(P, lr=lr, weight_decay=wd)
    E_ = [p.detach().clone() for p in P]
    def fwd(P, X, train):
        emb = P[0][X]
        if train and edrop: emb = emb * (torch.rand(X.shape[0], T, 1) >= edrop).float() / (1 - edrop)
        x = emb.view(X.shape[0], -1)
        h = torch.tanh(x @ P[1] + P[2])
        if train and hdrop: h = F.dropout(h, hdrop)
        out = h @ P[3] + P[4]
        if direct: out = out + x @ P[5]
        return out
    gen = torch.Generator().manual_seed(2)
    t0 = time.time()
    for s in range(STEPS):
        lr_s = 1e-4 + 0.5 * (lr - 1e-4) * (1 + math.cos(math.pi * s / STEPS))
        for pg in opt.param_groups: pg["lr"] = lr_s
        ix = torch.randint(0, len(Ytr), (B,), generator=gen)
        loss = F.cross_entropy(fwd(P, Xtr[ix], True), Ytr[ix])
        opt.zero_grad(); loss.backward(); opt.step()
        if ema:
            with torch.no_grad():
                for e, p in zip(E_, P): e.mul_(ema).add_(p.detach(), alpha=1 - ema)
    with torch.no_grad():
        dev = F.cross_entropy(fwd(P, Xdv, False), Ydv).item()
        dev_ema = F.cross_entropy(fwd(E_, Xdv, False), Ydv).item() if ema else None
    print(f"{name:28s} dev {dev:.4f}" + (f"  ema {dev_ema:.4f}" if ema else "") + f"  ({time.time()-t0:.0f} s)", flush=True)
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
run("baseline", ema=0.999)
run("char dropout 0.1", ema=0.999, edrop=0.1)
run("char dropout 0.2", ema=0.999, edrop=0.2)
run("direct connections", ema=0.999, direct=True)
