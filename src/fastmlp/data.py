"""Data: word lists, the vocabulary, (X, Y) examples and the lecture's split.

The default data set is makemore's names.txt (32,033 names). It is found, in order:
an explicit path, ``$FASTMLP_DATA``, ``data/names.txt`` in the current directory,
then a copy downloaded into the user cache and checked against its SHA-256.
"""
from __future__ import annotations

import hashlib
import os
import random
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

NAMES_URL = "https://raw.githubusercontent.com/karpathy/makemore/master/names.txt"
NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"
END = "."  # start/end symbol, index 0

PathLike = Union[str, os.PathLike]


class DataError(ValueError):
    """A word list that cannot be used (missing, empty, unreadable, bad characters)."""


# ---------------------------------------------------------------------------
# Finding and reading the file
# ---------------------------------------------------------------------------
def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastmlp"


def sha256_of(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_names(dest: Optional[Path] = None, url: str = NAMES_URL, timeout: float = 30.0) -> Path:
    """Downloads names.txt into the cache (atomically) and checks its SHA-256."""
    dest = Path(dest) if dest else cache_dir() / "names.txt"
    where = ("Put names.txt (SHA-256 " + NAMES_SHA256 + ") at data/names.txt, point FASTMLP_DATA at it, "
             "or pass -i/--input-file.")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout) as r:
            payload = r.read()
    except Exception as e:  # offline, DNS, HTTP error, unwritable cache ...
        raise DataError(f"could not download names.txt from {url} ({e}). {where}") from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != NAMES_SHA256:
        raise DataError(f"downloaded names.txt has SHA-256 {digest}, expected {NAMES_SHA256}. {where}")
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".names.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(payload)
    os.replace(tmp, dest)
    return dest


def find_dataset(path: Optional[PathLike] = None, download: bool = True) -> Path:
    """Where the word list is: path, $FASTMLP_DATA, data/names.txt, the cache, or a download."""
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
    local = Path("data") / "names.txt"
    if local.is_file():
        return local
    cached = cache_dir() / "names.txt"
    if cached.is_file() and sha256_of(cached) == NAMES_SHA256:
        return cached
    if not download:
        raise DataError("names.txt not found: pass a path, set FASTMLP_DATA, or put it at data/names.txt")
    return download_names(cached)


def load_words(path: Optional[PathLike] = None) -> List[str]:
    """One word per line, UTF-8; surrounding white space (and Windows line ends) stripped,
    blank lines skipped. Raises DataError for a missing, unreadable or empty file, and for
    a word containing '.', which is reserved for start/end."""
    p = find_dataset(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {str(p)!r}: {e.strerror}") from None
    if b"\x00" in raw:
        raise DataError(f"{str(p)!r} looks like a binary file (it contains NUL bytes), not a word list")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{str(p)!r} is not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
    words = []
    for lineno, line in enumerate(text.splitlines(), 1):
        w = line.strip()
        if not w:
            continue
        if END in w:
            raise DataError(f"{str(p)!r} line {lineno}: {w[:40]!r} contains {END!r}, which fastmlp reserves "
                            "for start/end of word")
        words.append(w)
    if not words:
        raise DataError(f"{str(p)!r} holds no words (it is empty or blank)")
    return words


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
    lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
    starts = np.concatenate(([0], np.cumsum(lengths + T + 1)[:-1]))  # where each padded word begins
    per_word = lengths + 1                                              # examples per word
    first = np.repeat(np.cumsum(per_word) - per_word, per_word)
    positions = np.repeat(starts, per_word) + (np.arange(int(per_word.sum())) - first)
    X = G[positions[:, None] + np.arange(T)]
    Y = G[positions + T]
    return np.ascontiguousarray(X, dtype=np.int32), np.ascontiguousarray(Y, dtype=np.int32)


def split_words(words: Sequence[str], seed: int = 42) -> Tuple[List[str], List[str], List[str]]:
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

    @property
    def sizes(self) -> Dict[str, int]:
        return {"train": len(self.train[1]), "dev": len(self.dev[1]), "test": len(self.test[1])}


def make_dataset(words: Sequence[str], block_size: int = 3, seed: int = 42, path: Optional[str] = None) -> Dataset:
    words = list(words)
    vocab = Vocab.from_words(words)
    tr, dv, te = split_words(words, seed)
    return Dataset(path, words, vocab, block_size, tr, dv, te, build_dataset(tr, vocab, block_size),
                   build_dataset(dv, vocab, block_size), build_dataset(te, vocab, block_size))


def load_dataset(path: Optional[PathLike] = None, block_size: int = 3, seed: int = 42) -> Dataset:
    """Reads a word list (default: names.txt) and makes the lecture's three splits."""
    p = find_dataset(path)
    return make_dataset(load_words(p), block_size, seed, str(p))
