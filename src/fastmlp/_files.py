"""Writing files so that a crash, a kill or a full disk never leaves half of one: the
bytes go to a temporary file in the same folder, are flushed to disk, and only then
replace the old file (os.replace is atomic on POSIX and Windows)."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, IO, Union

PathLike = Union[str, os.PathLike]
TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0o022)  # read it the only way there is, and put it back at once
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Calls write(f) on a temporary file beside path, then moves it over path. The new
    file gets the permissions an ordinary open() would give it (0666 minus the umask)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def json_safe(obj):
    """obj with every NaN or infinity replaced by None: JSON has no such numbers, and a
    loss that blew up must still make a valid file (null) rather than `NaN`."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def to_json(obj, indent=None) -> str:
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def atomic_write_json(path: PathLike, obj) -> Path:
    return atomic_write_text(path, to_json(obj, indent=2) + "\n")


def remove_stale_temp_files(folder: PathLike, name: str) -> int:
    """Deletes what a killed atomic_write(folder / name) left behind; returns how many."""
    n = 0
    for p in Path(folder).glob("." + name + ".*" + TEMP_SUFFIX):
        try:
            p.unlink()
            n += 1
        except OSError:
            pass
    return n
