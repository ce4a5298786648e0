# SPDX-License-Identifier: Apache-2.0
"""Data pipeline throughput: decode + random resized crop + normalise + mask collation, through a DataLoader
with workers, as run_pretraining.py builds it, against what the model consumes.

    python -m benchmarks.data_pipeline --dataset_name ../shared/data/cifar10

For ViT-H/14 at 224 (16x16 patch grid) with the paper's 128 images per GPU, the I-JEPA run took 300 epochs of
ImageNet-1k (1.28 M images) in about 1,200 A100-hours: about 89 images/s per A100 (an H100 roughly 3x that).
The loader keeps the accelerator busy when (images/s per worker) x (workers per GPU) exceeds that rate.
"""

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.common import machine, markdown_table, write_results
from modeling_ijepa import MultiBlockMaskCollator
from modeling_ijepa.data.examples import GlobalBatchMaskCollate, SeededExamples
from modeling_ijepa.data.images import (
    SkipUnreadable,
    find_image_column,
    load_image_dataset,
    prepare_image_dataset,
    pretraining_transform,
)

PAPER_IMAGES_PER_SECOND_PER_A100 = 300 * 1_281_167 / (1200 * 3600)


def loader_throughput(dataset, image_size: int, patch_size: int, batch_size: int, num_workers: int, batches: int) -> float:
    collate = SkipUnreadable(GlobalBatchMaskCollate(
        MultiBlockMaskCollator(image_size, patch_size, min_context_patches=10, seed=0), batch_size))
    loader = DataLoader(SeededExamples(dataset, seed=0), batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=num_workers, collate_fn=collate, generator=torch.Generator().manual_seed(0),
                        persistent_workers=False, prefetch_factor=4 if num_workers else None)
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_name", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"))
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=["224/14", "32/4"], help="image_size/patch_size pairs")
    args = parser.parse_args()
    train = load_image_dataset(args.dataset_name)["train"]
    image_column = find_image_column(train)
    rows = []
    for setting in args.settings:
        image_size, patch_size = map(int, setting.split("/"))
        dataset = prepare_image_dataset(train, image_column, pretraining_transform(image_size))
        collator = MultiBlockMaskCollator(image_size, patch_size, min_context_patches=10, seed=0)
        start = time.perf_counter()
        for _ in range(50):
            collator.sample_indices(args.batch_size)
        collator_ms = (time.perf_counter() - start) / 50 * 1000
        for workers in args.workers:
            rate = loader_throughput(dataset, image_size, patch_size, args.batch_size, workers, args.batches)
            rows.append({"image_size": image_size, "patch_size": patch_size, "num_workers": workers,
                         "images_per_s": rate, "per_worker_images_per_s": rate / max(workers, 1),
                         "collator_ms_per_batch": collator_ms,
                         "workers_needed_for_paper_rate": PAPER_IMAGES_PER_SECOND_PER_A100 / (rate / max(workers, 1))})
    print(markdown_table(rows, list(rows[0])))
    print(f"paper rate: {PAPER_IMAGES_PER_SECOND_PER_A100:.1f} images/s per A100 (ViT-H/14, batch 128 per GPU)")
    path = write_results("data_pipeline", {"machine": machine(), "batch_size": args.batch_size,
                                           "paper_images_per_s_per_a100": PAPER_IMAGES_PER_SECOND_PER_A100, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
