"""Writing files so that a crash, a kill or a full disk never leaves half of one: the
bytes go to a temporary file in the same folder, are flushed to disk, and only then
replace the old file (os.replace is atomic on POSIX and Windows)."""
from __future__ import annotations

import json
import math
import os
import stat
import tempfile
import weakref
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


LOCK_NAME = ".fastmlp.lock"


class WorkDirBusy(ValueError):
    """Another run holds the work dir."""


class WorkDirLock:
    """An advisory lock on a work dir, held for a run's life: flock() on WORK/.fastmlp.lock,
    which also holds the holder's pid. The kernel frees it when the holder closes it or
    dies (kill -9 included), so a killed run never leaves the folder locked. flock locks
    belong to an open file, so two runs in one process (two threads) exclude each other
    too; a forked child closes its copy at once (os.register_at_fork), so it cannot keep a
    dead parent's lock. The lock file must be a regular file, not a link. Where flock does
    not exist (Windows) nothing is locked."""

    def __init__(self, work: PathLike):
        self.path = Path(work) / LOCK_NAME
        self._fd = None
        try:
            import fcntl
        except ImportError:  # not POSIX
            return
        for _ in range(3):  # the file may be unlinked (a failed start's cleanup) between open and flock
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                who = f"pid {holder}" + (", this process" if holder == str(os.getpid()) else "") \
                    if holder.isdigit() else "another process"
                raise WorkDirBusy(f"work dir {str(Path(work))!r} is in use by another run ({who}): wait for it to "
                                  "end, or choose another work dir") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except OSError:
                same = False
            if same:
                break
            os.close(fd)  # we locked a file no longer at the path: another run may lock the new one
        else:
            raise WorkDirBusy(f"work dir {str(Path(work))!r}: its lock file keeps changing; another run is "
                              "starting there")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        _HELD.add(self)

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | \
            getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(self.path, flags, 0o666 & ~_umask())
        except OSError as e:  # a symlink (ELOOP), a folder, a read-only work dir
            why = "it is a symbolic link" if self.path.is_symlink() else e.strerror or str(e)
            raise ValueError(f"cannot use the lock file {str(self.path)!r}: {why}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValueError(f"cannot use the lock file {str(self.path)!r}: it is not a regular file")
        return fd

    def release(self, unlink: bool = False) -> None:
        """Frees the lock; unlink: remove the lock file first, while still holding it."""
        if self._fd is not None and unlink:
            try:
                self.path.unlink()
            except OSError:
                pass
        if self._fd is not None:
            fd, self._fd = self._fd, None
            _HELD.discard(self)
            os.close(fd)  # closing the file releases the flock

    def __del__(self):
        self.release()


_HELD: "weakref.WeakSet[WorkDirLock]" = weakref.WeakSet()


def _close_in_child() -> None:
    # The child's copy of each descriptor refers to the parent's open file (and lock):
    # closing it drops only the child's reference; unlocking would unlock the parent.
    for lock in list(_HELD):
        if lock._fd is not None:
            try:
                os.close(lock._fd)
            except OSError:
                pass
            lock._fd = None
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)
