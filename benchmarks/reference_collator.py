# SPDX-License-Identifier: Apache-2.0
"""Straightforward per-sample samplers with the semantics of the original I-JEPA and V-JEPA mask collators.

They loop over images and blocks in Python with small torch ops, as the originals do
(facebookresearch/ijepa `src/masks/multiblock.py`, facebookresearch/jepa `src/masks/multiblock3d.py`),
and serve two purposes: the speed baseline of `collator_speed.py` and the distribution oracle of
`tests/test_masking.py`. Written from the published description of the algorithms, not copied.

Like the originals they never terminate on some settings (a target block of at most `min_keep`
patches; video blocks that always cover the whole grid): use them only where the originals terminate.
Block sizes come from a generator seeded with the batch counter, as in the originals; positions come
from a separate generator seeded with `seed` (the originals use the global torch generator).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch


def _block_side_lengths(num_patches: int, scale: float, aspect_ratio: float) -> tuple[int, int]:
    num_kept = int(num_patches * scale)
    return round(math.sqrt(num_kept * aspect_ratio)), round(math.sqrt(num_kept / aspect_ratio))


def _draw(generator: torch.Generator, bounds: Sequence[float]) -> float:
    fraction = torch.rand(1, generator=generator).item()
    return bounds[0] + fraction * (bounds[1] - bounds[0])


class ReferenceMultiBlockSampler:
    """Per-sample I-JEPA multi-block sampler (one context block, `num_targets` target blocks).

    Args:
        grid_size (`tuple[int, int]`): patch grid `(H, W)`.
        num_targets (`int`): target blocks per image (the original's `npred`).
        target_scale, target_aspect_ratio, context_scale (`tuple[float, float]`): as in the original.
        min_keep (`int`): a block must keep more than this many patches.
        allow_overlap (`bool`): whether the context may contain target patches.
        seed (`int`): seed of the block positions.
    """

    def __init__(
        self,
        grid_size: tuple[int, int],
        num_targets: int = 4,
        target_scale: tuple[float, float] = (0.15, 0.2),
        target_aspect_ratio: tuple[float, float] = (0.75, 1.5),
        context_scale: tuple[float, float] = (0.85, 1.0),
        min_keep: int = 10,
        allow_overlap: bool = False,
        seed: int = 0,
    ) -> None:
        self.height, self.width = grid_size
        self.num_targets = num_targets
        self.target_scale = target_scale
        self.target_aspect_ratio = target_aspect_ratio
        self.context_scale = context_scale
        self.min_keep = min_keep
        self.allow_overlap = allow_overlap
        self.position_generator = torch.Generator().manual_seed(seed)
        self.batch_counter = 0

    def _block_size(
        self, generator: torch.Generator, scale: Sequence[float], aspect_ratio: Sequence[float]
    ) -> tuple[int, int]:
        # One draw sets both the scale and the aspect ratio.
        fraction = torch.rand(1, generator=generator).item()
        height, width = _block_side_lengths(
            self.height * self.width,
            scale[0] + fraction * (scale[1] - scale[0]),
            aspect_ratio[0] + fraction * (aspect_ratio[1] - aspect_ratio[0]),
        )
        while height >= self.height:
            height -= 1
        while width >= self.width:
            width -= 1
        return height, width

    def _random_block(self, height: int, width: int) -> torch.Tensor:
        # Exclusive upper bounds: blocks never reach the last row or column.
        top = torch.randint(0, self.height - height, (1,), generator=self.position_generator).item()
        left = torch.randint(0, self.width - width, (1,), generator=self.position_generator).item()
        block = torch.zeros(self.height, self.width, dtype=torch.bool)
        block[top : top + height, left : left + width] = True
        return block

    def sample_indices(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns context indices `[B, Kc]` and target indices `[B, M, Kt]` for one batch."""
        size_generator = torch.Generator().manual_seed(self.batch_counter)
        self.batch_counter += 1
        target_height, target_width = self._block_size(size_generator, self.target_scale, self.target_aspect_ratio)
        context_height, context_width = self._block_size(size_generator, self.context_scale, (1.0, 1.0))

        all_targets, all_contexts = [], []
        for _ in range(batch_size):
            targets, target_blocks = [], []
            for _ in range(self.num_targets):
                while True:
                    block = self._random_block(target_height, target_width)
                    indices = block.flatten().nonzero().squeeze(1)
                    if len(indices) > self.min_keep:
                        break
                targets.append(indices)
                target_blocks.append(block)
            all_targets.append(targets)

            failures, num_ignored = 0, 0
            while True:
                block = self._random_block(context_height, context_width)
                if not self.allow_overlap:
                    # After every 20 failures one more target block (from the last) stops constraining the context.
                    for target_block in target_blocks[: max(self.num_targets - num_ignored, 0)]:
                        block &= ~target_block
                indices = block.flatten().nonzero().squeeze(1)
                if len(indices) > self.min_keep:
                    break
                failures += 1
                if failures == 20:
                    failures, num_ignored = 0, num_ignored + 1
            all_contexts.append(indices)

        target_length = min(len(indices) for targets in all_targets for indices in targets)
        context_length = min(len(indices) for indices in all_contexts)
        target_indices = torch.stack(
            [torch.stack([indices[:target_length] for indices in targets]) for targets in all_targets]
        )
        context_indices = torch.stack([indices[:context_length] for indices in all_contexts])
        return context_indices, target_indices


class ReferenceMultiBlock3DSampler:
    """Per-sample V-JEPA multi-block sampler: per mask type, the target is a union of space-time blocks.

    Args:
        grid_size (`tuple[int, int, int]`): token grid `(T, H, W)`.
        mask_types (`list[dict]`): each with `num_blocks`, `spatial_scale`, `temporal_scale`, `aspect_ratio`.
        seed (`int`): seed of the block positions.
    """

    def __init__(self, grid_size: tuple[int, int, int], mask_types: Sequence[dict[str, Any]], seed: int = 0) -> None:
        self.duration, self.height, self.width = grid_size
        self.mask_types = list(mask_types)
        self.position_generator = torch.Generator().manual_seed(seed)
        self.batch_counter = 0

    def _block_size(self, generator: torch.Generator, mask_type: dict[str, Any]) -> tuple[int, int, int]:
        # Three separate draws: time span, spatial scale, aspect ratio.
        duration = max(1, int(self.duration * _draw(generator, mask_type["temporal_scale"])))
        spatial_scale = _draw(generator, mask_type["spatial_scale"])
        aspect_ratio = _draw(generator, mask_type["aspect_ratio"])
        height, width = _block_side_lengths(self.height * self.width, spatial_scale, aspect_ratio)
        return duration, min(height, self.height), min(width, self.width)

    def _sample(
        self, batch_size: int, mask_type: dict[str, Any], batch_index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Every mask type seeds its size generator with the same batch counter.
        duration, height, width = self._block_size(torch.Generator().manual_seed(batch_index), mask_type)
        contexts, targets = [], []
        for _ in range(batch_size):
            while True:
                visible = torch.ones(self.duration, self.height, self.width, dtype=torch.bool)
                for _ in range(mask_type["num_blocks"]):
                    # Inclusive upper bounds, unlike the image collator.
                    top = torch.randint(0, self.height - height + 1, (1,), generator=self.position_generator).item()
                    left = torch.randint(0, self.width - width + 1, (1,), generator=self.position_generator).item()
                    start = torch.randint(
                        0, self.duration - duration + 1, (1,), generator=self.position_generator
                    ).item()
                    visible[start : start + duration, top : top + height, left : left + width] = False
                visible = visible.flatten()
                context = visible.nonzero().squeeze(1)
                if len(context) > 0:
                    break
            contexts.append(context)
            targets.append((~visible).nonzero().squeeze(1))
        context_length = min(len(indices) for indices in contexts)
        target_length = min(len(indices) for indices in targets)
        return (
            torch.stack([indices[:context_length] for indices in contexts]),
            torch.stack([indices[:target_length] for indices in targets]),
        )

    def sample_indices(self, batch_size: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Returns per mask type the context indices `[B, Kc_i]` and target indices `[B, Kt_i]` of one batch."""
        batch_index = self.batch_counter
        self.batch_counter += 1
        contexts, targets = zip(*(self._sample(batch_size, mask_type, batch_index) for mask_type in self.mask_types))
        return list(contexts), list(targets)
