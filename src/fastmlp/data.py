"""Data: word lists, the vocabulary, (X, Y) examples and the lecture's split.

The default data set is makemore's names.txt (32,033 names), installed inside the
package. A word list is found, in order: an explicit path, ``$FASTMLP_DATA``, then
the bundled names.txt.
"""
from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"
END = "."  # start/end symbol, index 0
SPLIT_SEED = 42  # the lecture's random.seed(42)
SPLIT_RULE = "random.Random(seed).shuffle(words); cut at int(0.8 n), int(0.9 n)"

PathLike = Union[str, os.PathLike]


class DataError(ValueError):
    """A word list that cannot be used (missing, empty, unreadable, bad characters)."""


# ---------------------------------------------------------------------------
# Finding and reading the file
# ---------------------------------------------------------------------------
def bundled_names() -> Path:
    """The names.txt installed with the package (makemore's, MIT; see data/README.md)."""
    p = Path(__file__).resolve().parent / "names.txt"
    if not p.is_file():
        raise DataError(f"this fastmlp installation lacks its bundled names.txt ({p}); reinstall it with "
                        "`pip install .`, or pass -i/--input-file")
    return p


def find_dataset(path: Optional[PathLike] = None) -> Path:
    """Where the word list is: path, $FASTMLP_DATA, or the bundled names.txt."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"input file {str(p)!r} does not exist or is not a file")
        return p
    env = os.environ.get("FASTMLP_DATA")
    if env:
        p = Path(env)
        if not p.is_file():
            raise DataError(f"FASTMLP_DATA={env!r} does not name a file")
        return p
    return bundled_names()


def parse_words(raw: bytes, where: str = "the word list") -> List[str]:
    """Words from the bytes of a text file: UTF-8 (a byte-order mark is dropped), one word
    per line. Lines end at '\n' (or '\r\n'), as text files do; other Unicode line
    breaks are not line ends. Surrounding white space is stripped, blank lines skipped."""
    if b"\x00" in raw:
        raise DataError(f"{where} looks like a binary file (it contains NUL bytes), not a word list")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{where} is not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
    words = []
    for lineno, line in enumerate(text.split("\n"), 1):
        w = line.strip()
        if not w:
            continue
        if END in w:
            raise DataError(f"{where} line {lineno}: {w[:40]!r} contains {END!r}, which fastmlp reserves "
                            "for start/end of word")
        words.append(w)
    if not words:
        raise DataError(f"{where} holds no words (it is empty or blank)")
    return words


def load_words(path: Optional[PathLike] = None) -> List[str]:
    """The words of a file (default: names.txt); see parse_words for the rules. Raises
    DataError for a missing, unreadable, binary, non-UTF-8 or empty file, and for a word
    containing '.', which is reserved for start/end."""
    p = find_dataset(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {str(p)!r}: {e.strerror}") from None
    return parse_words(raw, repr(str(p)))


def words_sha256(words: Sequence[str]) -> str:
    """A fingerprint of a word list's content (not of the file's bytes: line ends and
    blank lines do not change it). Checkpoints keep it to recognise their data."""
    return hashlib.sha256("\n".join(words).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Vocab:
    """'.' is index 0; the sorted characters of the data follow."""

    itos: Tuple[str, ...]
    stoi: Dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.itos or self.itos[0] != END:
            raise ValueError(f"a vocabulary starts with {END!r}")
        if len(set(self.itos)) != len(self.itos) or any(len(c) != 1 for c in self.itos):
            raise ValueError("a vocabulary is a list of distinct single characters")
        object.__setattr__(self, "stoi", {c: i for i, c in enumerate(self.itos)})

    @classmethod
    def from_words(cls, words: Sequence[str]) -> "Vocab":
        chars = sorted(set("".join(words)))
        if END in chars:
            raise DataError(f"words must not contain {END!r}")
        return cls((END,) + tuple(chars))

    @property
    def size(self) -> int:
        return len(self.itos)

    def encode(self, word: str) -> List[int]:
        try:
            return [self.stoi[c] for c in word]
        except KeyError as e:
            raise DataError(f"character {e.args[0]!r} of {word!r} is not in the vocabulary") from None

    def decode(self, indices) -> str:
        """Characters up to the first '.' (index 0)."""
        out = []
        for i in indices:
            i = int(i)
            if i == 0:
                break
            out.append(self.itos[i])
        return "".join(out)


# ---------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------
def build_dataset(words: Sequence[str], vocab: Vocab, block_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(X, Y) as the lecture builds them: for each word, a rolling context of
    block_size indices (padded with 0) predicting each next character, then '.'.
    X is (N, block_size) int32, Y is (N,) int32, N = sum(len(w) + 1). Vectorised:
    all of names.txt takes a few milliseconds."""
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    T = int(block_size)
    if len(words) == 0:
        return np.zeros((0, T), np.int32), np.zeros(0, np.int32)
    # Every word padded as '.'*T + word + '.': contexts are windows of this stream.
    stream = "".join(END * T + w + END for w in words)
    codes = np.frombuffer(stream.encode("utf-32-le"), dtype=np.uint32)
    sym = np.array([ord(c) for c in vocab.itos], dtype=np.uint32)
    order = np.argsort(sym)
    pos = np.searchsorted(sym[order], codes)
    pos_clipped = np.minimum(pos, len(sym) - 1)
    unknown = sym[order][pos_clipped] != codes
    if unknown.any():
        c = chr(int(codes[np.argmax(unknown)]))
        raise DataError(f"character {c!r} is not in the vocabulary")
    G = order[pos_clipped].astype(np.int32)
    del codes, pos, pos_clipped, unknown
    # where each example's context starts in the stream; int32 while it fits (memory)
    idx = np.int32 if len(G) < 2**31 else np.int64
    lengths = np.fromiter((len(w) for w in words), dtype=idx, count=len(words))
    starts = np.concatenate(([0], np.cumsum(lengths + (T + 1), dtype=np.int64)[:-1])).astype(idx)
    per_word = lengths + 1                                              # examples per word
    positions = np.repeat(starts, per_word)
    positions += np.arange(len(positions), dtype=idx) - np.repeat(np.cumsum(per_word, dtype=idx) - per_word, per_word)
    X = np.empty((len(positions), T), np.int32)
    for t in range(T):  # column by column: no (N, T) int64 index array
        X[:, t] = G[positions + t]
    Y = G[positions + T]
    return np.ascontiguousarray(X, dtype=np.int32), np.ascontiguousarray(Y, dtype=np.int32)


def split_words(words: Sequence[str], seed: int = SPLIT_SEED) -> Tuple[List[str], List[str], List[str]]:
    """The lecture's split: random.seed(42); random.shuffle(words); cut at 80% and 90%.
    Uses a private random.Random, so the global random state is left alone."""
    words = list(words)
    random.Random(seed).shuffle(words)
    n1, n2 = int(0.8 * len(words)), int(0.9 * len(words))
    return words[:n1], words[n1:n2], words[n2:]


@dataclass
class Dataset:
    """Words, vocabulary and the (X, Y) arrays of the three splits."""

    path: Optional[str]
    words: List[str]
    vocab: Vocab
    block_size: int
    train_words: List[str]
    dev_words: List[str]
    test_words: List[str]
    train: Tuple[np.ndarray, np.ndarray]
    dev: Tuple[np.ndarray, np.ndarray]
    test: Tuple[np.ndarray, np.ndarray]

    split_seed: int = SPLIT_SEED

    @property
    def sizes(self) -> Dict[str, int]:
        return {"train": len(self.train[1]), "dev": len(self.dev[1]), "test": len(self.test[1])}

    @property
    def sha256(self) -> str:
        """words_sha256 of all the words, in file order."""
        return words_sha256(self.words)


def make_dataset(words: Sequence[str], block_size: int = 3, seed: int = SPLIT_SEED,
                 path: Optional[str] = None) -> Dataset:
    words = list(words)
    vocab = Vocab.from_words(words)
    tr, dv, te = split_words(words, seed)
    return Dataset(path, words, vocab, block_size, tr, dv, te, build_dataset(tr, vocab, block_size),
                   build_dataset(dv, vocab, block_size), build_dataset(te, vocab, block_size), seed)


def load_dataset(path: Optional[PathLike] = None, block_size: int = 3, seed: int = SPLIT_SEED) -> Dataset:
    """Reads a word list (default: names.txt) and makes the lecture's three splits."""
    p = find_dataset(path)
    return make_dataset(load_words(p), block_size, seed, str(p))
