# SPDX-License-Identifier: Apache-2.0
"""Pieces of the pretraining loop: deterministic per-example randomness, mask collation that is identical
across process counts, the collapse monitor and the wall-clock limit."""

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
    run starts.

    This is the one owner of per-example randomness. It seeds torch's global RNG with `example_seed(seed, epoch,
    index)` around each read, and the wrapped dataset draws every random choice from that RNG and seeds nothing
    itself: the crop of an image (`pretraining_transform`), the clip start and crop of a video
    (`VideoClipDataset`). The RNG is forked, so the caller's random state is left as it was. The in-memory image
    path (`in_memory_images.InMemoryImages`) is a subclass that draws from a generator seeded the same way.

    Call `set_epoch` before iterating over each epoch; it also reaches persistent DataLoader workers.
    """

    def __init__(self, dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        # Shared memory: DataLoader workers hold their own copy of this object, and persistent ones keep it across
        # epochs, so a plain attribute set in the main process would not reach them.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: `torch.manual_seed` would also reseed (and, in the main process, move) the
            # CUDA generators, which `fork_rng(devices=[])` does not restore, at a hundred times the cost.
            torch.default_generator.manual_seed(example_seed(self.seed, self.epoch, index))
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

    With a collator that draws `num_mask_draws = N` masks per image, example `i` of the global batch owns mask rows
    `i * N ... i * N + N - 1`, and each process keeps the `N` rows of each of its examples.
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
        draws = getattr(self.mask_collator, "num_mask_draws", 1)
        start = self.process_index * self.per_device_batch_size * draws
        stop = start + len(examples) * draws  # fewer rows when unreadable examples were dropped
        batch["context_indices"] = slice_masks(context_indices, start, stop)
        batch["target_indices"] = slice_masks(target_indices, start, stop)
        return batch


@torch.no_grad()
def collapse_statistics(features: torch.Tensor, max_rows: int = 2048) -> dict[str, float]:
    """Signs of representation collapse in target features [..., D].

    Returns the mean over dimensions of the per-dimension standard deviation across tokens (near 0 when all
    tokens map to one point) and the effective rank (exp of the entropy of the normalised singular values of
    the centred features; near 1 when they span one direction, up to D when they use every dimension), with the
    largest effective rank these rows could have, `min(rows, D)`, to read it against."""
    features = features.detach().float().reshape(-1, features.shape[-1])[:max_rows]
    centred = features - features.mean(dim=0, keepdim=True)
    singular_values = torch.linalg.svdvals(centred)
    weights = singular_values / singular_values.sum().clamp_min(1e-12)
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum()
    return {"feature_std": features.std(dim=0).mean().item(), "effective_rank": entropy.exp().item(),
            "effective_rank_max": min(features.shape)}


def out_of_time(accelerator, started: float, max_minutes: float | None) -> bool:
    """Whether `max_minutes` have passed since `started` (a `time.perf_counter()` value). Every process must stop
    at the same step, so all of them go by the slowest one's clock (a collective: call it on every process).
    A single process reads its own clock and touches no device; several share theirs through a reduction, which
    waits for the device (the price of stopping together on a time limit)."""
    if max_minutes is None:
        return False
    if accelerator.num_processes == 1:
        return time.perf_counter() - started >= max_minutes * 60
    elapsed = torch.tensor([time.perf_counter() - started], device=accelerator.device)
    return accelerator.reduce(elapsed, "max").item() >= max_minutes * 60


class UnusableDataError(ValueError):
    """The data could not train the model: no optimizer step was made, or too many examples were unreadable."""


def check_skip_fraction(num_skipped: int, num_read: float, max_fraction: float, what: str) -> None:
    """Raise `UnusableDataError` when more than `max_fraction` of `num_read` examples were skipped as unreadable."""
    if num_skipped > max_fraction * num_read:
        raise UnusableDataError(
            f"{num_skipped} of {num_read:.0f} {what} ({num_skipped / num_read:.0%}) could not be read, more than "
            f"--max_skip_fraction {max_fraction}: check the data (or raise --max_skip_fraction)."
        )


def check_data_was_usable(accelerator, state: dict, max_skip_fraction: float) -> None:
    """After the training loop: refuse a run whose skipped examples exceed `max_skip_fraction` of those read, or that
    trained no optimizer step (an untrained model must not be exported as a result).

    Skips are counted per process (`state["num_skipped"]`) while `state["images_seen"]` counts the global batch, so
    each process judges its own share, and with several processes they agree through a max-reduction (a
    collective: call it on every process)."""
    num_read = state["num_skipped"] + state["images_seen"] / accelerator.num_processes
    over = state["num_skipped"] > max_skip_fraction * num_read
    if accelerator.num_processes > 1:
        over_anywhere = accelerator.reduce(torch.tensor(int(over), device=accelerator.device), "max").item()
        if over_anywhere and not over:
            raise UnusableDataError(
                f"Another process could not read more than --max_skip_fraction {max_skip_fraction} of its examples: "
                "check the data (or raise --max_skip_fraction)."
            )
    check_skip_fraction(state["num_skipped"], num_read, max_skip_fraction, "examples read")
    if state["global_step"] == 0:
        raise UnusableDataError(
            "No optimizer step was trained: every batch was unreadable or skipped. Nothing is exported."
        )


def mixed_precision_in_use(accelerator) -> str:
    """The mixed precision the run really trains in. Accelerate accepts `fp16` on a CPU, then runs in float32 (no
    autocast, no gradient scaler) while still reporting `fp16`."""
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        return "no"
    return accelerator.mixed_precision
