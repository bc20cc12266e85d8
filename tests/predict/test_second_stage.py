"""The second stage (docs/second-stage.md) on models and data built so that the answer is known:
each option turns on where it provably helps and stays off (predictions untouched) where it does
not. The models are small torch modules whose decision is written down (a page whose ink block is
in region c is class c; a page dark all over reads as the "blank" class 3; a colour model whose
BatchNorm statistics are those of the clean images), so the tests run in seconds; the wiring into
a real inference over trained runs is tests/predict/test_second_stage_e2e.py."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from docclassify.distortion import steps
from docclassify.metrics import macro_f1
from docclassify.predict import adapt as A
from docclassify.predict import specialists as S
from docclassify.predict.second_pass import SecondPassSettings, margins, run_second_pass
from docclassify.predict.stage import (
    Combiner,
    FoldInput,
    FoldSet,
    OofRows,
    StageData,
    cross_fit,
    fold_average,
    predict_both,
    predictor_fn,
)
from docclassify.predict.tta import View, normalised_batches, predict_tta_batches
from docclassify.predict.tta_auto import apply_policy, policy_guard

CPU = torch.device("cpu")
SIZE = 32
META = {"img_size": SIZE, "resize": "stretch", "pad_value": 0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
        "classes": ["top_left", "top_right", "bottom", "blank"]}
REGIONS = ((slice(4, 12), slice(4, 12)), (slice(4, 12), slice(20, 28)), (slice(20, 28), slice(12, 20)))


def predict(model, images, rows, meta):
    """What the first pass's TtaPredictor does with the identity view: logits of images[rows]."""
    return predict_tta_batches(model, normalised_batches(images, np.asarray(rows), meta, 64, CPU),
                               [View("identity")], "prob", CPU)[1]


# ------------------------------------------------------------------------------------ pages and a reader
def ink_pages(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pages of 3 classes: paper (grey 185-220) with an ink block (grey 40) in the class's region."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(3):
        for _ in range(n_per_class):
            img = np.full((SIZE, SIZE, 3), rng.integers(185, 221), dtype=np.uint8)
            img[REGIONS[c]] = 40
            images.append(img)
            labels.append(c)
    return np.stack(images), np.asarray(labels)


def darken(images: np.ndarray) -> np.ndarray:
    return np.stack([steps.exposure(im, [0.4, 1.0, 1.0]) for im in images])


class InkReader(nn.Module):
    """Class c when region c is darker than 0.6 (ink); the blank class 3 when the whole page is darker
    than 0.5 on average (a dark page: it reads as no document at all)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = 1.0 - x.mean(dim=1)
        regions = [d[:, r, c].mean(dim=(1, 2)) - 0.6 for r, c in REGIONS]
        return 10.0 * torch.stack([*regions, 2.0 * (d.mean(dim=(1, 2)) - 0.5)], dim=1)


def make_stage(model: nn.Module, test: np.ndarray, oof: np.ndarray, y: np.ndarray, clean: np.ndarray,
               clean_y: np.ndarray) -> StageData:
    """A one-run, two-fold first pass of ``model`` (its OOF rows: ``oof``, classes ``y``)."""
    folds = [FoldInput(0, k, META, lambda: copy.deepcopy(model), lambda: test, lambda: oof, lambda: (clean, clean_y))
             for k in (0, 1)]
    fs = FoldSet(folds, 1, "prob", [np.arange(len(oof))], [np.arange(len(oof)) % 2])
    oof_logits = predict(model, oof, np.arange(len(oof)), META)
    test_logits = fold_average([predict(model, test, np.arange(len(test)), META)] * 2, "prob")
    keys = np.asarray([f"img{i // 2}#{i % 2}" for i in range(len(oof))])
    rows = OofRows(keys, y, np.asarray([k.split("#")[0] for k in keys]), [oof_logits], "robust")
    combiner = Combiner([1.0], "prob")
    return StageData(fs, predict, combiner, rows, [test_logits], combiner.test([test_logits]),
                     combiner.oof([oof_logits]), 4, 64, CPU)


@pytest.fixture(scope="module")
def pages():
    clean, clean_y = ink_pages(12, 0)
    oof, y = ink_pages(16, 1)
    test, test_y = ink_pages(10, 2)
    return SimpleNamespace(clean=clean, clean_y=clean_y, oof=oof, y=y, test=test, test_y=test_y)


def test_the_reader_fails_on_dark_pages_and_reads_clean_ones(pages):
    model = InkReader()
    assert (predict(model, pages.test, np.arange(len(pages.test)), META).argmax(1) == pages.test_y).all()
    assert (predict(model, darken(pages.test), np.arange(len(pages.test)), META).argmax(1) == 3).all()


# ------------------------------------------------------------------------------------ second pass
def half_dark(images: np.ndarray) -> np.ndarray:
    out = images.copy()
    out[::2] = darken(images[::2])
    return out


def test_second_pass_restores_dark_pages_where_the_oof_rows_show_it_helps(pages):
    oof, test = half_dark(pages.oof), half_dark(pages.test)
    stage = make_stage(InkReader(), test, oof, pages.y, pages.clean, pages.clean_y)
    before = stage.test_probs.copy()
    f1_before = macro_f1(pages.test_y, before.argmax(1))
    report = run_second_pass(stage, SecondPassSettings(True, 1.0, 0.05))
    assert report["applied"] and report["cross_fitted_gain"] > 0
    assert report["restorations"].get("gamma", 0) >= report["test_touched"] > 0
    after = stage.test_probs.argmax(1)
    assert macro_f1(pages.test_y, after) > f1_before
    assert (after[::2] == pages.test_y[::2]).all()          # every dark page read after its gamma
    assert (after[1::2] == before[1::2].argmax(1)).all()      # the clean pages as they were
    assert report["test_changed"] == int((after != before.argmax(1)).sum())
    # unsure first: the dark pages are the ones below the fitted threshold
    assert margins(before)[::2].max() < margins(before)[1::2].min()


def test_second_pass_stays_off_where_nothing_needs_restoring(pages):
    stage = make_stage(InkReader(), pages.test, pages.oof, pages.y, pages.clean, pages.clean_y)
    before_test, before_oof = stage.test_probs.copy(), stage.oof_probs.copy()
    report = run_second_pass(stage, SecondPassSettings(True, 1.0, 0.05))
    assert not report["applied"] and report["cross_fitted_gain"] <= 0
    assert np.array_equal(stage.test_probs, before_test) and np.array_equal(stage.oof_probs, before_oof)
    assert not stage.changed


# ------------------------------------------------------------------------------------ adapt
class ColourNet(nn.Module):
    """Class c when channel c is the bright one; class 3 when every channel is bright (all measured
    against its BatchNorm statistics, which are the clean pages')."""

    def __init__(self, mean: np.ndarray, var: np.ndarray):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.bn.running_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.bn.running_var.copy_(torch.as_tensor(var, dtype=torch.float32))
        self.fc = nn.Linear(3, 4)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0], [2.0, 2.0, 2.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.bn(x).mean(dim=(2, 3)))


def colour_pages(n_per_class: int, shift: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(3):
        for _ in range(n_per_class):
            img = np.full((8, 8, 3), 100, dtype=np.int64) + rng.integers(-5, 6, (8, 8, 3))
            img[..., c] += 100
            images.append(np.clip(img + shift, 0, 255).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.asarray(labels)


@pytest.fixture(scope="module")
def colour_model():
    clean, _ = colour_pages(20, 0, 0)
    x = clean.astype(np.float64) / 255.0
    return ColourNet(x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2)))


def colour_folds(model, test, oof, states=None):
    meta = {**META, "img_size": 8}
    return [FoldInput(0, k, meta, lambda: copy.deepcopy(model), lambda: test, lambda: oof,
                      states=(states or {}).get(k)) for k in (0, 1)]


def adapt_case(model, shift: int, mode: str = "bn"):
    oof, y = colour_pages(12, shift, 1)
    test, test_y = colour_pages(8, shift, 2)
    rows, fold_of = np.arange(len(oof)), np.arange(len(oof)) % 2
    result = A.adapt_folds(colour_folds(model, test, oof), rows, fold_of, y, rows.astype(str), predict, mode, 1e-3,
                           16, CPU, "colour")
    trained = predict(model, test, np.arange(len(test)), {**META, "img_size": 8}).argmax(1)
    return result, test_y, trained


@pytest.mark.parametrize("mode", ["bn", "tent"])
def test_adapt_re_estimates_batchnorm_on_shifted_pages_and_keeps_it(colour_model, mode):
    weights = copy.deepcopy(colour_model.state_dict())
    result, test_y, trained = adapt_case(colour_model, 50, mode)
    assert (trained == 3).mean() > 0.5                       # brighter pages: the trained statistics misread them
    assert result.report["applied"] and result.report["cross_fitted_gain"] > 0
    adapted = np.mean([softmax_rows(z) for z in result.test_folds], axis=0).argmax(1)
    assert (adapted == test_y).all()
    assert all(torch.equal(weights[k], v) for k, v in colour_model.state_dict().items())  # a copy was adapted
    # the later options predict with the adapted norm layers (kept per fold), test and OOF rows alike
    oof, _ = colour_pages(12, 50, 1)
    test, _ = colour_pages(8, 50, 2)
    fs = FoldSet(colour_folds(colour_model, test, oof, result.states), 1, "prob", [np.arange(len(oof))],
                 [np.arange(len(oof)) % 2])
    test_z, oof_z = predict_both(fs, np.arange(len(test)), np.arange(len(oof)), predictor_fn(predict), 4)
    assert np.allclose(test_z[0], fold_average(result.test_folds, "prob"), atol=1e-5)
    assert np.allclose(oof_z[0], result.oof, atol=1e-5)


def softmax_rows(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_adapt_stays_off_on_pages_like_the_training_ones(colour_model):
    result, _, _ = adapt_case(colour_model, 0)
    assert not result.report["applied"] and result.test_folds is None and result.oof is None


def test_adapt_bn_leaves_a_layernorm_model_alone_and_tent_adapts_its_affine_parameters(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 8), nn.LayerNorm(8), nn.Linear(8, 4)).eval()
    images = np.random.default_rng(0).integers(0, 255, (16, 4, 4, 3)).astype(np.uint8)
    meta = {**META, "img_size": 4}
    assert A.kind_of(model) == "layernorm" and not A.adaptable(model, "bn") and A.adaptable(model, "tent")
    folds = [FoldInput(0, 0, meta, lambda: copy.deepcopy(model), lambda: images, lambda: images)]
    rows = np.arange(len(images))
    with caplog.at_level("INFO"):
        result = A.adapt_folds(folds, rows, np.zeros(len(rows), int), rows % 4, rows.astype(str), predict, "bn", 1e-3,
                               8, CPU, "ln-model")
    assert not result.report["applied"] and "no BatchNorm layers" in result.report["note"]
    assert "adapt=tent adapts LayerNorm" in caplog.text
    batches = list(normalised_batches(images, rows, meta, 8, CPU))
    tented = A.adapt_tent(model, batches, lr=0.5)
    assert not torch.equal(tented[2].weight, model[2].weight) and torch.equal(tented[1].weight, model[1].weight)
    with torch.no_grad():
        before = torch.cat([A.entropy(model(x)) for x in batches]).mean()
        after = torch.cat([A.entropy(tented(x)) for x in batches]).mean()
    assert after < before


# ------------------------------------------------------------------------------------ specialists
def confused_pair(n: int, seed: int, good_specialist: bool, right: float = 0.5):
    """OOF probabilities of 5 classes where the ensemble hardly tells 0 from 1 (top-2 always {0, 1},
    right in a share ``right`` of them) and a specialist that can (or one that guesses)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(5), n)
    probs = np.full((len(y), 5), 0.02)
    probs[np.arange(len(y)), y] = 0.9
    pair = y < 2
    toward_truth = np.where(rng.random(pair.sum()) < right, 1.0, -1.0) * np.where(y[pair] == 0, 1.0, -1.0)
    tilt = rng.uniform(0.005, 0.05, pair.sum()) * toward_truth
    probs[pair, 0], probs[pair, 1] = 0.46 + tilt, 0.46 - tilt
    probs /= probs.sum(axis=1, keepdims=True)
    pos = np.flatnonzero(S.gate(probs, [(0, 1)]) == 0)
    if good_specialist:
        spec = np.where(y[pos, None] == np.array([0, 1]), 0.9, 0.1)
    else:
        spec = rng.dirichlet([1.0, 1.0], len(pos))
    return probs, y, pos, spec


def test_specialist_mixing_turns_on_when_it_separates_the_pair():
    probs, y, pos, spec = confused_pair(40, 0, True)
    assert set(pos) == set(np.flatnonzero(y < 2))
    guard, w = S.fit_weight(probs, pos, spec, (0, 1), y, None)
    assert guard.applied and w > 0
    mixed = S.mix(probs[pos], spec, (0, 1), w)
    assert (mixed.argmax(1) == y[pos]).all()
    assert np.allclose(mixed.sum(1), probs[pos].sum(1)) and np.array_equal(mixed[:, 2:], probs[pos, 2:])


def test_specialist_mixing_stays_off_for_a_guessing_specialist():
    probs, y, pos, spec = confused_pair(40, 1, False, right=0.85)
    guard, w = S.fit_weight(probs, pos, spec, (0, 1), y, None)
    assert not (guard.applied and w > 0)


def test_gate_takes_the_first_group_holding_both_top2_classes():
    probs = np.array([[0.5, 0.4, 0.1, 0.0], [0.1, 0.5, 0.4, 0.0], [0.5, 0.0, 0.0, 0.5], [0.0, 0.0, 0.6, 0.4]])
    assert S.gate(probs, [(0, 1), (1, 2, 3)]).tolist() == [0, 1, -1, 1]


# ------------------------------------------------------------------------------------ per-class TTA
def test_per_class_policy_turns_on_for_the_class_a_view_set_fixes():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 50)
    base = y.copy()
    base[(y == 2) & (rng.random(len(y)) < 0.6)] = 3           # class 2 misread as 3 upright
    flip = np.where(rng.random(len(y)) < 0.3, (y + 1) % 4, y)  # mirrored views: 2 right, others worse
    flip[base == 2] = 2
    flip[(base == 3) & (y == 2)] = 2
    guard = policy_guard(base, {"none": base, "flip": flip}, y, None, "none")
    assert guard.applied and guard.choice == {3: "flip"}
    assert macro_f1(y, apply_policy(guard.choice, base, {"none": base, "flip": flip}, np.arange(len(y)))) > \
        macro_f1(y, base)


def test_per_class_policy_stays_off_when_no_set_is_better_anywhere():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 50)
    base = np.where(rng.random(len(y)) < 0.2, rng.integers(0, 4, len(y)), y)
    noisy = np.where(rng.random(len(y)) < 0.2, rng.integers(0, 4, len(y)), y)
    guard = policy_guard(base, {"none": base, "flip": noisy}, y, None, "none")
    assert not (guard.applied and guard.choice)


# ------------------------------------------------------------------------------------ shared parts
def test_cross_fit_reports_the_gain_of_a_choice_made_without_the_rows_it_is_scored_on():
    y = np.repeat(np.arange(3), 30)
    base = np.roll(y, 1)                # mostly wrong
    good = y.copy()
    guard = cross_fit(lambda rows: 1, lambda c, rows: (good if c else base)[rows], y, None, base)
    assert guard.applied and guard.gain == pytest.approx(1.0 - macro_f1(y, base))
    never = cross_fit(lambda rows: 0, lambda c, rows: (good if c else base)[rows], y, None, base)
    assert not never.applied and never.gain == 0


def test_the_combiner_is_the_first_pass_arithmetic():
    """Combiner.test / .oof against predict/ensemble.py's ensemble_test_probs and predict/fitting.py's
    fit_on_oof (two code paths): weights fitted on OOF, the temperature, the fold-average scaling."""
    from docclassify.predict.ensemble import ensemble_test_probs
    from docclassify.predict.fitting import fit_on_oof
    from docclassify.predict.members import Member
    from docclassify.predict.oof_rows import OofInputs

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    members, saved = [], []
    for m in range(2):
        oof = rng.normal(0, 1, (len(y), 4)) + 2.0 * np.eye(4)[y] * (m + 1)
        folds = rng.normal(0, 1, (3, 20, 4)) * (m + 1)
        members.append(Member(SimpleNamespace(path=SimpleNamespace(name=f"r{m}")), fold_average(list(folds), "prob"),
                              None, [], [], folds))
        saved.append((np.asarray([f"id{i}" for i in range(len(y))]), y, oof))
    oof_fit = fit_on_oof(members, OofInputs(saved, False, [None, None], "clean"), "prob", "oof", True)
    combiner = Combiner(list(oof_fit.weights), "prob", oof_fit.temperature, oof_fit.summary["averaging_factors"])
    assert np.allclose(combiner.test([m.test_logits for m in members]),
                       ensemble_test_probs([m.test_logits for m in members], oof_fit.weights, "prob",
                                           temperature=oof_fit.temperature))
    oof_probs = combiner.oof(oof_fit.rows.logits)
    assert macro_f1(y, oof_probs.argmax(1)) == pytest.approx(oof_fit.summary["macro_f1"])


def test_second_pass_keys_change_what_it_considers(pages):
    """second_pass.max_share bounds the unsure rows it looks at; second_pass.tail how far out of the
    clean pages' range a statistic must be to name a restoration."""
    oof, test = half_dark(pages.oof), half_dark(pages.test)
    reports = {}
    for share, tail in ((1.0, 0.05), (0.2, 0.05), (1.0, 0.4)):
        stage = make_stage(InkReader(), test, oof, pages.y, pages.clean, pages.clean_y)
        reports[share, tail] = run_second_pass(stage, SecondPassSettings(True, share, tail))
    assert reports[0.2, 0.05]["oof_rows_considered"] < reports[1.0, 0.05]["oof_rows_considered"]
    assert reports[1.0, 0.4]["oof_rows_restorable"] > reports[1.0, 0.05]["oof_rows_restorable"]


def test_adapt_lr_sets_the_tent_step():
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.LayerNorm(8), nn.Linear(8, 4)).eval()
    images = np.random.default_rng(0).integers(0, 255, (16, 4, 4, 3)).astype(np.uint8)
    meta = {**META, "img_size": 4}
    weights = []
    for lr in (1e-3, 0.5):
        cfg = OmegaConf.create({"name": "tent", "lr": lr})
        adapted = A.adapted(model, images, np.arange(16), meta, cfg.name, float(cfg.lr), 8, CPU)
        weights.append(adapted[2].weight.detach().clone())
    assert not torch.allclose(weights[0], weights[1])
