"""No secret in any saved config or W&B: a sweep's storage URL password is masked everywhere it is
written, while every trial still connects to its study with the real URL.

The end-to-end sweep uses a storage that really needs the password: a SQLAlchemy dialect
(``sqlite+pwcheck://``, registered through a ``sitecustomize`` on the trial process's path)
that refuses any connection whose password is not PWCHECK_PASSWORD, over a sqlite file.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from conftest import TINY, compose_train, run_cli
from omegaconf import OmegaConf

from docclassify.utils.redact import (
    RedactHydraFiles,
    has_password,
    is_redacted,
    redact,
    redact_config,
)

PASSWORD = "s3cret-Pw_9"
URL = f"postgresql://optuna_user:{PASSWORD}@db.example.org:5432/optuna"
MASKED = "postgresql://optuna_user:***@db.example.org:5432/optuna"


def test_redact_masks_only_the_password():
    assert redact(URL) == MASKED and is_redacted(MASKED) and not has_password(MASKED)
    assert has_password(URL) and not is_redacted(URL)
    for text in ("sqlite:////tmp/a.db", "postgresql://user@host/db", "https://host:8080/x", "a:b@c"):
        assert redact(text) == text and not has_password(text)
    assert redact(f"storage='{URL}' and mysql://u:p@h/d") == f"storage='{MASKED}' and mysql://u:***@h/d"
    assert redact_config({"a": [URL, 1, None], "b": {"c": URL}}) == {"a": [MASKED, 1, None], "b": {"c": MASKED}}


def test_trial_gets_a_masked_url_and_connects_with_its_sweepers(monkeypatch, caplog):
    from hydra.core.hydra_config import HydraConfig

    from docclassify.sweep import trial as trial_mod
    from docclassify.sweep.study import trial_overrides

    (storage_override,) = [o for o in trial_overrides("s", 3, URL) if o.startswith("++hparams_search.trial.storage")]
    assert PASSWORD not in storage_override and MASKED in storage_override
    cfg = OmegaConf.create({"hparams_search": {"trial": {"study": "s", "number": 3, "storage": MASKED}}})
    # The job's own hydra.sweeper.storage holds the real URL: the trial connects with it.
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: OmegaConf.create({"sweeper": {"storage": URL}})))
    assert trial_mod.trial_info(cfg).storage == URL
    # Another URL, or none (a trial's run resumed on its own): no connection, a warning.
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: OmegaConf.create({"sweeper": {"storage": None}})))
    with caplog.at_level(logging.WARNING):
        assert trial_mod.trial_info(cfg).storage is None
    assert "masked" in caplog.text and PASSWORD not in caplog.text
    plain = OmegaConf.create({"hparams_search": {"trial": {"study": "s", "number": 3, "storage": "sqlite:///x.db"}}})
    assert trial_mod.trial_info(plain).storage == "sqlite:///x.db"


def test_saved_configs_and_wandb_config_are_masked(tiny_data, tmp_path, monkeypatch):
    """run_config.yaml, run_overrides.yaml, experiment.yaml, Hydra's .hydra files, W&B config/argv."""
    import wandb

    from docclassify.config import plain_config
    from docclassify.engine.resume import check_resume_compatible, save_overrides
    from docclassify.sweep.experiment_yaml import experiment_yaml
    from docclassify.tracking.wandb_tracker import WandbTracker

    overrides = ["data=competition", f"data.root={tiny_data}", *[o for o in TINY if not o.startswith("logger=")],
                 "logger=wandb", "logger.mode=offline", f"++hparams_search.trial.storage='{URL}'",
                 "++hparams_search.trial.study=s", "++hparams_search.trial.number=0"]
    cfg = compose_train(overrides, tmp_path)
    assert cfg.hparams_search.trial.storage == URL  # given unmasked (not by the sweeper)
    assert plain_config(cfg)["hparams_search"]["trial"]["storage"] == MASKED
    check_resume_compatible(tmp_path, cfg)
    save_overrides(tmp_path)
    (tmp_path / "experiment.yaml").write_text(experiment_yaml(cfg, {"model": "tiny"}, "x", f"note {URL}"))
    hydra_dir = tmp_path / ".hydra"
    hydra_dir.mkdir()
    (hydra_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    RedactHydraFiles().on_job_start(config=cfg)
    for name in ("run_config.yaml", "run_overrides.yaml", "experiment.yaml", ".hydra/overrides.yaml"):
        text = (tmp_path / name).read_text()
        assert PASSWORD not in text and "***" in text, name

    seen = {}
    monkeypatch.setattr(wandb, "init", lambda **kw: seen.update(kw, argv=list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["train.py", f"hydra.sweeper.storage={URL}"])
    tracker = WandbTracker(cfg, tmp_path)
    tracker._init("fold0", "fold0", {}, [])
    assert PASSWORD not in repr(seen) and seen["config"]["hparams_search"]["trial"]["storage"] == MASKED
    assert sys.argv[1] == f"hydra.sweeper.storage={URL}"  # restored after wandb.init


SITECUSTOMIZE = '''
from sqlalchemy.dialects import registry
registry.register("sqlite.pwcheck", "pwcheck_sqlite", "PasswordSQLite")
'''
DIALECT = '''
import os
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite


class PasswordSQLite(SQLiteDialect_pysqlite):
    """sqlite that refuses connections without the right password (as a database server would)."""

    supports_statement_cache = True

    def create_connect_args(self, url):
        if url.password != os.environ["PWCHECK_PASSWORD"]:
            raise PermissionError(f"password authentication failed for user {url.username!r}")
        return super().create_connect_args(url._replace(username=None, password=None, host=None))
'''


@pytest.mark.slow
def test_sweep_with_a_password_storage_saves_and_logs_no_password(tiny_data, tmp_path, monkeypatch):
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    (plugin / "pwcheck_sqlite.py").write_text(textwrap.dedent(DIALECT))
    storage = f"sqlite+pwcheck://optuna_user:{PASSWORD}@localhost/{tmp_path / 'study.db'}"
    sweep_dir, wandb_dir = tmp_path / "sweep", tmp_path / "wandb_home"
    env = {"PYTHONPATH": f"{plugin}:{Path(__file__).resolve().parents[1]}", "PWCHECK_PASSWORD": PASSWORD,
           "WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_API_KEY": "",
           "WANDB_DATA_DIR": str(tmp_path / "wandb_data")}
    proc = run_cli("docclassify.train", [
        "-m", "hparams_search=optuna_single_fold", "data=competition", f"data.root={tiny_data}",
        *[o for o in TINY if not o.startswith("logger=")], "logger=wandb", "folds.n=2",
        "shift.report=true",  # every file a trial writes is searched for the password below
        "trainer.lr=tag(log, interval(3e-3, 3e-2))", "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=pw_study", f"hydra.sweep.dir={sweep_dir}",
    ], env=env)

    # The trials connected with the real password: each reported its epochs to its trial.
    monkeypatch.syspath_prepend(str(plugin))
    monkeypatch.setenv("PWCHECK_PASSWORD", PASSWORD)
    from sqlalchemy.dialects import registry

    registry.register("sqlite.pwcheck", "pwcheck_sqlite", "PasswordSQLite")
    trials = optuna.load_study(study_name="pw_study", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(t.intermediate_values for t in trials)

    # Not one file of the sweep (configs, logs, trials.csv, W&B runs) holds the password.
    files = [p for root in (sweep_dir, wandb_dir) for p in root.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"config.yaml", "hydra.yaml", "overrides.yaml", "run_config.yaml", "run_overrides.yaml",
            "experiment.yaml", "trials.csv"} <= names and any(n.endswith(".wandb") for n in names)
    leaks = [str(p) for p in files if PASSWORD.encode() in p.read_bytes()]
    assert leaks == []
    assert "optuna_user:***@localhost" in (sweep_dir / "0" / ".hydra" / "overrides.yaml").read_text()
    assert PASSWORD not in proc.stdout.replace(storage, "")  # only the command line itself had it
