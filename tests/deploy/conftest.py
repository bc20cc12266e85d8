"""Fixtures of the deployment tests: one tiny trained run with an orientation head, the infer command on it
(tta=none) and its bundle, made once per test process and shared (read-only) by every test here."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, TINY, run_cli

# Training with an orientation head (so bundles carry its second output), quarter turns and mirrors.
RUN = [*TINY, "folds.n=2", "model.orientation_head=dihedral8", "augment.orientation=dihedral"]


@dataclass
class Deployed:
    data: Path          # the competition-layout data the run trained on
    run: Path           # its training run dir
    infer: Path         # `python -m docclassify.infer runs=[run] tta=none`
    bundle: Path        # `python -m docclassify.export runs=[run] exporter=torchscript`
    env: dict

    def test_paths(self, n: int | None = None) -> list[str]:
        frame = pd.read_csv(self.data / "sample_submission.csv", dtype={"ID": str})
        ids = frame["ID"].tolist()[:n]
        return [str(self.data / "test" / i) for i in ids]

    def infer_probs(self, n: int | None = None):
        """infer's test_probs.csv rows of the first ``n`` test images (class order of the run)."""
        probs = pd.read_csv(self.infer / "test_probs.csv", dtype={"ID": str}).set_index("ID")
        ids = [Path(p).name for p in self.test_paths(n)]
        return probs.loc[ids].to_numpy(float), list(probs.columns)


@pytest.fixture(scope="session")
def deployed(tmp_path_factory, isolated_env) -> Deployed:
    from docclassify.data.synthetic import SyntheticSpec, generate

    root = tmp_path_factory.mktemp("deployed")
    tiny_data = root / "data"  # tiny_data's recipe with 2 test images per class: 34, for 20-image checks
    generate(tiny_data, SyntheticSpec(n_train_per_class=6, n_test_per_class=2, long_side=64, seed=3,
                                      imbalance=False), progress=False)
    env = dict(isolated_env)
    run = root / "run"
    run_cli("docclassify.train", ["data=competition", f"data.root={tiny_data}", *RUN, f"hydra.run.dir={run}"],
            env=env)
    infer = root / "infer"
    run_cli("docclassify.infer", [f"runs=[{run}]", "tta=none", "calibrate=true", f"hydra.run.dir={infer}"], env=env)
    bundle = root / "bundle"
    run_cli("docclassify.export", [f"runs=[{run}]", "exporter=torchscript", "tta=none", "calibrate=true",
                                   f"output={bundle}",
                                   f"hydra.run.dir={root / 'export'}"], env=env)
    keep = os.environ.get("DOCCLASSIFY_KEEP_BUNDLE")  # .ci/run predicts this bundle in a torch-free venv
    if keep and not Path(keep).exists():  # the first test process to get here (pytest-xdist runs two)
        import shutil

        staging = Path(f"{keep}.{os.getpid()}")
        shutil.copytree(bundle, staging / "bundle")
        shutil.copytree(tiny_data / "test", staging / "images")
        try:
            os.rename(staging, keep)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return Deployed(tiny_data, run, infer, bundle, env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real `docclassify-serve` process on 127.0.0.1 (stopped by its own handle)."""

    def __init__(self, bundle: Path, env: dict, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(bundle).parent / f"serve_{self.port}.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "docclassify.deploy.serve", f"bundle={bundle}",
                                      f"port={self.port}", "log_level=warning", "threads=1", *args], cwd=REPO,
                                     stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **env})

    def wait(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited ({self.proc.returncode}): "
                                     f"{Path(self.log.name).read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("the server did not answer /health in time")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def server_class():
    """:class:`Server` (test modules cannot import this conftest by name)."""
    return Server


def export_here(overrides: list[str], run_dir: Path) -> dict:
    """`python -m docclassify.export <overrides>` in this process (the same compose and code, no start-up
    of a new interpreter); a refusal raises its UserError. Returns the bundle's spec."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from docclassify.config import CONF_DIR
    from docclassify.export import export

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("export", overrides=[*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return export(cfg, run_dir)


@pytest.fixture(scope="session")
def exporter():
    """:func:`export_here` (test modules cannot import this conftest by name)."""
    return export_here
