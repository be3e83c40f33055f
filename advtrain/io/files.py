"""Writing output safely: atomic replacement through a per-process temporary (a crash, a full disk or a
second process never leaves a half-written or mixed file), and one run per output folder (an exclusive
``flock`` held for the whole run; a second run into the folder is refused naming the first one's pid)."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

LOCK_FILE = ".advtrain.lock"
#: folders whose lock an ancestor process holds (inherited by the processes it forks or spawns:
#: evaluate.py --procs N's ranks write into the folder their launcher owns)
HELD_ENV = "ADVTRAIN_HELD_FOLDERS"
_held: dict[str, int] = {}  # folder -> how many nested holders in this process


def temporary_for(path: Path) -> Path:
    """The temporary ``path`` is written to before it replaces it: hidden, one per process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` then rename ``tmp`` over ``path``: readers see the old file or the new one, never a
    part. On any failure (``OSError`` of a full disk, Ctrl-C) the temporary is removed and the error raised."""
    path = Path(path)
    tmp = temporary_for(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class FolderInUse(ValueError):
    """Another process holds the output folder's lock."""


def _held_by_ancestor() -> set[str]:
    return set(filter(None, os.environ.get(HELD_ENV, "").split(os.pathsep)))


@contextmanager
def folder_lock(folder: str | Path, what: str = "run") -> Iterator[None]:
    """Hold ``folder`` exclusively for the block (reentrant in a process and its children): a second
    process is refused at once with a one-line :class:`FolderInUse` naming the holder's pid. The lock is a
    ``flock`` on ``folder/.advtrain.lock``: released by the kernel when the holder exits, even on kill -9."""
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _held or key in _held_by_ancestor():
        _held[key] = _held.get(key, 0) + 1
        try:
            yield
        finally:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise FolderInUse(f"output folder {folder} is in use by another {what} (pid {other}): wait for it to "
                          "finish or choose another output folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = 1
    previous = os.environ.get(HELD_ENV)
    os.environ[HELD_ENV] = os.pathsep.join(sorted(_held_by_ancestor() | {key}))
    try:
        yield
    finally:
        del _held[key]
        if previous is None:
            os.environ.pop(HELD_ENV, None)
        else:
            os.environ[HELD_ENV] = previous
        os.close(fd)  # the file stays: removing it would let a waiting opener lock a deleted inode
