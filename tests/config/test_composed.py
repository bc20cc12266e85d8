"""Every option and preset composes to the config it composed to before the YAML was written once (issue 28
item 3: validation/both.yaml on robust.yaml, the augment options on one base, presets that set only their
own keys). composed.json is the snapshot, made from the YAML as it was:

    python tests/config/test_composed.py     # rewrite composed.json from the current YAML (review its diff!)

A key the snapshot does not know (a schema key added since) is not compared; every key it knows must keep
its value, and a key it lists as removed must stay absent. After a deliberate change of a default, rewrite
the snapshot and review the diff."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

SNAPSHOT = Path(__file__).with_name("composed.json")
# Groups of conf/train.yaml composed one option at a time over the defaults.
TRAIN_GROUPS = ("data", "model", "augment", "regularization", "loss", "schedule", "trainer", "folds", "logger",
                "ensemble", "validation", "specialists", "pipeline", "experiment", "debug", "hparams_search")
# (primary config, its group composed one option at a time) of the other entrypoints.
OTHER = (("infer", "tta"), ("infer", "adapt"), ("export", "tta"), ("distill", None), ("shift", None))


def cases() -> list[tuple[str, list[str]]]:
    """(primary config name, overrides) of every case: each primary alone, then one option at a time."""
    from docclassify.config import available_options

    out = [("train", [])]
    for group in TRAIN_GROUPS:
        for option in available_options(group):
            extra = ["data.root=DATA_ROOT"] if group == "data" and option != "synthetic" else []
            out.append(("train", [f"{group}={option}", *extra]))
    for primary, group in OTHER:
        if (primary, []) not in out:
            out.append((primary, []))
        if group:
            out += [(primary, [f"{group}={o}"]) for o in available_options(group)]
    return out


def case_key(primary: str, overrides: list[str]) -> str:
    return f"{primary}: {' '.join(overrides)}".strip()


def flat(node, prefix: str = "") -> dict:
    """{dotted key: leaf value} of a plain config (an empty mapping is a leaf)."""
    if isinstance(node, dict) and node:
        out = {}
        for k, v in node.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def composed_all() -> dict[str, dict]:
    """{case key: its job config (no ``hydra`` node), flat, interpolations kept as written}, under one Hydra
    initialisation (composing is quick once Hydra has read the config tree)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from docclassify.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return {case_key(p, o): flat(OmegaConf.to_container(compose(p, overrides=o), resolve=False))
                for p, o in cases()}


def difference(base: dict, other: dict) -> dict:
    """What ``other`` changes in ``base`` (both flat): changed or added keys, and the removed ones."""
    out = {k: v for k, v in other.items() if k not in base or base[k] != v}
    removed = sorted(set(base) - set(other))
    return {**out, "<removed>": removed} if removed else out


def snapshot() -> dict:
    """Each primary's config in full (flat), every other case as its difference from its primary's."""
    configs = composed_all()
    return {key: config if key.endswith(":") else difference(configs[key.split(":")[0] + ":"], config)
            for key, config in configs.items()}


EXPECTED = json.loads(SNAPSHOT.read_text()) if SNAPSHOT.is_file() else {}


def expected(key: str) -> tuple[dict, set]:
    """The snapshot's flat config of a case and the keys it must not have."""
    primary = key.split(":")[0] + ":"
    if key == primary:
        return EXPECTED[key], set()
    diff = dict(EXPECTED[key])
    removed = set(diff.pop("<removed>", []))
    return {**{k: v for k, v in EXPECTED[primary].items() if k not in removed}, **diff}, removed


@pytest.fixture(scope="module")
def configs() -> dict[str, dict]:
    return composed_all()


def test_the_snapshot_covers_every_option_it_had(configs):
    """An option of the snapshot that no longer composes as a case (deleted or renamed) is a change."""
    assert EXPECTED and set(EXPECTED) <= set(configs)


def test_composed_configs_unchanged(configs):
    problems = []
    for key in EXPECTED:
        want, removed = expected(key)
        got = configs.get(key, {})
        changed = {k: (want[k], got.get(k, "<missing>")) for k in want if got.get(k, "<missing>") != want[k]}
        if changed:
            problems.append(f"{key}: (snapshot, now) {changed}")
        if removed & set(got):
            problems.append(f"{key}: keys back that the snapshot has removed: {sorted(removed & set(got))}")
    assert not problems, "\n".join(problems)


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")
    print(f"{SNAPSHOT}: {len(json.loads(SNAPSHOT.read_text()))} composed configs", file=sys.stderr)
