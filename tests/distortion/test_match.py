"""distortion/match.py (augment.match_validation): training samples distorted by the robust copies'
profile, drawn fresh per (seed, epoch, row), never a validation copy's draw, through the same
distortion module as the copies; the orientation head's label composes what the match draw did
with what came after it (issue 26); and a real run with ``validation.distort=auto`` trains with
the fitted profile."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, TINY, compose_train
from omegaconf import OmegaConf
from PIL import Image

from docclassify import distortion as D
from docclassify.data import validation as V
from docclassify.data.dihedral import apply_numpy, inverse
from docclassify.data.images import image_size, load_image, resize_image
from docclassify.distortion.copies import RobustSpec, copy_rng
from docclassify.distortion.match import MatchValidation

SIZE = 32


def profile(**over) -> dict:
    return {**D.normalise_profile({}), **over}


NOTHING = profile(**{f"{s}_p": 0.0 for s in D.STEP_NAMES})  # every step off


@pytest.fixture(scope="module")
def rows(tiny_data):
    train = pd.read_csv(tiny_data / "train.csv", dtype={"ID": str})
    paths = [tiny_data / "train" / i for i in train["ID"]]
    return paths, train["ID"].tolist(), [load_image(p, SIZE) for p in paths], [image_size(p) for p in paths]


def matcher(rows, prof=None, seed=0, p=1.0, epochs=5, resize="pad") -> MatchValidation:
    return MatchValidation(prof or profile(), SIZE, epochs, seed, p, p, resize, 0, rows[3])


def test_draws_are_a_pure_function_of_seed_epoch_and_row_and_differ_per_epoch(rows):
    m = matcher(rows)
    images = rows[2]
    for row in range(5):
        draws = [m.draw(images[row], row, epoch) for epoch in range(4)]
        again = m.draw(images[row], row, 2)
        np.testing.assert_array_equal(draws[2].image, again.image)
        assert draws[2].params == again.params and draws[2].element == again.element
        assert len({json.dumps(d.params, sort_keys=True) for d in draws}) == 4  # a new draw every epoch
        assert not any(np.array_equal(draws[0].image, d.image) for d in draws[1:])
    other_seed = matcher(rows, seed=1).draw(images[0], 0, 0)
    assert other_seed.params != m.draw(images[0], 0, 0).params


def test_training_draws_never_equal_the_validation_copies(rows):
    """Same profile, and even the same seed as validation.seed: the copies' generators are seeded
    from (seed, ID hash, copy), the training draws' from (seed, epoch, row, MATCH_STREAM)."""
    paths, ids, images, _ = rows
    spec = RobustSpec(profile(), copies=2, seed=0)
    copies = V.robust_copies(paths, ids, spec, SIZE, "pad", 0, None)
    m = matcher(rows, seed=0)
    for row in range(len(ids)):
        copy_params = [D.sample_params(spec.profile, copy_rng(0, ids[row], c)) for c in range(2)]
        for epoch in range(3):
            drawn = m.draw(images[row], row, epoch)
            pixels = drawn.image
            assert drawn.params not in copy_params
            for c in range(2):
                assert not np.array_equal(pixels, copies[row * 2 + c]), (row, epoch, c)


def test_the_distortion_code_is_one_module_shared_by_copies_and_training(rows, monkeypatch):
    from docclassify.distortion import draw

    paths, ids, images, _ = rows
    calls = []
    real = draw.apply_params

    def spy(image, params, rng, scale=1.0):
        calls.append(scale)
        return real(image, params, rng, scale)

    monkeypatch.setattr(draw, "apply_params", spy)
    V.robust_copy(V.working_image(paths[0], SIZE), ids[0], 0, RobustSpec(profile(), 1, 0), SIZE, "pad", 0)
    assert calls == [1.0]  # a copy: distorted at the image's own size
    matcher(rows).draw(images[0], 0, 0)
    assert len(calls) == 2 and calls[1] == pytest.approx(SIZE / 64)  # training: at 32 px of a 64 px image
    # No other module defines a distortion step of its own.
    steps = "|".join(s.apply.__name__ for s in D.STEPS if s.apply is not None)
    # (distortion/restore.py's crop / deskew / ... undo a distortion: the second stage's restorations)
    defined = [p.relative_to(REPO).as_posix() for p in (REPO / "docclassify").rglob("*.py")
               if p.name != "restore.py" and re.search(rf"^def ({steps})\(", p.read_text(), re.M)]
    assert defined == ["docclassify/distortion/steps.py"]


def test_the_page_is_cut_out_of_its_padding_and_put_back_unchanged(rows):
    """With nothing drawn the step returns the very pixels it got: the page is cut out of the pad
    bars at its own aspect and resized back with the run's policy."""
    wide = np.zeros((40, 64, 3), np.uint8)
    wide[:] = (90, 160, 220)
    wide[10:20, 5:50] = 20
    padded = resize_image(wide, SIZE, "pad", 0)
    m = MatchValidation(NOTHING, SIZE, 2, 0, 1.0, 1.0, "pad", 0, [(40, 64)])
    page, scale = m.page(padded, 0)
    assert page.shape == (20, 32, 3) and (page[0, 0] == (90, 160, 220)).all()  # no pad bar left in it
    assert scale == 0.5
    drawn = m.draw(padded, 0, 0)
    assert drawn.params == {} and np.array_equal(drawn.image, padded) and drawn.element.name == "identity"
    # A distortion now sees the page, not the pad bars: a rotation's corners take the page's colour.
    turned = MatchValidation(profile(**{**{f"{s}_p": 0.0 for s in D.STEP_NAMES}, "angle_p": 1.0, "angle": 30.0}),
                             SIZE, 2, 0, 1.0, 1.0, "pad", 0, [(40, 64)])
    rotated = turned.draw(padded, 0, 0).image
    assert (np.abs(rotated[SIZE // 2, 1].astype(int) - (90, 160, 220)) < 40).all()
    stretched = MatchValidation(NOTHING, SIZE, 2, 0, 1.0, 1.0, "stretch", 0, [(40, 64)])
    assert stretched.page(resize_image(wide, SIZE, "stretch"), 0)[0].shape == (20, 32, 3)
    big = MatchValidation(NOTHING, 64, 2, 0, 1.0, 1.0, "pad", 0, [(3000, 2000)])
    assert big.page(np.zeros((64, 64, 3), np.uint8), 0)[1] == pytest.approx(64 / 1024)  # copies' working side
    unknown = MatchValidation(NOTHING, SIZE, 2, 0, 1.0, 1.0, "pad", 0, None)
    assert unknown.page(padded, 0) == (padded, 1.0)


def test_the_share_of_distorted_samples_follows_the_ramp(rows):
    m = MatchValidation(profile(), SIZE, 3, 0, 0.2, 0.8, "pad", 0, None)
    image = rows[2][0]
    shares = [np.mean([m.draw(image, row, epoch).params is not None for row in range(400)]) for epoch in range(3)]
    assert shares == pytest.approx([0.2, 0.5, 0.8], abs=0.07)


def test_train_transform_distorts_first_then_takes_its_set(rows, tmp_path):
    """The set's draws do not depend on the match step (its own generator): with an identity set
    the transform's output is exactly the match step's."""
    from docclassify.data.augment import TrainTransform

    cfg = compose_train([*TINY, "augment.match_validation=true", "augment.rotate_limit=0", "augment.scale_limit=0",
                         "augment.shift_limit=0", "augment.crop_p=0", "augment.color_jitter=0"], tmp_path)
    m = matcher(rows, seed=7)
    transform = TrainTransform(cfg.augment, SIZE, 5, 7, 0, match=m)
    for row in range(4):
        transform.set_epoch(row % 3)
        np.testing.assert_array_equal(transform(rows[2][row], row)[0], m.draw(rows[2][row], row, row % 3).image)


# ------------------------------------------------------------------------------------------ the head's label
def _marked_page(size: int = SIZE) -> np.ndarray:
    """A square white page with a red top-left corner and a blue band down its left edge: each of
    the 8 turns and mirror images puts the corner or the band somewhere else."""
    page = np.full((size, size, 3), 235, np.uint8)
    page[:, : size // 8] = (40, 40, 220)
    page[: size // 4, : size // 4] = (220, 30, 30)
    return page


def _centre_of(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of a mask's centre of mass, relative to the image centre (shares of the side)."""
    ys, xs = np.nonzero(mask)
    return xs.mean() / mask.shape[1] - 0.5, ys.mean() / mask.shape[0] - 0.5


def _upright(image: np.ndarray) -> bool:
    """Whether the red corner is at the top left and the blue band on the left half."""
    x = image.astype(int)
    red = (x[..., 0] > 150) & (x[..., 1] < 100) & (x[..., 2] < 100)
    blue = (x[..., 2] > 150) & (x[..., 0] < 110) & (x[..., 1] < 110)
    (rx, ry), (bx, _) = _centre_of(red), _centre_of(blue)
    return rx < 0 and ry < 0 and bx < 0


def _labelled(tmp_path, turning: dict, orientation: str = "dihedral", flips: bool = True, n: int = 24):
    """(pixels, head label element) of ``n`` samples through ImageDataset (what the head is given):
    the match step with ``turning`` (every other step off), the basic set with both flips (or none)
    and no other transform, the orientation step."""
    from docclassify.data.augment import TrainTransform
    from docclassify.data.dataset import ImageDataset
    from docclassify.data.dihedral import element

    cfg = compose_train([*TINY, "augment.match_validation=true", f"augment.hflip={flips}", f"augment.vflip={flips}",
                         "augment.rotate_limit=0", "augment.scale_limit=0", "augment.shift_limit=0", "augment.crop_p=0",
                         "augment.color_jitter=0", f"augment.orientation={orientation}", "augment.orientation_p=0.5"],
                        tmp_path)
    match = MatchValidation(profile(**{**{f"{s}_p": 0.0 for s in D.STEP_NAMES}, **turning}), SIZE, 3, 5, 1.0, 1.0)
    transform = TrainTransform(cfg.augment, SIZE, 3, 5, 0, match=match)
    data = ImageDataset(np.stack([_marked_page()] * n), np.arange(n), np.zeros(n), transform, orientation_labels=True)
    out = []
    for epoch in range(2):
        transform.set_epoch(epoch)
        for i in range(n):
            tensor, _, label = data[i]
            out.append((tensor.numpy().transpose(1, 2, 0), element(label)))
    return out


@pytest.mark.parametrize("turning", [{"rot90_p": 1.0}, {"rot90_p": 1.0, "flip_p": 1.0, "flip_vertical": 0.5},
                                     {"flip_p": 1.0}], ids=["turns", "turns+mirrors", "mirrors"])
def test_the_head_label_is_every_turn_and_mirror_the_pixels_went_through(tmp_path, turning):
    """Issue 26: with augment.match_validation on and a profile that turns or mirrors the page, the
    label composes the match draw, the set's flips and the orientation step: undoing it on the
    sample's pixels gives back the upright page (on main the match draw's element was dropped)."""
    samples = _labelled(tmp_path, turning)
    assert all(_upright(apply_numpy(pixels, inverse(g))) for pixels, g in samples)
    assert not all(_upright(pixels) for pixels, _ in samples)  # the pages really were turned


def test_a_free_rotation_labels_as_its_nearest_quarter_turn_beyond_45_degrees(tmp_path):
    """A match draw's skew of 60-100 degrees either way is labelled as the quarter turn nearest to it
    (distortion/draw.py quarter_turns): undone, the page is upright again (up to the skew left); a
    skew of up to 30 degrees is no turn."""
    turned = _labelled(tmp_path, {"angle_p": 1.0, "angle_min": 60.0, "angle": 100.0}, orientation="none", flips=False)
    assert {g.name for _, g in turned} == {"rot90", "rot270"}
    assert all(_upright(apply_numpy(pixels, inverse(g))) for pixels, g in turned)
    skewed = _labelled(tmp_path, {"angle_p": 1.0, "angle": 30.0}, orientation="none", flips=False, n=8)
    assert {g.name for _, g in skewed} == {"identity"} and all(_upright(pixels) for pixels, _ in skewed)


# ------------------------------------------------------------------------------------------ a real run
@pytest.fixture
def darker_test(data):
    """tiny_data whose test split is its training pages made much darker and noisier (a shift the
    fit measures: brightness and noise)."""
    shutil.rmtree(data / "test")
    (data / "test").mkdir()
    rng = np.random.default_rng(0)
    ids = pd.read_csv(data / "train.csv")["ID"].tolist()
    for i, name in enumerate(ids):
        page = np.asarray(Image.open(data / "train" / name).convert("RGB")).astype(np.float32)
        dark = page * 0.45 + rng.normal(0, 12, page.shape)
        Image.fromarray(np.clip(dark, 0, 255).astype(np.uint8)).save(data / "test" / f"t{i}.jpg", quality=92)
    pd.DataFrame({"ID": [f"t{i}.jpg" for i in range(len(ids))], "target": 0}).to_csv(
        data / "sample_submission.csv", index=False)
    return data


@pytest.mark.slow
def test_match_validation_with_distort_auto_trains_with_the_fitted_profile(darker_test, tmp_path, monkeypatch):
    from docclassify.distortion import match
    from docclassify.engine import fold, kfold

    built, fired = [], []
    real_build, real_draw = fold.build_match, match.MatchValidation.draw

    def build(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]

    def draw(self, image, row, epoch):
        out = real_draw(self, image, row, epoch)
        fired.append(out.params is not None)
        return out

    monkeypatch.setattr(fold, "build_match", build)
    monkeypatch.setattr(match.MatchValidation, "draw", draw)
    run_dir = tmp_path / "run"
    cfg = compose_train(["data=competition", f"data.root={darker_test}", *TINY, "trainer.epochs=2", "folds.n=2",
                         "augment.match_validation=true", "validation.distort=auto", "shift.report=false"], run_dir)
    results = kfold.run_kfold(cfg)
    fitted = OmegaConf.to_container(OmegaConf.load(run_dir / "distort_profile.yaml"))
    assert results["validation"]["profile"] == D.normalise_profile(fitted)
    assert fitted["brightness"][1] < 0 and fitted["color_p"] > 0.5  # the planted darkening was measured
    assert [m.profile for m in built] == [results["validation"]["profile"]] * 2  # both folds train with it
    seen = sum(2 * (f["n_train"] // 16) * 16 for f in results["folds"])  # 2 epochs of full batches of 16
    assert len(fired) == seen and np.mean(fired) == pytest.approx(0.5, abs=0.12)
    losses = [h["train_loss"] for f in results["folds"] for h in f["history"]]
    assert all(np.isfinite(losses)) and results["objective"] == results["cv_macro_f1_robust_select"]
