"""Learning-rate schedules: the factor applied to the peak learning rate at each optimiser step.

:func:`trainers.loop.fit` sets ``lr * lr_factor(schedule, step / total)`` before every optimiser step, where
``step`` counts the steps done before this one (0-based) over the whole run, so a resumed run continues the
schedule exactly. Schedules (``progress`` p in [0, 1)):

* ``constant``: 1 (the learning rate is never touched: results are those of a run without a schedule).
* ``cosine``: ``(1 + cos(pi p)) / 2`` (Loshchilov & Hutter 2017, SGDR without restarts), from 1 towards 0.
* ``step``: 1, then 0.1 from p = 0.5 and 0.01 from p = 0.75.
* ``slow-start-fast-decay``: Jeddi, Shafiee & Wong 2020, "A Simple Fine-tuning Is All You Need: Towards Robust
  Deep Learning Via Adversarial Fine-tuning" (arXiv:2012.13628): the learning rate rises linearly from 0 to its
  peak, then decays linearly back to 0. Here the peak sits at p = :data:`SSFD_PEAK` = 0.5 (rise over the
  first half of the steps, decay over the second). Deviation / reading: the paper fine-tunes for about one
  epoch and describes the shape (slow linear start, fast decay to ~0); the split point is our reading, not a
  number taken from the paper, and the factor is exactly 0 at the very first step (that step only moves Adam's
  moment estimates).
"""

from __future__ import annotations

import enum
import math

from robverify.enums import parse_enum

__all__ = ["SSFD_PEAK", "Schedule", "lr_factor"]

#: where ``slow-start-fast-decay`` peaks, as a fraction of all steps
SSFD_PEAK = 0.5


class Schedule(str, enum.Enum):
    """A learning-rate schedule over the optimiser steps of one training run."""

    CONSTANT = "constant"
    COSINE = "cosine"
    STEP = "step"
    SLOW_START_FAST_DECAY = "slow-start-fast-decay"

    @classmethod
    def parse(cls, value: "str | Schedule") -> "Schedule":
        """``value`` as a Schedule; RobverifyError (one line, naming the choices) if unknown."""
        return parse_enum(cls, value, "learning-rate schedule")


def lr_factor(schedule: Schedule | str, progress: float) -> float:
    """Multiplier of the peak learning rate at ``progress`` = steps done / all steps, in [0, 1]."""
    schedule = Schedule.parse(schedule)
    p = min(max(float(progress), 0.0), 1.0)
    if schedule is Schedule.CONSTANT:
        return 1.0
    if schedule is Schedule.COSINE:
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule is Schedule.STEP:
        return 1.0 if p < 0.5 else (0.1 if p < 0.75 else 0.01)
    if p < SSFD_PEAK:
        return p / SSFD_PEAK
    return (1.0 - p) / (1.0 - SSFD_PEAK)
