"""Locations of the config tree, helpers to read single config options outside Hydra, and the
resolvers of the entrypoints' ``--help`` (conf/hydra/default.yaml: ``hydra.help``)."""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from docclassify import config_schema  # noqa: F401  (registers the typed group schemas with Hydra)
from docclassify.config_schema import SCHEMA_GROUP, ConfigError
from docclassify.errors import USAGE_EXIT_CODE



def _share_the_config_store_in_copies() -> None:
    """Hydra 1.3 deep-copies its whole ConfigStore (every typed schema of config_schema) each time it
    builds a caching config repository: once per compose, 238 times for one ``--help`` (3.5 of its
    4 s), once per sweep trial. Hydra 1.4 reads the store singleton instead of holding a copy
    (facebookresearch/hydra#2928); this gives 1.3's repository copies the same: the structured
    source is copied shallowly (the same process-wide store), the others deeply as before. Safe:
    ConfigStore.load() deep-copies each node it returns."""
    import copy

    import hydra
    from hydra._internal.config_repository import ConfigRepository

    if not hydra.__version__.startswith("1.3") or "__deepcopy__" in vars(ConfigRepository):
        return

    def __deepcopy__(self, memo):
        clone = copy.copy(self)
        memo[id(self)] = clone
        clone.sources = [copy.copy(source) if source.scheme() == "structured" else copy.deepcopy(source, memo)
                         for source in self.sources]
        return clone

    ConfigRepository.__deepcopy__ = __deepcopy__


_share_the_config_store_in_copies()

# The config tree ships inside the package (a wheel works outside a checkout); the checkout's
# top-level conf/ is a link to it.
CONF_DIR = Path(__file__).resolve().parent / "conf"


def available_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def load_option(group: str, name: str) -> DictConfig:
    """Read ``conf/<group>/<name>.yaml`` (e.g. a per-fold model override), merged over the options of
    the same group it composes (``defaults: [basic, _self_]`` in augment/advanced.yaml), as Hydra would."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{group}={name!r}: no such option. Available: {available_options(group)}")
    node = OmegaConf.load(path)
    bases = [str(d) for d in node.get("defaults", []) if isinstance(d, str) and d != "_self_" and "/" not in d]
    return OmegaConf.merge(*(load_option(group, b) for b in bases), node) if bases else node


def plain_config(cfg: DictConfig) -> dict:
    """The resolved config as plain containers, without Hydra's own node, URL passwords masked
    (what run_config.yaml and W&B get)."""
    from docclassify.utils.redact import redact_config

    return redact_config({k: (OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k])
                              else cfg[k]) for k in cfg if k != "hydra"})


# ------------------------------------------------------------------------------------ --help
# What each entrypoint does, the first line of its --help.
ABOUT = {
    "train": "train one experiment with stratified K-fold cross-validation; the run dir gets results.json "
             "(cv macro F1), oof.csv, checkpoints/ and a report",
    "infer": "turn training runs (runs=[RUN_DIR ...]) into a submission: submission.csv, test_probs.csv, "
             "summary.json in the run dir",
    "export": "turn runs (or an infer run) into a bundle that predicts without the training stack: "
              "bundle.json + ONNX / TorchScript / OpenVINO model files in output=DIR",
    "distill": "train one student model (model=...) on the soft targets of a teacher ensemble (runs=[RUN_DIR ...]); "
               "the run dir is a training run's",
}


@functools.lru_cache(maxsize=None)  # read once per process: the command-line checks ask per argument
def primary_groups(config_name: str) -> tuple[str, ...]:
    """The config groups a primary config (train, infer) composes: its defaults list without the
    internal schema entries and Hydra's own group."""
    groups = []
    for entry in OmegaConf.load(CONF_DIR / f"{config_name}.yaml").get("defaults", []):
        name = next(iter(entry)) if isinstance(entry, DictConfig) else str(entry)
        group = name.split("@")[0].strip("/")
        if group not in ("_self_", "hydra") and not group.startswith(SCHEMA_GROUP):
            groups.append(group)
    return tuple(groups)


def help_groups(choices: DictConfig) -> str:
    """``--help``'s group list: one line per group of this command with its options, the selected
    one in brackets (``hydra.runtime.choices``); Hydra's groups and the internal schemas left out."""
    lines = []
    for group in sorted(k for k in choices if k != "hydra" and "/" not in k and not k.startswith(SCHEMA_GROUP)):
        selected = choices[group]
        options = ", ".join(f"[{o}]" if o == selected else o for o in available_options(group))
        lines.append(f"{group}: {options}" + ("  (none selected)" if selected is None else ""))
    return "\n".join(lines)


def foreign_group_errors(config_name: str, argv: list[str], hint: str = "") -> list[str]:
    """Overrides that select a group another entrypoint has (``infer model=tiny``): a message each.

    Hydra's own answer ("Could not override 'model'. ... use +model=tiny") suggests a fix that
    cannot work, so the entrypoints check their command line first."""
    own = set(primary_groups(config_name))
    errors = []
    for arg in argv:
        key = arg.split("=", 1)[0].lstrip("+~")
        if arg.startswith("-") or "=" not in arg or "/" in key:
            continue
        if "." in key:  # a key inside a block only the other entrypoint has (infer pseudo.source=...)
            top = key.split(".", 1)[0]
            owners = [] if top in _top_level_keys(config_name) else \
                [name for name in ABOUT if name != config_name and top in _top_level_keys(name)]
            what = f"{top}.* is a key of"
        else:
            owners = [] if key in own else \
                [name for name in ABOUT if name != config_name and key in primary_groups(name)]
            what = f"{key} is an option of"
        if owners:
            errors.append(f"{arg}: {what} python -m docclassify.{owners[0]}, not of docclassify."
                          f"{config_name}{hint}. Its groups: {', '.join(sorted(own))}; every key: "
                          f"python -m docclassify.{config_name} --help")
    return errors


@functools.lru_cache(maxsize=None)
def _top_level_keys(config_name: str) -> frozenset[str]:
    """The top-level keys of an entrypoint's config (its groups and its own blocks, e.g. train's pseudo)."""
    schema = config_schema.PRIMARY[config_name]
    return frozenset({f.name for f in dataclasses.fields(schema)} | set(primary_groups(config_name)))


def refuse_foreign_groups(config_name: str, argv: list[str], hint: str = "") -> None:
    """Before Hydra starts: exit with ``docclassify.<name>: error: ...`` (code 2) on such overrides."""
    problems = foreign_group_errors(config_name, argv, hint)
    if problems:
        print("\n".join(f"docclassify.{config_name}: error: {p}" for p in problems), file=sys.stderr)
        raise SystemExit(USAGE_EXIT_CODE)


OmegaConf.register_new_resolver("docclassify_groups", help_groups, replace=True)


def pretrained_or(model_pretrained, data_use_pretrained, if_pretrained, from_scratch):
    """``${docclassify_pretrained_or:${model.pretrained},${oc.select:data.use_pretrained,true},A,B}``:
    A when the model starts from pretrained weights, B when it trains from scratch (a fine-tuning
    learning rate and warmup are far too small for random weights: highperf from scratch learned
    nothing at 2e-4). A command-line value (trainer.lr=...) replaces the whole expression."""
    return if_pretrained if bool(model_pretrained) and bool(data_use_pretrained) else from_scratch


OmegaConf.register_new_resolver("docclassify_pretrained_or", pretrained_or, replace=True)
# The other Hydra entrypoints' first line of --help (not train/infer: no foreign-group checks for them).
ABOUT_MORE = {
    "shift": "how the test images differ from the training images (brightness, contrast, blur, noise, "
             "skew, JPEG quality): a table, shift.png, shift.json and the distortion profile it fits "
             "(distort_profile.yaml, what validation.distort=auto uses; docs/shift.md)",
}


def _prog(config_name) -> str:
    from docclassify.utils.prog import prog

    return prog(f"docclassify.{config_name}")


OmegaConf.register_new_resolver("docclassify_about", lambda name: {**ABOUT, **ABOUT_MORE}.get(str(name), ""),
                                replace=True)
# The command's name in --help: the console script it was started as, else python -m docclassify.<name>.
OmegaConf.register_new_resolver("docclassify_prog", _prog, replace=True)
