# SPDX-License-Identifier: Apache-2.0
"""The labelled splits a probe trains and is evaluated on: images from a dataset or folders, video clips from
folders, with a shared class list."""

import argparse
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import torch
from datasets import ClassLabel, DatasetDict, Value
from torch.utils.data import Dataset, Subset, default_collate

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
from modeling_ijepa.evaluation.features import fingerprint
from modeling_ijepa.evaluation.subsets import random_subset
from modeling_ijepa.hub.export import vjepa2_resize_size

if TYPE_CHECKING:  # the video modules need the `video` extra, imported only when video is probed
    from modeling_ijepa.data.videos import VideoClipDataset

logger = logging.getLogger(__name__)  # probing runs on one process


@dataclass
class LabelledSplit:
    """One labelled split, ready for feature extraction.

    Attributes:
        name: the split's name in results and model cards (`"test"`; for a folder, its name).
        dataset: the examples used (after `--max_{train,eval}_samples`); `collate_fn` turns a list of them into a
            batch `{input_name: [B, C, H, W] images or [B, C, T, H, W] clips, "labels": [B] int64}`, with
            `num_skipped` for images that could not be read.
        collate_fn: see `dataset`.
        num_available: examples in the split before the subset (for video, the unusable videos included).
        identity: what the feature cache key covers of this split (source, rows, classes, preprocessing).
        num_unusable: videos left out of the dataset before the subset (unreadable, empty or too short).
    """

    name: str
    dataset: Dataset
    collate_fn: Callable[[list[dict]], dict]
    num_available: int
    identity: dict
    num_unusable: int = 0


@dataclass
class LabelledData:
    """The training and eval splits of a probe, with the classes they share.

    Attributes:
        train: the split the probes are fit on.
        evaluation: the split they are evaluated on, once.
        class_names: label `i` is `class_names[i]`, in both splits.
        description: the data source as `probe_results.json` records it (`name`, folders, columns).
        input_name: the batch key of the model input: `pixel_values` or `pixel_values_videos`.
        unit: what one example is, for counts: `"image"` or `"video"`.
    """

    train: LabelledSplit
    evaluation: LabelledSplit
    class_names: list[str]
    description: dict
    input_name: str
    unit: str

    def splits(self) -> dict[str, LabelledSplit]:
        """The two splits by role, `"train"` and `"eval"` (the names of the feature cache files)."""
        return {"train": self.train, "eval": self.evaluation}


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
    """`{"pixel_values": [B, C, H, W], "labels": [B] int64}` from decoded examples."""
    return {
        "pixel_values": default_collate([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example[label_column] for example in examples], dtype=torch.long),
    }


def labelled_split(
    name: str,
    dataset: datasets.Dataset | Dataset,
    max_examples: int | None,
    seed: int,
    collate_fn: Callable,
    identity: dict,
    prepare: Callable | None = None,
    num_unusable: int = 0,
) -> LabelledSplit:
    """The seeded subset of `dataset` (at most `max_examples`) that a probe uses, then prepared for extraction by
    `prepare` (after the subset, so that only the rows used are cast). `identity`, what the cache key covers, gains
    the rows chosen."""
    num_examples = len(dataset)
    dataset, selection = select(dataset, max_examples, seed)
    return LabelledSplit(
        name=name,
        dataset=dataset if prepare is None else prepare(dataset),
        collate_fn=collate_fn,
        num_available=num_examples + num_unusable,
        identity=identity | {"selection": selection},
        num_unusable=num_unusable,
    )


def image_eval_dataset(
    args: argparse.Namespace, raw: DatasetDict, image_column: str, label_column: str, class_names: list[str]
) -> datasets.Dataset:
    """The eval split: the `--validation_dir` folder (labels renumbered to the training classes) or
    `--eval_split` of the dataset (with the training split's columns)."""
    if args.validation_dir:
        evaluation = load_image_dataset(train_dir=args.validation_dir, cache_dir=args.cache_dir)["train"]
        return align_classes(evaluation, label_column, class_names, f"--validation_dir {args.validation_dir}")
    evaluation = raw[args.eval_split]
    find_image_column(evaluation, image_column)
    find_label_column(evaluation, label_column)
    return evaluation


def image_source(args: argparse.Namespace, image_column: str, label_column: str) -> dict:
    """Where the images come from, as `probe_results.json` records it."""
    return {
        "name": args.dataset_name or ("imagefolder" if args.train_dir else DIGITS_NAME),
        "config": args.dataset_config_name,
        "train_dir": args.train_dir,
        "validation_dir": args.validation_dir,
        "image_column": image_column,
        "label_column": label_column,
    }


def image_identity(source: dict, transform) -> dict:
    """What identifies the images of both splits in the feature cache key: the source with resolved paths (a
    local dataset is the same wherever the command runs from) and the preprocessing."""
    name = source["name"]
    return {
        "dataset_name": str(Path(name).resolve()) if Path(name).exists() else name,
        "dataset_config_name": source["config"],
        "train_dir": source["train_dir"] and str(Path(source["train_dir"]).resolve()),
        "validation_dir": source["validation_dir"] and str(Path(source["validation_dir"]).resolve()),
        "image_column": source["image_column"],
        "label_column": source["label_column"],
        "transform": repr(transform),
    }


def load_image_splits(args: argparse.Namespace, image_size: int, raw: DatasetDict | None = None) -> LabelledData:
    """The training and eval splits, ready for feature extraction at `image_size`, with what identifies them.

    `raw` is the dataset that `--dataset_name`/`--train_dir` name, when the caller has loaded it already."""
    if raw is None:
        raw = load_image_dataset(args.dataset_name, args.dataset_config_name, args.train_dir, args.cache_dir)
    eval_split = "validation" if args.validation_dir else args.eval_split
    for split in [args.train_split] if args.validation_dir else [args.train_split, eval_split]:
        if split not in raw:
            raise ValueError(f"No split `{split}` in the dataset; its splits are {list(raw)}.")
    train = raw[args.train_split]
    image_column = find_image_column(train, args.image_column_name)
    label_column = find_label_column(train, args.label_column_name)
    class_names = class_names_of(train, label_column)
    evaluation = image_eval_dataset(args, raw, image_column, label_column, class_names)

    transform = evaluation_transform(image_size)
    source = image_source(args, image_column, label_column)
    prepare = functools.partial(
        prepare_image_dataset, image_column=image_column, transform=transform, keep_columns=(label_column,)
    )
    collate_fn = SkipUnreadable(functools.partial(collate_labelled_images, label_column=label_column))

    def split(name: str, dataset: datasets.Dataset, max_examples: int | None) -> LabelledSplit:
        identity = image_identity(source, transform) | {"split": name, "num_rows": len(dataset), "classes": class_names}
        return labelled_split(name, dataset, max_examples, args.seed, collate_fn, identity, prepare)

    return LabelledData(
        train=split(args.train_split, train, args.max_train_samples),
        evaluation=split(eval_split, evaluation, args.max_eval_samples),
        class_names=class_names,
        description=source,
        input_name="pixel_values",
        unit="image",
    )


def evaluation_clips(config) -> tuple[int, int, int]:
    """`(frames per clip, frame size, short side before the center crop)` of a video encoder's evaluation clips: the
    training clip length and frame size. V-JEPA 2 (`crop_size`, `frames_per_clip`) resizes as its exported video
    processor does, for the features stock users get (`vjepa2_resize_size`); V-JEPA resizes to the frame size."""
    if config.model_type == "vjepa2":
        return config.frames_per_clip, config.crop_size, vjepa2_resize_size(config.crop_size)
    return config.num_frames, config.image_size, config.image_size


def class_folder_clips(
    folder: str, num_frames: int, frame_step: int, transform, class_names: list[str] | None = None
) -> "VideoClipDataset":
    """A `VideoClipDataset` of one folder with a sub-folder per class; given the training `class_names`, its labels
    are renumbered to them by name (the eval folder may lack some classes)."""
    from modeling_ijepa.data.videos import VideoClipDataset

    dataset = VideoClipDataset.from_folder(folder, num_frames, frame_step, transform)
    if dataset.class_names is None:
        raise ValueError(f"{folder} holds videos directly; put them in one sub-folder per class.")
    if class_names is not None and dataset.class_names != class_names:
        # Labels are sorted folder names: renumber them by name when the eval folder has fewer classes.
        unknown = sorted(set(dataset.class_names) - set(class_names))
        if unknown:
            raise ValueError(f"{folder} has classes the training folder lacks: {unknown} (training: {class_names}).")
        dataset.labels = [class_names.index(dataset.class_names[label]) for label in dataset.labels]
    return dataset


def load_video_splits(args: argparse.Namespace, config) -> LabelledData:
    """Clips of the class folders `--train_dir` and `--validation_dir`: one clip per video (the training clip
    length, frames `--frame_step` apart, at a start seeded by `--seed` and the video's index), resized and
    center-cropped to the training frame size (`evaluation_clips`)."""
    from modeling_ijepa.data.videos import VideoClipTransform

    num_frames, frame_size, resize_size = evaluation_clips(config)
    transform = VideoClipTransform(frame_size, train=False, resize_size=resize_size)
    train = class_folder_clips(args.train_dir, num_frames, args.frame_step, transform)
    class_names = train.class_names
    evaluation = class_folder_clips(args.validation_dir, num_frames, args.frame_step, transform, class_names)
    clips = {
        "num_frames": num_frames,
        "frame_step": args.frame_step,
        "clip_seed": args.seed,
        "classes": class_names,
        "transform": repr(transform),
    }

    def split(folder: str, videos: "VideoClipDataset", max_examples: int | None) -> LabelledSplit:
        identity = {"folder": str(Path(folder).resolve()), "num_videos": len(videos)} | clips
        return labelled_split(
            Path(folder).name,
            SeededExamples(videos, args.seed),
            max_examples,
            args.seed,
            default_collate,
            identity,
            num_unusable=videos.num_skipped,
        )

    return LabelledData(
        train=split(args.train_dir, train, args.max_train_samples),
        evaluation=split(args.validation_dir, evaluation, args.max_eval_samples),
        class_names=class_names,
        description={"name": "videofolder", "train_dir": args.train_dir, "validation_dir": args.validation_dir},
        input_name="pixel_values_videos",
        unit="video",
    )


def load_labelled_data(args: argparse.Namespace, config) -> LabelledData:
    """The labelled splits for an encoder of `config`, at its input size: images or video clips (`--modality`)."""
    if args.modality == "image":
        return load_image_splits(args, config.image_size)
    return load_video_splits(args, config)
