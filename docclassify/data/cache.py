"""Decoded-image cache: every source image decoded and resized once, stored as one
memory-mappable uint8 array (N, S, S, 3) per (image set, size, resize policy).

The key hashes the images' bytes, so a changed file gives a new cache. The file is built
in a temp file and renamed into place (a crash never leaves a half cache that looks
complete), an exclusive lock stops two processes building the same cache twice, and a
truncated file is detected on open and rebuilt. Epochs, folds, sweep trials and separate
processes all share it through the OS page cache.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from docclassify.data.images import BadImageError, load_image
from docclassify.utils.io import atomic_write_json, mkstemp_shared

if TYPE_CHECKING:  # annotations only: the typed settings are built at the entrypoint (engine/kfold.py)
    from docclassify.config_schema import DataCommon

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
# Arrays opened in this process, by key: sweep trials in one process skip even the open.
_OPEN: dict[str, tuple[np.ndarray, list[int]]] = {}
# Per-file digests of this process, by path -> ((size, mtime_ns, inode), digest). Every fold
# and sweep trial asks for the key again; re-reading a real data set's bytes each time costs
# seconds, a stat costs microseconds. A rewritten or replaced file changes its signature.
_DIGESTS: dict[str, tuple[tuple[int, int, int], bytes]] = {}


def _signature(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def _file_digest(path: Path) -> bytes:
    sig = _signature(path)  # before the read: a write racing with it gives a new signature next time
    digest = hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
    _DIGESTS[str(path)] = (sig, digest)
    return digest


def content_key(paths: Sequence[Path], size: int, policy: str, pad_value: int) -> str:
    """Hash of the images' bytes (in order) plus everything that changes the decoded pixels.

    Files whose (size, mtime, inode) this process has already hashed are not read again.
    """
    paths = [Path(p) for p in paths]
    digests: list[bytes | None] = []
    for p in paths:
        known = _DIGESTS.get(str(p))
        digests.append(known[1] if known is not None and known[0] == _signature(p) else None)
    missing = [i for i, d in enumerate(digests) if d is None]
    if missing:  # hashlib releases the GIL: threads overlap reading and hashing
        with ThreadPoolExecutor(max_workers=decode_threads()) as pool:
            for i, d in zip(missing, pool.map(lambda i: _file_digest(paths[i]), missing)):
                digests[i] = d
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([CACHE_FORMAT, int(size), policy, int(pad_value), len(paths)]).encode())
    for d in digests:
        h.update(d)
    return h.hexdigest()


class MappedArray(np.memmap):
    """A cache file's read-only memory map that pickles as its file, not its bytes nor its map.

    A DataLoader worker started by spawn or forkserver (Hydra's joblib launcher runs jobs in loky
    processes, whose workers start that way; Python 3.14 defaults to forkserver) receives the
    dataset pickled: a plain ``np.memmap`` fails there (``cannot pickle 'mmap.mmap' object``),
    this one is reopened from the same file on unpickle. Only the array opened on the file
    pickles so; a view of it (a slice) pickles its values like any array."""

    _file_spec: tuple | None = None  # (filename, shape, offset) of the array opened on the file

    def __reduce__(self):
        if self._file_spec is not None:
            return _reopen_mapped, self._file_spec
        return np.array(self).__reduce__()


def _reopen_mapped(filename: str, shape: tuple[int, ...], offset: int) -> MappedArray:
    arr = np.memmap(filename, dtype=np.uint8, mode="r", shape=tuple(shape), offset=offset).view(MappedArray)
    arr._file_spec = (filename, tuple(shape), offset)
    return arr


def open_mapped(path: Path) -> MappedArray:
    """The uint8 ``.npy`` file ``path`` memory-mapped read-only, as a picklable MappedArray."""
    arr = np.load(path, mmap_mode="r")
    if arr.dtype != np.uint8:
        raise ValueError(f"{path}: dtype {arr.dtype}, expected uint8")
    return _reopen_mapped(str(Path(arr.filename).resolve()), arr.shape, int(arr.offset))


def _valid_file(path: Path, shape: tuple[int, ...]) -> bool:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    return arr.shape == tuple(shape) and arr.dtype == np.uint8 and path.stat().st_size >= int(np.prod(shape))


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def decode_all(paths: Sequence[Path], size: int, policy: str, pad_value: int, out: np.ndarray | None,
               progress: bool = True, what: str = "decode cache") -> list[int]:
    """Decode and resize every one of ``paths`` in threads (PIL releases the GIL); into ``out[i]``
    (a bad image's row gets ``pad_value``), or, with ``out=None``, only to prove each one decodes
    (nothing kept). Returns the indices of the undecodable images."""
    bad: list[int] = []
    n = len(paths)

    def work(i: int) -> None:
        try:
            image = load_image(paths[i], size, policy, pad_value)
        except BadImageError as exc:
            log.debug("%s", exc)
            bad.append(i)
            image = pad_value
        if out is not None:
            out[i] = image

    t0, last = time.time(), 0.0
    with ThreadPoolExecutor(max_workers=decode_threads()) as pool:
        for done, _ in enumerate(pool.map(work, range(n)), 1):
            now = time.time()
            if progress and (now - last > 5 or done == n):
                last = now
                rate = done / max(now - t0, 1e-9)
                log.info("%s: %d/%d images (%.0f img/s)", what, done, n, rate)
    return sorted(bad)


def decode_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


# Cache folders found unwritable in this process (warned about once each).
_UNWRITABLE: set[str] = set()
# What an unwritable or full cache folder raises: the cache is then skipped, not the run.
CACHE_WRITE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def cache_write_failed(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in CACHE_WRITE_ERRNOS


def warn_unwritable(where: Path, exc: OSError, what: str) -> None:
    """One warning per cache folder and process: the run goes on without the cache."""
    root = str(where.parent)
    if root in _UNWRITABLE:
        return
    _UNWRITABLE.add(root)
    log.warning("%s: cannot write to the cache folder %s (%s): computing in memory instead, every run again. "
                "Point paths.cache_dir (DOCCLASSIFY_CACHE) at a writable folder with free space to keep the "
                "cache.", what, where, exc.strerror or exc)


def write_cache_file(path: Path, write, what: str) -> bool:
    """``write(path)`` for a file of a cache (shift statistics, fingerprints); a folder that cannot
    be written is not an error (one warning; the value is recomputed next time). True if written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        return True
    except OSError as exc:
        if not cache_write_failed(exc):
            raise
        warn_unwritable(path.parent, exc, what)
        return False


def _open_existing(data_path: Path, meta_path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, dict] | None:
    """A complete cache file already there (also in a read-only folder), else None."""
    if not (data_path.exists() and meta_path.exists() and _valid_file(data_path, shape)):
        return None
    try:
        return open_mapped(data_path), json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None


def _in_memory(shape: tuple[int, ...], build) -> tuple[np.ndarray, dict]:
    arr = np.empty(shape, dtype=np.uint8)
    meta = build(arr)
    arr.setflags(write=False)  # read-only like the memory-mapped cache
    return arr, meta


def cached_array(key: str, shape: tuple[int, ...], build, cache_dir: str | Path, folder: str = "decoded",
                 what: str = "decode cache") -> tuple[np.ndarray, dict]:
    """The read-only uint8 array ``key`` of ``shape`` and its meta dict, built once for every process.

    ``build(out)`` fills the writable array ``out`` and returns the meta (JSON) stored beside it.
    The file is built in a temp file and renamed into place under an exclusive lock; a truncated
    or corrupt file is rebuilt; arrays opened in this process are reused by key. A cache folder
    that cannot be written (read-only, no permission, disk full) is not an error: a complete
    file already there is used, else the array is built in memory (one warning)."""
    if key in _OPEN:
        return _OPEN[key]
    where = Path(cache_dir).expanduser() / folder
    data_path, meta_path = where / f"{key}.npy", where / f"{key}.json"
    try:
        where.mkdir(parents=True, exist_ok=True)
        with _file_lock(where / f"{key}.lock"):
            opened = _open_existing(data_path, meta_path, shape) or _build_file(where, key, shape, build, what)
    except OSError as exc:
        if not cache_write_failed(exc):
            raise
        opened = _open_existing(data_path, meta_path, shape)
        if opened is None:
            warn_unwritable(where, exc, what)
            return _in_memory(shape, build)
    _OPEN[key] = opened
    return opened


def _build_file(where: Path, key: str, shape: tuple[int, ...], build, what: str) -> tuple[np.ndarray, dict]:
    """Build the cache file of ``key`` (under the caller's lock): temp file, fill, rename into place."""
    data_path, meta_path = where / f"{key}.npy", where / f"{key}.json"
    if data_path.exists():
        log.warning("%s %s is incomplete or corrupt: rebuilding", what, data_path)
    t0 = time.time()
    log.info("%s: building %s %s", what, data_path.name, tuple(shape))
    fd, tmp = mkstemp_shared(where, f".{key}.", ".npy.tmp")  # readable by whom the umask allows
    os.close(fd)
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=tuple(shape))
        _reserve(tmp)  # a full disk fails here (ENOSPC), not as a SIGBUS while the map is filled
        meta = build(arr)
        arr.flush()
        del arr
        os.replace(tmp, data_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    atomic_write_json(meta_path, meta)
    log.info("%s: built in %.1fs", what, time.time() - t0)
    return open_mapped(data_path), meta


def _reserve(path: str) -> None:
    """Allocate the blocks of the (sparse) memmap file now."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate
            return
        raise
    finally:
        os.close(fd)


def cached_images(paths: Sequence[Path], size: int, policy: str, pad_value: int,
                  cache_dir: str | Path) -> tuple[np.ndarray, list[int]]:
    """Return (read-only array (N, size, size, 3), indices of undecodable images).

    Builds the cache on first use; later calls (any process) map the same file.
    """
    paths = [Path(p) for p in paths]
    key = content_key(paths, size, policy, pad_value)

    def build(out: np.ndarray) -> dict:
        log.info("decode cache: %d images at %d px, %s", len(paths), size, policy)
        bad = decode_all(paths, size, policy, pad_value, out)
        return {"format": CACHE_FORMAT, "n": len(paths), "size": size, "policy": policy, "pad_value": pad_value,
                "bad": bad}

    arr, meta = cached_array(key, (len(paths), size, size, 3), build, cache_dir)
    return arr, meta["bad"]


class LazyImages:
    """Decode on access (``data.cache=false``): same interface as the cached array."""

    def __init__(self, paths: Sequence[Path], size: int, policy: str, pad_value: int):
        self.paths, self.size, self.policy, self.pad_value = list(paths), size, policy, pad_value

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return load_image(self.paths[i], self.size, self.policy, self.pad_value)


def load_images(paths: Sequence[Path], size: int, data: DataCommon, cache_dir,
                check: bool = True) -> tuple[object, list[int]]:
    """The decoded training rows at ``size`` and the indices of undecodable files, found before the
    first epoch whatever ``data.cache`` says: with the cache every image is decoded into it (or it is
    already there); without (``data.cache=false``: decoded again on every access) every image is
    decoded once up front, in threads, and dropped, so a file that only fails part-way through
    (a JPEG cut short) is found here and not by a DataLoader worker in fold 0. ``check=False``
    skips that pass (DDP ranks other than 0 take rank 0's list)."""
    policy, pad_value = data.resize, int(data.pad_value)
    if data.cache:
        return cached_images(paths, size, policy, pad_value, cache_dir)
    bad = decode_all(paths, size, policy, pad_value, None, what="checking every image decodes") if check else []
    return LazyImages(paths, size, policy, pad_value), bad


def handle_bad_images(ids: Sequence[str], bad: Sequence[int], policy: str) -> list[str]:
    """``data.on_bad_image`` for the undecodable rows ``bad`` of ``ids``: error (naming them) or skip
    (one warning); returns the skipped IDs."""
    from docclassify.errors import DataError

    if not bad:
        return []
    bad_ids = [ids[i] for i in bad]
    shown = ", ".join(bad_ids[:20]) + (f" ... and {len(bad_ids) - 20} more" if len(bad_ids) > 20 else "")
    if policy == "error":
        raise DataError(f"{len(bad_ids)} training image(s) cannot be decoded: {shown}. Fix or remove them, "
                        "or set data.on_bad_image=skip to train without them.")
    if policy != "skip":
        raise DataError(f"data.on_bad_image={policy!r}: expected error or skip")
    log.warning("data.on_bad_image=skip: skipping %d undecodable training image(s): %s", len(bad_ids), shown)
    return bad_ids
