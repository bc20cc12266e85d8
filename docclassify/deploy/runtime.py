"""Running a bundle's model files: ONNX Runtime (``backend: onnx``, no torch), TorchScript (needs
torch) or OpenVINO (needs the ``openvino`` package). Each gives a :data:`numeric.Forward`: a float32
NCHW batch in, (class logits, orientation logits or None) out."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from docclassify.deploy.bundle import BundleError, FoldSpec

INPUT_NAME, OUTPUT_NAMES = "input", ("logits", "orientation")


def missing_package(package: str, extra: str, what: str) -> BundleError:
    return BundleError(f"{what} needs the {package} package, which is not installed: "
                       f"pip install \"docclassify[{extra}]\" (or pip install {package})")


def default_threads() -> int:
    """Intra-op threads of a model: DOCCLASSIFY_THREADS, else every core."""
    return max(1, int(os.environ.get("DOCCLASSIFY_THREADS") or os.cpu_count() or 1))


class OnnxModel:
    """One ``.onnx`` file in an ONNX Runtime session (CPU). ``session.run`` may be called from several
    threads at once (ONNX Runtime's sessions are thread-safe)."""

    def __init__(self, path: Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing_package("onnxruntime", "serve", f"{path}: an ONNX bundle") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or default_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise BundleError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]}); export the run "
                              "again") from exc
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: np.ndarray):
        out = self.session.run(None, {INPUT_NAME: x})
        return out[0], (out[1] if len(out) > 1 else None)


class TorchScriptModel:
    def __init__(self, path: Path, threads: int | None = None):
        try:
            import torch
        except ImportError:
            raise missing_package("torch", "export", f"{path}: a TorchScript bundle") from None
        self.torch = torch
        self.module = torch.jit.load(str(path), map_location="cpu").eval()

    def __call__(self, x: np.ndarray):
        with self.torch.inference_mode():
            out = self.module(self.torch.from_numpy(x))
        if isinstance(out, (tuple, list)):
            return out[0].float().numpy(), out[1].float().numpy()
        return out.float().numpy(), None


class OpenVinoModel:
    def __init__(self, path: Path, threads: int | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise missing_package("openvino", "openvino", f"{path}: an OpenVINO bundle") from None
        core = ov.Core()
        # f32: a CPU with bf16 units would otherwise run float32 models in bf16 (INT8 models stay INT8)
        config = {"INFERENCE_NUM_THREADS": int(threads or default_threads()), "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.n_outputs = len(self.compiled.outputs)

    def __call__(self, x: np.ndarray):
        request = self.compiled.create_infer_request()  # one per call: safe from several threads
        out = request.infer({0: x})
        values = [np.asarray(out[self.compiled.outputs[i]]) for i in range(self.n_outputs)]
        return values[0], (values[1] if len(values) > 1 else None)


BACKENDS = {"onnx": OnnxModel, "torchscript": TorchScriptModel, "openvino": OpenVinoModel}


def load_model(folder: Path, fold: FoldSpec, backend: str, threads: int | None = None):
    model = BACKENDS[backend](Path(folder) / fold.file, threads)
    return model
