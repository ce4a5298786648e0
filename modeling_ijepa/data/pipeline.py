# SPDX-License-Identifier: Apache-2.0
"""The pretraining data pipeline: the dataset of a run (images per example or in memory, video clips), its mask
collator and the DataLoader that feeds the loop."""

import torch
from accelerate.logging import get_logger
from torch.utils.data import DataLoader

from modeling_ijepa import (
    MultiBlock3DMaskCollator,
    MultiBlockMaskCollator,
)
from modeling_ijepa.data.examples import GlobalBatchMaskCollate, SeededExamples
from modeling_ijepa.data.images import (
    SkipUnreadable,
    find_image_column,
    load_image_dataset,
    prepare_image_dataset,
    pretraining_transform,
)
from modeling_ijepa.data.in_memory import GIB, InMemoryImages, InMemoryLimitExceeded, decode_images
from modeling_ijepa.data.skipping import check_skip_fraction

logger = get_logger(__name__)


def build_image_dataset(args):
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
            images = decode_images(train, image_column, args.image_size, int(args.max_in_memory_gib * GIB))
        except InMemoryLimitExceeded as error:
            args.data_path = "per-example (over the in-memory limit)"
            logger.warning(f"--in_memory_data: {error} Using the per-example path instead.")
        else:
            check_skip_fraction(len(train) - len(images), len(train), args.max_skip_fraction, "images read")
            args.data_path = "in-memory"
            examples = InMemoryImages(images, args.seed, scale=tuple(args.crop_scale),
                                      flip_probability=args.horizontal_flip)
            return examples, description
    transform = pretraining_transform(args.image_size, tuple(args.crop_scale), args.horizontal_flip)
    return prepare_image_dataset(train, image_column, transform), description


def build_video_dataset(args):
    from modeling_ijepa.data.videos import VideoClipDataset, VideoClipTransform

    transform = VideoClipTransform(args.image_size, scale=tuple(args.crop_scale))
    if args.train_dir is None and args.dataset_name is None:
        raise ValueError("--modality video needs --train_dir (a folder of videos) or --dataset_name with a video column.")
    if args.train_dir is not None:
        dataset = VideoClipDataset.from_folder(
            args.train_dir, num_frames=args.num_frames, frame_step=args.frame_step, transform=transform
        )
    else:
        from datasets import load_dataset

        split = load_dataset(args.dataset_name, args.dataset_config_name, split=args.train_split, cache_dir=args.cache_dir)
        dataset = VideoClipDataset.from_hf_dataset(
            split, video_column=args.video_column_name or "video", num_frames=args.num_frames,
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


def build_mask_collator(args, seed: int):
    if args.modality == "video":
        return MultiBlock3DMaskCollator(
            num_frames=args.num_frames, image_size=args.image_size, patch_size=args.patch_size,
            tubelet_size=args.tubelet_size, random_subset=args.random_subset, seed=seed,
        )
    return MultiBlockMaskCollator(
        args.image_size, args.patch_size, num_targets=args.num_targets, target_scale=tuple(args.target_scale),
        target_aspect_ratio=tuple(args.target_aspect_ratio), context_scale=tuple(args.context_scale),
        min_context_patches=args.min_context_patches, allow_overlap=args.allow_overlap,
        full_range_placement=args.full_range_placement, random_subset=args.random_subset,
        num_mask_draws=args.num_mask_draws, seed=seed,
    )


def build_dataloader(args, accelerator):
    """The training DataLoader and the two objects whose epoch it must be told: the seeded examples and the
    collate function. Returns `(examples, collate, dataloader, description)`."""
    dataset, description = build_video_dataset(args) if args.modality == "video" else build_image_dataset(args)
    examples = dataset if isinstance(dataset, InMemoryImages) else SeededExamples(dataset, args.seed)
    # Every process draws the masks of the whole global batch with the same seed and keeps its rows.
    collate = GlobalBatchMaskCollate(
        build_mask_collator(args, seed=args.seed), args.per_device_train_batch_size, accelerator.num_processes,
        accelerator.process_index,
    )
    if args.modality == "image" and not isinstance(examples, InMemoryImages):
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
    return examples, collate, dataloader, description
