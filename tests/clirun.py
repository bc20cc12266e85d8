"""`python -m <module> ...` for the tests, in a child forked from the test process.

A tiny training command spends ~5 s importing torch, timm, scikit-learn and the package and ~0.2 s
training; the suite runs a few hundred of them. A forked child starts with those imports done
and is still its own process: its own cwd, environment, argv, signal handlers, atexit hooks,
stdout/stderr (captured to files) and exit code, and nothing it changes reaches the test
process. What a fork cannot give, and where run_cli(fresh=True) starts a new interpreter
instead: a command's own start-up (which modules it imports, --help speed), interpreter flags or
hash seeds set through the environment, and a test process whose torch already runs more than
one intra-op thread (an OpenMP pool does not survive a fork).

forked_module waits for the command (run_cli); start_module returns a Popen-like handle at once
(conftest.start_cli), for tests that signal or kill the command mid-run, its own process group
included (new_session: its DataLoader workers are in that group, as under Popen's start_new_session).
"""

from __future__ import annotations

import atexit
import io
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

# The warning filters of a new interpreter (this module is imported before pytest adds its own).
_START_FILTERS = list(warnings.filters)
# Set in the environment, these change how an interpreter starts: a fork cannot honour them.
_START_ONLY = ("PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONDEVMODE", "PYTHONMALLOC", "PYTHONFAULTHANDLER",
               "PYTHONOPTIMIZE", "PYTHONTRACEMALLOC", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Imported once per test process before the first fork: what every command imports anyway.
_PRELOAD = ("torch", "timm", "sklearn.metrics", "albumentations", "pandas", "hydra", "docclassify.train",
            "docclassify.infer", "docclassify.engine.kfold", "docclassify.predict.pipeline")
_preloaded = False


def can_fork(env: dict) -> bool:
    if os.environ.get("DOCCLASSIFY_TEST_FRESH") == "1" or not hasattr(os, "fork"):
        return False
    if any(env.get(k) != os.environ.get(k) for k in _START_ONLY):
        return False
    if any((Path(p) / hook).exists() for p in _new_path_entries(env) for hook in ("sitecustomize.py", "usercustomize.py")):
        return False  # run at a new interpreter's start only
    if "torch" in sys.modules and sys.modules["torch"].get_num_threads() > 1:
        return False  # a forked OpenMP pool deadlocks the child
    return True


def _new_path_entries(env: dict) -> list[str]:
    """PYTHONPATH entries of ``env`` that this process's sys.path lacks."""
    return [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]


def _fresh_package_state() -> None:
    """What the package keeps per process, as a new interpreter has it: the decode-cache handles,
    the start-up phase clock, memoised reads. The test process may have filled them in-process."""
    import time

    for name, mod in list(sys.modules.items()):
        if name == "docclassify" or name.startswith("docclassify."):
            for value in list(vars(mod).values()):
                if callable(getattr(value, "cache_clear", None)) and hasattr(value, "cache_info"):
                    value.cache_clear()
    cache = sys.modules.get("docclassify.data.cache")
    if cache is not None:
        for registry in (cache._OPEN, cache._DIGESTS, cache._UNWRITABLE):
            registry.clear()
    phases = sys.modules.get("docclassify.tracking.phases")
    if phases is not None:
        phases._marks.clear()
        phases._T0, phases._frozen = time.perf_counter(), False
    distributed = sys.modules.get("docclassify.engine.distributed")
    if distributed is not None:
        distributed._owes_run_dir = False
    share = sys.modules.get("docclassify.engine.share")
    if share is not None:
        share._ACTIVE = None


def _preload() -> None:
    global _preloaded
    if not _preloaded:
        import importlib

        for name in _PRELOAD:
            importlib.import_module(name)
        _preloaded = True


def forked_module(module: str, args: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    _preload()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush(), sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            _child(module, args, cwd, env, out.fileno(), err.fileno())
        code = _wait(pid, timeout, [module, *args])
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess([sys.executable, "-m", module, *args], code,
                                           out.read().decode(errors="replace"), err.read().decode(errors="replace"))


class ForkedProcess:
    """A started command (start_module): the part of subprocess.Popen's interface the tests use."""

    def __init__(self, pid: int, args: list[str], out, err):
        self.pid, self.args, self.returncode = pid, args, None
        self._out, self._err = out, err  # temp files the child writes (None: the caller's own file)

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.01)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str | None, str | None]:
        self.wait(timeout)
        return tuple(self._read(f) for f in (self._out, self._err))

    @staticmethod
    def _read(fh) -> str | None:
        if fh is None:
            return None
        fh.seek(0)
        text = fh.read().decode(errors="replace")
        fh.close()
        return text

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start_module(module: str, args: list[str], cwd: Path, env: dict, log: Path | None = None,
                 new_session: bool = False) -> ForkedProcess:
    """forked_module without waiting: the child runs `python -m <module> <args>` and this returns at
    once. Its stdout and stderr go to ``log`` (both), else to temp files that communicate() reads;
    ``new_session``: the child leads a new session and process group (Popen's start_new_session),
    for a test that signals the whole group."""
    _preload()
    if log is not None:
        out = err = None
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        fds = (fd, fd)
    else:
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115 - read by communicate()
        fds = (out.fileno(), err.fileno())
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        if new_session:
            os.setsid()
        _child(module, args, cwd, env, *fds)
    if log is not None:
        os.close(fds[0])
    return ForkedProcess(pid, [sys.executable, "-m", module, *args], out, err)


def _wait(pid: int, timeout: float, cmd: list[str]) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise subprocess.TimeoutExpired(cmd, timeout)
        time.sleep(0.01)


def _child(module: str, args: list[str], cwd: Path, env: dict, out_fd: int, err_fd: int) -> None:
    code = 1
    try:
        import gc

        gc.freeze()  # the test process's objects: not the command's to collect (and not copied on write)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), line_buffering=True)  # noqa: SIM115
        sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), line_buffering=True)  # noqa: SIM115
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        atexit._clear()  # the test process's hooks are not the command's
        warnings.filters[:] = _START_FILTERS
        import logging

        logging.root.handlers.clear()  # pytest's capture handlers
        os.chdir(cwd)
        sys.path[:0] = [str(cwd), *_new_path_entries(env)]  # as `python -m` puts them first
        os.environ.clear()
        os.environ.update(env)
        _fresh_package_state()
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.hydra_config import HydraConfig

        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        sys.modules.pop(module, None)  # run as __main__, as `python -m` does, not the imported copy
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, int) and stop.code is not None:
            print(stop.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - what the interpreter would print
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
