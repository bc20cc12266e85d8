"""The orientation head (models/heads.py): the wrapper keeps timm's output, its checkpoint round trip
(with and without the head), optimiser groups, and mixed orientation targets (engine/orientation_head.py)."""

from __future__ import annotations

import timm
import torch
from timm.data import Mixup

from docclassify.engine.optim import build_optimizer
from docclassify.engine.orientation_head import mix_with_orientation, orientation_loss
from docclassify.models.checkpoint import (
    load_checkpoint,
    model_meta,
    save_best,
    trained_orientations,
)
from docclassify.models.heads import OrientationModel, orientation_head_of, with_orientation_head


def _timm(name="test_resnet", seed=0):
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=5).eval()


def test_wrapper_output_is_the_timm_models_output():
    for name in ("test_resnet", "test_convnext", "test_vit"):
        bare = _timm(name)
        wrapped = with_orientation_head(_timm(name), "dihedral8").eval()
        size = 160 if name == "test_vit" else 32
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            logits = wrapped(x)
            both = wrapped(x, orientation=True)
            torch.testing.assert_close(logits, bare(x))
        torch.testing.assert_close(both[0], logits)
        assert both[1].shape == (2, 8)
        assert orientation_head_of(wrapped) == "dihedral8" and orientation_head_of(bare) == "none"
    assert with_orientation_head(bare, "none") is bare
    assert with_orientation_head(_timm(), "rot4")(torch.randn(1, 3, 32, 32), orientation=True)[1].shape == (1, 4)


def _meta(head: str):
    return model_meta("test_resnet", "tiny", 5, 32, "pad", 0, [0.5] * 3, [0.5] * 3, list("abcde"), head,
                      trained_orientations({"orientation": "rot90", "orientation_p": 0.5, "hflip": True}))


def test_checkpoint_round_trip_with_and_without_the_head(tmp_path):
    x = torch.randn(3, 3, 32, 32)
    for head in ("none", "rot4", "dihedral8"):
        model = with_orientation_head(_timm(seed=1), head).eval()
        with torch.no_grad():  # a trained-looking head: not the init the rebuild would make anyway
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        path = tmp_path / f"{head}.safetensors"
        save_best(path, model.state_dict(), _meta(head), fold=0, epoch=1, macro_f1=0.5, weights="live")
        loaded, info = load_checkpoint(path)
        assert orientation_head_of(loaded) == head and info["meta"]["orientation_head"] == head
        assert info["meta"]["trained_orientations"] == {"group": "rot90", "p": 0.5, "mirrors": True}
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x))
            if head != "none":
                torch.testing.assert_close(loaded(x, orientation=True)[1], model(x, orientation=True)[1])
        # The file keeps timm's own key names: plain timm loads it (the head's keys aside).
        plain = _timm(seed=2)
        missing, unexpected = plain.load_state_dict(info["state_dict"], strict=False)
        assert not missing and all(k.startswith("orientation_head.") for k in unexpected)
        assert bool(unexpected) == (head != "none")
        with torch.no_grad():
            torch.testing.assert_close(plain(x), model(x))


def test_layer_decay_and_weight_decay_groups_see_through_the_wrapper():
    wrapped = OrientationModel(_timm("test_vit"), "dihedral8")
    opt = build_optimizer(wrapped, "adamw", 1e-3, 0.05, layer_decay=0.5)
    scales = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    head = dict(wrapped.orientation_head.named_parameters())
    backbone = wrapped.backbone
    assert scales[id(head["fc1.weight"])] == max(scales.values())  # the head learns at the full lr
    assert scales[id(backbone.patch_embed.proj.weight)] < scales[id(head["fc1.weight"])]
    assert decay[id(backbone.pos_embed)] == 0.0 and decay[id(head["fc1.weight"])] == 0.05  # timm's no_weight_decay
    assert len(scales) == len(list(wrapped.parameters()))


def test_mixed_orientation_targets_follow_the_class_targets():
    """One joint Mixup call: the class targets are those of a plain Mixup call with the same draws,
    the orientation targets mix the element labels with the same lambda and partner (reversed batch)."""
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    o = torch.tensor([0, 3, 5, 7, 1, 2])
    x = torch.randn(6, 3, 8, 8)
    for kwargs in (dict(mixup_alpha=0.8), dict(cutmix_alpha=1.0), dict(mixup_alpha=0.8, mode="elem")):
        mix = Mixup(num_classes=5, label_smoothing=0.1, **kwargs)
        torch.manual_seed(3)
        import numpy as np

        np.random.seed(3)
        x_plain, y_plain = mix(x.clone(), y)
        torch.manual_seed(3)
        np.random.seed(3)
        x_mixed, y_mixed, o_mixed = mix_with_orientation(mix, x.clone(), y, o, 8)
        torch.testing.assert_close(x_mixed, x_plain)
        torch.testing.assert_close(y_mixed, y_plain)
        assert mix.num_classes == 5
        # lambda per sample, read off the class targets of samples whose partner has another class
        lam = (y_plain[torch.arange(6), y] - 0.1 / 5) / (1 - 0.1)
        partner = o.flip(0)
        own = o_mixed[torch.arange(6), o]
        other = o_mixed[torch.arange(6), partner]
        differ = (y != y.flip(0)) & (o != partner)
        torch.testing.assert_close(own[differ], (lam * 0.9 + 0.1 / 8)[differ])
        torch.testing.assert_close(other[differ], ((1 - lam) * 0.9 + 0.1 / 8)[differ])
        torch.testing.assert_close(o_mixed.sum(1), torch.ones(6))
    logits = torch.randn(4, 8)
    hard = torch.tensor([1, 2, 3, 4])
    torch.testing.assert_close(orientation_loss(logits, hard),
                               orientation_loss(logits, torch.nn.functional.one_hot(hard, 8).float()))
