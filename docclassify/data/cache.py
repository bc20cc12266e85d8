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
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from docclassify.data.images import BadImageError, load_image
from docclassify.utils.io import atomic_write_json, mkstemp_shared

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
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            for i, d in zip(missing, pool.map(lambda i: _file_digest(paths[i]), missing)):
                digests[i] = d
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([CACHE_FORMAT, int(size), policy, int(pad_value), len(paths)]).encode())
    for d in digests:
        h.update(d)
    return h.hexdigest()


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


def decode_all(paths: Sequence[Path], size: int, policy: str, pad_value: int, out: np.ndarray,
               progress: bool = True) -> list[int]:
    """Decode ``paths`` into ``out`` (threads: PIL releases the GIL). Returns indices of bad images."""
    bad: list[int] = []
    n = len(paths)

    def work(i: int) -> None:
        try:
            out[i] = load_image(paths[i], size, policy, pad_value)
        except BadImageError as exc:
            log.debug("%s", exc)
            bad.append(i)
            out[i] = pad_value

    t0, last = time.time(), 0.0
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        for done, _ in enumerate(pool.map(work, range(n)), 1):
            now = time.time()
            if progress and (now - last > 5 or done == n):
                last = now
                rate = done / max(now - t0, 1e-9)
                log.info("decode cache: %d/%d images (%.0f img/s)", done, n, rate)
    return sorted(bad)


def cached_array(key: str, shape: tuple[int, ...], build, cache_dir: str | Path, folder: str = "decoded",
                 what: str = "decode cache") -> tuple[np.ndarray, dict]:
    """The read-only uint8 array ``key`` of ``shape`` and its meta dict, built once for every process.

    ``build(out)`` fills the writable memmap ``out`` and returns the meta (JSON) stored beside it.
    The file is built in a temp file and renamed into place under an exclusive lock; a truncated
    or corrupt file is rebuilt; arrays opened in this process are reused by key."""
    if key in _OPEN:
        return _OPEN[key]
    where = Path(cache_dir).expanduser() / folder
    where.mkdir(parents=True, exist_ok=True)
    data_path, meta_path = where / f"{key}.npy", where / f"{key}.json"
    with _file_lock(where / f"{key}.lock"):
        if data_path.exists() and meta_path.exists() and _valid_file(data_path, shape):
            meta = json.loads(meta_path.read_text())
        else:
            if data_path.exists():
                log.warning("%s %s is incomplete or corrupt: rebuilding", what, data_path)
            t0 = time.time()
            log.info("%s: building %s %s", what, data_path.name, tuple(shape))
            fd, tmp = mkstemp_shared(where, f".{key}.", ".npy.tmp")  # readable by whom the umask allows
            os.close(fd)
            try:
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=tuple(shape))
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
    arr = np.load(data_path, mmap_mode="r")
    _OPEN[key] = (arr, meta)
    return arr, meta


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


def find_bad_images(paths: Sequence[Path]) -> list[int]:
    """Cheap pre-flight check for the uncached path: indices of files PIL cannot identify/verify."""
    from PIL import Image

    bad = []
    for i, p in enumerate(paths):
        try:
            if Path(p).stat().st_size == 0:
                raise OSError("empty file")
            with Image.open(p) as img:
                img.verify()
        except Exception:
            bad.append(i)
    return bad


def load_images(paths: Sequence[Path], size: int, data_cfg, cache_dir) -> tuple[object, list[int]]:
    """The decoded training rows at ``size`` (``data.cache``: the memory-mapped cache, else decoded on
    access) and the indices of undecodable files."""
    if data_cfg.cache:
        return cached_images(paths, size, data_cfg.resize, int(data_cfg.pad_value), cache_dir)
    return LazyImages(paths, size, data_cfg.resize, int(data_cfg.pad_value)), find_bad_images(paths)


def handle_bad_images(ids: Sequence[str], bad: Sequence[int], policy: str) -> list[str]:
    """``data.on_bad_image`` for the undecodable rows ``bad`` of ``ids``: error (naming them) or skip
    (one warning); returns the skipped IDs."""
    from docclassify.data.sources import DataError

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
