"""``ensure_synthetic``: a generated data set cached under its spec hash, safe across processes."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

from docclassify.data.synthetic.generator import COMPLETE_MARKER, generate
from docclassify.data.synthetic.spec import (
    CLASS_NAMES,
    SyntheticSpec,
    synthetic_dir_name,
    train_counts,
)
from docclassify.utils.io import mkdtemp_shared


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


_STALE_TEMP_S = 6 * 3600


def _remove_stale_temps(cache: Path, name: str) -> None:
    """Remove temp dirs of crashed generators (dead pid on this host, or very old)."""
    host = socket.gethostname()
    for tmp in cache.glob(f".{name}.tmp-*"):
        parts = tmp.name.split(".tmp-", 1)[1].split("~")
        stale = False
        if len(parts) >= 2 and parts[0] == host and parts[1].isdigit():
            stale = not _pid_alive(int(parts[1]))
        try:
            stale = stale or (time.time() - tmp.stat().st_mtime > _STALE_TEMP_S)
        except OSError:
            continue
        if stale:
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_synthetic(cache_dir: str | Path, spec: SyntheticSpec) -> Path:
    """Return ``cache_dir/synthetic-<hash>``, generating it first unless it exists complete.

    Generation goes into a temp dir next to the target that is renamed into place, so a
    crash never leaves a folder that looks complete; if another process wins the rename,
    its folder is used and ours is discarded.
    """
    cache = Path(cache_dir)
    name = synthetic_dir_name(spec)
    target = cache / name
    if (target / COMPLETE_MARKER).is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(cache, name)
    if target.exists():  # incomplete leftover (no marker): move aside, then delete
        trash = cache / f".{name}.stale~{os.getpid()}~{time.time_ns()}"
        try:
            os.rename(target, trash)
            shutil.rmtree(trash, ignore_errors=True)
        except FileNotFoundError:
            pass
        except OSError:
            if (target / COMPLETE_MARKER).is_file():
                return target
            raise
    # The umask's mode (mkdtemp's 0700 would survive the rename): a shared cache stays readable.
    tmp = Path(mkdtemp_shared(cache, f".{name}.tmp-{socket.gethostname()}~{os.getpid()}~"))
    t0 = time.perf_counter()
    try:
        generate(tmp, spec, progress=False)
        try:
            os.rename(tmp, target)
        except OSError:
            if (target / COMPLETE_MARKER).is_file():  # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n = sum(train_counts(spec)) + 2 * spec.n_test_per_class * len(CLASS_NAMES)  # test/ and test_phone/
    print(f"docclassify: generated synthetic data set ({n} images) in {target} "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)
    return target
