# SPDX-License-Identifier: Apache-2.0
"""Tests of the multi-block mask collators: invariants, seeding, termination, and agreement with the reference."""

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.reference_collator import ReferenceMultiBlock3DSampler, ReferenceMultiBlockSampler
from modeling_ijepa.data import masking
from modeling_ijepa.data.masking import MaskType, MultiBlock3DMaskCollator, MultiBlockMaskCollator

PAPER_2D = {
    "num_targets": 4,
    "target_scale": (0.15, 0.2),
    "target_aspect_ratio": (0.75, 1.5),
    "context_scale": (0.85, 1.0),
}
VJEPA_MASK_TYPES = [
    {"num_blocks": 8, "spatial_scale": (0.15, 0.15), "temporal_scale": (1.0, 1.0), "aspect_ratio": (0.75, 1.5)},
    {"num_blocks": 2, "spatial_scale": (0.7, 0.7), "temporal_scale": (1.0, 1.0), "aspect_ratio": (0.75, 1.5)},
]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    # Collators run in DataLoader workers, which PyTorch limits to one thread; on a busy machine the
    # default intra-op threads only add contention to these small tensors.
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)


def as_masks(indices: torch.Tensor, num_patches: int) -> torch.Tensor:
    """`[B, ..., K]` indices -> `[B, num_patches]` bool masks of their union per sample."""
    masks = torch.zeros(indices.shape[0], num_patches, dtype=torch.bool)
    return masks.scatter_(1, indices.flatten(1), True)


def assert_valid_indices(indices: torch.Tensor, num_patches: int) -> None:
    assert indices.dtype == torch.int64
    assert indices.shape[-1] >= 1
    assert indices.min() >= 0 and indices.max() < num_patches
    # Strictly ascending rows are also free of duplicates.
    assert (indices.diff(dim=-1) > 0).all()


def check_2d(context, targets, grid, batch_size, num_targets, allow_overlap=False) -> tuple[int, int]:
    """Checks the invariants of one 2D batch and returns the target block height and width."""
    height, width = grid
    num_patches = height * width
    assert context.ndim == 2 and context.shape[0] == batch_size
    assert targets.ndim == 3 and targets.shape[:2] == (batch_size, num_targets)
    assert_valid_indices(context, num_patches)
    assert_valid_indices(targets, num_patches)
    # Target blocks are whole rectangles: distinct patches filling their bounding box exactly.
    rows, columns = targets // width, targets % width
    block_heights = rows.amax(-1) - rows.amin(-1) + 1
    block_widths = columns.amax(-1) - columns.amin(-1) + 1
    assert (block_heights * block_widths == targets.shape[-1]).all()
    # One block size per batch, as in the reference.
    assert (block_heights == block_heights[0, 0]).all() and (block_widths == block_widths[0, 0]).all()
    if not allow_overlap:
        assert not as_masks(targets, num_patches).gather(1, context).any()
    return int(block_heights[0, 0]), int(block_widths[0, 0])


def check_3d(contexts, targets, grid, batch_size, num_mask_types) -> None:
    num_tokens = math.prod(grid)
    assert isinstance(contexts, list) and isinstance(targets, list)
    assert len(contexts) == len(targets) == num_mask_types
    for context, target in zip(contexts, targets):
        assert context.ndim == 2 and target.ndim == 2
        assert context.shape[0] == target.shape[0] == batch_size
        assert_valid_indices(context, num_tokens)
        assert_valid_indices(target, num_tokens)
        assert not as_masks(target, num_tokens).gather(1, context).any()


def batches(collator, num_batches: int, batch_size: int) -> list:
    return [collator.sample_indices(batch_size) for _ in range(num_batches)]


def same_batches(first: list, second: list) -> bool:
    """Whether two sequences of batches (tuples of tensors or of lists of tensors) are identical."""

    def tensors(batch) -> list:
        return [tensor for item in batch for tensor in (item if isinstance(item, list) else [item])]

    return len(first) == len(second) and all(
        len(tensors(a)) == len(tensors(b)) and all(torch.equal(x, y) for x, y in zip(tensors(a), tensors(b)))
        for a, b in zip(first, second)
    )


# ---------------------------------------------------------------- invariants


@pytest.mark.parametrize("grid", [(4, 4), (5, 7), (8, 8), (14, 14), (16, 16), (23, 9), (32, 32)])
@pytest.mark.parametrize(
    "options",
    [{}, {"allow_overlap": True}, {"full_range_placement": True, "random_subset": True}],
    ids=["reference", "overlap", "improved"],
)
def test_2d_invariants_over_grids(grid, options):
    collator = MultiBlockMaskCollator(grid, 1, seed=0, **PAPER_2D, **options)
    for context, targets in batches(collator, 25, 8):
        check_2d(context, targets, grid, 8, 4, allow_overlap=options.get("allow_overlap", False))


@pytest.mark.parametrize("grid", [(4, 4), (8, 8), (14, 14), (16, 16), (20, 12), (32, 32)])
def test_2d_block_sizes_follow_scales(grid):
    height, width = grid
    num_patches = height * width
    scale, aspect = PAPER_2D["target_scale"], PAPER_2D["target_aspect_ratio"]

    def area_bounds(num_kept: int) -> tuple[float, float]:
        # Sides are round(sqrt(k * a)) and round(sqrt(k / a)): each within 0.5 of its real value.
        slack = 0.5 * (math.sqrt(num_kept * aspect[1]) + math.sqrt(num_kept / aspect[0]))
        return num_kept - slack + 0.25, num_kept + slack + 0.25

    lowest, _ = area_bounds(int(num_patches * scale[0]))
    _, highest = area_bounds(int(num_patches * scale[1]))
    collator = MultiBlockMaskCollator(grid, 1, seed=1, **PAPER_2D)
    for context, targets in batches(collator, 40, 4):
        block_height, block_width = check_2d(context, targets, grid, 4, 4)
        assert 1 <= block_height <= height - 1 and 1 <= block_width <= width - 1
        area = block_height * block_width
        assert area <= highest
        if block_height < height - 1 and block_width < width - 1:
            assert area >= lowest
            # The aspect ratio is kept up to the rounding of each side.
            assert (block_height - 0.5) / (block_width + 0.5) <= aspect[1]
            assert (block_height + 0.5) / (block_width - 0.5) >= aspect[0]


@pytest.mark.parametrize("grid", [(1, 2, 2), (1, 4, 4), (2, 6, 5), (4, 8, 8), (8, 14, 14)])
def test_3d_invariants_and_sizes(grid):
    duration, height, width = grid
    collator = MultiBlock3DMaskCollator(duration * 2, (height * 4, width * 4), 4, tubelet_size=2, seed=0)
    for contexts, targets in batches(collator, 15, 6):
        check_3d(contexts, targets, grid, 6, 2)
        for mask_type, target in zip(collator.mask_types, targets):
            # Each side is within 0.5 of its real value, clamped to the grid and to at least one token.
            num_kept = int(height * width * mask_type.spatial_scale[1])
            largest_height = max(1, min(height, math.sqrt(num_kept * mask_type.aspect_ratio[1]) + 0.5))
            largest_width = max(1, min(width, math.sqrt(num_kept / mask_type.aspect_ratio[0]) + 0.5))
            assert target.shape[1] <= mask_type.num_blocks * duration * largest_height * largest_width


def test_reference_placement_never_reaches_last_row_or_column():
    grid = (14, 14)
    for full_range, expected in ((False, False), (True, True)):
        collator = MultiBlockMaskCollator(grid, 1, seed=0, full_range_placement=full_range, **PAPER_2D)
        reached = False
        for context, targets in batches(collator, 30, 16):
            for indices in (context, targets):
                reached |= bool(((indices // 14 == 13) | (indices % 14 == 13)).any())
        assert reached == expected


def test_random_subset_spreads_the_context_over_the_image():
    grid = (14, 14)
    mean_rows = {}
    for random_subset in (False, True):
        collator = MultiBlockMaskCollator(grid, 1, seed=0, random_subset=random_subset, **PAPER_2D)
        mean_rows[random_subset] = np.mean(
            [float((context // 14).float().mean()) for context, _ in batches(collator, 30, 16)]
        )
    # Raster truncation keeps the top of the image; a random subset is centred on the context block.
    assert mean_rows[True] > mean_rows[False] + 1.5


def test_3d_random_subset_spreads_lists_over_the_clip():
    mean_times = {}
    for random_subset in (False, True):
        collator = MultiBlock3DMaskCollator(16, 64, 16, random_subset=random_subset, seed=0)
        times = []
        for contexts, targets in batches(collator, 20, 8):
            check_3d(contexts, targets, (8, 4, 4), 8, 2)
            times.append(float((contexts[0] // 16).float().mean()))
        mean_times[random_subset] = np.mean(times)
    # Raster truncation drops the end of the clip; a random subset keeps all time steps alike.
    assert mean_times[True] > mean_times[False] + 0.2


# ---------------------------------------------------------------- termination


@pytest.mark.timeout(20)
def test_2d_terminates_where_the_reference_loops_forever():
    # 8x8 grid, target blocks of at most 3x3 patches: the reference re-draws blocks of <= 10 patches forever.
    collator = MultiBlockMaskCollator(32, 4, target_scale=(0.05, 0.1), min_context_patches=10, seed=0)
    for context, targets in batches(collator, 50, 16):
        block_height, block_width = check_2d(context, targets, (8, 8), 16, 4)
        assert block_height * block_width <= 10


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "grid, options",
    [
        ((2, 2), {}),
        ((4, 4), {"min_context_patches": 15}),
        ((4, 4), {"full_range_placement": True, "num_targets": 8, "target_scale": (0.5, 1.0)}),
        ((3, 3), {"allow_overlap": True, "context_scale": (0.01, 0.01), "min_context_patches": 8}),
        ((6, 6), {"target_scale": (0.001, 0.001), "context_scale": (0.001, 0.001)}),
    ],
)
def test_2d_terminates_on_impossible_constraints(grid, options):
    collator = MultiBlockMaskCollator(grid, 1, seed=0, **options)
    for context, targets in batches(collator, 30, 8):
        check_2d(context, targets, grid, 8, options.get("num_targets", 4), options.get("allow_overlap", False))


@pytest.mark.timeout(20)
@pytest.mark.parametrize("grid", [(1, 1, 2), (1, 2, 1), (2, 1, 1), (1, 3, 3), (4, 2, 2)])
def test_3d_terminates_when_blocks_always_cover_the_grid(grid):
    # Whole-grid blocks leave no context: the reference re-draws forever.
    duration, height, width = grid
    mask_types = [MaskType(1, (1.0, 1.0)), {"num_blocks": 3, "spatial_scale": (0.9, 1.0), "aspect_ratio": (0.5, 2.0)}]
    collator = MultiBlock3DMaskCollator(duration, (height, width), 1, tubelet_size=1, mask_types=mask_types, seed=0)
    for contexts, targets in batches(collator, 10, 4):
        check_3d(contexts, targets, grid, 4, 2)


# ---------------------------------------------------------------- property-based


@st.composite
def scale_range(draw, low=0.001, high=1.0):
    first, second = draw(st.floats(low, high)), draw(st.floats(low, high))
    return min(first, second), max(first, second)


@settings(max_examples=60, deadline=None)
@given(
    grid=st.tuples(st.integers(2, 32), st.integers(2, 32)),
    num_targets=st.integers(1, 8),
    target_scale=scale_range(),
    target_aspect_ratio=scale_range(0.2, 5.0),
    context_scale=scale_range(),
    min_context_patches=st.integers(0, 30),
    allow_overlap=st.booleans(),
    full_range_placement=st.booleans(),
    random_subset=st.booleans(),
    batch_size=st.integers(1, 16),
    seed=st.integers(0, 2**32),
)
def test_2d_properties(grid, num_targets, batch_size, allow_overlap, seed, **options):
    collator = MultiBlockMaskCollator(
        grid, 1, num_targets=num_targets, allow_overlap=allow_overlap, seed=seed, **options
    )
    for context, targets in batches(collator, 3, batch_size):
        check_2d(context, targets, grid, batch_size, num_targets, allow_overlap)


@settings(max_examples=60, deadline=None)
@given(
    grid=st.tuples(st.integers(1, 8), st.integers(1, 12), st.integers(1, 12)).filter(lambda g: math.prod(g) >= 2),
    tubelet_size=st.integers(1, 3),
    mask_types=st.lists(
        st.builds(
            MaskType,
            num_blocks=st.integers(1, 10),
            spatial_scale=scale_range(),
            temporal_scale=scale_range(),
            aspect_ratio=scale_range(0.2, 5.0),
        ),
        min_size=1,
        max_size=3,
    ),
    random_subset=st.booleans(),
    batch_size=st.integers(1, 12),
    seed=st.integers(0, 2**32),
)
def test_3d_properties(grid, tubelet_size, mask_types, random_subset, batch_size, seed):
    duration, height, width = grid
    collator = MultiBlock3DMaskCollator(
        duration * tubelet_size, (height * 2, width * 2), 2, tubelet_size, mask_types, random_subset, seed
    )
    for contexts, targets in batches(collator, 3, batch_size):
        check_3d(contexts, targets, grid, batch_size, len(mask_types))


# ---------------------------------------------------------------- seeding, workers, resuming


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: MultiBlockMaskCollator(224, 16, seed=seed),
        lambda seed: MultiBlock3DMaskCollator(16, 64, 16, seed=seed),
    ],
)
def test_seeds(make):
    assert same_batches(batches(make(3), 4, 8), batches(make(3), 4, 8))
    assert not same_batches(batches(make(3), 4, 8), batches(make(4), 4, 8))
    # seed=None draws fresh entropy but records it.
    first, second = make(None), make(None)
    assert first.seed != second.seed
    assert same_batches(batches(first, 2, 8), batches(make(first.seed), 2, 8))


def test_epochs_give_fresh_draws():
    collator = MultiBlockMaskCollator(224, 16, seed=0)
    first_epoch = batches(collator, 3, 8)
    collator.set_epoch(1)
    assert not same_batches(first_epoch, batches(collator, 3, 8))
    collator.set_epoch(0)
    assert same_batches(first_epoch, batches(collator, 3, 8))


def run_as_workers(monkeypatch, collator, num_workers: int, num_batches: int, batch_size: int) -> list:
    """Calls copies of `collator` the way DataLoader workers do (round-robin), returning batches in order."""
    workers = [copy.deepcopy(collator) for _ in range(num_workers)]
    results = []
    for batch_index in range(num_batches):
        worker_id = batch_index % num_workers
        info = SimpleNamespace(id=worker_id, num_workers=num_workers)
        monkeypatch.setattr(masking, "get_worker_info", lambda info=info: info)
        results.append(workers[worker_id].sample_indices(batch_size))
    monkeypatch.setattr(masking, "get_worker_info", lambda: None)
    return results


@pytest.mark.parametrize(
    "make", [lambda: MultiBlockMaskCollator(64, 8, seed=5), lambda: MultiBlock3DMaskCollator(4, 32, 8, seed=5)]
)
@pytest.mark.parametrize("num_workers", [2, 3])
def test_simulated_workers_and_resume(monkeypatch, make, num_workers):
    single = make()
    single.set_epoch(2)
    expected = batches(single, 10, 4)

    collator = make()
    collator.set_epoch(2)
    assert same_batches(run_as_workers(monkeypatch, collator, num_workers, 10, 4), expected)

    # Resuming after 4 batches, in the main process and in workers.
    collator.set_epoch(2, start_batch=4)
    assert same_batches(batches(collator, 6, 4), expected[4:])
    collator.set_epoch(2, start_batch=4)
    assert same_batches(run_as_workers(monkeypatch, collator, num_workers, 6, 4), expected[4:])


class TinyImages(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": torch.full((3, 32, 32), float(index)), "labels": index}


@pytest.mark.timeout(60)
def test_dataloader_workers_match_single_process():
    def load(num_workers: int, epoch: int, start_batch: int = 0) -> list:
        collator = MultiBlockMaskCollator(32, 4, target_scale=(0.2, 0.3), seed=11)
        collator.set_epoch(epoch, start_batch)
        sampler = list(torch.utils.data.BatchSampler(range(10), batch_size=2, drop_last=False))[start_batch:]
        loader = torch.utils.data.DataLoader(
            TinyImages(), batch_sampler=sampler, collate_fn=collator, num_workers=num_workers
        )
        return [(batch["labels"], batch["context_indices"], batch["target_indices"]) for batch in loader]

    single = load(0, epoch=1)
    assert same_batches(load(2, epoch=1), single)
    assert same_batches(load(2, epoch=1, start_batch=3), single[3:])


# ---------------------------------------------------------------- collation


def test_2d_call_collates_examples():
    collator = MultiBlockMaskCollator(32, 4, seed=0)
    examples = [{"pixel_values": torch.rand(3, 32, 32), "labels": i} for i in range(3)]
    batch = collator(examples)
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert batch["labels"].tolist() == [0, 1, 2]
    check_2d(batch["context_indices"], batch["target_indices"], (8, 8), 3, 4)
    with pytest.raises(ValueError, match=r"shape \(\*, 32, 32\), got \(3, 32, 16\)"):
        collator([{"pixel_values": torch.rand(3, 32, 16)}])
    with pytest.raises(ValueError, match="'pixel_values'"):
        collator([{"image": torch.rand(3, 32, 32)}])


def test_3d_call_collates_examples():
    collator = MultiBlock3DMaskCollator(4, 32, 8, seed=0)
    examples = [{"pixel_values_videos": torch.rand(4, 3, 32, 32), "label": i} for i in range(2)]
    batch = collator(examples)
    assert batch["pixel_values_videos"].shape == (2, 4, 3, 32, 32)
    assert batch["label"].tolist() == [0, 1]
    check_3d(batch["context_indices"], batch["target_indices"], (2, 4, 4), 2, 2)
    with pytest.raises(ValueError, match=r"shape \(4, \*, 32, 32\), got \(3, 4, 32, 32\)"):
        collator([{"pixel_values_videos": torch.rand(3, 4, 32, 32)}])


def test_default_mask_types_are_vjepa():
    collator = MultiBlock3DMaskCollator(16, 224, 16)
    assert collator.mask_types == [MaskType(**mask_type) for mask_type in VJEPA_MASK_TYPES]
    assert collator.grid_size == (8, 14, 14)


# ---------------------------------------------------------------- agreement with the reference


def coverage_2d(sampler, num_batches: int, batch_size: int, num_patches: int) -> dict:
    target_lengths, context_lengths = [], []
    target_coverage, context_coverage = torch.zeros(num_patches), torch.zeros(num_patches)
    for _ in range(num_batches):
        context, targets = sampler.sample_indices(batch_size)
        target_lengths.append(targets.shape[-1])
        context_lengths.append(context.shape[-1])
        target_coverage += as_masks(targets, num_patches).sum(0)
        context_coverage += as_masks(context, num_patches).sum(0)
    samples = num_batches * batch_size
    return {
        "target_length": np.mean(target_lengths),
        "context_length": np.mean(context_lengths),
        "target_coverage": target_coverage / samples,
        "context_coverage": context_coverage / samples,
    }


@pytest.mark.parametrize(
    "grid, options",
    [
        ((14, 14), {}),
        ((16, 16), {}),
        ((10, 12), {"num_targets": 3, "target_scale": (0.1, 0.2), "target_aspect_ratio": (0.5, 2.0), "min_keep": 4}),
    ],
)
def test_2d_distribution_matches_reference(grid, options):
    options = {**PAPER_2D, "min_keep": 10, **options}
    num_patches = grid[0] * grid[1]
    reference = coverage_2d(ReferenceMultiBlockSampler(grid, seed=0, **options), 250, 16, num_patches)
    options["min_context_patches"] = options.pop("min_keep")
    ours = coverage_2d(MultiBlockMaskCollator(grid, 1, seed=0, **options), 250, 16, num_patches)
    # Lengths vary per batch by several patches; 250 batches pin their means to well within these bounds.
    assert abs(ours["target_length"] - reference["target_length"]) < 1.5
    assert abs(ours["context_length"] - reference["context_length"]) < 3.0
    # Per-patch frequencies over 4000 samples: seed-to-seed spread is about 0.03, a raster-versus-random
    # or placement change moves them by more than 0.2.
    assert (ours["target_coverage"] - reference["target_coverage"]).abs().max() < 0.07
    assert (ours["context_coverage"] - reference["context_coverage"]).abs().max() < 0.07


def test_3d_distribution_matches_reference():
    grid = (4, 8, 8)
    num_tokens = math.prod(grid)
    mask_types = VJEPA_MASK_TYPES + [
        {"num_blocks": 3, "spatial_scale": (0.1, 0.3), "temporal_scale": (0.25, 0.75), "aspect_ratio": (0.5, 2.0)}
    ]
    samplers = {
        "reference": ReferenceMultiBlock3DSampler(grid, mask_types, seed=0),
        "ours": MultiBlock3DMaskCollator(8, 64, 8, mask_types=mask_types, seed=0),
    }
    num_batches, batch_size = 200, 8
    statistics = {}
    for name, sampler in samplers.items():
        lengths = np.zeros((len(mask_types), 2))
        coverage = torch.zeros(len(mask_types), 2, num_tokens)
        for contexts, targets in batches(sampler, num_batches, batch_size):
            for i, (context, target) in enumerate(zip(contexts, targets)):
                lengths[i] += (context.shape[1], target.shape[1])
                coverage[i, 0] += as_masks(context, num_tokens).sum(0)
                coverage[i, 1] += as_masks(target, num_tokens).sum(0)
        coverage = (coverage / (num_batches * batch_size)).view(len(mask_types), 2, *grid)
        # Per time step, row and column: per-token frequencies are too noisy with whole-clip blocks.
        marginals = torch.cat([coverage.mean((3, 4)), coverage.mean((2, 4)), coverage.mean((2, 3))], dim=-1)
        statistics[name] = (lengths / num_batches, marginals)
    (reference_lengths, reference_marginals), (lengths, marginals) = statistics["reference"], statistics["ours"]
    # Seed-to-seed spread: lengths 0.016 * N, marginals 0.05; random-subset truncation moves marginals by 0.3.
    assert np.abs(lengths - reference_lengths).max() < 0.04 * num_tokens
    assert (marginals - reference_marginals).abs().max() < 0.09


# ---------------------------------------------------------------- argument validation


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"image_size": 30, "patch_size": 4},
            r"divisible by `patch_size`, got image_size=\(30, 30\) and patch_size=\(4, 4\)",
        ),
        ({"image_size": (32, 0), "patch_size": 4}, r"`image_size` to be a positive int or a pair .*got \(32, 0\)"),
        ({"image_size": 4, "patch_size": 4}, r"at least 2x2, got 1x1"),
        ({"num_targets": 0}, r"`num_targets` to be an int >= 1, got 0"),
        (
            {"target_scale": (0.3, 0.2)},
            r"`target_scale` to be a \(min, max\) pair in \(0, 1.0\] with min <= max, got \(0.3, 0.2\)",
        ),
        ({"target_scale": (0.0, 0.2)}, r"`target_scale`.*got \(0.0, 0.2\)"),
        ({"context_scale": (0.85, 1.5)}, r"`context_scale`.*got \(0.85, 1.5\)"),
        (
            {"target_aspect_ratio": (-1, 2)},
            r"`target_aspect_ratio` to be a \(min, max\) pair in \(0, inf\).*got \(-1, 2\)",
        ),
        ({"target_aspect_ratio": "wide"}, r"`target_aspect_ratio` to be a \(min, max\) pair of numbers, got 'wide'"),
        ({"min_context_patches": -1}, r"`min_context_patches` to be an int >= 0, got -1"),
        ({"num_mask_draws": 0}, r"`num_mask_draws` to be an int >= 1, got 0"),
        ({"seed": -3}, r"`seed` to be None or an int >= 0, got -3"),
    ],
)
def test_2d_bad_arguments(kwargs, message):
    arguments = {"image_size": 32, "patch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        MultiBlockMaskCollator(**arguments)


def test_collators_share_the_grid_and_size_checks_of_the_configs():
    """One grid, and one rule per size, for the configs, the collators and the training script's arguments."""
    from modeling_ijepa import IJepaConfig, VJepaConfig
    from modeling_ijepa.training import arguments

    sizes = {"image_size": (32, 24), "patch_size": 8}
    config = IJepaConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128, **sizes)
    assert MultiBlockMaskCollator(**sizes).grid_size == config.grid_size == (4, 3)
    video = VJepaConfig(num_frames=8, hidden_size=64, num_attention_heads=4, intermediate_size=128, **sizes)
    assert MultiBlock3DMaskCollator(num_frames=8, **sizes).grid_size == video.grid_size == (4, 4, 3)
    assert arguments.as_range is masking.as_range
    assert masking.as_range((0.2, 0.5), "scale", upper=1.0) == (0.2, 0.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_frames": 15}, r"`num_frames` to be divisible by `tubelet_size`, got num_frames=15 and tubelet_size=2"),
        ({"tubelet_size": 0}, r"`tubelet_size` to be an int >= 1, got 0"),
        ({"image_size": 30}, r"divisible by `patch_size`, got image_size=\(30, 30\) and patch_size=\(8, 8\)"),
        ({"num_frames": 1, "tubelet_size": 1, "image_size": 8}, r"at least 2 tokens, got \(1, 1, 1\)"),
        ({"mask_types": []}, r"non-empty list of mask types, got \[\]"),
        ({"mask_types": [{"num_blocks": 2}]}, r"complete mask type, got \{'num_blocks': 2\}"),
        (
            {"mask_types": [{"num_blocks": 2, "spatial_scale": (0.1, 0.2), "max_keep": 4}]},
            r"unknown keys \['max_keep'\]",
        ),
        ({"mask_types": [3]}, r"`MaskType` or a dict, got int"),
    ],
)
def test_3d_bad_arguments(kwargs, message):
    arguments = {"num_frames": 16, "image_size": 32, "patch_size": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        MultiBlock3DMaskCollator(**arguments)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_blocks": 0}, r"`num_blocks` to be an int >= 1, got 0"),
        ({"spatial_scale": (0.5, 1.2)}, r"`spatial_scale`.*got \(0.5, 1.2\)"),
        ({"temporal_scale": (0.0, 1.0)}, r"`temporal_scale`.*got \(0.0, 1.0\)"),
        ({"aspect_ratio": (2.0, 1.0)}, r"`aspect_ratio`.*got \(2.0, 1.0\)"),
    ],
)
def test_mask_type_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaskType(**{"num_blocks": 1, "spatial_scale": (0.1, 0.2), **kwargs})


def test_bad_epoch_and_batch_size():
    collator = MultiBlockMaskCollator(32, 4)
    with pytest.raises(ValueError, match=r"`epoch` to be an int >= 0, got -1"):
        collator.set_epoch(-1)
    with pytest.raises(ValueError, match=r"`start_batch` to be an int >= 0, got 1.5"):
        collator.set_epoch(0, start_batch=1.5)
    with pytest.raises(ValueError, match=r"`batch_size` to be an int >= 1, got 0"):
        collator.sample_indices(0)


# ------------------------------------------------------------------------------ several mask draws per image


@pytest.mark.parametrize("options", [{}, {"full_range_placement": True, "random_subset": True}])
def test_one_mask_draw_is_the_collator_without_the_option(options):
    default = MultiBlockMaskCollator(32, 4, seed=3, **options)
    one = MultiBlockMaskCollator(32, 4, seed=3, num_mask_draws=1, **options)
    assert same_batches(batches(default, 4, 6), batches(one, 4, 6))


def test_mask_draws_give_n_valid_rows_per_image_grouped_by_image():
    num_images, num_draws = 5, 3
    collator = MultiBlockMaskCollator(32, 4, seed=1, num_mask_draws=num_draws, full_range_placement=True)
    for context, targets in batches(collator, 3, num_images):
        # Every row is a valid draw on its own, and the batch shares one block size, as the images of a batch do.
        check_2d(context, targets, (8, 8), num_images * num_draws, 4)
    # The rows are those of B * N images drawn with the same seed: row i * N + j is draw j of image i.
    plain = MultiBlockMaskCollator(32, 4, seed=1, full_range_placement=True)
    collator.set_epoch(0)
    assert same_batches(batches(collator, 3, num_images), batches(plain, 3, num_images * num_draws))
    # The draws of one image differ.
    context, targets = collator.sample_indices(num_images)
    per_image = targets.view(num_images, num_draws, *targets.shape[1:])
    assert not all(torch.equal(per_image[i, 0], per_image[i, 1]) for i in range(num_images))


def test_mask_draws_call_collates_each_image_once():
    collator = MultiBlockMaskCollator(32, 4, seed=0, num_mask_draws=2)
    examples = [{"pixel_values": torch.randn(3, 32, 32), "labels": i} for i in range(3)]
    batch = collator(examples)
    assert batch["pixel_values"].shape == (3, 3, 32, 32) and batch["labels"].tolist() == [0, 1, 2]
    assert batch["context_indices"].shape[0] == 6 and batch["target_indices"].shape[:2] == (6, 4)


@pytest.mark.parametrize("num_draws", [1, 3])
def test_global_batch_collate_keeps_the_draws_of_each_process_examples(num_draws):
    from modeling_ijepa.data.examples import GlobalBatchMaskCollate

    def make(num_processes, process_index, per_device):
        collator = MultiBlockMaskCollator(32, 4, seed=7, num_mask_draws=num_draws)
        return GlobalBatchMaskCollate(collator, per_device, num_processes, process_index)

    examples = [{"pixel_values": torch.randn(3, 32, 32)} for _ in range(4)]
    whole = make(1, 0, 4)(examples)
    halves = [make(2, rank, 2)(examples[2 * rank : 2 * rank + 2]) for rank in range(2)]
    for key in ("context_indices", "target_indices"):
        assert torch.equal(torch.cat([half[key] for half in halves]), whole[key])
        assert halves[1][key].shape[0] == 2 * num_draws
    # One example dropped on process 1 (unreadable): it keeps the N rows of its first example only.
    short = make(2, 1, 2)(examples[2:3])
    assert torch.equal(short["context_indices"], whole["context_indices"][2 * num_draws : 3 * num_draws])
    assert torch.equal(short["target_indices"], whole["target_indices"][2 * num_draws : 3 * num_draws])
