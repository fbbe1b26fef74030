"""fastmlp.data: finding and reading word lists, the vocabulary, (X, Y), the split."""
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from fastmlp import data
from fastmlp.data import DataError, Vocab


def lecture_build_dataset(words, stoi, block_size):
    """The lecture's loop, verbatim."""
    X, Y = [], []
    for w in words:
        context = [0] * block_size
        for ch in w + ".":
            ix = stoi[ch]
            X.append(context)
            Y.append(ix)
            context = context[1:] + [ix]
    return np.array(X, dtype=np.int32).reshape(-1, block_size), np.array(Y, dtype=np.int32)


WORDS = ["emma", "olivia", "ava", "isabella", "sophia", "x", "zoë", "ab"]


@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 8, 16])
def test_build_dataset_equals_the_lecture_loop(block_size):
    vocab = Vocab.from_words(WORDS)
    X, Y = data.build_dataset(WORDS, vocab, block_size)
    rX, rY = lecture_build_dataset(WORDS, vocab.stoi, block_size)
    np.testing.assert_array_equal(X, rX)
    np.testing.assert_array_equal(Y, rY)
    assert X.dtype == np.int32 and Y.dtype == np.int32 and X.flags.c_contiguous
    assert len(Y) == sum(len(w) + 1 for w in WORDS)


def test_vocab_order_and_round_trip():
    v = Vocab.from_words(["cab", "bad"])
    assert v.itos == (".", "a", "b", "c", "d") and v.stoi["."] == 0 and v.size == 5
    assert v.decode(v.encode("dab") + [0, 3]) == "dab"
    with pytest.raises(DataError, match="'z' of 'zz' is not in the vocabulary"):
        v.encode("zz")


def test_split_is_the_lectures(monkeypatch):
    import random

    words = [f"w{i}" for i in range(1000)]
    random.seed(42)
    expect = list(words)
    random.shuffle(expect)
    state = random.getstate()
    tr, dv, te = data.split_words(words)
    assert tr == expect[:800] and dv == expect[800:900] and te == expect[900:]
    assert random.getstate() == state  # the global random state is left alone


def test_bundled_names_txt_is_makemores():
    # the package ships names.txt: no download, no network, no environment variable
    p = data.bundled_names()
    assert hashlib.sha256(p.read_bytes()).hexdigest() == data.NAMES_SHA256


def test_names_txt_split_sizes():
    ds = data.load_dataset(block_size=3)  # the bundled copy (unless FASTMLP_DATA says otherwise)
    assert ds.sha256 == data.words_sha256(data.load_words(data.bundled_names()))
    assert len(ds.words) == 32033
    assert ds.vocab.size == 27 and ds.vocab.itos[:3] == (".", "a", "b")
    assert ds.sizes == {"train": 182625, "dev": 22655, "test": 22866}
    assert ds.train[0].shape == (182625, 3)


# -- files ----------------------------------------------------------------------
def write(tmp_path, content, name="words.txt"):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return p


def test_blank_lines_whitespace_and_windows_line_ends(tmp_path):
    p = write(tmp_path, b"anna\r\n\r\n  bob \r\n\n\ncarl")
    assert data.load_words(p) == ["anna", "bob", "carl"]


def test_non_ascii_characters_join_the_vocabulary(tmp_path):
    p = write(tmp_path, "zoë\nrené\nåsa\n")
    words = data.load_words(p)
    v = Vocab.from_words(words)
    assert "ë" in v.itos and "å" in v.itos
    X, Y = data.build_dataset(words, v, 3)
    assert v.decode(Y[:3]) == "zoë"


def test_a_very_long_word(tmp_path):
    p = write(tmp_path, "ab\n" + "x" * 10_000 + "\ncd\n")
    words = data.load_words(p)
    X, Y = data.build_dataset(words, Vocab.from_words(words), 4)
    assert len(Y) == 3 + 10_001 + 3


@pytest.mark.parametrize("content,msg", [
    (b"", "holds no words"),
    (b"\n  \n\r\n", "holds no words"),
    (b"anna\nb.ob\n", r"line 2: 'b.ob' contains '.'"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "binary file"),
    (b"anna\n\xff\xfebob\n", "not valid UTF-8"),
])
def test_bad_files(tmp_path, content, msg):
    with pytest.raises(DataError, match=msg):
        data.load_words(write(tmp_path, content))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.load_words(tmp_path / "nope.txt")


def test_unreadable_file(tmp_path):
    p = write(tmp_path, "anna\n")
    p.chmod(0)
    if os.access(p, os.R_OK):  # root reads anything: use a folder instead
        p = tmp_path / "folder.txt"
        p.mkdir()
    with pytest.raises(DataError):
        data.load_words(p)


# -- where the data set is found ----------------------------------------------------
@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTMLP_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_lookup_order(isolated, monkeypatch):
    explicit = write(isolated, "a\n", "explicit.txt")
    env = write(isolated, "b\n", "env.txt")
    monkeypatch.setenv("FASTMLP_DATA", str(env))
    assert data.find_dataset(explicit) == explicit
    assert data.find_dataset() == env
    monkeypatch.delenv("FASTMLP_DATA")
    assert data.find_dataset() == data.bundled_names()
    (isolated / "data").mkdir()  # a data/names.txt in the current folder is not looked at
    write(isolated / "data", "c\n", "names.txt")
    assert data.find_dataset() == data.bundled_names()


def test_bad_env_path(isolated, monkeypatch):
    monkeypatch.setenv("FASTMLP_DATA", str(isolated / "missing.txt"))
    with pytest.raises(DataError, match="FASTMLP_DATA"):
        data.find_dataset()


def test_byte_order_mark_and_unicode_line_breaks(tmp_path):
    # read as text files are read: a UTF-8 BOM is not a symbol, and only \n (or \r\n) ends
    # a line; \x85 (NEL) and U+2028 inside a word are characters of that word
    p = write(tmp_path, "\ufeffemma\r\nan\u2028na\nbo\x85b\n".encode("utf-8"))
    words = data.load_words(p)
    assert words == ["emma", "an\u2028na", "bo\x85b"]
    assert "\ufeff" not in Vocab.from_words(words).itos


def test_build_dataset_of_many_words_stays_small():
    # contexts are gathered column by column with int32 positions: no (N, T) int64 temporaries
    import tracemalloc

    words = ["abcdefgh"] * 200_000  # 1.8M examples
    vocab = Vocab.from_words(words[:1])
    tracemalloc.start()
    X, Y = data.build_dataset(words, vocab, 8)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert X.shape == (1_800_000, 8)
    assert peak < 4 * X.nbytes, peak  # the result is X.nbytes; int64 (N, T) indices alone would be 2x that
