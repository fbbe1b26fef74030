"""Sampling new words from a trained model (the per-character loop runs in C++).

    python -m fastmlp.sample -o out -n 20 --seed 1 [--temperature 0.8] [--top-k 5]

One word per line on stdout; a word that already exists in the training data is
marked " (in train)", and a summary of how many are new goes to stderr.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from . import _core
from . import checkpoint as ckpt_io
from ._cli import ArgumentParser, int_arg, run_cli
from .data import SPLIT_SEED, DataError, Vocab, bundled_names, load_words, split_words, words_sha256
from .model import MLP


MAX_LEN = 1 << 20  # the kernel's bound on max_len


def sample_words(model: MLP, vocab: Vocab, n: int = 20, seed: int = 0, temperature: float = 1.0,
                 top_k: int = 0, max_len: int = 64, threads: Optional[int] = None) -> List[str]:
    """n words. Word i depends only on (seed, i): the same seed gives the same words,
    and asking for more words keeps the first ones."""
    return [w for w, _ in sample_with_ends(model, vocab, n, seed, temperature, top_k, max_len, threads)]


def sample_with_ends(model: MLP, vocab: Vocab, n: int = 20, seed: int = 0, temperature: float = 1.0,
                     top_k: int = 0, max_len: int = 64, threads: Optional[int] = None) -> List[Tuple[str, bool]]:
    """As sample_words, each word with whether it ended (the model chose '.' within
    max_len characters); a word that did not was cut by max_len and is not a whole word."""
    if vocab.size != model.vocab_size:
        raise ValueError(f"vocab has {vocab.size} symbols but the model expects {model.vocab_size}")
    # one character more than asked: a word of exactly max_len letters ends with '.' there
    # (word i's characters depend only on (seed, i): the first max_len are the same)
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)):
        raise TypeError(f"max_len must be an integer, got {type(max_len).__name__}")
    if not 1 <= max_len <= MAX_LEN:
        raise ValueError(f"max_len must be an integer in [1, {MAX_LEN}], got {max_len}")
    longer = min(max_len + 1, MAX_LEN)
    out = _core.sample(model.arrays(), n, longer, seed, temperature, top_k, batchnorm=model.eval_bn_args(),
                       threads=threads)
    return [(vocab.decode(row[:max_len]), bool((row == 0).any())) for row in out]


def training_words(ck: ckpt_io.Checkpoint, input_file: Optional[str] = None) -> Tuple[Optional[set], str]:
    """The checkpoint's training words, rebuilt from its data file and split rule (a
    checkpoint stores only their fingerprint). Returns (words or None, why not)."""
    words, why = training_split(ck, input_file)
    return (None if words is None else set(words)), why


def training_split(ck: ckpt_io.Checkpoint, input_file: Optional[str] = None) -> Tuple[Optional[list], str]:
    """As training_words, in the split's order (its first examples are fastmlp.run's batch
    for the saturation picture)."""
    if ck.train_words:  # a version-1 checkpoint kept them
        return list(ck.train_words), ""
    info = ck.data
    if not info.get("sha256"):
        return None, "the checkpoint does not record its data"
    seed, path = info.get("split_seed", SPLIT_SEED), info.get("path")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64 \
            or not isinstance(info["sha256"], str) or not (path is None or isinstance(path, str)):
        return None, "the checkpoint's record of its data is not valid (hand-edited?)"
    if input_file is None:
        if info.get("bundled"):
            input_file = bundled_names()
        elif info.get("path"):
            input_file = info["path"]
        else:
            return None, "the checkpoint does not say where its data is (pass -i)"
    try:
        words = load_words(input_file)
    except DataError as e:
        return None, f"{e} (pass -i with the training file)"
    if words_sha256(words) != info["sha256"]:
        return None, f"{str(input_file)!r} is not the file this model was trained on (its words differ)"
    train, _, _ = split_words(words, seed)
    return train, ""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m fastmlp.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--work-dir", default="out", help="folder holding model.npz")
    p.add_argument("--checkpoint", help="checkpoint file (default: WORK_DIR/model.npz)")
    p.add_argument("-i", "--input-file", help="the word file the model was trained on, if it has moved "
                                              "(to mark samples that are in the training set)")
    p.add_argument("-n", "--num-samples", type=int_arg("--num-samples", 0, 1 << 30), default=20, help="how many words")
    p.add_argument("--seed", type=int_arg("--seed", 0, (1 << 64) - 1), default=0,
                   help="the same seed gives the same words")
    p.add_argument("--temperature", type=float, default=1.0, help="< 1: safer words, > 1: wilder")
    p.add_argument("--top-k", type=int_arg("--top-k", 0, 1 << 31), default=0,
                   help="sample only from the k likeliest characters (0: all)")
    p.add_argument("--max-len", type=int_arg("--max-len", 1, 1 << 20), default=64, help="longest word, in characters")
    return p


def main(argv: Optional[list] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body():
        ck = ckpt_io.load(args.checkpoint or Path(args.work_dir) / ckpt_io.CHECKPOINT_NAME)
        samples = sample_with_ends(ck.model, ck.vocab, args.num_samples, args.seed, args.temperature, args.top_k,
                                   args.max_len)
        seen, why = training_words(ck, args.input_file)
        lines = [w + (f" (cut at --max-len {args.max_len})" if not ended else
                      " (in train)" if seen is not None and w in seen else "") for w, ended in samples]
        sys.stdout.write("".join(line + "\n" for line in lines))
        words = [w for w, ended in samples if ended]  # a word cut by --max-len is not a name
        cut = len(samples) - len(words)
        if cut:
            print(f"{cut} of {len(samples)} samples did not end within --max-len {args.max_len} characters "
                  "(marked; not counted below)", file=sys.stderr)
        if words and seen is not None:
            new = sum(w not in seen for w in words)
            print(f"{new} of {len(words)} {'whole ' if cut else ''}samples ({100 * new / len(words):.0f}%) are new "
                  "names, not in the training set", file=sys.stderr)
        elif words:
            print(f"note: samples are not marked against the training set: {why}", file=sys.stderr)
        return 0

    return run_cli(parser, body)


if __name__ == "__main__":
    sys.exit(main())
