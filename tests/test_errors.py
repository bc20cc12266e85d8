"""Errors a user causes: one short message (what, where, the fix), exit code 2, the traceback only
with HYDRA_FULL_ERROR=1, and no run dir left by a refused run (docclassify/errors.py)."""

from __future__ import annotations

import logging

import pytest
from conftest import compose_train, run_in
from hydra.errors import ConfigCompositionException

from docclassify import errors
from docclassify.aggregate import AggregateError
from docclassify.aggregate import main as aggregate_main
from docclassify.config_schema import ConfigError, check_config
from docclassify.data.images import BadImageError
from docclassify.data.sources import DataError, load_source
from docclassify.models.factory import ModelConfigError
from docclassify.predict.run_dirs import RunError

LR_MESSAGE = "docclassify.train: error: trainer.lr=-1.0: expected a number >= 0.0"

# Hostile values and what stops them: Hydra while composing (a wrong type, an unknown key),
# check_config before any work (ranges, choices, relations), the data source (a missing folder).
# The table in docs/troubleshooting.md lists these messages.
HOSTILE = [
    ("trainer.lr=-1", "check", "trainer.lr=-1.0: expected a number >= 0.0"),
    ("trainer.lr=nan", "check", "trainer.lr=nan: expected a number >= 0.0"),
    ("trainer.epochs=0", "check", "trainer.epochs=0: expected a number >= 1"),
    ("trainer.batch_size=0", "check", "trainer.batch_size=0: expected a number >= 1"),
    ("trainer.accum_steps=0", "check", "trainer.accum_steps=0: expected a number >= 1"),
    ("trainer.amp=fp8", "check", "trainer.amp='fp8': expected one of none, auto, bf16, fp16"),
    ("folds.n=1", "check", "folds.n=1: expected a number >= 2 (for one hold-out split train one fold of K"),
    ("data.img_size=0", "check", "data.img_size=0: expected a number >= 16 and <= 4096"),
    ("data.on_bad_image=skipp", "check", "data.on_bad_image='skipp': expected one of error, skip"),
    ("regularization.ema_decay=1.5", "check", "regularization.ema_decay=1.5: expected a number > 0.0 and < 1.0"),
    ("regularization.label_smoothing=1.0", "check",
     "regularization.label_smoothing=1.0: expected a number >= 0.0 and < 1.0"),
    ("augment.mixup_alpha=-1", "check", "augment.mixup_alpha=-1.0: expected a number >= 0.0"),
    ("data.root=/nope", "check", "data.root=/nope: the default data=synthetic generates its own images"),
    ("+trainer.epoch=5", "check", "trainer.epoch: not a key of TrainerConfig; nothing reads it"),
    ("data=competition data.root=/nope", "data", "data.root=/nope: directory not found"),
    ("augment.mixup_alpha=high", "compose", "Value 'high' of type 'str' could not be converted to Float"),
    ("augment.mixup_alpah=1", "compose", "Key 'mixup_alpah' not in 'AugmentConfig'"),
    ("data.img_size=abc", "compose", "Value 'abc' of type 'str' could not be converted to Integer"),
]


def outcome(overrides: list[str], tmp_path) -> tuple[str, str]:
    """(where the input was stopped, the message) as the train command would stop it."""
    try:
        cfg = compose_train(overrides, tmp_path / "run")
    except ConfigCompositionException as exc:
        return "compose", f"{exc}\n{exc.__cause__}"
    try:
        check_config(cfg)
    except ConfigError as exc:
        return "check", errors.error_line("docclassify.train", exc)
    if cfg.data.name != "synthetic":
        try:
            load_source(cfg.data, str(tmp_path / "cache"))
        except DataError as exc:
            return "data", errors.error_line("docclassify.train", exc)
    return "accepted", ""


@pytest.mark.parametrize("overrides,stage,message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_value_is_stopped_with_a_message_naming_it(overrides, stage, message, tmp_path):
    got_stage, text = outcome(overrides.split(), tmp_path)
    assert (got_stage, message in text) == (stage, True), text
    if stage != "compose":
        assert text.startswith("docclassify.train: error: ") and "\n" not in text


def test_on_off_yes_no_are_booleans(tmp_path):
    """``regularization.ema=off`` is not an error: OmegaConf reads on/off/yes/no as booleans."""
    assert outcome(["regularization.ema=off"], tmp_path) == ("accepted", "")
    assert compose_train(["regularization.ema=off"], tmp_path / "run").regularization.ema is False


def test_every_user_error_is_a_user_error_and_still_a_value_error():
    for cls in (ConfigError, DataError, RunError, ModelConfigError, AggregateError, BadImageError):
        assert issubclass(cls, errors.UserError) and issubclass(cls, ValueError)


def test_error_line_keeps_the_lines_of_a_longer_message():
    exc = RunError("cannot use these runs:\n  /a: no such directory\n  /b: no results.json")
    assert errors.error_line("docclassify.infer", exc).splitlines() == [
        "docclassify.infer: error: cannot use these runs:", "  /a: no such directory", "  /b: no results.json"]


# --- the commands --------------------------------------------------------------------------------

def _assert_refused(proc, message: str) -> None:
    assert proc.returncode == errors.USAGE_EXIT_CODE, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert message in proc.stderr.strip().splitlines()


def test_config_error_is_one_line_exit_2_and_no_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_in(tmp_path, "docclassify.train", ["trainer.lr=-1", f"hydra.run.dir={run_dir}"])
    _assert_refused(proc, LR_MESSAGE)
    assert proc.stderr.strip() == LR_MESSAGE
    assert not run_dir.exists()


def test_data_error_is_one_line_and_removes_the_dirs_the_run_had_made(tmp_path):
    """The run had made checkpoints/ and folds/ before the data source refused: all removed."""
    run_dir, missing = tmp_path / "run", tmp_path / "nope"
    proc = run_in(tmp_path, "docclassify.train", ["data=competition", f"data.root={missing}", "model=tiny",
                                         f"hydra.run.dir={run_dir}"])
    _assert_refused(proc, f"docclassify.train: error: data.root={missing}: directory not found")
    assert not run_dir.exists()


def test_full_traceback_with_hydra_full_error(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_in(tmp_path, "docclassify.train", ["trainer.lr=-1", f"hydra.run.dir={run_dir}"],
                   env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ConfigError: trainer.lr=-1.0: expected a number >= 0.0" in proc.stderr
    assert not run_dir.exists()


def test_a_run_dir_that_existed_before_is_kept_and_its_log_says_why(tmp_path):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    proc = run_in(tmp_path, "docclassify.train", ["trainer.lr=-1", f"hydra.run.dir={run_dir}"])
    _assert_refused(proc, LR_MESSAGE)
    assert LR_MESSAGE in (run_dir / "train.log").read_text()


def test_infer_with_a_missing_run_is_refused_without_a_run_dir(tmp_path):
    run_dir, missing = tmp_path / "infer", tmp_path / "no_run"
    proc = run_in(tmp_path, "docclassify.infer", [f"runs=[{missing}]", f"hydra.run.dir={run_dir}"])
    _assert_refused(proc, "docclassify.infer: error: cannot use these runs:")
    assert f"  {missing}: no such directory" in proc.stderr.splitlines()
    assert not run_dir.exists()


def test_infer_refuses_a_training_group(tmp_path):
    proc = run_in(tmp_path, "docclassify.infer", ["runs=[x]", "model=tiny"])
    assert proc.returncode == errors.USAGE_EXIT_CODE
    line = proc.stderr.strip()
    assert line.startswith("docclassify.infer: error: model=tiny: model is an option of python -m docclassify.train")
    assert "Its groups: adapt, logger, paths, tta" in line and "+model" not in line
    assert not (tmp_path / "outputs").exists()


def test_a_key_of_the_other_entrypoints_block_is_refused_with_a_pointer():
    from docclassify.config import foreign_group_errors

    (infer_error,) = foreign_group_errors("infer", ["runs=[x]", "pseudo.source=/t", "data.root=/d", "tta.deskew=true"])
    assert infer_error.startswith("pseudo.source=/t: pseudo.* is a key of python -m docclassify.train, not of "
                                  "docclassify.infer")
    (train_error,) = foreign_group_errors("train", ["infer.tta=orient", "tta.deskew=true", "hydra.run.dir=x",
                                                    "+trainer.epoch=5", "model.pretrained=false"])
    assert train_error.startswith("tta.deskew=true: tta.* is a key of python -m docclassify.infer")
    assert foreign_group_errors("infer", ["model.pretrained=false"])[0].startswith(
        "model.pretrained=false: model.* is a key of python -m docclassify.train")


# --- what a refused run may remove ---------------------------------------------------------------

@pytest.fixture
def job_log(tmp_path):
    """The job's log file in tmp_path/run, as Hydra's job logging opens it."""
    (tmp_path / "run").mkdir()
    handler = logging.FileHandler(tmp_path / "run" / "train.log")
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)
    handler.close()


def _run_dir(tmp_path, *files: str):
    run_dir = tmp_path / "run"
    for name in (".hydra/config.yaml", *files):
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text("x")
    return run_dir


def test_a_fresh_dir_is_one_with_only_hydras_files_and_an_empty_log(tmp_path, job_log):
    run_dir = _run_dir(tmp_path)
    assert errors.fresh_run_dir(run_dir)
    job_log.handle(logging.LogRecord("x", logging.INFO, "", 0, "an earlier job's line", None, None))
    job_log.flush()
    assert not errors.fresh_run_dir(run_dir)


def test_a_dir_with_only_hydra_and_set_up_files_is_removed(tmp_path, job_log):
    run_dir = _run_dir(tmp_path, "run_config.yaml", "run_overrides.yaml", "folds.csv")
    (run_dir / "checkpoints").mkdir()
    assert errors.remove_refused_run_dir(run_dir) and not run_dir.exists()


@pytest.mark.parametrize("kept", ["checkpoints/fold0_last.pt", "folds/fold0.json", "results.json", "notes.txt"])
def test_a_dir_holding_anything_else_is_kept(tmp_path, job_log, kept):
    run_dir = _run_dir(tmp_path, "folds.csv", kept)
    assert not errors.remove_refused_run_dir(run_dir)
    assert (run_dir / kept).is_file()


def test_aggregate_reports_the_same_way(tmp_path, capsys):
    assert aggregate_main([str(tmp_path / "nothing_here")]) == errors.USAGE_EXIT_CODE
    assert capsys.readouterr().err.strip() == (f"docclassify.aggregate: error: {tmp_path / 'nothing_here'}: "
                                               "no such directory")
