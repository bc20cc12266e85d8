"""Atomic file output: a crash mid-write leaves the previous good file, never half a file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temp file beside ``path``; on success fsync it and rename it over ``path``.

    The temp file lives in the same directory so the final ``os.replace`` is atomic on POSIX.
    On any exception the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
