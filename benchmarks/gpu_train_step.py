"""Training-step throughput, model FLOPs utilisation and peak memory of the paper's models on a GPU.

    python benchmarks/gpu_train_step.py                       # ViT-H/14 and ViT-L/16 at 224, bf16, batch 128
    python benchmarks/gpu_train_step.py --tiny --device cpu   # the same code path on a tiny model (tests)

One step = forward + backward + fused AdamW + EMA update, bf16 autocast, SDPA attention, masks from
MultiBlockMaskCollator (4 targets, paper scales). Each model runs with and without `torch.compile`. FLOPs are
counted with torch.utils.flop_counter on the real step; MFU = achieved FLOP/s / the card's dense bf16 peak.
The paper's run: 300 ImageNet epochs in about 1,200 A100-hours, about 89 images/s per A100 for ViT-H/14.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import machine, markdown_table, write_results  # noqa: E402

from modeling_ijepa import IJepaConfig, IJepaForPreTraining, MultiBlockMaskCollator  # noqa: E402
from modeling_ijepa.training import parameter_groups  # noqa: E402

MODELS = {
    "vit_h14": dict(image_size=224, patch_size=14, hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                    intermediate_size=5120, predictor_hidden_size=384, predictor_num_hidden_layers=12),
    "vit_l16": dict(image_size=224, patch_size=16, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                    intermediate_size=4096, predictor_hidden_size=384, predictor_num_hidden_layers=12),
    "tiny": dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
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


def measure(name: str, batch_size: int, compile_model: bool, device: torch.device, steps: int, warmup: int) -> dict:
    config = IJepaConfig(**MODELS[name])
    model = IJepaForPreTraining._from_config(config, attn_implementation="sdpa").to(device).train()
    optimizer = torch.optim.AdamW(parameter_groups(model), lr=1e-4, fused=device.type == "cuda")
    collator = MultiBlockMaskCollator(config.image_size, config.patch_size, min_context_patches=4, seed=0)
    # Index lengths change from batch to batch: compile for dynamic shapes instead of recompiling each time.
    forward = torch.compile(model, dynamic=True) if compile_model else model
    pixel_values = torch.randn(batch_size, 3, config.image_size, config.image_size, device=device)
    batches = [tuple(t.to(device) for t in collator.sample_indices(batch_size)) for _ in range(4)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step(index: int) -> None:
        context_indices, target_indices = batches[index % len(batches)]
        with autocast:
            loss = forward(pixel_values, context_indices, target_indices).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_target_encoder(0.996)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for index in range(warmup):
        step(index)
    with FlopCounterMode(display=False) as counter:
        step(0)
    flops_per_step = counter.get_total_flops()
    synchronize()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for index in range(steps):
        step(index)
    synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = peak_flops(device)
    return {
        "model": name, "batch_size": batch_size, "compile": compile_model, "seconds_per_step": seconds,
        "images_per_s": batch_size / seconds, "tflops_per_step": flops_per_step / 1e12,
        "achieved_tflops": flops_per_step / seconds / 1e12,
        "mfu": flops_per_step / seconds / peak if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "vs_paper_a100_rate": batch_size / seconds / PAPER_IMAGES_PER_SECOND_PER_A100,
    }


def largest_batch_that_fits(name: str, batch_size: int, compile_model: bool, device, steps: int, warmup: int) -> dict:
    """Measure at `batch_size`, halving it after an out-of-memory error."""
    while True:
        try:
            return measure(name, batch_size, compile_model, device, steps, warmup)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            if batch_size == 1:
                raise
            print(f"{name}: batch {batch_size} does not fit, trying {batch_size // 2}", flush=True)
            batch_size //= 2


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit_h14", "vit_l16"], choices=list(MODELS))
    parser.add_argument("--tiny", action="store_true", help="Only the tiny model (a CPU check of the code path).")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--compile", choices=["both", "on", "off"], default="both")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output_name", default="gpu_train_step")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    models = ["tiny"] if args.tiny else args.models
    compile_options = {"both": [False, True], "on": [True], "off": [False]}[args.compile]
    rows = []
    for name in models:
        for compile_model in compile_options:
            row = largest_batch_that_fits(name, args.batch_size, compile_model, device, args.steps, args.warmup)
            print(row, flush=True)
            rows.append(row)
    print(markdown_table(rows, ["model", "batch_size", "compile", "images_per_s", "achieved_tflops", "mfu", "peak_memory_gib"]))
    path = write_results(args.output_name, {"machine": machine(), "device": str(device), "rows": rows})
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
