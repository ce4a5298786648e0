# SPDX-License-Identifier: Apache-2.0
"""Frozen-feature evaluation of an I-JEPA / V-JEPA / V-JEPA 2 encoder: linear probe, attentive probe (video), kNN.

    python run_linear_probe.py --model_name_or_path outputs/ijepa --dataset_name ../shared/data/cifar10 \\
        --output_dir outputs/probe_cifar10

    python run_linear_probe.py --modality video --model_name_or_path outputs/vjepa \\
        --train_dir ../shared/data/video_tiny/labelled/train \\
        --validation_dir ../shared/data/video_tiny/labelled/test --output_dir outputs/probe_video

The encoder is frozen. Features of the training and eval splits are extracted once and cached in `--output_dir`
as `features_{train,eval}_<hash>.safetensors`; the hash covers the model files (path, size, modification time),
`--random_init`, the dataset path or id, split, selected rows, class names, preprocessing, `--feature_layers` and
the precision, so a rerun that changes none of them loads the cache (data files edited in place under the same path
are not detected: use a new `--output_dir`). Low-shot subsets are drawn from the cached training features.

Probes: on mean-pooled features, L2-regularised logistic regression (L-BFGS to convergence, the L2 strength swept,
and with several `--linear_feature_normalisations` the features' normalisation too);
on video tokens, also the V-JEPA attentive probe (AdamW, learning rate x weight decay swept). Video clips have the
encoder's training length and frame size, center-cropped (V-JEPA 2: after the resize of its exported video
processor, so that the features are those stock transformers gives). The setting is chosen
on a stratified held-out part of the training split, or by stratified k-fold cross-validation over it
(`--sweep_folds`, for low-shot subsets), never on the eval split; it is refit on the whole training split
and evaluated once on the eval split; a weighted kNN runs on the same features. Results go to
`--output_dir/probe_results.json` and, for a local model folder with a `README.md` model card (and trained weights,
not `--random_init`), into the card's model-index, with how much of each split was used and, when a chosen setting
is the lowest or highest value swept, a note saying so (the run also warns: the sweep should be widened).
"""

import argparse
import functools
import itertools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from modeling_ijepa.cli import configure_logging, scoped_accelerator_state
from modeling_ijepa.evaluation.arguments import parse_args
from modeling_ijepa.evaluation.encoders import FORWARD_ARGUMENTS, PREFIX_TOKENS, load_encoder, model_identity
from modeling_ijepa.evaluation.features import (
    LabelledFeatures,
    cached_features,
    describe_layers,
    extract_features,
    fingerprint,
    timed,
)
from modeling_ijepa.evaluation.knn import knn_scores
from modeling_ijepa.evaluation.metrics import TopKAccuracy
from modeling_ijepa.evaluation.probes import (
    AttentiveProbe,
    MiniBatchTraining,
    SweepResult,
    attentive_num_heads,
    fit_logistic_regression,
    sweep_and_refit,
    train_probes,
)
from modeling_ijepa.evaluation.splits import LabelledData, LabelledSplit, load_labelled_data
from modeling_ijepa.evaluation.subsets import low_shot_subset
from modeling_ijepa.hub.probe_card import (
    maybe_update_model_card,
    probe_training_description,
    split_description,
    sweep_edge_notes,
)

logger = logging.getLogger(__name__)  # probing runs on one process


@dataclass
class ExtractedSplit:
    """The features of one split and the cache file they were loaded from (`from_cache`) or written to."""

    features: LabelledFeatures
    cache_file: Path
    from_cache: bool


def split_features(
    role: str, split: LabelledSplit, input_name: str, encoder: nn.Module, args: argparse.Namespace, accelerator
) -> ExtractedSplit:
    """Features of one split (`role`: "train" or "eval"), from the cache in `--output_dir` when the same extraction
    was done before. Images give pooled features `[N, D]`; video keeps every token, `[N, T, D]`, for the attentive
    probe."""
    pool_tokens = args.modality == "image"
    key = fingerprint(
        {
            "model": model_identity(args),
            "data": split.identity,
            "feature_layers": args.feature_layers,
            "pool_tokens": pool_tokens,
            "mixed_precision": accelerator.mixed_precision,
        }
    )
    path = Path(args.output_dir) / f"features_{role}_{key}.safetensors"

    def extract() -> LabelledFeatures:
        dataloader = DataLoader(
            split.dataset,
            batch_size=args.per_device_eval_batch_size,
            collate_fn=split.collate_fn,
            num_workers=args.dataloader_num_workers,
        )
        return extract_features(
            encoder,
            dataloader,
            input_name,
            args.feature_layers,
            pool_tokens,
            accelerator,
            description=f"Extracting {role} features ({split.name})",
            skip_tokens=PREFIX_TOKENS.get(encoder.config.model_type, 0),
            forward_arguments=FORWARD_ARGUMENTS.get(encoder.config.model_type),
        )

    features, from_cache = cached_features(path, extract)
    return ExtractedSplit(features, path, from_cache)


def top_k_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 and top-5 of scores `[N, C]` against labels `[N]` (top-5 is `None` when there are 5 classes or fewer,
    where it would always be 1)."""
    results = TopKAccuracy(keep_in_memory=True).compute(predictions=scores.numpy(), references=labels.numpy())
    return {"top1": results["top1"], "top5": results.get("top5")}


@dataclass
class SweptProbe:
    """A probe to sweep: `fit(features, labels, settings)` trains one probe per setting (a dict of
    hyperparameters) on `train_features`; the refit one scores `eval_features` (`[N, D]` or `[N, T, D]`)."""

    fit: Callable[[torch.Tensor, torch.Tensor, list[dict]], list[nn.Module]]
    settings: list[dict]
    train_features: torch.Tensor
    eval_features: torch.Tensor
    normalisations: tuple[str, ...] = ("standardise",)


def linear_probe(train: torch.Tensor, evaluation: torch.Tensor, num_classes: int, args, device) -> SweptProbe:
    """Logistic regression on pooled features `[N, D]`, one fit per L2 strength of `--linear_weight_decays`."""

    def fit(features: torch.Tensor, labels: torch.Tensor, settings: list[dict]) -> list[nn.Module]:
        return [
            fit_logistic_regression(
                features, labels, num_classes, setting["weight_decay"], args.linear_max_iter, device
            )
            for setting in settings
        ]

    settings = [{"weight_decay": value} for value in args.linear_weight_decays]
    return SweptProbe(fit, settings, train, evaluation, tuple(args.linear_feature_normalisations))


def attentive_probe(train: torch.Tensor, evaluation: torch.Tensor, num_classes: int, args, device) -> SweptProbe:
    """The attentive probe on tokens `[N, T, D]`, over the grid of learning rates x weight decays."""
    width = train.shape[-1]
    fit = functools.partial(
        train_probes,
        lambda: AttentiveProbe(width, num_classes, attentive_num_heads(width)),
        training=MiniBatchTraining(args.attentive_epochs, args.attentive_batch_size, device),
        seed=args.seed,
    )
    settings = [
        {"learning_rate": learning_rate, "weight_decay": weight_decay}
        for learning_rate, weight_decay in itertools.product(
            args.attentive_learning_rates, args.attentive_weight_decays
        )
    ]
    return SweptProbe(fit, settings, train, evaluation)


def swept_probe_results(name: str, outcome: SweepResult, eval_labels: torch.Tensor) -> dict:
    """The results entries of one swept probe: its accuracies and its sweep; warns when a chosen value is at the
    edge of the sweep."""
    accuracy = top_k_accuracy(outcome.scores, eval_labels)
    details = {
        "sweep": outcome.table,
        "chosen": outcome.chosen,
        "at_sweep_edge": outcome.at_edge,
        "num_fit": outcome.num_fit,
        "num_validation": outcome.num_validation,
        "num_folds": outcome.num_folds,
    }
    for hyperparameter, note in sweep_edge_notes(details).items():
        logger.warning(
            f"The {name} probe's {note}: the best value may lie beyond the sweep; widen --{name}_{hyperparameter}s."
        )
    return {f"{name}_top1": accuracy["top1"], f"{name}_top5": accuracy["top5"], f"{name}_probe": details}


def run_probes(
    train: LabelledFeatures, evaluation: LabelledFeatures, num_classes: int, args: argparse.Namespace, device
) -> dict:
    """The linear probe on pooled features (and, on video tokens, the attentive probe), each with its sweep; kNN.

    Returns the results entries `{probe}_top1`, `{probe}_top5`, `{probe}_probe` (sweep), `knn_top1`, `knn_top5`
    and `timings`."""
    train_pooled, eval_pooled = train.pooled(), evaluation.pooled()
    probes = {"linear": linear_probe(train_pooled, eval_pooled, num_classes, args, device)}
    if args.modality == "video":
        probes["attentive"] = attentive_probe(train.features, evaluation.features, num_classes, args, device)

    results, timings = {}, {}
    for name, swept in probes.items():
        with timed(timings, f"{name}_probe_s"):
            outcome = sweep_and_refit(
                swept.fit,
                swept.settings,
                swept.train_features,
                train.labels,
                swept.eval_features,
                args.validation_fraction,
                args.seed,
                args.sweep_folds,
                swept.normalisations,
            )
        results |= swept_probe_results(name, outcome, evaluation.labels)
    with timed(timings, "knn_s"):
        scores = knn_scores(train_pooled, train.labels, eval_pooled, num_classes, args.knn_k, args.knn_temperature)
    accuracy = top_k_accuracy(scores, evaluation.labels)
    results["knn_top1"], results["knn_top5"] = accuracy["top1"], accuracy["top5"]
    results["timings"] = timings
    return results


def setting_text(value: float | str) -> str:
    """A swept value as the summary prints it: numbers in `g` format, named choices as they are."""
    return value if isinstance(value, str) else f"{value:g}"


def log_summary(results: dict) -> None:
    def percent(value):
        return "n/a" if value is None else f"{100 * value:.2f}%"

    lines = [
        "***** Probe results *****",
        f"  model          {results['model_name_or_path']}{' (random init)' if results['random_init'] else ''}",
        f"  data           {results['dataset']['name']}: train {results['train_data']}; eval {results['eval_data']}",
        f"  features       {results['features']['description']}, dim {results['features']['dim']}",
    ]
    for probe in ("linear", "attentive"):
        if f"{probe}_top1" not in results:
            continue
        details = results[f"{probe}_probe"]
        if details["sweep"]:
            folds = details["num_folds"]
            held_out = f"{folds}-fold cross-validation, " if folds > 1 else ""
            lines.append(
                f"  {probe} probe sweep (validation top-1, {held_out}{details['num_validation']} held-out examples):"
            )
        lines += [
            "    "
            + "  ".join(f"{name} {setting_text(value):<8}" for name, value in row.items() if name != "validation_top1")
            + f"  {percent(row['validation_top1'])}"
            for row in details["sweep"]
        ]
        chosen = ", ".join(f"{name} {setting_text(value)}" for name, value in details["chosen"].items())
        accuracies = f"top-1 {percent(results[f'{probe}_top1'])}  top-5 {percent(results[f'{probe}_top5'])}"
        lines.append(f"  {probe:<14} {accuracies}  ({chosen})")
        lines += [f"  {'':<14} {note}: the sweep should be widened" for note in sweep_edge_notes(details).values()]
    knn = f"kNN (k={results['knn']['k']})"
    lines.append(f"  {knn:<14} top-1 {percent(results['knn_top1'])}  top-5 {percent(results['knn_top5'])}")
    logger.info("\n".join(lines))


def main(argv=None) -> dict:
    """The `run_linear_probe.py` command: parse `argv`, probe, write `probe_results.json`; returns the results."""
    args = parse_args(argv)
    with scoped_accelerator_state():
        accelerator = Accelerator(mixed_precision=args.mixed_precision)
        configure_logging(accelerator.is_local_main_process)
        if accelerator.num_processes > 1:
            raise ValueError("Probing runs on one process: launch it with `python`, not several `accelerate` "
                             "processes.")
        return probe(args, accelerator)


def subset_seed(args: argparse.Namespace) -> int:
    """The seed of the low-shot subset: `--subset_seed`, else `--seed`."""
    return args.seed if args.subset_seed is None else args.subset_seed


def low_shot_training(train: LabelledFeatures, class_names: list[str], args: argparse.Namespace) -> LabelledFeatures:
    """The training features the probes may use: all of them, or the low-shot subset (`--samples_per_class`,
    `--label_fraction`)."""
    subset = low_shot_subset(train.labels, class_names, args.samples_per_class, args.label_fraction, subset_seed(args))
    return train if subset is None else train.subset(subset)


def sizes_record(
    args: argparse.Namespace, data: LabelledData, extracted: dict[str, ExtractedSplit], num_used: int
) -> dict:
    """How many examples each split gave and how many the probes used."""
    return {
        "train_extracted": len(extracted["train"].features),
        "train_used": num_used,
        "eval": len(extracted["eval"].features),
        # Unreadable images; for video, the unreadable, empty or too short videos left out of the dataset.
        "skipped": {
            role: extracted[role].features.num_skipped + split.num_unusable for role, split in data.splits().items()
        },
        "max_train_samples": args.max_train_samples,
        "max_eval_samples": args.max_eval_samples,
    }


def features_record(args: argparse.Namespace, extracted: dict[str, ExtractedSplit]) -> dict:
    """Which features the probes saw, and their cache files."""
    layers = describe_layers(args.feature_layers)
    pooling = "mean over tokens" if args.modality == "image" else "all tokens (mean over tokens for linear and kNN)"
    return {
        "layers": args.feature_layers,
        "description": f"{layers}, {pooling}",
        "dim": extracted["train"].features.features.shape[-1],
        "cached": {role: split.from_cache for role, split in extracted.items()},
        "cache_files": {role: str(split.cache_file) for role, split in extracted.items()},
    }


def results_record(
    args: argparse.Namespace,
    data: LabelledData,
    extracted: dict[str, ExtractedSplit],
    num_used: int,
    probe_results: dict,
) -> dict:
    """Everything `probe_results.json` records of a probe run but its timings and the model card it updated;
    `num_used` is the number of training examples the probes used, `probe_results` what `run_probes` returned."""
    train, evaluation = data.train, data.evaluation
    num_eval = len(extracted["eval"].features)
    return {
        "model_name_or_path": args.model_name_or_path,
        "random_init": args.random_init,
        "modality": args.modality,
        # Copies: the same splits may serve several probe runs (the pretraining probe's two encoders).
        "dataset": dict(data.description),
        "train_split": train.name,
        "eval_split": evaluation.name,
        "train_data": split_description(train.name, num_used, train.num_available, data.unit),
        "eval_data": split_description(evaluation.name, num_eval, evaluation.num_available, data.unit),
        "num_classes": len(data.class_names),
        "class_names": list(data.class_names),
        "sizes": sizes_record(args, data, extracted, num_used),
        "features": features_record(args, extracted),
        "low_shot": {
            "samples_per_class": args.samples_per_class,
            "label_fraction": args.label_fraction,
            "subset_seed": subset_seed(args),
        },
        "validation_fraction": args.validation_fraction,
        "sweep_folds": args.sweep_folds,
        "probe_training": probe_training_description(args),
        **probe_results,
        "knn": {"k": args.knn_k, "temperature": args.knn_temperature, "votes": "exp(cosine similarity / temperature)"},
        "seed": args.seed,
    }


def probe(args: argparse.Namespace, accelerator: Accelerator, data: LabelledData | None = None) -> dict:
    """Probe the encoder that `args` (from `parse_args`) names, on `accelerator`'s device, in this process alone.

    `data`: the labelled splits, when the caller has loaded them already (`load_labelled_data` for an encoder of
    the same input size), so that several encoders are probed on one load; by default they are loaded from `args`.
    Also what pretraining runs at its end (on its main process), with the training run's accelerator."""
    start = time.perf_counter()
    os.makedirs(args.output_dir, exist_ok=True)
    timings = {}

    with timed(timings, "load_model_s"):
        encoder = load_encoder(args).to(accelerator.device)
    with timed(timings, "load_data_s"):
        if data is None:
            data = load_labelled_data(args, encoder.config)
    extracted = {}
    for role, split in data.splits().items():
        with timed(timings, f"extract_{role}_s"):
            extracted[role] = split_features(role, split, data.input_name, encoder, args, accelerator)

    train = low_shot_training(extracted["train"].features, data.class_names, args)
    probe_results = run_probes(train, extracted["eval"].features, len(data.class_names), args, accelerator.device)
    timings |= probe_results.pop("timings")
    results = results_record(args, data, extracted, len(train), probe_results)
    card_path = maybe_update_model_card(results, args)
    results["model_card_updated"] = str(card_path) if card_path else None
    timings["total_s"] = round(time.perf_counter() - start, 3)
    results["timings"] = timings
    with open(Path(args.output_dir) / "probe_results.json", "w") as file:
        json.dump(results, file, indent=2)
    log_summary(results)
    return results
