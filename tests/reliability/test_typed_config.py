"""Typed config groups (docclassify/config_schema.py): a mistyped key or a value of the wrong
type fails while Hydra composes the config, before any data is read or anything is written."""

from __future__ import annotations

import pytest
from conftest import TINY, compose_train, run_cli
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from docclassify.engine.kfold import run_kfold


def test_mistyped_key_on_the_command_line_fails_before_any_work(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("docclassify.train", ["data=competition", f"data.root={tiny_data}", "trainer.epoch=5",
                                         f"hydra.run.dir={run_dir}"], check=False)
    assert proc.returncode == 1
    assert "Key 'epoch' not in 'TrainerConfig'" in proc.stderr and "full_key: trainer.epoch" in proc.stderr
    assert not run_dir.exists()  # Hydra stopped at composition: no run dir, no cache, no training


@pytest.mark.parametrize("override,message", [
    ("trainer.epochs=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    ("trainer.lr=fast", "could not be converted to Float"),
    ("trainer.deterministic=maybe", "Value 'maybe' is not a valid bool"),
    ("folds.n=x", "could not be converted to Integer"),
    ("data.num_workers=two", "could not be converted to Integer"),
    ("folds.k=3", "Key 'k' not in 'FoldsConfig'"),
    ("logger.project=x", "Key 'project' not in 'NoLogger'"),
])
def test_wrong_key_or_type_fails_at_compose(tmp_path, override, message):
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)) as err:
        compose_train([override], tmp_path)
    assert message in _text(err)


def _text(err) -> str:
    return f"{err.value}\n{err.value.__cause__}"


def test_key_added_with_plus_fails_before_any_work(tiny_data, tmp_path):
    """`+trainer.epoch=5` composes (Hydra adds the key on request) but nothing would read it."""
    cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY, "+trainer.epoch=5"], tmp_path)
    with pytest.raises(ValueError, match=r"trainer.epoch: not a key of TrainerConfig"):
        run_kfold(cfg)
    assert list(tmp_path.iterdir()) == []


def test_each_data_source_has_its_own_keys(tmp_path):
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(["data=synthetic", "data.train_csv=x.csv"], tmp_path)
    assert "Key 'train_csv' not in 'SyntheticData'" in _text(err)
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(["data=competition", "data.root=/x", "data.n_train_per_class=3"], tmp_path)
    assert "Key 'n_train_per_class' not in 'CompetitionData'" in _text(err)
    cfg = compose_train(["data=imagefolder", "data.root=/x", "data.img_size=64"], tmp_path)
    assert cfg.data.img_size == 64 and cfg.data.on_bad_image == "error"


def test_typo_inside_a_yaml_file_fails_too(tmp_path):
    """Plain struct mode only guards the command line; the schema also catches a YAML preset."""
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "typo.yaml").write_text("# @package _global_\ntrainer:\n  epoch: 5\n")
    with pytest.raises(ConfigCompositionException) as err:
        compose_train([f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "experiment=typo"], tmp_path)
    assert "Key 'epoch' not in 'TrainerConfig'" in _text(err) and "experiment/typo" in _text(err)


def test_presets_and_typical_overrides_keep_their_types(tmp_path):
    cfg = compose_train(["pipeline=highperf", "logger=wandb", "logger.tags=[a,b]", "folds.run=[0,1]",
                         "trainer.grad_clip=2", "trainer.eval_batch_size=null", "data.img_size=48"], tmp_path)
    assert cfg.trainer.grad_clip == 2.0 and isinstance(cfg.trainer.grad_clip, float)
    assert list(cfg.folds.run) == [0, 1] and list(cfg.logger.tags) == ["a", "b"]
    assert cfg.trainer.epochs == 30 and cfg.data.img_size == 48
    assert isinstance(cfg.trainer.lr, float) and isinstance(cfg.schedule.warmup_epochs, int)  # resolved


def test_bad_choice_fails_before_any_work(tiny_data, tmp_path):
    cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY, "data.on_bad_image=skipp"], tmp_path)
    with pytest.raises(ValueError, match=r"data.on_bad_image='skipp': expected one of error, skip"):
        run_kfold(cfg)
    assert list(tmp_path.iterdir()) == []
