"""`python -m docclassify.export`: a real tiny run (with an orientation head) -> bundles whose predictions
equal `python -m docclassify.infer`'s test_probs.csv; Predictor.from_run on the same infer run; INT8,
TorchScript, the dynamo exporter, tta=orient, the export keys and the refusals."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import run_cli
from scipy.special import softmax

from docclassify import Predictor
from docclassify.deploy.bundle import BundleError
from docclassify.deploy.export import ExportError

pytestmark = pytest.mark.slow


def test_onnx_bundle_predicts_what_infer_predicted(deployed):
    """The brief's check: 20 test images, probabilities within 1e-4 of infer tta=none, argmax identical."""
    want, classes = deployed.infer_probs(20)
    got = Predictor.from_bundle(deployed.bundle).predict(deployed.test_paths(20), batch_size=7)
    assert got.classes == classes and len(got) == 20
    assert np.abs(got.probabilities - want).max() < 1e-4
    assert np.array_equal(got.indices, want.argmax(1))
    spec = json.loads((deployed.bundle / "bundle.json").read_text())
    assert spec["check"]["images"] == 20 and spec["check"]["max_abs_diff"] < 1e-4
    assert spec["temperature"] != 1.0  # infer's OOF-fitted temperature travels with the bundle
    model = onnx.load(deployed.bundle / spec["members"][0]["folds"][0]["file"])
    assert [o.name for o in model.graph.output] == ["logits", "orientation"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a dynamic batch axis


def test_from_run_of_the_infer_dir_is_infer_with_torch(deployed):
    want, _ = deployed.infer_probs()
    got = Predictor.from_run(deployed.infer).predict(deployed.test_paths())
    assert np.abs(got.probabilities - want).max() < 1e-6
    with pytest.raises(BundleError, match="is an infer run dir, whose own TTA"):
        Predictor.from_run(deployed.infer, tta="flip")
    # a training run dir: its folds averaged, no temperature: infer's probabilities with its temperature undone
    temperature = json.loads((deployed.bundle / "bundle.json").read_text())["temperature"]
    plain = Predictor.from_run(deployed.run).predict(deployed.test_paths(5))
    np.testing.assert_allclose(plain.probabilities, softmax(temperature * np.log(want[:5]), axis=1), atol=1e-6)


@pytest.fixture
def export(exporter):
    """export(deployed, folder, *overrides): the infer run of the fixture exported into folder/b."""
    def run(deployed, tmp_path, *args):
        return exporter([f"runs=[{deployed.infer}]", f"output={tmp_path / 'b'}", *args], tmp_path / "run")
    return run


def test_int8_quantises_every_conv_and_stays_close(deployed, tmp_path, export):
    export(deployed, tmp_path, "quantize=int8", "exporter=torchscript", "calibration_images=40", "check_images=10")
    spec = json.loads((tmp_path / "b" / "bundle.json").read_text())
    fold = spec["members"][0]["folds"][0]
    ops = {n.op_type for n in onnx.load(tmp_path / "b" / fold["file"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and spec["quantize"] == "int8"
    assert fold["bytes"] < json.loads((deployed.bundle / "bundle.json").read_text())["members"][0]["folds"][0]["bytes"]
    assert spec["check"]["images"] == 10 and 0 < spec["check"]["max_abs_diff"] < 0.05
    got = Predictor.from_bundle(tmp_path / "b").predict(deployed.test_paths(10))
    assert np.isfinite(got.probabilities).all()


def test_torchscript_format_and_the_dynamo_exporter(deployed, tmp_path, export):
    want, _ = deployed.infer_probs(10)
    export(deployed, tmp_path, "format=torchscript", "check_images=10")
    got = Predictor.from_bundle(tmp_path / "b").predict(deployed.test_paths(10))
    assert np.abs(got.probabilities - want).max() < 1e-5
    out = tmp_path / "dyn"
    out.mkdir()
    export(deployed, out, "exporter=dynamo", "opset=18", "check_images=10")
    spec = json.loads((out / "b" / "bundle.json").read_text())
    assert spec["check"]["exports"][0]["exporter"] == "dynamo" and spec["check"]["max_abs_diff"] < 1e-4
    assert onnx.load(out / "b" / spec["members"][0]["folds"][0]["file"]).opset_import[0].version == 18
    old = tmp_path / "old"
    old.mkdir()
    export(deployed, old, "exporter=torchscript", "opset=16", "check_images=0")
    spec = json.loads((old / "b" / "bundle.json").read_text())
    assert onnx.load(old / "b" / spec["members"][0]["folds"][0]["file"]).opset_import[0].version == 16
    assert "images" not in spec["check"]  # check_images=0: no comparison made


def test_orient_bundle_turns_images_back_like_infer(deployed, tmp_path, exporter):
    """tta=orient through the head: export runs infer itself on the training run."""
    exporter([f"runs=[{deployed.run}]", "tta=orient", "exporter=torchscript", f"output={tmp_path / 'b'}"],
             tmp_path / "run")
    spec = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert spec["tta"]["mode"] == "orient" and spec["check"]["max_abs_diff"] < 1e-4
    infer_dir = tmp_path / "run" / "infer"
    paths = deployed.test_paths()
    bundle = Predictor.from_bundle(tmp_path / "b").predict(paths)
    torch_side = Predictor.from_run(infer_dir).predict(paths)
    np.testing.assert_allclose(bundle.probabilities, torch_side.probabilities, atol=1e-5)
    assert bundle.orientation == torch_side.orientation and all(o is not None for o in bundle.orientation)


def test_a_tolerance_it_cannot_meet_writes_no_bundle(deployed, tmp_path, export):
    with pytest.raises(ExportError, match=r"tolerance=1e-30\); no bundle was written"):
        export(deployed, tmp_path, "exporter=torchscript", "tolerance=1e-30", "check_images=5")
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob("b.partial*"))


def test_refusals_name_the_key(deployed, tmp_path, export, exporter):
    with pytest.raises(ExportError, match="quantize=int8 with format=torchscript"):
        export(deployed, tmp_path, "format=torchscript", "quantize=int8")
    with pytest.raises(ExportError, match="made with tta=none"):
        export(deployed, tmp_path, "tta=dihedral")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="is not a bundle folder"):
        exporter([f"runs=[{deployed.infer}]", f"output={tmp_path / 'taken'}"], tmp_path / "r2")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    # the command line: a refusal is one line on stderr and exit code 2
    proc = run_cli("docclassify.export", [f"runs=[{deployed.infer}]", "format=torchscript", "quantize=int8",
                                          f"hydra.run.dir={tmp_path / 'r3'}"], env=deployed.env, check=False)
    assert proc.returncode == 2 and "docclassify.export: error: quantize=int8 with format=torchscript" in proc.stderr
    proc = run_cli("docclassify.export", [f"runs=[{deployed.infer}]", "model=tiny"], env=deployed.env, check=False)
    assert proc.returncode == 2 and "model is an option of python -m docclassify.train" in proc.stderr


def test_openvino_bundle_fp32_and_int8(deployed, tmp_path, export):
    pytest.importorskip("openvino")
    want, _ = deployed.infer_probs(10)
    export(deployed, tmp_path, "format=openvino", "exporter=torchscript", "check_images=10")
    spec = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert spec["backend"] == "openvino" and spec["members"][0]["folds"][0]["file"].endswith(".xml")
    got = Predictor.from_bundle(tmp_path / "b").predict(deployed.test_paths(10))
    assert np.abs(got.probabilities - want).max() < 1e-4
    out = tmp_path / "q"
    out.mkdir()
    export(deployed, out, "format=openvino", "quantize=int8", "exporter=torchscript", "calibration_images=40",
           "check_images=10")
    spec = json.loads((out / "b" / "bundle.json").read_text())
    assert spec["quantize"] == "int8" and spec["check"]["max_abs_diff"] < 0.05


def test_calibration_images_is_how_many_training_images_calibrate(deployed):
    from docclassify.deploy.export import calibration_batches
    from docclassify.deploy.runs import spec_from_infer

    fold = spec_from_infer(deployed.infer).folds[0]
    for n in (7, 40):
        batches = calibration_batches(deployed.run, fold, n, {}, deployed.env["DOCCLASSIFY_CACHE"])
        assert sum(len(b) for b in batches) == n and batches[0].shape[1:] == (3, 32, 32)
