"""Data-parallel training with torch.distributed, as launched by ``torchrun``.

``torchrun --nproc_per_node=N -m docclassify.train ...`` starts N copies of the entrypoint with
RANK / LOCAL_RANK / WORLD_SIZE in their environment. Each copy joins one process group
(gloo for CPU tensors; NCCL for CUDA tensors when CUDA is there), trains a
DistributedDataParallel replica on its shard of every epoch, predicts its share of the
validation rows, and the shares are gathered so every rank sees all validation logits: the
macro F1, the best-epoch choice and oof.csv are exactly those of one process evaluating
the same weights. Only rank 0 writes files, logs and runs callbacks.

Outside torchrun (no RANK/LOCAL_RANK/WORLD_SIZE in the environment) every helper here is a
single-process no-op, so the engine calls them unconditionally.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from docclassify.errors import UserError
from docclassify.utils.choices import LR_SCALE

if TYPE_CHECKING:  # annotations only: the typed settings are built at the entrypoint (engine/kfold.py)
    from docclassify.config_schema import TrainerConfig

log = logging.getLogger(__name__)

TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
MULTIRUN_FLAGS = ("-m", "--multirun")
# Hydra flags that print and exit without running the job (rank 0 would never share its run dir).
INFO_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion")

# Rank 0 still owes the waiting ranks its Hydra run dir (see follow_main_run_dir).
_owes_run_dir = False


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in TORCHRUN_ENV)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def backend_name() -> str | None:
    return str(dist.get_backend()) if is_distributed() else None


def init_from_env() -> bool:
    """Join the process group torchrun describes (idempotent); True when running distributed.

    One group serves both devices: collectives on CPU tensors (objects, barriers, CPU models)
    go through gloo, those on CUDA tensors through NCCL."""
    if is_distributed():
        return True
    if not launched_by_torchrun():
        return False
    cuda = torch.cuda.is_available() and dist.is_nccl_available()
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    dist.init_process_group(backend=backend)
    log.debug("rank %d/%d joined the process group (%s)", rank(), world_size(), backend)
    return True


def device_for(device: torch.device) -> torch.device:
    """The device of this rank: a CUDA device becomes ``cuda:LOCAL_RANK`` (one GPU per process)."""
    if not is_distributed() or device.type != "cuda":
        return device
    index, available = local_rank(), torch.cuda.device_count()
    if index >= available:
        raise RuntimeError(f"torchrun started local rank {index} but this node has {available} GPU(s): "
                           f"use --nproc_per_node<={available} (or trainer.device=cpu for gloo on CPU)")
    if device.index not in (None, index):
        log.warning("trainer.device=%s ignored under torchrun: local rank %d uses cuda:%d", device, index, index)
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. building a data set or a decode cache), then the others
    run it and find the work done."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (any picklable object)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list:
    """Every rank's ``obj``, in rank order (picklable objects of any size)."""
    if not is_distributed():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(indices: np.ndarray) -> np.ndarray:
    """This rank's contiguous share of ``indices`` (shares differ in length by at most one; no
    padding, so after ``gather_rows`` every row counts exactly once, in the original order)."""
    return np.array_split(np.asarray(indices), world_size())[rank()]


def gather_rows(rows: np.ndarray) -> np.ndarray:
    """Concatenate every rank's ``rows`` (variable length, same trailing shape) in rank order:
    the inverse of ``shard``."""
    if not is_distributed():
        return rows
    parts = [np.asarray(p) for p in all_gather_objects(np.asarray(rows))]
    parts = [p for p in parts if p.size]  # a rank without rows predicts an empty (0, 0) array
    return np.concatenate(parts) if parts else np.asarray(rows)


def all_ranks_true(flag: torch.Tensor | bool) -> bool:
    """True only if ``flag`` holds on every rank: decisions that change the collective sequence
    (skip a step, stop) must be taken by all ranks together or DDP deadlocks."""
    value = torch.as_tensor(flag).all().to(torch.int32)
    if is_distributed():
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value)


@torch.no_grad()
def sync_module_state(module: torch.nn.Module, src: int = 0) -> None:
    """Copy ``src``'s parameters and buffers into ``module`` on every rank (in place).

    DDP keeps parameters equal, but each rank's BatchNorm running statistics follow its own
    batches (DDP re-broadcasts rank 0's buffers only at the next forward), and so would an EMA
    of them. Before an evaluation every rank takes rank 0's state: the one that is checkpointed."""
    if not is_distributed():
        return
    for tensor in module.state_dict().values():
        if tensor.is_contiguous():
            dist.broadcast(tensor, src=src)
        else:  # e.g. channels_last conv weights
            tmp = tensor.contiguous()
            dist.broadcast(tmp, src=src)
            tensor.copy_(tmp)


def convert_sync_batchnorm(model: torch.nn.Module, enabled: bool, device: torch.device) -> torch.nn.Module:
    """``trainer.sync_bn``: BatchNorm statistics over the global batch instead of each rank's."""
    if not enabled or not is_distributed():
        return model
    if device.type != "cuda":
        raise UserError("trainer.sync_bn=true needs CUDA (torch's SyncBatchNorm has no CPU kernel); "
                        "set trainer.sync_bn=false to train with per-rank BatchNorm statistics")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` (unchanged outside torchrun)."""
    if not is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=device.index if ids else None)


def lr_factor(rule: str, world: int) -> float:
    """``trainer.lr_scale``: how trainer.lr grows with the number of processes (each adds a batch)."""
    if rule == "none":
        return 1.0
    if rule == "linear":
        return float(world)
    if rule == "sqrt":
        return math.sqrt(world)
    raise ValueError(f"trainer.lr_scale={rule!r}: expected one of {', '.join(LR_SCALE)}")


def scaling(trainer: TrainerConfig) -> dict:
    """World size, effective batch and the lr actually used (recorded in results.json)."""
    world = world_size()
    batch, accum = int(trainer.batch_size), max(1, int(trainer.accum_steps))
    rule = str(trainer.lr_scale)
    return {
        "world_size": world, "backend": backend_name(), "batch_size_per_process": batch, "accum_steps": accum,
        "effective_batch_size": batch * accum * world, "lr_scale": rule, "base_lr": float(trainer.lr),
        "lr": float(trainer.lr) * lr_factor(rule, world),
    }


def follow_main_run_dir(argv: list[str]) -> list[str]:
    """Under torchrun, before Hydra starts: make every rank use rank 0's run dir.

    Each rank runs Hydra, and ``${now:...}`` in hydra.run.dir may resolve a second apart, so
    ranks > 0 wait here until rank 0's job sends its resolved run dir (``share_run_dir``), then
    run Hydra in that dir writing nothing there (no .hydra/, no log file). Returns this rank's
    command line; outside torchrun, ``argv`` unchanged."""
    global _owes_run_dir
    if not launched_by_torchrun():
        return argv
    if any(a in MULTIRUN_FLAGS for a in argv):
        raise SystemExit("docclassify.train: --multirun under torchrun is not supported; start one torchrun "
                         "per job (e.g. let a SLURM launcher run torchrun), see docs/scaling.md")
    if any(a.split("=")[0] in INFO_FLAGS for a in argv):  # print once (rank 0), run nothing
        if int(os.environ["RANK"]) != 0:
            raise SystemExit(0)
        return argv
    init_from_env()
    if is_main():
        _owes_run_dir = True
        return argv
    run_dir = broadcast_object(None)
    own = ("hydra.run.dir=", "hydra.output_subdir=", "hydra/job_logging=")
    kept = [a for a in argv if not a.lstrip("+").startswith(own)]
    quoted = str(run_dir).replace("'", "\\'")  # a Hydra quoted string: any path survives parsing
    return [*kept, f"hydra.run.dir='{quoted}'", "hydra.output_subdir=null", "hydra/job_logging=disabled"]


def share_run_dir(run_dir: str) -> None:
    """Rank 0, inside its Hydra job: release the ranks waiting in ``follow_main_run_dir``."""
    global _owes_run_dir
    if _owes_run_dir:
        _owes_run_dir = False
        broadcast_object(str(run_dir))


# ------------------------------------------------------------------------------------------ stopping together
# The first failing rank leaves its message here (the process group's store: torchrun's agent
# keeps it alive after that rank exits), for the ranks that stop because of it.
STOP_KEY = "docclassify/stopped"


class PeerStopped(RuntimeError):
    """This rank stops because another rank failed or was killed; the message says which and why
    (``announced``: that rank left its error in the store; False: it vanished, e.g. killed)."""

    def __init__(self, message: str, announced: bool) -> None:
        super().__init__(message)
        self.announced = announced


class MainStopped(Exception):
    """Rank 0 stopped the run at a point every rank reaches (a callback raised, e.g. a sweep pruned
    the trial): the other ranks stop with it, quietly (rank 0 reports)."""

    def __init__(self, message: str, pruned: bool) -> None:
        super().__init__(message)
        self.pruned = pruned


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def is_prune(exc: BaseException) -> bool:
    """optuna.TrialPruned (by name: optuna is imported only by sweeps)."""
    return any(c.__name__ == "TrialPruned" and c.__module__.startswith("optuna") for c in type(exc).__mro__)


def on_main_then_shared(fn) -> None:
    """Run ``fn`` on rank 0 (callbacks live there: trackers, sweep pruning) and share its outcome: when
    it raises, rank 0 raises that exception and every other rank :class:`MainStopped`, at the same
    point, instead of waiting in the next collective for a rank that is gone."""
    error = None
    if is_main():
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - shared with the other ranks, then re-raised
            error = exc
    if is_distributed():
        verdict = broadcast_object(None if error is None else (_first_line(error), is_prune(error)))
        if error is None and verdict is not None:
            raise MainStopped(f"rank 0 stopped: {verdict[0]}", pruned=verdict[1])
    if error is not None:
        raise error


def _store():
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no group, or a torch without it: no shared message
        return None


def _is_comm_failure(exc: BaseException) -> bool:
    """A collective that failed because a peer process went away (gloo / NCCL / the store)."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(s in text for s in ("Connection closed by peer", "Connection reset",
                                                                     "gloo", "NCCL", "Broken pipe"))


FAILED = "failed with"


def announce_stop(exc: BaseException) -> None:
    """Leave this rank's failure (or interrupt) in the store (the first rank's message is kept)."""
    from docclassify.engine.signals import Interrupted

    what = f"was interrupted by {exc}" if isinstance(exc, Interrupted) else f"{FAILED} {_first_line(exc)}"
    store = _store()
    if store is not None:
        with contextlib.suppress(Exception):
            store.compare_set(STOP_KEY, "", f"rank {rank()} {what}")


def announced_stop(wait_s: float = 0.0) -> str | None:
    """The first failing rank's announcement, waiting up to ``wait_s`` for it; None if there is none."""
    import time

    store, deadline = _store(), time.monotonic() + wait_s
    while store is not None:
        with contextlib.suppress(Exception):
            if store.check([STOP_KEY]):
                return store.get(STOP_KEY).decode()
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    return None


def peer_stopped(exc: BaseException, wait_s: float = 2.0) -> PeerStopped:
    """Why this rank stops: another rank's announcement, or that one vanished without one (a signal, OOM)."""
    announced = announced_stop(wait_s)
    reason = announced or ("another rank exited without a message (killed by a signal, or out of memory?): "
                           f"{_first_line(exc)}")
    return PeerStopped(f"rank {rank()} stopping: {reason}", announced is not None)


# Exceptions every rank raises at the same point (a collective decision): rank 0 reports them.
def _collective(exc: BaseException) -> bool:
    from docclassify.engine.signals import NonFiniteLossError, StopRequested

    return isinstance(exc, (StopRequested, NonFiniteLossError, MainStopped, PeerStopped))


@contextlib.contextmanager
def stops_together() -> Iterator[None]:
    """Around one rank's run under torchrun: any rank's stop ends every rank promptly, with one message.

    - a stop every rank takes together (SIGTERM, non-finite loss, a prune: collective decisions)
      passes through (the entrypoint reports it on rank 0 only);
    - this rank's own failure is announced in the store, then raised (its exit makes the collectives
      of the other ranks fail at once; torchrun also stops them);
    - a collective that fails because a peer went away becomes :class:`PeerStopped` naming that
      rank and its error.
    Outside torchrun it does nothing."""
    from docclassify.engine.signals import Interrupted, hold_interrupts

    try:
        yield
    except BaseException as exc:
        if not is_distributed() or isinstance(exc, SystemExit):
            raise
        hold_interrupts()  # torchrun's SIGTERM to the group must not cut this rank's report short
        if _collective(exc):
            raise
        if _is_comm_failure(exc) or (isinstance(exc, Interrupted) and FAILED in (announced_stop() or "")):
            stopped = peer_stopped(exc)  # (Interrupted: torchrun stopping the group after a failure)
            _leave_group()
            raise stopped from exc
        announce_stop(exc)
        _leave_group()  # closes this rank's connections: the others' collectives fail now, not at exit
        raise


def _leave_group() -> None:
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


def launch_rank() -> int:
    """This process's rank as torchrun started it (also after it has left the process group)."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0
