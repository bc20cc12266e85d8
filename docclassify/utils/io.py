"""Atomic file output: a crash mid-write leaves the previous good file, never half a file.

Outputs get the permissions of any file the user creates (``0o666 & ~umask``: 0644 under the
usual umask 022, 0640 under 027), not the 0600 that ``tempfile.mkstemp`` gives its temp
files (a mode the rename would carry over): a shared run dir or cache stays readable by the
people the umask allows.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Iterator

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it (Linux: /proc/self/status; elsewhere the
    set-and-restore round trip, under a lock)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def mkstemp_shared(folder: str | os.PathLike, prefix: str, suffix: str) -> tuple[int, str]:
    """``tempfile.mkstemp`` whose file has the umask's mode (mkstemp's 0600 would survive the
    rename into place). Returns (fd, path)."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def mkdtemp_shared(folder: str | os.PathLike, prefix: str) -> str:
    """``tempfile.mkdtemp`` with the umask's mode (mkdtemp gives 0700) for a dir renamed into place."""
    tmp = tempfile.mkdtemp(prefix=prefix, dir=folder)
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temp file beside ``path``; on success fsync it and rename it over ``path``.

    The temp file lives in the same directory so the final ``os.replace`` is atomic on POSIX.
    On any exception the temp file is removed and ``path`` is untouched. The file gets the
    umask's mode (0644 under umask 022).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = mkstemp_shared(path.parent, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temp file + rename (checkpoints are the costliest files to lose)."""
    import torch

    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)


def atomic_write_csv(df, path: str | os.PathLike, **to_csv_kwargs: Any) -> None:
    """Write a pandas DataFrame atomically (``index=False`` unless given)."""
    to_csv_kwargs.setdefault("index", False)
    with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
        df.to_csv(fh, **to_csv_kwargs)
