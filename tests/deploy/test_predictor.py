"""``from docclassify import Predictor`` on a real bundle: input kinds, bad input named, and a bundle
predicted in a process where torch, timm, hydra, albumentations (and scipy, scikit-learn, omegaconf)
cannot be imported, as in a `docclassify[serve]` install."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from docclassify import Predictor
from docclassify.data.images import BadImageError, ImageTooLargeError
from docclassify.deploy.bundle import BundleError
from docclassify.deploy.predictor import PredictInputError

pytestmark = pytest.mark.slow  # the shared fixture trains a run


@pytest.fixture(scope="module")
def predictor(deployed):
    return Predictor.from_bundle(deployed.bundle, threads=1)


def test_paths_pil_images_arrays_and_bytes(predictor, deployed, tmp_path):
    path = deployed.test_paths(1)[0]
    png = tmp_path / "page.png"  # lossless: every way in decodes the same pixels (a JPEG path is drafted)
    Image.open(path).save(png)
    page = np.asarray(Image.open(png).convert("RGB"))
    got = predictor.predict([str(png), Image.open(png), page, png.read_bytes(), page[..., 0]])
    assert got.names[0] == str(png) and got.names[1].startswith("inputs[1]")
    for i in (1, 2, 3):
        np.testing.assert_allclose(got.probabilities[i], got.probabilities[0], atol=1e-7)
    assert got.labels[0] in predictor.classes and got.errors == [None] * 5
    one = predictor.predict(str(png))  # one input alone is a list of one
    np.testing.assert_allclose(one.probabilities[0], got.probabilities[0], atol=1e-7)
    frame = got.to_frame()
    assert list(frame.columns[:5]) == ["name", "label", "error", "orientation", "skew"] and len(frame) == 5


def test_batch_size_does_not_change_predictions(predictor, deployed):
    paths = deployed.test_paths(12)
    a, b = predictor.predict(paths, batch_size=1), predictor.predict(paths, batch_size=5)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)


def test_bad_inputs_name_the_item(predictor, deployed, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    good = deployed.test_paths(1)[0]
    with pytest.raises(BadImageError, match="broken.jpg: cannot decode"):
        predictor.predict([good, str(broken)])
    with pytest.raises(BadImageError, match="missing.jpg: cannot read"):
        predictor.predict([str(tmp_path / "missing.jpg")])
    with pytest.raises(PredictInputError, match=r"inputs\[1\]: a numpy array of dtype float32"):
        predictor.predict([good, np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(PredictInputError, match=r"inputs\[0\]: a numpy array of shape \(8, 8, 2\)"):
        predictor.predict([np.zeros((8, 8, 2), np.uint8)])
    with pytest.raises(PredictInputError, match="empty list"):
        predictor.predict([])
    with pytest.raises(PredictInputError, match="inputs: a int"):
        predictor.predict(3)
    with pytest.raises(ImageTooLargeError, match="more than the limit of 100"):
        predictor.predict([good], max_pixels=100)
    skipped = predictor.predict([good, str(broken)], on_error="skip")
    assert skipped.errors[0] is None and "cannot decode" in skipped.errors[1] and skipped.labels[1] is None
    assert np.isnan(skipped.probabilities[1]).all() and skipped.indices[1] == -1


def test_a_bundle_folder_missing_a_model_file_is_refused(deployed, tmp_path):
    import shutil

    copy = shutil.copytree(deployed.bundle, tmp_path / "b")
    spec = json.loads((copy / "bundle.json").read_text())
    (copy / spec["members"][0]["folds"][1]["file"]).unlink()
    with pytest.raises(BundleError, match="model file.* missing: models/run0_fold1.onnx"):
        Predictor.from_bundle(copy)
    with pytest.raises(BundleError, match="no bundle.json"):
        Predictor.from_bundle(tmp_path)


BLOCKED = ("torch", "torchvision", "timm", "hydra", "albumentations", "omegaconf", "scipy", "sklearn")


def test_from_bundle_without_torch_timm_hydra_or_albumentations(deployed, tmp_path):
    """A process whose imports of the training stack fail predicts the bundle, and gets infer's numbers."""
    want, _ = deployed.infer_probs(20)
    np.save(tmp_path / "want.npy", want)
    (tmp_path / "paths.json").write_text(json.dumps(deployed.test_paths(20)))
    script = textwrap.dedent(f"""
        import json, sys
        import importlib.abc

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED!r}:
                    raise ImportError(f"blocked: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        import numpy as np
        from docclassify import Predictor

        got = Predictor.from_bundle({str(deployed.bundle)!r}).predict(json.load(open({str(tmp_path / 'paths.json')!r})))
        want = np.load({str(tmp_path / 'want.npy')!r})
        assert np.abs(got.probabilities - want).max() < 1e-4, np.abs(got.probabilities - want).max()
        assert (got.indices == want.argmax(1)).all()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
        assert not loaded, loaded
        print("ok", len(got))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok 20"
