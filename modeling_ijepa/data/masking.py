# SPDX-License-Identifier: Apache-2.0
"""Multi-block mask collators for I-JEPA (images) and V-JEPA (videos).

Both collators turn a list of examples into a batch plus the patch indices that the context
encoder keeps and the indices of the blocks the predictor must predict. Indices are row-major
positions on the patch grid (videos: time, then row, then column), `torch.int64`, and every
index tensor in a batch has a fixed shape so the model needs neither padding nor Python loops.

The sampling is vectorised over the batch and seeded per batch from `(seed, epoch, batch index)`,
so results do not depend on how many DataLoader workers run the collator and a run can be
resumed mid-epoch with [`~MultiBlockMaskCollator.set_epoch`].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from modeling_ijepa.configuration_ijepa import as_pair, patch_grid, validate_sizes
from modeling_ijepa.configuration_vjepa import FRAME_TUBELETS

__all__ = ["MaskType", "MultiBlock3DMaskCollator", "MultiBlockMaskCollator", "as_range"]

# The reference collators give up on a placement after this many draws (their `timeout`).
_MAX_DRAWS = 20

# The collators' words for the divisibility checks of the model configs (`validate_sizes`), which their grids meet.
_SIZE_MESSAGES = {
    "divisible": "Expected `{name}` to be divisible by `{divisor_name}`, got {name}={value} and "
    "{divisor_name}={divisor}.",
}


def as_range(bounds: Sequence[float], name: str, upper: float | None = None) -> tuple[float, float]:
    """Checks a (min, max) pair with 0 < min <= max (<= upper when given)."""
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"Expected `{name}` to be a (min, max) pair of numbers, got {bounds!r}.") from None
    interval = "(0, inf)" if upper is None else f"(0, {upper}]"
    if not (0 < low <= high < math.inf) or (upper is not None and high > upper):
        raise ValueError(f"Expected `{name}` to be a (min, max) pair in {interval} with min <= max, got {bounds!r}.")
    return low, high


def _check_count(value: int, name: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"Expected `{name}` to be an int >= {minimum}, got {value!r}.")
    return value


def _interpolate(bounds: tuple[float, float], fraction: float) -> float:
    return bounds[0] + fraction * (bounds[1] - bounds[0])


def _spatial_block_shape(num_patches: int, scale: float, aspect_ratio: float) -> tuple[int, int]:
    """Height and width of a block covering `scale` of `num_patches` with height/width `aspect_ratio`.

    Follows the reference rounding exactly (`int` for the patch count, Python's `round` for the sides);
    callers apply their own clamping to the grid.
    """
    num_kept = int(num_patches * scale)
    return round(math.sqrt(num_kept * aspect_ratio)), round(math.sqrt(num_kept / aspect_ratio))


def _random_starts(
    generator: torch.Generator,
    shape: tuple[int, ...],
    grid: Sequence[int],
    block: Sequence[int],
    reach_end: Sequence[bool],
) -> list[torch.Tensor]:
    """Draws uniformly random positions of axis-aligned blocks on a patch grid.

    Args:
        generator (`torch.Generator`): source of the positions.
        shape (`tuple[int, ...]`): how many blocks to place, e.g. `(batch_size, num_blocks)`.
        grid (`Sequence[int]`): grid size per dimension (`(H, W)` or `(T, H, W)`).
        block (`Sequence[int]`): block size per dimension, each at least 1 and at most the grid size.
        reach_end (`Sequence[bool]`): per dimension, whether a block may touch the last grid slice.
            The I-JEPA reference draws starts from `[0, grid - block)`, so its blocks never do.

    Returns:
        `list[torch.LongTensor]`: per dimension, the first covered slice, of shape `(*shape, 1)`.
    """
    return [
        torch.randint(0, length - size + int(inclusive), (*shape, 1), generator=generator)
        for length, size, inclusive in zip(grid, block, reach_end)
    ]


def _block_masks(starts: list[torch.Tensor], grid: Sequence[int], block: Sequence[int]) -> torch.Tensor:
    """Row-major membership masks `[*shape, prod(grid)]` of the blocks placed at `starts` (see `_random_starts`)."""
    mask = None
    for start, length, size in zip(starts, grid, block):
        position = torch.arange(length)
        inside = (position >= start) & (position < start + size)
        mask = inside if mask is None else (mask[..., :, None] & inside[..., None, :]).flatten(-2)
    return mask


def _block_indices(starts: list[torch.Tensor], grid: Sequence[int], block: Sequence[int]) -> torch.Tensor:
    """Ascending row-major indices `[*shape, prod(block)]` of the blocks placed at `starts`."""
    indices = None
    for start, length, size in zip(starts, grid, block):
        position = start + torch.arange(size)
        indices = position if indices is None else (indices[..., :, None] * length + position[..., None, :]).flatten(-2)
    return indices


def _union_of_blocks(starts: list[torch.Tensor], grid: Sequence[int], block: Sequence[int]) -> torch.Tensor:
    """Row-major masks `[n, prod(grid)]` of the union of the blocks placed at `starts` (each `[n, num_blocks, 1]`)."""
    # Blocks are outer products of a mask over the leading dimensions and one over the last, so the number of
    # blocks covering each patch is a batched matmul: much faster than materialising `[n, num_blocks, N]` masks.
    leading = _block_masks(starts[:-1], grid[:-1], block[:-1]).float()
    last = _block_masks(starts[-1:], grid[-1:], block[-1:]).float()
    return (leading.transpose(1, 2) @ last).flatten(1) > 0


def _draw_with_retries(
    draw: Callable[[torch.Tensor], torch.Tensor], min_count: int, max_count: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draws one mask per sample, re-drawing those with a count of set entries outside `[min_count, max_count]`.

    Only the failing samples are re-drawn, at most `_MAX_DRAWS` draws in all, so the loop runs over rare
    re-draw rounds rather than over samples.

    Args:
        draw (`Callable`): maps sample indices `[n]` to fresh masks `[n, N]` for those samples.
        min_count (`int`), max_count (`int`): the accepted range of set entries per mask.
        batch_size (`int`): number of samples.

    Returns:
        `(masks, counts, valid)`: masks `[batch_size, N]`, their int32 counts of set entries and whether each is in
        range; the caller decides what samples that never were get instead.
    """
    masks = draw(torch.arange(batch_size))
    counts = masks.sum(1, dtype=torch.int32)
    valid = (counts >= min_count) & (counts <= max_count)
    for _ in range(_MAX_DRAWS - 1):
        retry = (~valid).nonzero().squeeze(1)
        if retry.numel() == 0:
            break
        masks[retry] = draw(retry)
        counts[retry] = masks[retry].sum(1, dtype=torch.int32)
        valid[retry] = (counts[retry] >= min_count) & (counts[retry] <= max_count)
    return masks, counts, valid


def _equal_length_indices(masks: torch.Tensor, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Turns boolean masks into index lists of one common length.

    Args:
        masks (`torch.BoolTensor` of shape `(n, N)`): each row holds at least `length` `True` entries.
        length (`int`): number of indices to keep per row.
        generator (`torch.Generator`, *optional*): when given, each row keeps a uniformly random subset
            of its entries; otherwise its first `length` entries in raster order (the reference behaviour).

    Returns:
        `torch.LongTensor` of shape `(n, length)`, ascending within each row.
    """
    num_rows, row_length = masks.shape
    if generator is None:
        # int32 because the default int64 cumsum of a bool tensor is several times slower on CPU.
        keep = masks & (masks.cumsum(1, dtype=torch.int32) <= length)
    else:
        # Random keys below 1 for masked entries and 2 elsewhere: the `length` smallest are a uniform subset.
        # numpy's linear-time `argpartition` finds them many times faster than `torch.topk`.
        keys = torch.rand(masks.shape, generator=generator).masked_fill_(~masks, 2.0)
        chosen = np.argpartition(keys.numpy(), length - 1, axis=1)[:, :length]
        keep = torch.zeros_like(masks).scatter_(1, torch.from_numpy(chosen), True)
    # Flat positions come row by row in ascending order, so equal row counts reshape exactly. numpy's
    # `flatnonzero` is several times faster than `torch.nonzero` on CPU.
    flat_positions = torch.from_numpy(np.flatnonzero(keep.numpy())).view(num_rows, length)
    return flat_positions - torch.arange(0, num_rows * row_length, row_length)[:, None]


def _check_output(name: str, indices: torch.Tensor, grid_size: Sequence[int]) -> torch.Tensor:
    """Returns `indices` `[..., K]` after checking what the model relies on: int64 positions on the grid, K >= 1.

    The collator runs on the CPU, where reading values costs nothing, so a bad mask fails here, where it is made,
    rather than as a device-side assertion in the middle of the training step.
    """
    num_positions = math.prod(grid_size)
    on_grid = indices.numel() > 0 and 0 <= indices.min() <= indices.max() < num_positions
    if indices.dtype != torch.int64 or not on_grid:
        raise ValueError(
            f"The collator made `{name}` of shape {tuple(indices.shape)} and dtype {indices.dtype}, not int64 "
            f"positions in [0, {num_positions - 1}] with at least one per block: check the mask settings against "
            f"the {'x'.join(str(size) for size in grid_size)} patch grid."
        )
    return indices


class _SeededMaskCollator:
    """Seeding shared by the mask collators: one generator per batch from `(seed, epoch, batch index)`.

    DataLoader workers each hold a copy of the collator and receive batches round-robin, so worker `w`
    of `n` handles global batches `start_batch + w, start_batch + w + n, ...`: counting calls per copy
    recovers the global batch index without any state shared between processes.
    """

    def __init__(self, seed: int | None) -> None:
        if seed is None:
            # Fresh OS entropy, kept so that a run can still be replayed from `collator.seed`.
            seed = int(np.random.SeedSequence().entropy)
        elif not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"Expected `seed` to be None or an int >= 0, got {seed!r}.")
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0
        self._num_calls = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Sets the epoch and the index of the next batch; call it before creating each epoch's iterator.

        Args:
            epoch (`int`): the epoch about to start. Each epoch gets fresh draws.
            start_batch (`int`, *optional*, defaults to 0): index within the epoch of the first batch the
                new iterator yields, when resuming after skipping `start_batch` batches in the sampler.

        DataLoader workers copy the collator when an iterator is created. Without `set_epoch`, each epoch's
        workers therefore start from the same state and repeat the masks of the first epoch. With
        `persistent_workers=True` they keep their first copy and do not see later calls; draws then stay
        distinct and reproducible for a fixed `num_workers`, but no longer match a run with another
        `num_workers` after the first epoch.
        """
        self.epoch = _check_count(epoch, "epoch", 0)
        self.start_batch = _check_count(start_batch, "start_batch", 0)
        self._num_calls = 0

    def _next_generator(self) -> torch.Generator:
        worker = get_worker_info()
        if worker is None:
            batch_index = self.start_batch + self._num_calls
        else:
            batch_index = self.start_batch + self._num_calls * worker.num_workers + worker.id
        self._num_calls += 1
        # SeedSequence hashes the triple, so neighbouring batches and seeds give unrelated streams.
        batch_seed = np.random.SeedSequence([self.seed, self.epoch, batch_index]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(batch_seed))

    @staticmethod
    def _collate(examples: list[dict[str, Any]], key: str, expected_shape: tuple[int, ...]) -> dict[str, Any]:
        if not examples or not all(isinstance(example, dict) and key in example for example in examples):
            raise ValueError(f"Expected a non-empty list of dicts that each hold {key!r}, got {examples!r:.200}.")
        batch = default_collate(examples)
        shape = tuple(batch[key].shape[1:])
        if len(shape) != len(expected_shape) or any(e not in (-1, s) for e, s in zip(expected_shape, shape)):
            wanted = ", ".join("*" if e == -1 else str(e) for e in expected_shape)
            raise ValueError(f"Expected each {key!r} to have shape ({wanted}), got {shape}.")
        return batch


class MultiBlockMaskCollator(_SeededMaskCollator):
    r"""Collator that samples I-JEPA multi-block masks for a batch of images.

    Follows the distribution of the reference I-JEPA collator. Per batch, one random number sets the
    target block size: scale `s` and aspect ratio `a` are both interpolated with it, the block keeps
    `int(H * W * s)` patches as `round(sqrt(n * a))` rows by `round(sqrt(n / a))` columns, clamped to
    at most `H - 1` rows and `W - 1` columns. A second number sets the square context block from
    `context_scale` the same way. Per image, `num_targets` target blocks are placed at random and one
    context block is placed at random with all target patches removed from it; a context with no more
    than `min_context_patches` patches is re-drawn. Lengths are then equalised across the batch: every
    context keeps as many patches as the smallest one.

    With `num_mask_draws=N > 1` every image gets `N` independent draws (targets and context), for a model that
    computes the targets of an image once and predicts them from each of its `N` contexts: the index tensors
    then have `B * N` rows, those of image `i` at `i * N ... i * N + N - 1`. All draws of a batch share its
    block sizes and equalised lengths, as the images of a batch do. `N = 1` gives exactly the masks of a
    collator without the option.

    Known flaws of the reference and how they are handled:

    - It never terminates when a target block has no more than `min_context_patches` patches (it
      re-draws the target forever), or when the context block alone is that small. Termination is
      always guaranteed here, because an endless loop is never wanted: target blocks are kept at their
      drawn size (at least 1x1), and a context still too small after 20 draws becomes every patch
      outside the target blocks (the reference instead stops excluding target blocks from the context,
      leaking patches the predictor must predict; that is not reproduced). Both cases leave the
      distribution unchanged wherever the reference terminates without relaxing, e.g. the paper's
      settings on 14x14 and 16x16 grids.
    - Its block positions are drawn from `[0, H - h)`, so blocks never reach the last row or column.
      `full_range_placement=True` draws from `[0, H - h]` instead. If the target blocks of an image
      then happen to cover the whole grid, they are re-placed the reference way, which always leaves
      the last row and column free.
    - It equalises context lengths by keeping the first patches in raster order, biasing the context
      towards the top of the image. `random_subset=True` keeps a uniformly random subset instead.

    Args:
        image_size (`int` or `tuple[int, int]`):
            Input height and width in pixels.
        patch_size (`int` or `tuple[int, int]`):
            Patch height and width in pixels; must divide `image_size`.
        num_targets (`int`, *optional*, defaults to 4):
            Number of target blocks `M` per image.
        target_scale (`tuple[float, float]`, *optional*, defaults to `(0.15, 0.2)`):
            Range of the fraction of the grid each target block covers.
        target_aspect_ratio (`tuple[float, float]`, *optional*, defaults to `(0.75, 1.5)`):
            Range of the height/width ratio of the target blocks.
        context_scale (`tuple[float, float]`, *optional*, defaults to `(0.85, 1.0)`):
            Range of the fraction of the grid covered by the (square) context block.
        min_context_patches (`int`, *optional*, defaults to 10):
            A context must keep more than this many patches (the reference's `min_keep`).
        allow_overlap (`bool`, *optional*, defaults to `False`):
            Whether the context may contain target patches.
        full_range_placement (`bool`, *optional*, defaults to `False`):
            Whether blocks may reach the last row and column. `False` reproduces the reference.
        random_subset (`bool`, *optional*, defaults to `False`):
            Whether to equalise context lengths with a random subset. `False` reproduces the reference.
        num_mask_draws (`int`, *optional*, defaults to 1):
            Mask draws `N` per image. 1 reproduces the reference.
        seed (`int`, *optional*):
            Seed of the draws. Batch `i` of epoch `e` always gets the same masks for the same seed, whichever
            DataLoader worker collates it. `None` draws a seed from OS entropy (stored in `self.seed`). In
            distributed training give each process its own seed, e.g. `seed + rank`.

    Example:

    ```python
    >>> collator = MultiBlockMaskCollator(image_size=224, patch_size=16, seed=0)
    >>> loader = torch.utils.data.DataLoader(dataset, batch_size=128, collate_fn=collator, num_workers=8)
    >>> for epoch in range(num_epochs):
    ...     collator.set_epoch(epoch)
    ...     for batch in loader:
    ...         ...  # batch["pixel_values"], batch["context_indices"], batch["target_indices"]
    ```
    """

    def __init__(
        self,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        num_targets: int = 4,
        target_scale: tuple[float, float] = (0.15, 0.2),
        target_aspect_ratio: tuple[float, float] = (0.75, 1.5),
        context_scale: tuple[float, float] = (0.85, 1.0),
        min_context_patches: int = 10,
        allow_overlap: bool = False,
        full_range_placement: bool = False,
        random_subset: bool = False,
        num_mask_draws: int = 1,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        self.num_mask_draws = _check_count(num_mask_draws, "num_mask_draws", 1)
        self.image_size = as_pair(image_size, "image_size")
        self.grid_size = patch_grid(image_size, patch_size, _SIZE_MESSAGES)
        if min(self.grid_size) < 2:
            raise ValueError(f"Expected a patch grid of at least 2x2, got {self.grid_size[0]}x{self.grid_size[1]}.")
        self.num_targets = _check_count(num_targets, "num_targets", 1)
        self.target_scale = as_range(target_scale, "target_scale", upper=1.0)
        self.target_aspect_ratio = as_range(target_aspect_ratio, "target_aspect_ratio")
        self.context_scale = as_range(context_scale, "context_scale", upper=1.0)
        self.min_context_patches = _check_count(min_context_patches, "min_context_patches", 0)
        self.allow_overlap = bool(allow_overlap)
        self.full_range_placement = bool(full_range_placement)
        self.random_subset = bool(random_subset)

    def _block_shape(
        self, fraction: float, scale: tuple[float, float], aspect_ratio: tuple[float, float]
    ) -> tuple[int, int]:
        height, width = self.grid_size
        block_height, block_width = _spatial_block_shape(
            height * width, _interpolate(scale, fraction), _interpolate(aspect_ratio, fraction)
        )
        # The reference clamps to one less than the grid; the lower bound of 1 is ours (an empty block
        # made it loop forever).
        return max(1, min(block_height, height - 1)), max(1, min(block_width, width - 1))

    def largest_context(self, resolution: int = 1000) -> int:
        """The most patches a context can keep, over every block size the collator draws and every placement.

        Block sizes are `_block_shape` of a random fraction in [0, 1), evaluated here on `resolution + 1` evenly
        spaced fractions (the sizes are piecewise constant in it). At best all target blocks coincide and sit as far
        from the context block as the placement ranges allow, so the context loses only their smallest possible
        overlap (none with `allow_overlap`). When the result is at most `min_context_patches`, no draw ever meets
        the settings and every context falls back to the patches outside the targets: see `check_satisfiable`.
        """
        fractions = [index / resolution for index in range(resolution + 1)]
        target_shapes = {self._block_shape(f, self.target_scale, self.target_aspect_ratio) for f in fractions}
        context_shapes = {self._block_shape(f, self.context_scale, (1.0, 1.0)) for f in fractions}
        reach_end = int(self.full_range_placement)

        def least_overlap(length: int, first: int, second: int) -> int:
            # Starts are drawn from [0, length - size - 1 + reach_end] (see `_random_starts`); put the blocks at
            # opposite ends of their ranges.
            last_first, last_second = length - first - 1 + reach_end, length - second - 1 + reach_end
            first_at_start = max(0, min(first, last_second + second) - last_second)
            second_at_start = max(0, min(last_first + first, second) - last_first)
            return min(first_at_start, second_at_start)

        best = 0
        for context in context_shapes:
            for target in target_shapes:
                overlap = (
                    0
                    if self.allow_overlap
                    else math.prod(least_overlap(length, c, t) for length, c, t in zip(self.grid_size, context, target))
                )
                best = max(best, context[0] * context[1] - overlap)
        return best

    def check_satisfiable(self) -> None:
        """Raise `ValueError`, naming the patch grid, if no draw can give a context of more than
        `min_context_patches` patches (see `largest_context`)."""
        largest = self.largest_context()
        if largest <= self.min_context_patches:
            height, width = self.grid_size
            raise ValueError(
                f"The masking settings cannot be met on the {height}x{width} patch grid ({height * width} patches): "
                f"a context block of scale {self.context_scale} minus target blocks of scale {self.target_scale} "
                f"and aspect ratio {self.target_aspect_ratio} keeps at most {largest} patches, and "
                f"min_context_patches={self.min_context_patches} asks for more than {self.min_context_patches}."
            )

    def sample_indices(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples the masks of one batch.

        Args:
            batch_size (`int`): number of images `B`.

        Returns:
            `tuple(torch.LongTensor)`, with `R = B * num_mask_draws` rows, those of image `i` at
            `i * num_mask_draws ... (i + 1) * num_mask_draws - 1`:
            - context_indices of shape `(R, Kc)`: patches the context encoder keeps, ascending.
            - target_indices of shape `(R, M, Kt)`: patches of each target block, ascending; `Kt = h * w`.
        """
        _check_count(batch_size, "batch_size", 1)
        # The draws of a row do not depend on its image: the rows of `B * N` draws, grouped `N` per image.
        batch_size = batch_size * self.num_mask_draws
        generator = self._next_generator()
        target_fraction, context_fraction = torch.rand(2, generator=generator).tolist()
        target_shape = self._block_shape(target_fraction, self.target_scale, self.target_aspect_ratio)
        context_shape = self._block_shape(context_fraction, self.context_scale, (1.0, 1.0))
        grid, reach_end = self.grid_size, (self.full_range_placement,) * 2
        num_patches = grid[0] * grid[1]

        def place_targets(num_images: int, reach_end: tuple[bool, bool]) -> tuple[torch.Tensor, torch.Tensor]:
            starts = _random_starts(generator, (num_images, self.num_targets), grid, target_shape, reach_end)
            indices = _block_indices(starts, grid, target_shape)
            covered = torch.zeros(num_images, num_patches, dtype=torch.bool).scatter_(1, indices.flatten(1), True)
            return indices, covered

        target_indices, covered = place_targets(batch_size, reach_end)
        if self.full_range_placement:
            covering = (covered.sum(1, dtype=torch.int32) == num_patches).nonzero().squeeze(1)
            if covering.numel() > 0:
                target_indices[covering], covered[covering] = place_targets(covering.numel(), (False, False))

        allowed = torch.ones_like(covered) if self.allow_overlap else ~covered

        def place_contexts(rows: torch.Tensor) -> torch.Tensor:
            starts = _random_starts(generator, (rows.numel(),), grid, context_shape, reach_end)
            return _block_masks(starts, grid, context_shape) & allowed[rows]

        context, counts, valid = _draw_with_retries(
            place_contexts, self.min_context_patches + 1, num_patches, batch_size
        )
        stuck = ~valid
        context[stuck] = allowed[stuck]
        counts[stuck] = allowed[stuck].sum(1, dtype=torch.int32)
        context_indices = _equal_length_indices(context, int(counts.min()), generator if self.random_subset else None)
        return (
            _check_output("context_indices", context_indices, grid),
            _check_output("target_indices", target_indices, grid),
        )

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """Collates examples and samples their masks.

        Args:
            examples (`list[dict]`): each with `"pixel_values"` of shape `(C, H, W)`; other keys (e.g. `"labels"`)
                are collated with `torch.utils.data.default_collate`.

        Returns:
            `dict`: `pixel_values` of shape `(B, C, H, W)`, `context_indices` of shape `(B * N, Kc)`,
            `target_indices` of shape `(B * N, M, Kt)` for `N = num_mask_draws` (see `sample_indices` for the order
            of the rows), and the other collated keys.
        """
        batch = self._collate(examples, "pixel_values", (-1, *self.image_size))
        batch["context_indices"], batch["target_indices"] = self.sample_indices(len(examples))
        return batch


@dataclass
class MaskType:
    """One family of V-JEPA masks: the target is the union of `num_blocks` space-time blocks of one size.

    The block size is drawn once per batch: `temporal_scale` gives the fraction of time steps it spans,
    `spatial_scale` the fraction of each frame's patches it covers and `aspect_ratio` its height/width.

    Args:
        num_blocks (`int`): number of blocks whose union is the target.
        spatial_scale (`tuple[float, float]`): range of the fraction of a frame's patches per block.
        temporal_scale (`tuple[float, float]`, *optional*, defaults to `(1.0, 1.0)`): range of the fraction of
            time steps per block.
        aspect_ratio (`tuple[float, float]`, *optional*, defaults to `(0.75, 1.5)`): range of height/width.
    """

    num_blocks: int
    spatial_scale: tuple[float, float]
    temporal_scale: tuple[float, float] = (1.0, 1.0)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)

    def __post_init__(self) -> None:
        _check_count(self.num_blocks, "num_blocks", 1)
        self.spatial_scale = as_range(self.spatial_scale, "spatial_scale", upper=1.0)
        self.temporal_scale = as_range(self.temporal_scale, "temporal_scale", upper=1.0)
        self.aspect_ratio = as_range(self.aspect_ratio, "aspect_ratio")


def _as_mask_type(value: MaskType | dict[str, Any]) -> MaskType:
    if isinstance(value, MaskType):
        return value
    if isinstance(value, dict):
        unknown = set(value) - set(MaskType.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"Expected mask type keys among {sorted(MaskType.__dataclass_fields__)}, "
                f"got unknown keys {sorted(unknown)}."
            )
        try:
            return MaskType(**value)
        except TypeError as error:
            raise ValueError(f"Expected a complete mask type, got {value!r}: {error}.") from None
    raise ValueError(f"Expected each mask type to be a `MaskType` or a dict, got {type(value).__name__}.")


class MultiBlock3DMaskCollator(_SeededMaskCollator):
    r"""Collator that samples V-JEPA multi-block masks for a batch of videos.

    Follows the distribution of the reference V-JEPA collator. The token grid is `T' x H' x W'` with
    `T' = num_frames // tubelet_size`. For each mask type, three random numbers per batch set the block
    size: `t = max(1, int(T' * temporal))` time steps, and `round(sqrt(n * a))` rows by
    `round(sqrt(n / a))` columns with `n = int(H' * W' * spatial)`, clamped to the grid. The same three
    numbers serve every mask type, as in the reference (whose per-type generators share one seed), so
    all mask types of a batch share an aspect ratio. Per video, the target is the union of `num_blocks`
    blocks at random positions and the context is every other token. Across the batch, context and
    target lists are both shortened to their smallest length.

    Known flaws of the reference and how they are handled:

    - It re-draws a video whose blocks cover every token until the context is non-empty, forever when
      the blocks always cover the grid. Termination is always guaranteed here: after 20 draws the
      blocks are drawn once more, shrunk to leave the last column free (the last row, or time step, on
      grids one column wide), so the context is never empty. Blocks are also at least 1x1 (the
      reference returns empty targets for a zero-size block). Where the reference terminates the
      distribution is unchanged.
    - It equalises lengths by keeping the first tokens in raster order, biasing both lists towards the
      start of the clip. `random_subset=True` keeps a uniformly random subset instead.

    Args:
        num_frames (`int`):
            Frames per clip `T`.
        image_size (`int` or `tuple[int, int]`):
            Frame height and width in pixels.
        patch_size (`int` or `tuple[int, int]`):
            Patch height and width in pixels; must divide `image_size`.
        tubelet_size (`int`, *optional*, defaults to 2):
            Frames per token; must divide `num_frames`.
        mask_types (`list[MaskType | dict]`, *optional*):
            Mask families sampled for every batch. Defaults to V-JEPA's: 8 blocks of spatial scale 0.15 and
            2 blocks of scale 0.7, both spanning the whole clip with aspect ratio in (0.75, 1.5).
        random_subset (`bool`, *optional*, defaults to `False`):
            Whether to equalise lengths with a random subset. `False` reproduces the reference.
        seed (`int`, *optional*):
            Seed of the draws, as for [`MultiBlockMaskCollator`].
    """

    def __init__(
        self,
        num_frames: int,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        tubelet_size: int = 2,
        mask_types: Sequence[MaskType | dict[str, Any]] | None = None,
        random_subset: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        self.num_frames = _check_count(num_frames, "num_frames", 1)
        self.tubelet_size = _check_count(tubelet_size, "tubelet_size", 1)
        validate_sizes(
            {"num_frames": num_frames, "tubelet_size": tubelet_size},
            divisible=[FRAME_TUBELETS],
            messages=_SIZE_MESSAGES,
        )
        self.image_size = as_pair(image_size, "image_size")
        self.grid_size = (num_frames // tubelet_size, *patch_grid(image_size, patch_size, _SIZE_MESSAGES))
        if math.prod(self.grid_size) < 2:
            raise ValueError(f"Expected a token grid of at least 2 tokens, got {self.grid_size}.")
        if mask_types is None:
            mask_types = [MaskType(8, (0.15, 0.15)), MaskType(2, (0.7, 0.7))]
        if isinstance(mask_types, (MaskType, dict)) or len(mask_types) == 0:
            raise ValueError(f"Expected `mask_types` to be a non-empty list of mask types, got {mask_types!r}.")
        self.mask_types = [_as_mask_type(mask_type) for mask_type in mask_types]
        self.random_subset = bool(random_subset)

    def _block_shape(self, mask_type: MaskType, fractions: Sequence[float]) -> tuple[int, int, int]:
        duration, height, width = self.grid_size
        time_fraction, scale_fraction, aspect_fraction = fractions
        block_duration = max(1, int(duration * _interpolate(mask_type.temporal_scale, time_fraction)))
        block_height, block_width = _spatial_block_shape(
            height * width,
            _interpolate(mask_type.spatial_scale, scale_fraction),
            _interpolate(mask_type.aspect_ratio, aspect_fraction),
        )
        return block_duration, max(1, min(block_height, height)), max(1, min(block_width, width))

    def _sample_targets(
        self, generator: torch.Generator, batch_size: int, num_blocks: int, block: tuple[int, int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns target masks `[B, T'*H'*W']`, unions of blocks never covering every token, and their sizes `[B]`."""
        grid = self.grid_size
        num_tokens = math.prod(grid)

        def place(num_videos: int, block: Sequence[int], reach_end: Sequence[bool]) -> torch.Tensor:
            return _union_of_blocks(
                _random_starts(generator, (num_videos, num_blocks), grid, block, reach_end), grid, block
            )

        targets, counts, valid = _draw_with_retries(
            lambda rows: place(rows.numel(), block, (True,) * 3), 1, num_tokens - 1, batch_size
        )
        stuck = (~valid).nonzero().squeeze(1)
        if stuck.numel() > 0:
            # Shrink along the last dimension longer than one token and keep blocks off its final slice.
            dim = max(d for d in range(3) if grid[d] > 1)
            shrunk = [min(size, length - 1) if d == dim else size for d, (size, length) in enumerate(zip(block, grid))]
            targets[stuck] = place(stuck.numel(), shrunk, [d != dim for d in range(3)])
            counts[stuck] = targets[stuck].sum(1, dtype=torch.int32)
        return targets, counts

    def sample_indices(self, batch_size: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Samples the masks of one batch.

        Args:
            batch_size (`int`): number of videos `B`.

        Returns:
            `tuple(list[torch.LongTensor])`, one tensor per mask type in each list:
            - context_indices of shape `(B, Kc_i)`: tokens the context encoder keeps, ascending.
            - target_indices of shape `(B, Kt_i)`: tokens to predict, ascending.
        """
        _check_count(batch_size, "batch_size", 1)
        generator = self._next_generator()
        fractions = torch.rand(3, generator=generator).tolist()
        subset_generator = generator if self.random_subset else None
        num_tokens = math.prod(self.grid_size)
        context_indices, target_indices = [], []
        for index, mask_type in enumerate(self.mask_types):
            block = self._block_shape(mask_type, fractions)
            targets, counts = self._sample_targets(generator, batch_size, mask_type.num_blocks, block)
            context_length, target_length = num_tokens - int(counts.max()), int(counts.min())
            context = _equal_length_indices(~targets, context_length, subset_generator)
            target = _equal_length_indices(targets, target_length, subset_generator)
            context_indices.append(_check_output(f"context_indices[{index}]", context, self.grid_size))
            target_indices.append(_check_output(f"target_indices[{index}]", target, self.grid_size))
        return context_indices, target_indices

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """Collates examples and samples their masks.

        Args:
            examples (`list[dict]`): each with `"pixel_values_videos"` of shape `(T, C, H, W)`; other keys are
                collated with `torch.utils.data.default_collate`.

        Returns:
            `dict`: `pixel_values_videos` of shape `(B, T, C, H, W)`, `context_indices` (list over mask types of
            `(B, Kc_i)`), `target_indices` (list over mask types of `(B, Kt_i)`), and the other collated keys.
        """
        batch = self._collate(examples, "pixel_values_videos", (self.num_frames, -1, *self.image_size))
        batch["context_indices"], batch["target_indices"] = self.sample_indices(len(examples))
        return batch
