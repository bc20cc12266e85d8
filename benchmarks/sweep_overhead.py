"""Per-trial overhead of an Optuna sweep: wall time minus training time, trial by trial.

Runs the real `python -m docclassify.train -m hparams_search=optuna_single_fold` twice into
one sqlite study, with a fresh decode cache:
  invocation 1  trial 0 decodes the data set into the cache (cold); trials 1.. reuse the
                arrays already open in the sweep process (the basic launcher runs trials in it)
  invocation 2  a new process: the cache file exists on disk, so no trial decodes
Columns (from the sweep's trials.csv and each trial's sweep_trial.json / train.log):
  wall       Optuna's ask-to-tell time of the trial (Hydra job set-up included)
  train      time in the fit loop (training + validation epochs)
  overhead   wall - train, split into:
    set-up   before the task runs: Hydra's job set-up, the first import of torch/timm in a
             process, Optuna bookkeeping (wall - the job's own wall time)
    decode   building the decode cache (0 when it was reused)
    rest     the rest inside the job: data set listing, model creation, local reports
             (plots), result files

    python benchmarks/sweep_overhead.py [--data DIR] [--trials 4] [--img-size 96] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import DEFAULT_WORK, REPO, ensure_data, machine_line


def sweep(data: Path, work: Path, cache: Path, args, n_trials: int) -> None:
    cmd = [sys.executable, "-m", "docclassify.train", "-m", "hparams_search=optuna_single_fold", "data=competition",
           f"data.root={data}", f"model={args.model}", "model.pretrained=false", f"data.img_size={args.img_size}",
           f"trainer.epochs={args.epochs}", "data.num_workers=0", "logger=none", "hydra.sweeper.params=null",
           "trainer.lr=tag(log, interval(1e-3, 1e-2))", "trainer.batch_size=choice(16, 32)",
           f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.storage=sqlite:///{work / 'optuna.db'}",
           "hydra.sweeper.study_name=overhead", f"hydra.sweep.dir={work / 'sweep'}"]
    env = {**os.environ, "DOCCLASSIFY_CACHE": str(cache), "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sweep failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def decode_seconds(run_dir: Path) -> float:
    log = run_dir / "train.log"
    if not log.is_file():
        return 0.0
    return sum(float(s) for s in re.findall(r"decode cache: built in ([0-9.]+)s", log.read_text()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="competition-layout data set (default: synthetic)")
    ap.add_argument("--n-per-class", type=int, default=100)
    ap.add_argument("--long-side", type=int, default=600)
    ap.add_argument("--trials", type=int, default=4, help="trials in invocation 1 (invocation 2 runs 2)")
    ap.add_argument("--img-size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()

    data = ensure_data(args.data, args.n_per_class, args.long_side, args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sweep-bench-", dir=args.work))
    try:
        cache = work / "cache"
        sweep(data, work, cache, args, args.trials)
        first = args.trials  # trial numbers below this ran in invocation 1
        sweep(data, work, cache, args, 2)
        import pandas as pd

        table = pd.read_csv(work / "sweep" / "trials.csv")
        print(machine_line())
        print(f"data {data} | {args.model} at {args.img_size} px | {args.epochs} epoch(s) on fold 0 of 5")
        print(f"{'trial':>5} {'invocation':<15} {'wall s':>7} {'train s':>8} {'overhead s':>11} "
              f"{'set-up s':>9} {'decode s':>9} {'rest s':>7}")
        for row in table.itertuples():
            run_dir = Path(row.run_dir)
            info = json.loads((run_dir / "sweep_trial.json").read_text())
            kind = ("1, cold cache" if row.number == 0 else "1, in memory") if row.number < first else "2, on disk"
            decode = decode_seconds(run_dir)
            print(f"{row.number:>5} {kind:<15} {row.seconds:>7.2f} {row.train_s:>8.2f} {row.overhead_s:>11.2f} "
                  f"{row.seconds - info['job_s']:>9.2f} {decode:>9.2f} {info['overhead_s'] - decode:>7.2f}")
        later = table[(table.number > 0) & (table.number < first)]
        print(f"overhead: trial 0 {table.overhead_s.iloc[0]:.2f} s | later trials of the same process "
              f"{later.overhead_s.mean():.2f} s (mean) | new process, cache on disk "
              f"{table[table.number >= first].overhead_s.mean():.2f} s (mean)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
