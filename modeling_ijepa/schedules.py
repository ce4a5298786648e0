"""The I-JEPA schedules as pure functions of the optimizer step, so a resumed run continues them exactly.

- learning rate: linear warmup from `start_lr` to `lr`, then cosine to `final_lr`;
- weight decay: cosine from `weight_decay` to `final_weight_decay` (0.04 -> 0.4 in the paper);
- EMA momentum of the target encoder: linear from `ema_momentum` to `final_ema_momentum` (0.996 -> 1.0),
  or cosine as an option.
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedules:
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

    def __post_init__(self):
        if self.total_steps <= 0:
            raise ValueError(f"The schedules need at least one step, got total_steps={self.total_steps}.")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps must be in [0, {self.total_steps}], got {self.warmup_steps}.")
        if self.momentum_schedule not in ("linear", "cosine"):
            raise ValueError(f"momentum_schedule must be 'linear' or 'cosine', got {self.momentum_schedule!r}.")

    def learning_rate(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_lr + (step / self.warmup_steps) * (self.lr - self.start_lr)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.final_lr + (self.lr - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    def weight_decay_at(self, step: int) -> float:
        progress = min(step / self.total_steps, 1.0)
        return self.final_weight_decay + (self.weight_decay - self.final_weight_decay) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def momentum(self, step: int) -> float:
        progress = min(step / self.total_steps, 1.0)
        if self.momentum_schedule == "cosine":
            progress = 0.5 * (1.0 - math.cos(math.pi * progress))
        return self.ema_momentum + progress * (self.final_ema_momentum - self.ema_momentum)
