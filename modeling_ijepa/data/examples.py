# SPDX-License-Identifier: Apache-2.0
"""The example/collate pipeline's randomness: per-example seeds that depend only on (seed, epoch, index), and mask
collation that draws the masks of the whole global batch on every process, so that a run is the same on any
number of processes."""

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
    `i * N ... i * N + N - 1`, and each process keeps the `N` rows of each of its examples. With `num_views = V`
    crops per example (`--num_views`), each crop is an image to the mask collator: example `i` owns the `V * N`
    rows from `i * V * N`, crop by crop.
    """

    def __init__(self, mask_collator, per_device_batch_size: int, num_processes: int = 1, process_index: int = 0,
                 num_views: int = 1):
        self.mask_collator = mask_collator
        self.per_device_batch_size = per_device_batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.num_views = num_views

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.mask_collator.set_epoch(epoch, start_batch)

    def __call__(self, examples: list[dict]) -> dict:
        batch = default_collate(examples)
        global_crops = self.per_device_batch_size * self.num_processes * self.num_views
        context_indices, target_indices = self.mask_collator.sample_indices(global_crops)
        rows = getattr(self.mask_collator, "num_mask_draws", 1) * self.num_views  # per example
        start = self.process_index * self.per_device_batch_size * rows
        stop = start + len(examples) * rows  # fewer rows when unreadable examples were dropped
        batch["context_indices"] = slice_masks(context_indices, start, stop)
        batch["target_indices"] = slice_masks(target_indices, start, stop)
        return batch
