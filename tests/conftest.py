"""Shared fixtures: a tiny synthetic competition data set and helpers to run training.

Training runs use timm's tiny test models, 32-48 px images and 1-2 epochs, so a whole
K-fold run takes seconds on 2 CPU cores while still exercising the real code path.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from docclassify.tracking.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import clirun  # noqa: E402 - early, to note a new interpreter's warning filters
# The checkout's hydra_plugins/ (the docclassify sweeper's config node) for in-process
# composes, as `python -m` from the repo root sees it, even if the install predates it.
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

# One intra-op thread per process: on a 2-core box a second OpenMP thread competing with
# DataLoader workers or a parallel test spins instead of working (10-100x slowdowns seen).
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
except ImportError:  # pragma: no cover
    pass


# Test modules that share an expensive session fixture: one xdist scope each, so one worker builds
# the fixture once (pytest-xdist builds a session fixture in every worker that asks for it).
SHARED_FIXTURE_SCOPES = ("tests/deploy/",)  # the `deployed` run, infer and bundle (tests/deploy/conftest.py)


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadscope`` (pyproject's addopts), except that the modules of SHARED_FIXTURE_SCOPES run
    as one scope; other --dist modes are left as they are."""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            folder = next((f for f in SHARED_FIXTURE_SCOPES if nodeid.startswith(f)), None)
            return folder or super()._split_scope(nodeid)

    return SharedFixtureScheduling(config, log)


def pytest_collection_finish(session):
    """What the commands do after their imports (tracking/phases.py, freeze_imported_objects): the
    objects of the imports (every test module's: torch, timm, pandas, ...) leave the cyclic GC's
    walks. A training run in the test process calls gc.collect once per fold
    (engine/loaders.release_freed_memory), which otherwise walks them all: ~0.3 s a call here.
    Objects made later are collected as always."""
    import gc

    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """The test session's own cache dir (DOCCLASSIFY_CACHE in every test)."""
    return tmp_path_factory.getbasetemp() / "cache"


@pytest.fixture(scope="session")
def isolated_env(cache_dir) -> dict[str, str]:
    """The environment every test runs in: the session's cache dir, W&B never online, no
    downloads. Module- and session-scoped fixtures run before the autouse fixture below sets
    it, so those that start processes pass it to run_cli(env=...) themselves."""
    # WANDB_DATA_DIR: offline runs stage their artefacts there (default ~/.local/share/wandb).
    return {"DOCCLASSIFY_CACHE": str(cache_dir), "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled"),
            "WANDB_DATA_DIR": str(cache_dir / "wandb_data"), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def _isolated_cache(isolated_env, monkeypatch):
    """Every test session gets its own cache dir; W&B never goes online from tests."""
    for key, value in isolated_env.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A 17-class competition-layout data set, 6 train images per class, 64 px long side."""
    from docclassify.data.synthetic import SyntheticSpec, generate

    root = tmp_path_factory.mktemp("tiny_data")
    generate(root, SyntheticSpec(n_train_per_class=6, n_test_per_class=1, long_side=64, seed=3,
                                 imbalance=False), progress=False)
    return root


@pytest.fixture
def data(tiny_data, tmp_path) -> Path:
    """A private copy of tiny_data (tmp_path/data) that a test may damage or rewrite."""
    return shutil.copytree(tiny_data, tmp_path / "data")


TINY = ["model=tiny", "model.pretrained=false", "data.img_size=32", "trainer.epochs=1",
        "trainer.batch_size=16", "data.num_workers=0", "logger=none",
        "submit=false",  # submit=auto would predict the test split after every tiny run: tests that submit say so
        # the quick preset's training recipe (issue 29) pinned to plain cross-entropy on upright pages,
        # 5 folds: what a test of another part assumes; tests of orientation and of the preset say so
        "augment.orientation=none", "model.orientation_head=none", "loss=ce", "folds.n=5",
        # fp32, as before the quick preset's amp=auto: tests that compare a run's logits with a forward pass
        # of its checkpoint expect the same precision; the tests of amp say trainer.amp=...
        "trainer.amp=none",
        # no train-vs-test shift report (its plot is ~0.8 s of a 2 s tiny run; validation.distort=auto still
        # measures): tests of the report, and tests that check every file a run writes, say shift.report=true
        "shift.report=false"]


class SignalAt(Callback):
    """A training callback that sends this process SIGTERM after optimiser update ``update`` of
    ``fold`` (a stop at an exact step, for the resume tests)."""

    def __init__(self, fold: int, update: int):
        self.fold, self.update = fold, update

    def on_step_end(self, fold, step, metrics):
        if (fold, step) == (self.fold, self.update):
            os.kill(os.getpid(), signal.SIGTERM)


def signal_group_when_paused(proc: subprocess.Popen, marker: Path, signum: int = signal.SIGTERM,
                             timeout: float = 180) -> None:
    """Wait until ``proc`` (started with ``start_new_session=True``) wrote ``marker`` (a test hook
    paused it mid-step: faulty_train's ``pause``, faulty_infer's ``pause``), then send ``signum`` to
    its whole process group, DataLoader workers included, as timeout, SLURM and docker stop do."""
    import time

    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before the pause")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"no pause after {timeout} s")
        time.sleep(0.02)
    os.killpg(proc.pid, signum)


def compose_train(overrides: list[str], run_dir: Path):
    """Compose conf/train.yaml like the CLI would (hydra's runtime dir set to run_dir)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from docclassify.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True)
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_cli(module: str, overrides: list[str], cwd: Path | None = None, timeout: int = 600,
            check: bool = True, env: dict | None = None, fresh: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m <module> <overrides>` as a user would; on failure show its output.

    The command runs in a child forked from this test process (clirun.forked_module: its own
    process, cwd, environment, signal handlers and exit code, but torch, timm and the package
    already imported, which is most of a tiny command's 5 s). ``fresh=True`` (or
    DOCCLASSIFY_TEST_FRESH=1) starts a new interpreter instead: for what a command's own start-up
    does (imports, --help).
    """
    import clirun

    env = {**os.environ, **(env or {})}
    if fresh or not clirun.can_fork(env):
        proc = subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd or REPO, capture_output=True,
                              text=True, timeout=timeout, env=env, check=False)
    else:
        proc = clirun.forked_module(module, overrides, cwd=cwd or REPO, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def start_cli(module: str, args: list[str], cwd: Path | None = None, env: dict | None = None, log: Path | None = None,
              new_session: bool = False, fresh: bool = False):
    """Start `python -m <module> <args>` and return at once, for a test that signals or kills the command
    while it runs: a Popen-like handle (pid, poll, wait, communicate, send_signal, kill). The command is
    a child forked from this test process, as in run_cli (``fresh=True`` or DOCCLASSIFY_TEST_FRESH=1:
    a new interpreter through subprocess.Popen). Its stdout and stderr go to ``log`` (both), else
    communicate() returns them; ``new_session``: its own process group (Popen's start_new_session),
    which its DataLoader workers join."""
    env = {**os.environ, **(env or {})}
    if not fresh and clirun.can_fork(env):
        return clirun.start_module(module, args, cwd=cwd or REPO, env=env, log=log, new_session=new_session)
    cmd = [sys.executable, "-m", module, *args]
    if log is None:
        return subprocess.Popen(cmd, cwd=cwd or REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=new_session)
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, cwd=cwd or REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=new_session)


def rerun_best_experiment(sweep, run_dir: Path):
    """Train the experiment a sweep exported for its best trial (``experiment=best`` from the sweep
    dir), check that the run used every one of the trial's params, and return (its composed config,
    its results.json). ``sweep`` has the study, sweep_dir and env of a sweep fixture."""
    import json

    from omegaconf import OmegaConf

    best = sweep.study.best_trial
    assert (sweep.sweep_dir / "experiment" / "best.yaml").is_file()
    run_cli("docclassify.train", [f"hydra.searchpath=[file://{sweep.sweep_dir}]", "experiment=best",
                                  f"hydra.run.dir={run_dir}"], env=sweep.env)
    ran = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    for key, value in best.params.items():
        assert OmegaConf.select(ran, key) == value, key
    return ran, json.loads((run_dir / "results.json").read_text())


def run_in(cwd: Path, module: str, args: list[str], env: dict | None = None,
           fresh: bool = False) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` started in ``cwd`` (this checkout still imported first), not
    checked: for commands that should fail, or whose side effects in the working dir matter."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return run_cli(module, args, cwd=cwd, check=False, env={"PYTHONPATH": path, **(env or {})}, fresh=fresh)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """DOCCLASSIFY_TEST_CPU_LOG=FILE: one JSON line per test with its CPU seconds (this process and the
    processes it waited for: forked commands, subprocesses), to aim a trim of the suite by what a
    test costs rather than its wall time on a loaded machine."""
    path = os.environ.get("DOCCLASSIFY_TEST_CPU_LOG")
    if not path:
        return (yield)
    import json
    import resource
    import time

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    start, wall = cpu(), time.perf_counter()
    try:
        return (yield)
    finally:
        with open(path, "a") as fh:
            fh.write(json.dumps({"test": item.nodeid, "cpu": round(cpu() - start, 2),
                                 "wall": round(time.perf_counter() - wall, 2)}) + "\n")
