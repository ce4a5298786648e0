"""Pieces of the pretraining loop: deterministic per-example randomness, mask collation that is identical
across process counts, AdamW parameter groups, and the collapse monitor."""

import time

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate


def example_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends only on (seed, epoch, example index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> 1)


class SeededExamples(Dataset):
    """Wraps a dataset so that the random augmentation of example `i` in epoch `e` depends only on
    `(seed, e, i)`: not on the worker that loads it, the number of workers or processes, or where a resumed
    run starts. The global torch RNG is forked, so the caller's random state is left as it was."""

    def __init__(self, dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(example_seed(self.seed, self.epoch, index))
            return self.dataset[index]


def slice_masks(masks, start: int, stop: int):
    """Rows [start, stop) of a mask tensor, or of each tensor in a list (one per V-JEPA mask type)."""
    if isinstance(masks, list):
        return [mask[start:stop] for mask in masks]
    return masks[start:stop]


class GlobalBatchMaskCollate:
    """Collates one process's examples and gives them their share of masks drawn for the GLOBAL batch.

    Block sizes are drawn once per batch and index lists are equalised in length across the batch, so masks
    drawn per process would differ from a one-process run. Drawing for all `num_processes *
    per_device_batch_size` examples (with the same seeded generator on every process) and keeping this
    process's rows makes a run on N processes see exactly the masks of a one-process run with the same
    global batch. `mask_collator` is a `MultiBlockMaskCollator` or `MultiBlock3DMaskCollator`.
    """

    def __init__(self, mask_collator, per_device_batch_size: int, num_processes: int = 1, process_index: int = 0):
        self.mask_collator = mask_collator
        self.per_device_batch_size = per_device_batch_size
        self.num_processes = num_processes
        self.process_index = process_index

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.mask_collator.set_epoch(epoch, start_batch)

    def __call__(self, examples: list[dict]) -> dict:
        batch = default_collate(examples)
        context_indices, target_indices = self.mask_collator.sample_indices(self.per_device_batch_size * self.num_processes)
        start = self.process_index * self.per_device_batch_size
        stop = start + len(examples)  # fewer rows when unreadable examples were dropped
        batch["context_indices"] = slice_masks(context_indices, start, stop)
        batch["target_indices"] = slice_masks(target_indices, start, stop)
        return batch


def parameter_groups(model: torch.nn.Module) -> list[dict]:
    """AdamW groups: weight decay on matrices and kernels; none on biases and other 1-D parameters (norms),
    as in the I-JEPA recipe. Frozen parameters (target encoder, position tables) are left out."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return [
        {"params": decay, "apply_weight_decay": True},
        {"params": no_decay, "weight_decay": 0.0, "apply_weight_decay": False},
    ]


@torch.no_grad()
def collapse_statistics(features: torch.Tensor, max_rows: int = 2048) -> dict[str, float]:
    """Signs of representation collapse in target features [..., D].

    Returns the mean over dimensions of the per-dimension standard deviation across tokens (near 0 when all
    tokens map to one point) and the effective rank (exp of the entropy of the normalised singular values of
    the centred features; near 1 when they span one direction, up to D when they use every dimension)."""
    features = features.detach().float().reshape(-1, features.shape[-1])[:max_rows]
    centred = features - features.mean(dim=0, keepdim=True)
    singular_values = torch.linalg.svdvals(centred)
    weights = singular_values / singular_values.sum().clamp_min(1e-12)
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum()
    return {"feature_std": features.std(dim=0).mean().item(), "effective_rank": entropy.exp().item()}


def apply_schedules(optimizer: torch.optim.Optimizer, schedules, step: int) -> None:
    """Set every parameter group's learning rate and weight decay for `step` (0-based) from `schedules`; groups
    built by `parameter_groups` without weight decay keep none."""
    for group in optimizer.param_groups:
        group["lr"] = schedules.learning_rate(step)
        group["weight_decay"] = schedules.weight_decay_at(step) if group["apply_weight_decay"] else 0.0


def out_of_time(accelerator, started: float, max_minutes: float | None) -> bool:
    """Whether `max_minutes` have passed since `started` (a `time.perf_counter()` value). Every process must stop
    at the same step, so all of them go by the slowest one's clock (a collective: call it on every process)."""
    if max_minutes is None:
        return False
    elapsed = torch.tensor([time.perf_counter() - started], device=accelerator.device)
    return accelerator.reduce(elapsed, "max").item() >= max_minutes * 60
