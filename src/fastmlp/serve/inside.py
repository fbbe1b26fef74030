"""What the page shows of the model, computed from the session's copy of it: the
next-character distribution (the model's own forward), sampling with every step's
distribution, and the insides (fastmlp.diagnostics records, the embedding plane)."""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from ..plot import embedding_2d

WATCH = 5          # fixed training contexts whose next-character bars the page follows
MAX_LEN = 40       # a sampled name's characters at most (past that it is marked cut)
VOWELS = set("aeiouy")


def softmax(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    if top_k and top_k < len(z):
        z[z < np.sort(z)[-top_k]] = -np.inf
    z -= z.max()
    p = np.exp(z)
    return p / p.sum()


def context_indices(vocab, context: str, block_size: int) -> np.ndarray:
    """The last block_size characters of context, '.'-padded on the left (as training pads)."""
    ix = [0] * block_size + [vocab.stoi[c] for c in context]
    return np.array([ix[len(ix) - block_size:]], np.int32)


def next_distribution(model, vocab, context: str) -> List[float]:
    logits = model.forward(context_indices(vocab, context, model.block_size))[0]
    return [round(float(p), 6) for p in softmax(logits)]


def sample_with_steps(model, vocab, train_words: set, n: int, prefix: str, temperature: float, top_k: int,
                      seed: int) -> list:
    """n names that start with prefix, each with the distribution of every generated character."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        word, steps, ended = prefix, [], False
        while len(word) < MAX_LEN:
            p = softmax(model.forward(context_indices(vocab, word, model.block_size))[0], temperature, top_k)
            ix = int(rng.choice(len(p), p=p))
            steps.append({"char": vocab.itos[ix], "probs": [round(float(x), 5) for x in p]})
            if ix == 0:
                ended = True
                break
            word += vocab.itos[ix]
        out.append({"name": word, "new": word not in train_words, "cut": not ended, "steps": steps})
    return out


def watched(run, model) -> list:
    """A few fixed training contexts and the model's bars for what follows each."""
    X, Y = run.ds.train
    rows = np.linspace(0, len(Y) - 1, WATCH).astype(int)
    logits = model.forward(X[rows])
    itos = run.ds.vocab.itos
    return [{"context": "".join(itos[i] for i in X[r]), "next": itos[int(Y[r])],
             "probs": [round(float(p), 4) for p in softmax(z)]} for r, z in zip(rows, logits)]


def inside(run, model) -> Optional[dict]:
    """The page's 'Inside' panel: the last diagnostics record, update:data over the run,
    the watched contexts' bars and the embedding plane (run and model: the session's, as
    taken once)."""
    if run is None or model is None:
        return None
    from ..diagnostics import BINS, parse_record

    names = model.param_names
    n = min(len(run.diag_steps), len(run.diag_records))  # (the training thread may be appending)
    steps, recs = run.diag_steps[:n], run.diag_records[:n]
    last = parse_record(recs[-1], step=steps[-1], names=names) if n else None
    layer = last.layers[0] if last else None  # the first hidden layer's
    every = max(1, n // 200)  # at most ~200 points a line
    ratios = {}
    if n:  # straight from the records: std(update) / std(param), columns 3k + 2 and 3k
        r = np.array(recs[::every])[:, 1 + model.n_layers * (3 * BINS + 9):].reshape(-1, len(names), 3)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log10(r[:, :, 2] / r[:, :, 0])
        for i, k in enumerate(names):
            ratios[k] = [None if not np.isfinite(v) else round(float(v), 4) for v in logs[:, i]]
    xy = embedding_2d(model.params["C"])
    itos = run.ds.vocab.itos
    return {
        "step": last.step if last else None,
        "act": None if layer is None else {"counts": layer.hist.counts.tolist(), "edges": layer.hist.edges.tolist(),
                                           "saturation": layer.saturation, "dead": layer.dead, "std": layer.std,
                                           "layers": model.n_layers},
        "update_data": {"steps": steps[::every], "log10": ratios},
        "watched": watched(run, model),
        "embedding": {"symbols": list(itos), "x": xy[:, 0].round(4).tolist(), "y": xy[:, 1].round(4).tolist(),
                      "vowel": [c in VOWELS for c in itos]},
    }
