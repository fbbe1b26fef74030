"""Sampling new words from a trained model (the per-character loop runs in C++).

    python -m fastmlp.sample -o out -n 20 --seed 1 [--temperature 0.8] [--top-k 5]

One word per line on stdout; a word that already exists in the training data is
marked " (in train)", and a summary of how many are new goes to stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from . import _core
from . import checkpoint as ckpt_io
from ._cli import run_cli
from .data import Vocab
from .model import MLP, PARAM_NAMES


def sample_words(model: MLP, vocab: Vocab, n: int = 20, seed: int = 0, temperature: float = 1.0,
                 top_k: int = 0, max_len: int = 64) -> List[str]:
    """n words. Word i depends only on (seed, i): the same seed gives the same words,
    and asking for more words keeps the first ones."""
    if vocab.size != model.vocab_size:
        raise ValueError(f"vocab has {vocab.size} symbols but the model expects {model.vocab_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out = _core.sample(*(model.params[k] for k in PARAM_NAMES), n, max_len, seed, temperature, top_k)
    return [vocab.decode(row) for row in out]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastmlp.sample", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-o", "--work-dir", default="out", help="folder holding model.npz")
    p.add_argument("--checkpoint", help="checkpoint file (default: WORK_DIR/model.npz)")
    p.add_argument("-n", "--num-samples", type=int, default=20, help="how many words")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same words")
    p.add_argument("--temperature", type=float, default=1.0, help="< 1: safer words, > 1: wilder")
    p.add_argument("--top-k", type=int, default=0, help="sample only from the k likeliest characters (0: all)")
    p.add_argument("--max-len", type=int, default=64, help="longest word, in characters")
    return p


def main(argv: Optional[list] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body():
        if args.num_samples < 0:
            raise ValueError(f"--num-samples must be >= 0, got {args.num_samples}")
        ck = ckpt_io.load(args.checkpoint or Path(args.work_dir) / ckpt_io.CHECKPOINT_NAME)
        words = sample_words(ck.model, ck.vocab, args.num_samples, args.seed, args.temperature, args.top_k,
                             args.max_len)
        seen = set(ck.train_words)
        lines = [w + (" (in train)" if w in seen else "") for w in words]
        sys.stdout.write("".join(line + "\n" for line in lines))
        new = sum(w not in seen for w in words)
        if words:
            print(f"{new} of {len(words)} samples ({100 * new / len(words):.0f}%) are new names, "
                  "not in the training set", file=sys.stderr)
        return 0

    return run_cli(parser, body)


if __name__ == "__main__":
    sys.exit(main())
