"""The train-vs-test shift report (docclassify/distortion/: measure, compare, fit, report; the
docclassify.shift command): planted shifts are detected in the right direction and size, the
fitted profile (validation.distort=auto) covers them, a set without shift fits nothing, and data
without test images behaves (silent at training unless auto, a clear refusal from the command)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import TINY, compose_train, run_cli
from omegaconf import OmegaConf
from PIL import Image

from docclassify.config_schema import DistortProfile, distort_errors
from docclassify.data.sources import DataError, load_competition
from docclassify.distortion import compare, fit, measure, profile_defaults, steps
from docclassify.distortion import report as shift_report
from docclassify.engine.kfold import load_run_data, start_run
from docclassify.tracking.callbacks import CallbackList

PLANTED_DARKER = 0.15        # brightness, share of full scale
PLANTED_BLUR = 0.006         # Gaussian sigma, share of the long side
PLANTED_SKEW = 10.0          # degrees, half the pages each way
PLANTED_QUALITY = 30         # JPEG quality
PLANTED_NOISE = 0.05         # std, share of full scale (saved as PNG: no JPEG smoothing)
TURNS = (1, 2, 3)            # every other page turned by k quarter turns, k cycling


def _darker(i, x):
    return np.clip(x.astype(np.float32) - PLANTED_DARKER * 255, 0, 255).astype(np.uint8)


def _blurred(i, x):
    return cv2.GaussianBlur(x, (0, 0), PLANTED_BLUR * max(x.shape[:2]))


def _turned(i, x):
    return np.ascontiguousarray(np.rot90(x, TURNS[(i // 2) % 3])) if i % 2 == 0 else x


def _skewed(i, x):
    return Image.fromarray(x).rotate(PLANTED_SKEW if i % 2 else -PLANTED_SKEW, Image.BILINEAR, expand=True,
                                     fillcolor=(255, 255, 255))


def _noisy(i, x):
    rng = np.random.default_rng(i)
    return np.clip(x + rng.normal(0, PLANTED_NOISE * 255, x.shape), 0, 255).astype(np.uint8)


PLANTS = {"darker": (_darker, "JPEG", 92), "blurred": (_blurred, "JPEG", 92), "turned": (_turned, "JPEG", 92),
          "skewed": (_skewed, "JPEG", 92), "jpeg": (lambda i, x: x, "JPEG", PLANTED_QUALITY),
          "noisy": (_noisy, "PNG", None)}


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    """Clean synthetic pages (4 per class, 256 px): the train split of every planted data set."""
    from docclassify.data.synthetic import SyntheticSpec, generate

    root = tmp_path_factory.mktemp("shift_pages")
    generate(root, SyntheticSpec(n_train_per_class=4, n_test_per_class=1, long_side=256, seed=11, imbalance=False),
             progress=False)
    return root


def make_dataset(pages: Path, dest: Path, test_images) -> Path:
    """A competition folder: the clean pages as train, ``test_images`` [(name, PIL image, format,
    quality)] as test (listed in sample_submission.csv)."""
    (dest / "test").mkdir(parents=True)
    os.symlink(pages / "train", dest / "train")
    for f in ("train.csv", "meta.csv"):
        shutil.copy(pages / f, dest / f)
    names = []
    for name, img, fmt, quality in test_images:
        img.save(dest / "test" / name, fmt, **({"quality": quality} if quality else {}))
        names.append(name)
    pd.DataFrame({"ID": names, "target": 0}).to_csv(dest / "sample_submission.csv", index=False)
    return dest


@pytest.fixture(scope="module")
def planted(pages, tmp_path_factory):
    """name -> a competition folder whose test split is the train pages with one planted shift
    ("clean": other clean pages of the same generator, i.e. no shift)."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            ids = pd.read_csv(pages / "train.csv")["ID"].tolist()
            dest = tmp_path_factory.mktemp(f"planted_{name}")
            if name == "clean":
                from docclassify.data.synthetic import SyntheticSpec, generate

                other = tmp_path_factory.mktemp("other_pages")
                generate(other, SyntheticSpec(n_train_per_class=4, n_test_per_class=1, long_side=256, seed=12,
                                              imbalance=False), progress=False)
                tests = [(f"t{i}.jpg", Image.open(other / "train" / j).convert("RGB"), "JPEG", 92)
                         for i, j in enumerate(pd.read_csv(other / "train.csv")["ID"])]
            else:
                fn, fmt, quality = PLANTS[name]
                ext = "jpg" if fmt == "JPEG" else "png"
                tests = []
                for i, j in enumerate(ids):
                    out = fn(i, np.asarray(Image.open(pages / "train" / j).convert("RGB")))
                    img = out if isinstance(out, Image.Image) else Image.fromarray(out)
                    tests.append((f"t{i}.{ext}", img, fmt, quality))
            made[name] = make_dataset(pages, dest / "data", tests)
        return made[name]

    return get


@pytest.fixture(scope="module")
def reports(planted, cache_dir):
    """name -> ShiftReport of the planted data set, its statistics cached where the training hook and
    the command of this test session look for them (DOCCLASSIFY_CACHE)."""
    made: dict[str, shift_report.ShiftReport] = {}

    def get(name: str) -> shift_report.ShiftReport:
        if name not in made:
            made[name] = shift_report.build_report(load_competition(planted(name)), 256, 500, cache_dir)
        return made[name]

    return get


# ------------------------------------------------------------------------------------------ estimators
@pytest.mark.parametrize("quality", [12, 30, 55, 75, 92, 100])
def test_jpeg_quality_is_read_from_the_quantisation_tables(tmp_path, quality):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8))
    img.save(tmp_path / "a.jpg", quality=quality)
    assert measure.jpeg_quality(tmp_path / "a.jpg") == quality
    ok, buf = cv2.imencode(".jpg", np.asarray(img), [cv2.IMWRITE_JPEG_QUALITY, quality])  # libjpeg via OpenCV
    (tmp_path / "b.jpg").write_bytes(buf.tobytes())
    assert measure.jpeg_quality(tmp_path / "b.jpg") == quality
    img.save(tmp_path / "c.png")
    assert math.isnan(measure.jpeg_quality(tmp_path / "c.png"))


def test_text_lines_give_quarter_turn_and_skew(pages):
    """A form page: horizontal lines upright, vertical after a quarter turn, the skew's sign and size
    after a small rotation (counter-clockwise positive, like PIL's rotate)."""
    train = pd.read_csv(pages / "train.csv")
    page = Image.open(pages / "train" / train.loc[train["target"] == 3, "ID"].iloc[0]).convert("RGB")

    def read(img):
        return measure.line_direction(measure.at_work_size(measure.grey(np.asarray(img)), 256))

    direction, confidence = read(page)
    assert confidence >= measure.LINES_CONFIDENT and abs(measure.skew_of(direction)) < 1.0 and not 45 <= direction < 135
    direction, confidence = read(page.transpose(Image.Transpose.ROTATE_90))
    assert confidence >= measure.LINES_CONFIDENT and 45 <= direction < 135
    for angle in (7.0, -12.0):
        direction, _ = read(page.rotate(angle, Image.BILINEAR, expand=True, fillcolor=(255, 255, 255)))
        assert measure.skew_of(direction) == pytest.approx(angle, abs=1.0)


def test_noise_estimate_follows_added_noise(pages):
    rgb = np.asarray(Image.open(next((pages / "train").glob("*.jpg"))).convert("RGB"))
    rng = np.random.default_rng(0)
    levels = [measure.noise_sigma(steps.noise(rgb, s, rng)) for s in (0.0, 0.02, 0.05, 0.1)]
    assert levels[0] < 0.005 and all(b > a for a, b in zip(levels, levels[1:]))
    assert levels[2] == pytest.approx(0.05, rel=0.35)


# ------------------------------------------------------------------------------------------ planted shifts
def _shift(report, name):
    return report.comparison[name]["shift"]


def test_darker_test_set(reports):
    r = reports("darker")
    assert _shift(r, "brightness") == pytest.approx(-PLANTED_DARKER, abs=0.02)
    assert r.comparison["brightness"]["ks"] > 0.4
    lo, hi = r.profile["brightness"]
    assert lo <= -PLANTED_DARKER + 0.02 and hi <= 0.0 and r.profile["color_p"] >= 0.8
    assert r.profile["blur_p"] == r.profile["noise_p"] == r.profile["rot90_p"] == r.profile["jpeg_p"] == 0


def test_the_fitted_profile_is_a_whole_valid_profile(reports):
    """Every DistortProfile key, typed as the schema types it (counts stay integers), so that
    validation.distort=auto (and augment.match_validation with it) can use it as is; keys that no
    statistic measures keep the defaults."""
    from docclassify.distortion import normalise_profile

    profile = reports("darker").profile
    assert list(profile) == list(DistortProfile.__annotations__)
    assert normalise_profile(profile) == profile and isinstance(profile["occlusion_count"], int)
    defaults = normalise_profile({})
    for key in ("desk_p", "shadow_p", "glare_p", "background_p", "channel_contrast", "occlusion_count"):
        assert profile[key] == defaults[key] and reports("darker").basis[key].startswith("default")


def test_blurred_test_set(reports):
    r = reports("blurred")
    assert _shift(r, "laplacian_var") < 0 and _shift(r, "sharpness") < 0
    assert r.comparison["sharpness"]["ks"] > 0.9  # every test page blurrier than its train page
    assert r.profile["blur_p"] >= 0.8 and r.profile["blur_sigma"] >= PLANTED_BLUR  # draws in [0, sigma] cover it
    assert r.profile["blur_sigma"] <= 4 * PLANTED_BLUR
    assert r.profile["rot90_p"] == r.profile["jpeg_p"] == r.profile["angle_p"] == 0


def test_turned_test_set(reports):
    """Half the pages turned by 90/180/270: two thirds of them show vertical text lines, and the fit
    (rot90_p = 1.5 x the excess share of vertical lines) lands near the planted half."""
    r = reports("turned")
    assert _shift(r, "quarter_turned") == pytest.approx(1 / 3, abs=0.15)
    assert r.profile["rot90_p"] == pytest.approx(0.5, abs=0.2)
    assert r.profile["angle_p"] == r.profile["blur_p"] == r.profile["color_p"] == 0


def test_skewed_test_set(reports):
    r = reports("skewed")
    assert r.comparison["abs_skew"]["test"]["median"] == pytest.approx(PLANTED_SKEW, abs=1.0)
    assert r.comparison["abs_skew"]["train"]["median"] < 1.0
    assert r.profile["angle_p"] >= 0.8 and PLANTED_SKEW <= r.profile["angle"] <= PLANTED_SKEW + 3
    assert r.profile["rot90_p"] == 0


def test_low_jpeg_quality_test_set(reports):
    r = reports("jpeg")
    assert r.comparison["jpeg_quality"]["train"]["median"] == 92
    assert r.comparison["jpeg_quality"]["test"]["median"] == PLANTED_QUALITY
    assert r.profile["jpeg_p"] == 1.0 and r.profile["jpeg_quality"] == [PLANTED_QUALITY, PLANTED_QUALITY]


def test_noisy_test_set(reports):
    r = reports("noisy")
    assert _shift(r, "noise") == pytest.approx(PLANTED_NOISE, rel=0.35) and r.comparison["noise"]["ks"] > 0.9
    assert r.profile["noise_p"] >= 0.7 and PLANTED_NOISE <= r.profile["noise_std"] <= 4 * PLANTED_NOISE
    assert r.profile["blur_p"] == r.profile["jpeg_p"] == 0  # a PNG counts as lossless


def test_no_shift_fits_no_distortion(reports):
    """Other clean pages of the same generator: differences are sampling noise, nothing is fitted."""
    r = reports("clean")
    assert all(c["ks"] < 0.3 for c in r.comparison.values())
    for key in ("rot90_p", "angle_p", "color_p", "blur_p", "noise_p", "jpeg_p"):
        assert r.profile[key] == 0, key


@pytest.mark.parametrize("name", ["darker", "blurred", "turned", "skewed", "jpeg", "noisy", "clean"])
def test_fitted_profile_is_a_valid_distort_profile(reports, name):
    r = reports(name)
    assert set(r.profile) == set(DistortProfile.__annotations__)
    assert distort_errors(OmegaConf.create({"distort": r.profile})) == []
    for key in fit.UNMEASURED:  # what no statistic measures keeps the defaults
        assert r.profile[key] == profile_defaults()[key] and r.basis[key].startswith("default")
    assert "statistic" in compare.format_table(r.comparison, len(r.train.table), len(r.test.table))


# ------------------------------------------------------------------------------------------ settings, cache
def test_statistics_are_cached_by_content(planted, tmp_path, monkeypatch):
    source = load_competition(planted("darker"))
    first = shift_report.build_report(source, 256, 500, tmp_path)
    assert len(list((tmp_path / "shift").glob("*.json"))) == 2  # one per split

    def no_decoding(*args, **kwargs):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(measure, "image_stats", no_decoding)
    again = shift_report.build_report(source, 256, 500, tmp_path)
    assert again.profile == first.profile and again.comparison == first.comparison
    with pytest.raises(AssertionError, match="measured again"):  # another work size: other statistics
        shift_report.build_report(source, 128, 500, tmp_path)


def test_max_images_and_work_size_change_the_measurement(planted, tmp_path):
    source = load_competition(planted("darker"))
    capped = measure.measure_split(source.train, 256, 20, tmp_path)
    assert len(capped.table) == 20 and capped.n_images == len(source.train)
    assert capped.table["ID"].tolist() == measure.measure_split(source.train, 256, 20, None).table["ID"].tolist()
    full = measure.measure_split(source.train, 256, None, tmp_path)
    assert len(full.table) == len(source.train)
    small = measure.measure_split(source.train, 128, None, tmp_path)
    assert not np.allclose(small.table["laplacian_var"], full.table["laplacian_var"])
    assert small.table["jpeg_quality"].equals(full.table["jpeg_quality"])


def test_undecodable_images_are_left_out(planted, tmp_path):
    data = shutil.copytree(planted("darker"), tmp_path / "data", symlinks=True)
    bad = sorted((data / "test").iterdir())[:2]
    for p in bad:
        p.write_bytes(b"not an image")
    test = measure.measure_split(load_competition(data).test, 256, None, tmp_path)
    assert sorted(test.bad) == sorted(p.name for p in bad) and len(test.table) == test.n_images - 2


# ------------------------------------------------------------------------------------------ training hook
def _run_data(root, run_dir, *extra):
    cfg = compose_train(["data=competition", f"data.root={root}", *TINY, "shift.report=true", "folds.n=2", *extra],
                        run_dir)
    return load_run_data(start_run(cfg, CallbackList([])))


def test_training_hook_writes_the_report(planted, tmp_path):
    data = _run_data(planted("darker"), tmp_path / "run")
    assert data.fitted_profile is None  # validation.distort is the YAML profile
    report = json.loads((tmp_path / "run" / shift_report.SHIFT_JSON).read_text())
    assert report["statistics"]["brightness"]["shift"] == pytest.approx(-PLANTED_DARKER, abs=0.02)
    assert (tmp_path / "run" / shift_report.SHIFT_PNG).stat().st_size > 10_000
    assert not (tmp_path / "run" / shift_report.PROFILE_YAML).exists()

    _run_data(planted("darker"), tmp_path / "quiet", "shift.report=false")
    assert not any((tmp_path / "quiet" / f).exists() for f in (shift_report.SHIFT_JSON, shift_report.SHIFT_PNG))

    _run_data(planted("darker"), tmp_path / "small", "shift.max_images=20", "shift.work_size=128")
    small = json.loads((tmp_path / "small" / shift_report.SHIFT_JSON).read_text())
    assert small["splits"]["train"] == {"measured": 20, "images": 68, "undecodable": []} and small["work_size"] == 128
    assert report["splits"]["train"]["measured"] == 68 and report["work_size"] == 256
    lap = "laplacian_var"
    assert small["statistics"][lap]["train"]["median"] != report["statistics"][lap]["train"]["median"]


def test_shift_keys_are_checked():
    from docclassify.config_schema import ConfigError, check_config

    for bad, match in (("shift.work_size=16", "shift.work_size=16: expected a number >= 64"),
                       ("shift.max_images=0", "shift.max_images=0: expected a number >= 10")):
        cfg = compose_train([bad], Path("unused"))
        with pytest.raises(ConfigError, match=match):
            check_config(cfg)


def test_training_hook_fits_the_profile_for_distort_auto(planted, tmp_path):
    data = _run_data(planted("turned"), tmp_path / "run", "validation.distort=auto", "shift.report=false")
    profile = data.fitted_profile
    assert profile is not None and profile["rot90_p"] == pytest.approx(0.5, abs=0.2)
    saved = OmegaConf.load(tmp_path / "run" / shift_report.PROFILE_YAML)
    assert OmegaConf.to_container(saved) == profile
    assert not (tmp_path / "run" / shift_report.SHIFT_JSON).exists()  # the report itself stays off


def test_training_hook_without_test_images(planted, tmp_path):
    """A competition folder without sample_submission.csv / test/: training goes on silently,
    unless validation.distort=auto needs the test images (a DataError before any training)."""
    data = shutil.copytree(planted("darker"), tmp_path / "data", symlinks=True)
    (data / "sample_submission.csv").unlink()
    shutil.rmtree(data / "test")
    run_data = _run_data(data, tmp_path / "run")
    assert run_data.fitted_profile is None and run_data.source.test is None
    assert not (tmp_path / "run" / shift_report.SHIFT_JSON).exists()
    with pytest.raises(DataError, match="validation.distort=auto: data=competition .* has no test images"):
        _run_data(data, tmp_path / "auto", "validation.distort=auto")


# ------------------------------------------------------------------------------------------ the command
def test_shift_command_prints_table_and_writes_files(planted, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("docclassify.shift", ["data=competition", f"data.root={planted('blurred')}", f"hydra.run.dir={out}"])
    assert "| statistic | train: median [q25, q75] |" in proc.stdout and "blur_sigma:" in proc.stdout
    for name in (shift_report.SHIFT_JSON, shift_report.SHIFT_PNG, shift_report.SHIFT_CSV, shift_report.PROFILE_YAML):
        assert (out / name).is_file(), name
    profile = OmegaConf.merge(OmegaConf.structured(DistortProfile), OmegaConf.load(out / shift_report.PROFILE_YAML))
    assert profile.blur_sigma >= PLANTED_BLUR and profile.blur_p >= 0.8
    rows = pd.read_csv(out / shift_report.SHIFT_CSV)
    assert rows["split"].value_counts().to_dict() == {"train": 68, "test": 68}


def test_shift_command_refuses_data_without_test_images(planted, tmp_path):
    data = shutil.copytree(planted("darker"), tmp_path / "data", symlinks=True)
    (data / "sample_submission.csv").unlink()
    proc = run_cli("docclassify.shift", ["data=competition", f"data.root={data}", f"hydra.run.dir={tmp_path / 'a'}"],
                   check=False)
    assert proc.returncode == 2 and "has no test images" in proc.stderr and "sample_submission.csv" in proc.stderr
    assert not (tmp_path / "a").exists()  # no run dir left behind

    folder = tmp_path / "imagefolder"
    for cls in ("a", "b"):
        (folder / "train" / cls).mkdir(parents=True)
        shutil.copy(next((data / "train").glob("*.jpg")), folder / "train" / cls / "x.jpg")
    proc = run_cli("docclassify.shift", ["data=imagefolder", f"data.root={folder}", f"hydra.run.dir={tmp_path / 'b'}"],
                   check=False)
    assert proc.returncode == 2 and "a test/ folder of images" in proc.stderr and not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------ a real run
@pytest.mark.slow
def test_training_with_distort_auto(planted, tmp_path):
    """A real two-fold run on data whose test pages are turned: the run dir holds the shift report
    and the fitted profile next to results.json."""
    run_dir = tmp_path / "run"
    proc = run_cli("docclassify.train", ["data=competition", f"data.root={planted('turned')}", *TINY, "folds.n=2",
                                         "shift.report=true", "validation.distort=auto", f"hydra.run.dir={run_dir}"])
    assert "train-vs-test shift" in proc.stdout + proc.stderr
    results = json.loads((run_dir / "results.json").read_text())
    profile = OmegaConf.load(run_dir / shift_report.PROFILE_YAML)
    assert profile.rot90_p == pytest.approx(0.5, abs=0.2)
    from docclassify.distortion.profile import normalise_profile

    # the robust copies were drawn from the fitted profile, not from the default one
    fitted = OmegaConf.to_container(profile)
    assert {k: results["validation"]["profile"][k] for k in fitted} == fitted
    assert results["validation"]["profile"] != normalise_profile({})
    assert json.loads((run_dir / shift_report.SHIFT_JSON).read_text())["profile"] == OmegaConf.to_container(profile)
