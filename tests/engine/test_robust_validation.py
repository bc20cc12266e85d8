"""Robust validation in training (issue 14): both views every epoch, trainer.monitor decides,
oof_robust.csv and the objective; validation=clean trains and writes exactly what it did before.

Real tiny runs through run_kfold (in-process, deterministic mode) on the tiny data set.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, compose_train
from sklearn.metrics import f1_score

from docclassify.config_schema import ConfigError, RobustValidation, check_config
from docclassify.data import cache
from docclassify.data.images import load_image
from docclassify.engine import fold as fold_mod
from docclassify.engine import kfold
from docclassify.engine.epoch import EpochProgress, train_one_epoch
from docclassify.engine.loaders import eval_batch_size
from docclassify.engine.parts import eval_model
from docclassify.metrics import softmax
from docclassify.tracking import phases

BASE = [*TINY, "trainer.epochs=2", "folds.n=2", "trainer.deterministic=true"]


def train(tmp_path, name, data_root, *overrides):
    run_dir = tmp_path / name
    cfg = compose_train(["data=competition", f"data.root={data_root}", *BASE, *overrides], run_dir)
    results = kfold.run_kfold(cfg)
    return run_dir, results


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """The same deterministic training under each validation option / monitor."""
    tmp = tmp_path_factory.mktemp("robust_runs")
    return {name: train(tmp, name, tiny_data, *over) for name, over in {
        "clean": ["validation=clean"],
        "both_monitor_clean": ["validation=both", "trainer.monitor=clean"],
        "both": ["validation=both"],
        "robust": ["validation=robust"],
        "mean": ["validation=both", "trainer.monitor=mean"],
    }.items()}


@pytest.mark.slow
def test_validation_clean_writes_what_it_wrote_before(runs):
    """The robust view changes no training step: monitoring the clean view with validation=both gives
    validation=clean's oof.csv byte for byte (and validation=clean's is byte-identical to the code
    before robust validation: checked once when it was added, docs/validation.md)."""
    clean_dir, clean = runs["clean"]
    both_dir, both = runs["both_monitor_clean"]
    assert (clean_dir / "oof.csv").read_bytes() == (both_dir / "oof.csv").read_bytes()
    assert (clean_dir / "oof_logits.npy").read_bytes() == (both_dir / "oof_logits.npy").read_bytes()
    assert not (clean_dir / "oof_robust.csv").exists() and (both_dir / "oof_robust.csv").is_file()
    assert clean["cv_macro_f1_robust"] is None and clean["monitor"] == "clean"
    assert clean["objective"] == clean["cv_macro_f1"] == both["cv_macro_f1"] == both["objective"]
    for f in clean["folds"]:
        assert f["best_macro_f1_robust"] is None and all(h["val_macro_f1_robust"] is None for h in f["history"])


@pytest.mark.slow
def test_every_epoch_scores_both_views_and_monitor_picks(runs):
    _, clean = runs["clean"]
    for name in ("both", "mean", "both_monitor_clean"):
        _, res = runs[name]
        for fc, f in zip(clean["folds"], res["folds"]):
            # the same training: the clean curve is identical, the robust one is there too
            assert [h["val_macro_f1"] for h in f["history"]] == [h["val_macro_f1"] for h in fc["history"]]
            assert [h["val_loss"] for h in f["history"]] == [h["val_loss"] for h in fc["history"]]
            assert all(h["val_macro_f1_robust"] is not None and h["val_loss_robust"] > 0 for h in f["history"])
            monitored = [h["val_monitored"] for h in f["history"]]
            assert f["best_epoch"] == int(np.argmax(monitored)) and f["best_monitored"] == max(monitored)
            best = f["history"][f["best_epoch"]]
            assert f["best_macro_f1"] == best["val_macro_f1"]
            assert f["best_macro_f1_robust"] == best["val_macro_f1_robust"]
            assert f["best_macro_f1_robust_select"] == best["val_macro_f1_robust_select"]
    _, mean = runs["mean"]
    h = mean["folds"][0]["history"][0]
    assert h["monitor"] == "mean" and h["val_monitored"] == pytest.approx(
        (h["val_macro_f1"] + h["val_macro_f1_robust_select"]) / 2)
    assert mean["objective"] == pytest.approx((mean["cv_macro_f1"] + mean["cv_macro_f1_robust_select"]) / 2)
    _, both = runs["both"]
    assert both["monitor"] == "robust" and both["objective"] == both["cv_macro_f1_robust_select"]
    for f in both["folds"]:  # the selecting copies pick the epoch; the estimating ones are only reported
        assert [h["val_monitored"] for h in f["history"]] == [h["val_macro_f1_robust_select"] for h in f["history"]]


@pytest.mark.slow
def test_oof_robust_csv_recomputes_cv_macro_f1_robust(runs, tiny_data):
    """oof_robust.csv: the copies that chose nothing (copy 1 of each OOF row); oof_robust_select.csv:
    those that picked the best epochs (copy 0). Each file recomputes its figure."""
    run_dir, res = runs["both"]
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"ID": str})
    folds = pd.read_csv(run_dir / "folds.csv", dtype={"ID": str}).set_index("ID")["fold"]
    for name, copy, key in (("oof_robust", 1, ""), ("oof_robust_select", 0, "_select")):
        robust = pd.read_csv(run_dir / f"{name}.csv", dtype={"ID": str})
        assert list(robust.columns[:4]) == ["ID", "copy", "target", "pred"]
        assert list(robust.columns[4:]) == res["classes"]
        assert list(robust["ID"]) == list(oof["ID"]) and set(robust["copy"]) == {copy}
        assert res[f"cv_macro_f1_robust{key}"] == f1_score(robust["target"], robust["pred"], average="macro")
        probs = robust[res["classes"]].to_numpy()
        assert (probs.argmax(1) == robust["pred"].to_numpy()).all()
        np.testing.assert_allclose(softmax(np.load(run_dir / f"{name}_logits.npy")), probs, atol=1e-6)
        for f in res["folds"]:  # each fold's robust F1 is the one of its own rows' copies
            rows = robust[robust["ID"].map(folds) == f["fold"]]
            assert f[f"best_macro_f1_robust{key}"] == pytest.approx(
                f1_score(rows["target"], rows["pred"], average="macro"))
    assert res["n_oof_robust_rows"] == res["n_oof_robust_select_rows"] == res["n_oof_rows"]
    assert res["robust_copies"] == 2 and res["robust_split"]["rule"] == "copy"
    assert res["validation"]["name"] == "both" and res["validation"]["copies"] == 2
    assert set(res["validation"]["profile"]) >= {"rot90_p", "jpeg_quality"}


@pytest.mark.slow
def test_validation_robust_predicts_the_clean_rows_once_with_the_best_weights(runs):
    """validation=robust validates only the copies per epoch, then the clean OOF rows with the best
    checkpoint: the same rows and logits validation=both (same best epochs) holds."""
    both_dir, both = runs["both"]
    robust_dir, robust = runs["robust"]
    assert [f["best_epoch"] for f in robust["folds"]] == [f["best_epoch"] for f in both["folds"]]
    for f in robust["folds"]:
        assert all(h["val_macro_f1"] is None and h["val_macro_f1_robust"] is not None for h in f["history"])
    np.testing.assert_allclose(np.load(robust_dir / "oof_logits.npy"), np.load(both_dir / "oof_logits.npy"),
                               atol=1e-5)
    assert robust["cv_macro_f1"] == both["cv_macro_f1"]
    # validation=both predicts the copies in the same batches as the clean rows (one pass), robust alone
    # in batches of their own: the same rows and classes, probabilities equal up to kernel rounding.
    by_robust, by_both = pd.read_csv(robust_dir / "oof_robust.csv"), pd.read_csv(both_dir / "oof_robust.csv")
    assert by_robust[["ID", "copy", "target", "pred"]].equals(by_both[["ID", "copy", "target", "pred"]])
    np.testing.assert_allclose(by_robust.iloc[:, 4:].to_numpy(), by_both.iloc[:, 4:].to_numpy(), atol=1e-5)
    assert robust["cv_macro_f1_robust"] == both["cv_macro_f1_robust"]
    assert [f["best_macro_f1"] for f in robust["folds"]] == pytest.approx([f["best_macro_f1"] for f in both["folds"]])


def permuted_copies(train_csv):
    """A robust view that disagrees with the clean one on purpose: each row's copies show an image of
    the next class, so the better the model learns, the lower the robust F1."""
    train = pd.read_csv(train_csv, dtype={"ID": str})
    target = dict(zip(train["ID"], train["target"]))

    def build(paths, ids, spec, size, resize, pad_value, cache_dir):
        first = {}
        for i, p in zip(ids, paths):
            first.setdefault(target[i], p)
        return np.stack([load_image(first[(target[i] + 1) % 17], size, resize, pad_value)
                         for i in ids for _ in range(spec.copies)])
    return build


@pytest.mark.slow
def test_monitor_decides_best_epoch_checkpoint_and_early_stopping(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(kfold, "robust_copies", permuted_copies(tiny_data / "train.csv"))
    monkeypatch.setattr(cache, "_OPEN", {})
    common = ["model=tiny_convnext", "trainer.epochs=4", "trainer.lr=0.01", "folds.run=[0]"]
    _, by_clean = train(tmp_path, "clean", tiny_data, *common, "trainer.monitor=clean")
    robust_dir, by_robust = train(tmp_path, "robust", tiny_data, *common, "trainer.monitor=robust")
    fc, fr = by_clean["folds"][0], by_robust["folds"][0]
    clean_curve = [h["val_macro_f1"] for h in fc["history"]]
    robust_curve = [h["val_macro_f1_robust"] for h in fr["history"]]
    assert [h["val_macro_f1"] for h in fr["history"]] == clean_curve  # one training, two curves
    assert clean_curve[-1] > clean_curve[0] and robust_curve[-1] < robust_curve[0]  # they disagree
    assert fc["best_epoch"] == int(np.argmax(clean_curve)) != fr["best_epoch"] == int(np.argmax(robust_curve))
    from docclassify.models.checkpoint import read_checkpoint

    ckpt = read_checkpoint(robust_dir / fr["checkpoint"])  # the safetensors header
    assert ckpt["epoch"] == fr["best_epoch"] and ckpt["monitor"] == "robust"
    assert by_clean["objective"] == by_clean["cv_macro_f1"] != by_robust["objective"]

    # Early stopping waits for the monitored value: the robust curve stops improving after its best.
    _, stopped = train(tmp_path, "stopped", tiny_data, *common, "trainer.monitor=robust",
                       "trainer.early_stopping_patience=1")
    _, kept_on = train(tmp_path, "kept_on", tiny_data, *common, "trainer.monitor=clean",
                       "trainer.early_stopping_patience=1")
    assert stopped["folds"][0]["early_stopped"] and stopped["folds"][0]["epochs_run"] == fr["best_epoch"] + 2 < 4
    assert kept_on["folds"][0]["epochs_run"] > stopped["folds"][0]["epochs_run"]


@pytest.mark.slow
def test_competition_data_with_and_without_test_images(data, tmp_path):
    """The copies come from the training images: a data folder without test images validates the same."""
    _, with_test = train(tmp_path, "with", data, "folds.run=[0]", "trainer.epochs=1")
    shutil.rmtree(data / "test")
    (data / "sample_submission.csv").unlink()
    run_dir, without = train(tmp_path, "without", data, "folds.run=[0]", "trainer.epochs=1")
    assert without["cv_macro_f1_robust"] == with_test["cv_macro_f1_robust"]
    assert without["n_oof_robust_rows"] == without["n_oof_rows"]
    assert json.loads((run_dir / "results.json").read_text())["objective"] == without["cv_macro_f1_robust_select"]


def copies_with_odd_ones(kind: str, train_csv):
    """The real robust copies, the estimating (odd) ones replaced: ``clean`` by the undistorted image,
    ``permuted`` by an image of the next class (a view that disagrees with everything)."""
    train = pd.read_csv(train_csv, dtype={"ID": str})
    target = dict(zip(train["ID"], train["target"]))
    real = kfold.robust_copies

    def build(paths, ids, spec, size, resize, pad_value, cache_dir):
        out = np.array(real(paths, ids, spec, size, resize, pad_value, None))
        first = {}
        for i, p in zip(ids, paths):
            first.setdefault(target[i], p)
        for row, (i, p) in enumerate(zip(ids, paths)):
            shown = p if kind == "clean" else first[(target[i] + 1) % 17]
            out[row * spec.copies + 1] = load_image(shown, size, resize, pad_value)
        return out
    return build


@pytest.mark.slow
def test_the_reported_robust_figure_comes_from_copies_that_chose_nothing(tiny_data, tmp_path, monkeypatch):
    """Issue 26 item 6: two runs that differ only in the pixels of the estimating copies (copy 1) make
    exactly the same choices (best epochs, checkpoints, objective, early stop) and report different
    robust figures: the estimate chose nothing. cv_macro_f1_robust is on those copies alone."""
    common = ["model=tiny_convnext", "trainer.epochs=3", "trainer.lr=0.01", "folds.run=[0]",
              "trainer.early_stopping_patience=1"]
    out = {}
    for kind in ("clean", "permuted"):
        monkeypatch.setattr(kfold, "robust_copies", copies_with_odd_ones(kind, tiny_data / "train.csv"))
        monkeypatch.setattr(cache, "_OPEN", {})
        out[kind] = train(tmp_path, kind, tiny_data, *common)
    (a_dir, a), (b_dir, b) = out["clean"], out["permuted"]
    fa, fb = a["folds"][0], b["folds"][0]
    assert a["objective"] == b["objective"]
    assert a["objective"] == a["cv_macro_f1_robust_select"]
    assert (fa["best_epoch"], fa["best_monitored"], fa["epochs_run"]) == (fb["best_epoch"], fb["best_monitored"],
                                                                          fb["epochs_run"])
    assert [h["val_monitored"] for h in fa["history"]] == [h["val_monitored"] for h in fb["history"]]
    assert (a_dir / "oof.csv").read_bytes() == (b_dir / "oof.csv").read_bytes()
    assert (a_dir / "oof_robust_select.csv").read_bytes() == (b_dir / "oof_robust_select.csv").read_bytes()
    # the estimating copies: clean images score far above images of the wrong class
    assert a["cv_macro_f1_robust"] > b["cv_macro_f1_robust"] + 0.2
    robust = pd.read_csv(b_dir / "oof_robust.csv", dtype={"ID": str})
    assert set(robust["copy"]) == {1} and b["cv_macro_f1_robust"] == f1_score(robust["target"], robust["pred"],
                                                                              average="macro")


def test_robust_roles_split_every_fold_in_two_disjoint_sets():
    from docclassify.engine.evaluate import robust_roles

    ids = [f"img_{i:03d}.jpg" for i in range(9)]
    assert robust_roles(ids, 2).tolist() == [False, True] * 9  # copy 0 selects, copy 1 estimates
    assert robust_roles(ids, 3).reshape(9, 3).tolist() == [[False, True, False]] * 9
    one = robust_roles(ids, 1)  # one copy: half of the images (by a stable ID hash) estimate
    assert one.sum() == 4 and (~one).sum() == 5 and robust_roles(ids, 1).tolist() == one.tolist()
    assert robust_roles(ids[::-1], 1).tolist() == one[::-1].tolist()  # a pure function of each ID and the fold


def test_monitor_without_its_view_is_refused_before_any_work(tmp_path):
    for over in (["validation=clean", "trainer.monitor=robust"], ["validation=clean", "trainer.monitor=mean"],
                 ["validation=robust", "trainer.monitor=clean"]):
        cfg = compose_train([*TINY, *over], tmp_path / "x")
        with pytest.raises(ConfigError, match="trainer.monitor"):
            check_config(cfg)
    cfg = compose_train([*TINY, "validation.distort=sideways"], tmp_path / "x")
    with pytest.raises(ConfigError, match="validation.distort"):
        check_config(cfg)


def test_distort_auto_uses_the_profile_fitted_by_the_shift_check(tmp_path):
    """validation.distort=auto: the profile the run's shift check fitted (RunData.fitted_profile, see
    tests/distortion/test_shift.py for the fit itself), normalised: its missing keys take the defaults."""
    import types

    cfg = compose_train([*TINY, "validation.distort=auto"], tmp_path / "auto")
    run = types.SimpleNamespace(validation=kfold.group_settings(cfg, "validation", RobustValidation),
                                run_dir=tmp_path / "auto")
    data = types.SimpleNamespace(source="SOURCE", fitted_profile={"angle": 7.5})
    profile = kfold.resolve_distort_profile(run, data)
    assert profile["angle"] == 7.5 and profile["rot90_p"] == 0.5


@pytest.mark.slow
def test_both_views_are_predicted_in_one_pass_as_the_separate_passes_predict_them(tiny_data, tmp_path):
    """validation=both predicts the clean rows and their robust copies in the same batches, one pass
    per epoch (batches run across the seam); per row, the logits equal those of a clean pass and a
    robust pass run separately, with the weights of a real training epoch."""
    cfg = compose_train(["data=competition", f"data.root={tiny_data}", *BASE, "validation=both", "folds.run=[0]"],
                        tmp_path / "run")
    run = kfold.start_run(cfg, kfold.CallbackList([]))
    data = kfold.load_run_data(run)
    kfold.add_robust_copies(run, data)
    job = fold_mod.prepare_fold(data.plans[0], run, data)
    train_one_epoch(job.parts, job.train_loader, job.ctx, epoch=0, start=EpochProgress())
    batches: list[int] = []
    hook = eval_model(job.parts).register_forward_hook(lambda module, inputs, out: batches.append(len(inputs[0])))
    spent = phases.spent_seconds()
    merged = fold_mod.validate(job)
    merged_batches, batches[:] = list(batches), []
    job.views_loader = None  # the separate passes: the clean loader, then the robust one
    after_merged = phases.spent_seconds()
    separate = fold_mod.validate(job)
    hook.remove()
    after_separate = phases.spent_seconds()
    # the log's "inside (s):" part counts each pass under its name (tracking/phases.py)
    assert after_merged["clean + robust validation"] > spent.get("clean + robust validation", 0.0)
    assert after_merged.get("clean validation") == spent.get("clean validation")
    assert after_separate["clean validation"] > after_merged.get("clean validation", 0.0)
    assert after_separate["robust validation"] > after_merged.get("robust validation", 0.0)
    n_clean, n_robust, bs = len(job.val_idx), len(job.robust_targets), eval_batch_size(cfg.trainer)
    assert sum(merged_batches) == n_clean + n_robust == sum(batches)
    assert len(merged_batches) == -(-(n_clean + n_robust) // bs)  # one pass: full batches across the seam
    assert len(batches) == -(-n_clean // bs) + -(-n_robust // bs) > len(merged_batches)
    for a, b in ((merged.logits, separate.logits), (merged.robust_logits, separate.robust_logits)):
        assert a.shape == b.shape and a.shape[0] in (n_clean, n_robust)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert (a.argmax(1) == b.argmax(1)).all()
    for key in ("val_macro_f1", "val_macro_f1_robust", "val_macro_f1_robust_select", "val_monitored"):
        assert merged.metrics[key] == separate.metrics[key], key
