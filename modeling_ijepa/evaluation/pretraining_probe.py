# SPDX-License-Identifier: Apache-2.0
"""Does pretraining pay off? The check that ends a pretraining run on labelled images.

The exported encoder and the same architecture at random initialisation are probed with the same cheap settings
(a linear probe whose L2 strength is chosen on held-out training images, and a weighted kNN, both on cached
mean-pooled features of `linear_probe`), on the labelled splits of the pretraining data: scikit-learn's digits by
default, or a dataset whose training split has a label column and which has a `test` or `validation` split.
Both results go into the model card with a picture, and a run whose encoder does not beat random initialisation
says so plainly. A randomly initialised ViT with a converged linear probe is a strong baseline on small images,
so this is the comparison that tells whether the compute was worth it.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from datasets import DatasetDict  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from modeling_ijepa.data.images import find_label_column, load_image_dataset  # noqa: E402
from modeling_ijepa.evaluation import linear_probe  # noqa: E402
from modeling_ijepa.evaluation.splits import load_image_splits  # noqa: E402

logger = logging.getLogger(__name__)

EVAL_SPLITS = ("test", "validation")
METRICS = {"linear_top1": "linear probe", "knn_top1": "kNN"}


@dataclass
class PretrainingSplits:
    """The pretraining data, loaded once for both probe runs, and the two splits of it that they use."""

    dataset: DatasetDict
    train_split: str
    eval_split: str


def labelled_splits(args) -> PretrainingSplits | str:
    """The pretraining data with its training and eval split to probe on, or the reason why it cannot be probed."""
    splits = load_image_dataset(args.dataset_name, args.dataset_config_name, args.train_dir, args.cache_dir)
    try:
        find_label_column(splits[args.train_split], args.probe_label_column_name)
    except ValueError as error:
        return f"the training split has no label column ({error})"
    candidates = [args.probe_eval_split] if args.probe_eval_split else list(EVAL_SPLITS)
    eval_split = next((split for split in candidates if split in splits and split != args.train_split), None)
    if eval_split is None:
        return f"no held-out split among {candidates} (the dataset has {list(splits)}): pass --probe_eval_split"
    return PretrainingSplits(splits, args.train_split, eval_split)


def probe_arguments(args, output_dir: Path, train_split: str, eval_split: str, random_init: bool) -> list[str]:
    """`linear_probe` arguments for one of the two encoders, on the pretraining run's data."""
    argv = ["--model_name_or_path", str(output_dir), "--train_split", train_split, "--eval_split", eval_split,
            "--output_dir", str(output_dir / "probe" / ("random_init" if random_init else "pretrained")),
            "--max_train_samples", str(args.probe_max_train_samples),
            "--max_eval_samples", str(args.probe_max_eval_samples), "--feature_layers", str(args.probe_feature_layers),
            "--seed", str(args.seed), "--no_update_model_card"]
    for flag in ("dataset_name", "dataset_config_name", "train_dir", "image_column_name", "cache_dir"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    if args.probe_label_column_name is not None:
        argv += ["--label_column_name", args.probe_label_column_name]
    return argv + (["--random_init"] if random_init else [])


def verdict(gains: dict[str, float]) -> tuple[bool, str]:
    """Whether the pretrained encoder beats random initialisation on every metric, and a sentence that says so."""
    described = ", ".join(f"{METRICS[name]} {100 * gain:+.1f} points" for name, gain in gains.items())
    if all(gain > 0 for gain in gains.values()):
        return True, f"Pretraining beats random initialisation: {described}."
    return False, (f"**Warning: the pretrained encoder does not beat random initialisation** ({described}). "
                   "Train longer, or see the small-data recipe and its ablations in the library's README.")


def plot_comparison(results: dict[str, dict], path: Path) -> Path:
    """Grouped bars of top-1 accuracy: pretrained against random initialisation, per probe."""
    figure, axis = plt.subplots(figsize=(4.8, 3.0))
    width = 0.38
    for offset, (encoder, color) in zip((-width / 2, width / 2), (("pretrained", "tab:blue"),
                                                                  ("random_init", "tab:gray"))):
        values = [100 * results[encoder][metric] for metric in METRICS]
        bars = axis.bar([index + offset for index in range(len(METRICS))], values, width, color=color,
                        label="pretrained" if encoder == "pretrained" else "random initialisation")
        axis.bar_label(bars, fmt="%.1f", fontsize=8)
    axis.set_xticks(range(len(METRICS)), list(METRICS.values()))
    axis.set(ylabel="top-1 accuracy (%)", ylim=(0, 122), title="Frozen features: pretrained vs random")
    axis.legend(fontsize=8, loc="upper center", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def probe_against_random_init(args, accelerator, output_dir: str | Path) -> dict | None:
    """Probe the encoder exported in `output_dir` and a randomly initialised one; returns the card's values (None
    when the data has no labels, which is logged). Runs in this process alone (the main one)."""
    output_dir = Path(output_dir)
    splits = labelled_splits(args)
    if isinstance(splits, str):
        logger.info(f"Skipping the probe against random initialisation: {splits}.")
        return None
    probe_args = {
        encoder: linear_probe.parse_args(
            probe_arguments(args, output_dir, splits.train_split, splits.eval_split, random_init)
        )
        for encoder, random_init in (("pretrained", False), ("random_init", True))
    }
    # The two runs differ only in their weights and output folders, and random initialisation keeps the exported
    # architecture, hence its input size: the data is loaded and prepared once for both.
    image_size = AutoConfig.from_pretrained(output_dir).image_size
    data = load_image_splits(probe_args["pretrained"], image_size, splits.dataset)
    results = {encoder: linear_probe.probe(arguments, accelerator, data) for encoder, arguments in probe_args.items()}
    gains = {metric: results["pretrained"][metric] - results["random_init"][metric] for metric in METRICS}
    pays_off, sentence = verdict(gains)
    (logger.info if pays_off else logger.warning)(sentence.replace("**", ""))
    summary = {
        "dataset": results["pretrained"]["dataset"]["name"],
        "train_data": results["pretrained"]["train_data"],
        "eval_data": results["pretrained"]["eval_data"],
        "features": results["pretrained"]["features"]["description"],
        **{f"{encoder}_{metric}": result[metric] for encoder, result in results.items() for metric in METRICS},
        "gains": gains,
        "pays_off": pays_off,
        "verdict": sentence,
        "picture": plot_comparison(results, output_dir / "probe_vs_random_init.png").name,
    }
    with open(output_dir / "probe" / "comparison.json", "w") as file:
        json.dump(summary, file, indent=2)
    return summary
