# SPDX-License-Identifier: Apache-2.0
"""The labelled splits a probe trains and is evaluated on: images from a dataset or folders, video clips from
folders, with a shared class list."""

import argparse
import functools
from pathlib import Path

import datasets
import torch
from accelerate.logging import get_logger
from datasets import ClassLabel, Value
from torch.utils.data import Subset, default_collate

from modeling_ijepa.data.examples import SeededExamples
from modeling_ijepa.data.images import (
    DIGITS_NAME,
    SkipUnreadable,
    evaluation_transform,
    find_image_column,
    find_label_column,
    load_image_dataset,
    prepare_image_dataset,
)
from modeling_ijepa.evaluation.features import (
    fingerprint,
)
from modeling_ijepa.evaluation.subsets import random_subset
from modeling_ijepa.hub.export import vjepa2_resize_size

logger = get_logger(__name__)


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
    from modeling_ijepa.data.videos import VideoClipDataset, VideoClipTransform

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
