# SPDX-License-Identifier: Apache-2.0
"""The pretraining data pipeline: the dataset of a run (images per example or in memory, video clips), its mask
collator and the DataLoader that feeds the loop, gathered in a `TrainingData`.

The token grid (frame size, patch size, clip length, tubelet size) comes from the model's config alone
(`input_grid`): the crops, the clips and the masks are cut to the model being trained, whether it is new or loaded
from a checkpoint.
"""

from dataclasses import dataclass

import torch
from accelerate.logging import get_logger
from torch.utils.data import DataLoader, default_collate

from modeling_ijepa import (
    MultiBlock3DMaskCollator,
    MultiBlockMaskCollator,
)
from modeling_ijepa.data.examples import GlobalBatchMaskCollate, SeededExamples
from modeling_ijepa.data.fingerprint import data_fingerprint
from modeling_ijepa.data.images import (
    SkipUnreadable,
    find_image_column,
    load_image_dataset,
    prepare_image_dataset,
    pretraining_transform,
)
from modeling_ijepa.data.in_memory import GIB, InMemoryImages, InMemoryLimitExceeded, decode_images
from modeling_ijepa.data.skipping import check_skip_fraction
from modeling_ijepa.data.streaming import build_streaming_training_data

logger = get_logger(__name__)


def build_image_dataset(args, image_size: int):
    """(dataset of {"pixel_values"}, description) for the image modality; with --in_memory_data, (`InMemoryImages`,
    description) unless the decoded images would take more than --max_in_memory_gib. Sets `args.data_path` to the
    path taken (the model card's hyperparameters record it)."""
    splits = load_image_dataset(args.dataset_name, args.dataset_config_name, args.train_dir, args.cache_dir)
    if args.train_split not in splits:
        raise ValueError(f"No split `{args.train_split}` in the dataset; it has {list(splits)}. Use --train_split.")
    train = splits[args.train_split]
    image_column = find_image_column(train, args.image_column_name)
    if args.max_train_samples is not None:
        train = train.shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(train))))
    description = args.dataset_name or args.train_dir or "scikit-learn digits"
    args.data_path = "per-example"
    if args.in_memory_data:
        try:
            images = decode_images(train, image_column, image_size, int(args.max_in_memory_gib * GIB))
        except InMemoryLimitExceeded as error:
            args.data_path = "per-example (over the in-memory limit)"
            logger.warning(f"--in_memory_data: {error} Using the per-example path instead.")
        else:
            check_skip_fraction(len(train) - len(images), len(train), args.max_skip_fraction, "images read")
            args.data_path = "in-memory"
            examples = InMemoryImages(images, args.seed, scale=tuple(args.crop_scale),
                                      flip_probability=args.horizontal_flip, num_views=args.num_views)
            return examples, description
    transform = pretraining_transform(image_size, tuple(args.crop_scale), args.horizontal_flip, args.num_views)
    return prepare_image_dataset(train, image_column, transform), description


def build_video_dataset(args, image_size: int, num_frames: int):
    """(dataset of {"pixel_values_videos"} clips of `num_frames` frames at `image_size`, description)."""
    from modeling_ijepa.data.videos import VideoClipDataset, VideoClipTransform

    transform = VideoClipTransform(image_size, scale=tuple(args.crop_scale))
    if args.train_dir is None and args.dataset_name is None:
        raise ValueError("--modality video needs --train_dir (a folder of videos) or --dataset_name with a video column.")
    if args.train_dir is not None:
        dataset = VideoClipDataset.from_folder(
            args.train_dir, num_frames=num_frames, frame_step=args.frame_step, transform=transform
        )
    else:
        from datasets import load_dataset

        split = load_dataset(args.dataset_name, args.dataset_config_name, split=args.train_split, cache_dir=args.cache_dir)
        dataset = VideoClipDataset.from_hf_dataset(
            split, video_column=args.video_column_name or "video", num_frames=num_frames,
            frame_step=args.frame_step, transform=transform,
        )
    if dataset.num_skipped:
        logger.warning(f"Skipped {dataset.num_skipped} unusable videos: { {k: len(v) for k, v in dataset.skipped.items()} }")
        check_skip_fraction(
            dataset.num_skipped, len(dataset) + dataset.num_skipped, args.max_skip_fraction, "videos found"
        )
    if args.max_train_samples is not None and args.max_train_samples < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(args.max_train_samples))
    return dataset, args.train_dir or args.dataset_name


def input_grid(config) -> dict[str, int]:
    """The grid a model cuts its inputs into, read from its config: `image_size` and `patch_size`, and for video
    `num_frames` and `tubelet_size` (V-JEPA 2 keeps transformers' names `crop_size` and `frames_per_clip`)."""
    if config.model_type == "vjepa2":
        return {"image_size": config.crop_size, "patch_size": config.patch_size,
                "num_frames": config.frames_per_clip, "tubelet_size": config.tubelet_size}
    grid = {"image_size": config.image_size, "patch_size": config.patch_size}
    if hasattr(config, "tubelet_size"):
        grid |= {"num_frames": config.num_frames, "tubelet_size": config.tubelet_size}
    return grid


def build_mask_collator(args, grid: dict[str, int], seed: int):
    """The multi-block mask collator of the run's masking arguments over the model's token `grid`."""
    if "num_frames" in grid:
        return MultiBlock3DMaskCollator(
            num_frames=grid["num_frames"], image_size=grid["image_size"], patch_size=grid["patch_size"],
            tubelet_size=grid["tubelet_size"], random_subset=args.random_subset, seed=seed,
        )
    return MultiBlockMaskCollator(
        grid["image_size"], grid["patch_size"], num_targets=args.num_targets, target_scale=tuple(args.target_scale),
        target_aspect_ratio=tuple(args.target_aspect_ratio), context_scale=tuple(args.context_scale),
        min_context_patches=args.min_context_patches, allow_overlap=args.allow_overlap,
        full_range_placement=args.full_range_placement, random_subset=args.random_subset,
        num_mask_draws=args.num_mask_draws, seed=seed,
    )


@dataclass
class TrainingData:
    """What the training loop reads batches from.

    examples: the seeded examples (`SeededExamples` or `InMemoryImages`), told each epoch.
    collate: the DataLoader's collate function; told the epoch and first batch when it draws masks.
    dataloader: the DataLoader over `examples` (replace it with the one `accelerator.prepare` returns).
    description: the data set, as the model card names it.
    grid: the model's `input_grid`.
    """

    examples: torch.utils.data.Dataset
    collate: object
    dataloader: DataLoader
    description: str
    grid: dict[str, int]

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataloader)

    @property
    def num_examples(self) -> int:
        return len(self.examples)

    def fingerprint(self, split: str) -> dict:
        """What identifies the data in the run fingerprint (see `data.fingerprint.data_fingerprint`)."""
        return data_fingerprint(self.examples.dataset, self.description, split)

    def save_state(self, state: dict) -> None:
        """Nothing to add to a checkpoint: a resumed epoch skips the batches it had seen (`epoch_batches`)."""

    def load_state(self, state: dict) -> None:
        """Nothing to restore (see `save_state`)."""

    def epoch_batches(self, accelerator, epoch: int, skip: int = 0):
        """The batches of `epoch` after its first `skip` (a resumed epoch), with that epoch's data and masks."""
        self.examples.set_epoch(epoch)
        self.dataloader.set_epoch(epoch)
        if hasattr(self.collate, "set_epoch"):
            self.collate.set_epoch(epoch, start_batch=skip)
        return accelerator.skip_first_batches(self.dataloader, skip) if skip else self.dataloader


def build_training_data(args, accelerator, config, masks: bool = True) -> TrainingData:
    """The run's `TrainingData` for a model with `config`: its dataset with crops (and clips) of the model's grid,
    and, with `masks`, the masks of every global batch drawn over that grid (without, batches of pixels alone).
    With --streaming, a `StreamingTrainingData` (see `data.streaming`), which offers the same interface."""
    grid = input_grid(config)
    if getattr(args, "streaming", False):
        mask_collator = build_mask_collator(args, grid, seed=args.seed) if masks else None
        return build_streaming_training_data(args, accelerator, grid, mask_collator)
    if "num_frames" in grid:
        dataset, description = build_video_dataset(args, grid["image_size"], grid["num_frames"])
    else:
        dataset, description = build_image_dataset(args, grid["image_size"])
    examples = dataset if isinstance(dataset, InMemoryImages) else SeededExamples(dataset, args.seed)
    collate = default_collate
    if masks:  # every process draws the masks of the whole global batch with the same seed and keeps its rows
        collate = GlobalBatchMaskCollate(build_mask_collator(args, grid, seed=args.seed),
                                         args.per_device_train_batch_size, accelerator.num_processes,
                                         accelerator.process_index, num_views=args.num_views)
    if "num_frames" not in grid and not isinstance(examples, InMemoryImages):
        # Images are decoded lazily and an unreadable one is dropped at collation (in memory, when decoded); video
        # datasets drop unreadable clips when they are built and replace a clip that fails later.
        collate = SkipUnreadable(collate)
    if len(examples) < args.per_device_train_batch_size * accelerator.num_processes:
        raise ValueError(
            f"The dataset has {len(examples)} examples, fewer than one batch "
            f"({args.per_device_train_batch_size} per device x {accelerator.num_processes} processes)."
        )
    dataloader = DataLoader(
        examples, batch_size=args.per_device_train_batch_size, shuffle=True, drop_last=True,
        collate_fn=collate, num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    return TrainingData(examples, collate, dataloader, description, grid)
