"""Training losses: the options of the ``loss`` config group (``conf/loss/*.yaml``).

Each option names a class with ``_target_``; a user may name their own. The protocol, in the
order the engine (``engine.parts.build_train_loss``) follows it:

1. ``loss = hydra.utils.instantiate(cfg.loss)``: the option's other keys (``gamma``, ``tau``,
   ``beta``, ...) are constructor keyword arguments.
2. ``loss.setup(context)``, once per fold before the first step, if the object has a ``setup``
   method. ``context`` is a :class:`LossContext`: the number of classes, the class counts of the
   fold's training rows, the share of each class in the training draws (``data.sampler``) and
   the label smoothing to apply to hard targets.
3. ``loss(logits, targets)`` at every step, returning a scalar. ``logits``: (N, K) float32.
   ``targets``: (N,) int64 class indices, or (N, K) probability rows (mixup / cutmix, where
   label smoothing is already folded in by timm's Mixup; later: soft pseudo-labels).
   Per-sample weights (pseudo-labels, say): ``loss(logits, targets, weight=w)`` with ``w`` (N,)
   >= 0; the engine passes ``weight`` only when it has weights, so any ``torch.nn`` loss taking
   ``(input, target)`` also works as a ``_target_`` (``torch.nn.CrossEntropyLoss`` takes both
   kinds of targets).

The classes here share :class:`ClassificationLoss`: a subclass writes ``per_sample(logits,
targets)`` for (N, K) probability targets only; hard targets arrive as label-smoothed one-hot
rows, and the reduction is ``mean(weight * per_sample)`` (``weight`` None: the plain mean), so a
weight of 1 is the unweighted loss and a weight of 0 drops a sample without up-weighting the
others. Each option reduces to cross-entropy at its neutral value (``gamma=0``, ``tau=0``,
``beta=0``), with hard and soft targets (tests/engine/test_losses.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

__all__ = ["ClassBalancedLoss", "ClassificationLoss", "CrossEntropy", "FocalLoss", "LogitAdjustedLoss",
           "LossContext", "build_loss", "check_loss_config", "smooth_one_hot"]


@dataclass(frozen=True)
class LossContext:
    """What a fold tells its loss before training (``setup``)."""

    num_classes: int
    class_counts: np.ndarray        # (K,) training rows of each class in this fold
    class_prior: np.ndarray         # (K,) expected share of each class in the training draws (sums to 1)
    label_smoothing: float = 0.0    # for hard targets; soft targets carry it already
    sampler: str = "natural"        # data.sampler, for messages


def smooth_one_hot(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Class indices -> (N, K) rows ``(1 - s) * one_hot + s / K`` (torch's label smoothing)."""
    off = smoothing / num_classes
    return torch.full((len(y), num_classes), off, device=y.device).scatter_(1, y[:, None], 1.0 - smoothing + off)


class ClassificationLoss(torch.nn.Module):
    """Base of the built-in losses: targets as probability rows, optional per-sample weights."""

    def __init__(self) -> None:
        super().__init__()
        self.label_smoothing = 0.0
        self.num_classes: int | None = None

    def setup(self, context: LossContext) -> None:
        self.num_classes = int(context.num_classes)
        self.label_smoothing = float(context.label_smoothing)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N,) losses for (N, K) probability targets."""
        raise NotImplementedError

    def target_rows(self, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        if targets.ndim == 1:
            return smooth_one_hot(targets.long(), num_classes, self.label_smoothing)
        if targets.shape[-1] != num_classes:
            raise ValueError(f"{type(self).__name__}: soft targets of shape {tuple(targets.shape)} for "
                             f"{num_classes} classes")
        return targets.float()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                weight: torch.Tensor | None = None) -> torch.Tensor:
        losses = self.per_sample(logits, self.target_rows(targets, logits.shape[-1]))
        if weight is None:
            return losses.mean()
        weight = weight.to(losses.dtype).reshape(-1)
        if weight.shape != losses.shape:
            raise ValueError(f"weight of shape {tuple(weight.shape)} for {len(losses)} samples")
        return (weight * losses).mean()


class CrossEntropy(ClassificationLoss):
    """``-sum_k t_k log p_k`` (label smoothing from ``regularization.label_smoothing``)."""

    def per_sample(self, logits, targets):
        return -(targets * F.log_softmax(logits, dim=-1)).sum(-1)


class FocalLoss(ClassificationLoss):
    """Focal loss (Lin et al. 2017) for probability targets: ``-sum_k t_k (1 - p_k)^gamma log p_k``.

    ``gamma`` > 0 down-weights classes the model already predicts confidently, so hard and rare
    examples carry more of the gradient; ``gamma=0`` is cross-entropy."""

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        if not gamma >= 0:
            raise ValueError(f"loss.gamma={gamma}: expected >= 0")
        self.gamma = float(gamma)

    def per_sample(self, logits, targets):
        logp = F.log_softmax(logits, dim=-1)
        # clamp: (1 - p)^gamma has an infinite slope at p = 1 for gamma < 1
        modulator = (1.0 - logp.exp()).clamp_min(1e-12).pow(self.gamma)
        return -(targets * modulator * logp).sum(-1)


def _at_least_half_a_row(counts: np.ndarray) -> np.ndarray:
    """Class counts with a class the fold never trains on counted as half a row (a finite log)."""
    return np.maximum(np.asarray(counts, dtype=np.float64), 0.5)


class LogitAdjustedLoss(ClassificationLoss):
    """Logit-adjusted cross-entropy (Menon et al. 2021): the loss sees ``logits + tau * log(prior)``.

    ``prior``: each class's share of the training draws (``LossContext.class_prior``: the fold's
    class frequencies under ``data.sampler=natural``). Training this way leaves the raw logits,
    which inference uses, free of the class prior: rare classes are not out-voted by frequent ones.
    ``tau=1`` is the paper's choice, ``tau=0`` is cross-entropy."""

    def __init__(self, tau: float = 1.0) -> None:
        super().__init__()
        if not tau >= 0:
            raise ValueError(f"loss.tau={tau}: expected >= 0")
        self.tau = float(tau)
        self.register_buffer("log_prior", torch.zeros(0), persistent=False)

    def setup(self, context: LossContext) -> None:
        super().setup(context)
        total = max(float(np.sum(context.class_counts)), 1.0)
        prior = np.maximum(np.asarray(context.class_prior, dtype=np.float64), 0.5 / total)
        self.log_prior = torch.as_tensor(np.log(prior / prior.sum()), dtype=torch.float32)
        if context.sampler == "balanced" and self.tau > 0:
            log.warning("loss=logit_adjusted with data.sampler=balanced: the draws are class-balanced "
                        "already, so the adjustment is constant (the loss equals cross-entropy)")

    def per_sample(self, logits, targets):
        if not len(self.log_prior):
            raise RuntimeError("LogitAdjustedLoss needs setup(context) (the fold's class prior) before use")
        adjusted = logits + self.tau * self.log_prior.to(logits.device)
        return -(targets * F.log_softmax(adjusted, dim=-1)).sum(-1)


class ClassBalancedLoss(ClassificationLoss):
    """Class-balanced cross-entropy (Cui et al. 2019): class ``c`` weighs
    ``(1 - beta) / (1 - beta^n_c)`` (the inverse effective number of its ``n_c`` training rows),
    normalised to sum to K; the loss is ``-sum_k w_k t_k log p_k``. ``beta`` -> 1 approaches
    inverse class frequency, ``beta=0`` is cross-entropy (every weight 1)."""

    def __init__(self, beta: float = 0.999) -> None:
        super().__init__()
        if not 0 <= beta < 1:
            raise ValueError(f"loss.beta={beta}: expected 0 <= beta < 1")
        self.beta = float(beta)
        self.register_buffer("class_weight", torch.zeros(0), persistent=False)

    def setup(self, context: LossContext) -> None:
        super().setup(context)
        self.class_weight = torch.as_tensor(class_balanced_weights(context.class_counts, self.beta),
                                            dtype=torch.float32)
        if context.sampler != "natural" and self.beta > 0:
            log.warning("loss=class_balanced with data.sampler=%s: both re-weight the classes, so their "
                        "effects compound", context.sampler)

    def per_sample(self, logits, targets):
        if not len(self.class_weight):
            raise RuntimeError("ClassBalancedLoss needs setup(context) (the fold's class counts) before use")
        weighted = targets * self.class_weight.to(logits.device)
        return -(weighted * F.log_softmax(logits, dim=-1)).sum(-1)


def class_balanced_weights(counts: np.ndarray, beta: float) -> np.ndarray:
    """Cui et al.'s per-class weights ``(1 - beta) / (1 - beta^n)``, summing to K (a class the
    fold never trains on counts as one row)."""
    n = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    weights = (1.0 - beta) / (1.0 - np.power(beta, n))
    return weights * len(n) / weights.sum()


def build_loss(loss_cfg, context: LossContext):
    """``cfg.loss`` instantiated (its ``_target_`` with the other keys) and set up for one fold."""
    from hydra.utils import instantiate

    loss = instantiate(loss_cfg, _convert_="all")
    if callable(getattr(loss, "setup", None)):
        loss.setup(context)
    return loss


def check_loss_config(loss_cfg) -> None:
    """Import and construct ``cfg.loss`` once before any work: a wrong ``_target_`` or argument
    stops the run with the key and the fix (raises ConfigError)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from docclassify.config_schema import ConfigError

    target = loss_cfg.get("_target_") if loss_cfg is not None else None
    if not target:
        raise ConfigError("loss: no _target_; pick an option (loss=ce|focal|logit_adjusted|class_balanced) or "
                          "set loss._target_=your.module.YourLoss")
    try:
        loss = instantiate(loss_cfg, _convert_="all")
    except InstantiationException as exc:
        cause = exc
        while cause.__cause__ is not None:  # the root: a missing module, an unexpected keyword, ...
            cause = cause.__cause__
        raise ConfigError(f"loss._target_={target}: cannot build it ({type(cause).__name__}: "
                          f"{str(cause).splitlines()[0]}); use loss=ce|focal|logit_adjusted|class_balanced or "
                          "an importable class whose constructor takes the loss group's keys") from exc
    if not callable(loss):
        raise ConfigError(f"loss._target_={target}: builds a {type(loss).__name__}, which is not callable as "
                          "loss(logits, targets)")
