"""End to end: a 3-epoch training command of docclassify vs timm's train.py recipe, same images,
same model, batch and size, same train/validation split; wall time of each whole command, their
ratio, and where docclassify's seconds go (the ``phases (s):`` line of its log: imports,
compose+checks, data, first step, training, wrap-up, plus the interpreter's exit; and its
``inside (s):`` part: decode cache, shift report, robust copies, train steps, clean and robust
validation, orientation check, checkpoint writes, reports).

docclassify: `python -m docclassify.train` on fold 0 of 5 (pipeline=highperf with its hard
             augmentation off: mixup 0.8 / cutmix 1.0, label smoothing 0.1, EMA, drop-path 0.1,
             AdamW, grad clip), once with an empty decode cache (cold) and then warm, in one or
             both settings (--settings):
               default  the defaults a user gets: validation=both (the clean rows and their
                        distorted copies), the shift report, highperf's dihedral turns, highperf's
                        trainer.amp=auto
               clean    the work timm's command does: validation=clean, shift.report=false,
                        augment.orientation=none
             --amp none|bf16|... sets trainer.amp for both settings (default: the pipeline's).
             --before DIR also runs the same docclassify commands from DIR (an earlier checkout,
             e.g. `git worktree add DIR main`), alternated with the others: before/after in one run.
timm:        train.py with the same recipe (--opt adamw --mixup 0.8 --cutmix 1.0 --smoothing 0.1
             --model-ema --drop-path 0.1 --clip-grad 1.0) on an ImageFolder view (symlinks) of
             the same fold-0 split. train.py is not part of the timm package: pass the path of
             train.py from a checkout of https://github.com/huggingface/pytorch-image-models
             with --timm-train; without it that comparison is skipped.

    python benchmarks/end_to_end_benchmark.py --epochs 3 --repeat 3 --timm-train ~/src/pytorch-image-models/train.py
    python benchmarks/end_to_end_benchmark.py --settings default clean --timm-train ...  # both settings
    python benchmarks/end_to_end_benchmark.py --epochs 1 3 --timm-train ...   # + steady state per epoch
    python benchmarks/end_to_end_benchmark.py --before ../docclassify-main --timm-train ...  # before vs after
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_WORK, REPO, ensure_data, machine_line

# timm's train.py as a module. Some versions assume CUDA: no --device option (the device comes
# from args.device, default cuda) and train_one_epoch/validate with a device=cuda default that
# main() does not override. On a machine without CUDA the runner adds the option and binds the
# device; nothing else of the script changes.
_TIMM_RUNNER = r"""
import functools, importlib.util, inspect, sys, torch
spec = importlib.util.spec_from_file_location("timm_train", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if "--device" not in mod.parser._option_string_actions:
    mod.parser.add_argument("--device", default=str(device))
for name in ("train_one_epoch", "validate"):
    fn = getattr(mod, name, None)
    if fn is not None and "device" in inspect.signature(fn).parameters:
        setattr(mod, name, functools.partial(fn, device=device))
sys.argv = [sys.argv[1], *sys.argv[2:], "--device", str(device)]
mod.main()
"""


PHASES = re.compile(r"phases \(s\): (?P<phases>[^;\n]*)")
INSIDE = re.compile(r"inside \(s\): (?P<phases>[^;\n]*)")
SETTINGS = {
    "default": [],  # validation=both, the shift report, highperf's orientation and amp: as a user runs it
    "clean": ["validation=clean", "shift.report=false", "augment.orientation=none"],  # the work timm does
}


def _pairs(text: str) -> dict[str, float]:
    """``name 1.2, other name 3.4`` -> {name: seconds}."""
    return {name: float(sec) for name, sec in re.findall(r"(.+?) (-?\d+(?:\.\d+)?)(?:, |$)", text.strip())}


def read_phases(log: Path) -> dict[str, float]:
    """docclassify's ``phases (s): imports 4.1, compose+checks 0.5, ...`` log line as a dict."""
    match = PHASES.search(log.read_text())
    return {} if match is None else _pairs(match["phases"])


def read_inside(log: Path) -> dict[str, float]:
    """The ``inside (s): decode cache 0.2, train steps 55.0, ...`` part of that line as a dict."""
    match = INSIDE.search(log.read_text())
    return {} if match is None else _pairs(match["phases"])


def print_phases(phases: dict[str, float], wall: float, label: str, inside: dict[str, float] | None = None) -> None:
    """Each phase in seconds and as a share of the whole command; exit = the rest (interpreter shutdown);
    then the pieces of work inside them (``inside``)."""
    if not phases:
        print(f"{label}: no 'phases (s):' line in the log")
        return
    rows = {**phases, "exit": wall - sum(phases.values())}
    print(f"\n{label}: where the {wall:.1f} s of the whole command go")
    print(f"{'phase':<28} {'s':>7} {'share':>7}")
    for name, sec in rows.items():
        print(f"{name:<28} {sec:>7.1f} {sec / wall:>7.1%}")
    if inside:
        print("inside the phases above:")
        for name, sec in inside.items():
            print(f"  {name:<26} {sec:>7.1f} {sec / wall:>7.1%}")
    to_first = sum(phases.get(k, 0.0) for k in ("imports", "compose+checks", "data", "first step"))
    after_last = phases.get("wrap-up", 0.0) + rows["exit"]
    print(f"start-up (process start to the first step done): {to_first:.1f} s ({to_first / wall:.1%}); "
          f"after the last epoch (wrap-up + exit): {after_last:.1f} s ({after_last / wall:.1%})")


def _cpu_seconds() -> float:
    """User + system CPU time of the finished child processes (and their loader workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(cmd: list[str], env: dict, log: Path, repo: Path = REPO) -> tuple[float, float]:
    """(wall s, CPU s) of one command. On a loaded machine the CPU seconds move far less than the wall."""
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    if repo != REPO:  # another checkout's docclassify (--before): its package first on the path
        env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))}
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=repo, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}); see {log}:\n"
                           + log.read_text()[-3000:])
    return seconds, _cpu_seconds() - cpu0


def docclassify_cmd(args, epochs: int, run_dir: Path, cache_dir: Path, setting: str = "default") -> list[str]:
    cmd = [sys.executable, "-m", "docclassify.train", "data=competition", f"data.root={args.data}",
           f"model={args.model}", "model.pretrained=false", f"data.img_size={args.img_size}",
           f"trainer.batch_size={args.batch}", f"trainer.epochs={epochs}", "folds.n=5", "folds.run=[0]",
           "pipeline=highperf", "augment.advanced_p_end=0.0", f"trainer.lr={args.lr}", "schedule.warmup_epochs=0",
           "logger=none", f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache_dir}", *SETTINGS[setting]]
    if args.amp is not None:
        cmd.append(f"trainer.amp={args.amp}")
    if args.workers is not None:
        cmd.append(f"data.num_workers={args.workers}")
    return cmd


def imagefolder_view(data: Path, folds_csv: Path, out: Path) -> tuple[int, int]:
    """train/<class>/<file> and validation/<class>/<file> symlinks: fold 0 is validation."""
    import pandas as pd

    folds = pd.read_csv(folds_csv)
    classes = pd.read_csv(data / "meta.csv").set_index("target")["class_name"]
    counts = {"train": 0, "validation": 0}
    for row in folds.itertuples():
        if row.fold < 0:
            continue
        split = "validation" if row.fold == 0 else "train"
        dst = out / split / classes[row.target] / row.ID
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to((data / "train" / row.ID).resolve())
        counts[split] += 1
    return counts["train"], counts["validation"]


def timm_cmd(args, epochs: int, view: Path, out: Path, n_classes: int, workers: int) -> list[str]:
    return [sys.executable, "-c", _TIMM_RUNNER, str(args.timm_train), "--data-dir", str(view),
            "--model", args.timm_model, "--num-classes", str(n_classes), "--img-size", str(args.img_size),
            "-b", str(args.batch), "--epochs", str(epochs), "--opt", "adamw", "--lr", str(args.lr),
            "--weight-decay", "0.013", "--sched", "cosine", "--warmup-epochs", "0", "--mixup", "0.8",
            "--cutmix", "1.0", "--smoothing", "0.1", "--model-ema", "--model-ema-decay", "0.9999",
            "--drop-path", "0.1", "--clip-grad", "1.0", "-j", str(workers), "--output", str(out),
            "--experiment", "e2e", "--log-interval", "1000", "--seed", "42"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="competition-layout data set (default: synthetic)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where data sets, caches and runs go")
    ap.add_argument("--timm-train", type=Path, default=None, help="path to timm's train.py (a checkout)")
    ap.add_argument("--model", default="convnext_atto", help="docclassify model option (conf/model)")
    ap.add_argument("--timm-model", default="convnext_atto", help="the same architecture's timm name")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, nargs="+", default=[3],
                    help="epoch counts to run; with two or more, also the steady-state time per epoch")
    ap.add_argument("--repeat", type=int, default=1,
                    help="warm docclassify and timm runs per epoch count, alternated (the median is reported)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader workers for both (default: docclassify's choice, the same for timm)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both (default: inherited)")
    ap.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["default"],
                    help="docclassify settings to time: default (validation=both, shift report, highperf's "
                         "turns and amp) and/or clean (the work timm does)")
    ap.add_argument("--amp", default=None, help="trainer.amp for docclassify (default: the pipeline's, auto)")
    ap.add_argument("--before", type=Path, default=None,
                    help="an earlier docclassify checkout: its commands run too, alternated (before vs after)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="paths.cache_dir to use (kept; with the decode cache and copies built: no cold run)")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.data = ensure_data(args.data, work=args.work)
    if args.timm_train is not None and not args.timm_train.is_file():
        ap.error(f"--timm-train {args.timm_train}: file not found")
    if args.before is not None and not (args.before / "docclassify" / "train.py").is_file():
        ap.error(f"--before {args.before}: not a docclassify checkout (no docclassify/train.py)")

    from docclassify.engine.loaders import default_num_workers

    workers = default_num_workers(args.workers)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    print(machine_line())
    print(f"data {args.data}; {args.model} at {args.img_size} px, batch {args.batch}, epochs {args.epochs}, "
          f"{workers} loader workers, OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}; docclassify "
          f"settings {args.settings}, trainer.amp={args.amp or 'the pipeline default'}")
    tmp = Path(tempfile.mkdtemp(prefix="e2e-", dir=args.work))
    try:
        times, phases, n_train = run_all(args, env, workers, tmp)
        print_results(args, times, phases, n_train)
        print(f"load avg at the end: {machine_line().split('load avg ')[1].split(' |')[0]}")
    finally:
        if os.environ.get("DOCCLASSIFY_BENCH_KEEP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def warm_name(setting: str, before: bool = False) -> str:
    return f"docclassify {setting} (warm{', before' if before else ''})"


def run_all(args, env: dict, workers: int, tmp: Path):
    """Every command: docclassify cold once (the first setting: it builds the decode cache and the
    robust copies), then per epoch count and repeat docclassify warm in each setting and timm one
    after the other (a changing machine load hits all alike). Returns
    ({(command, epochs): [(wall s, CPU s) per repeat]}, {(command, epochs): [(phases, inside) per
    repeat]}, training images)."""
    cache = args.cache or tmp / "cache"
    times: dict[tuple[str, int], list[tuple[float, float]]] = {}
    phases: dict[tuple[str, int], list[tuple[dict, dict]]] = {}
    n_train = None
    versions = [(False, REPO)] + ([(True, args.before.resolve())] if args.before is not None else [])
    for epochs in sorted(set(args.epochs)):
        if not times and args.cache is None:  # the first command builds the decode cache (and the robust copies)
            setting = "default" if "default" in args.settings else args.settings[0]
            times[f"docclassify {setting} (cold)", epochs] = [_run(
                docclassify_cmd(args, epochs, tmp / "run_cold", cache, setting), env, tmp / "cold.log")]
        for rep in range(args.repeat):
            for setting in args.settings:
                for before, repo in versions:
                    name, tag = warm_name(setting, before), f"{setting}{'_before' if before else ''}_{epochs}_{rep}"
                    run_dir, log = tmp / f"run_{tag}", tmp / f"{tag}.log"
                    times.setdefault((name, epochs), []).append(
                        _run(docclassify_cmd(args, epochs, run_dir, cache, setting), env, log, repo))
                    phases.setdefault((name, epochs), []).append((read_phases(log), read_inside(log)))
                    results = json.loads((run_dir / "results.json").read_text())
                    if n_train is None:
                        n_train = first_fold_info(args, results, tmp, run_dir)
            if args.timm_train is not None:
                times.setdefault(("timm train.py", epochs), []).append(_run(
                    timm_cmd(args, epochs, tmp / "view", tmp / f"timm_out_{epochs}_{rep}", len(results["classes"]),
                             workers), env, tmp / f"timm_{epochs}_{rep}.log"))
    return times, phases, n_train


def first_fold_info(args, results: dict, tmp: Path, run_dir: Path) -> int:
    """Print the split; build timm's ImageFolder view of it. Returns the training image count."""
    fold = results["folds"][0]
    n_train, n_val = fold["n_train"], fold["n_val"]
    print(f"fold 0: {n_train} train / {n_val} validation images; docclassify's own epoch figure "
          f"(warm): {fold['history'][0]['img_per_s']:.1f} img/s")
    if args.timm_train is not None:
        view = imagefolder_view(args.data, run_dir / "folds.csv", tmp / "view")
        assert view == (n_train, n_val), (view, n_train, n_val)
    else:
        print("timm comparison skipped: pass --timm-train PATH/TO/pytorch-image-models/train.py")
    return n_train


def print_results(args, times: dict, phases: dict, n_train: int) -> None:
    """Wall and CPU times (median over repeats), the whole-command ratios, the phases, the steady state."""
    wall = {key: statistics.median(w for w, _ in runs) for key, runs in times.items()}
    cpu = {key: statistics.median(c for _, c in runs) for key, runs in times.items()}
    print(f"\n{'command':<36} {'epochs':>6} {'wall s':>7} {'img/s':>7} {'CPU s':>7}   wall of each run (s)   "
          "(img/s = epochs x train images / wall; medians of the runs)")
    for (name, epochs), runs in times.items():
        print(f"{name:<36} {epochs:>6} {wall[name, epochs]:>7.1f} {epochs * n_train / wall[name, epochs]:>7.1f} "
              f"{cpu[name, epochs]:>7.1f}   " + " ".join(f"{w:.1f}" for w, _ in runs))
    if args.timm_train is not None:
        for (name, epochs), sec in wall.items():
            if name.startswith("docclassify"):
                timm = ("timm train.py", epochs)
                print(f"{epochs} epoch(s): {name} is {wall[timm] / sec:.2f}x faster than timm's train.py (whole "
                      f"command; {cpu[timm] / cpu[name, epochs]:.2f}x in CPU seconds)")
        for (name, epochs), sec in wall.items():  # the figure the target is about, measured in this run
            if name == warm_name("default"):
                print(f"==> {epochs} epoch(s), default validation (validation=both), warm cache: docclassify "
                      f"{sec:.1f} s vs timm train.py {wall['timm train.py', epochs]:.1f} s = "
                      f"{wall['timm train.py', epochs] / sec:.2f}x (medians of {len(times[name, epochs])} runs)")
    for (name, epochs), runs in phases.items():
        median = {k: statistics.median(r[0][k] for r in runs) for k in runs[0][0]} if all(r[0] for r in runs) else {}
        inside = {k: statistics.median(r[1].get(k, 0.0) for r in runs) for k in runs[0][1]}
        print_phases(median, wall[name, epochs], f"{name}, {epochs} epoch(s)", inside)
    counts = sorted(set(args.epochs))
    if len(counts) >= 2:  # the start-up costs cancel out: what each further epoch costs
        lo, hi = counts[0], counts[-1]
        per_epoch = {name: (wall[name, hi] - wall[name, lo]) / (hi - lo)
                     for name in [*map(warm_name, args.settings), "timm train.py"] if (name, hi) in wall}
        for name, sec in per_epoch.items():
            print(f"steady state, {name}: {sec:.1f} s per epoch (train + validation + checkpoints), "
                  f"{n_train / sec:.1f} img/s")
        for name, sec in per_epoch.items():
            if name != "timm train.py" and "timm train.py" in per_epoch:
                print(f"steady state: {name} is {per_epoch['timm train.py'] / sec:.2f}x faster per epoch "
                      "than timm's train.py")


if __name__ == "__main__":
    sys.exit(main())
