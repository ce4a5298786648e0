# SPDX-License-Identifier: Apache-2.0
"""The optimisation step of JEPA pretraining, the reference's step in one library function.

`run_pretraining.py` trains through `PretrainingStep`, and the trajectory tests replay the reference's own training
runs through it, so the script's code path is the tested one. One step (the order of the reference loops, I-JEPA
`src/train.py` and V-JEPA `app/vjepa/train.py`):

1. set the learning rate and weight decay of optimizer step k (counted from 1) on the parameter groups;
2. forward: the target encoder without gradients, the context encoder and the predictor, the loss;
3. backward; then, when clipping applies, clip the context encoder's and the predictor's gradients each to its own
   2-norm (V-JEPA clips each network on its own, and only in the epochs after the warmup);
4. AdamW step (decoupled weight decay), zero the gradients;
5. EMA: `target = m x target + (1 - m) x context`, with the context weights this step has just updated.

A step reads nothing back to the host unless asked to (`--on_nonfinite_loss skip` must know before the update
whether to skip it): a non-finite loss is recorded on the device and reported by `raise_if_nonfinite`, which the
loop calls before it logs, checkpoints or exports.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from modeling_ijepa.training.schedules import Schedules


class NonFiniteLossError(RuntimeError):
    """The loss was NaN or infinite; the message names the optimizer step."""


def decays(name: str, parameter: torch.Tensor) -> bool:
    """The reference's rule: weight decay on every tensor whose name has no `bias` and that is not 1-D (Linear and
    Conv weights, mask tokens), none on biases and LayerNorm parameters."""
    return "bias" not in name and parameter.ndim != 1


def parameter_groups(model: torch.nn.Module) -> list[dict]:
    """AdamW groups of the trainable parameters: one that decays and one that does not (`apply_weight_decay`).
    Frozen parameters (the EMA target encoder, the sin-cos position tables) are left out, as in the reference."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decay if decays(name, parameter) else no_decay).append(parameter)
    return [
        {"params": decay, "apply_weight_decay": True},
        {"params": no_decay, "weight_decay": 0.0, "apply_weight_decay": False},
    ]


def build_optimizer(
    model: torch.nn.Module, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
) -> torch.optim.AdamW:
    """AdamW over `parameter_groups(model)`, with multi-tensor kernels: fused on CUDA, foreach elsewhere (PyTorch
    would loop over the parameters one by one on the CPU)."""
    on_cuda = torch.cuda.is_available()
    return torch.optim.AdamW(
        parameter_groups(model), lr=lr, betas=betas, eps=eps,
        foreach=None if on_cuda else True, fused=True if on_cuda else None,
    )


def apply_schedules(optimizer: torch.optim.Optimizer, schedules: Schedules, step: int) -> tuple[float, float]:
    """Set every parameter group's learning rate and weight decay for optimizer step `step` (from 1); groups built
    by `parameter_groups` without weight decay keep none. Returns the two values `(lr, weight_decay)`."""
    learning_rate, weight_decay = schedules.learning_rate(step), schedules.weight_decay_at(step)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
        group["weight_decay"] = weight_decay if group.get("apply_weight_decay", True) else 0.0
    return learning_rate, weight_decay


@dataclass
class StepResult:
    """What one call of `PretrainingStep` did.

    loss: the loss tensor (on the device, not read back); output: the model's `ModelOutput`; lr, weight_decay,
    momentum: the values this step used (momentum is None while gradients accumulate and no update happened);
    updated: whether the optimizer stepped; skipped: whether a non-finite batch was skipped; clipped: whether the
    gradients were clipped.
    """

    loss: torch.Tensor
    output: object
    lr: float
    weight_decay: float
    momentum: float | None
    updated: bool
    skipped: bool = False
    clipped: bool = False


class PretrainingStep:
    """One optimizer step of I-JEPA or V-JEPA pretraining (see the module docstring for the order).

    Args:
        accelerator: the run's `accelerate.Accelerator` (backward, gradient accumulation, clipping across processes).
        model: the pretraining model as `accelerator.prepare` returned it. A JEPA model (its unwrapped form has
            `context_encoder`, `predictor` and `update_target_encoder`) gets each network clipped to its own norm and
            the EMA update after each optimizer step; any other model (the MAE baseline) is clipped as a whole.
        optimizer: the optimizer over `parameter_groups`, prepared or not.
        schedules: the run's `Schedules`.
        max_grad_norm: clip each network's gradient 2-norm to this; None for no clipping.
        clip_grad_after_epoch: clip only when the 0-based epoch index is greater than this (the reference V-JEPA
            clips when `epoch > warmup_epochs`); None clips from the first step.
        on_nonfinite_loss: "error" (record it on the device; `raise_if_nonfinite` stops the run) or "skip" (skip the
            batch's update; this reads the loss's finiteness back at every step).
    """

    def __init__(
        self,
        accelerator,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        schedules: Schedules,
        max_grad_norm: float | None = None,
        clip_grad_after_epoch: float | None = None,
        on_nonfinite_loss: str = "error",
    ):
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive, got {max_grad_norm}.")
        if on_nonfinite_loss not in ("error", "skip"):
            raise ValueError(f"on_nonfinite_loss must be 'error' or 'skip', got {on_nonfinite_loss!r}.")
        self.accelerator = accelerator
        self.model = model
        self.unwrapped = accelerator.unwrap_model(model)
        self.optimizer = optimizer
        self.schedules = schedules
        self.max_grad_norm = max_grad_norm
        self.clip_grad_after_epoch = clip_grad_after_epoch
        self.on_nonfinite_loss = on_nonfinite_loss
        # The first optimizer step with a non-finite loss (0: none yet), its epoch and that loss, kept on the device.
        self._first_nonfinite_step = torch.zeros((), dtype=torch.long, device=accelerator.device)
        self._first_nonfinite_epoch = torch.zeros((), dtype=torch.long, device=accelerator.device)
        self._first_nonfinite_loss = torch.zeros((), device=accelerator.device)

    def clips_at(self, epoch: int) -> bool:
        """Whether gradients are clipped in (0-based) epoch `epoch`."""
        if self.max_grad_norm is None:
            return False
        return self.clip_grad_after_epoch is None or epoch > self.clip_grad_after_epoch

    def __call__(self, batch: dict, step: int, epoch: int) -> StepResult:
        """Train on `batch` (the model's keyword inputs) as part of optimizer step `step` (from 1) in epoch `epoch`.

        With gradient accumulation several calls make one optimizer step: they all get the same `step`, and the
        optimizer and the EMA move on the last of them."""
        accelerator, optimizer = self.accelerator, self.optimizer
        lr, weight_decay = apply_schedules(optimizer, self.schedules, step)
        if getattr(self.unwrapped.config, "sigreg_loss_weight", 0):
            batch = {**batch, "regulariser_seed": step}  # new random directions at every step, as LeJEPA draws them
        with accelerator.accumulate(self.model):
            output = self.model(**batch)
            loss = output.loss
            if self.on_nonfinite_loss == "skip" and not self.all_finite(loss):
                optimizer.zero_grad(set_to_none=True)
                return StepResult(loss, output, lr, weight_decay, None, updated=False, skipped=True)
            self.record_nonfinite(loss, step, epoch)
            accelerator.backward(loss)
            clipped = accelerator.sync_gradients and self.clips_at(epoch)
            if clipped:
                # Each network to its own norm: one joint norm would also scale the network with small gradients.
                for network in self.trained_networks:
                    accelerator.clip_grad_norm_(network.parameters(), self.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            return StepResult(loss, output, lr, weight_decay, None, updated=False)
        momentum = None
        if hasattr(self.unwrapped, "update_target_encoder"):  # a JEPA model: its target encoder follows by EMA
            momentum = self.schedules.momentum(step)
            self.unwrapped.update_target_encoder(momentum)
        return StepResult(loss, output, lr, weight_decay, momentum, updated=True, clipped=clipped)

    @property
    def trained_networks(self) -> list[torch.nn.Module]:
        """The networks clipped one by one: a JEPA model's context encoder and predictor, else the whole model."""
        if hasattr(self.unwrapped, "context_encoder") and hasattr(self.unwrapped, "predictor"):
            return [self.unwrapped.context_encoder, self.unwrapped.predictor]
        return [self.unwrapped]

    def all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every process (a collective that reads one value back)."""
        finite = torch.isfinite(loss.detach()).reshape(1)
        return bool(self.accelerator.gather(finite).all().item())

    def record_nonfinite(self, loss: torch.Tensor, step: int, epoch: int) -> None:
        """Remember the first step whose loss is not finite, on the device and without a sync."""
        first = (self._first_nonfinite_step == 0) & ~torch.isfinite(loss.detach())
        self._first_nonfinite_step = torch.where(first, step, self._first_nonfinite_step)
        self._first_nonfinite_epoch = torch.where(first, epoch, self._first_nonfinite_epoch)
        self._first_nonfinite_loss = torch.where(first, loss.detach().float(), self._first_nonfinite_loss)

    def raise_if_nonfinite(self, last_checkpoint: Callable[[], str | None] | None = None) -> None:
        """Raise `NonFiniteLossError` if any process has seen a non-finite loss since the start (a collective: call it
        at the same step on every process). The run's weights are then not to be trusted, so it must stop before it
        logs, checkpoints or exports them. `last_checkpoint()` names the checkpoint that is kept, for the message."""
        step = int(self.accelerator.reduce(self._first_nonfinite_step.clone(), "max"))
        if step == 0:
            return
        kept = last_checkpoint() if last_checkpoint is not None else None
        kept = f"The last good checkpoint is {kept}." if kept else "No checkpoint was written."
        seen_here = int(self._first_nonfinite_step) == step  # else another process saw it first
        loss = f" ({float(self._first_nonfinite_loss)})" if seen_here else ""
        epoch = f" (epoch {int(self._first_nonfinite_epoch)})" if seen_here else ""
        raise NonFiniteLossError(
            f"Non-finite loss{loss} at optimizer step {step}{epoch}. {kept} "
            "Lower the learning rate or clip gradients (--max_grad_norm), or pass --on_nonfinite_loss skip to skip "
            "such steps."
        )
