"""YAML comments that list a key's allowed values list exactly the declared ones (issue 28 item 2).

The config reference takes each key's allowed values from the schema (docs/gen_config_reference.py
choices_of: "One of: ..."), whose ``choices`` are docclassify/utils/choices.py's declarations. A YAML
comment is prose: it may name no value, but one that names two or more of a key's values names all of
them, and an ``a | b | c`` list in it names only allowed values (``key=a|b`` there names another key's).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORD = re.compile(r"[A-Za-z0-9_]+")
PIPE_LIST = re.compile(r"(?<![=\w])\w+(?:\s*\|\s*\w+)+")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_config_reference", ROOT / "docs" / "gen_config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def comment_errors(key: str, comment: str, choices: tuple[str, ...]) -> list[str]:
    words = set(WORD.findall(comment))
    named = [c for c in choices if c in words]
    errors = []
    if len(named) >= 2 and len(named) < len(choices):
        errors.append(f"{key}: the comment names {named} but not {[c for c in choices if c not in named]}")
    for listed in PIPE_LIST.findall(comment):
        extra = [v.strip() for v in listed.split("|") if v.strip() not in choices]
        if extra:
            errors.append(f"{key}: the comment's list {listed!r} names {extra}, not allowed ({', '.join(choices)})")
    return errors


def test_the_comment_check_catches_a_partial_and_a_stale_list():
    assert comment_errors("k", "prob (mean) or logit", ("prob", "logit")) == []
    assert comment_errors("k", "How views are averaged.", ("prob", "logit")) == []
    assert comment_errors("k", "online or offline", ("online", "offline", "disabled"))
    assert comment_errors("k", "none | linear | cube", ("none", "linear", "sqrt"))
    assert comment_errors("k", "from validation=both|robust", ("auto", "robust", "clean")) == []


def test_yaml_comments_list_exactly_the_declared_choices():
    gen = _generator()
    errors, checked = [], 0
    for path in sorted(gen.CONF.rglob("*.yaml")):
        allowed = gen.choices_of(gen.schema_of(path))
        for key, _, comment in gen.describe(path)[1]:
            if key in allowed and comment:
                checked += 1
                errors += [f"{path.relative_to(gen.CONF)}: {e}" for e in comment_errors(key, comment, allowed[key])]
    assert checked >= 40  # the keys with choices and a comment (amp, monitor, tta names, ...) were found
    assert not errors, "\n".join(errors)


def test_the_reference_lists_the_declared_choices():
    gen = _generator()
    from docclassify.utils.choices import AMP, WEIGHT_MODES

    text = (ROOT / "docs" / "configuration.md").read_text()
    for values in (AMP, WEIGHT_MODES):
        assert "One of: " + ", ".join(f"`{v}`" for v in values) + "." in text
    assert gen.choices_of(gen.schema_of(gen.CONF / "trainer" / "default.yaml"))["amp"] is AMP
