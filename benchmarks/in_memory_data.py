# SPDX-License-Identifier: Apache-2.0
"""Images/s of run_pretraining's two image data paths, side by side, on the CPU.

    python -m benchmarks.in_memory_data --dataset_name ../shared/data/cifar10

per-example: the DataLoader decodes each image with PIL, runs torchvision's random resized crop and
    normalisation on it, collates the batch and draws its masks (`image_data`, `SeededExamples`,
    `GlobalBatchMaskCollate`).
in-memory: the data set is decoded once into a uint8 tensor (`decode_images`, timed apart); the DataLoader
    draws each example's crop box, gathers its uint8 pixels and draws the batch's masks (`InMemoryImages`,
    `GlobalBatchMaskCollate`); `resized_crops` then crops, resizes and normalises the whole batch in the main
    process.

Both loaders use the same number of workers and batch size, and yield the same batch: `pixel_values`,
`context_indices`, `target_indices` (with the same crops, see tests/test_in_memory_images.py). Each round gives
each path a fresh iterator, lets it warm up, then times `--batches` batches; the order of the two paths
alternates from round to round, and the speed-up is the median of per-round ratios, so that the slow phases
of a shared machine fall on both alike. Each round also times merely allocating and filling batches of float32
pixel values, the bound on any path that hands the model fresh ones.
"""

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.common import machine, markdown_table, per_round_ratios, write_results
from modeling_ijepa import MultiBlockMaskCollator
from modeling_ijepa.data.examples import GlobalBatchMaskCollate, SeededExamples
from modeling_ijepa.data.images import (
    SkipUnreadable,
    find_image_column,
    load_image_dataset,
    prepare_image_dataset,
    pretraining_transform,
)
from modeling_ijepa.data.in_memory import InMemoryImages, decode_images, resized_crops

PATHS = ("per_example", "in_memory")


def build_loader(examples, image_size: int, patch_size: int, batch_size: int, num_workers: int,
                 skip_unreadable: bool) -> DataLoader:
    """The DataLoader that pretraining builds (`modeling_ijepa.data.pipeline.build_training_data`, one process) over
    seeded `examples`."""
    collate = GlobalBatchMaskCollate(MultiBlockMaskCollator(image_size, patch_size, min_context_patches=10, seed=0),
                                     batch_size)
    return DataLoader(examples, batch_size=batch_size, shuffle=True, drop_last=True,
                      collate_fn=SkipUnreadable(collate) if skip_unreadable else collate, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(0))


def images_per_second(loader: DataLoader, image_size: int, in_memory: bool, warmup: int, batches: int) -> float:
    """Steady-state rate of one fresh iterator: `warmup` untimed batches (worker start-up, filling the queue),
    then `batches` timed ones, each ending as the model's input."""
    iterator = iter(loader)
    start = None
    for index in range(warmup + batches):
        if index == warmup:
            start = time.perf_counter()
        batch = next(iterator)
        if in_memory:
            batch["pixel_values"] = resized_crops(batch.pop("images"), batch.pop("crop_boxes"), batch.pop("flips"),
                                                  image_size)
    seconds = time.perf_counter() - start
    del iterator  # stops its workers before the other path runs
    return batches * loader.batch_size / seconds


def output_write_rate(batch_size: int, image_size: int, batches: int) -> float:
    """Images/s at which this machine merely allocates and writes float32 batches of pixel values: a bound on any
    path that hands the model fresh ones (on a CPU, first writes to fresh memory cost page faults)."""
    start = time.perf_counter()
    for _ in range(batches):
        torch.empty(batch_size, 3, image_size, image_size).fill_(0.0)
    return batches * batch_size / (time.perf_counter() - start)


def compare(loaders: dict, image_size: int, rounds: int, warmup: int, batches: int) -> dict:
    rates = {path: [] for path in PATHS}
    write_rates = []
    for round_index in range(rounds):
        order = PATHS if round_index % 2 == 0 else PATHS[::-1]
        for path in order:
            rates[path].append(images_per_second(loaders[path], image_size, path == "in_memory", warmup, batches))
        write_rates.append(output_write_rate(loaders["in_memory"].batch_size, image_size, batches))
    # Ratios of rates, round by round (per_round_ratios takes seconds: baseline / candidate).
    ratios = per_round_ratios([1 / rate for rate in rates["per_example"]], [1 / rate for rate in rates["in_memory"]])
    return {
        "per_example_images_per_s": statistics.median(rates["per_example"]),
        "in_memory_images_per_s": statistics.median(rates["in_memory"]),
        "speedup": statistics.median(ratios),
        "speedup_min": ratios[0],
        "speedup_max": ratios[-1],
        "rounds": rounds,
        "output_write_bound_images_per_s": statistics.median(write_rates),
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_name",
                        default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"))
    parser.add_argument("--max_train_samples", type=int, default=None, help="first N training images only")
    parser.add_argument("--settings", nargs="+", default=["32/4", "224/14"], help="image_size/patch_size pairs")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--num_workers", type=int, default=2, help="DataLoader workers, the same for both paths")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches per round and path")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per round and path")
    parser.add_argument("--torch_threads", type=int, default=None,
                        help="intra-op threads of the main process (DataLoader workers use one each); on a CPU shared "
                             "with other jobs, 1: two threads wait for each other whenever another job takes a core")
    parser.add_argument("--output_name", default="in_memory_data")
    args = parser.parse_args(argv)
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)

    load_before = os.getloadavg()[0]
    train = load_image_dataset(args.dataset_name)["train"]
    if args.max_train_samples is not None:
        train = train.select(range(min(args.max_train_samples, len(train))))
    image_column = find_image_column(train)
    start = time.perf_counter()
    # `size` matters only for images of mixed sizes (CIFAR-10's are all 32x32 and stay so).
    largest = max(int(setting.split("/")[0]) for setting in args.settings)
    images = decode_images(train, image_column, size=largest, max_bytes=2**40)
    decode_seconds = time.perf_counter() - start

    rows = []
    for setting in args.settings:
        image_size, patch_size = map(int, setting.split("/"))
        examples = {
            "per_example": SeededExamples(prepare_image_dataset(train, image_column, pretraining_transform(image_size)),
                                          seed=0),
            "in_memory": InMemoryImages(images, seed=0),
        }
        # Unreadable images are dropped at collation on the per-example path, while decoding on the other.
        loaders = {path: build_loader(examples[path], image_size, patch_size, args.batch_size, args.num_workers,
                                      skip_unreadable=path == "per_example") for path in PATHS}
        row = {"image_size": image_size, "patch_size": patch_size, "batch_size": args.batch_size,
               "num_workers": args.num_workers}
        row |= compare(loaders, image_size, args.rounds, args.warmup, args.batches)
        rows.append(row)
        print(markdown_table([row], list(row)), flush=True)

    info = machine() | {"load_average_1min_before": load_before, "load_average_1min_after": os.getloadavg()[0]}
    path = write_results(args.output_name, {
        "description": __doc__.split("\n\n")[0],
        "machine": info,
        "timed_batches_per_round": args.batches,
        "warmup_batches_per_round": args.warmup,
        "dataset": {"name": Path(args.dataset_name).name, "images": len(images), "stored_shape": list(images.shape[1:]),
                    "decode_seconds": decode_seconds, "decoded_mib": images.numel() / 2**20},
        "rows": rows,
    })
    print(f"decoded {len(images):,} images of {tuple(images.shape[1:])} once in {decode_seconds:.1f} s")
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
