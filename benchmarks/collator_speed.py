# SPDX-License-Identifier: Apache-2.0
"""Speed of the mask collators against straightforward per-sample samplers with the reference semantics.

    python -m benchmarks.collator_speed [--rounds 30] [--calls-per-round 10] [--num-threads 1]

Prints a table and writes `benchmarks/results/collator_speed.json`. Times `sample_indices` alone (the
image/video stacking is the same `default_collate` for every collator). Collators run in DataLoader
workers, where PyTorch uses one thread, so the default is one thread here too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from benchmarks.reference_collator import ReferenceMultiBlock3DSampler, ReferenceMultiBlockSampler
from modeling_ijepa.data.masking import MultiBlock3DMaskCollator, MultiBlockMaskCollator

BENCHMARKS = Path(__file__).resolve().parent

# I-JEPA paper settings (ViT-H/14 on 224px images gives the 16x16 grid; ViT-*/16 gives 14x14).
IMAGE_SETTINGS = {
    "num_targets": 4,
    "target_scale": (0.15, 0.2),
    "target_aspect_ratio": (0.75, 1.5),
    "context_scale": (0.85, 1.0),
}
# V-JEPA paper settings: 8 short-range and 2 long-range blocks spanning the whole clip.
VIDEO_MASK_TYPES = [
    {"num_blocks": 8, "spatial_scale": (0.15, 0.15), "temporal_scale": (1.0, 1.0), "aspect_ratio": (0.75, 1.5)},
    {"num_blocks": 2, "spatial_scale": (0.7, 0.7), "temporal_scale": (1.0, 1.0), "aspect_ratio": (0.75, 1.5)},
]


def interleaved_medians(
    samplers: dict[str, Callable[[], object]], rounds: int, calls_per_round: dict[str, int]
) -> dict[str, float]:
    """Median ms per call of each sampler, timed in alternating rounds so that all see the same machine load."""
    timings = {name: [] for name in samplers}
    for name, sample in samplers.items():
        sample()
    for _ in range(rounds):
        for name, sample in samplers.items():
            for _ in range(calls_per_round[name]):
                start = time.perf_counter()
                sample()
                timings[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in timings.items()}


def cpu_model() -> str:
    # `platform.processor()` is often empty on Linux; /proc/cpuinfo names the CPU there.
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def build_cases() -> list[tuple]:
    """(name, grid, batch size, ours, ours with options, reference) of every timed setting."""
    cases = []
    for grid in (14, 16):
        reference = ReferenceMultiBlockSampler((grid, grid), min_keep=10, seed=0, **IMAGE_SETTINGS)
        ours = MultiBlockMaskCollator(grid * 16, 16, min_context_patches=10, seed=0, **IMAGE_SETTINGS)
        with_options = MultiBlockMaskCollator(
            grid * 16, 16, min_context_patches=10, full_range_placement=True, random_subset=True, seed=0,
            **IMAGE_SETTINGS,
        )
        cases.append((f"I-JEPA {grid}x{grid}", [grid, grid], 128, ours, with_options, reference))
    for batch_size in (24, 128):
        reference = ReferenceMultiBlock3DSampler((8, 14, 14), VIDEO_MASK_TYPES, seed=0)
        ours = MultiBlock3DMaskCollator(16, 224, 16, tubelet_size=2, mask_types=VIDEO_MASK_TYPES, seed=0)
        with_options = MultiBlock3DMaskCollator(
            16, 224, 16, tubelet_size=2, mask_types=VIDEO_MASK_TYPES, random_subset=True, seed=0
        )
        cases.append(("V-JEPA 16x224x224", [8, 14, 14], batch_size, ours, with_options, reference))
    return cases


def time_case(case: tuple, rounds: int, calls_per_round: int) -> dict:
    """One row of the results: the median milliseconds per batch of each sampler of `case`, printed too."""
    name, grid, batch_size, ours, with_options, reference = case
    medians = interleaved_medians(
        {
            "reference": partial(reference.sample_indices, batch_size),
            "ours": partial(ours.sample_indices, batch_size),
            "with_options": partial(with_options.sample_indices, batch_size),
        },
        rounds=rounds,
        calls_per_round={"reference": 1, "ours": calls_per_round, "with_options": calls_per_round},
    )
    reference_ms, ours_ms, with_options_ms = medians["reference"], medians["ours"], medians["with_options"]
    grid_text = "x".join(map(str, grid))
    print(
        f"{name:<20} {grid_text:<10} {batch_size:>5} {reference_ms:>13.2f} {ours_ms:>9.3f} "
        f"{reference_ms / ours_ms:>7.1f}x {with_options_ms:>17.3f}"
    )
    return {
        "case": name,
        "grid": grid,
        "batch_size": batch_size,
        "reference_per_sample_ms": round(reference_ms, 3),
        "ours_ms": round(ours_ms, 3),
        "speedup": round(reference_ms / ours_ms, 1),
        "ours_with_options_ms": round(with_options_ms, 3),
    }


def machine_description() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30, help="timing rounds, each one reference batch")
    parser.add_argument("--calls-per-round", type=int, default=10, help="batches of our collators per round")
    parser.add_argument("--num-threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--output", type=Path, default=BENCHMARKS / "results" / "collator_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)

    header = (
        f"{'case':<20} {'grid':<10} {'batch':>5} {'reference ms':>13} {'ours ms':>9} {'speedup':>8} "
        f"{'ours, options ms':>17}"
    )
    print(header)
    print("-" * len(header))
    results = [time_case(case, args.rounds, args.calls_per_round) for case in build_cases()]
    report = {
        "description": (
            "Median milliseconds per `sample_indices(batch_size)` call. reference: per-sample Python loops with the "
            "semantics of the original collators (benchmarks/reference_collator.py). ours: modeling_ijepa.data.masking in "
            "its default (reference-distribution) mode. ours_with_options: full_range_placement=True (images) and "
            "random_subset=True."
        ),
        "machine": machine_description(),
        "timed_batches": {"reference": args.rounds, "ours": args.rounds * args.calls_per_round},
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs "
        f"({cpu_model()}), load average {report['machine']['load_average_1min']}; written to {args.output}"
    )


if __name__ == "__main__":
    main()
