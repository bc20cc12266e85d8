"""Generate docs/configuration.md from the comments in conf/ (run after changing a config).

    python docs/gen_config_reference.py > docs/configuration.md

The meaning of a key comes from its YAML comment; a key that takes one of a fixed set of strings gets
its allowed values from the schema (docclassify/config_schema.py, whose ``choices`` are the
declarations of docclassify/utils/choices.py), not from the comment.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from docclassify import config_schema

CONF = Path(__file__).resolve().parents[1] / "docclassify" / "conf"
KEY = re.compile(r"^(\s*)([A-Za-z_][\w]*):\s*(.*)$")
# A YAML option's schema (`- /schema/trainer/default@_here_`), or the option of its group it extends (`- basic`).
SCHEMA_DEFAULT = re.compile(r"^\s*-\s*/schema/([\w/]+)@_here_\s*$")
BASE_DEFAULT = re.compile(r"^\s*-\s*(\w+)\s*$")

INTRO = """# Configuration reference

Generated from the comments in `conf/` by `python docs/gen_config_reference.py`.
Select an option of a group with `group=option` and override any key with `group.key=value`, e.g.

    python -m docclassify.train data=competition data.root=/data model=convnext_atto trainer.epochs=20

The primary configs are `conf/train.yaml` (training), `conf/infer.yaml` (inference),
`conf/shift.yaml` (the train-vs-test shift report), `conf/export.yaml` (runs -> a bundle) and
`conf/distill.yaml` (a student on a teacher ensemble; its groups are train's). Presets
(`pipeline/`, `experiment/`) are `@package _global_` files that select options of other groups and
set their keys; command-line overrides win over them.
"""


def describe(path: Path) -> tuple[str, list[tuple[str, str, str]]]:
    """(file comment, [(dotted key, value, comment)]) of one YAML file."""
    lines = path.read_text().splitlines()
    header, rows, pending, stack = [], [], [], []
    seen_key = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if text.startswith("@package"):
                continue
            (pending if seen_key or rows else header).append(text)
            continue
        m = KEY.match(line)
        if not m or stripped.startswith("-"):
            pending = [] if not stripped else pending
            continue
        indent, key, value = len(m.group(1)), m.group(2), m.group(3)
        if key == "defaults" and indent == 0:
            stack = [(0, "defaults")]
            seen_key = True
            pending = []
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        if not dotted.startswith("defaults"):
            if value and not value.startswith("#"):
                rows.append((dotted, value.split(" #")[0].strip(), " ".join(pending)))
            elif not value:
                rows.append((dotted, "", " ".join(pending)))
        stack.append((indent, key))
        pending, seen_key = [], True
    return " ".join(header), rows


def schema_of(path: Path):
    """The schema dataclass a YAML file is merged into (None: a preset, or a file without one)."""
    for line in path.read_text().splitlines():
        m = SCHEMA_DEFAULT.match(line)
        if m:
            parts = m.group(1).split("/")
            return config_schema.PRIMARY[parts[0]] if len(parts) == 1 else config_schema.SCHEMAS[tuple(parts)]
        m = BASE_DEFAULT.match(line)
        if m and path.parent != CONF and (path.parent / f"{m.group(1)}.yaml").is_file():
            return schema_of(path.parent / f"{m.group(1)}.yaml")
    return None


def choices_of(schema, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Dotted key -> allowed values, for the schema's fields (and its typed sub-nodes') with 2+ choices."""
    found = {}
    for f in dataclasses.fields(schema) if schema is not None else ():
        if len(f.metadata.get("choices", ())) >= 2:
            found[prefix + f.name] = f.metadata["choices"]
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if dataclasses.is_dataclass(default):
                found.update(choices_of(type(default), f"{prefix}{f.name}."))
    return found


def main() -> None:
    print(INTRO)
    for primary in ("train.yaml", "infer.yaml", "shift.yaml", "export.yaml", "distill.yaml"):
        if (CONF / primary).is_file():
            _print_file(f"`conf/{primary}`", CONF / primary, level="##")
    for group in sorted(p for p in CONF.iterdir() if p.is_dir()):
        print(f"## Group `{group.name}`\n")
        options = sorted(group.glob("*.yaml"))
        # A key documented in one option of the group documents it in the others too; not across
        # experiments: each one's comments say where its own recipe's values came from.
        known = {key: comment for opt in options for key, _, comment in describe(opt)[1] if comment}
        known = {} if group.name == "experiment" else known
        for option in options:
            _print_file(f"`{group.name}={option.stem}`", option, level="###", known=known)


def _print_file(title: str, path: Path, level: str, known: dict | None = None) -> None:
    header, rows = describe(path)
    allowed = choices_of(schema_of(path))
    rows = [(k, v, _with_choices(c or (known or {}).get(k, ""), allowed.get(k)).replace("|", "\\|"))
            for k, v, c in rows]
    print(f"{level} {title}\n")
    if header:
        print(header + "\n")
    if rows:
        print("| key | default | meaning |\n| --- | --- | --- |")
        for key, value, comment in rows:
            print(f"| `{key}` | `{value}` | {comment} |" if value else f"| `{key}` | | {comment} |")
        print()


def _with_choices(comment: str, choices: tuple[str, ...] | None) -> str:
    if not choices:
        return comment
    return (comment + " " if comment else "") + "One of: " + ", ".join(f"`{c}`" for c in choices) + "."


if __name__ == "__main__":
    main()
