"""Folders users have: a torchvision ImageFolder tree (root/<class>/*.jpg) trains, a loose folder
of images is predicted (no train.csv, train/ or sample_submission.csv), and the documented
preprocessing (docs/inference.md#preprocessing) with plain timm + safetensors + PIL gives infer's
probabilities. One tiny run on such a tree is shared by the slow tests."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, run_cli

from docclassify.data.sources import (
    DataError,
    imagefolder_layout,
    load_competition,
    load_imagefolder,
)


def _class_tree(tiny_data: Path, root: Path, split: bool = False) -> Path:
    """tiny_data's training images as root/<class_name>/<file> (root/train/<class_name>/ with split)."""
    meta = pd.read_csv(tiny_data / "meta.csv")
    names = dict(zip(meta["target"], meta["class_name"]))
    base = root / "train" if split else root
    for image_id, target in pd.read_csv(tiny_data / "train.csv").itertuples(index=False):
        (base / names[target]).mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_data / "train" / image_id, base / names[target] / image_id)
    return root


def _loose_folder(tiny_data: Path, folder: Path, n: int = 5) -> Path:
    """n test images under shuffled new names, nothing else in the folder."""
    folder.mkdir(parents=True)
    for i, src in enumerate(sorted((tiny_data / "test").iterdir())[:n]):
        shutil.copy(src, folder / f"scan_{(7 * i) % n}_{i}.jpg")
    return folder


# --- layouts and class names, without training ----------------------------------------------------

def test_imagefolder_takes_both_layouts_and_says_which(tiny_data, tmp_path, caplog):
    flat = _class_tree(tiny_data, tmp_path / "flat")
    split = _class_tree(tiny_data, tmp_path / "split", split=True)
    _loose_folder(tiny_data, split / "test", n=3)
    with caplog.at_level(logging.INFO, logger="docclassify.data.sources"):
        a, b = load_imagefolder(flat), load_imagefolder(split)
    assert a.classes == b.classes == sorted(pd.read_csv(tiny_data / "meta.csv")["class_name"])
    assert len(a.train) == len(b.train) == len(pd.read_csv(tiny_data / "train.csv"))
    assert a.test is None and len(b.test) == 3
    assert imagefolder_layout(flat)[1].startswith("<class>/") and imagefolder_layout(split)[1] == "train/<class>/"
    text = caplog.text
    assert "layout <class>/ (torchvision ImageFolder)" in text and "layout train/<class>/" in text
    with pytest.raises(DataError, match="at least 2 class sub-folders"):
        load_imagefolder(_loose_folder(tiny_data, tmp_path / "loose"))


def test_meta_csv_is_optional(data, caplog):
    named = load_competition(data)
    with caplog.at_level(logging.INFO, logger="docclassify.data.sources"):
        unnamed = load_competition(data, meta_csv=None)
    assert unnamed.classes == [f"class_{k}" for k in range(len(named.classes))]
    assert unnamed.train["target"].tolist() == named.train["target"].tolist()
    assert "data.meta_csv=null: class names class_0..class_16" in caplog.text
    (data / "meta.csv").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="docclassify.data.sources"):
        assert load_competition(data).classes == unnamed.classes
    assert f"no meta.csv in {data}" in caplog.text


def test_data_meta_csv_null_composes(tiny_data, tmp_path):
    proc = run_cli("docclassify.train", ["data=competition", f"data.root={tiny_data}", "data.meta_csv=null",
                                         "--cfg", "job"])
    assert "meta_csv: null" in proc.stdout


# --- a run on a plain class tree -----------------------------------------------------------------

@pytest.fixture(scope="module")
def tree_run(tiny_data, tmp_path_factory, isolated_env):
    root = tmp_path_factory.mktemp("tree")
    tree = _class_tree(tiny_data, root / "docs")
    run_dir = root / "run"
    proc = run_cli("docclassify.train", ["data=imagefolder", f"data.root={tree}", *TINY, "folds.n=2", "folds.run=[0]",
                                         "validation=clean", f"hydra.run.dir={run_dir}"], env=isolated_env)
    return SimpleNamespace(tree=tree, run_dir=run_dir, proc=proc, env=isolated_env, root=root)


@pytest.mark.slow
def test_a_plain_class_tree_trains(tree_run, tiny_data):
    results = json.loads((tree_run.run_dir / "results.json").read_text())
    assert results["classes"] == sorted(pd.read_csv(tiny_data / "meta.csv")["class_name"])
    assert "layout <class>/ (torchvision ImageFolder)" in tree_run.proc.stdout + tree_run.proc.stderr
    checkpoints = sorted(p.name for p in (tree_run.run_dir / "checkpoints").iterdir())
    assert "fold0_best.safetensors" in checkpoints and not any(".partial" in c for c in checkpoints)


def _infer(tree_run, out: Path, args: list[str]):
    proc = run_cli("docclassify.infer", [f"runs=[{tree_run.run_dir}]", f"hydra.run.dir={out}", *args], env=tree_run.env)
    return proc, pd.read_csv(out / "submission.csv", dtype={"ID": str}), pd.read_csv(out / "test_probs.csv",
                                                                                     dtype={"ID": str})


@pytest.mark.slow
def test_a_loose_folder_is_predicted(tree_run, tiny_data):
    folder = _loose_folder(tiny_data, tree_run.root / "loose")
    names = sorted(p.name for p in folder.iterdir())
    proc, sub, probs = _infer(tree_run, tree_run.root / "inf_inputs", [f"inputs={folder}", "tta=flip"])
    assert sub["ID"].tolist() == names == probs["ID"].tolist()
    assert sub["target"].between(0, 16).all()
    # data.test_dir=FOLDER the same, here with the training data gone: the saved OOF rows fit the temperature
    moved = tree_run.root / "moved"
    shutil.copytree(tree_run.run_dir, moved)
    proc2, sub2, probs2 = _infer(SimpleNamespace(**{**vars(tree_run), "run_dir": moved}), tree_run.root / "inf_dir",
                                 [f"data.test_dir={folder}", f"data.root={tree_run.root / 'nowhere'}", "tta=flip"])
    assert sub2["ID"].tolist() == names
    assert "saved OOF predictions are used" in proc2.stdout + proc2.stderr
    summary = json.loads((tree_run.root / "inf_dir" / "summary.json").read_text())
    assert summary["runs"][0]["dir"] == str(moved)
    # data.root=FOLDER of images (no train.csv, train/, sample_submission.csv): the same folder
    _, sub3, probs3 = _infer(tree_run, tree_run.root / "inf_root", [f"data.root={folder}", "tta=flip"])
    assert sub3["ID"].tolist() == names
    assert np.allclose(probs3.iloc[:, 1:].to_numpy(), probs.iloc[:, 1:].to_numpy(), atol=1e-6)


@pytest.mark.slow
def test_plain_timm_and_pil_reproduce_infer(tree_run, tiny_data):
    """docs/inference.md#preprocessing, followed with plain PIL/numpy, timm and safetensors."""
    import safetensors.torch
    import timm
    import torch
    from PIL import Image, ImageOps
    from safetensors import safe_open

    folder = _loose_folder(tiny_data, tree_run.root / "timm_check", n=8)
    _, _, probs = _infer(tree_run, tree_run.root / "inf_timm", [f"inputs={folder}", "tta=none", "calibrate=false"])
    path = tree_run.run_dir / "checkpoints" / "fold0_best.safetensors"
    with safe_open(str(path), "pt") as f:
        cfg = json.loads(f.metadata()["pretrained_cfg"])
        prep = json.loads(f.metadata()["preprocessing"])
    assert cfg["input_size"] == [3, 32, 32] and cfg["crop_mode"] == "border" and cfg["crop_pct"] == 1.0
    model = timm.create_model(cfg["architecture"], num_classes=cfg["num_classes"]).eval()
    model.load_state_dict(safetensors.torch.load_file(str(path)))
    # timm's own loader takes the same cfg (pretrained_cfg fields only) and file
    via_timm = timm.create_model(cfg["architecture"], pretrained=True, pretrained_cfg={**cfg, "file": str(path)}).eval()

    def preprocess(file, S=prep["size"]):
        img = Image.open(file)
        if img.format == "JPEG":
            img.draft("RGB", (S, S))
        img = ImageOps.exif_transpose(img).convert("RGB")
        h, w = img.height, img.width
        nh, nw = max(1, round(h * S / max(h, w))), max(1, round(w * S / max(h, w)))
        canvas = np.full((S, S, 3), prep["pad_value"], np.uint8)
        top, left = (S - nh) // 2, (S - nw) // 2
        canvas[top:top + nh, left:left + nw] = np.asarray(img.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0))
        x = (canvas / 255.0 - np.array(prep["mean"])) / np.array(prep["std"])
        return torch.from_numpy(x.transpose(2, 0, 1)).float()[None]

    x = torch.cat([preprocess(folder / i) for i in probs["ID"]])
    with torch.no_grad():
        mine, theirs = model(x).softmax(1).numpy(), via_timm(x).softmax(1).numpy()
    expected = probs[cfg["label_names"]].to_numpy()
    assert np.abs(mine - expected).max() < 1e-4
    assert np.abs(theirs - expected).max() < 1e-4
