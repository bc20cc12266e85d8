"""Generate docs/configuration.md from the comments in conf/ (run after changing a config).

    python docs/gen_config_reference.py > docs/configuration.md
"""

from __future__ import annotations

import re
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "docclassify" / "conf"
KEY = re.compile(r"^(\s*)([A-Za-z_][\w]*):\s*(.*)$")

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
    rows = [(k, v, (c or (known or {}).get(k, "")).replace("|", "\\|")) for k, v, c in rows]
    print(f"{level} {title}\n")
    if header:
        print(header + "\n")
    if rows:
        print("| key | default | meaning |\n| --- | --- | --- |")
        for key, value, comment in rows:
            print(f"| `{key}` | `{value}` | {comment} |" if value else f"| `{key}` | | {comment} |")
        print()


if __name__ == "__main__":
    main()
