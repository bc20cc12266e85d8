"""DDP: the real `torchrun --nproc_per_node=2 -m docclassify.train` (gloo on CPU) on tiny data."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, TINY, run_cli
from sklearn.metrics import f1_score

from docclassify.data.images import load_image
from docclassify.engine.distributed import lr_factor, scaling
from docclassify.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available in this torch build")


def torchrun(args: list[str], cwd, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N -m docclassify.train ARGS` with this interpreter (the
    launcher forked from this process by run_cli; its ranks are new interpreters, as torchrun starts them)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = run_cli("torch.distributed.run", ["--standalone", f"--nproc_per_node={nproc}", "-m", "docclassify.train",
                                             *args], cwd=cwd, env=env, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


@pytest.mark.slow
def test_torchrun_two_processes_one_output_exact_oof(tiny_data, tmp_path):
    # A run dir that differs per rank (as ${now:...} may, a second apart): rank 0's must win.
    proc = torchrun(["data=competition", f"data.root={tiny_data}", *TINY, "trainer.epochs=2", "trainer.batch_size=8",
                     "folds.n=2", "folds.run=[0]", "regularization.ema=true", "trainer.lr_scale=linear",
                     "hydra.run.dir=outputs/rank${oc.env:RANK}"], cwd=tmp_path)

    run_dirs = list((tmp_path / "outputs").iterdir())
    assert [d.name for d in run_dirs] == ["rank0"], f"one run dir expected, got {run_dirs}"
    run_dir = run_dirs[0]
    assert [p.parent for p in tmp_path.rglob("results.json")] == [run_dir]
    assert len(list(tmp_path.rglob(".hydra"))) == 1 and len(list(tmp_path.rglob("*.log"))) == 1
    log_text = (run_dir / "train.log").read_text()
    assert log_text.count("cv macro F1") == 1 and log_text.count("fold 0 epoch 2/2") <= 1  # rank 0 only
    assert (proc.stdout + proc.stderr).count("cv macro F1") == 1

    results = json.loads((run_dir / "results.json").read_text())
    assert results["distributed"] == {
        "world_size": 2, "backend": "gloo", "batch_size_per_process": 8, "accum_steps": 1,
        "effective_batch_size": 16, "lr_scale": "linear", "base_lr": results["distributed"]["base_lr"],
        "lr": 2 * results["distributed"]["base_lr"],
    }
    # The schedule's peak (timm's initial_lr) is the scaled lr.
    last = torch.load(run_dir / "checkpoints" / "fold0_last.pt", map_location="cpu", weights_only=False)
    assert {g["initial_lr"] for g in last["optimizer"]["param_groups"]} == {results["distributed"]["lr"]}

    # Every validation row of fold 0 exactly once (no DistributedSampler padding, no lost shard).
    folds = pd.read_csv(run_dir / "folds.csv")
    oof = pd.read_csv(run_dir / "oof.csv")
    val_ids = folds.loc[folds["fold"] == 0, "ID"]
    assert oof["ID"].is_unique and list(oof["ID"]) == list(val_ids)
    assert results["n_oof_rows"] == len(val_ids) == results["folds"][0]["n_val"]
    assert results["cv_macro_f1"] == f1_score(oof["target"], oof["pred"], average="macro")

    # The gathered logits are those of one process evaluating the saved (EMA) weights.
    model, ckpt = load_checkpoint(run_dir / results["folds"][0]["checkpoint"])
    assert ckpt["weights"] == "ema"
    meta = ckpt["meta"]
    images = np.stack([load_image(tiny_data / "train" / i, meta["img_size"], meta["resize"], meta["pad_value"])
                       for i in oof["ID"]])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.tensor(meta["mean"]).view(1, 3, 1, 1)) / torch.tensor(meta["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = model(x).numpy()
    np.testing.assert_allclose(np.load(run_dir / "oof_logits.npy"), expected, atol=1e-4, rtol=1e-4)

    # The robust copies are sharded and gathered like the clean rows: each row's 2 copies once, in
    # order, with the logits one process gets from the saved weights on the cached copies.
    robust = pd.read_csv(run_dir / "oof_robust.csv")  # the estimating copy of each row; the selecting
    select = pd.read_csv(run_dir / "oof_robust_select.csv")  # copy in oof_robust_select.csv
    assert list(robust["ID"]) == list(select["ID"]) == list(val_ids)
    assert list(robust["copy"]) == [1] * len(val_ids) and list(select["copy"]) == [0] * len(val_ids)
    assert results["cv_macro_f1_robust"] == f1_score(robust["target"], robust["pred"], average="macro")
    from docclassify.data.validation import robust_copies
    from docclassify.distortion.copies import RobustSpec, copy_rows

    train = pd.read_csv(tiny_data / "train.csv", dtype={"ID": str})
    copies = robust_copies([tiny_data / "train" / i for i in train["ID"]], train["ID"].tolist(),
                           RobustSpec.from_dict(results["validation"]), meta["img_size"], meta["resize"],
                           meta["pad_value"], None)
    rows = copy_rows(np.flatnonzero(train["ID"].isin(val_ids).to_numpy()), 2)
    x = torch.from_numpy(np.ascontiguousarray(copies[rows])).permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.tensor(meta["mean"]).view(1, 3, 1, 1)) / torch.tensor(meta["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = model(x).numpy()
    got = np.stack([np.load(run_dir / "oof_robust_select_logits.npy"), np.load(run_dir / "oof_robust_logits.npy")], 1)
    np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=1e-4, rtol=1e-4)


def test_lr_scale_rules_and_single_process_scaling():
    assert lr_factor("none", 4) == 1.0 and lr_factor("linear", 4) == 4.0 and lr_factor("sqrt", 4) == 2.0
    with pytest.raises(ValueError, match="trainer.lr_scale"):
        lr_factor("cubic", 2)
    from omegaconf import OmegaConf

    s = scaling(OmegaConf.create({"batch_size": 16, "accum_steps": 2, "lr": 1e-3, "lr_scale": "linear"}))
    assert s["world_size"] == 1 and s["effective_batch_size"] == 32 and s["lr"] == 1e-3 and s["backend"] is None


@pytest.fixture
def one_rank_group(tmp_path):
    """A real (gloo, world size 1) process group in this process."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def test_sync_bn_converts_batchnorm_under_ddp_and_refuses_cpu(one_rank_group):
    from docclassify.engine.distributed import convert_sync_batchnorm
    from docclassify.models.factory import create_model

    model = create_model("test_resnet", 17, pretrained=False)
    with pytest.raises(ValueError, match="trainer.sync_bn=true needs CUDA"):
        convert_sync_batchnorm(model, True, torch.device("cpu"))
    assert convert_sync_batchnorm(model, False, torch.device("cuda")) is model
    converted = convert_sync_batchnorm(model, True, torch.device("cuda"))  # conversion only: no CUDA needed
    kinds = {type(m) for m in converted.modules()}
    assert torch.nn.SyncBatchNorm in kinds and torch.nn.BatchNorm2d not in kinds
    # Same parameter/buffer names: its checkpoints load into a plain model.
    assert converted.state_dict().keys() == create_model("test_resnet", 17, pretrained=False).state_dict().keys()
