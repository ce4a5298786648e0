# SPDX-License-Identifier: Apache-2.0
"""Quality: the I-JEPA paper's claims in miniature. I-JEPA against MAE and random initialisation on CIFAR-10,
each pretrained for the same wall-clock budget, then probed the same way.

    python -m benchmarks.quality_cifar10 --budget_minutes 30          # about 2 x 30 min + probes on 2 CPU cores

1. I-JEPA: the package's pretraining (`modeling_ijepa.training.pretraining`, what `run_pretraining.py` runs) with
   the recipe `configs/cifar10_quality.yaml` on the training split.
2. MAE: `benchmarks.mae_pretraining` (`transformers.ViTMAEForPreTraining` on the same training loop): the same
   encoder, a decoder the size of I-JEPA's predictor, 75% masking, per-patch normalised pixel loss, the same data
   and augmentation, the same batch size and learning-rate schedule, with its own paper's peak learning rate
   (1.5e-4 x batch / 256; `--mae_learning_rate` gives it another) and AdamW settings.
   Both runs stop at `--budget_minutes` (`--max_train_minutes`), and their schedules (warmup, cosine, EMA) are
   sized to end there: a short calibration run of each measures its step time first, and `--max_train_steps` is
   set to the number of steps that fit in the budget.
3. Probes (`modeling_ijepa.evaluation.linear_probe`, what `run_linear_probe.py` runs): the I-JEPA target encoder,
   the MAE encoder, and the same architecture at random initialisation; linear probe (and kNN) on frozen
   mean-pooled features with all training labels and with 10 labels per class (the mean over `--lowshot_draws`
   seeded draws of those labels), top-1 on the test split. The probe chooses its hyperparameters on a held-out
   part of the training split; nothing here is chosen on the test split. `--probe_feature_normalisations
   standardise unit_norm` lets it choose MSN's unit-norm features as well (with `--skip_pretraining`, on the
   encoders of an earlier run).
4. `--results_dir` (default `benchmarks/results`) receives `quality_cifar10.json` (one row per method and
   `--seed`, beside the rows of earlier runs on other devices, budgets or seeds), `quality_cifar10.md` (the table
   of every seed run on this device and budget, the goals per seed and, with several seeds, on their mean; for the
   README) and the pictures of this run: loss curves of both methods, I-JEPA's collapse monitor, and the masks
   I-JEPA trains with drawn over CIFAR-10 images.

The recipe (`configs/cifar10_quality.yaml`), tuned for tiny images and a short budget (the paper's is for ViT-H/14
on ImageNet over 300 epochs), on a held-out 10% of the training split, 5-minute runs:
- ViT of width 192 and 3 heads (ViT-Tiny) but 6 blocks instead of 12, with a 4-block predictor of width 96: on
  2 CPU cores 12 blocks train at about half the images/s, under 3 epochs of CIFAR-10 in 30 minutes;
- 64 images a step, each in two crops (`num_views: 2`), with VICReg's invariance term between the mean context
  tokens of an image's two crops (`view_invariance_weight: 1`): 128 rows a step, as batch 128 with one crop had.
  In the 30-minute benchmark it gave +4.6 points of linear top-1 and +2.5 of low-shot top-1 over batch 128 with one
  crop, and -2.5 of kNN (mean of three seeds). MAE takes one crop of each image, at batch 128
  (`arguments.rows_per_step`);
- peak learning rate 5e-4 after a linear warmup over the first 10% of the steps, then cosine; EMA
  momentum 0.996 -> 1.0 as in the paper. Peak 1.5e-3 with EMA 0.99 (to move faster in a short run) collapsed
  within 80 steps: the per-dimension std of the target features fell from 0.43 at initialisation to 0.13;
- constant weight decay 0.05 instead of 0.04 -> 0.4: the increasing decay regularises long runs;
- a VICReg-style variance-covariance regulariser on the context encoder's output (weights 1.0 / 0.04), the one
  option that helped in `benchmarks.ablation_cifar10` (held-out training images; 300 steps, 2 seeds: linear top-1
  45.2% with weights 0.1 / 0.004 against 39.2% without it and 40.9% at random initialisation; 600 steps: ten
  times those weights, 44.1% against 41.9%);
- probes on the last 4 blocks' mean-pooled features, concatenated (the recipe's `probe_feature_layers`; every
  encoder alike): in the same ablation the gain over random initialisation grew from +1.1 to +5.0 points;
- masking: the paper's settings on the 8x8 patch grid (4 target blocks of 15-20% of the grid, aspect 0.75-1.5;
  a context block of 85-100% minus the targets), with `min_context_patches` 4: a context keeps only about 11
  patches once the targets are removed;
- the data decoded once into memory and cropped per batch (`in_memory_data`), and bf16 products of the float32
  matrices (`matmul_precision: medium`, AMX on recent Intel CPUs, with eager attention): about 1.5 times the
  images per second of the default path on 2 cores. bf16 autocast on top (`mixed_precision: auto`, on where the CPU
  computes bf16 natively) gives another 1.27x. MAE gets the same data path, precision and attention.

On a CPU shared with other jobs, `--torch_threads 1`: two intra-op threads wait for each other whenever another
process holds a core (measured on 2 cores under load: I-JEPA 13 images/s with two threads, 80 with one).
"""

import argparse
import json
import logging
import shutil
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402

from benchmarks import mae_pretraining  # noqa: E402
from benchmarks.common import machine, markdown_table  # noqa: E402
from benchmarks.plot_masks import plot_recipe_masks  # noqa: E402
from modeling_ijepa.cli import configure_logging  # noqa: E402
from modeling_ijepa.evaluation import linear_probe  # noqa: E402
from modeling_ijepa.evaluation.features import describe_layers  # noqa: E402
from modeling_ijepa.evaluation.probes import FEATURE_NORMALISATIONS  # noqa: E402
from modeling_ijepa.hub.model_card import plot_training_curves  # noqa: E402
from modeling_ijepa.hub.probe_card import linear_features_description  # noqa: E402
from modeling_ijepa.training import arguments, pretraining  # noqa: E402
from modeling_ijepa.training.loop import RUN_RESOURCES  # noqa: E402
from modeling_ijepa.training.models import build_model  # noqa: E402

logger = logging.getLogger(__name__)

BENCHMARKS = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS.parent
METHODS = ("ijepa", "mae", "random")
# Each pretrainer parses its arguments, trains (`train(args, step_callback)` -> (accelerator, model, state, ...)) and
# runs whole (`main(argv)` -> state, writing the encoder and `training_log.jsonl` to --output_dir).
IJEPA = SimpleNamespace(parse_args=arguments.parse_args, train=pretraining.train, main=pretraining.main)
PRETRAINERS = {"ijepa": IJEPA, "mae": mae_pretraining}
DEFAULT_CONFIG = REPO_ROOT / "configs" / "cifar10_quality.yaml"
TUNING_NOTE = (
    "; tuned for a short budget on tiny images (see benchmarks/quality_cifar10.py): half ViT-Tiny's depth for twice "
    "the images, a peak learning rate low enough not to collapse (1.5e-3 with EMA 0.99 did), constant weight decay, "
    "a VICReg-style regulariser on the context encoder (the held-out ablation's first gain), two crops of each "
    "image with an invariance term between them (its second), probes on the last blocks"
)
# Planned steps fill this fraction of the budget, so that the schedules end before the hard stop even when the
# machine runs a little slower than during calibration.
BUDGET_FILL = 0.95
DATALOADER_PREFETCH_FACTOR = 2  # torch's default, which both pretraining scripts keep
# Steps that calibration does not time: start-up and first allocations. The recipe's first ten steps run 1.25x
# slower than the rest on 2 cores (0.46 against 0.36 s); timing 40 steps from the fifth on planned 4,166 steps
# of a 30-minute run that then went at 0.35 s per step.
UNTIMED_STEPS = 10
TABLE_COLUMNS = [
    "method", "seed", "budget_minutes", "images_seen", "linear_top1", "lowshot_top1", "knn_top1", "steps", "device",
]
# MAE's paper (He et al., 2022): peak learning rate = this x batch / 256.
MAE_BASE_LEARNING_RATE = 1.5e-4
# Overrides of the recipe's model size and batch, for quick runs and the smoke test.
SIZE_OVERRIDES = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "predictor_hidden_size",
    "predictor_num_hidden_layers", "predictor_num_attention_heads", "per_device_train_batch_size",
)
PICTURES = {
    "loss curves": "quality_cifar10_loss_curves.png",
    "I-JEPA collapse monitor": "quality_cifar10_ijepa_collapse.png",
    "I-JEPA masks": "quality_cifar10_masks.png",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--budget_minutes", type=float, default=30.0, help="Pretraining wall-clock per method.")
    add("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    add("--config", default=str(DEFAULT_CONFIG), help="I-JEPA recipe (run_pretraining.py keys).")
    add("--dataset_name", default=str(REPO_ROOT.parent / "shared" / "data" / "cifar10"))
    add("--output_dir", default=str(REPO_ROOT / "outputs" / "quality_cifar10"), help="Run artefacts.")
    add("--results_dir", default=str(BENCHMARKS / "results"), help="JSON, table and pictures.")
    add("--probe_train_samples", type=int, default=None, help="Probe on a subset of the training split (default: all).")
    add("--probe_eval_samples", type=int, default=None, help="Evaluate on a subset of the test split (default: all).")
    add("--lowshot_samples_per_class", type=int, default=10)
    add("--lowshot_draws", type=int, default=5,
        help="Low-shot subsets drawn per encoder (subset seeds 0, 1, ...); `lowshot_top1` is their mean. One draw "
             "of 10 images per class moves an encoder's top-1 by 1-2 points (standard deviation over 5 draws).")
    add("--lowshot_sweep_folds", type=int, default=5,
        help="The low-shot probe chooses its L2 strength by this many-fold cross-validation over its labelled "
             "examples (1: one 10%% part, a single image per class at 10 per class).")
    add("--lowshot_weight_decays", type=float, nargs="+",
        default=[1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0],
        help="L2 strengths swept by the low-shot probe: wider upwards than the full-label default, whose "
             "strongest value (0.1) few labels chose for I-JEPA and MAE alike, at the edge of the sweep.")
    add("--probe_feature_normalisations", nargs="+", choices=list(FEATURE_NORMALISATIONS), default=["standardise"],
        help="Normalisations of the features that the linear probes (all labels and low-shot) choose among, on the "
             "training split as their L2 strength (run_linear_probe.py --linear_feature_normalisations): "
             "`standardise unit_norm` adds the unit-norm centred features of MSN's low-shot evaluation.")
    add("--feature_layers", type=int, default=None,
        help="Probe features from the last K layers, for every encoder alike (default: the recipe's "
             "probe_feature_layers).")
    add("--seed", type=int, default=0)
    add("--dataloader_num_workers", type=int, default=None, help="Default: the recipe's.")
    add("--torch_threads", type=int, default=None, help="Intra-op CPU threads (default: torch's, one per core).")
    add("--calibration_steps", type=int, default=50,
        help=f"Steps timed before each pretraining run (after {UNTIMED_STEPS} untimed ones, and 2 more per "
             "DataLoader worker). 15 timed I-JEPA at 0.466 s per step, which then ran at 0.425 s and stopped after "
             "26 of its 30 minutes.")
    add("--warmup_fraction", type=float, default=0.1, help="Learning-rate warmup, as a fraction of all steps.")
    add("--mae_learning_rate", type=float, default=None,
        help="MAE's peak learning rate (default: its paper's rule, 1.5e-4 x batch / 256, so 7.5e-5 at the recipe's "
             "batch of 128); the start of its warmup scales with it. 5e-4, the I-JEPA recipe's peak, reproduces "
             "the MAE rows made before this default.")
    add("--skip_pretraining", action="store_true",
        help="Probe the encoders a previous run left in --output_dir instead of pretraining again.")
    sizes = parser.add_argument_group("model size (default: the recipe's; MAE follows I-JEPA)")
    for name in SIZE_OVERRIDES:
        sizes.add_argument(f"--{name}", type=int, default=None)
    args = parser.parse_args(argv)
    if args.budget_minutes <= 0:
        parser.error("--budget_minutes must be positive.")
    if args.calibration_steps < 1:
        parser.error("--calibration_steps must be at least 1.")
    if not 0 <= args.warmup_fraction < 1:
        parser.error("--warmup_fraction must lie in [0, 1).")
    if args.mae_learning_rate is not None and args.mae_learning_rate <= 0:
        parser.error("--mae_learning_rate must be positive.")
    # Checked here rather than by the probe, which runs after the whole pretraining budget.
    if args.lowshot_draws < 1:
        parser.error("--lowshot_draws must be at least 1.")
    if not 1 <= args.lowshot_sweep_folds <= args.lowshot_samples_per_class:
        parser.error("--lowshot_sweep_folds must lie between 1 and --lowshot_samples_per_class, so that every fold "
                     "holds an image of each class.")
    return args


# ------------------------------------------------------------------------------------------------ pretraining


def ijepa_argv(args) -> list[str]:
    """Pretraining arguments (run_pretraining.py's) of the benchmark's I-JEPA run, without output folder and step
    counts."""
    # The benchmark probes every encoder itself, on the whole splits.
    argv = ["--config", args.config, "--dataset_name", args.dataset_name, "--seed", str(args.seed),
            "--no-probe_after_training"]
    if args.dataloader_num_workers is not None:
        argv += ["--dataloader_num_workers", str(args.dataloader_num_workers)]
    for name in SIZE_OVERRIDES:
        if getattr(args, name) is not None:
            argv += [f"--{name}", str(getattr(args, name))]
    return argv


def mae_paper_learning_rate(batch_size: int) -> float:
    """MAE's peak learning rate for `batch_size` images per step: its paper's rule, a base rate per 256 images."""
    return MAE_BASE_LEARNING_RATE * batch_size / 256


def mae_argv(ijepa, learning_rate: float) -> list[str]:
    """benchmarks.mae_pretraining arguments matching the parsed I-JEPA recipe `ijepa`: same data, augmentation, encoder,
    rows per step and shape of the learning-rate schedule; a decoder the size of the predictor. MAE takes one crop of
    each image, so the recipe's 64 images x 2 crops give it batch 128 (at 64 it broke down; README, Quality). The
    peak `learning_rate` scales the schedule's start with it (the end, near zero, stays). MAE keeps its own paper's
    AdamW betas (0.9, 0.95) and constant weight decay 0.05 (benchmarks.mae_pretraining's defaults).

    Why not I-JEPA's peak (5e-4 at batch 128, 6.7 times MAE's rule), as the benchmark once did: with it MAE fell
    below random initialisation at batch 64 and at width 256, and at the recipe's batch MAE's rule gave it 3.1 points
    more linear top-1 (mean of three seeds; README, Quality). A shared rate tuned on I-JEPA understates MAE."""
    values = {
        "dataset_name": ijepa.dataset_name, "dataset_config_name": ijepa.dataset_config_name,
        "train_dir": ijepa.train_dir, "train_split": ijepa.train_split, "image_column_name": ijepa.image_column_name,
        "max_train_samples": ijepa.max_train_samples, "cache_dir": ijepa.cache_dir,
        "crop_scale": ",".join(map(str, ijepa.crop_scale)), "horizontal_flip": ijepa.horizontal_flip,
        "max_in_memory_gib": ijepa.max_in_memory_gib, "dataloader_num_workers": ijepa.dataloader_num_workers,
        "image_size": ijepa.image_size, "patch_size": ijepa.patch_size, "hidden_size": ijepa.hidden_size,
        "num_hidden_layers": ijepa.num_hidden_layers, "num_attention_heads": ijepa.num_attention_heads,
        "mlp_ratio": ijepa.mlp_ratio, "decoder_hidden_size": ijepa.predictor_hidden_size,
        "decoder_num_hidden_layers": ijepa.predictor_num_hidden_layers,
        "decoder_num_attention_heads": ijepa.predictor_num_attention_heads or ijepa.num_attention_heads,
        "attn_implementation": ijepa.attn_implementation,
        "per_device_train_batch_size": arguments.rows_per_step(ijepa), "learning_rate": learning_rate,
        "start_lr": ijepa.start_lr * learning_rate / ijepa.learning_rate, "final_lr": ijepa.final_lr,
        "mixed_precision": ijepa.mixed_precision,
        "matmul_precision": ijepa.matmul_precision, "seed": ijepa.seed, "logging_steps": ijepa.logging_steps,
    }
    flags = ["--in_memory_data"] if ijepa.in_memory_data else []
    return flags + [item for name, value in values.items() if value is not None for item in (f"--{name}", str(value))]


def calibrate(method: str, argv: list[str], calibration_steps: int) -> tuple[float, float]:
    """Seconds per optimizer step and images per second of a short run of `method`. The first steps are not
    timed: they pay for start-up and first allocations, and with DataLoader workers they are served from the
    batches the workers prefetch at start (two each), which on a fast GPU hides a data-bound steady state (a
    1.5-minute H200 run timed that way planned 3,440 steps and had time for 2,922)."""
    times = []
    pretrainer = PRETRAINERS[method]
    workers = pretrainer.parse_args(argv + ["--max_train_steps", "1"]).dataloader_num_workers
    untimed = UNTIMED_STEPS + DATALOADER_PREFETCH_FACTOR * workers
    with RUN_RESOURCES:  # the calibration run's lock on its output folder ends with it
        state = pretrainer.train(
            pretrainer.parse_args(argv + ["--max_train_steps", str(untimed + calibration_steps)]),
            step_callback=lambda accelerator, model, step: times.append(time.perf_counter()),
        )[2]
    step_seconds = (times[-1] - times[untimed - 1]) / (len(times) - untimed)
    return step_seconds, state["images_seen"] / state["global_step"] / step_seconds


def pretrain(method: str, argv: list[str], args, output_dir: Path) -> dict:
    """Calibrate, then pretrain `method` for the budget with schedules sized to it; returns a summary that is also
    written to `output_dir/pretraining_summary.json` (read back by `--skip_pretraining`)."""
    summary_path = output_dir / "pretraining_summary.json"
    if args.skip_pretraining:
        if not summary_path.is_file():
            raise FileNotFoundError(f"--skip_pretraining: no {summary_path}; run without it first.")
        return json.loads(summary_path.read_text())
    calibration_argv = argv + ["--output_dir", str(Path(args.output_dir) / "calibration" / method)]
    step_seconds, images_per_second = calibrate(method, calibration_argv, args.calibration_steps)
    steps = max(1, int(BUDGET_FILL * args.budget_minutes * 60 / step_seconds))
    logger.info(f"{method}: {step_seconds:.3f} s per step, so {steps} steps in {args.budget_minutes:g} minutes.")
    shutil.rmtree(output_dir, ignore_errors=True)  # a stale encoder must never be probed as this run's
    started = time.perf_counter()
    state = PRETRAINERS[method].main(argv + [
        "--output_dir", str(output_dir), "--max_train_steps", str(steps),
        "--warmup_steps", str(round(args.warmup_fraction * steps)), "--max_train_minutes", str(args.budget_minutes),
    ])
    summary = {
        "steps": state["global_step"],
        "planned_steps": steps,
        "images_seen": state["images_seen"],
        "pretrain_seconds": round(time.perf_counter() - started, 1),
        "calibrated_images_per_second": round(images_per_second, 2),
        "device": str(PartialState().device),
    }
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def write_random_init_config(ijepa, folder: Path) -> None:
    """The recipe's encoder config alone: all that `run_linear_probe.py --random_init` reads."""
    build_model(ijepa).config.stock_config().save_pretrained(folder)


# ---------------------------------------------------------------------------------------------------- probing


def probe(model_dir: Path, output_dir: Path, args, lowshot_draw: int | None = None, random_init=False) -> dict:
    """The linear probe (`run_linear_probe.py`'s) on one encoder folder: the benchmark's only contact with it.
    With `lowshot_draw`, on the low-shot subset of that seed.

    The full-label and low-shot runs of an encoder share `output_dir`, so the later ones read the features the first
    extracted from the probe's cache; each run's results are also kept as `probe_results_full.json` and
    `probe_results_lowshot_<draw>.json`."""
    argv = [
        "--model_name_or_path", str(model_dir), "--dataset_name", args.dataset_name, "--output_dir", str(output_dir),
        "--seed", str(args.seed), "--feature_layers", str(args.feature_layers), "--no_update_model_card",
        "--linear_feature_normalisations", *args.probe_feature_normalisations,
    ]
    if args.dataloader_num_workers is not None:
        argv += ["--dataloader_num_workers", str(args.dataloader_num_workers)]
    if args.probe_train_samples is not None:
        argv += ["--max_train_samples", str(args.probe_train_samples)]
    if args.probe_eval_samples is not None:
        argv += ["--max_eval_samples", str(args.probe_eval_samples)]
    if lowshot_draw is not None:
        argv += ["--samples_per_class", str(args.lowshot_samples_per_class), "--subset_seed", str(lowshot_draw),
                 "--sweep_folds", str(args.lowshot_sweep_folds),
                 "--linear_weight_decays", *map(str, args.lowshot_weight_decays)]
    if random_init:
        argv.append("--random_init")
    results = linear_probe.main(argv)
    name = "full" if lowshot_draw is None else f"lowshot_{lowshot_draw}"
    shutil.copyfile(output_dir / "probe_results.json", output_dir / f"probe_results_{name}.json")
    return results


def probe_method(method: str, model_dir: Path, args) -> dict:
    """Full-label and low-shot accuracies of one encoder. A failure is recorded in the row rather than raised, so
    that the other methods' results of a long run are still written (and `main` exits with an error)."""
    output_dir = Path(args.output_dir) / "probes" / method
    random_init = method == "random"
    try:
        full = probe(model_dir, output_dir, args, random_init=random_init)
        draws = range(args.lowshot_draws)
        lowshot = [probe(model_dir, output_dir, args, draw, random_init=random_init) for draw in draws]
    except Exception as error:
        logger.exception(f"Probing {method} ({model_dir}) failed.")
        error_text = f"{type(error).__name__}: {error}"
        return {"linear_top1": None, "lowshot_top1": None, "knn_top1": None, "probe_error": error_text}
    return {
        "linear_top1": full["linear_top1"],
        "lowshot_top1": round(statistics.mean(draw["linear_top1"] for draw in lowshot), 4),
        "lowshot_top1_draws": [draw["linear_top1"] for draw in lowshot],
        "knn_top1": full["knn_top1"],
        "lowshot_knn_top1": round(statistics.mean(draw["knn_top1"] for draw in lowshot), 4),
        "probe_train_examples": full["sizes"]["train_used"],
        "lowshot_train_examples": lowshot[0]["sizes"]["train_used"],
        "probe_eval_examples": full["sizes"]["eval"],
        "probe_chosen": {
            "full": full["linear_probe"]["chosen"], "lowshot": [draw["linear_probe"]["chosen"] for draw in lowshot]
        },
    }


# ---------------------------------------------------------------------------------------------------- results


def read_log(folder: Path) -> list[dict]:
    path = folder / "training_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def plot_loss_curves(logs: dict[str, list[dict]], path: Path) -> Path:
    """Each method's pretraining loss against images seen, side by side (the losses are on different scales)."""
    titles = {"ijepa": "I-JEPA: smooth L1 to target features", "mae": "MAE: MSE on normalised masked pixels"}
    figure, axes = plt.subplots(1, len(logs), figsize=(5 * len(logs), 3.6), squeeze=False)
    for axis, (method, log) in zip(axes[0], logs.items()):
        curve = [(entry["images_seen"], entry["loss"]) for entry in log if "loss" in entry]
        if curve:
            axis.plot(*zip(*curve), color="tab:blue" if method == "ijepa" else "tab:orange", marker="o", markersize=2)
        axis.set(xlabel="images seen", ylabel="training loss", title=titles[method])
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def make_pictures(ijepa, model_dirs: dict[str, Path], methods: list[str], results_dir: Path) -> None:
    logs = {method: read_log(model_dirs[method]) for method in PRETRAINERS if method in methods}
    if logs:
        plot_loss_curves(logs, results_dir / PICTURES["loss curves"])
    if "ijepa" in logs:
        plot_training_curves(logs["ijepa"], results_dir / PICTURES["I-JEPA collapse monitor"])
    plot_recipe_masks(ijepa, results_dir / PICTURES["I-JEPA masks"])


def display_path(path: Path) -> str:
    """A path relative to the repository when it lies inside it, else named by its place in --output_dir, so that
    results do not record this machine's layout."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return f"<--output_dir>/{Path(path).name}"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def points(difference: float) -> str:
    return f"{100 * difference:+.1f} points"


def schedule(start: float, end: float) -> str:
    return f"{start:g}" if start == end else f"{start:g}->{end:g}"


def goal_summary(rows: dict[str, dict]) -> str:
    """The issue's goal: I-JEPA's linear top-1 at least 10 points above random init and above MAE's, and its
    low-shot gap over MAE at least as large as its full-label gap."""
    values = [rows.get(method, {}).get(key) for method in METHODS for key in ("linear_top1", "lowshot_top1")]
    if any(value is None for value in values):
        return "Goal not assessed: it needs the accuracies of all three methods."
    ijepa, mae, random = rows["ijepa"], rows["mae"], rows["random"]
    over_random = ijepa["linear_top1"] - random["linear_top1"]
    full_gap, lowshot_gap = ijepa["linear_top1"] - mae["linear_top1"], ijepa["lowshot_top1"] - mae["lowshot_top1"]
    checks = [
        (f"I-JEPA {points(over_random)} over random init (goal: +10 points)", over_random >= 0.10),
        (f"I-JEPA {points(full_gap)} over MAE with all labels (goal: +10 points)", full_gap >= 0.10),
        (
            (
                f"I-JEPA {points(lowshot_gap)} over MAE with {ijepa['lowshot_per_class']} labels per class "
                "(goal: at least the full-label gap)"
            ),
            lowshot_gap >= full_gap,
        ),
    ]
    return "\n".join(f"- {'met' if met else 'NOT met'}: {text}" for text, met in checks)


def goals_over_seeds(rows: list[dict]) -> str:
    """`goal_summary` for each seed of `rows` (the runs of one device and budget) and, with two or more seeds that
    have all three methods, for the mean of their accuracies: one seed's luck moves a gap by about a point."""
    by_seed = {}
    for row in rows:
        by_seed.setdefault(seed_of(row), {})[row["method"]] = row
    if len(by_seed) == 1:
        return goal_summary(next(iter(by_seed.values())))
    parts = [f"Seed {seed}:\n{goal_summary(by_seed[seed])}" for seed in sorted(by_seed)]
    complete = sorted(seed for seed, methods in by_seed.items() if set(METHODS) <= set(methods))
    if len(complete) > 1:
        mean = {
            method: {
                key: statistics.mean(by_seed[seed][method][key] for seed in complete)
                for key in ("linear_top1", "lowshot_top1")
            }
            | {"lowshot_per_class": by_seed[complete[0]][method]["lowshot_per_class"]}
            for method in METHODS
        }
        seeds = ", ".join(map(str, complete))
        parts.append(f"Mean over seeds {seeds} (accuracies averaged, then compared):\n{goal_summary(mean)}")
    return "\n\n".join(parts)


def recipe_text(method: str, ijepa, warmup_fraction: float, mae_learning_rate: float) -> str:
    warmup = f"{warmup_fraction:.0%} warmup, cosine"
    if method == "ijepa":
        tuning_note = TUNING_NOTE if Path(ijepa.config).resolve() == DEFAULT_CONFIG else ""
        return (
            f"{Path(ijepa.config).name}: batch {batch_text(ijepa)}, lr {ijepa.learning_rate:g} "
            f"({warmup}), EMA {schedule(ijepa.ema_momentum, ijepa.final_ema_momentum)}, weight decay "
            f"{schedule(ijepa.weight_decay, ijepa.final_weight_decay)}, predictor {ijepa.predictor_hidden_size}x"
            f"{ijepa.predictor_num_hidden_layers}, {ijepa.num_targets} targets {tuple(ijepa.target_scale)}, context "
            f"{tuple(ijepa.context_scale)}, VICReg weights {ijepa.variance_loss_weight:g} / "
            f"{ijepa.covariance_loss_weight:g}{invariance_text(ijepa)}, {ijepa.prediction_loss} loss"
            f"{target_layers_text(ijepa.target_average_layers)}{tuning_note}"
        )
    if method == "mae":
        return (
            f"ViTMAEForPreTraining, mask ratio 0.75, norm_pix_loss, decoder {ijepa.predictor_hidden_size}x"
            f"{ijepa.predictor_num_hidden_layers}, batch {arguments.rows_per_step(ijepa)}, AdamW (0.9, 0.95) "
            f"lr {mae_learning_rate:g} ({warmup}), weight decay 0.05, same data and augmentation as I-JEPA"
        )
    return "the I-JEPA encoder architecture with fresh random weights (run_linear_probe.py --random_init)"


def batch_text(ijepa) -> str:
    if ijepa.num_views == 1:
        return str(ijepa.per_device_train_batch_size)
    return f"{ijepa.per_device_train_batch_size} images x {ijepa.num_views} crops"


def invariance_text(ijepa) -> str:
    if ijepa.view_invariance_weight == 0:
        return ""
    return f", invariance weight {ijepa.view_invariance_weight:g} between crops"


def target_layers_text(average_layers: int) -> str:
    return "" if average_layers == 1 else f", targets the mean of the last {average_layers} blocks"


def seed_of(row: dict) -> int:
    return row.get("seed", 0)  # rows written before the seed was recorded ran with the default, 0


def run_key(row: dict) -> tuple:
    return row["method"], row["device"], row["budget_minutes"], seed_of(row)


def merge_with_earlier_runs(rows: list[dict], path: Path) -> list[dict]:
    """The rows of earlier runs kept in `path`, then this run's `rows`. An earlier row of the same method, device,
    budget and seed is replaced; others stay, so that a GPU run's rows sit beside the CPU run's, and the runs of
    several seeds side by side."""
    earlier = json.loads(path.read_text()) if path.is_file() else []
    if not isinstance(earlier, list):
        raise ValueError(f"{path} does not hold a list of result rows; move it away or pass another --results_dir.")
    replaced = {run_key(row) for row in rows}
    return [row for row in earlier if run_key(row) not in replaced] + rows


def reproducing_flags(args, ijepa) -> str:
    """The flags that change what is trained, for the command that reproduces a table: `--config` unless it is the
    recipe (named by its place in the repository, or by its file name alone rather than this machine's layout), the
    size overrides and `--mae_learning_rate`."""
    config = Path(ijepa.config).resolve()
    flags = "" if config == DEFAULT_CONFIG else (
        f" --config {config.relative_to(REPO_ROOT) if config.is_relative_to(REPO_ROOT) else config.name}")
    return flags + "".join(
        f" --{name} {getattr(args, name):g}" for name in (*SIZE_OVERRIDES, "mae_learning_rate")
        if getattr(args, name) is not None
    )


def write_table(rows: list[dict], all_rows: list[dict], args, ijepa, results_dir: Path) -> str:
    """`quality_cifar10.md`: the table of this run's `rows` and of the other seeds' runs on the same device and
    budget in `all_rows` (every row of the results file), what it measures, the goals, the recipes and the
    pictures (of this run)."""
    setting_of = {(row["device"], row["budget_minutes"]) for row in rows}
    same_setting = sorted(
        (row for row in all_rows if (row["device"], row["budget_minutes"]) in setting_of),
        key=lambda row: (seed_of(row), METHODS.index(row["method"])),
    )
    table = markdown_table(
        [
            {key: percent(row[key]) if key.endswith("_top1") else seed_of(row) if key == "seed" else row[key]
             for key in TABLE_COLUMNS}
            for row in same_setting
        ],
        TABLE_COLUMNS,
    )
    probe_train = "all" if args.probe_train_samples is None else args.probe_train_samples
    probe_eval = "all" if args.probe_eval_samples is None else args.probe_eval_samples
    layers = describe_layers(args.feature_layers)
    overrides = reproducing_flags(args, ijepa)
    setting = (
        f"Each method pretrained for {args.budget_minutes:g} minutes of wall-clock on `{rows[0]['device']}` "
        f"(ViT {ijepa.hidden_size}x{ijepa.num_hidden_layers}, {ijepa.patch_size}px patches at {ijepa.image_size}px). "
        f"Linear probe and kNN (k=20) on frozen mean-pooled features ({layers}; linear probe on "
        f"{linear_features_description(args.probe_feature_normalisations)}): {probe_train} training images "
        f"(`lowshot_top1`: {args.lowshot_samples_per_class} per class, the mean over {args.lowshot_draws} "
        f"seeded draws of them), top-1 on {probe_eval} test images; probe "
        "hyperparameters chosen on a held-out part of the training split "
        f"(low-shot: {args.lowshot_sweep_folds}-fold cross-validation over its labelled images, L2 strengths "
        f"{min(args.lowshot_weight_decays):g} to {max(args.lowshot_weight_decays):g}). "
        f"Made by `python -m benchmarks.quality_cifar10 --budget_minutes {args.budget_minutes:g}{overrides} --seed S` "
        f"for seed S in {', '.join(str(seed) for seed in sorted({seed_of(row) for row in same_setting}))}; pictures "
        f"of seed {args.seed}."
    )
    recipes = "\n".join(f"- `{row['method']}`: {row['recipe']}" for row in rows)
    pictures = " ".join(f"![{title}]({name})" for title, name in PICTURES.items() if (results_dir / name).is_file())
    text = "\n\n".join([table, setting, goals_over_seeds(same_setting), recipes, pictures])
    (results_dir / "quality_cifar10.md").write_text(text + "\n")
    return text


# ------------------------------------------------------------------------------------------------------- main


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    configure_logging()
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    output_dir, results_dir = Path(args.output_dir), Path(args.results_dir)
    base_argv = ijepa_argv(args)
    ijepa = IJEPA.parse_args(base_argv)
    if args.feature_layers is None:
        args.feature_layers = ijepa.probe_feature_layers
    if not 1 <= args.feature_layers <= ijepa.num_hidden_layers:
        raise SystemExit(f"--feature_layers {args.feature_layers}: the encoders have {ijepa.num_hidden_layers} layers.")
    mae_learning_rate = args.mae_learning_rate or mae_paper_learning_rate(arguments.rows_per_step(ijepa))
    argvs = {"ijepa": base_argv, "mae": mae_argv(ijepa, mae_learning_rate)}
    model_dirs = {"ijepa": output_dir / "ijepa", "mae": output_dir / "mae", "random": output_dir / "random_init"}

    rows = []
    for method in args.methods:
        row = {"method": method, "seed": args.seed, "budget_minutes": args.budget_minutes}
        if method in PRETRAINERS:
            row |= pretrain(method, argvs[method], args, model_dirs[method])
        else:
            write_random_init_config(ijepa, model_dirs[method])
            row |= {"steps": 0, "images_seen": 0, "pretrain_seconds": 0.0, "device": str(PartialState().device)}
        rows.append(row)
    for row in rows:
        row |= probe_method(row["method"], model_dirs[row["method"]], args)
        row |= {
            "lowshot_per_class": args.lowshot_samples_per_class,
            "lowshot_draws": args.lowshot_draws,
            "lowshot_sweep_folds": args.lowshot_sweep_folds,
            "lowshot_weight_decays": args.lowshot_weight_decays,
            "feature_layers": args.feature_layers,
            "probe_feature_normalisations": args.probe_feature_normalisations,
            "recipe": recipe_text(row["method"], ijepa, args.warmup_fraction, mae_learning_rate),
            "encoder": display_path(model_dirs[row["method"]]),
            "machine": machine(),
        }

    results_dir.mkdir(parents=True, exist_ok=True)
    results_path = results_dir / "quality_cifar10.json"
    all_rows = merge_with_earlier_runs(rows, results_path)
    results_path.write_text(json.dumps(all_rows, indent=2) + "\n")
    make_pictures(ijepa, model_dirs, args.methods, results_dir)
    print(write_table(rows, all_rows, args, ijepa, results_dir))
    failed = [row["method"] for row in rows if "probe_error" in row]
    if failed:
        raise SystemExit(f"Probing failed for {failed}; see `probe_error` in {results_dir / 'quality_cifar10.json'}.")
    return rows


if __name__ == "__main__":
    main()
