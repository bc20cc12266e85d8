"""Small random draws shared by the synthetic pages and their test split's distortions."""

from __future__ import annotations

import numpy as np


def jittered(rng: np.random.Generator, base, s: float = 8.0) -> tuple[int, int, int]:
    """A colour near ``base``: each channel moved by a normal draw of std ``s``, clipped to 0-255."""
    jit = rng.normal(0.0, s, 3)
    return tuple(int(min(255, max(0, b + j))) for b, j in zip(base, jit, strict=True))


def pick(rng: np.random.Generator, options):
    """One of ``options``, uniformly."""
    return options[int(rng.integers(len(options)))]
