"""Helpers shared by the benchmark scripts (not a test module: these print figures).

Each benchmark makes (once) a competition-layout data set with docclassify's synthetic
generator, shaped like the reference task (1,570 JPEGs, ~600 px long side), unless
``--data`` points at a real one, and composes docclassify's own config like the CLI does.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_WORK = Path(os.environ.get("DOCCLASSIFY_BENCH_DIR", Path.home() / ".cache" / "docclassify-bench"))


def ensure_data(root: Path | None, n_per_class: int = 100, long_side: int = 600, work: Path = DEFAULT_WORK) -> Path:
    """A competition-layout data set: ``root`` if given, else a synthetic one generated once."""
    if root is not None:
        return Path(root).expanduser()
    from docclassify.data.synthetic import SyntheticSpec, generate

    out = work / f"data-{n_per_class}x{long_side}"
    if not (out / "train.csv").is_file():
        print(f"generating benchmark data set in {out} ...", flush=True)
        generate(out, SyntheticSpec(n_train_per_class=n_per_class, n_test_per_class=1, long_side=long_side, seed=1),
                 progress=False)
    return out


def compose(overrides: list[str]):
    """docclassify's train config, composed like `python -m docclassify.train <overrides>`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from docclassify.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def data_overrides(root: Path, cache_dir: Path, img_size: int) -> list[str]:
    return ["data=competition", f"data.root={root}", f"data.img_size={img_size}", f"paths.cache_dir={cache_dir}"]


def set_threads(threads: int | None) -> int:
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def timed(fn, repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine_line() -> str:
    import torch

    return (f"{platform.node()} | {os.cpu_count()} CPUs | load avg {load_average()} "
            f"| python {platform.python_version()}"
            f" | torch {torch.__version__} ({torch.get_num_threads()} threads) | cuda {torch.cuda.is_available()}")


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process in MiB (Linux /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pss_mb(pid: int | str = "self") -> float:
    """Proportional set size in MiB: pages shared with other processes (forked workers share
    most of the parent's) count once in total over all of them, unlike RSS."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children_pids(pid: int | None = None) -> list[int]:
    pid = pid or os.getpid()
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids = (task / "children").read_text().split()
            out.extend(int(k) for k in kids)
    except OSError:
        return out
    for k in list(out):
        out.extend(children_pids(k))
    return out


def run_child(script: Path, args: list[str], env: dict | None = None, timeout: int = 1800) -> dict:
    """Run ``script --one ...`` in a fresh process (clean thread pools, caches, RSS); parse its JSON line."""
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout,
                          check=False,
                          env={**os.environ, **(env or {})}, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{script.name}: no result line in output:\n{proc.stdout[-3000:]}")


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def step_rates(stamps: list[float], batch: int) -> dict:
    """img/s of a run of steps from their end times (stamps[0] = end of the last untimed step):
    mean = over the whole span; median = from the median step time, which shrugs off steps
    that other processes on a shared machine slowed down."""
    import statistics

    steps = [b - a for a, b in itertools.pairwise(stamps)]
    return {"mean": batch * len(steps) / (stamps[-1] - stamps[0]), "median": batch / statistics.median(steps)}


def bare_rate(model_name: str, num_classes: int, img_size: int, batch: int, steps: int, warmup: int = 3,
              channels_last: bool = False, per_step: bool = False):
    """The bare limit: forward+backward+AdamW step on pre-made tensors in a plain loop (img/s;
    with per_step, step_rates' dict)."""
    import torch

    from docclassify.engine.optim import build_optimizer
    from docclassify.models.factory import create_model

    torch.manual_seed(0)
    model = create_model(model_name, num_classes, pretrained=False).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, "adamw", 1e-3, 0.0)
    x = torch.randn(batch, 3, img_size, img_size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()
    stamps: list[float] = []
    for i in range(warmup + steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        if i >= warmup - 1:
            stamps.append(time.perf_counter())
    rates = step_rates(stamps, batch)
    return rates if per_step else rates["mean"]


class _Obj(dict):
    __getattr__ = dict.__getitem__
