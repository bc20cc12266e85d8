"""Exact, deterministic test-time augmentation (TTA).

Every view is a fixed transform: no randomness, so two runs over the same images give the
same predictions. A :class:`View` is applied in this order:

1. ``hflip``: mirror left-right (``np.fliplr`` / ``torch.flip(dims=[-1])``);
2. ``k``: ``k`` exact 90-degree counter-clockwise turns (``np.rot90`` / ``torch.rot90``);
3. ``angle``: an extra small rotation in degrees, counter-clockwise like ``k`` (bilinear,
   the uncovered corners are filled with 0, i.e. the mean colour once inputs are normalised);
4. ``zoom``: an exact centre crop of ``zoom`` times the height and width, resized back
   (bilinear, antialiased) to the input size.

Turns with odd ``k`` swap height and width of non-square inputs; inference inputs are
usually square, and convolutional models with global pooling accept either.

The flips/turns part of a view is an :class:`~docclassify.data.dihedral.Element` (the one
home of the dihedral group, shared with training augmentation and the orientation head):
``View.element``; ``apply_view`` / ``apply_view_numpy`` apply it with that module's functions.

Orientation TTA suits data whose label does not depend on orientation (a rotated passport
is still a passport). Where orientation carries meaning, choose the ``none`` set. ``tta=orient``
and ``tta=orient_soft`` (predict/upright.py) estimate each image's orientation instead of
averaging every view blindly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from docclassify.data import dihedral
from docclassify.data.dihedral import Element
from docclassify.utils.choices import AVERAGES, ORIENT_MODES

__all__ = [
    "AVERAGES",
    "VIEW_SETS",
    "View",
    "apply_view",
    "apply_view_numpy",
    "combine_views",
    "get_views",
    "normalised_batches",
    "predict_tta",
    "predict_tta_batches",
    "resolve_tta",
]

# Not view sets: each image's orientation is estimated and undone (predict/upright.py); their
# candidate views are the 8 dihedral ones.
# Keys of a tta config (conf/tta/*.yaml): deskew is read by predict.pipeline (the test images are
# deskewed when decoded), upright_flip by predict.upright, per_class (tta=auto) by predict.tta_auto.
TTA_KEYS = ("name", "average", "deskew", "upright_flip", "per_class")


@dataclass(frozen=True)
class View:
    """One exact TTA view (see the module docstring for the order of the operations)."""

    name: str
    k: int = 0
    hflip: bool = False
    angle: float = 0.0
    zoom: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.k, (int, np.integer)) or isinstance(self.k, bool):
            raise TypeError(f"View {self.name!r}: k must be an int, got {self.k!r}")
        object.__setattr__(self, "k", int(self.k) % 4)
        if not math.isfinite(self.angle):
            raise ValueError(f"View {self.name!r}: angle must be finite, got {self.angle!r}")
        if not (0.0 < self.zoom <= 1.0):
            raise ValueError(f"View {self.name!r}: zoom must be in (0, 1], got {self.zoom!r}")

    @property
    def is_dihedral(self) -> bool:
        """True when the view is only flips/turns (pixel-exact, no resampling)."""
        return self.angle == 0.0 and self.zoom == 1.0

    @property
    def element(self) -> Element:
        """The flips/turns part of the view (a dihedral group element)."""
        return Element(self.k, self.hflip)

    @classmethod
    def of(cls, g: Element) -> "View":
        """The exact view of a group element, named like the element (``identity``, ``rot90``, ``hflip_rot270``...)."""
        return cls(g.name, k=g.k, hflip=g.mirror)

    @property
    def key(self) -> tuple[int, bool, float, float]:
        """The transform without its name (two views with equal keys are duplicates)."""
        return (self.k, bool(self.hflip), float(self.angle), float(self.zoom))


def _dihedral() -> list[View]:
    """The 8 group elements as views, in element-index order (identity, the 3 turns, mirror, ...)."""
    return [View.of(g) for g in dihedral.DIHEDRAL]


VIEW_SETS: dict[str, tuple[View, ...]] = {
    # 1 view: plain prediction.
    "none": (View("identity"),),
    # 2 views: identity + mirror.
    "flip": (View("identity"), View("hflip", hflip=True)),
    # 4 views: the four exact turns.
    "rot90": tuple(View.of(g) for g in dihedral.GROUPS["rot90"]),
    # 8 views: the dihedral group (4 turns x mirror).
    "dihedral": tuple(_dihedral()),
    # 5 views: identity, the 3 turns, mirror.
    "essential": tuple(
        [View("identity")]
        + [View(f"rot{90 * k}", k=k) for k in (1, 2, 3)]
        + [View("hflip", hflip=True)]
    ),
    # 15 views: dihedral (8) + upright at +-5 and +-10 degrees (4) + upside-down at +-5
    # degrees (2) + a 0.9 centre zoom (1).
    "comprehensive": tuple(
        _dihedral()
        + [View("rot0_+5deg", angle=5.0), View("rot0_-5deg", angle=-5.0)]
        + [View("rot0_+10deg", angle=10.0), View("rot0_-10deg", angle=-10.0)]
        + [View("rot180_+5deg", k=2, angle=5.0), View("rot180_-5deg", k=2, angle=-5.0)]
        + [View("zoom0.9", zoom=0.9)]
    ),
}


def get_views(name: str) -> list[View]:
    """The named view set (a fresh list). Raises ``ValueError`` listing valid names."""
    try:
        return list(VIEW_SETS[name])
    except (KeyError, TypeError):
        valid = ", ".join(VIEW_SETS)
        raise ValueError(f"Unknown TTA view set {name!r}; valid names: {valid}") from None


def resolve_tta(tta_cfg: Any) -> tuple[list[View], str]:
    """Read a ``cfg.tta`` node (``name``, ``average``) into ``(views, average)``.

    Accepts an OmegaConf node, a dict or any object with ``name``/``average`` attributes.
    Unknown keys are rejected so that every key in ``conf/tta/*.yaml`` has an effect.
    """
    if tta_cfg is None:
        return get_views("none"), "prob"
    if hasattr(tta_cfg, "keys"):
        data = {str(k): tta_cfg[k] for k in tta_cfg}
    else:
        data = {k: getattr(tta_cfg, k) for k in TTA_KEYS if hasattr(tta_cfg, k)}
    unknown = sorted(set(data) - set(TTA_KEYS))
    if unknown:
        raise ValueError(f"Unknown key(s) in tta config: {unknown}; allowed: {', '.join(TTA_KEYS)}")
    if "name" not in data:
        raise ValueError("tta config needs a 'name' (one of: " + ", ".join((*VIEW_SETS, *ORIENT_MODES)) + ")")
    average = data.get("average", "prob")
    _check_average(average)
    if data["name"] in ORIENT_MODES:
        return _dihedral(), average
    return get_views(data["name"]), average


def _check_average(average: str) -> None:
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")


def apply_view_numpy(img: np.ndarray, view: View) -> np.ndarray:
    """Reference implementation for flips/turns on an ``(H, W, C)`` (or ``(H, W)``) array."""
    if not view.is_dihedral:
        raise ValueError(
            f"apply_view_numpy handles flips/turns only; view {view.name!r} has "
            f"angle={view.angle}, zoom={view.zoom}"
        )
    return dihedral.apply_numpy(img, view.element)


def apply_view(x: torch.Tensor, view: View) -> torch.Tensor:
    """Apply ``view`` to a ``(..., C, H, W)`` tensor (typically ``(N, C, H, W)``)."""
    if x.ndim < 3:
        raise ValueError(f"apply_view expects (..., C, H, W), got shape {tuple(x.shape)}")
    out = dihedral.apply_torch(x, view.element)
    if view.angle != 0.0 or view.zoom != 1.0:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        if view.angle != 0.0:
            out = TF.rotate(
                out, angle=float(view.angle), interpolation=InterpolationMode.BILINEAR,
                expand=False, fill=0.0,
            )
        if view.zoom != 1.0:
            h, w = out.shape[-2:]
            ch = max(1, round(h * view.zoom))
            cw = max(1, round(w * view.zoom))
            out = TF.center_crop(out, [ch, cw])
            out = TF.resize(
                out, [h, w], interpolation=InterpolationMode.BILINEAR, antialias=True
            )
    return out.contiguous()


def normalised_batches(images: np.ndarray, rows: np.ndarray, meta: dict, batch_size: int,
                       device: torch.device):
    """Batches of ``images[rows]`` (uint8 NHWC) as float NCHW on ``device``, normalised like training
    (``x / 255``, then the checkpoint meta's mean/std)."""
    mean = torch.tensor(meta["mean"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(meta["std"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
    for start in range(0, len(rows), batch_size):
        chunk = np.ascontiguousarray(images[rows[start:start + batch_size]])
        x = torch.from_numpy(chunk).permute(0, 3, 1, 2).to(device, non_blocking=True)
        yield x.float().div_(255.0).sub_(mean).div_(std)


def _as_views(views: Sequence[View] | str) -> list[View]:
    if isinstance(views, str):
        return get_views(views)
    views = list(views)
    if not views:
        raise ValueError("predict_tta needs at least one view")
    for v in views:
        if not isinstance(v, View):
            raise TypeError(f"views must be View objects or a set name, got {type(v).__name__}")
    return views


def predict_tta(
    model: torch.nn.Module,
    x: torch.Tensor,
    views: Sequence[View] | str,
    average: str = "prob",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predict a batch under every view; return ``(probs, logits)``, each ``(N, K)`` float32.

    One forward pass per view: the whole batch of a view goes through the model at once,
    under ``torch.inference_mode()`` and in eval mode (the model's training flag is
    restored afterwards). ``x`` must already be on the model's device.

    * ``average="prob"``: ``probs`` is the mean of the per-view softmax probabilities and
      ``logits`` is ``log(probs)`` (computed stably as ``logsumexp(log_softmax) - log V``).
    * ``average="logit"``: ``logits`` is the mean of the per-view logits and
      ``probs = softmax(logits)``.

    Either way ``softmax(logits) == probs``, so the returned logits can be fed to
    temperature scaling (:mod:`docclassify.predict.calibration`).
    """
    _check_average(average)
    views = _as_views(views)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            per_view = []
            for view in views:
                out = model(apply_view(x, view))
                if out.ndim != 2:
                    raise ValueError(f"model output must be (N, K), got {tuple(out.shape)}")
                per_view.append(out.float())
            probs, logits = combine_views(torch.stack(per_view, dim=0), average)
    finally:
        model.train(was_training)
    return probs, logits


def combine_views(stacked: torch.Tensor, average: str = "prob") -> tuple[torch.Tensor, torch.Tensor]:
    """``(probs, logits)`` of per-view logits ``stacked`` (V, N, K), averaged as :func:`predict_tta`
    describes (also used to score view sets from per-view OOF predictions, tta=auto)."""
    _check_average(average)
    if average == "prob":
        log_p = torch.log_softmax(stacked, dim=-1)
        logits = torch.logsumexp(log_p, dim=0) - math.log(stacked.shape[0])
        probs = torch.softmax(stacked, dim=-1).mean(dim=0)
    else:
        logits = stacked.mean(dim=0)
        probs = torch.softmax(logits, dim=-1)
    return probs, logits


def predict_tta_batches(
    model: torch.nn.Module,
    batches: Iterable[Any],
    views: Sequence[View] | str,
    average: str = "prob",
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run :func:`predict_tta` over an iterable of batches (e.g. a ``DataLoader``).

    Each batch is a tensor, or a tuple/list whose first element is the image tensor, or a
    dict with an ``"image"`` key. Inputs are moved to ``device`` (default: the device of
    the model's first parameter). Returns ``(probs, logits)`` as float32 numpy arrays in
    batch order, concatenated over all batches.
    """
    _check_average(average)
    views = _as_views(views)
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    all_probs, all_logits = [], []
    for batch in batches:
        if isinstance(batch, dict):
            x = batch["image"]
        elif isinstance(batch, (tuple, list)):
            x = batch[0]
        else:
            x = batch
        probs, logits = predict_tta(model, x.to(device, non_blocking=True), views, average)
        all_probs.append(probs.cpu().numpy())
        all_logits.append(logits.cpu().numpy())
    if not all_probs:
        raise ValueError("predict_tta_batches got no batches")
    return np.concatenate(all_probs), np.concatenate(all_logits)
