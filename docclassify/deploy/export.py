"""``python -m docclassify.export``: runs (or an infer run) -> a bundle (deploy/bundle.py).

    infer_step       runs=[TRAIN_RUN ...]: the infer command on them (every conf/infer.yaml key), into
                     <run dir>/infer/; runs=[INFER_RUN_DIR]: that run as it is
    spec_from_infer  what it decided (deploy/runs.py): members, weights, views / orientation, deskew,
                     temperature, biases
    export_model     per fold: load_checkpoint -> ONNX (torch.onnx.export, a dynamic batch axis,
                     onnx.checker), TorchScript (torch.jit.trace) or OpenVINO (from the ONNX file)
    quantize_int8    quantize=int8: ONNX Runtime's static quantisation (QDQ, per-channel weights),
                     activations calibrated on the run's own training images
    check_bundle     the new bundle predicts check_images of the infer step's test images; compared
                     with its test_probs.csv (a float32 bundle must agree within ``tolerance``)
    write            the bundle is built in a sibling folder and moved into place when complete

Every backbone the configs name exports with the torchscript exporter (docs/deployment.md lists what
was checked); a model that does not gets an ExportError naming the model and the operator.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import platform
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from docclassify.deploy.bundle import (
    BUNDLE_FILE,
    MODELS_DIR,
    BundleError,
    BundleSpec,
    FoldSpec,
    bundle_bytes,
)
from docclassify.deploy.runs import INFER_CONFIG, is_infer_dir, spec_from_infer
from docclassify.errors import UserError

log = logging.getLogger("docclassify.export")

INFER_DIR = "infer"          # the infer step's outputs, in the export's run dir
BUNDLE_DIR = "bundle"        # the bundle when output is null
EXPORT_KEYS = ("format", "quantize", "exporter", "opset", "calibration_images", "check_images", "tolerance")
# Versions recorded in bundle.json.
PACKAGES = ("torch", "timm", "onnx", "onnxruntime", "openvino", "numpy", "pillow", "opencv-python-headless")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "openvino": ".xml"}


class ExportError(UserError):
    """A model that cannot be exported, or a bundle that does not predict what infer predicted."""


@dataclass
class ExportSettings:
    format: str
    quantize: str
    exporter: str
    opset: int | None
    calibration_images: int
    check_images: int
    tolerance: float

    @classmethod
    def of(cls, cfg: DictConfig) -> ExportSettings:
        s = cls(*(cfg[k] for k in EXPORT_KEYS))
        if s.quantize == "int8" and s.format == "torchscript":
            raise ExportError("quantize=int8 with format=torchscript: INT8 is ONNX Runtime's static quantisation; "
                              "use format=onnx (or openvino)")
        return s


# --------------------------------------------------------------------------------------- the infer step
def tta_given_on_the_command_line() -> bool:
    """Whether tta=... (or tta.<key>=...) was given: an infer run's own TTA is kept unless asked otherwise."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return any(o.lstrip("+~").split("=")[0].split(".")[0] == "tta" for o in HydraConfig.get().overrides.task)


def infer_step(cfg: DictConfig, run_dir: Path) -> Path:
    """The infer run whose decisions the bundle holds (see the module docstring)."""
    runs = [Path(str(r)).expanduser() for r in (OmegaConf.to_container(cfg.runs) or [])]
    if not runs:
        raise ExportError("runs=[]: give training run dirs (runs=[outputs/train/RUN]) or one infer run dir")
    if len(runs) == 1 and is_infer_dir(runs[0]):
        made_with = json.loads((runs[0] / "summary.json").read_text()).get("tta", {}).get("name")
        if tta_given_on_the_command_line() and str(cfg.tta.name) != made_with:
            raise ExportError(f"tta={cfg.tta.name}: {runs[0]} is an infer run made with tta={made_with}, and export "
                              "takes its decisions as they are; drop tta=..., or give its training runs to run "
                              "infer again with it")
        log.info("export: the decisions of infer run %s (nothing predicted again)", runs[0])
        return runs[0]
    if any(is_infer_dir(r) for r in runs):
        raise ExportError(f"runs={[str(r) for r in runs]}: an infer run dir goes alone; or give training run dirs")
    from docclassify.infer import infer

    out_dir = run_dir / INFER_DIR
    infer_cfg = cfg.copy()
    OmegaConf.set_struct(infer_cfg, False)
    for k in EXPORT_KEYS:
        infer_cfg.pop(k)
    infer_cfg.output = None  # export's output is the bundle; the submission stays in the infer dir
    out_dir.mkdir(parents=True, exist_ok=True)
    from docclassify.utils.io import atomic_write_text

    options = OmegaConf.create({k: infer_cfg[k] for k in infer_cfg if k not in ("hydra", "paths")})
    atomic_write_text(out_dir / INFER_CONFIG, OmegaConf.to_yaml(options, resolve=True))
    log.info("export: the infer step on %d run(s) -> %s", len(runs), out_dir)
    OmegaConf.set_struct(infer_cfg, True)
    infer(infer_cfg, out_dir)
    return out_dir


# --------------------------------------------------------------------------------------- models
class ExportModule(torch.nn.Module):
    """The fold model as the bundle runs it: logits, and with an orientation head its logits too."""

    def __init__(self, model: torch.nn.Module, head: str):
        super().__init__()
        self.model, self.head = model, head != "none"

    def forward(self, x: torch.Tensor):
        return self.model(x, orientation=True) if self.head else self.model(x)


def failed_op(exc: BaseException) -> str:
    """The operator an exporter names in its error (or its first line)."""
    text = "".join(str(e) for e in (exc, exc.__cause__) if e is not None)
    found = re.search(r"(aten::\w+(?:\.\w+)?|operator '?[\w:.]+'?|torch\.ops\.[\w.]+)", text)
    return found.group(1) if found else (text.strip().splitlines() or [type(exc).__name__])[0][:200]


def to_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, exporter: str, opset: int | None,
            outputs: list[str]) -> str:
    """torch.onnx.export with a dynamic batch axis, checked by onnx.checker; returns the exporter used."""
    import onnx

    def export(kind: str) -> None:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if kind == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=4096)
                torch.onnx.export(module, (example,), str(path), input_names=["input"], output_names=outputs,
                                  dynamic_shapes={"x": {0: batch}}, dynamo=True, opset_version=opset or 18,
                                  external_data=False)
            else:
                torch.onnx.export(module, (example,), str(path), input_names=["input"], output_names=outputs,
                                  dynamic_axes={"input": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                                  dynamo=False, opset_version=opset or 17)

    kinds = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    errors = []
    for kind in kinds:
        try:
            export(kind)
            onnx.checker.check_model(str(path))
            return kind
        except ImportError as exc:
            raise ExportError(f"format=onnx needs onnx and onnxscript ({exc}): pip install \"docclassify[export]\"") \
                from exc
        except Exception as exc:  # noqa: BLE001 - each exporter has its own error types
            errors.append(f"{kind}: {failed_op(exc)}")
            if kind != kinds[-1]:
                log.warning("export: the %s exporter failed (%s); trying %s", kind, failed_op(exc), kinds[-1])
    raise ExportError("; ".join(errors))


def export_model(fold: FoldSpec, path: Path, settings: ExportSettings) -> dict:
    """One fold checkpoint -> ``path`` in ``settings.format`` (the ONNX file for openvino first)."""
    from docclassify.models.checkpoint import load_checkpoint

    model, _ = load_checkpoint(fold.checkpoint, "cpu")
    module = ExportModule(model, fold.orientation_head).eval()
    size = fold.input.img_size
    example = torch.zeros(2, 3, size, size)  # batch 2: a batch of 1 lets torch.export specialise the axis
    outputs = ["logits"] + (["orientation"] if fold.orientation_head != "none" else [])
    what = f"{fold.model} (fold {fold.fold}, {fold.checkpoint})"
    t0 = time.time()
    if settings.format == "torchscript":
        try:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(path))
        except Exception as exc:
            raise ExportError(f"{what}: torch.jit.trace failed at {failed_op(exc)}") from exc
        return {"exporter": "torch.jit.trace", "seconds": round(time.time() - t0, 2)}
    onnx_path = path.with_suffix(".onnx")
    try:
        used = to_onnx(module, example, onnx_path, settings.exporter, settings.opset, outputs)
    except ExportError as exc:
        raise ExportError(f"{what}: cannot be exported to ONNX: {exc}; try exporter=torchscript or dynamo, or "
                          "format=torchscript") from None
    return {"exporter": used, "seconds": round(time.time() - t0, 2)}


def to_openvino(onnx_path: Path, xml_path: Path) -> None:
    try:
        import openvino as ov
    except ImportError:
        raise ExportError("format=openvino needs the openvino package: pip install \"docclassify[openvino]\"") \
            from None
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


# --------------------------------------------------------------------------------------- INT8
def calibration_batches(run_dir: Path, fold: FoldSpec, n: int, data_overrides: dict, cache_dir: str,
                        seed: int = 0, batch: int = 16) -> list[np.ndarray]:
    """``n`` of the run's own training images (seeded sample), decoded like training and normalised like
    the model's input."""
    from docclassify.data.images import BadImageError, load_image
    from docclassify.data.sources import load_source
    from docclassify.deploy.numeric import normalise
    from docclassify.predict.run_dirs import load_run
    from docclassify.predict.testdata import run_data_config

    run = load_run(run_dir)
    source = load_source(OmegaConf.create(run_data_config(run, data_overrides)), cache_dir)
    paths = list(source.train["path"])
    rows = np.random.default_rng(seed).permutation(len(paths))[:n]
    size, resize, pad = fold.input.decode_key
    images = []
    for r in rows:
        with contextlib.suppress(BadImageError):
            images.append(load_image(paths[int(r)], size, resize, pad))
    if not images:
        raise ExportError(f"quantize=int8: no training image of {run_dir} could be decoded for calibration")
    x = normalise(np.stack(images), fold.input.mean, fold.input.std)
    return [x[i:i + batch] for i in range(0, len(x), batch)]


def quantize_int8(fp32: Path, int8: Path, batches: list[np.ndarray]) -> None:
    """ONNX Runtime static quantisation: QDQ, per-channel int8 weights, uint8 activations (MinMax ranges
    over ``batches``), after its pre-processing (shape inference, graph optimisation)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    prepared = fp32.with_name(fp32.stem + ".prep.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
    quantize_static(str(prepared), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    prepared.unlink()


# --------------------------------------------------------------------------------------- check
def check_bundle(folder: Path, spec: BundleSpec, infer_dir: Path, n: int, data_overrides: dict,
                 cache_dir: str) -> dict:
    """The bundle on the first ``n`` test images of the infer step vs its test_probs.csv."""
    import pandas as pd

    from docclassify.deploy.predictor import BundleRunner, Predictor
    from docclassify.predict.run_dirs import discover_runs
    from docclassify.predict.testdata import load_data

    if n == 0:
        return {}
    runs = discover_runs(spec.source["runs"])
    test = load_data(runs, data_overrides, cache_dir)[0].source.test
    expected = pd.read_csv(infer_dir / "test_probs.csv", dtype={"ID": str}).set_index("ID")
    rows = test.iloc[:n]
    want = expected.loc[rows["ID"].astype(str).tolist(), spec.classes].to_numpy(np.float64)
    t0 = time.time()
    got = Predictor(spec, BundleRunner(spec, folder, threads=1)).predict(list(rows["path"]), batch_size=8)
    diff = np.abs(got.probabilities - want)
    return {"images": len(rows), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "argmax_agreement": float(np.mean(got.indices == want.argmax(1))), "seconds": round(time.time() - t0, 2),
            "against": str(infer_dir / "test_probs.csv")}


def versions(settings: ExportSettings) -> dict:
    import importlib.metadata as md

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    import docclassify

    return {"docclassify": docclassify.__version__, "python": platform.python_version(),
            **{name: version(name) for name in PACKAGES},
            "opset": settings.opset}


# --------------------------------------------------------------------------------------- the whole flow
def prepare_output(output: Path) -> None:
    """An existing folder must be empty or a bundle (replaced at the end)."""
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / BUNDLE_FILE).is_file())):
        raise ExportError(f"output={output}: exists and is not a bundle folder; give a new or empty folder (an "
                          "existing bundle is replaced)")


def move_into_place(staging: Path, output: Path) -> None:
    old = output.with_name(output.name + ".old")
    if output.exists():
        os.replace(output, old)
    os.replace(staging, output)
    shutil.rmtree(old, ignore_errors=True)


def data_overrides(cfg: DictConfig, infer_dir: Path) -> dict:
    """infer's data.* overrides the check and the INT8 calibration read the data with: export's own, else
    (an infer run dir given) the ones that infer run had."""
    from docclassify.deploy.runs import infer_config
    from docclassify.predict.testdata import DATA_OVERRIDES

    given = {k: cfg.data.get(k) for k in DATA_OVERRIDES}
    made_with = infer_config(infer_dir).get("data") or {}
    return {k: given[k] if given[k] is not None else made_with.get(k) for k in DATA_OVERRIDES}


def run_export(cfg: DictConfig, run_dir: Path) -> dict:
    """The whole export (see the module docstring); returns the bundle's spec as a dict."""
    settings = ExportSettings.of(cfg)
    output = Path(str(cfg.output)).expanduser() if cfg.output else run_dir / BUNDLE_DIR
    prepare_output(output)
    infer_dir = infer_step(cfg, run_dir)
    spec = spec_from_infer(infer_dir)
    data = data_overrides(cfg, infer_dir)
    cache_dir = str(cfg.paths.cache_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(str(output) + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / MODELS_DIR).mkdir(parents=True)
    try:
        spec.check = {"exports": []}
        for i, member in enumerate(spec.members):
            for fold in member.folds:
                export_fold(staging, i, member.run, fold, settings, data, cache_dir, spec)
        spec.backend, spec.quantize = settings.format, settings.quantize
        spec.versions = versions(settings)
        exports = spec.check.pop("exports")
        spec.check = check_bundle(staging, spec, infer_dir, settings.check_images, data, cache_dir)
        spec.check["exports"] = exports
        enforce_tolerance(spec, settings)
        spec.source["bundle_bytes"] = bundle_bytes(staging)
        spec.save(staging)
        move_into_place(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("export: bundle %s (%s%s, %d fold model(s), %.1f MB)%s", output, settings.format,
             ", int8" if settings.quantize == "int8" else "", len(spec.folds), spec.source["bundle_bytes"] / 1e6,
             "" if not spec.check.get("images") else
             f"; on {spec.check['images']} test images its probabilities differ from infer's by at most "
             f"{spec.check['max_abs_diff']:.2e} (argmax agreement {spec.check['argmax_agreement']:.3f})")
    print(f"Bundle: {output}", flush=True)
    return {**spec.as_dict(), "bundle": str(output)}


def export_fold(staging: Path, member: int, run: str, fold: FoldSpec, settings: ExportSettings, data: dict,
                cache_dir: str, spec: BundleSpec) -> None:
    """One fold model into ``staging/models/`` (fold.file and fold.bytes updated)."""
    stem = f"{MODELS_DIR}/run{member}_fold{fold.fold}"
    path = staging / (stem + SUFFIX[settings.format])
    info = export_model(fold, path, settings)
    if settings.format != "torchscript":
        onnx_path = path.with_suffix(".onnx")
        if settings.quantize == "int8":
            run_dir = Path(fold.checkpoint).parent.parent
            int8 = onnx_path.with_name(onnx_path.stem + ".int8.onnx")
            quantize_int8(onnx_path, int8, calibration_batches(run_dir, fold, settings.calibration_images, data,
                                                               cache_dir))
            onnx_path.unlink()
            onnx_path = int8
            path = int8 if settings.format == "onnx" else path
        if settings.format == "openvino":
            to_openvino(onnx_path, path)
            onnx_path.unlink()
    fold.file = str(path.relative_to(staging))
    fold.bytes = sum(p.stat().st_size for p in path.parent.glob(path.stem + ".*"))
    spec.check["exports"].append({"run": run, "fold": fold.fold, "file": fold.file, **info})
    log.info("export: %s fold %d (%s) -> %s in %.1fs", run, fold.fold, fold.model, fold.file, info["seconds"])


def enforce_tolerance(spec: BundleSpec, settings: ExportSettings) -> None:
    check = spec.check
    if settings.quantize != "none" or not check.get("images"):
        return
    if check["max_abs_diff"] > settings.tolerance:
        raise ExportError(f"the exported bundle's probabilities differ from the infer step's by up to "
                          f"{check['max_abs_diff']:.3g} on {check['images']} test images "
                          f"(tolerance={settings.tolerance}); "
                          "no bundle was written. Try exporter=torchscript, or report the model "
                          f"({', '.join(sorted({f.model for f in spec.folds}))})")


def read_bundle_summary(folder: Path) -> dict:
    return json.loads((folder / BUNDLE_FILE).read_text())


__all__ = ["BundleError", "ExportError", "run_export"]
