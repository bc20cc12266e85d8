"""Atomic file output: a crash mid-write leaves the previous good file, never half a file.

A write that fails (disk full, permission denied, read-only file system) raises
:class:`WriteError`: its message names the file and says the previous version is unchanged.
Files that belong together (oof.csv + results.json; submission.csv + test_probs.csv +
summary.json) are written inside :func:`atomic_group`: they appear together or not at all.

Outputs get the permissions of any file the user creates (``0o666 & ~umask``: 0644 under the
usual umask 022, 0640 under 027), not the 0600 that ``tempfile.mkstemp`` gives its temp
files (a mode the rename would carry over): a shared run dir or cache stays readable by the
people the umask allows.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
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


class WriteError(OSError):
    """An output that could not be written (disk full, no permission, read-only folder). The
    message names the file; the file's previous version, if any, is untouched."""

    HINTS = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some space within your disk quota",
             errno.EACCES: "make the folder writable or write elsewhere",
             errno.EPERM: "make the folder writable or write elsewhere",
             errno.EROFS: "the file system is read-only: write elsewhere"}

    def __init__(self, path: Path, exc: OSError):
        reason = exc.strerror or str(exc)
        kept = "its previous version is unchanged" if path.exists() else "nothing was written"
        hint = self.HINTS.get(exc.errno)
        message = f"cannot write {path}: {reason}; {kept}" + (f" ({hint}, then run the command again)" if hint else "")
        super().__init__(exc.errno, message, str(path))

    def __str__(self) -> str:
        return self.strerror


# Files written inside an ``atomic_group()``: renamed into place together when the group ends.
_group = threading.local()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temp file beside ``path``; on success fsync it and rename it over ``path``.

    The temp file lives in the same directory so the final ``os.replace`` is atomic on POSIX.
    On any exception the temp file is removed and ``path`` is untouched; a failed write (disk
    full, permission denied) raises :class:`WriteError` naming ``path``. The file gets the
    umask's mode (0644 under umask 022). Inside :func:`atomic_group` the rename waits for the
    group's end.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = mkstemp_shared(path.parent, f".{path.name}.", ".tmp")
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        pending = getattr(_group, "pending", None)
        if pending is not None:
            pending.append((tmp, path))
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError) and exc.errno is not None:
            raise WriteError(path, exc) from exc
        raise


@contextlib.contextmanager
def atomic_group() -> Iterator[None]:
    """The files written (by :func:`atomic_write`) inside the block appear together or not at all:
    each is complete in its temp file first; at the end all are renamed into place with SIGINT and
    SIGTERM held back (delivered right after), so an interrupt or a failed write leaves the
    previous set (e.g. a submission never without its test_probs.csv)."""
    if getattr(_group, "pending", None) is not None:  # nested: the outer group commits
        yield
        return
    pending = _group.pending = []
    try:
        yield
        _group.pending = None
        with _signals_held():
            for tmp, path in pending:
                os.replace(tmp, path)
    finally:
        _group.pending = None
        for tmp, _ in pending:  # those not renamed (an exception): removed
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    held = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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
