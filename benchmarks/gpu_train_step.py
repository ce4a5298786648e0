# SPDX-License-Identifier: Apache-2.0
"""Training-step throughput, model FLOPs utilisation and peak memory of the paper's models on a GPU.

    python -m benchmarks.gpu_train_step                       # ViT-H/14 and ViT-L/16 at 224, bf16, batch 128
    python -m benchmarks.gpu_train_step --tiny --device cpu   # the same code path on a tiny model (tests)

One step = forward + backward + AdamW + EMA update, bf16 autocast, masks of 4 targets at the paper's scales,
on random images (the data pipeline is measured by data_pipeline.py). Four variants, side by side in one run:
- `reference`: our model with the reference code's choices (train_step.py): eager attention, one gather per
  block with `.repeat` copies of the context for every target, per-parameter AdamW and EMA;
- `ours`: SDPA attention, batched gathers with `expand`, fused AdamW, multi-tensor EMA;
- `ours_compiled`: `ours` under `torch.compile` (dynamic shapes: mask lengths change from batch to batch);
- `ours_compiled_layers`: each transformer layer compiled on its own (regional compilation): one small graph
  reused by every layer, compiled in a fraction of the time; the gathers between layers stay eager.
Model FLOPs are counted with torch.utils.flop_counter on one eager step of `ours` and used for every variant of
that model (the counter books eager attention's matmuls differently from SDPA's, and MFU is about the same work
done faster); MFU = achieved FLOP/s / the card's dense bf16 peak. The paper's run: 300 ImageNet epochs in about
1,200 A100-hours, about 89 images/s per A100 for ViT-H/14. Results are written after every row, so a run cut
short keeps what it measured.
"""

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers.models.ijepa.modeling_ijepa import IJepaLayer

from benchmarks.common import machine, markdown_table, write_results
from benchmarks.train_step import backward_and_update, mask_sampler, reference_style_loss
from modeling_ijepa import IJepaConfig, IJepaForPreTraining
from modeling_ijepa.training.optimization import parameter_groups

MODELS = {
    "vit_h14": dict(image_size=224, patch_size=14, hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                    intermediate_size=5120, predictor_hidden_size=384, predictor_num_hidden_layers=12),
    "vit_l16": dict(image_size=224, patch_size=16, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                    intermediate_size=4096, predictor_hidden_size=384, predictor_num_hidden_layers=12),
    "tiny": dict(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, predictor_hidden_size=16, predictor_num_hidden_layers=1),
}
# Dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}
PAPER_IMAGES_PER_SECOND_PER_A100 = 300 * 1_281_167 / (1200 * 3600)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_BF16_FLOPS.items() if key in name), None)


# `ours` first: its FLOP count is the model FLOPs of every variant; compilation (the slowest to start) last.
VARIANTS = ("ours", "reference", "ours_compiled", "ours_compiled_layers")


def measure(name: str, batch_size: int, variant: str, device: torch.device, steps: int, warmup: int) -> dict:
    config = IJepaConfig(**MODELS[name])
    ours = variant != "reference"
    with torch.device(device):  # initialise on the GPU: a ViT-H pair takes minutes to initialise on a CPU
        model = IJepaForPreTraining._from_config(config, attn_implementation="sdpa" if ours else "eager").train()
    on_cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(parameter_groups(model), lr=1e-4, fused=ours and on_cuda,
                                  foreach=ours and not on_cuda)
    sampler = mask_sampler(ours, config.image_size, config.patch_size)
    pixel_values = torch.randn(batch_size, 3, config.image_size, config.image_size, device=device)
    # Masks are sampled ahead (in training, DataLoader workers do it), so that the step alone is timed.
    batches = [tuple(t.to(device) for t in sampler.sample_indices(batch_size)) for _ in range(4)]
    compiled = torch.compile(model, dynamic=True) if variant == "ours_compiled" else model
    if variant == "ours_compiled_layers":
        for module in model.modules():
            if isinstance(module, IJepaLayer):
                module.compile(dynamic=True)

    def loss_of(forward, context_indices, target_indices):
        if ours:
            return forward(pixel_values, context_indices, target_indices).loss
        return reference_style_loss(model, pixel_values, context_indices, target_indices)

    def step(index: int, forward=compiled) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_of(forward, *batches[index % len(batches)])
        backward_and_update(model, optimizer, loss, ours)

    def synchronize():
        if on_cuda:
            torch.cuda.synchronize(device)

    for index in range(warmup):  # at least one pass over the mask batches, so compilation is done before timing
        step(index)
    with FlopCounterMode(display=False) as counter:
        step(0, forward=model)
    flops_per_step = counter.get_total_flops()
    synchronize()
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for index in range(steps):
        step(index)
    synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {
        "model": name, "variant": variant, "batch_size": batch_size, "seconds_per_step": seconds,
        "images_per_s": batch_size / seconds, "counted_tflops_per_step": flops_per_step / 1e12,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if on_cuda else None,
        "vs_paper_a100_rate": batch_size / seconds / PAPER_IMAGES_PER_SECOND_PER_A100,
    }


def add_efficiency(row: dict, model_tflops_per_step: float, device: torch.device) -> dict:
    """Achieved TFLOP/s and MFU of `row` for the model FLOPs of one step at its batch size."""
    achieved = model_tflops_per_step / row["seconds_per_step"]
    peak = peak_flops(device)
    return row | {"tflops_per_step": model_tflops_per_step, "achieved_tflops": achieved,
                  "mfu": achieved * 1e12 / peak if peak else None}


def largest_batch_that_fits(name: str, batch_size: int, variant: str, device, steps: int, warmup: int) -> dict:
    """Measure at `batch_size`, halving it after an out-of-memory error."""
    while True:
        try:
            return measure(name, batch_size, variant, device, steps, warmup)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            if batch_size == 1:
                raise
            print(f"{name}: batch {batch_size} does not fit, trying {batch_size // 2}", flush=True)
            batch_size //= 2


def measure_row(name: str, variant: str, rows: list[dict], args, device: torch.device) -> dict:
    """One row of the table. A failure other than running out of memory (a compiler error, say) is recorded in
    the row, and the other variants and models are still measured."""
    try:
        row = largest_batch_that_fits(name, args.batch_size, variant, device, args.steps, args.warmup)
    except Exception as error:  # noqa: BLE001 - the message is the result
        torch.compiler.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        first_line = (str(error).strip().splitlines() or [""])[0]
        return {"model": name, "variant": variant, "batch_size": args.batch_size,
                "error": f"{type(error).__name__}: {first_line}"[:500]}
    # Model FLOPs from `ours` at the same batch size when measured, else this variant's own count.
    counted = {(r["model"], r["batch_size"]): r["counted_tflops_per_step"] for r in rows
               if r["variant"] == "ours" and "error" not in r}
    return add_efficiency(row, counted.get((name, row["batch_size"]), row["counted_tflops_per_step"]), device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit_h14", "vit_l16"], choices=list(MODELS))
    parser.add_argument("--tiny", action="store_true", help="Only the tiny model (a CPU check of the code path).")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5, help="Untimed steps first (compilation happens here).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output_name", default="gpu_train_step")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    models = ["tiny"] if args.tiny else args.models
    rows = []
    # Variant by variant, so that a run cut short (a slow compilation) still has every model's eager numbers.
    for variant in args.variants:
        for name in models:
            rows.append(measure_row(name, variant, rows, args, device))
            print(rows[-1], flush=True)
            path = write_results(args.output_name, {"machine": machine(), "device": str(device), "rows": rows})
    columns = ["model", "variant", "batch_size", "images_per_s", "achieved_tflops", "mfu", "peak_memory_gib"]
    print(markdown_table([{column: row.get(column) for column in columns} for row in rows], columns))
    for row in rows:
        if "error" in row:
            print(f"{row['model']} {row['variant']} failed: {row['error']}")
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
