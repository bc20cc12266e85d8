"""The package's shape, before and after a change (issue 28's "measured before/after" table).

    python benchmarks/code_metrics.py                 # the working tree
    python benchmarks/code_metrics.py --rev cf1fe39   # a commit (read with git, nothing checked out)

Prints: modules and lines of docclassify/, the longest module and function, imported names that
are imported inside a function (and so deferred), and how many modules read each config group
(`cfg.<group>` attribute chains).
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GROUPS = ("data", "model", "trainer", "augment", "validation", "folds", "schedule", "loss", "tta", "ensemble",
          "logger", "pseudo", "specialists", "second_pass", "adapt", "decision", "paths", "regularization")


def package_files(rev: str | None) -> dict[str, str]:
    """docclassify/**/*.py of the working tree, or of commit ``rev``: {path: source}."""
    if rev is None:
        return {p.relative_to(REPO).as_posix(): p.read_text() for p in (REPO / "docclassify").rglob("*.py")}
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "docclassify/"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    return {n: subprocess.run(["git", "show", f"{rev}:{n}"], cwd=REPO, check=True, capture_output=True,
                              text=True).stdout for n in names if n.endswith(".py")}


def metrics(files: dict[str, str]) -> dict:
    longest_fn, names_top, names_inner, readers = ("", 0), 0, 0, Counter()
    for path, src in files.items():
        tree = ast.parse(src)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                span = node.end_lineno - node.lineno + 1
                if span > longest_fn[1]:
                    longest_fn = (f"{path}:{node.name}", span)
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        names_inner += len(inner.names)
        names_top += sum(len(n.names) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
        for group in {m.group(1) for m in re.finditer(r"\bcfg\.(\w+)", src)} & set(GROUPS):
            readers[group] += 1
    lines = {p: s.count("\n") for p, s in files.items()}
    longest_mod = max(lines.items(), key=lambda kv: kv[1])
    total_names = names_top + names_inner
    return {"modules": len(files), "lines": sum(lines.values()), "longest module": f"{longest_mod[0]} ({longest_mod[1]})",
            "longest function": f"{longest_fn[0]} ({longest_fn[1]})",
            "names imported inside functions": f"{names_inner} of {total_names} ({names_inner / max(total_names, 1):.0%})",
            **{f"modules reading cfg.{g}": readers[g] for g in GROUPS if readers[g]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", action="append", help="a commit to measure (repeat to compare); default: working tree")
    args = ap.parse_args()
    revs = args.rev or [None]
    table = {rev or "working tree": metrics(package_files(rev)) for rev in revs}
    keys = list(dict.fromkeys(k for m in table.values() for k in m))
    print("| measure | " + " | ".join(table) + " |")
    print("|---|" + "---|" * len(table))
    for k in keys:
        print(f"| {k} | " + " | ".join(str(m.get(k, 0)) for m in table.values()) + " |")


if __name__ == "__main__":
    main()
