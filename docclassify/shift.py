"""`python -m docclassify.shift data=... data.root=DIR`: how the test images differ from the training
images (docs/shift.md).

Composes ``conf/shift.yaml`` (the same ``data`` and ``paths`` groups as training), measures both
splits (docclassify/distortion/: measure, compare, fit, report), prints the comparison table and the
fitted distortion profile, and writes into its run dir (outputs/shift/<time>): shift.json,
shift.png, shift_images.csv and distort_profile.yaml. A data set without test images is refused
with a clear message and leaves no run dir behind.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from docclassify.config import CONF_DIR

log = logging.getLogger("docclassify.shift")


def shift_report(cfg: DictConfig, out_dir: Path) -> dict:
    """Measure, compare, fit, write the files and print the table; returns shift.json's content."""
    from docclassify.config_schema import check_config
    from docclassify.data.sources import DataError, load_source
    from docclassify.distortion.compare import format_table
    from docclassify.distortion.report import (
        PROFILE_YAML,
        build_report,
        no_test_message,
        profile_yaml,
        write_report,
    )
    from docclassify.utils.io import atomic_write_text

    check_config(cfg)
    source = load_source(cfg.data, cfg.paths.cache_dir)
    if source.test is None or source.test.empty:
        raise DataError(f"{no_test_message(cfg.data)}. The report compares train with test images: "
                        "add them (or point data.test_dir / data.sample_submission at them)")
    report = build_report(source, int(cfg.shift.work_size), cfg.shift.max_images, cfg.paths.cache_dir)
    files = write_report(out_dir, report, per_image_csv=True)
    origin = f"data={cfg.data.name}" + (f" data.root={cfg.data.root}" if cfg.data.get("root") else "")
    atomic_write_text(out_dir / PROFILE_YAML, profile_yaml(report, origin))
    print(f"\nTrain vs test, {origin}: {len(report.train.table)} of {report.train.n_images} train and "
          f"{len(report.test.table)} of {report.test.n_images} test images measured at {report.work_size} px "
          f"({report.seconds:.1f} s)\n")
    print(format_table(report.comparison, len(report.train.table), len(report.test.table)))
    undecodable = report.train.bad + report.test.bad
    if undecodable:
        print(f"\n{len(undecodable)} undecodable image(s) left out: {', '.join(undecodable[:10])}")
    print(f"\nFitted distortion profile (validation.distort=auto fits the same at the start of training):\n"
          f"{profile_yaml(report, origin)}")
    print("Written: " + ", ".join(str(p) for p in [*files, out_dir / PROFILE_YAML]))
    return report.to_json()


def remove_hydra_debris(run_dir: Path, job_name: str) -> None:
    """A refused command leaves nothing behind: the run dir goes if it holds only Hydra's own files
    (.hydra/ and the job log), and so do the folders above it that are then empty, up to the
    working directory (outputs/shift/)."""
    run_dir = run_dir.resolve()
    if not run_dir.is_dir() or any(p.name not in (".hydra", f"{job_name}.log") for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir)
    cwd = Path.cwd().resolve()
    for parent in run_dir.parents:
        if parent == cwd or cwd not in parent.parents:
            break
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="shift")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from docclassify.config_schema import ConfigError
    from docclassify.data.sources import DataError

    run_dir = Path(cfg.paths.output_dir)
    try:
        shift_report(cfg, run_dir)
    except (DataError, ConfigError) as exc:
        remove_hydra_debris(run_dir, HydraConfig.get().job.name)
        print(f"docclassify.shift: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
