"""distortion/profile.py: the profile's vocabulary (each key belongs to one step), the shipped
profiles (``validation.distort=synthetic_test`` by name, or a YAML path) and their errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY, compose_train
from omegaconf import OmegaConf

from docclassify.config_schema import ConfigError, DistortProfile, check_config, profile_errors
from docclassify.data.validation import robust_copies
from docclassify.distortion import STEP_KEYS, STEP_NAMES, describe, load_profile, shipped_profiles
from docclassify.distortion.copies import RobustSpec
from docclassify.engine.kfold import resolve_distort_profile


def _resolved(cfg) -> dict:
    from types import SimpleNamespace

    from docclassify.config_schema import RobustValidation
    from docclassify.engine.kfold import group_settings

    validation = group_settings(cfg, "validation", RobustValidation)
    return resolve_distort_profile(SimpleNamespace(validation=validation), SimpleNamespace(fitted_profile=None))


def test_every_profile_key_belongs_to_exactly_one_step():
    keys = [k for step_keys in STEP_KEYS.values() for k in step_keys]
    assert sorted(keys) == sorted(DistortProfile.__annotations__) and len(keys) == len(set(keys))
    assert list(STEP_KEYS) == list(STEP_NAMES)  # the steps in the order they are applied
    assert all(step_keys[0] == f"{step}_p" for step, step_keys in STEP_KEYS.items())


@pytest.mark.parametrize("name", ["synthetic_test", "phone_photo"])
def test_the_shipped_profiles_are_whole_valid_profiles(name):
    assert name in shipped_profiles()
    profile = load_profile(name)
    assert set(profile) == set(DistortProfile.__annotations__)
    assert profile_errors(OmegaConf.create(profile), name) == []
    assert describe(profile) != "no distortion"


def test_the_phone_profile_has_what_no_validation_profile_was_written_for():
    phone, default = load_profile("phone_photo"), load_profile("synthetic_test")
    for step in ("motion", "moire", "exposure", "perspective", "shadow", "glare", "desk"):
        assert phone[f"{step}_p"] > 0, step
    assert default["motion_p"] == default["moire_p"] == 0  # nor does the other test profile have them


def test_validation_distort_takes_a_shipped_name_or_a_yaml_path(tmp_path):
    by_name = compose_train([*TINY, "validation.distort=synthetic_test"], tmp_path / "a")
    check_config(by_name)
    assert _resolved(by_name) == load_profile("synthetic_test")
    own = tmp_path / "mine.yaml"
    own.write_text("rot90_p: 1.0\nflip_p: 0.0\nmotion_p: 0.5\n")
    by_path = compose_train([*TINY, f"validation.distort={own}"], tmp_path / "b")
    check_config(by_path)
    resolved = _resolved(by_path)
    assert resolved["rot90_p"] == 1.0 and resolved["motion_p"] == 0.5
    assert resolved["angle_p"] == DistortProfile().angle_p  # keys left out: the defaults


def test_a_named_profile_draws_its_own_copies(tiny_data, tmp_path):
    import pandas as pd

    train = pd.read_csv(tiny_data / "train.csv", dtype={"ID": str}).head(4)
    paths, ids = [tiny_data / "train" / i for i in train["ID"]], train["ID"].tolist()
    named = _resolved(compose_train([*TINY, "validation.distort=phone_photo"], tmp_path))
    phone = robust_copies(paths, ids, RobustSpec(named, 2, 0), 32, "pad", 0, None)
    default = robust_copies(paths, ids, RobustSpec(_resolved(compose_train(TINY, tmp_path / "d")), 2, 0), 32, "pad",
                            0, None)
    again = robust_copies(paths, ids, RobustSpec(load_profile("phone_photo"), 2, 0), 32, "pad", 0, None)
    np.testing.assert_array_equal(phone, again)
    assert not np.array_equal(phone, default)


def test_an_unknown_profile_name_is_refused_naming_the_shipped_ones(tmp_path):
    cfg = compose_train([*TINY, "validation.distort=no_such_profile"], tmp_path)
    with pytest.raises(ConfigError, match="validation.distort=no_such_profile: no shipped profile of that name and no "
                                          "such file; shipped: competition, phone_photo, synthetic_test"):
        check_config(cfg)


def test_a_bad_profile_file_is_refused_naming_the_file_and_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rot90_p: 1.5\n")
    with pytest.raises(ConfigError, match=r"validation.distort \(.*bad.yaml\).rot90_p=1.5: expected a number"):
        check_config(compose_train([*TINY, f"validation.distort={bad}"], tmp_path / "a"))
    bad.write_text("rot90: 1.0\n")
    with pytest.raises(ConfigError, match=r"bad.yaml\).*rot90"):
        check_config(compose_train([*TINY, f"validation.distort={bad}"], tmp_path / "b"))
    bad.write_text("angle_min: 30.0\nangle: 10.0\n")
    with pytest.raises(ConfigError, match=r"angle_min=30.0: must not exceed .*angle=10.0"):
        check_config(compose_train([*TINY, f"validation.distort={bad}"], tmp_path / "c"))
    bad.write_text("background_tones: [30, 300]\n")
    with pytest.raises(ConfigError, match=r"background_tones=\[30, 300\]: expected a list of values, each a number >= 0 and <= 255 \(grey levels 0-255\)"):
        load_profile(bad)
