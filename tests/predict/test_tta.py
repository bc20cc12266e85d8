from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from docclassify.predict.tta import (
    VIEW_SETS,
    View,
    apply_view,
    apply_view_numpy,
    get_views,
    predict_tta,
    predict_tta_batches,
    resolve_tta,
)

CONF_TTA = Path(__file__).resolve().parents[2] / "docclassify" / "conf" / "tta"
EXPECTED_COUNTS = {"none": 1, "flip": 2, "rot90": 4, "dihedral": 8, "essential": 5,
                   "comprehensive": 15}


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).numpy()


def _dihedral_views():
    return [v for v in get_views("comprehensive") if v.is_dihedral]


@pytest.mark.parametrize("view", _dihedral_views(), ids=lambda v: v.name)
def test_views_match_numpy_exactly(view):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)  # non-square on purpose
    got = _to_numpy(apply_view(_to_tensor(img), view))
    want = apply_view_numpy(img, view)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def test_numpy_reference_semantics():
    img = np.arange(6).reshape(2, 3, 1)  # [[0,1,2],[3,4,5]]
    # one counter-clockwise turn: top row becomes the last column read upwards
    np.testing.assert_array_equal(apply_view_numpy(img, View("r", k=1))[..., 0],
                                  [[2, 5], [1, 4], [0, 3]])
    # mirror applied before the turn
    np.testing.assert_array_equal(apply_view_numpy(img, View("h", hflip=True, k=1))[..., 0],
                                  [[0, 3], [1, 4], [2, 5]])
    with pytest.raises(ValueError, match="flips/turns only"):
        apply_view_numpy(img, View("a", angle=5.0))


def test_view_sets_counts_and_no_duplicates():
    assert set(VIEW_SETS) == set(EXPECTED_COUNTS)
    for name, n in EXPECTED_COUNTS.items():
        views = get_views(name)
        assert len(views) == n, name
        assert len({v.key for v in views}) == n, f"duplicate transforms in {name}"
        assert len({v.name for v in views}) == n, f"duplicate names in {name}"
        assert views[0].key == View("identity").key  # identity first everywhere
    assert {v.key for v in get_views("dihedral")} == {
        (k, f, 0.0, 1.0) for k in range(4) for f in (False, True)
    }
    assert get_views("dihedral") is not get_views("dihedral")  # fresh lists


def test_get_views_unknown_lists_valid_names():
    with pytest.raises(ValueError, match="dihedral.*comprehensive|comprehensive"):
        get_views("random_rotations")


def test_view_validation():
    with pytest.raises(ValueError):
        View("z", zoom=1.5)
    with pytest.raises(ValueError):
        View("z", zoom=0.0)
    with pytest.raises(TypeError):
        View("k", k=1.5)
    assert View("k", k=5).k == 1


def test_small_angle_direction_matches_turns():
    # Rotating a square odd-sized image by exactly 90 degrees with the bilinear path must
    # land on the exact turn: same (counter-clockwise) direction, pixel centres on centres.
    torch.manual_seed(0)
    x = torch.rand(2, 3, 9, 9)
    by_angle = apply_view(x, View("a90", angle=90.0))
    by_turn = apply_view(x, View("k1", k=1))
    torch.testing.assert_close(by_angle, by_turn, atol=1e-4, rtol=0)


def test_angle_and_zoom_are_deterministic_and_shape_preserving():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    for v in get_views("comprehensive"):
        a, b = apply_view(x, v), apply_view(x, v)
        assert a.shape == x.shape
        assert torch.equal(a, b)
    zoomed = apply_view(x, View("z", zoom=0.9))
    assert not torch.equal(zoomed, x)
    rotated = apply_view(x, View("r", angle=10.0))
    assert rotated[..., 0, 0].abs().max() == 0  # corners padded with 0
    # zoom of a constant image stays constant
    c = torch.full((1, 3, 20, 20), 0.5)
    torch.testing.assert_close(apply_view(c, View("z", zoom=0.9)), c)


class _PooledNet(torch.nn.Module):
    """conv -> global pool -> linear: small, deterministic, counts forward calls."""

    def __init__(self, kernel=3, k=5):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, kernel, padding=kernel // 2)
        self.head = torch.nn.Linear(8, k)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.head(torch.relu(self.conv(x)).mean(dim=(-2, -1)))


class _FlatNet(torch.nn.Module):
    """Linear over the raw pixels: orientation-sensitive."""

    def __init__(self, hw=8, k=4):
        super().__init__()
        torch.manual_seed(1)
        self.fc = torch.nn.Linear(3 * hw * hw, k)

    def forward(self, x):
        return self.fc(x.flatten(1)) * 3.0


def test_predict_tta_equals_view_by_view_loop():
    model = _PooledNet()
    torch.manual_seed(2)
    x = torch.rand(4, 3, 8, 8)
    views = get_views("dihedral")
    probs, logits = predict_tta(model, x, views, average="prob")
    assert model.calls == len(views)  # one forward per view for the whole batch
    with torch.no_grad():
        per = torch.stack([torch.softmax(model(apply_view(x, v)), -1) for v in views])
    torch.testing.assert_close(probs, per.mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.softmax(logits, -1), probs, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits, per.mean(0).log(), atol=1e-5, rtol=0)

    probs_l, logits_l = predict_tta(model, x, views, average="logit")
    with torch.no_grad():
        per_l = torch.stack([model(apply_view(x, v)) for v in views]).mean(0)
    torch.testing.assert_close(logits_l, per_l, atol=1e-6, rtol=0)
    torch.testing.assert_close(probs_l, torch.softmax(per_l, -1), atol=1e-6, rtol=0)


def test_rotation_invariant_model_is_unchanged_by_dihedral_tta():
    model = _PooledNet(kernel=1)  # 1x1 conv + global pool: invariant to flips and turns
    x = torch.rand(3, 3, 8, 8)
    p_none, _ = predict_tta(model, x, get_views("none"))
    p_dih, _ = predict_tta(model, x, get_views("dihedral"))
    torch.testing.assert_close(p_none, p_dih, atol=1e-6, rtol=0)


def test_rotation_sensitive_model_and_average_change_results():
    model = _FlatNet()
    torch.manual_seed(3)
    x = torch.rand(4, 3, 8, 8)
    p_none, _ = predict_tta(model, x, "none")
    p_rot, _ = predict_tta(model, x, "rot90")
    assert (p_none - p_rot).abs().max() > 1e-3
    p_prob, _ = predict_tta(model, x, "rot90", average="prob")
    p_logit, _ = predict_tta(model, x, "rot90", average="logit")
    assert (p_prob - p_logit).abs().max() > 1e-3
    with pytest.raises(ValueError, match="average"):
        predict_tta(model, x, "rot90", average="median")


def test_predict_tta_restores_training_mode_and_batches_concat():
    model = _PooledNet()
    model.train()
    x = torch.rand(5, 3, 8, 8)
    p_all, l_all = predict_tta(model, x, "essential")
    assert model.training
    batches = [(x[:2], torch.zeros(2)), (x[2:], torch.zeros(3))]
    p_b, l_b = predict_tta_batches(model, batches, "essential")
    assert p_b.shape == (5, 5) and p_b.dtype == np.float32
    np.testing.assert_allclose(p_b, p_all.numpy(), atol=1e-6)
    np.testing.assert_allclose(l_b, l_all.numpy(), atol=1e-5)


# The orientation modes are not view sets: their candidates are the 8 dihedral views. auto is chosen
# by predict.tta_auto from the view sets (it resolves as none until then).
YAML_VIEW_COUNTS = {**EXPECTED_COUNTS, "orient": 8, "orient_soft": 8, "auto": 1}


def test_every_tta_yaml_is_tested():
    assert {p.stem for p in CONF_TTA.glob("*.yaml")} == set(YAML_VIEW_COUNTS)


@pytest.mark.parametrize("name", sorted(YAML_VIEW_COUNTS))
def test_conf_tta_yaml_resolves(name):
    cfg = OmegaConf.load(CONF_TTA / f"{name}.yaml")
    cfg.pop("defaults")  # the schema (config_schema.TTAConfig)
    per_class = {"per_class"} if name == "auto" else set()  # tta=auto's per-class policy (predict/tta_auto.py)
    assert set(cfg.keys()) == {"name", "average", "deskew", "upright_flip"} | per_class
    assert cfg.name == name
    if name == "auto":
        cfg.name = "none"  # as run_inference resolves it before choosing
    views, average = resolve_tta(cfg)
    assert len(views) == YAML_VIEW_COUNTS[name]
    assert average == cfg.average


def test_resolve_tta_reads_every_key():
    views, average = resolve_tta({"name": "flip", "average": "logit"})
    assert len(views) == 2 and average == "logit"
    with pytest.raises(ValueError, match="Unknown key"):
        resolve_tta({"name": "flip", "average": "prob", "n_angles": 3})
    with pytest.raises(ValueError, match="average"):
        resolve_tta({"name": "flip", "average": "max"})
    with pytest.raises(ValueError, match="valid names"):
        resolve_tta({"name": "nope"})
