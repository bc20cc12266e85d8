"""Allowed values are declared once (issue 28 item 2): docclassify/utils/choices.py.

A tuple, set or list literal of 2+ strings anywhere else in the package that holds exactly the values of a
declared choice set (or of a schema field's ``choices``) spells that set again: it would drift from the
declaration the schema checks. Such a place imports the declaration instead.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Literal, get_args, get_origin

import docclassify
from docclassify import config_schema

PACKAGE = Path(docclassify.__file__).resolve().parent
DECLARING = PACKAGE / "utils" / "choices.py"


def _schema_choice_sets() -> dict[frozenset, str]:
    """Every schema field's choices (2+ values) -> the field that declares it."""
    found = {}
    for name in dir(config_schema):
        obj = getattr(config_schema, name)
        if isinstance(obj, type) and dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                choices = f.metadata.get("choices")
                if choices and len(choices) >= 2:
                    found.setdefault(frozenset(choices), f"{obj.__name__}.{f.name}")
    return found


def _declared_sets() -> dict[frozenset, str]:
    declared = _schema_choice_sets()
    try:
        from docclassify.utils import choices
    except ImportError:  # before the declarations existed: the schema's sets are the declared ones
        return declared
    for name in dir(choices):
        value = getattr(choices, name)
        if name.isupper() and isinstance(value, tuple) and len(value) >= 2:
            declared[frozenset(value)] = f"choices.{name}"
    return declared


def _string_literals(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.Tuple, ast.Set, ast.List)) and len(node.elts) >= 2 and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            yield node.lineno, tuple(e.value for e in node.elts)


def test_no_choice_set_is_spelled_again():
    declared = _declared_sets()
    again = [f"{path.relative_to(PACKAGE.parent)}:{line}: {values} (declared as {declared[frozenset(values)]})"
             for path in sorted(PACKAGE.rglob("*.py")) if path != DECLARING
             for line, values in _string_literals(path) if frozenset(values) in declared]
    assert not again, "choice sets spelled again; import them from docclassify/utils/choices.py:\n" + "\n".join(again)


def test_every_schema_choice_set_comes_from_the_declarations():
    """The schema's ``choices`` of 2+ values are the declared tuples themselves, not equal copies."""
    from docclassify.utils import choices

    declared = [v for k, v in vars(choices).items() if k.isupper() and isinstance(v, tuple)]
    copies = []
    for obj in vars(config_schema).values():
        if isinstance(obj, type) and dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                value = f.metadata.get("choices")
                if value and len(value) >= 2 and not any(value is d for d in declared):
                    copies.append(f"{obj.__name__}.{f.name}: {value}")
    assert not copies, "schema choices not taken from docclassify/utils/choices.py: " + "; ".join(sorted(set(copies)))


def _omegaconf_takes_literal() -> bool:
    from typing import Literal

    from omegaconf import OmegaConf
    from omegaconf.errors import ValidationError

    @dataclasses.dataclass
    class Probe:
        mode: Literal["a", "b"] = "a"

    try:
        OmegaConf.structured(Probe)
    except ValidationError:
        return False
    return True


def test_choice_fields_are_annotated_as_far_as_omegaconf_allows():
    """utils/choices.py's docstring: the schema's choice fields stay ``str`` while the installed OmegaConf
    refuses ``Literal`` annotations (2.3: "Unexpected type annotation"); once it takes them, this fails
    for every field whose choices are a declared set but whose annotation is not that set's Literal."""
    from docclassify.utils import choices

    literal_of = {get_args(v): k for k, v in vars(choices).items()
                  if not k.isupper() and get_origin(v) is Literal}
    plain = []
    for obj in vars(config_schema).values():
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == config_schema.__name__:
            for f in dataclasses.fields(obj):
                value = f.metadata.get("choices")
                if value and len(value) >= 2 and literal_of.get(tuple(value), "?") not in str(f.type):
                    plain.append(f"{obj.__name__}.{f.name}: {f.type} (declared as {literal_of.get(tuple(value))})")
    if _omegaconf_takes_literal():
        assert not plain, "OmegaConf takes Literal annotations now: annotate these fields (and update the note " \
                          "in docclassify/utils/choices.py):\n" + "\n".join(plain)
    else:
        # the schema composes: str (str | None; Any for submit's true/false/auto), the values checked by choices=
        assert plain and all(p.split(": ")[1].split(" (")[0] in ("str", "str | None", "Any") for p in plain), plain
