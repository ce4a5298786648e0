# SPDX-License-Identifier: Apache-2.0
"""The I-JEPA / V-JEPA schedules as pure functions of the optimizer step, so a resumed run continues them exactly.

Steps count from 1: `value(k)` is what the k-th optimizer step uses. The reference advances its scheduler
counters before it evaluates them, so its first step already trains at the first warmup increment (never at
`start_lr`) and its last step reaches the end of the cosine. These functions follow it exactly (the trajectory
fixtures pin every value):

- learning rate: `start_lr + (k / w) (lr - start_lr)` for `k < w`, then a cosine from `lr` to `final_lr` over the
  remaining `T - w` steps, floored at `final_lr`;
- weight decay: a cosine from `weight_decay` to `final_weight_decay` over the whole of `T`, with no warmup, clamped
  between the two end values (0.04 -> 0.4 in the paper);
- EMA momentum of the target encoder: linear from `ema_momentum` to `final_ema_momentum` (0.996 -> 1.0 for I-JEPA,
  0.998 -> 1.0 for V-JEPA), `m(k) = ema_momentum + (k - 1) (final - ema_momentum) / (ipe_scale x total_steps)`:
  the reference draws it from a generator that starts at 0 and divides by the untruncated product, so even with
  `ipe_scale` 1 the last step stays one increment short of the final value. A cosine ramp is an option.

`T = int(ipe_scale x total_steps)`: V-JEPA stretches its schedules by `ipe_scale` (1.25) beyond the end of training,
so a run stops before its learning rate and weight decay reach their final values.
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedules:
    """Learning rate, weight decay and EMA momentum of every optimizer step.

    Args:
        total_steps: optimizer steps the run trains (epochs x steps per epoch).
        warmup_steps: `w`, the steps of linear learning-rate warmup.
        lr, start_lr, final_lr: peak, warmup start and final learning rate.
        weight_decay, final_weight_decay: the weight decay's start and end values.
        ema_momentum, final_ema_momentum: the EMA momentum's start and end values.
        momentum_schedule: "linear" (the reference) or "cosine".
        ipe_scale: stretch of the schedules beyond the trained steps (the reference's `ipe_scale`; V-JEPA 1.25).
    """

    total_steps: int
    warmup_steps: int
    lr: float
    start_lr: float
    final_lr: float
    weight_decay: float
    final_weight_decay: float
    ema_momentum: float
    final_ema_momentum: float
    momentum_schedule: str = "linear"
    ipe_scale: float = 1.0

    def __post_init__(self):
        if self.total_steps <= 0:
            raise ValueError(f"The schedules need at least one step, got total_steps={self.total_steps}.")
        if not self.ipe_scale >= 1.0:
            raise ValueError(f"ipe_scale stretches the schedules and must be >= 1, got {self.ipe_scale}.")
        if not 0 <= self.warmup_steps <= self.schedule_steps:
            raise ValueError(f"warmup_steps must be in [0, {self.schedule_steps}], got {self.warmup_steps}.")
        if self.momentum_schedule not in ("linear", "cosine"):
            raise ValueError(f"momentum_schedule must be 'linear' or 'cosine', got {self.momentum_schedule!r}.")

    @property
    def schedule_steps(self) -> int:
        """`T`: the length of the learning-rate and weight-decay cosines, `int(ipe_scale x total_steps)`."""
        return int(self.ipe_scale * self.total_steps)

    def _check_step(self, step: int) -> None:
        if step < 1:
            raise ValueError(f"Optimizer steps count from 1, got step {step}.")

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimizer step `step` (from 1)."""
        self._check_step(step)
        if step < self.warmup_steps:
            return self.start_lr + (step / self.warmup_steps) * (self.lr - self.start_lr)
        progress = (step - self.warmup_steps) / max(1, self.schedule_steps - self.warmup_steps)
        cosine = self.final_lr + (self.lr - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(self.final_lr, cosine)

    def weight_decay_at(self, step: int) -> float:
        """The weight decay of optimizer step `step` (from 1), on the parameter groups that decay."""
        self._check_step(step)
        progress = step / self.schedule_steps
        value = self.final_weight_decay + (self.weight_decay - self.final_weight_decay) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )
        low, high = sorted((self.weight_decay, self.final_weight_decay))
        return min(high, max(low, value))

    def momentum(self, step: int) -> float:
        """The EMA momentum of the target update after optimizer step `step` (from 1)."""
        self._check_step(step)
        denominator = self.total_steps * self.ipe_scale
        if self.momentum_schedule == "cosine":
            progress = 0.5 * (1.0 - math.cos(math.pi * min((step - 1) / denominator, 1.0)))
            return self.ema_momentum + progress * (self.final_ema_momentum - self.ema_momentum)
        value = self.ema_momentum + (step - 1) * (self.final_ema_momentum - self.ema_momentum) / denominator
        return min(value, max(self.ema_momentum, self.final_ema_momentum))

    def values(self, step: int) -> dict[str, float]:
        """The three values of optimizer step `step`, under the names the training log uses."""
        return {
            "lr": self.learning_rate(step),
            "weight_decay": self.weight_decay_at(step),
            "momentum": self.momentum(step),
        }
