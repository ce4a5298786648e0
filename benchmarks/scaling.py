# SPDX-License-Identifier: Apache-2.0
"""How the cost of a training step grows with batch size and with sequence length (image size).

    python -m benchmarks.scaling      # writes benchmarks/results/scaling.json and scaling.png

ViT-Tiny encoder (width 192, 6 blocks) and predictor (width 96, 4 blocks), patch 8, fp32, our implementation,
each point in its own process (train_step.py's worker) so that peak memory is that point's.
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from benchmarks.common import RESULTS, machine, markdown_table, write_results  # noqa: E402
from benchmarks.train_step import run_in_subprocess  # noqa: E402

MODEL = {"depth": 6, "predictor_depth": 4, "patch_size": 8}


def plot_scaling(rows: list[dict], fixed_batch_size: int, fixed_image_size: int, path) -> None:
    """Seconds per step and peak memory against batch size (left) and tokens per image (right)."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, sweep, key, label in ((axes[0], "batch", "batch_size", "batch size"),
                                    (axes[1], "image", "tokens", "tokens per image (image size 32 to 224, patch 8)")):
        points = [row for row in rows if row["sweep"] == sweep]
        x = [row[key] for row in points]
        axis.plot(x, [row["seconds_per_step"] for row in points], marker="o", color="tab:blue")
        axis.set(xlabel=label, ylabel="seconds per step", xscale="log", yscale="log")
        axis.set_xticks(x, [str(value) for value in x])
        axis.xaxis.set_minor_formatter(NullFormatter())
        memory_axis = axis.twinx()
        memory_axis.plot(x, [row["peak_rss_mib"] for row in points], marker="s", linestyle="--", color="tab:red")
        memory_axis.set_ylabel("peak memory (MiB)", color="tab:red")
        axis.grid(alpha=0.3)
    axes[0].set_title(f"Step cost vs batch size ({fixed_image_size}x{fixed_image_size})")
    axes[1].set_title(f"Step cost vs sequence length (batch {fixed_batch_size})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--image_sizes", type=int, nargs="+", default=[32, 64, 128, 224])
    parser.add_argument("--fixed_batch_size", type=int, default=16)
    parser.add_argument("--fixed_image_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    rows = []
    for batch_size in args.batch_sizes:
        spec = MODEL | {"batch_size": batch_size, "image_size": args.fixed_image_size}
        rows.append({"sweep": "batch"} | run_in_subprocess("ours", spec, args.repeats, args.threads))
    for image_size in args.image_sizes:
        spec = MODEL | {"batch_size": args.fixed_batch_size, "image_size": image_size}
        rows.append({"sweep": "image"} | run_in_subprocess("ours", spec, args.repeats, args.threads))
    for row in rows:
        row["tokens"] = (row["image_size"] // row["patch_size"]) ** 2
    print(markdown_table(rows, ["sweep", "batch_size", "image_size", "tokens", "seconds_per_step", "images_per_second", "peak_rss_mib"]))

    plot_scaling(rows, args.fixed_batch_size, args.fixed_image_size, RESULTS / "scaling.png")
    print(f"wrote {write_results('scaling', {'machine': machine(), 'model': MODEL, 'rows': rows})}")


if __name__ == "__main__":
    main()
