"""The orientation head (``model.orientation_head``): a small MLP on the backbone's pooled features
that predicts which group element (data/dihedral.py) the training augmentation applied.

:class:`OrientationModel` wraps a timm model. ``model(x)`` is exactly the timm model's output (its
``forward_features`` then ``forward_head``): the class logits, so EMA, DDP, torch.compile,
validation, TTA and inference use it like the bare model. ``model(x, orientation=True)`` returns
``(class logits, orientation logits)`` from the same features (one backbone pass), which the
training step and the orientation estimate at test time ask for. Under DDP the keyword goes
through the wrapper's ``forward``, so gradients of both heads are synchronised.

The pre-logits features (timm's ``forward_head(pre_logits=True)``: pooled, normed, before the
classifier) have ``head_hidden_size`` (else ``num_features``) channels.
"""

from __future__ import annotations

import torch
from torch import nn

from docclassify.data.dihedral import head_size

PREFIX = "backbone."  # the wrapper's parameter names of the timm model


class OrientationHead(nn.Module):
    """Linear -> GELU -> Linear on pooled features (hidden width min(256, features))."""

    def __init__(self, in_features: int, n_outputs: int):
        super().__init__()
        hidden = min(256, int(in_features))
        self.fc1 = nn.Linear(int(in_features), hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, int(n_outputs))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(features)))


def pooled_width(backbone: nn.Module) -> int:
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


class OrientationModel(nn.Module):
    """A timm model plus an orientation head; ``forward`` returns the timm model's logits."""

    def __init__(self, backbone: nn.Module, head: str):
        super().__init__()
        self.backbone = backbone
        self.head_kind = head
        self.orientation_head = OrientationHead(pooled_width(backbone), head_size(head))

    def forward(self, x: torch.Tensor, orientation: bool = False):
        features = self.backbone.forward_features(x)
        logits = self.backbone.forward_head(features)
        if not orientation:
            return logits
        return logits, self.orientation_head(self.backbone.forward_head(features, pre_logits=True))

    # timm's metadata and optimiser hooks, seen through the wrapper (normalisation, layer decay).
    @property
    def pretrained_cfg(self) -> dict:
        return getattr(self.backbone, "pretrained_cfg", {})

    @property
    def num_classes(self) -> int:
        return int(self.backbone.num_classes)

    def no_weight_decay(self) -> set[str]:
        inner = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else set()
        return {PREFIX + name for name in inner}

    def group_matcher(self, coarse: bool = False):
        """Layer-decay groups: the backbone's own (timm's group_matcher, or its automatic grouping),
        the orientation head in the last group with the classifier."""
        from timm.models import group_parameters
        from timm.optim._param_groups import auto_group_layers

        if hasattr(self.backbone, "group_matcher"):
            layers = group_parameters(self.backbone, self.backbone.group_matcher(coarse=coarse), reverse=True)
        else:
            layers = auto_group_layers(self.backbone)
        last = max(layers.values(), default=0)

        def layer_of(name: str) -> int:
            return layers.get(name[len(PREFIX):], last) if name.startswith(PREFIX) else last

        return layer_of


def with_orientation_head(model: nn.Module, head: str) -> nn.Module:
    """``model`` itself for ``none``, else wrapped with a head of ``head``'s size."""
    return model if head_size(head) == 0 else OrientationModel(model, head)


def orientation_head_of(model: nn.Module) -> str:
    """The head kind of a (possibly DDP/compile-wrapped or EMA) model: ``none`` without one."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    return inner.head_kind if isinstance(inner, OrientationModel) else "none"


# ------------------------------------------------------------------------------------------ checkpoint layout
def to_file_layout(state_dict: dict) -> dict:
    """Checkpoint keys: the timm model's own names (plain timm loads them, strict=False for the head)
    and ``orientation_head.*``."""
    return {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in state_dict.items()}


def from_file_layout(state_dict: dict) -> dict:
    """The wrapper's keys of a checkpoint written with :func:`to_file_layout`."""
    return {(k if k.startswith("orientation_head.") else PREFIX + k): v for k, v in state_dict.items()}
