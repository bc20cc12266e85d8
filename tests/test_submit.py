"""``submit=true``: training then inference in one command, identical to the two-command path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY, compose_train, run_cli

from docclassify.config_schema import ConfigError
from docclassify.submit import compose_infer, infer_overrides, prepare_submission


def _train_cfg(tiny_data, tmp_path, *extra):
    return compose_train(["data=competition", f"data.root={tiny_data}", *TINY, *extra], tmp_path)


def test_infer_options_become_the_infer_command_line(tiny_data, tmp_path):
    run_dir = tmp_path / "my run, [1]"  # any character survives the quoting
    default = compose_infer(infer_overrides(_train_cfg(tiny_data, tmp_path), run_dir))
    assert list(default.runs) == [str(run_dir)]
    # tta=orient with deskew by default (issue 29: the recipe benchmark's best test-time set)
    assert (default.tta.name, default.tta.average, default.ensemble.average) == ("orient", "prob", "prob")
    assert default.tta.deskew is True
    # calibrate off by default, as infer's (issue 26 item 8: the OOF temperature made the test NLL worse)
    assert (default.calibrate, default.oof_tta, default.output, default.batch_size) == (False, True, None, 64)
    assert default.decision == "argmax"
    assert default.data.test_labels is None and default.top_k is None and default.logger.name == "none"

    cfg = _train_cfg(tiny_data, tmp_path, "infer.tta=dihedral", "infer.tta_average=logit", "infer.average=logit",
                     "infer.calibrate=true", "infer.oof_tta=false", f"infer.output={tmp_path}/sub.csv",
                     "infer.decision=macro_f1", "infer.batch_size=7", "infer.device=cpu",
                     "infer.data.test_labels=labels.csv", "infer.overrides=['top_k=1']",
                     "paths.cache_dir=/somewhere/cache")
    given = compose_infer(infer_overrides(cfg, run_dir))
    assert (given.tta.name, given.tta.average, given.ensemble.average) == ("dihedral", "logit", "logit")
    assert (given.calibrate, given.oof_tta, given.output, given.batch_size) == (True, False, f"{tmp_path}/sub.csv", 7)
    assert given.decision == "macro_f1"
    assert (given.device, given.data.test_labels, given.top_k, given.paths.cache_dir) == \
        ("cpu", "labels.csv", 1, "/somewhere/cache")
    wandb = _train_cfg(tiny_data, tmp_path, "logger=wandb")
    assert compose_infer(infer_overrides(wandb, run_dir)).logger.name == "wandb"


def test_submit_false_submits_nothing(tiny_data, tmp_path):
    assert prepare_submission(_train_cfg(tiny_data, tmp_path)) is None
    submission = prepare_submission(_train_cfg(tiny_data, tmp_path, "submit=true"))
    assert submission.cfg.submit is True and submission.cfg.data.root == str(tiny_data)  # the run's own config


@pytest.mark.parametrize("extra, match", [
    (["infer.tta=sideways"], r"infer\.tta='sideways': expected one of none, flip"),
    (["infer.batch_size=0"], r"infer\.batch_size=0"),
    (["infer.decision=top1"], r"infer\.decision='top1': expected one of argmax, macro_f1"),
    (["infer.overrides=['nokey=1']"], r"nokey"),
])
def test_bad_infer_options_fail_before_training(tiny_data, tmp_path, extra, match):
    from docclassify.train import train

    cfg = _train_cfg(tiny_data, tmp_path, "submit=true", *extra)
    with pytest.raises(Exception, match=match):
        train(cfg)
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "checkpoints").exists()


def test_data_without_a_test_set_fails_before_training(data, tmp_path):
    from docclassify.train import train

    (data / "sample_submission.csv").unlink()
    shutil.rmtree(data / "test")
    run_dir = tmp_path / "run"
    cfg = compose_train(["data=competition", f"data.root={data}", *TINY, "submit=true"], run_dir)
    with pytest.raises(ConfigError, match="no test set"):
        train(cfg)
    assert not (run_dir / "results.json").exists() and not (run_dir / "checkpoints").exists()


@pytest.mark.slow
def test_submit_equals_the_two_command_path_with_multirun_and_resume(tiny_data, tmp_path):
    sweep = tmp_path / "sweep"
    options = ["infer.tta=flip", "infer.calibrate=true"]
    proc = run_cli("docclassify.train", ["-m", "data=competition", f"data.root={tiny_data}", *TINY, "folds.n=2",
                                         "trainer.lr=0.001,0.003", "submit=true", *options,
                                         f"hydra.sweep.dir={sweep}"])
    for job in ("0", "1"):  # -m: every job submits from its own run
        submission = (sweep / job / "infer" / "submission.csv").resolve()
        assert f"Submission: {submission}" in proc.stdout
    run_dir = sweep / "0"
    ours = run_dir / "infer"
    summary = json.loads((ours / "summary.json").read_text())
    assert summary["tta"]["views"] == ["identity", "hflip"]
    assert summary["temperature"] == summary["calibration"]["temperature"] > 0  # infer.calibrate=true reached infer
    assert summary["runs"][0]["dir"] == str(run_dir.resolve()) and summary["test_metrics"] is None
    assert not (ours / "report.md").exists()  # no test labels: no test report

    # The two-command path with the same options: the same bytes.
    two = tmp_path / "infer"
    run_cli("docclassify.infer", [f"runs=[{run_dir}]", "tta=flip", "calibrate=true", f"hydra.run.dir={two}"])
    for name in ("submission.csv", "test_probs.csv"):
        assert (ours / name).read_bytes() == (two / name).read_bytes(), name

    # resume=RUN_DIR alone: the run's own overrides (submit=true included); its folds are kept.
    before = (ours / "submission.csv").read_bytes()
    shutil.rmtree(ours)
    proc = run_cli("docclassify.train", [f"resume={run_dir}"])
    assert "already finished" in proc.stdout + proc.stderr
    assert (ours / "submission.csv").read_bytes() == before
    assert f"Submission: {(ours / 'submission.csv').resolve()}" in proc.stdout
    assert Path(ours / "infer_overrides.yaml").is_file()


def test_submit_auto_predicts_a_labelled_test_set_only_outside_sweeps(tiny_data, data, tmp_path):
    """The default (submit=auto): a run on data with test labels ends with its test F1; no labels, no submission."""
    auto = [a for a in TINY if a != "submit=false"]
    labelled = ["data=competition", f"data.root={tiny_data}", "data.test_labels=test_labels.csv"]
    cfg = compose_train([*labelled, *auto], tmp_path / "a")
    assert cfg.submit == "auto" and prepare_submission(cfg) is not None
    assert prepare_submission(compose_train(["data=competition", f"data.root={tiny_data}", *auto], tmp_path / "d")) \
        is None  # the competition's test labels are unknown: data.test_labels names them
    sweep = compose_train([*labelled, *auto, "hparams_search=optuna_single_fold"],
                          tmp_path / "b")
    assert prepare_submission(sweep) is None  # every trial would predict the test set for nothing
    (data / "test_labels.csv").unlink(missing_ok=True)
    unlabelled = compose_train(["data=competition", f"data.root={data}", *auto, "data.test_labels=null"],
                               tmp_path / "c")
    assert prepare_submission(unlabelled) is None


def test_the_default_run_prints_its_test_f1_beside_the_cv_figures(tiny_data, tmp_path, isolated_env):
    auto = [a for a in TINY if a != "submit=false"]
    proc = run_cli("docclassify.train", ["data=competition", f"data.root={tiny_data}",
                                         "data.test_labels=test_labels.csv", *auto, "folds.n=2",
                                         f"hydra.run.dir={tmp_path}"], env=isolated_env)
    line = [x for x in proc.stdout.splitlines() if x.startswith("Result: ")]
    assert len(line) == 1, proc.stdout[-2000:]
    summary = json.loads((tmp_path / "infer" / "summary.json").read_text())
    results = json.loads((tmp_path / "results.json").read_text())
    assert f"cv {results['cv_macro_f1']:.4f} (clean" in line[0]
    assert f"estimate {summary['estimate']['macro_f1']:.4f} (no labels" in line[0]  # ATC (predict/estimate.py)
    assert f"| test {summary['test_metrics']['macro_f1']:.4f} (" in line[0]
