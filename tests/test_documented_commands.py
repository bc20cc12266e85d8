"""Every `python -m docclassify.train|infer` (and `docclassify-train|infer`) command in README.md and
docs/*.md composes and passes check_config, so the documentation never shows a command that the
config refuses. The troubleshooting page's deliberate mistakes must fail instead.

Commands are read from the fenced code blocks (continuation lines joined, comments dropped).
Placeholders a reader fills in (`<sweep dir>`, `$RUN`, `...`) make a command skip; sweep syntax of
`-m` commands (choice, range, interval, tag, comma lists) is left to the sweeper and not composed."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import REPO, compose_train

from docclassify.config_schema import ConfigError, check_config

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND = re.compile(r"(?:python -m docclassify\.|docclassify-)(train|infer)(?=\s|$)(.*)")
SWEEP = re.compile(r"^[\w.]+=(choice|range|interval|tag)\(|^[\w.]+=\[[^\]]*\],\[")
# Shown on purpose as mistakes (docs/troubleshooting.md): each must be refused.
MISTAKES = {"trainer.epoch=5", "trainer.epochs=abc", "trainer.lr=-1"}
# Examples built on a file the reader makes first (a copied best.yaml).
NEEDS_USER_FILE = {"experiment=atto_tuned"}


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, entrypoint, overrides) of every documented command."""
    found = []
    for path in DOCS:
        for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), flags=re.S):
            for number, line in enumerate(re.sub(r"\\\n\s*", " ", block).splitlines()):
                match = None if line.lstrip().startswith("#") else COMMAND.search(line)
                if match is None:
                    continue
                entry, rest = match.groups()
                try:
                    words = shlex.split(rest, comments=True)
                except ValueError:  # an unbalanced quote: not a whole command
                    continue
                found.append((f"{path.relative_to(REPO)}:{entry}:{number}", entry, words))
    return found


def _usable(words: list[str]) -> bool:
    text = " ".join(words)
    return not any(mark in text for mark in ("...", "$", "<", "`")) and "-sc" not in words and \
        not NEEDS_USER_FILE & set(words)


CASES = [pytest.param(entry, words, id=where) for where, entry, words in documented_commands() if _usable(words)]


def _compose(entry: str, overrides: list[str], run_dir: Path):
    if entry == "train":
        return compose_train(overrides, run_dir)
    from hydra import compose, initialize_config_dir

    from docclassify.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("infer", overrides=overrides)


def test_the_docs_show_enough_commands_to_mean_something():
    assert len(CASES) >= 50 and {p.values[0] for p in CASES} == {"train", "infer"}


@pytest.mark.parametrize("entry,words", CASES)
def test_documented_command_composes_and_passes_the_checks(entry, words, tmp_path):
    from docclassify.config import foreign_group_errors

    if any(w.startswith("hydra/launcher=submitit") for w in words):  # the [slurm] extra's plugin
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    overrides = [w for w in words if w != "-m" and not SWEEP.match(w)]
    assert all(not w.startswith("-") for w in overrides), f"unexpected flag in {overrides}"
    mistakes = MISTAKES & set(overrides) or set(foreign_group_errors(entry, overrides))
    if mistakes:
        with pytest.raises(Exception):  # noqa: B017 - Hydra's compose error or a ConfigError
            check_config(_compose(entry, overrides, tmp_path / "run"))
        return
    try:
        check_config(_compose(entry, overrides, tmp_path / "run"))
    except ConfigError as exc:
        pytest.fail(f"{entry} {' '.join(words)}: {exc}")
