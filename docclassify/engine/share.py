"""This job's share of the machine: torch intra-op threads and loader workers for the cores it has.

Several jobs on one machine (Hydra's joblib launcher, a sweep with ``n_jobs`` > 1 on a parallel
launcher, ``torchrun --nproc_per_node=N``, or two commands side by side) each used to take every
core: torch's threads and the loader workers of all of them fought over the same cores, and a
run took several times its fair share. With ``trainer.threads=null`` (auto) each job takes

    threads = max(1, cores // jobs)       loader workers (data.num_workers=null) = min(4, threads - 1)

- ``cores``: the CPUs this process may run on (``os.sched_getaffinity``: taskset, cgroup cpusets,
  SLURM's binding), not the machine's count;
- ``jobs``: the docclassify training jobs running on this host now, the largest of
  * the live entries of a small registry, one file per running job (``<paths.cache_dir>/jobs/
    <host>-<pid>.json``, removed when the job ends; an entry whose process is gone, or whose PID
    now belongs to another process, is ignored and deleted), and
  * torchrun's ``LOCAL_WORLD_SIZE`` (its ranks start together, before any has registered).

The share is decided at the start of the run and again at every fold and epoch start, so a job
that started alone gives cores back when a second one starts (threads at once; loader workers
at the next fold). ``OMP_NUM_THREADS``, when set, caps the automatic count (except the ``1``
torchrun sets by default for several ranks). ``trainer.threads=N`` fixes the threads (the
workers then follow N the same way unless ``data.num_workers`` is set). The choice is logged.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

REGISTRY = "jobs"


@dataclass(frozen=True)
class Share:
    cores: int
    jobs: int
    threads: int
    workers: int
    how: str  # what decided it, for the log line


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _start_time(pid: int) -> str | None:
    """The process's start time (Linux /proc), to tell a reused PID from the registered process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, after the command name in parentheses


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    return start is None or _start_time(pid) in (None, start)


class JobRegistry:
    """One file per running docclassify job of this host in ``folder``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        self.host = socket.gethostname()
        self.path: Path | None = None

    def register(self) -> None:
        pid = os.getpid()
        if self.path is not None:
            return
        path = self.folder / f"{self.host}-{pid}.json"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"pid": pid, "start": _start_time(pid), "host": self.host}))
        except OSError as exc:  # a read-only cache: no registry, the other signals still count
            log.debug("job registry %s not writable: %s", self.folder, exc)
            return
        self.path = path
        atexit.register(self.unregister)

    def unregister(self) -> None:
        if self.path is not None and self.path.name == f"{self.host}-{os.getpid()}.json":
            with contextlib.suppress(OSError):
                self.path.unlink()
        self.path = None

    def live(self) -> int:
        """Running jobs of this host (stale entries are deleted)."""
        n = 0
        for entry in self.folder.glob(f"{self.host}-*.json"):
            try:
                info = json.loads(entry.read_text())
                alive = _alive(int(info["pid"]), info.get("start"))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being written or removed right now
            if alive:
                n += 1
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
        return n


def _omp_cap(local_world: int) -> int | None:
    raw = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not raw.isdigit() or int(raw) < 1:
        return None
    if raw == "1" and local_world > 1:  # torchrun's default for several ranks, not the user's choice
        return None
    return int(raw)


def decide(threads: int | None, jobs: int, cores: int, local_world: int = 1) -> Share:
    """The share of one of ``jobs`` jobs on ``cores`` cores (``threads``: trainer.threads)."""
    if threads is not None:
        n = int(threads)
        return Share(cores, jobs, n, max(0, min(4, n - 1)), f"trainer.threads={n}")
    n = max(1, cores // max(1, jobs))
    how = f"auto: {cores} core(s) / {jobs} docclassify job(s) on this machine"
    cap = _omp_cap(local_world)
    if cap is not None and cap < n:
        n, how = cap, f"{how}, capped by OMP_NUM_THREADS={cap}"
    return Share(cores, jobs, n, max(0, min(4, n - 1)), how)


class MachineShare:
    """The running job's share: registered once, re-decided on ``refresh()``."""

    def __init__(self, threads: int | None, cache_dir: str | Path | None):
        self.threads = threads
        self.registry = JobRegistry(Path(cache_dir) / REGISTRY) if cache_dir is not None else None
        self.current: Share | None = None

    def refresh(self) -> Share:
        import torch

        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        if self.registry is not None:
            self.registry.register()
        live = self.registry.live() if self.registry is not None else 1
        share = decide(self.threads, max(live, local_world, 1), usable_cores(), local_world)
        if torch.get_num_threads() != share.threads:
            torch.set_num_threads(share.threads)
        if self.current is None or (share.threads, share.jobs) != (self.current.threads, self.current.jobs):
            log.info("threads: %d torch thread(s), %d loader worker(s) by default (%s)", share.threads,
                     share.workers, share.how)
        self.current = share
        return share

    def close(self) -> None:
        if self.registry is not None:
            self.registry.unregister()


_ACTIVE: MachineShare | None = None


def start(threads: int | None, cache_dir: str | Path | None) -> Share:
    """Register this job and set its threads (the run's start); ``refresh()`` re-decides later."""
    global _ACTIVE
    if _ACTIVE is not None:
        _ACTIVE.close()
    _ACTIVE = MachineShare(threads, cache_dir)
    return _ACTIVE.refresh()


def refresh() -> Share | None:
    """Re-decide the running job's share (a fold or epoch start); None outside a run."""
    return _ACTIVE.refresh() if _ACTIVE is not None else None


def stop() -> None:
    """The run ended: leave the registry (a later run in this process registers again)."""
    global _ACTIVE
    if _ACTIVE is not None:
        _ACTIVE.close()
    _ACTIVE = None


def default_workers() -> int:
    """Loader workers for ``data.num_workers=null``: the running job's share, else (no run
    started, e.g. a library call) one per usable core but one, at most 4."""
    share = _ACTIVE.current if _ACTIVE is not None else None
    if share is not None:
        return share.workers
    return max(0, min(4, usable_cores() - 1))
