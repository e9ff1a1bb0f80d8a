"""The learning-rate schedule of every trainer: linear warm-up, then cosine decay to a floor.

Hand-written rather than transformers' ``get_cosine_schedule_with_warmup`` /
``get_cosine_with_min_lr_schedule_with_warmup``: those give step ``s`` of the warm-up
``s / warmup`` (the first step trains at lr 0) where this gives ``(s + 1) / warmup``, and they
decay over ``total - warmup`` steps where the proxies reach the floor at their last step. Using
them would change every learning rate of the warm-up and every loss after it.
"""

from __future__ import annotations

import math


def warmup_cosine(
    step: int, *, warmup: int, decay_steps: int, min_ratio: float, peak: float = 1.0
) -> float:
    """The learning rate of (0-based) ``step``.

    Args:
        step: the optimiser step about to be taken.
        warmup: warm-up steps; step ``s < warmup`` gets ``peak · (s + 1) / warmup``.
        decay_steps: steps from the end of the warm-up to the floor (at least 1 is used).
        min_ratio: the floor, as a fraction of ``peak``; held after ``decay_steps``.
        peak: the learning rate after the warm-up (1.0: a multiplier, as ``LambdaLR`` wants).
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, decay_steps)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))
