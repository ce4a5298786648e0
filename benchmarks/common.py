# SPDX-License-Identifier: Apache-2.0
"""Shared helpers of the benchmarks: machine description, timing, result files."""

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    info = {
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def median_seconds(function, repeats: int, warmup: int = 1) -> float:
    """Median wall-clock seconds of `function()` over `repeats` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_seconds(functions: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall-clock seconds of each of `functions` (name -> callable) in each of `repeats` rounds.

    Every round runs each function once, in an order that rotates from round to round, so that the slow phases
    of a shared machine fall on all of them alike; per-round ratios then cancel most of that noise.
    Returns name -> `repeats` timings, after `warmup` untimed rounds.
    """
    names = list(functions)
    times = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = median_seconds(functions[name], repeats=1, warmup=0)
            if round_index >= warmup:
                times[name].append(seconds)
    return times


def per_round_ratios(baseline_seconds: list[float], candidate_seconds: list[float]) -> list[float]:
    """Sorted speedups baseline / candidate of the rounds of `interleaved_seconds`, round by round: a slow phase
    of the machine slows both timings of a round alike, so it mostly cancels in their ratio."""
    return sorted(baseline / candidate for baseline, candidate in zip(baseline_seconds, candidate_seconds))


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux's `VmHWM` belongs to the running program only, whereas `getrusage`'s `ru_maxrss` keeps the peak of the
    parent's memory copied at `fork` across `exec`: a worker started by a large process would report the parent.
    """
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024  # kB
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
