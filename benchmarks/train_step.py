# SPDX-License-Identifier: Apache-2.0
"""Training-step throughput and peak memory: ours against the reference implementation's choices.

    python -m benchmarks.train_step            # writes benchmarks/results/train_step.json

One step = mask sampling + forward + backward + AdamW + EMA update, fp32 on the CPU, on random images (the
data pipeline is measured separately by data_pipeline.py). Both variants use the same model class and weights;
the baseline makes the straightforward choices of the reference code:
- eager attention (softmax(QK^T)V in Python ops) instead of PyTorch SDPA;
- masks applied with one gather per block in a Python loop, the context copied with `.repeat` for every
  target block and targets stacked with `repeat_interleave_batch`-style concatenations;
- the per-sample reference-semantics mask sampler (benchmarks/reference_collator.py);
- AdamW and the EMA update one parameter at a time instead of multi-tensor (foreach) kernels.
The variants take turns step by step in one process (the order rotating every round), and the speedup is the
median of per-round ratios, so that the slow phases of a shared machine fall on both alike. Peak resident
memory is read from a separate short process per variant.

`--bf16_matmul` adds both variants again with `torch.set_float32_matmul_precision("medium")`: float32 tensors,
matrix products in bf16 with float32 accumulation (AMX on recent Intel CPUs; the CPU analogue of TF32). Ours then
uses eager attention, as the CPU's SDPA kernel is slow in that mode. `--compile` adds ours under `torch.compile`
(CPU inductor, dynamic shapes), compiled before the timing starts.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import (
    interleaved_seconds,
    machine,
    markdown_table,
    median_seconds,
    peak_rss_mib,
    per_round_ratios,
    write_results,
)
from benchmarks.reference_collator import ReferenceMultiBlockSampler
from modeling_ijepa import IJepaConfig, IJepaForPreTraining, MultiBlockMaskCollator
from modeling_ijepa.training.optimization import parameter_groups

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "vit_tiny_b64": {"depth": 12, "predictor_depth": 6, "batch_size": 64},
    "vit_tiny_6blocks_b128": {"depth": 6, "predictor_depth": 4, "batch_size": 128},
}
MASKING = {"num_targets": 4, "target_scale": (0.15, 0.2), "target_aspect_ratio": (0.75, 1.5),
           "context_scale": (0.85, 1.0)}
MIN_KEEP = 4  # the reference's min_keep=10 never terminates on an 8x8 grid at these target scales


def build_model(depth: int, predictor_depth: int, attn_implementation: str, image_size: int = 32, patch_size: int = 4):
    config = IJepaConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=192, num_hidden_layers=depth, num_attention_heads=3,
        intermediate_size=768, predictor_hidden_size=96, predictor_num_hidden_layers=predictor_depth,
        predictor_num_attention_heads=3,
    )
    torch.manual_seed(0)
    return IJepaForPreTraining._from_config(config, attn_implementation=attn_implementation).train()


def gather_blocks(tokens: torch.Tensor, blocks: list[torch.Tensor]) -> torch.Tensor:
    """Reference `apply_masks`: one gather per block, stacked along the batch -> [len(blocks) * B, K, D]."""
    return torch.cat([torch.gather(tokens, 1, block.unsqueeze(-1).repeat(1, 1, tokens.shape[-1])) for block in blocks])


def reference_style_loss(model: IJepaForPreTraining, pixel_values, context_indices, target_indices) -> torch.Tensor:
    """The reference forward pass, written with its loops and copies on top of our modules."""
    batch_size, num_targets, _ = target_indices.shape
    target_blocks = [target_indices[:, m] for m in range(num_targets)]
    with torch.no_grad():
        features = model.target_encoder(pixel_values).last_hidden_state
        features = F.layer_norm(features, (features.shape[-1],))
        targets = gather_blocks(features, target_blocks)  # [M*B, Kt, D]
    encoder = model.context_encoder
    tokens = gather_blocks(encoder.embeddings(pixel_values), [context_indices])
    for layer in encoder.layers:
        tokens = layer(tokens, None)
    context = encoder.layernorm(tokens)

    predictor = model.predictor
    positions = predictor.position_embeddings.repeat(batch_size, 1, 1)
    hidden = predictor.embed(context) + gather_blocks(positions, [context_indices])
    mask_tokens = predictor.mask_token.repeat(batch_size * num_targets, target_blocks[0].shape[1], 1)
    mask_tokens = mask_tokens + gather_blocks(positions, target_blocks)
    hidden = torch.cat([hidden.repeat(num_targets, 1, 1), mask_tokens], dim=1)
    for layer in predictor.layers:
        hidden = layer(hidden, None)
    predictions = predictor.projection(predictor.layernorm(hidden[:, context.shape[1]:]))
    return F.smooth_l1_loss(predictions, targets)


def reference_style_ema(model: IJepaForPreTraining, momentum: float) -> None:
    with torch.no_grad():
        for target, context in zip(model.target_encoder.parameters(), model.context_encoder.parameters()):
            target.mul_(momentum).add_((1.0 - momentum) * context.detach())


def backward_and_update(model: IJepaForPreTraining, optimizer, loss: torch.Tensor, ours: bool) -> None:
    """The rest of a training step after the loss: backward, AdamW, and the EMA update (ours: multi-tensor;
    the reference's: one parameter at a time)."""
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ours:
        model.update_target_encoder(0.996)
    else:
        reference_style_ema(model, 0.996)


def mask_sampler(ours: bool, image_size: int, patch_size: int):
    """Our vectorised collator, or the per-sample reference sampler, with the same masking settings; both have
    `sample_indices(batch_size) -> (context_indices, target_indices)`."""
    if ours:
        return MultiBlockMaskCollator(image_size, patch_size, min_context_patches=MIN_KEEP, seed=0, **MASKING)
    grid = image_size // patch_size
    return ReferenceMultiBlockSampler((grid, grid), min_keep=MIN_KEEP, seed=0, **MASKING)


BF16_MATMUL = "_bf16_matmul"  # variant suffix: float32 matmul precision "medium"
COMPILED = "ours_compiled"  # ours under torch.compile (CPU inductor), float32
VARIANTS = ("reference", "ours", "reference" + BF16_MATMUL, "ours" + BF16_MATMUL, COMPILED)
COMPILE_WARMUP_STEPS = 4  # compiling (forward, then backward) and any recompiles happen in these


def build_step(variant: str, spec: dict):
    """One variant's training step as a callable: `ours` or `reference`, optionally + BF16_MATMUL, or COMPILED
    (compiled here, before any timing). `spec` holds depth, predictor_depth, batch_size and optionally image_size
    and patch_size (32 and 4)."""
    ours = variant.startswith("ours")
    precision = "medium" if variant.endswith(BF16_MATMUL) else "highest"
    image_size, patch_size = spec.get("image_size", 32), spec.get("patch_size", 4)
    attention = "sdpa" if ours and precision == "highest" else "eager"
    model = build_model(spec["depth"], spec["predictor_depth"], attention, image_size, patch_size)
    optimizer = torch.optim.AdamW(parameter_groups(model), lr=1e-4, weight_decay=0.04, foreach=ours)
    sampler = mask_sampler(ours, image_size, patch_size)
    pixel_values = torch.randn(spec["batch_size"], 3, image_size, image_size)
    # Mask lengths change from batch to batch: dynamic shapes, as `run_pretraining.py --torch_compile` does.
    forward = torch.compile(model, dynamic=True) if variant == COMPILED else model

    def step():
        # The precision is process-wide: set it for every step, as variants take turns in one process.
        torch.set_float32_matmul_precision(precision)
        context_indices, target_indices = sampler.sample_indices(spec["batch_size"])
        if ours:
            loss = forward(pixel_values, context_indices, target_indices).loss
        else:
            loss = reference_style_loss(model, pixel_values, context_indices, target_indices)
        backward_and_update(model, optimizer, loss, ours)

    for _ in range(COMPILE_WARMUP_STEPS if variant == COMPILED else 0):
        step()
    return step


def measure(variant: str, spec: dict, repeats: int) -> dict:
    """Time one variant alone in this process (median of `repeats` steps after 2 warm-up steps) and read the
    process's peak resident memory."""
    seconds = median_seconds(build_step(variant, spec), repeats=repeats, warmup=2)
    return {"variant": variant, **spec, "seconds_per_step": seconds,
            "images_per_second": spec["batch_size"] / seconds, "peak_rss_mib": peak_rss_mib()}


def run_in_subprocess(variant: str, spec: dict, repeats: int, threads: int) -> dict:
    """`measure` in a fresh process, so that its peak memory is its own."""
    command = [sys.executable, "-m", "benchmarks.train_step", "--worker", variant, "--spec", json.dumps(spec),
               "--repeats", str(repeats), "--threads", str(threads)]
    # From the repository root, where `-m` finds the `benchmarks` package.
    output = subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def comparison_row(setting: str, spec: dict, variant: str, seconds: dict, memory: dict) -> dict:
    """One variant against the reference's choices in float32 (the reference code's own precision on a CPU).
    The speedup is the median of per-round ratios: both ran in the same round, so machine noise mostly cancels."""
    ratios = per_round_ratios(seconds["reference"], seconds[variant])
    batch_size = spec["batch_size"]
    return {
        "setting": setting, "variant": variant, "batch_size": batch_size,
        "reference_images_per_s": batch_size / statistics.median(seconds["reference"]),
        "ours_images_per_s": batch_size / statistics.median(seconds[variant]),
        "speedup": statistics.median(ratios),
        "speedup_quartiles": [ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]],
        "reference_peak_mib": memory["reference"], "ours_peak_mib": memory[variant],
        "memory_ratio": memory[variant] / memory["reference"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=30, help="Timed rounds; each runs one step of every variant.")
    parser.add_argument("--memory_steps", type=int, default=3, help="Timed steps of each variant's memory process.")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--bf16_matmul", action="store_true", help="Also measure both with bf16 matrix products.")
    parser.add_argument("--compile", action="store_true", help="Also measure ours under torch.compile (minutes).")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(measure(args.worker, json.loads(args.spec), args.repeats)))
        return

    variants = ["reference", "ours"] + [variant + BF16_MATMUL for variant in ("reference", "ours") if args.bf16_matmul]
    variants += [COMPILED] if args.compile else []
    rows, seconds_by_setting = [], {}
    for setting in args.settings:
        spec = SETTINGS[setting]
        memory = {variant: run_in_subprocess(variant, spec, args.memory_steps, args.threads)["peak_rss_mib"]
                  for variant in variants}
        steps = {variant: build_step(variant, spec) for variant in variants}
        seconds = seconds_by_setting[setting] = interleaved_seconds(steps, args.repeats, warmup=2)
        del steps
        rows += [comparison_row(setting, spec, variant, seconds, memory) for variant in variants[1:]]
    columns = ["setting", "variant", "batch_size", "reference_images_per_s", "ours_images_per_s", "speedup",
               "reference_peak_mib", "ours_peak_mib", "memory_ratio"]
    print(markdown_table(rows, columns))
    path = write_results("train_step", {"machine": machine(), "threads": args.threads, "repeats": args.repeats,
                                        "rows": rows, "seconds_per_step": seconds_by_setting})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
