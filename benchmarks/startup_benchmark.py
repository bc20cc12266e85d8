"""Start-up and wrap-up of one training command, with and without docclassify's GC handling.

Runs the end-to-end benchmark's docclassify command (warm decode cache) ``--repeat`` times in
each of two variants, alternated so that a changing machine load hits both alike:

- ``shipped``: as ``python -m docclassify.train`` runs (``tracking/phases.py``: no full GC walks
  during the imports, the imported objects frozen, a frozen heap at exit);
- ``python gc``: the same command with those three functions made no-ops (Python's default GC).

and prints the median of each phase of the ``phases (s):`` log line (imports, compose+checks,
data, first step, training, wrap-up), the exit (whole command minus the phases: interpreter
shutdown) and the whole command. ``--importtime`` also prints the biggest imports of the
command (``python -X importtime``).

    python benchmarks/startup_benchmark.py                       # convnext_atto, 128 px, 1 epoch
    python benchmarks/startup_benchmark.py --epochs 3 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import DEFAULT_WORK, REPO, ensure_data, machine_line
from end_to_end_benchmark import _cpu_seconds, docclassify_cmd, read_phases

# The command as a user runs it, optionally with the GC handling switched off.
_RUNNER = r"""
import runpy, sys
if sys.argv[1] == "off":
    from docclassify.tracking import phases
    phases.pause_gc = phases.freeze_imported_objects = phases.freeze_before_exit = lambda: None
sys.argv = ["docclassify.train", *sys.argv[2:]]
runpy.run_module("docclassify.train", run_name="__main__", alter_sys=True)
"""
VARIANTS = {"shipped": "on", "python gc": "off"}


def run_variant(gc: str, cmd: list[str], log: Path) -> dict[str, float]:
    """One run: its phases, exit, whole-command and CPU seconds."""
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-c", _RUNNER, gc, *cmd[3:]], stdout=fh, stderr=subprocess.STDOUT,
                              cwd=REPO, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({proc.returncode}); see {log}:\n" + log.read_text()[-3000:])
    phases = read_phases(log)
    return {**phases, "exit": wall - sum(phases.values()), "whole": wall, "CPU": _cpu_seconds() - cpu0}


def biggest_imports(cmd: list[str], n: int = 12) -> list[tuple[float, str]]:
    """(cumulative ms, module) of the top-level imports of the command, largest first."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *cmd[1:]], capture_output=True, text=True, cwd=REPO,
                          check=False)
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            _, cumulative, name = line[len("import time:"):].split("|")
            if len(name) - len(name.lstrip()) <= 3:  # imported by the command itself, not by a library
                rows.append((int(cumulative) / 1000, name.strip()))
    return sorted(rows, reverse=True)[:n]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="competition-layout data set (default: synthetic)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where data sets, caches and runs go")
    ap.add_argument("--model", default="convnext_atto")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="runs per variant (the median is reported)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--importtime", action="store_true", help="also list the biggest imports")
    args = ap.parse_args(argv)
    args.data = ensure_data(args.data, work=args.work)
    runs_dir, cache = args.work / "startup-runs", args.work / "startup-cache"
    runs_dir.mkdir(parents=True, exist_ok=True)
    print(machine_line())
    print(f"data {args.data}; {args.model} at {args.img_size} px, batch {args.batch}, {args.epochs} epoch(s), "
          f"{args.repeat} run(s) per variant")
    run_variant("on", docclassify_cmd(args, args.epochs, runs_dir / "warm-up", cache), runs_dir / "warm-up.log")
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for rep in range(args.repeat):
        for name in (list(VARIANTS) if rep % 2 == 0 else list(VARIANTS)[::-1]):
            run_dir = runs_dir / f"{name.replace(' ', '_')}_{rep}"
            results[name].append(run_variant(VARIANTS[name], docclassify_cmd(args, args.epochs, run_dir, cache),
                                             runs_dir / f"{run_dir.name}.log"))
    print(f"\n{'phase':<16}" + "".join(f"{name:>12}" for name in VARIANTS) + "   (median, s)")
    for key in results["shipped"][0]:
        print(f"{key:<16}" + "".join(f"{statistics.median(r[key] for r in results[n]):>12.2f}" for n in VARIANTS))
    print("whole command, every run: " + "; ".join(
        f"{name}: " + " ".join(f"{r['whole']:.1f}" for r in results[name]) for name in VARIANTS))
    if args.importtime:
        print("\nbiggest imports of the command (cumulative ms, -X importtime, one run):")
        cmd = docclassify_cmd(args, args.epochs, runs_dir / "importtime", cache)
        for ms, name in biggest_imports(cmd):
            print(f"{ms:>8.0f}  {name}")
    print(f"load avg at the end: {machine_line().split('load avg ')[1].split(' |')[0]}")
    if not os.environ.get("DOCCLASSIFY_BENCH_KEEP"):
        shutil.rmtree(runs_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
