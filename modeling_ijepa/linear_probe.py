# SPDX-License-Identifier: Apache-2.0
"""Frozen-feature evaluation of an I-JEPA / V-JEPA / V-JEPA 2 encoder: linear probe, attentive probe (video), kNN.

    python run_linear_probe.py --model_name_or_path outputs/ijepa --dataset_name ../shared/data/cifar10 \
        --output_dir outputs/probe_cifar10

    python run_linear_probe.py --modality video --model_name_or_path outputs/vjepa \
        --train_dir ../shared/data/video_tiny/labelled/train --validation_dir ../shared/data/video_tiny/labelled/test \
        --output_dir outputs/probe_video

The encoder is frozen. Features of the training and eval splits are extracted once and cached in `--output_dir`
as `features_{train,eval}_<hash>.safetensors`; the hash covers the model files (path, size, modification time),
`--random_init`, the dataset path or id, split, selected rows, class names, preprocessing, `--feature_layers` and
the precision, so a rerun that changes none of them loads the cache (data files edited in place under the same path
are not detected: use a new `--output_dir`). Low-shot subsets are drawn from the cached training features.

Probes: on mean-pooled features, L2-regularised logistic regression (L-BFGS to convergence, the L2 strength swept);
on video tokens, also the V-JEPA attentive probe (AdamW, learning rate x weight decay swept). Video clips have the
encoder's training length and frame size, center-cropped (V-JEPA 2: after the resize of its exported video
processor, so that the features are those stock transformers gives). The setting is chosen
on a stratified held-out part of the training split (never on the eval split), refit on the whole training split
and evaluated once on the eval split; a weighted kNN runs on the same features. Results go to
`--output_dir/probe_results.json` and, for a local model folder with a `README.md` model card (and trained weights,
not `--random_init`), into the card's model-index, with how much of each split was used and, when a chosen setting
is the lowest or highest value swept, a note saying so (the run also warns: the sweep should be widened).
"""

import argparse
import functools
import itertools
import json
import os
import time
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from datasets import ClassLabel, Value
from torch.utils.data import DataLoader, Subset, default_collate
from transformers import AutoConfig, AutoModel, VJEPA2Model

from .arguments import HelpFormatter
from .checkpointing import check_loaded_weights
from .convert_official import convert_checkpoint
from .export import vjepa2_resize_size
from .image_data import (
    DIGITS_NAME,
    SkipUnreadable,
    evaluation_transform,
    find_image_column,
    find_label_column,
    load_image_dataset,
    prepare_image_dataset,
)
from .logging_setup import configure_logging
from .metrics import TopKAccuracy
from .model_card import plural
from .modeling_ijepa import IJepaModel
from .modeling_vjepa import VJepaModel
from .probing import (
    AttentiveProbe,
    CardMetric,
    MiniBatchTraining,
    attentive_num_heads,
    cached_features,
    extract_features,
    fingerprint,
    fit_logistic_regression,
    knn_scores,
    low_shot_subset,
    model_files_fingerprint,
    random_subset,
    sweep_and_refit,
    timed,
    train_probes,
    update_model_card,
)
from .training import SeededExamples

logger = get_logger(__name__)

# Encoder classes for `--random_init`: ours with fixed sin-cos positions (stock transformers' `IJepaModel` would draw
# its position table at random instead); V-JEPA 2 has no position table (RoPE), so stock `VJEPA2Model` is exact.
ENCODER_CLASSES = {"ijepa": IJepaModel, "vjepa": VJepaModel, "vjepa2": VJEPA2Model}
MODALITY_OF_MODEL_TYPE = {"ijepa": "image", "vjepa": "video", "vjepa2": "video", "vit_mae": "image"}
# Encoders with a CLS token before the patch tokens: it is left out of the average over patches, and MAE's
# random masking is switched off so that the encoder sees every patch.
PREFIX_TOKENS = {"vit_mae": 1}
LOAD_OVERRIDES = {"vit_mae": {"mask_ratio": 0.0}}
# Stock `VJEPA2Model` also runs its predictor unless told not to; probes need the encoder alone.
FORWARD_ARGUMENTS = {"vjepa2": {"skip_predictor": True}}


PROBE_EXAMPLES = """examples:
  # an exported encoder on CIFAR-10
  python run_linear_probe.py --model_name_or_path outputs/cifar10 --dataset_name uoft-cs/cifar10 \\
      --output_dir outputs/probe_cifar10

  # the baseline: the same architecture at random initialisation, low-shot (10 labelled digits per class)
  python run_linear_probe.py --model_name_or_path outputs/digits --random_init --samples_per_class 10 \\
      --output_dir outputs/probe_digits_random

  # a reference V-JEPA checkpoint on labelled video folders
  python run_linear_probe.py --modality video --model_name_or_path vitl16.pth.tar --num_attention_heads 16 \\
      --train_dir videos/train --validation_dir videos/val --output_dir outputs/probe_video"""


def build_parser() -> argparse.ArgumentParser:
    """The arguments of `run_linear_probe.py`."""
    parser = argparse.ArgumentParser(
        prog="run_linear_probe.py", description=__doc__, epilog=PROBE_EXAMPLES, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--modality", choices=["image", "video"], default="image", help="Images or videos (video needs folders)."
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model_name_or_path",
        required=True,
        help="A model folder (exported encoder, pretraining model, or pretraining run output), a Hub id, or a "
        "reference .pth.tar checkpoint (its target encoder is probed).",
    )
    model.add_argument(
        "--random_init",
        action="store_true",
        help="Probe the same architecture with fresh random weights (seeded by --seed), as a baseline.",
    )
    model.add_argument(
        "--num_attention_heads", type=int, default=None, help="Encoder heads, for a .pth.tar checkpoint."
    )
    model.add_argument(
        "--num_frames", type=int, default=None, help="Video .pth.tar: frames per clip, when the checkpoint cannot tell."
    )
    model.add_argument(
        "--feature_layers",
        type=int,
        default=1,
        help="1: the last layer's output (after the final LayerNorm). K > 1: the last K layers concatenated, each "
        "layer-normed without affine parameters.",
    )
    model.add_argument(
        "--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="For feature extraction."
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name", type=str, default=None,
        help=f"Hub id or local Hub-layout folder; with neither it nor --train_dir, {DIGITS_NAME}.",
    )
    data.add_argument("--dataset_config_name", type=str, default=None, help="Configuration of --dataset_name.")
    data.add_argument(
        "--train_dir", type=str, default=None, help="Folder with one sub-folder of images/videos per class."
    )
    data.add_argument(
        "--validation_dir", type=str, default=None, help="Same layout; evaluated instead of --eval_split."
    )
    data.add_argument("--image_column_name", type=str, default=None, help="Image column; detected when absent.")
    data.add_argument("--label_column_name", type=str, default=None, help="Label column; detected when absent.")
    data.add_argument("--train_split", type=str, default="train", help="Split the probes are fit on.")
    data.add_argument("--eval_split", type=str, default="test", help="Split the probes are evaluated on, once.")
    data.add_argument("--max_train_samples", type=int, default=None, help="Seeded random subset of the training split.")
    data.add_argument("--max_eval_samples", type=int, default=None, help="Seeded random subset of the eval split.")
    data.add_argument("--frame_step", type=int, default=4, help="Video: frames between two sampled frames of a clip.")
    data.add_argument("--cache_dir", type=str, default=None, help="datasets cache.")
    data.add_argument("--per_device_eval_batch_size", type=int, default=64, help="Batch size of feature extraction.")
    data.add_argument(
        "--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes (0: load in the main one)."
    )

    probe = parser.add_argument_group("probes")
    probe.add_argument(
        "--validation_fraction", type=float, default=0.1, help="Held out of the training split for the sweep."
    )
    probe.add_argument(
        "--linear_weight_decays",
        type=float,
        nargs="+",
        default=[1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
        help="L2 strengths swept for the linear probe (logistic regression: mean cross-entropy + wd/2 * |W|^2).",
    )
    probe.add_argument("--linear_max_iter", type=int, default=1000, help="L-BFGS iterations of the linear probe.")
    probe.add_argument(
        "--attentive_learning_rates", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2],
        help="Video: AdamW learning rates swept for the attentive probe.",
    )
    probe.add_argument(
        "--attentive_weight_decays", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1],
        help="Video: AdamW weight decays swept for the attentive probe.",
    )
    probe.add_argument("--attentive_epochs", type=int, default=100, help="Video: training epochs of the attentive probe.")
    probe.add_argument("--attentive_batch_size", type=int, default=256, help="Video: batch size of the attentive probe.")
    probe.add_argument("--knn_k", type=int, default=20, help="Neighbours of the weighted kNN classifier.")
    probe.add_argument(
        "--knn_temperature", type=float, default=0.07, help="Temperature of the kNN's similarity weights."
    )
    low_shot = probe.add_mutually_exclusive_group()
    low_shot.add_argument(
        "--samples_per_class", type=int, default=None, help="Low-shot: N labelled examples per class."
    )
    low_shot.add_argument(
        "--label_fraction", type=float, default=None, help="Low-shot: a stratified fraction of labels."
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--output_dir", type=str, default="outputs/linear_probe",
        help="Where the feature cache and probe_results.json go.",
    )
    output.add_argument("--seed", type=int, default=0, help="Seed of the subsets, the held-out part and the probes.")
    output.add_argument(
        "--no_update_model_card", action="store_true", help="Leave the model folder's README.md model card as it is."
    )
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    if not 0 < args.validation_fraction < 1:
        raise ValueError(f"--validation_fraction must lie in (0, 1), got {args.validation_fraction}.")
    if args.label_fraction is not None and not 0 < args.label_fraction <= 1:
        raise ValueError(f"--label_fraction must lie in (0, 1], got {args.label_fraction}.")
    if args.samples_per_class is not None and args.samples_per_class < 1:
        raise ValueError(f"--samples_per_class must be positive, got {args.samples_per_class}.")
    if args.feature_layers < 1:
        raise ValueError(f"--feature_layers must be positive, got {args.feature_layers}.")
    if args.modality == "video" and (args.train_dir is None or args.validation_dir is None):
        raise ValueError(
            "--modality video needs --train_dir and --validation_dir (folders with a sub-folder per class)."
        )
    for name in ("train_dir", "validation_dir"):
        folder = getattr(args, name)
        if folder is not None and not Path(folder).is_dir():
            raise ValueError(f"--{name} {folder} is not a folder.")


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


def load_encoder(args: argparse.Namespace) -> torch.nn.Module:
    """The frozen encoder to probe, in eval mode.

    A file is a reference checkpoint, converted with its target encoder kept. A folder or Hub id goes through
    `AutoModel`, which gives the target encoder of a saved pretraining model (stored as the base model) and the
    encoder itself otherwise. With `--random_init` only the configuration is kept.
    """
    source = Path(args.model_name_or_path).expanduser()
    if source.is_file():
        if args.num_attention_heads is None:
            raise ValueError(
                f"{source} is a reference checkpoint: converting it needs --num_attention_heads (the head count is "
                "not stored in its tensors)."
            )
        encoder = convert_checkpoint(source, args.num_attention_heads, num_frames=args.num_frames).export_encoder()
        config = encoder.config
    elif args.model_name_or_path.startswith((".", "/", "~")) and not source.exists():
        raise ValueError(f"--model_name_or_path {args.model_name_or_path}: no such file or folder.")
    elif args.random_init:
        config = AutoConfig.from_pretrained(args.model_name_or_path)
    else:
        model_type = AutoConfig.from_pretrained(args.model_name_or_path).model_type
        encoder, loading_info = AutoModel.from_pretrained(
            args.model_name_or_path, output_loading_info=True, **LOAD_OVERRIDES.get(model_type, {})
        )
        config = encoder.config
        holds_pretraining = any(name.endswith("ForPreTraining") for name in config.architectures or [])
        # Every encoder tensor must be in the files (a missing one would be probed at its random initialisation);
        # a pretraining folder also holds the other networks, which are left unloaded.
        check_loaded_weights(encoder, loading_info, args.model_name_or_path, tolerate_unexpected=holds_pretraining)
        if holds_pretraining:
            logger.info(
                f"{args.model_name_or_path} holds a pretraining model: probing its target encoder (the context "
                "encoder and predictor weights are left unloaded)."
            )
    if MODALITY_OF_MODEL_TYPE.get(config.model_type) != args.modality:
        expected = [kind for kind, modality in MODALITY_OF_MODEL_TYPE.items() if modality == args.modality]
        raise ValueError(
            f"{args.model_name_or_path} is a `{config.model_type}` model, which does not take {args.modality} "
            f"input (--modality {args.modality} needs one of {expected})."
        )
    if args.random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            encoder = ENCODER_CLASSES[config.model_type](config)
    encoder.requires_grad_(False)
    return encoder.eval()


def model_identity(args: argparse.Namespace) -> dict:
    identity = model_files_fingerprint(args.model_name_or_path)
    if args.random_init:
        identity["random_init_seed"] = args.seed
    return identity


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def select(dataset, max_examples: int | None, seed: int):
    """A seeded random subset (`Dataset.select` or `Subset`) and a hash of the chosen rows, for the cache key."""
    indices = random_subset(len(dataset), max_examples, seed)
    if indices is None:
        return dataset, None
    subset = dataset.select(indices) if isinstance(dataset, datasets.Dataset) else Subset(dataset, indices)
    return subset, fingerprint({"indices": indices})


def class_names_of(dataset: datasets.Dataset, label_column: str) -> list[str]:
    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    if isinstance(feature, Value) and feature.dtype.startswith(("int", "uint")):
        return [str(label) for label in range(max(dataset.unique(label_column)) + 1)]
    raise ValueError(
        f"The label column `{label_column}` must hold class indices (ClassLabel or integers), not {feature}."
    )


def align_classes(dataset: datasets.Dataset, label_column: str, class_names: list[str], where: str) -> datasets.Dataset:
    """Renumber an eval folder's labels to the training classes, matching class names (folders may differ)."""
    names = class_names_of(dataset, label_column)
    if names == class_names:
        return dataset
    unknown = sorted(set(names) - set(class_names))
    if unknown:
        raise ValueError(f"{where} has classes the training split lacks: {unknown} (training classes: {class_names}).")
    return dataset.align_labels_with_mapping({name: index for index, name in enumerate(class_names)}, label_column)


def collate_labelled_images(examples: list[dict], label_column: str) -> dict:
    return {
        "pixel_values": default_collate([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example[label_column] for example in examples], dtype=torch.long),
    }


def load_image_splits(args: argparse.Namespace, image_size: int) -> dict:
    """The training and eval splits, ready for feature extraction, with what identifies them."""
    raw = load_image_dataset(args.dataset_name, args.dataset_config_name, args.train_dir, args.cache_dir)
    eval_split = "validation" if args.validation_dir else args.eval_split
    for split in [args.train_split] if args.validation_dir else [args.train_split, eval_split]:
        if split not in raw:
            raise ValueError(f"No split `{split}` in the dataset; its splits are {list(raw)}.")
    train = raw[args.train_split]
    image_column = find_image_column(train, args.image_column_name)
    label_column = find_label_column(train, args.label_column_name)
    class_names = class_names_of(train, label_column)
    if args.validation_dir:
        evaluation = load_image_dataset(train_dir=args.validation_dir, cache_dir=args.cache_dir)["train"]
        evaluation = align_classes(evaluation, label_column, class_names, f"--validation_dir {args.validation_dir}")
    else:
        evaluation = raw[eval_split]
        find_image_column(evaluation, image_column)
        find_label_column(evaluation, label_column)

    transform = evaluation_transform(image_size)
    collate = SkipUnreadable(functools.partial(collate_labelled_images, label_column=label_column))
    dataset_name = args.dataset_name or ("imagefolder" if args.train_dir else DIGITS_NAME)
    source = {
        "dataset_name": str(Path(dataset_name).resolve()) if Path(dataset_name).exists() else dataset_name,
        "dataset_config_name": args.dataset_config_name,
        "train_dir": args.train_dir and str(Path(args.train_dir).resolve()),
        "validation_dir": args.validation_dir and str(Path(args.validation_dir).resolve()),
        "image_column": image_column,
        "label_column": label_column,
        "transform": repr(transform),
    }
    splits = {}
    for role, split, dataset, max_examples in (
        ("train", args.train_split, train, args.max_train_samples),
        ("eval", eval_split, evaluation, args.max_eval_samples),
    ):
        num_rows = len(dataset)
        dataset, selection = select(dataset, max_examples, args.seed)
        dataset = prepare_image_dataset(dataset, image_column, transform, keep_columns=(label_column,))
        splits[role] = {
            "split": split,
            "num_available": num_rows,
            "dataset": dataset,
            "collate_fn": collate,
            "identity": source | {"split": split, "num_rows": num_rows, "selection": selection, "classes": class_names},
        }
    return {
        "splits": splits,
        "class_names": class_names,
        "description": {
            "name": dataset_name,
            "config": args.dataset_config_name,
            "train_dir": args.train_dir,
            "validation_dir": args.validation_dir,
            "image_column": image_column,
            "label_column": label_column,
        },
        "input_name": "pixel_values",
    }


def evaluation_clips(config) -> tuple[int, int, int]:
    """`(frames per clip, frame size, short side before the center crop)` of a video encoder's evaluation clips: the
    training clip length and frame size. V-JEPA 2 (`crop_size`, `frames_per_clip`) resizes as its exported video
    processor does, for the features stock users get (`vjepa2_resize_size`); V-JEPA resizes to the frame size."""
    if config.model_type == "vjepa2":
        return config.frames_per_clip, config.crop_size, vjepa2_resize_size(config.crop_size)
    return config.num_frames, config.image_size, config.image_size


def load_video_splits(args: argparse.Namespace, config) -> dict:
    """Clips of the class folders `--train_dir` and `--validation_dir`: one clip per video (the training clip
    length, frames `--frame_step` apart, at a start seeded by `--seed` and the video's index), resized and
    center-cropped to the training frame size (`evaluation_clips`)."""
    from modeling_ijepa.video_data import VideoClipDataset, VideoClipTransform

    num_frames, frame_size, resize_size = evaluation_clips(config)
    transform = VideoClipTransform(frame_size, train=False, resize_size=resize_size)
    splits, class_names = {}, None
    for role, folder, max_examples in (
        ("train", args.train_dir, args.max_train_samples),
        ("eval", args.validation_dir, args.max_eval_samples),
    ):
        dataset = VideoClipDataset.from_folder(folder, num_frames, args.frame_step, transform)
        if dataset.class_names is None:
            raise ValueError(f"{folder} holds videos directly; put them in one sub-folder per class.")
        if class_names is None:
            class_names = dataset.class_names
        elif dataset.class_names != class_names:
            # Labels are sorted folder names: renumber them by name when the eval folder has fewer classes.
            unknown = sorted(set(dataset.class_names) - set(class_names))
            if unknown:
                raise ValueError(
                    f"{folder} has classes the training folder lacks: {unknown} (training: {class_names})."
                )
            dataset.labels = [class_names.index(dataset.class_names[label]) for label in dataset.labels]
        num_videos, num_unusable = len(dataset), dataset.num_skipped
        dataset, selection = select(SeededExamples(dataset, args.seed), max_examples, args.seed)
        splits[role] = {
            "split": Path(folder).name,
            "num_available": num_videos + num_unusable,
            "dataset": dataset,
            "collate_fn": default_collate,
            "num_unusable": num_unusable,
            "identity": {
                "folder": str(Path(folder).resolve()),
                "num_videos": num_videos,
                "selection": selection,
                "num_frames": num_frames,
                "frame_step": args.frame_step,
                "clip_seed": args.seed,
                "classes": class_names,
                "transform": repr(transform),
            },
        }
    return {
        "splits": splits,
        "class_names": class_names,
        "description": {"name": "videofolder", "train_dir": args.train_dir, "validation_dir": args.validation_dir},
        "input_name": "pixel_values_videos",
    }


# ----------------------------------------------------------------------------------------------------------------
# Features and probes
# ----------------------------------------------------------------------------------------------------------------


def split_features(role: str, split: dict, data: dict, encoder, args, accelerator) -> tuple[dict, bool, Path]:
    """Features of one split, from the cache in `--output_dir` when the same extraction was done before."""
    pool_tokens = args.modality == "image"  # video keeps every token for the attentive probe
    key = fingerprint(
        {
            "model": model_identity(args),
            "data": split["identity"],
            "feature_layers": args.feature_layers,
            "pool_tokens": pool_tokens,
            "mixed_precision": accelerator.mixed_precision,
        }
    )
    path = Path(args.output_dir) / f"features_{role}_{key}.safetensors"

    def extract() -> dict:
        dataloader = DataLoader(
            split["dataset"],
            batch_size=args.per_device_eval_batch_size,
            collate_fn=split["collate_fn"],
            num_workers=args.dataloader_num_workers,
        )
        return extract_features(
            encoder,
            dataloader,
            data["input_name"],
            args.feature_layers,
            pool_tokens,
            accelerator,
            description=f"Extracting {role} features ({split['split']})",
            skip_tokens=PREFIX_TOKENS.get(encoder.config.model_type, 0),
            forward_arguments=FORWARD_ARGUMENTS.get(encoder.config.model_type),
        )

    features, was_cached = cached_features(path, extract)
    return features, was_cached, path


def top_k_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 and top-5 (`None` when there are 5 classes or fewer, where it would always be 1)."""
    results = TopKAccuracy(keep_in_memory=True).compute(predictions=scores.numpy(), references=labels.numpy())
    return {"top1": results["top1"], "top5": results.get("top5")}


def run_probes(train: dict, evaluation: dict, num_classes: int, args, device) -> dict:
    """The linear probe on pooled features (and, on video tokens, the attentive probe), each with its sweep; kNN."""
    train_labels, eval_labels = train["labels"], evaluation["labels"]
    video = args.modality == "video"
    train_pooled = train["features"].mean(dim=1) if video else train["features"]
    eval_pooled = evaluation["features"].mean(dim=1) if video else evaluation["features"]

    def fit_linear(features, labels, settings):
        return [
            fit_logistic_regression(
                features, labels, num_classes, setting["weight_decay"], args.linear_max_iter, device
            )
            for setting in settings
        ]

    probes = {
        "linear": (
            fit_linear,
            [{"weight_decay": value} for value in args.linear_weight_decays],
            train_pooled,
            eval_pooled,
        )
    }
    if video:
        width = train["features"].shape[-1]
        fit_attentive = functools.partial(
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
        probes["attentive"] = (fit_attentive, settings, train["features"], evaluation["features"])

    results, timings = {}, {}
    for name, (fit_probes, settings, train_features, eval_features) in probes.items():
        with timed(timings, f"{name}_probe_s"):
            outcome = sweep_and_refit(
                fit_probes, settings, train_features, train_labels, eval_features, args.validation_fraction, args.seed
            )
        accuracy = top_k_accuracy(outcome.scores, eval_labels)
        results[f"{name}_top1"], results[f"{name}_top5"] = accuracy["top1"], accuracy["top5"]
        results[f"{name}_probe"] = {
            "sweep": outcome.table,
            "chosen": outcome.chosen,
            "at_sweep_edge": outcome.at_edge,
            "num_fit": outcome.num_fit,
            "num_validation": outcome.num_validation,
        }
        for hyperparameter, note in sweep_edge_notes(results[f"{name}_probe"]).items():
            logger.warning(
                f"The {name} probe's {note}: the best value may lie beyond the sweep; widen --{name}_{hyperparameter}s."
            )
    with timed(timings, "knn_s"):
        scores = knn_scores(train_pooled, train_labels, eval_pooled, num_classes, args.knn_k, args.knn_temperature)
    accuracy = top_k_accuracy(scores, eval_labels)
    results["knn_top1"], results["knn_top5"] = accuracy["top1"], accuracy["top5"]
    results["timings"] = timings
    return results


# ----------------------------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------------------------


def split_description(split: str, num_used: int, num_available: int, unit: str) -> str:
    """What a probe saw of a split: "test split, 2,000 of 10,000 images", or "test split, 10,000 images" for all."""
    if num_used == num_available:
        return f"{split} split, {plural(num_used, unit)}"
    return f"{split} split, {num_used:,} of {plural(num_available, unit)}"


def sweep_edge_notes(details: dict) -> dict[str, str]:
    """hyperparameter -> "chosen weight_decay 0.0001 is the lowest value swept (0.0001 to 0.01)", for each one
    that a probe (`details`: its entry in the results) chose at the edge of its sweep."""
    notes = {}
    for name, edge in details["at_sweep_edge"].items():
        swept = [row[name] for row in details["sweep"]]
        notes[name] = (
            f"chosen {name} {details['chosen'][name]:g} is the {edge} value swept ({min(swept):g} to {max(swept):g})"
        )
    return notes


def probe_training_description(args) -> dict:
    description = {
        "linear": "multinomial logistic regression on standardised features, full-batch L-BFGS from zero weights, "
        f"at most {args.linear_max_iter} iterations; sweep over the L2 strength"
    }
    if args.modality == "video":
        description["attentive"] = (
            f"cross-attention pooling (one learned query) + LayerNorm + linear, on standardised tokens; AdamW with "
            f"cosine decay, {args.attentive_epochs} epochs, batch {args.attentive_batch_size}; sweep over learning "
            "rate x weight decay"
        )
    return description


def low_shot_description(args) -> str:
    if args.samples_per_class is not None:
        return f" ({args.samples_per_class} per class)"
    if args.label_fraction is not None and args.label_fraction < 1:
        return f" ({args.label_fraction:.0%} of labels)"
    return ""


def card_metrics(results: dict, args) -> list[CardMetric]:
    suffix = low_shot_description(args)
    probe_args = {"feature_layers": args.feature_layers, "training_data": results["train_data"]}
    if args.samples_per_class is not None:
        probe_args["samples_per_class"] = args.samples_per_class
    if args.label_fraction is not None:
        probe_args["label_fraction"] = args.label_fraction

    def swept_probe_args(probe: str) -> dict:
        details = results[f"{probe}_probe"]
        notes = sweep_edge_notes(details)
        return probe_args | details["chosen"] | ({"at_sweep_edge": "; ".join(notes.values())} if notes else {})

    metrics = [CardMetric(f"Linear probe top-1 accuracy{suffix}", results["linear_top1"], swept_probe_args("linear"))]
    if "attentive_top1" in results:
        attentive_args = swept_probe_args("attentive")
        metrics.append(CardMetric(f"Attentive probe top-1 accuracy{suffix}", results["attentive_top1"], attentive_args))
    knn_args = probe_args | {"k": args.knn_k, "temperature": args.knn_temperature}
    metrics.append(CardMetric(f"kNN top-1 accuracy (k={args.knn_k}){suffix}", results["knn_top1"], knn_args))
    return metrics


def maybe_update_model_card(results: dict, data: dict, args) -> Path | None:
    """Record the accuracies in the model folder's card, when it has one and the probed weights are its own."""
    card_path = Path(args.model_name_or_path).expanduser() / "README.md"
    if args.no_update_model_card or args.random_init or not card_path.is_file():
        return None
    name = data["description"]["name"]
    dataset_type = Path(name).name if Path(name).exists() else name
    update_model_card(
        card_path,
        card_metrics(results, args),
        task_type=f"{args.modality}-classification",
        dataset_type=dataset_type,
        # The pretty name says how much of the split was evaluated; `dataset_split` stays a loadable split name.
        dataset_name=f"{dataset_type} ({results['eval_data']})",
        dataset_config=args.dataset_config_name,
        dataset_split=results["eval_split"],
    )
    logger.info(f"Added the probe accuracies to the model-index of {card_path}.")
    return card_path


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
            lines.append(f"  {probe} probe sweep (validation top-1 on {details['num_validation']} held-out examples):")
        lines += [
            "    "
            + "  ".join(f"{name} {value:<8g}" for name, value in row.items() if name != "validation_top1")
            + f"  {percent(row['validation_top1'])}"
            for row in details["sweep"]
        ]
        chosen = ", ".join(f"{name} {value:g}" for name, value in details["chosen"].items())
        accuracies = f"top-1 {percent(results[f'{probe}_top1'])}  top-5 {percent(results[f'{probe}_top5'])}"
        lines.append(f"  {probe:<14} {accuracies}  ({chosen})")
        lines += [f"  {'':<14} {note}: the sweep should be widened" for note in sweep_edge_notes(details).values()]
    knn = f"kNN (k={results['knn']['k']})"
    lines.append(f"  {knn:<14} top-1 {percent(results['knn_top1'])}  top-5 {percent(results['knn_top5'])}")
    logger.info("\n".join(lines))


def main(argv=None) -> dict:
    """The `run_linear_probe.py` command: parse `argv`, probe, write `probe_results.json`; returns the results."""
    args = parse_args(argv)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    configure_logging(accelerator.is_local_main_process)
    if accelerator.num_processes > 1:
        raise ValueError("Probing runs on one process: launch it with `python`, not several `accelerate` processes.")
    return probe(args, accelerator)


def probe(args: argparse.Namespace, accelerator: Accelerator) -> dict:
    """Probe the encoder that `args` (from `parse_args`) names, on `accelerator`'s device, in this process alone.

    Also what pretraining runs at its end (on its main process), with the training run's accelerator."""
    start = time.perf_counter()
    os.makedirs(args.output_dir, exist_ok=True)
    timings = {}

    with timed(timings, "load_model_s"):
        encoder = load_encoder(args).to(accelerator.device)
    with timed(timings, "load_data_s"):
        if args.modality == "image":
            data = load_image_splits(args, encoder.config.image_size)
        else:
            data = load_video_splits(args, encoder.config)
    features, cached, cache_files = {}, {}, {}
    for role, split in data["splits"].items():
        with timed(timings, f"extract_{role}_s"):
            features[role], cached[role], cache_files[role] = split_features(
                role, split, data, encoder, args, accelerator
            )

    train = features["train"]
    class_names = data["class_names"]
    subset = low_shot_subset(train["labels"], class_names, args.samples_per_class, args.label_fraction, args.seed)
    if subset is not None:
        train = {"features": train["features"][subset], "labels": train["labels"][subset]}
    results = run_probes(train, features["eval"], len(class_names), args, accelerator.device)
    timings |= results.pop("timings")

    unit = "image" if args.modality == "image" else "video"
    train_split, eval_split = data["splits"]["train"], data["splits"]["eval"]
    train_data = split_description(train_split["split"], len(train["labels"]), train_split["num_available"], unit)
    eval_data = split_description(
        eval_split["split"], len(features["eval"]["labels"]), eval_split["num_available"], unit
    )
    layers = "last layer" if args.feature_layers == 1 else f"last {args.feature_layers} layers, concatenated"
    pooling = "mean over tokens" if args.modality == "image" else "all tokens (mean over tokens for linear and kNN)"
    results = {
        "model_name_or_path": args.model_name_or_path,
        "random_init": args.random_init,
        "modality": args.modality,
        "dataset": data["description"],
        "train_split": data["splits"]["train"]["split"],
        "eval_split": data["splits"]["eval"]["split"],
        "train_data": train_data,
        "eval_data": eval_data,
        "num_classes": len(class_names),
        "class_names": class_names,
        "sizes": {
            "train_extracted": len(features["train"]["labels"]),
            "train_used": len(train["labels"]),
            "eval": len(features["eval"]["labels"]),
            # Unreadable images; for video, the unreadable, empty or too short videos left out of the dataset.
            "skipped": {
                role: int(features[role]["num_skipped"]) + split.get("num_unusable", 0)
                for role, split in data["splits"].items()
            },
            "max_train_samples": args.max_train_samples,
            "max_eval_samples": args.max_eval_samples,
        },
        "features": {
            "layers": args.feature_layers,
            "description": f"{layers}, {pooling}",
            "dim": features["train"]["features"].shape[-1],
            "cached": cached,
            "cache_files": {role: str(path) for role, path in cache_files.items()},
        },
        "low_shot": {"samples_per_class": args.samples_per_class, "label_fraction": args.label_fraction},
        "validation_fraction": args.validation_fraction,
        "probe_training": probe_training_description(args),
        **results,
        "knn": {"k": args.knn_k, "temperature": args.knn_temperature, "votes": "exp(cosine similarity / temperature)"},
        "seed": args.seed,
    }
    card_path = maybe_update_model_card(results, data, args)
    results["model_card_updated"] = str(card_path) if card_path else None
    timings["total_s"] = round(time.perf_counter() - start, 3)
    results["timings"] = timings
    with open(Path(args.output_dir) / "probe_results.json", "w") as file:
        json.dump(results, file, indent=2)
    log_summary(results)
    return results
