# SPDX-License-Identifier: Apache-2.0
"""Images/s of run_pretraining's two image data paths, side by side: the data alone, or the whole training step.

    python -m benchmarks.in_memory_data --dataset_name ../shared/data/cifar10
    python -m benchmarks.in_memory_data --train_step --device cuda --settings 32/4 --num_workers 12 \
        --output_name in_memory_train_step_gpu --extra --attn_implementation sdpa

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

`--train_step` times the whole step instead: each batch is moved to `--device` (uint8 images on the in-memory path,
float32 pixel values on the other), cropped there on the in-memory path, and trained on with one step of
`configs/cifar10_quality.yaml`'s model at the setting's image and patch size (`RecipeStep`: forward under the
recipe's mixed and matmul precision, backward, AdamW, EMA update), masks drawn by the recipe's collator. Each path
trains its own copy of the model, from the same initialisation. Both paths load one crop of each image, `--batch_size`
rows a step; the recipe's invariance term pairs consecutive rows as if they were its two crops of one image, which
costs what the real pairs cost. `--extra` passes run_pretraining.py options on top
of the recipe (e.g. `--attn_implementation sdpa` on a GPU; the recipe's eager attention is its CPU choice).
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
from modeling_ijepa.data.in_memory import InMemoryImages, decode_images, pixel_values_of
from modeling_ijepa.data.pipeline import build_mask_collator, input_grid
from modeling_ijepa.training.arguments import parse_args as parse_recipe
from modeling_ijepa.training.models import build_model
from modeling_ijepa.training.optimization import build_optimizer
from modeling_ijepa.training.runtime import float32_matmul_precision, resolve_mixed_precision

PATHS = ("per_example", "in_memory")
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "cifar10_quality.yaml"


class RecipeStep:
    """One optimizer step of the recipe's model on `device`, callable on a batch of `pixel_values` `(B, 3, S, S)`,
    `context_indices` `(B, Kc)` and `target_indices` `(B, M, Kt)` already on that device: forward under the
    recipe's mixed precision, backward, AdamW, EMA update (the training loop's work, without its logging)."""

    def __init__(self, recipe: argparse.Namespace, device: torch.device):
        torch.manual_seed(0)
        self.model = build_model(recipe).to(device).train()
        self.optimizer = build_optimizer(self.model, lr=recipe.learning_rate)
        self.device = device
        self.autocast = resolve_mixed_precision(recipe.mixed_precision, device.type) == "bf16"

    def __call__(self, batch: dict) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.model(batch["pixel_values"], batch["context_indices"], batch["target_indices"]).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.update_target_encoder(0.996)


def build_loader(examples, mask_collator, batch_size: int, num_workers: int, skip_unreadable: bool,
                 pin_memory: bool = False) -> DataLoader:
    """The DataLoader that pretraining builds (`modeling_ijepa.data.pipeline.build_training_data`, one process) over
    seeded `examples`, with masks from `mask_collator`; `pin_memory` for batches bound for a GPU."""
    collate = GlobalBatchMaskCollate(mask_collator, batch_size)
    return DataLoader(examples, batch_size=batch_size, shuffle=True, drop_last=True,
                      collate_fn=SkipUnreadable(collate) if skip_unreadable else collate, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(0), pin_memory=pin_memory)


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work, so that a timer read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(loader: DataLoader, image_size: int, warmup: int, batches: int,
                      step: RecipeStep | None = None, device: torch.device = torch.device("cpu")) -> float:
    """Steady-state rate of one fresh iterator: `warmup` untimed batches (worker start-up, filling the queue),
    then `batches` timed ones, each ending as the model's input on `device` or, with `step`, trained on."""
    iterator = iter(loader)
    start = None
    for index in range(warmup + batches):
        if index == warmup:
            synchronize(device)
            start = time.perf_counter()
        batch = {name: value.to(device, non_blocking=True) for name, value in next(iterator).items()
                 if isinstance(value, torch.Tensor)}  # not the count of unreadable images
        batch = pixel_values_of(batch, image_size)  # the in-memory path's crops, made on the device
        if step is not None:
            step(batch)
    synchronize(device)
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


def compare(loaders: dict, image_size: int, rounds: int, warmup: int, batches: int, steps: dict | None = None,
            device: torch.device = torch.device("cpu")) -> dict:
    """Median images/s of each path over `rounds` (alternating which runs first) and the median per-round ratio;
    with `steps` (one `RecipeStep` per path), of the whole training step."""
    rates = {path: [] for path in PATHS}
    write_rates = []
    for round_index in range(rounds):
        order = PATHS if round_index % 2 == 0 else PATHS[::-1]
        for path in order:
            step = steps[path] if steps else None
            rates[path].append(images_per_second(loaders[path], image_size, warmup, batches, step, device))
        if not steps:  # a bound on the data alone
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
    } | ({"output_write_bound_images_per_s": statistics.median(write_rates)} if write_rates else {})


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
    parser.add_argument("--train_step", action="store_true",
                        help="time the whole training step of configs/cifar10_quality.yaml's model, not the data alone")
    parser.add_argument("--device", default="cpu", help="where batches go (and, with --train_step, train): cpu, cuda")
    parser.add_argument("--output_name", default="in_memory_data")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="with --train_step: run_pretraining.py options on top of the recipe (last on the line)")
    args = parser.parse_args(argv)
    if args.extra and not args.train_step:
        parser.error("--extra sets the recipe's options, which only --train_step uses.")
    device = torch.device(args.device)
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
        if args.train_step:
            recipe = parse_recipe(["--config", str(RECIPE), "--image_size", str(image_size), "--patch_size",
                                   str(patch_size), "--per_device_train_batch_size", str(args.batch_size),
                                   *args.extra])
            steps = {path: RecipeStep(recipe, device) for path in PATHS}
            mask_collators = {path: build_mask_collator(recipe, input_grid(steps[path].model.config), seed=0)
                              for path in PATHS}
        else:
            recipe = steps = None
            mask_collators = {path: MultiBlockMaskCollator(image_size, patch_size, min_context_patches=10, seed=0)
                              for path in PATHS}
        # Unreadable images are dropped at collation on the per-example path, while decoding on the other.
        loaders = {path: build_loader(examples[path], mask_collators[path], args.batch_size, args.num_workers,
                                      skip_unreadable=path == "per_example", pin_memory=device.type == "cuda")
                   for path in PATHS}
        row = {"image_size": image_size, "patch_size": patch_size, "batch_size": args.batch_size,
               "num_workers": args.num_workers, "timed": "training step" if args.train_step else "data",
               "device": str(device)}
        with float32_matmul_precision(recipe.matmul_precision if recipe else None):
            row |= compare(loaders, image_size, args.rounds, args.warmup, args.batches, steps, device)
        rows.append(row)
        print(markdown_table([row], list(row)), flush=True)

    info = machine() | {"load_average_1min_before": load_before, "load_average_1min_after": os.getloadavg()[0]}
    path = write_results(args.output_name, {
        "description": __doc__.split("\n\n")[0],
        "machine": info,
        "timed_batches_per_round": args.batches,
        "warmup_batches_per_round": args.warmup,
        "recipe": {"config": str(RECIPE.relative_to(RECIPE.parents[1])), "options": args.extra} if args.train_step
        else None,
        "dataset": {"name": Path(args.dataset_name).name, "images": len(images), "stored_shape": list(images.shape[1:]),
                    "decode_seconds": decode_seconds, "decoded_mib": images.numel() / 2**20},
        "rows": rows,
    })
    print(f"decoded {len(images):,} images of {tuple(images.shape[1:])} once in {decode_seconds:.1f} s")
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
