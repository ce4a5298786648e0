# SPDX-License-Identifier: Apache-2.0
"""Where the CIFAR-10 recipe's training step spends its time, phase by phase, at its batch and at batch 256.

    python -m benchmarks.step_phases                 # writes benchmarks/results/step_phases.json

One optimizer step of `configs/cifar10_quality.yaml` as the training loop runs it (its model, masks, matmul
precision, mixed precision and attention), on random images (the data path is measured by in_memory_data.py): mask
sampling, the model's forward (split by hooks into the target encoder, the context encoder, the predictor, and
the rest: the loss and its regulariser), backward, AdamW and the EMA update. The recipe and the `--variants`
(default `batch_256`) take turns step by step in one process, the order rotating every round; they are the
ablation's variants on top of the recipe (benchmarks/ablation_cifar10.py, named without their `recipe+` or
`recipe+bf16+`).
Reported per variant: the median seconds of each phase, images per second, and for every variant the median of
per-round ratios of images per second against the recipe's (with the same batch, the inverse ratio of step times).

    python -m benchmarks.step_phases --variants sigreg_0.02 depth_12 --output_name step_phases_variants
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.ablation_cifar10 import RECIPE_BF16, RECIPE_OPTIONS
from benchmarks.ablation_cifar10 import VARIANTS as ABLATION_VARIANTS
from benchmarks.common import interleaved_seconds, machine, per_round_ratios, write_results
from modeling_ijepa.data.pipeline import build_mask_collator, input_grid
from modeling_ijepa.training.arguments import parse_args as parse_recipe
from modeling_ijepa.training.arguments import rows_per_step
from modeling_ijepa.training.models import build_model
from modeling_ijepa.training.optimization import build_optimizer
from modeling_ijepa.training.runtime import float32_matmul_precision, resolve_mixed_precision

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "cifar10_quality.yaml"
MODULES = ("target_encoder", "context_encoder", "predictor")
# The ablation's variants on top of the recipe, named without their prefix: each one's run_pretraining.py options on
# top of the recipe's. The ablation's rounds ran as `recipe+` (float32) or `recipe+bf16+` (under bf16 autocast); here
# both are timed on top of the recipe as `--mixed_precision auto` runs it on this CPU.
BASES = {"recipe+bf16+": RECIPE_BF16, "recipe+": RECIPE_OPTIONS}  # the longer prefix first
VARIANTS = {
    name.removeprefix(prefix): options[len(BASES[prefix]):]
    for name, options in ABLATION_VARIANTS.items()
    for prefix in [next((prefix for prefix in BASES if name.startswith(prefix)), None)]
    if prefix is not None
} | {
    # Speed only, the same numbers up to rounding: the recipe's eager attention was chosen under bf16 autocast,
    # where the CPU's SDPA kernel slowed down.
    "sdpa_attention": ["--attn_implementation", "sdpa"],
}
PHASES = ("masks", *MODULES, "loss", "backward", "optimizer", "ema")


class TimedStep:
    """One variant's training step, callable; it keeps the seconds of every phase of every call in `phases`."""

    def __init__(self, recipe: argparse.Namespace, batch_size: int):
        torch.manual_seed(0)
        self.model = build_model(recipe).train()
        self.optimizer = build_optimizer(self.model, lr=recipe.learning_rate)
        self.collator = build_mask_collator(recipe, input_grid(self.model.config), seed=0)
        self.images = torch.randn(batch_size, 3, recipe.image_size, recipe.image_size)
        self.autocast = resolve_mixed_precision(recipe.mixed_precision, "cpu") == "bf16"
        self.phases = {phase: [] for phase in PHASES}
        self._module_seconds = {}
        for name in MODULES:
            module = getattr(self.model, name)
            module.register_forward_pre_hook(self._start(name))
            module.register_forward_hook(self._stop(name))

    def _start(self, name):
        def hook(module, inputs):
            self._module_seconds[name] = -time.perf_counter()
        return hook

    def _stop(self, name):
        def hook(module, inputs, output):
            self._module_seconds[name] += time.perf_counter()
        return hook

    def __call__(self) -> None:
        times = [time.perf_counter()]
        context_indices, target_indices = self.collator.sample_indices(len(self.images))
        times.append(time.perf_counter())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.model(self.images, context_indices, target_indices).loss
        times.append(time.perf_counter())
        loss.backward()
        times.append(time.perf_counter())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter())
        self.model.update_target_encoder(0.996)
        times.append(time.perf_counter())
        masks, forward, backward, optimizer, ema = (end - start for start, end in zip(times, times[1:]))
        for name in MODULES:
            self.phases[name].append(self._module_seconds[name])
        self.phases["loss"].append(forward - sum(self._module_seconds.values()))
        for phase, seconds in (("masks", masks), ("backward", backward), ("optimizer", optimizer), ("ema", ema)):
            self.phases[phase].append(seconds)


def variant_batch(options: list[str], batch: int) -> int:
    """A variant's rows for a recipe run at `batch` rows: the variant's rows in the same ratio to the recipe's, so
    that `--extra`'s smaller batch scales with it (half the recipe's rows stay half)."""
    variant = rows_per_step(parse_recipe(["--config", str(RECIPE), *options]))
    recipe = rows_per_step(parse_recipe(["--config", str(RECIPE)]))
    if (batch * variant) % recipe:
        raise ValueError(f"A variant's rows ({variant}) scaled to a recipe of {batch} rows must be whole: "
                         f"{batch} x {variant} / {recipe} is not.")
    return batch * variant // recipe


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30, help="Timed rounds (one step of each variant a round).")
    parser.add_argument("--warmup", type=int, default=10,
                        help="Untimed rounds first: the recipe's first steps run slower than the rest.")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="Further run_pretraining.py arguments for the recipe (e.g. smaller sizes for a test).")
    parser.add_argument("--output_name", default="step_phases", help="Results file name in benchmarks/results.")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["batch_256"],
                        help="Variants timed against the recipe, step by step in turn.")
    args = parser.parse_args(argv)
    recipe = parse_recipe(["--config", str(RECIPE), *args.extra])
    batch = rows_per_step(recipe)
    steps = {"recipe": TimedStep(recipe, batch)}
    for name in args.variants:
        variant = parse_recipe(["--config", str(RECIPE), *args.extra, *VARIANTS[name]])
        steps[name] = TimedStep(variant, variant_batch(VARIANTS[name], batch))
    with float32_matmul_precision(recipe.matmul_precision):  # as the training loop sets it, restored after
        seconds = interleaved_seconds(steps, repeats=args.repeats, warmup=args.warmup)
    rows = []
    for name, step in steps.items():
        timed = {phase: values[-args.repeats:] for phase, values in step.phases.items()}  # the warmup rounds dropped
        images = len(step.images)
        row = {"variant": name, "batch_size": images, "step_s": statistics.median(seconds[name]),
               "images_per_s": images / statistics.median(seconds[name])}
        row |= {f"{phase}_s": statistics.median(values) for phase, values in timed.items()}
        if name != "recipe":
            ratios = per_round_ratios([s / batch for s in seconds["recipe"]], [s / images for s in seconds[name]])
            row["images_per_s_ratio"] = statistics.median(ratios)
            row["images_per_s_ratio_quartiles"] = [ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]]
        rows.append(row)
        print(f"{name}: " + ", ".join(f"{key} {value:.4g}" for key, value in row.items()
                                        if isinstance(value, float)))
    payload = {"machine": machine(), "recipe": "configs/cifar10_quality.yaml", "threads": torch.get_num_threads(),
               "repeats": args.repeats, "warmup": args.warmup, "extra": args.extra,
               "bf16_autocast": steps["recipe"].autocast,
               "variants": {name: VARIANTS[name] for name in args.variants}, "rows": rows}
    write_results(args.output_name, payload)
    return payload


if __name__ == "__main__":
    main()
