"""The bundle: a folder that holds everything prediction needs, torch-free to read.

    bundle.json        this module's :class:`BundleSpec` (JSON, read with the standard library)
    models/*.onnx      one model file per fold model (``.pt``: TorchScript, ``.xml``/``.bin``: OpenVINO)

``bundle.json`` says, for every fold model of every run (an ensemble *member*): its file, its
input (size, resize/pad rule, pad value, mean/std, RGB channel order, NCHW float32 of ``x / 255``
normalised), whether it has an orientation head (a second output) and whether the upright view is
averaged with its mirror; for the whole bundle: the classes, the orientation policy (a set of exact
views, or ``orient`` / ``orient_soft``: each image turned back before it is classified), deskew
on/off, how views, folds and runs are averaged, the runs' weights, the temperature, the decision
rule's per-class biases, and the versions that made it. Everything in it comes from what
``python -m docclassify.infer`` decided (its summary.json and config), so a bundle predicts what
that infer run predicted.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from docclassify.errors import UserError
from docclassify.utils.choices import (
    AVERAGES,
    EXPORT_FORMATS,
    ORIENT_MODES,
    ORIENTATION_HEADS,
    QUANTIZE,
    RESIZE,
)

BUNDLE_FORMAT = "docclassify.bundle/1"
BUNDLE_FILE = "bundle.json"
MODELS_DIR = "models"
# mode of the orientation policy: a set of exact (dihedral) views averaged, or each image's
# orientation estimated and undone (predict/upright.py).
TTA_MODES = ("views", *ORIENT_MODES)


class BundleError(UserError):
    """A bundle folder that cannot be used (the message names the file, the key and the fix)."""


@dataclass
class InputSpec:
    """What one model file takes: ``img_size`` x ``img_size`` RGB, ``resize`` (pad: long side to size,
    centred on ``pad_value``; stretch), then NCHW float32 ``(x / 255 - mean) / std``."""

    img_size: int
    resize: str
    pad_value: int
    mean: list[float]
    std: list[float]
    channel_order: str = "RGB"
    layout: str = "NCHW"
    scale: float = 1.0 / 255.0

    @property
    def decode_key(self) -> tuple[int, str, int]:
        """Models with equal keys share the decoded images."""
        return (int(self.img_size), str(self.resize), int(self.pad_value))


@dataclass
class FoldSpec:
    """One fold model: its file (relative to the bundle), input and outputs."""

    fold: int
    file: str
    model: str                       # timm architecture
    input: InputSpec
    orientation_head: str = "none"   # none, or a second output ``orientation`` (rot4 / dihedral8)
    upright_flip: bool = False       # tta=orient: the upright view averaged with its mirror
    checkpoint: str | None = None    # where it came from (the run dir's checkpoint)
    bytes: int = 0                   # size of the model file(s)


@dataclass
class MemberSpec:
    """One ensemble member (a training run): its folds averaged, weighed ``weight`` among the runs."""

    run: str
    weight: float
    folds: list[FoldSpec]


@dataclass
class TtaSpec:
    """The orientation policy: ``views`` (the exact views, each ``[name, quarter turns k, mirror]``,
    averaged by ``average``), or ``orient`` / ``orient_soft``; ``deskew``: every image deskewed before
    it is resized."""

    mode: str = "views"
    views: list[list] = field(default_factory=lambda: [["identity", 0, False]])
    average: str = "prob"
    deskew: bool = False
    name: str = "none"               # the tta option infer ran with (auto: the set it chose)


@dataclass
class DecisionSpec:
    rule: str = "argmax"
    biases: list[float] | None = None  # added to the log-probabilities before the argmax (None: argmax)


@dataclass
class BundleSpec:
    classes: list[str]
    members: list[MemberSpec]
    tta: TtaSpec
    average: str = "prob"            # how folds, and runs, are averaged (infer's ensemble.average)
    temperature: float = 1.0         # applied to the ensemble's log-probabilities (1: none)
    decision: DecisionSpec = field(default_factory=DecisionSpec)
    backend: str = "onnx"            # onnx, torchscript or openvino
    quantize: str = "none"
    format: str = BUNDLE_FORMAT
    versions: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)   # the infer run and training runs it was made from
    check: dict = field(default_factory=dict)    # export's own comparison with infer (export.py)

    @property
    def folds(self) -> list[FoldSpec]:
        return [f for m in self.members for f in m.folds]

    def as_dict(self) -> dict:
        return asdict(self)

    def save(self, folder: str | Path) -> Path:
        from docclassify.utils.io import atomic_write_json

        path = Path(folder) / BUNDLE_FILE
        atomic_write_json(path, self.as_dict())
        return path


def _need(data: dict, key: str, where: str, kind=None) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise BundleError(f"{where}: no '{key}'")
    value = data[key]
    if kind is not None and not isinstance(value, kind):
        raise BundleError(f"{where}.{key}={value!r}: expected {getattr(kind, '__name__', kind)}")
    return value


def _choice(value: Any, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise BundleError(f"{where}={value!r}: expected one of {', '.join(allowed)}")
    return str(value)


def _input(data: dict, where: str) -> InputSpec:
    spec = InputSpec(int(_need(data, "img_size", where)), _choice(data.get("resize"), RESIZE, f"{where}.resize"),
                     int(_need(data, "pad_value", where)), [float(v) for v in _need(data, "mean", where, list)],
                     [float(v) for v in _need(data, "std", where, list)], str(data.get("channel_order", "RGB")),
                     str(data.get("layout", "NCHW")), float(data.get("scale", 1 / 255)))
    if len(spec.mean) != 3 or len(spec.std) != 3 or min(spec.std) <= 0:
        raise BundleError(f"{where}: mean and std need 3 values each (std > 0)")
    if spec.channel_order != "RGB" or spec.layout != "NCHW":
        raise BundleError(f"{where}: channel_order {spec.channel_order} / layout {spec.layout}: this version "
                          "reads RGB / NCHW bundles only")
    return spec


def spec_from_dict(data: dict, where: str = BUNDLE_FILE) -> BundleSpec:
    """A :class:`BundleSpec` from bundle.json's content, every key checked (errors name the key)."""
    if not isinstance(data, dict):
        raise BundleError(f"{where}: expected a JSON object")
    if data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{where}: format {data.get('format')!r}, expected {BUNDLE_FORMAT!r} (a bundle "
                          "written by `python -m docclassify.export`)")
    classes = [str(c) for c in _need(data, "classes", where, list)]
    members = []
    for i, m in enumerate(_need(data, "members", where, list)):
        mw = f"{where}: members[{i}]"
        folds = []
        for j, f in enumerate(_need(m, "folds", mw, list)):
            fw = f"{mw}.folds[{j}]"
            folds.append(FoldSpec(int(_need(f, "fold", fw)), str(_need(f, "file", fw)), str(f.get("model", "?")),
                                  _input(_need(f, "input", fw, dict), f"{fw}.input"),
                                  _choice(f.get("orientation_head", "none"), ORIENTATION_HEADS,
                                          f"{fw}.orientation_head"),
                                  bool(f.get("upright_flip", False)), f.get("checkpoint"), int(f.get("bytes", 0))))
        weight = float(_need(m, "weight", mw))
        if not (math.isfinite(weight) and weight >= 0):
            raise BundleError(f"{mw}.weight={weight}: expected a number >= 0")
        if not folds:
            raise BundleError(f"{mw}: no folds")
        members.append(MemberSpec(str(m.get("run", f"run{i}")), weight, folds))
    if not members:
        raise BundleError(f"{where}: no members")
    t = _need(data, "tta", where, dict)
    views = t.get("views") or [["identity", 0, False]]
    for v in views:
        if not (isinstance(v, list) and len(v) == 3 and isinstance(v[1], int) and isinstance(v[2], bool)):
            raise BundleError(f"{where}: tta.views entry {v!r}: expected [name, quarter turns, mirror]")
    tta = TtaSpec(_choice(t.get("mode", "views"), TTA_MODES, f"{where}: tta.mode"), [list(v) for v in views],
                  _choice(t.get("average", "prob"), AVERAGES, f"{where}: tta.average"), bool(t.get("deskew", False)),
                  str(t.get("name", "none")))
    d = data.get("decision") or {}
    biases = d.get("biases")
    if biases is not None and len(biases) != len(classes):
        raise BundleError(f"{where}: decision.biases has {len(biases)} values for {len(classes)} classes")
    temperature = float(data.get("temperature", 1.0))
    if not (math.isfinite(temperature) and temperature > 0):
        raise BundleError(f"{where}: temperature={temperature}: expected a number > 0")
    return BundleSpec(classes, members, tta, _choice(data.get("average", "prob"), AVERAGES, f"{where}: average"),
                      temperature, DecisionSpec(str(d.get("rule", "argmax")),
                                                None if biases is None else [float(b) for b in biases]),
                      _choice(data.get("backend", "onnx"), EXPORT_FORMATS, f"{where}: backend"),
                      _choice(data.get("quantize", "none"), QUANTIZE, f"{where}: quantize"), BUNDLE_FORMAT,
                      dict(data.get("versions") or {}), dict(data.get("source") or {}), dict(data.get("check") or {}))


def load_spec(folder: str | Path) -> BundleSpec:
    """bundle.json of ``folder``, checked, with every model file it names present."""
    folder = Path(folder).expanduser()
    path = folder / BUNDLE_FILE
    if not folder.is_dir():
        raise BundleError(f"bundle={folder}: not a folder; give the output folder of `python -m docclassify.export`")
    if not path.is_file():
        raise BundleError(f"bundle={folder}: no {BUNDLE_FILE} in it; give the output folder of "
                          "`python -m docclassify.export`")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: cannot be read as JSON ({exc}); export the run again") from exc
    spec = spec_from_dict(data, str(path))
    missing = [f.file for f in spec.folds if not (folder / f.file).is_file()]
    if missing:
        raise BundleError(f"{folder}: model file(s) named in {BUNDLE_FILE} are missing: {', '.join(missing)}; "
                          "copy the whole bundle folder, or export the run again")
    return spec


def bundle_bytes(folder: str | Path) -> int:
    """Size of every file of the bundle (what a container copies)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
