"""data.sampler (issue 17): class shares of natural / balanced / sqrt draws (statistical tests with
fixed seeds), one global draw shared by DDP ranks, resumable part-way through an epoch, and the
debug limits still cutting each epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy.stats import chisquare

from docclassify.engine.loaders import build_loaders
from docclassify.engine.resume import ResumableSampler
from docclassify.engine.sampling import class_counts, class_shares, row_weights

COUNTS = np.array([300, 150, 60, 30, 12, 6])  # a 50:1 imbalance
LABELS = np.repeat(np.arange(len(COUNTS)), COUNTS)


def _sampler(mode: str, labels=LABELS, world: int = 1, rank: int = 0, seed: int = 7, **kw) -> ResumableSampler:
    return ResumableSampler(list(range(len(labels))), num_replicas=world, rank=rank, seed=seed, shuffle=True,
                            drop_last=False, weights=row_weights(labels, mode), **kw)


def _drawn_classes(sampler: ResumableSampler, epochs: int, labels=LABELS) -> np.ndarray:
    drawn = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        drawn += list(sampler)
    return class_counts(labels[np.asarray(drawn)], len(COUNTS))


def test_balanced_draws_classes_near_uniformly():
    drawn = _drawn_classes(_sampler("balanced"), epochs=4)
    assert drawn.sum() == 4 * len(LABELS)  # an epoch keeps its length
    # Chi-square goodness of fit against equal shares: not rejected (seeded draw, p = 0.80 here) ...
    assert chisquare(drawn).pvalue > 0.05, drawn
    # ... while the natural order is rejected outright, and draws each row exactly once per epoch.
    natural = _drawn_classes(_sampler("natural"), epochs=4)
    assert np.array_equal(natural, 4 * COUNTS) and chisquare(natural).pvalue < 1e-100
    # The rarest class (1% of the rows) makes about 1/6 of the draws: its rows repeat within an epoch.
    assert drawn[-1] / drawn.sum() == pytest.approx(1 / 6, abs=0.02)


def test_sqrt_draws_in_proportion_to_the_square_root_of_the_counts():
    drawn = _drawn_classes(_sampler("sqrt"), epochs=4)
    expected = class_shares(COUNTS, "sqrt") * drawn.sum()
    np.testing.assert_allclose(class_shares(COUNTS, "sqrt"), np.sqrt(COUNTS) / np.sqrt(COUNTS).sum())
    assert chisquare(drawn, expected).pvalue > 0.05, (drawn, expected)
    assert chisquare(drawn).pvalue < 1e-6  # not uniform either


def test_class_shares_and_row_weights():
    assert class_shares(COUNTS, "natural") == pytest.approx(COUNTS / COUNTS.sum())
    assert class_shares(np.array([5, 0, 1]), "balanced") == pytest.approx([0.5, 0.0, 0.5])  # no rows, no draws
    w = row_weights(LABELS, "balanced")
    per_class = np.bincount(LABELS, weights=w)
    assert per_class == pytest.approx(np.full(len(COUNTS), 1 / len(COUNTS)))
    assert row_weights(LABELS, "natural") is None
    with pytest.raises(ValueError, match="data.sampler='uniform'"):
        class_shares(COUNTS, "uniform")


def test_ddp_ranks_share_one_global_draw():
    """Each rank takes every world-th draw of one sample seeded alike on every rank: together they
    are exactly the single-process draw (no draw used twice, none lost)."""
    n = len(LABELS)  # 558 rows: an even split
    for epoch in (0, 3):
        ranks = [_sampler("balanced", world=2, rank=r) for r in (0, 1)]
        for s in ranks:
            s.set_epoch(epoch)
        r0, r1 = list(ranks[0]), list(ranks[1])
        assert len(r0) == len(r1) == n // 2
        g = torch.Generator().manual_seed(7 + epoch)
        global_draw = torch.multinomial(torch.as_tensor(row_weights(LABELS, "balanced")), n, True, generator=g).tolist()
        interleaved = [i for pair in zip(r0, r1) for i in pair]
        assert interleaved == global_draw
    odd = _sampler("sqrt", labels=LABELS[:-1], world=2, rank=1)  # 557 rows: padded to 558 like DistributedSampler
    assert len(list(odd)) == len(odd) == 279


def test_a_resumed_epoch_continues_the_same_draw():
    sampler = _sampler("balanced")
    sampler.set_epoch(2)
    order = list(sampler)
    assert order == list(sampler)  # seeded by seed + epoch
    sampler.set_epoch(3)
    assert list(sampler) != order
    resumed = _sampler("balanced")  # a new process
    resumed.set_epoch(2)
    resumed.skip(96)  # 12 batches of 8 done before the stop
    assert list(resumed) == order[96:] and len(resumed) == len(order) - 96
    limited = _sampler("balanced", limit=40)  # trainer.limit_train_batches: each epoch's order cut
    limited.set_epoch(2)
    assert list(limited) == order[:40]
    limited.skip(16)
    assert list(limited) == order[16:40]


def _trainer(**over):
    base = {"batch_size": 8, "eval_batch_size": None, "limit_train_batches": None, "limit_val_batches": None,
            "overfit_batches": 0}
    return OmegaConf.create({**base, **over})


def test_loaders_use_the_sampler_and_keep_the_debug_limits():
    images = np.random.default_rng(0).integers(0, 256, (len(LABELS), 8, 8, 3), dtype=np.uint8)
    idx = np.arange(len(LABELS))
    train_idx, val_idx = idx[idx % 10 != 0], idx[idx % 10 == 0]

    def loaders(mode, **over):
        return build_loaders(images, train_idx, val_idx, LABELS, None, _trainer(**over), 0, 0, torch.device("cpu"),
                             sampler_mode=mode)

    train, _, sampler = loaders("balanced")
    sampler.set_epoch(0)
    targets = torch.cat([y for _, y in train]).numpy()
    assert len(targets) == len(train_idx) // 8 * 8 and chisquare(class_counts(targets, len(COUNTS))).pvalue > 0.01
    train, _, sampler = loaders("balanced", limit_train_batches=3)
    assert len(train) == 3 and sum(len(y) for _, y in train) == 24
    train, _, sampler = loaders("balanced", overfit_batches=2)  # a fixed order of the same rows, no draw
    assert sampler.weights is None and not sampler.shuffle


def test_loaders_under_ddp_split_one_draw_between_the_ranks(monkeypatch):
    """build_loaders as each of 2 DDP ranks builds it (world size and rank from engine.distributed):
    the ranks' training rows of an epoch are the two halves of the one-process draw."""
    from docclassify.engine import distributed

    images = np.zeros((len(LABELS), 4, 4, 3), dtype=np.uint8)
    idx = np.arange(len(LABELS))

    def epoch_rows(world: int, rank: int) -> list[int]:
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        _, _, sampler = build_loaders(images, idx, idx[:2], LABELS, None, _trainer(), 0, 5, torch.device("cpu"),
                                      sampler_mode="sqrt")
        sampler.set_epoch(1)
        return [int(idx[i]) for i in sampler]

    one = _sampler("sqrt", seed=5)
    one.set_epoch(1)
    r0, r1 = epoch_rows(2, 0), epoch_rows(2, 1)
    assert sorted(r0 + r1) == sorted(one) and r0 == list(one)[0::2] and r1 == list(one)[1::2]
