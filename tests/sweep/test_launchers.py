"""Hydra's joblib launcher (hydra-joblib-launcher, the dev/joblib extra): jobs run in loky
processes, whose loader workers cannot fork-share what the job holds; the decode cache's
memory map and the augmentation's shared epoch counter used to fail to pickle there
(``TypeError: cannot pickle 'mmap.mmap' object``)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from conftest import run_cli


def test_the_decode_cache_map_pickles_as_its_file(tmp_path):
    from docclassify.data.cache import MappedArray, open_mapped

    path = tmp_path / "a.npy"
    np.save(path, np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3))
    arr = open_mapped(path)
    blob = pickle.dumps(arr)
    assert len(blob) < 400  # the file's name, not its bytes
    back = pickle.loads(blob)
    assert isinstance(back, MappedArray) and np.array_equal(back, arr) and not back.flags.writeable
    view = pickle.loads(pickle.dumps(arr[1:]))  # a slice pickles its values
    assert np.array_equal(view, arr[1:])


def test_loader_workers_under_loky_are_forked():
    from joblib import Parallel, delayed

    def context_of_a_job():
        from docclassify.engine.loaders import worker_context

        ctx = worker_context()
        return None if ctx is None else ctx.get_start_method()

    # loky processes (two jobs, so joblib does not run them in this process)
    assert set(Parallel(n_jobs=2, backend="loky")(delayed(context_of_a_job)() for _ in range(2))) == {"fork"}


@pytest.mark.slow
def test_joblib_launcher_runs_two_jobs_with_default_loader_settings(tiny_data, tmp_path, isolated_env):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[joblib]'")
    sweep_dir = tmp_path / "sweep"
    # job 0: the default loader settings (data.num_workers=null: this job's share of the cores);
    # job 1: one loader worker, started inside the loky process
    proc = run_cli("docclassify.train", [
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "data.num_workers=null,1", "data=competition",
        f"data.root={tiny_data}", "model=tiny", "model.pretrained=false", "data.img_size=32", "trainer.epochs=1",
        "folds.n=2", "folds.run=[0]", "validation=clean", "logger=none", f"hydra.sweep.dir={sweep_dir}"],
        env=isolated_env)
    for job in ("0", "1"):
        results = json.loads((sweep_dir / job / "results.json").read_text())
        assert results["folds_run"] == [0] and 0.0 <= results["cv_macro_f1"] <= 1.0
    log = proc.stdout + proc.stderr
    assert "cannot pickle" not in log and "threads: " in log
