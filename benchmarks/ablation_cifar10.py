# SPDX-License-Identifier: Apache-2.0
"""Ablation of the small-data options on CIFAR-10, judged on held-out TRAINING images (never the test split).

    python -m benchmarks.ablation_cifar10 --max_train_steps 300 --seeds 0 1 --work_dir /tmp/ablation

The training split is cut once into 45,000 images to pretrain on and 5,000 held out (written as parquet shards in
`--work_dir`, a data set in Hub layout with splits `train` and `validation`). Each variant is the recipe
`configs/cifar10_quality.yaml` with every option this ablation varies set as the reference has it (`OPTIONS_OFF`),
then some of them on: the first round turns on one option at a time, the second adds one knob at a time to the
first round's gain (the regulariser), the third one knob at a time to the recipe as it stands (`recipe+...`).
Every run is pretrained for the same number of optimizer steps (a fixed budget of images, whatever the machine's
speed; a variant of another batch size runs the steps that take as long, `EQUAL_TIME_STEP_FRACTION`) and ends with
the package's own probe against random initialisation: linear probe and kNN on frozen mean-pooled features,
fitted on 5,000 of the pretraining images and evaluated on the 5,000 held-out ones. Each variant runs once per
`--seeds`; the table gives the mean and the spread (min-max) over those runs, pretrained and random initialisation
side by side.

`--results_dir` (default `benchmarks/results`) receives `ablation_cifar10.json` and `ablation_cifar10.md`. A run
folder in `--work_dir` (`<variant>-seed<seed>`) that finished its probe at the same number of steps is reused, so an
interrupted ablation continues where it stopped; delete the folder to run it again. Runs of earlier invocations with
the same steps and seeds are kept in the JSON, so the top-level `machine` is the last invocation's; a run made by
this version also records its own `machine` and `run_seconds` (pretraining, export and probes).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

from datasets import load_dataset

from benchmarks.common import RESULTS, machine, markdown_table
from modeling_ijepa.data.streaming import write_parquet_shards
from modeling_ijepa.training.loop import RUN_RESOURCES
from modeling_ijepa.training.pretraining import main as pretrain

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE = REPO_ROOT / "configs" / "cifar10_quality.yaml"
HELD_OUT = 5000
# The recipe with every option the ablation varies as the reference has it (and the recipe's learning rate, targets,
# crops, probe features and precision pinned, so that a change of the recipe does not move the ablation's baseline).
OPTIONS_OFF = ["--variance_loss_weight", "0", "--covariance_loss_weight", "0", "--num_mask_draws", "1",
               "--horizontal_flip", "0", "--ema_momentum", "0.996", "--learning_rate", "5e-4", "--num_targets", "4",
               "--crop_scale", "0.3,1.0", "--probe_feature_layers", "1", "--predictor_hidden_size", "96",
               "--predictor_num_hidden_layers", "4", "--target_scale", "0.15,0.2", "--mixed_precision", "no",
               "--per_device_train_batch_size", "128", "--target_average_layers", "1",
               "--prediction_loss", "smooth_l1", "--num_views", "1", "--view_invariance_weight", "0"]  # fmt: skip
VICREG = ["--variance_loss_weight", "0.1", "--covariance_loss_weight", "0.004"]
VICREG_X10 = ["--variance_loss_weight", "1.0", "--covariance_loss_weight", "0.04"]
RECIPE_OPTIONS = [*VICREG_X10, "--probe_feature_layers", "4"]
RECIPE_BF16 = [*RECIPE_OPTIONS, "--mixed_precision", "bf16"]  # the recipe as it stands since the fourth round
VARIANTS = {
    "options_off": [],
    "vicreg": VICREG,
    "two_mask_draws": ["--num_mask_draws", "2"],
    "horizontal_flip": ["--horizontal_flip", "0.5"],
    # A faster-moving target encoder: with 0.996 -> 1 over a few hundred steps, about half of the exported target
    # encoder is still its random initialisation (the product of the momenta).
    "ema_0.99": ["--ema_momentum", "0.99"],
    # Second round, on top of the regulariser (the first round's one gain): one knob at a time.
    "vicreg_x10": VICREG_X10,
    "vicreg+lr_1e-3": [*VICREG, "--learning_rate", "1e-3"],
    "vicreg+ema_0.99": [*VICREG, "--ema_momentum", "0.99"],
    # Two target blocks instead of four: the context keeps about twice the patches on the 8x8 grid.
    "vicreg+two_targets": [*VICREG, "--num_targets", "2"],
    "vicreg+two_mask_draws": [*VICREG, "--num_mask_draws", "2"],
    "vicreg+crop_0.5": [*VICREG, "--crop_scale", "0.5,1.0"],
    # A probe option (ijepa#47): the mean-pooled features of the last 4 blocks, concatenated, for both encoders.
    "vicreg+probe_4_layers": [*VICREG, "--probe_feature_layers", "4"],
    # Third round, on top of the recipe (the regulariser at 1.0 / 0.04 and the probe on the last 4 blocks): the
    # second round's small gains, the predictor's width and depth, and the target blocks' scale on the 8x8 grid.
    "recipe": RECIPE_OPTIONS,
    "recipe+lr_1e-3": [*RECIPE_OPTIONS, "--learning_rate", "1e-3"],
    "recipe+two_targets": [*RECIPE_OPTIONS, "--num_targets", "2"],
    "recipe+crop_0.5": [*RECIPE_OPTIONS, "--crop_scale", "0.5,1.0"],
    "recipe+predictor_width_192": [*RECIPE_OPTIONS, "--predictor_hidden_size", "192"],
    "recipe+predictor_depth_2": [*RECIPE_OPTIONS, "--predictor_num_hidden_layers", "2"],
    "recipe+predictor_depth_6": [*RECIPE_OPTIONS, "--predictor_num_hidden_layers", "6"],
    # Blocks of 6-10 patches instead of 10-13: the context keeps more of the grid.
    "recipe+target_scale_0.1": [*RECIPE_OPTIONS, "--target_scale", "0.1,0.15"],
    # Fourth round, speed: Accelerate's bf16 autocast on top of the recipe's bf16 products (1.27x the steps per
    # minute on 2 cores). Equal steps here, so it must not cost accuracy.
    "recipe+bf16_autocast": RECIPE_BF16,
    # Fifth round, on top of the recipe as it stands (bf16 autocast on): batch 256, at equal time (below).
    "recipe+bf16+batch_256": [*RECIPE_BF16, "--per_device_train_batch_size", "256"],
    # Sixth round: the regulariser, the one lever that has helped so far (0.1 / 0.004 -> 1.0 / 0.04: +2.1 linear),
    # pushed further along the same line, its two weights in the same 25:1 ratio as VICReg's.
    "recipe+bf16+vicreg_x3": [*RECIPE_BF16, "--variance_loss_weight", "3.0", "--covariance_loss_weight", "0.12"],
    "recipe+bf16+vicreg_x10": [*RECIPE_BF16, "--variance_loss_weight", "10.0", "--covariance_loss_weight", "0.4"],
    # data2vec's targets: the mean of the target encoder's last K blocks (each layer-normed) instead of the last one.
    "recipe+bf16+target_layers_2": [*RECIPE_BF16, "--target_average_layers", "2"],
    "recipe+bf16+target_layers_3": [*RECIPE_BF16, "--target_average_layers", "3"],
    # A larger encoder at equal time (EQUAL_TIME_STEP_FRACTION): wider (ViT-Tiny's 192 -> 256, 4 heads).
    "recipe+bf16+width_256": [*RECIPE_BF16, "--hidden_size", "256", "--num_attention_heads", "4"],
    # Eighth round: deeper instead (ViT-Tiny's 12 blocks), at equal time.
    "recipe+bf16+depth_12": [*RECIPE_BF16, "--num_hidden_layers", "12"],
    # LeJEPA's SIGReg on the same context tokens as the VICReg terms: on top of them, or instead of them. Its
    # statistic grows with the number of samples (~1,400 tokens a step here, ~500 embeddings a view in LeJEPA), so
    # LeJEPA's weight of 0.05 becomes about 0.02.
    "recipe+bf16+sigreg_0.02": [*RECIPE_BF16, "--sigreg_loss_weight", "0.02"],
    "recipe+bf16+sigreg_instead_of_vicreg": [*RECIPE_BF16, "--variance_loss_weight", "0", "--covariance_loss_weight",
                                             "0", "--sigreg_loss_weight", "0.02"],
    # Ninth round: the paper's schedules, which the recipe replaced without an ablation: weight decay 0.04 -> 0.4
    # (the recipe holds 0.05), and a slower EMA at the start (0.998 instead of 0.996; 0.99 was worse).
    "recipe+bf16+weight_decay_0.04_to_0.4": [*RECIPE_BF16, "--weight_decay", "0.04", "--final_weight_decay", "0.4"],
    "recipe+bf16+ema_0.998": [*RECIPE_BF16, "--ema_momentum", "0.998"],
    # Tenth round, in float32 (`recipe`, the recipe as `--mixed_precision auto` runs it on a CPU without native bf16,
    # where emulated autocast is 17x slower). Contexts are cut to the shortest in the batch: with at least 4 patches
    # kept they average 12.4 of an image's own ~23 at batch 128, with at least 16 about 17.
    "recipe+min_context_16": [*RECIPE_OPTIONS, "--min_context_patches", "16"],
    # SIGReg at a quarter of the eighth round's weight (0.02 cost 7 points of kNN on top of the VICReg terms).
    "recipe+sigreg_0.005": [*RECIPE_OPTIONS, "--sigreg_loss_weight", "0.005"],
    # Eleventh round: a lower peak learning rate (1e-3 cost 1.6 points in the third round; the digits recipe chose
    # 3e-4 over 5e-4).
    "recipe+bf16+lr_2.5e-4": [*RECIPE_BF16, "--learning_rate", "2.5e-4"],
    # Twelfth round: two mask draws per image on top of the recipe, at equal time (the first round tried them at equal
    # steps, without the regulariser). Both draws share one pass of the target encoder.
    "recipe+bf16+two_mask_draws": [*RECIPE_BF16, "--num_mask_draws", "2"],
    # Thirteenth round: no weight decay (a few epochs may need none); torchvision's default crops of 8-100% (the
    # recipe's 30-100% is the paper's); two larger target blocks of 25-35% of the grid (16-22 of the 8x8 grid's 64
    # patches, against four of 10-13) which leave the context more patches.
    "recipe+bf16+weight_decay_0": [*RECIPE_BF16, "--weight_decay", "0", "--final_weight_decay", "0"],
    "recipe+bf16+crop_0.08": [*RECIPE_BF16, "--crop_scale", "0.08,1.0"],
    "recipe+bf16+two_large_targets": [*RECIPE_BF16, "--num_targets", "2", "--target_scale", "0.25,0.35"],
    # Fourteenth round: AdamW's beta2 0.95 (MAE's and most ViT recipes'; the reference keeps torch's 0.999), whose
    # second-moment estimate follows the gradients faster in a run of a few thousand steps; an EMA that ends at 0.999
    # instead of 1, so that the target encoder still learns in the last steps of a short run.
    "recipe+bf16+adam_beta2_0.95": [*RECIPE_BF16, "--adam_beta2", "0.95"],
    "recipe+bf16+final_ema_0.999": [*RECIPE_BF16, "--final_ema_momentum", "0.999"],
    # Fifteenth round: V-JEPA's L1 prediction loss. On layer-normed targets the paper's smooth L1 is mostly half the
    # squared error, which weighs the few large errors most; L1 weighs every error alike.
    "recipe+bf16+l1_loss": [*RECIPE_BF16, "--prediction_loss", "l1"],
    # Sixteenth round: batches 64 and 32 at equal time. Batch 256 (fifth round) gave fewer steps and lost kNN: the
    # steps counted more than the images, so a smaller batch may gain from its extra steps.
    "recipe+bf16+batch_64": [*RECIPE_BF16, "--per_device_train_batch_size", "64"],
    "recipe+bf16+batch_32": [*RECIPE_BF16, "--per_device_train_batch_size", "32"],
    # Seventeenth round: two crops of each image, each masked and predicted on its own, and VICReg's invariance term
    # between their mean context tokens. 64 images of 2 crops are the recipe's 128 rows a step: the same compute.
    "recipe+bf16+two_views_invariance": [*RECIPE_BF16, "--num_views", "2", "--view_invariance_weight", "1.0",
                                         "--per_device_train_batch_size", "64"],
}
# Variants that run a fraction of --max_train_steps: the steps that take as long as the others' on 2 CPU cores. A
# step of batch 256 took 1.66x one of batch 128 in a first timing (0.72 against 0.43 s, bf16 autocast), hence 0.6;
# benchmarks.step_phases, which alternates them, gives 1.76x (0.70 against 0.40 s, 1.09x the images per second), so
# this variant gets about 5% more time than the others, which can only favour it.
# Width 256 with 4 heads: 1.26x the recipe's step (0.60 against 0.475 s, 50 steps from the tenth, one run each);
# depth 12: 1.58x (0.75 s). benchmarks.step_phases, which alternates them, later gave 1.24x and 1.49x (so depth 12 gets
# about 6% less time than the recipe).
# Contexts of at least 16 patches: 0.79x the recipe's images per second in float32 on 2 AVX2 cores (1.55 against
# 1.27 s a step, benchmarks/results/step_phases_avx2_variants.json).
# Two mask draws per image: 0.63x the recipe's images per second under bf16 autocast on 2 AMD EPYC cores with AVX-512
# (0.87 against 0.58 s a step; benchmarks/results/step_phases_avx512_two_mask_draws.json).
# Batch 64: 0.54x the recipe's step there (0.273 against 0.505 s, 0.92x the images per second;
# benchmarks/results/step_phases_avx512_batch_64.json), hence 1.85 times the steps. Batch 32: 0.33x (0.168 against
# 0.509 s, 0.78x the images per second; step_phases_avx512_batch_64_32.json), hence 3.03 times.
EQUAL_TIME_STEP_FRACTION = {
    "recipe+bf16+batch_256": 0.6, "recipe+bf16+width_256": 0.79, "recipe+bf16+depth_12": 0.63,
    "recipe+min_context_16": 0.79, "recipe+bf16+two_mask_draws": 0.63, "recipe+bf16+batch_64": 1.85,
    "recipe+bf16+batch_32": 3.03,
}
METRICS = ("linear_top1", "knn_top1")


def held_out_split(source: Path, folder: Path, held_out: int, limit: int | None) -> Path:
    """`folder`: CIFAR-10's training split as `train` (all but the last `held_out` of a seeded shuffle) and
    `validation` (those `held_out`), written once and reused."""
    if (folder / "data").is_dir():
        return folder
    train = load_dataset(str(source), split="train").shuffle(seed=0)
    if limit is not None:
        train = train.select(range(min(limit, len(train))))
    write_parquet_shards(train.select(range(len(train) - held_out)), folder, num_shards=4, split="train", seed=None)
    write_parquet_shards(train.select(range(len(train) - held_out, len(train))), folder, num_shards=1,
                         split="validation", seed=None)
    return folder


def finished_steps(output_dir: Path) -> int | None:
    """The optimizer steps of a run in `output_dir` that ended with its probe, else None: an interrupted ablation
    started again with the same `--work_dir` reuses the runs that finished."""
    log, comparison = output_dir / "training_log.jsonl", output_dir / "probe" / "comparison.json"
    if not (log.is_file() and comparison.is_file()):
        return None
    return json.loads(log.read_text().splitlines()[-1])["step"]


def run_variant(data: Path, output_dir: Path, options: list[str], seed: int, steps: int, extra: list[str]) -> dict:
    """Pretrain one variant and return its probe comparison (pretrained and random initialisation)."""
    argv = ["--config", str(RECIPE), "--dataset_name", str(data), "--output_dir", str(output_dir),
            "--max_train_steps", str(steps), "--warmup_steps", str(max(1, steps // 10)), "--seed", str(seed),
            "--probe_eval_split", "validation", "--probe_max_train_samples", "5000",
            "--probe_max_eval_samples", str(HELD_OUT), *OPTIONS_OFF, *options, *extra]  # fmt: skip
    timing_file = output_dir / "ablation_timing.json"
    if finished_steps(output_dir) == steps:
        print(f"Reusing the finished run in {output_dir} (delete it to run it again).")
        timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}  # none from older versions
    else:
        started = time.perf_counter()
        with RUN_RESOURCES:
            pretrain(argv)
        # Pretraining, the export and the probes: with the same probes, it compares variants' step costs.
        timing = {"run_seconds": round(time.perf_counter() - started, 1), "machine": machine()}
        timing_file.write_text(json.dumps(timing) + "\n")
    comparison = json.loads((output_dir / "probe" / "comparison.json").read_text()) | timing
    # The folder is a scratch copy of CIFAR-10's training split: name what it holds rather than where it was.
    comparison["dataset"] = "CIFAR-10 training split: pretraining images (train) and held-out ones (validation)"
    return comparison


def summarise(name: str, runs: list[dict]) -> dict:
    """One table row: mean and min-max over the runs of each metric, pretrained and at random initialisation."""
    row = {"variant": name, "runs": len(runs)}
    for encoder in ("pretrained", "random_init"):
        for metric in METRICS:
            values = [run[f"{encoder}_{metric}"] for run in runs]
            spread = f" ({min(values):.1%}-{max(values):.1%})" if len(values) > 1 else ""
            row[f"{encoder}_{metric}"] = f"{statistics.mean(values):.1%}{spread}"
    row["linear_gain"] = f"{statistics.mean(run['gains']['linear_top1'] for run in runs) * 100:+.1f}"
    row["knn_gain"] = f"{statistics.mean(run['gains']['knn_top1'] for run in runs) * 100:+.1f}"
    return row


def earlier_runs(path: Path, steps: int, seeds: list[int]) -> dict:
    """The runs of an earlier invocation with the same budget and seeds (kept, so that variants can be added one
    invocation at a time), else none."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    return earlier["runs"] if (earlier["max_train_steps"], earlier["seeds"]) == (steps, seeds) else {}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ablation_cifar10", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "cifar10",
                        help="CIFAR-10 in Hub layout.")
    parser.add_argument("--work_dir", type=Path, required=True, help="Held-out split and the runs' outputs.")
    parser.add_argument("--results_dir", type=Path, default=RESULTS, help="Where the JSON and the table go.")
    parser.add_argument("--max_train_steps", type=int, default=300, help="Optimizer steps of every run.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="One run of each variant per seed.")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="Variants to run.")
    parser.add_argument("--max_images", type=int, default=None, help="Use only this many training images (tests).")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="Further run_pretraining.py arguments for every run (e.g. smaller sizes for a test).")
    args = parser.parse_args(argv)
    data = held_out_split(args.dataset, args.work_dir / "cifar10_held_out", HELD_OUT if args.max_images is None
                          else args.max_images // 5, args.max_images)
    runs = earlier_runs(args.results_dir / "ablation_cifar10.json", args.max_train_steps, args.seeds)
    for name in args.variants:
        steps = round(EQUAL_TIME_STEP_FRACTION.get(name, 1.0) * args.max_train_steps)
        runs[name] = [run_variant(data, args.work_dir / f"{name}-seed{seed}", VARIANTS[name], seed, steps,
                                  args.extra) for seed in args.seeds]
    rows = [summarise(name, runs[name]) for name in VARIANTS if name in runs]
    payload = {"machine": machine(), "max_train_steps": args.max_train_steps, "seeds": args.seeds,
               "recipe": str(RECIPE.relative_to(REPO_ROOT)), "rows": rows, "runs": runs}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "ablation_cifar10.json").write_text(json.dumps(payload, indent=2) + "\n")
    columns = ["variant", "runs", "pretrained_linear_top1", "random_init_linear_top1", "linear_gain",
               "pretrained_knn_top1", "random_init_knn_top1", "knn_gain"]
    table = markdown_table(rows, columns)
    (args.results_dir / "ablation_cifar10.md").write_text(table + "\n")
    print(table)
    return payload


if __name__ == "__main__":
    main()
