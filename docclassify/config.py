"""Locations of the config tree and helpers to read single config options outside Hydra."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from docclassify import config_schema  # noqa: F401  (registers the typed group schemas with Hydra)

# The config tree ships inside the package (a wheel works outside a checkout); the checkout's
# top-level conf/ is a link to it.
CONF_DIR = Path(__file__).resolve().parent / "conf"


def available_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def load_option(group: str, name: str) -> DictConfig:
    """Read ``conf/<group>/<name>.yaml`` (e.g. a per-fold model override)."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"{group}={name!r}: no such option. Available: {available_options(group)}")
    return OmegaConf.load(path)


def plain_config(cfg: DictConfig) -> dict:
    """The resolved config as plain containers, without Hydra's own node, URL passwords masked
    (what run_config.yaml and W&B get)."""
    from docclassify.utils.redact import redact_config

    return redact_config({k: (OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k])
                              else cfg[k]) for k in cfg if k != "hydra"})
