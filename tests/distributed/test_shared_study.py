"""Two sweep processes at once on one PostgreSQL-backed Optuna study (as on two machines).

Needs a PostgreSQL server: `.ci/postgres.sh` starts one (CI runs it); the URL comes from
DOCCLASSIFY_TEST_PG_URL. Skipped, with the reason, when psycopg2 or the server is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import optuna
import pytest
from conftest import REPO
from optuna.trial import TrialState

# Two sweep processes train trials; also in the modern-Optuna smoke subset (.ci/run).
pytestmark = [pytest.mark.slow, pytest.mark.optuna_stack]

BASE_URL = os.environ.get("DOCCLASSIFY_TEST_PG_URL", "postgresql://docclassify:docclassify@127.0.0.1:5432/optuna")
# One PostgreSQL schema per Optuna stack: a storage's tables belong to the Optuna version that made
# them (docs/tuning.md#two-optuna-stacks), and CI runs this test on the default stack, then on the
# modern one, against the same database.
SCHEMA = f"optuna_v{optuna.__version__.split('.')[0]}"
PG_URL = f"{BASE_URL}?options=-csearch_path%3D{SCHEMA}"


def _server_or_skip(url: str) -> None:
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 missing (pip install '.[postgres]')")
    try:
        conn = psycopg2.connect(url, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at {url.split('@')[-1]} (start one with .ci/postgres.sh): "
                    f"{str(exc).strip().splitlines()[0]}")
    with conn, conn.cursor() as cur:  # the role owns the database (.ci/postgres.sh): it may add schemas
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    conn.close()


def _sweep(data, sweep_dir, study_name: str, n_trials: int) -> subprocess.Popen:
    """One `docclassify.train -m hparams_search=optuna_single_fold` process on the shared study."""
    args = ["-m", "hparams_search=optuna_single_fold", "data=competition", f"data.root={data}", "model=tiny",
            "model.pretrained=false", "data.num_workers=0", "trainer.epochs=1", "folds.n=2", "logger=none",
            "data.img_size=32", "trainer.lr=tag(log, interval(3e-3, 3e-2))",
            f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.storage='{PG_URL}'",
            f"hydra.sweeper.study_name={study_name}", f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.Popen([sys.executable, "-m", "docclassify.train", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))


def test_two_sweep_processes_share_one_postgres_study(tiny_data, tmp_path):
    _server_or_skip(BASE_URL)
    name = f"test_shared_{uuid.uuid4().hex[:10]}"
    # The recipe of docs/scaling.md: create the study once, then start the workers.
    optuna.create_study(study_name=name, storage=PG_URL, direction="maximize")
    try:
        procs = [_sweep(tiny_data, tmp_path / f"machine{i}", name, n_trials=2) for i in (0, 1)]
        outputs = [p.communicate(timeout=600)[0] for p in procs]
        for p, out in zip(procs, outputs):
            assert p.returncode == 0, out[-6000:]

        trials = optuna.load_study(study_name=name, storage=PG_URL).trials
        assert len(trials) == 2 + 2 and [t.state for t in trials] == [TrialState.COMPLETE] * 4
        assert sorted(t.number for t in trials) == [0, 1, 2, 3]
        # Each process ran its own two trials (trial dirs are named by the trial's number).
        dirs = [{int(d.name) for d in (tmp_path / f"machine{i}").iterdir() if d.name.isdigit()} for i in (0, 1)]
        assert len(dirs[0]) == len(dirs[1]) == 2 and dirs[0] | dirs[1] == {0, 1, 2, 3}
        for t in trials:
            machine = 0 if t.number in dirs[0] else 1
            assert (tmp_path / f"machine{machine}" / str(t.number) / "results.json").is_file()
    finally:
        optuna.delete_study(study_name=name, storage=PG_URL)
