"""Per-epoch schedules shared by augmentation steps (the advanced set's share, the match step's share)."""

from __future__ import annotations


def linear_ramp(epoch: int, epochs: int, p_start: float, p_end: float) -> float:
    """Linear ramp from p_start (first epoch) to p_end (last epoch)."""
    if epochs <= 1:
        return float(p_end)
    t = min(max(epoch, 0), epochs - 1) / (epochs - 1)
    return float(p_start + (p_end - p_start) * t)
