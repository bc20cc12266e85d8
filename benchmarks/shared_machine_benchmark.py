"""Two docclassify trainings side by side on one machine vs one alone (engine/share.py).

Runs the same training command (the default experiment unless overrides are given) three ways,
each in fresh processes with a warm decode cache (a warm-up run builds it first):

  alone        one run by itself: T1
  shared       two runs started together, each with trainer.threads=null (auto: each takes its
               share of the cores and the loader workers follow): T2 = until both finished
  unshared     (--unshared) the same two with the share switched off: every run takes all the
               cores (trainer.threads=<cores>, data.num_workers=min(4, cores - 1)), as before

and prints T2 / (2 x T1): 1.0 is a perfect share, the target is <= 1.2. OMP_NUM_THREADS is
removed from the runs' environment (it would cap the automatic share).

    python benchmarks/shared_machine_benchmark.py [--unshared] [OVERRIDE ...]
    python benchmarks/shared_machine_benchmark.py --unshared folds.run=[0] trainer.epochs=2   # brief
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, load_average, machine_line


def _start(overrides: list[str], run_dir: Path, env: dict) -> subprocess.Popen:
    log = open(run_dir.with_suffix(".log"), "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "docclassify.train", *overrides, "logger=none",
                             f"hydra.run.dir={run_dir}"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def timed_runs(n: int, overrides: list[str], work: Path, tag: str, env: dict) -> tuple[float, list[str], str]:
    """Wall seconds until all of ``n`` runs started together have finished, their share log lines
    and the load average at the end."""
    t0 = time.perf_counter()
    procs = [_start(overrides, work / f"{tag}{i}", env) for i in range(n)]
    codes = [p.wait() for p in procs]
    seconds = time.perf_counter() - t0
    for i, code in enumerate(codes):
        if code != 0:
            raise RuntimeError(f"{tag}{i} failed ({code}): see {(work / f'{tag}{i}').with_suffix('.log')}")
    lines = []
    for i in range(n):
        text = (work / f"{tag}{i}").with_suffix(".log").read_text()
        lines += [line.split("[INFO] ", 1)[-1] for line in text.splitlines() if "threads: " in line][-1:]
    return seconds, lines, load_average()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unshared", action="store_true", help="also time two runs that each take every core")
    ap.add_argument("overrides", nargs="*", help="training overrides (default: the default experiment)")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="shared_machine_"))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.setdefault("DOCCLASSIFY_CACHE", str(work / "cache"))
    env["WANDB_MODE"] = "disabled"
    print(machine_line())
    print(f"overrides: {' '.join(args.overrides) or '(the default experiment)'}; {cores} usable cores")
    timed_runs(1, args.overrides, work, "warmup", env)  # builds the data set and the decode cache
    alone, alone_lines, alone_load = timed_runs(1, args.overrides, work, "alone", env)
    rows = [("alone (1 run)", alone, None, alone_lines, alone_load)]
    shared, shared_lines, load = timed_runs(2, args.overrides, work, "shared", env)
    rows.append(("2 runs, shared (auto)", shared, shared / (2 * alone), shared_lines, load))
    if args.unshared:
        every = [*args.overrides, f"trainer.threads={cores}", f"data.num_workers={max(0, min(4, cores - 1))}"]
        unshared, lines, load = timed_runs(2, every, work, "unshared", env)
        rows.append(("2 runs, each all cores", unshared, unshared / (2 * alone), lines, load))
    print("\n| runs | wall s | / (2 x alone) | threads (last choice logged) | load avg after |\n"
          "| --- | ---: | ---: | --- | --- |")
    for name, seconds, ratio, lines, load in rows:
        shown = "-" if ratio is None else f"{ratio:.2f}"
        print(f"| {name} | {seconds:.1f} | {shown} | {'; '.join(sorted(set(lines)))} | {load} |")
    print(f"\nruns and logs in {work}")


if __name__ == "__main__":
    main()
