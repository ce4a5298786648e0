#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""I-JEPA (images) and V-JEPA (video) self-supervised pretraining with Accelerate.

    accelerate launch run_pretraining.py --config configs/cifar10_vit_tiny.yaml --output_dir outputs/cifar10

With no dataset argument it pretrains on scikit-learn's bundled digits, a real image set that needs no
download. At the end `--output_dir` holds the target encoder in transformers' format (loadable with
`AutoModel.from_pretrained` and the image-feature-extraction pipeline), the full pretraining model in
`pretraining/`, the training curves and a model card; `--push_to_hub` uploads it.
"""

import contextlib
import functools
import json
import math
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedConfig

from modeling_ijepa import (
    IJepaConfig,
    IJepaForPreTraining,
    MultiBlock3DMaskCollator,
    MultiBlockMaskCollator,
    VJepa2Config,
    VJepa2ForPreTraining,
    VJepaConfig,
    VJepaForPreTraining,
)
from modeling_ijepa.arguments import parse_args
from modeling_ijepa.checkpointing import (
    check_finite_state,
    check_loaded_weights,
    data_fingerprint,
    latest_checkpoint,
    load_checkpoint,
    run_fingerprint,
    save_checkpoint,
)
from modeling_ijepa.export import export_vjepa2, save_encoder_for_transformers
from modeling_ijepa.image_data import (
    SkipUnreadable,
    find_image_column,
    load_image_dataset,
    prepare_image_dataset,
    pretraining_transform,
)
from modeling_ijepa.in_memory_images import GIB, InMemoryImages, InMemoryLimitExceeded, decode_images, pixel_values_of
from modeling_ijepa.logging_setup import configure_logging
from modeling_ijepa.model_card import plot_training_curves, write_model_card
from modeling_ijepa.optimization import NonFiniteLossError, PretrainingStep, build_optimizer
from modeling_ijepa.pretraining_probe import probe_against_random_init
from modeling_ijepa.schedules import Schedules
from modeling_ijepa.run_control import LOCK_FILE, PREEMPTION_EXIT_CODE, OutputDirLock, Preempted, PreemptionHandler
from modeling_ijepa.training import (
    GlobalBatchMaskCollate,
    SeededExamples,
    check_data_was_usable,
    check_skip_fraction,
    collapse_statistics,
    mixed_precision_in_use,
    out_of_time,
)

logger = get_logger(__name__)
MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "model_cards" / "jepa_pretraining.md"
VJEPA2_CARD_NOTE = MODEL_CARD_TEMPLATE.with_name("vjepa2_note.md")


# With --on_nonfinite_loss skip, this many skipped batches in a row mean the run has diverged: stop it.
MAX_CONSECUTIVE_NONFINITE = 10

# Settings besides the model, data, batch, seed and schedules that change what a step computes: a resumed run must
# keep them (they go into the run fingerprint that every checkpoint stores).
TRAJECTORY_ARGUMENTS = (
    "modality", "crop_scale", "num_frames", "frame_step", "num_targets", "target_scale", "target_aspect_ratio",
    "context_scale", "min_context_patches", "allow_overlap", "full_range_placement", "random_subset", "adam_beta1",
    "adam_beta2", "adam_epsilon", "max_grad_norm", "clip_grad_after_warmup", "gradient_accumulation_steps",
    "horizontal_flip", "num_mask_draws",
)

# What a run holds until it ends: the lock on --output_dir and the preemption signal handlers. `main` releases them;
# a process that ends otherwise releases them by ending.
RUN_RESOURCES = contextlib.ExitStack()


# ----------------------------------------------------------------------------------------------- data


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
    from modeling_ijepa.video_data import VideoClipDataset, VideoClipTransform

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


# ---------------------------------------------------------------------------------------------- model


# (config class, pretraining class) of each model type the script trains.
PRETRAINING_CLASSES = {
    "ijepa": (IJepaConfig, IJepaForPreTraining),
    "vjepa": (VJepaConfig, VJepaForPreTraining),
    "vjepa2": (VJepa2Config, VJepa2ForPreTraining),
}
# The method and paper of each model type, as the model card names them.
METHODS = {
    "ijepa": ("I-JEPA", "Assran et al., CVPR 2023"),
    "vjepa": ("V-JEPA", "Bardes et al., 2024"),
    "vjepa2": ("V-JEPA 2", "Assran et al., 2025"),
}
MODEL_TYPE_FLAGS = {
    "ijepa": "--modality image", "vjepa": "--modality video --architecture vjepa",
    "vjepa2": "--modality video --architecture vjepa2",
}
# The size arguments, which I-JEPA and V-JEPA configs name as the script does (and `intermediate_size` for
# --mlp_ratio); V-JEPA 2 keeps the field names of transformers' own `vjepa2` config.
SIZE_ARGUMENTS = (
    "image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "predictor_hidden_size",
    "predictor_num_hidden_layers", "predictor_num_attention_heads",
)
VJEPA2_FIELDS = {
    "image_size": "crop_size", "num_frames": "frames_per_clip", "patch_size": "patch_size",
    "tubelet_size": "tubelet_size", "hidden_size": "hidden_size", "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads", "mlp_ratio": "mlp_ratio",
    "predictor_hidden_size": "pred_hidden_size", "predictor_num_hidden_layers": "pred_num_hidden_layers",
    "predictor_num_attention_heads": "pred_num_attention_heads",
}


def model_type_of(args) -> str:
    """The model type a run trains: `ijepa` for images; for video `vjepa` or `vjepa2`, as --architecture says."""
    return "ijepa" if args.modality == "image" else args.architecture


def build_model(args):
    """A new pretraining model with the size arguments, or the one saved at --model_name_or_path. An I-JEPA model
    takes this run's loss weights (--variance_loss_weight, --covariance_loss_weight) either way."""
    loss_weights = {name: getattr(args, name) for name in ("variance_loss_weight", "covariance_loss_weight")}
    if args.model_name_or_path:
        model = load_pretraining_model(args)
        if model_type_of(args) == "ijepa":
            for name, value in loss_weights.items():
                setattr(model.config, name, value)
        return model
    model_type = model_type_of(args)
    config_class, model_class = PRETRAINING_CLASSES[model_type]
    if model_type == "vjepa2":
        fields = {field: getattr(args, name) for name, field in VJEPA2_FIELDS.items()}
        # As in the reference, the predictor has as many heads as the encoder unless told otherwise.
        fields["pred_num_attention_heads"] = args.predictor_num_attention_heads or args.num_attention_heads
        config = VJepa2Config(**fields)
    else:
        extra = loss_weights if model_type == "ijepa" else {
            "num_frames": args.num_frames, "tubelet_size": args.tubelet_size, "uniform_power": args.uniform_power,
        }
        config = config_class(
            image_size=args.image_size, patch_size=args.patch_size, hidden_size=args.hidden_size,
            num_hidden_layers=args.num_hidden_layers, num_attention_heads=args.num_attention_heads,
            intermediate_size=int(args.hidden_size * args.mlp_ratio), predictor_hidden_size=args.predictor_hidden_size,
            predictor_num_hidden_layers=args.predictor_num_hidden_layers,
            predictor_num_attention_heads=args.predictor_num_attention_heads, **extra,
        )
    return model_class._from_config(config, attn_implementation=args.attn_implementation)


def pretraining_source(model_name_or_path: str) -> str:
    """`model_name_or_path`, or its `pretraining/` sub-folder where it has one: a run's --output_dir (the exported
    encoder at its top) and a converter's output (the export in `encoder/`) keep the pretraining model there."""
    nested = Path(model_name_or_path) / "pretraining"
    return str(nested) if (nested / "config.json").is_file() else model_name_or_path


def load_pretraining_model(args):
    """The pretraining model saved at --model_name_or_path (see `pretraining_source`), to continue pretraining it:
    context encoder, predictor and target encoder, every tensor present and finite.

    Its sizes replace the size arguments, so that the model card and the saved hyperparameters describe it. The
    data and the masks are built from --image_size, --patch_size, --num_frames and --tubelet_size before the model,
    so it must have been trained with them; V-JEPA 2 alone takes the run's frame size and clip length (RoPE reads
    positions off the token grid, with no table of a fixed size: its reference cool-down continues a 16-frame
    model on 64 frames)."""
    model_type = model_type_of(args)
    source = pretraining_source(args.model_name_or_path)
    saved = PreTrainedConfig.get_config_dict(source)[0]
    saved_type, architectures = saved.get("model_type"), saved.get("architectures") or []
    if saved_type != model_type:
        flags = MODEL_TYPE_FLAGS.get(saved_type)
        raise ValueError(
            f"--model_name_or_path {source} holds a model of type `{saved_type}`, but this run trains "
            f"{METHODS[model_type][0]} (`{model_type}`; {MODEL_TYPE_FLAGS[model_type]})"
            + (f": to continue it, pass {flags}." if flags else ".")
        )
    if not any(name.endswith("ForPreTraining") for name in architectures):
        raise ValueError(
            f"--model_name_or_path {source} holds {architectures or 'a model'} without its predictor and context "
            "encoder: continuing pretraining needs the pretraining model, the `pretraining/` folder beside an export."
        )
    model_class = PRETRAINING_CLASSES[model_type][1]
    geometry = {"crop_size": args.image_size, "frames_per_clip": args.num_frames} if model_type == "vjepa2" else {}
    model, loading_info = model_class.from_pretrained(
        source, output_loading_info=True, attn_implementation=args.attn_implementation, **geometry
    )
    check_loaded_weights(model, loading_info, source)
    if model_type == "vjepa2":
        model.config.check_sizes()
    adopt_saved_sizes(args, model.config, model_type, source)
    return model


def adopt_saved_sizes(args, config, model_type: str, source: str) -> None:
    """Set the size arguments to those of a loaded model's `config`, logging each change; refuse a model whose token
    grid differs from the one the data and masks are built on."""
    if model_type == "vjepa2":
        saved = {name: getattr(config, field) for name, field in VJEPA2_FIELDS.items()}
        grid = ("patch_size", "tubelet_size")
    else:
        names = [*SIZE_ARGUMENTS, *(("num_frames", "tubelet_size") if model_type == "vjepa" else ())]
        saved = {name: getattr(config, name) for name in names}
        saved["mlp_ratio"] = config.intermediate_size / config.hidden_size
        grid = ("image_size", "patch_size", "num_frames", "tubelet_size")
    changes = []
    for name, value in saved.items():
        if getattr(args, name) == value:
            continue
        if name in grid:
            raise ValueError(
                f"{source} was trained with {name} {value}, but this run builds its data and masks with --{name} "
                f"{getattr(args, name)}: pass --{name} {value}."
            )
        changes.append(f"--{name} {value} (was {getattr(args, name)})")
        setattr(args, name, value)
    if changes:
        logger.info(f"Sizes of {source}: {', '.join(changes)}.")


def build_schedules(args, steps_per_epoch: int) -> Schedules:
    total_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    warmup_steps = args.warmup_steps if args.warmup_steps is not None else int(args.warmup_epochs * steps_per_epoch)
    schedule_steps = int(args.ipe_scale * total_steps)
    return Schedules(
        total_steps=total_steps, warmup_steps=min(warmup_steps, schedule_steps), lr=args.learning_rate,
        start_lr=args.start_lr, final_lr=args.final_lr, weight_decay=args.weight_decay,
        final_weight_decay=args.final_weight_decay, ema_momentum=args.ema_momentum,
        final_ema_momentum=args.final_ema_momentum, momentum_schedule=args.momentum_schedule,
        ipe_scale=args.ipe_scale,
    )


def build_step(args, accelerator, model, optimizer, schedules: Schedules) -> PretrainingStep:
    # The reference V-JEPA clips only once the 0-based epoch index is past the warmup epochs.
    clip_after = args.warmup_epochs if args.clip_grad_after_warmup else None
    return PretrainingStep(
        accelerator, model, optimizer, schedules, max_grad_norm=args.max_grad_norm, clip_grad_after_epoch=clip_after,
        on_nonfinite_loss=args.on_nonfinite_loss,
    )


def model_inputs(batch: dict, modality: str) -> dict:
    pixel_key = "pixel_values_videos" if modality == "video" else "pixel_values"
    return {pixel_key: batch[pixel_key], "context_indices": batch["context_indices"], "target_indices": batch["target_indices"]}


def first_targets(targets):
    return targets[0] if isinstance(targets, list) else targets


# ----------------------------------------------------------------------------------------------- save


def export_final_model(accelerator, model, args, log_history, card_values, card_data) -> None:
    """Write the exported encoder at the root of --output_dir, the pretraining model beside it, the curves
    and the model card; then push to the Hub if asked."""
    output_dir = Path(args.output_dir)
    unwrapped = accelerator.unwrap_model(model)
    check_finite_state(unwrapped, None, output_dir / "pretraining")
    unwrapped.save_pretrained(output_dir / "pretraining")
    if args.modality == "image":
        save_encoder_for_transformers(unwrapped.export_encoder(), output_dir)
    elif args.architecture == "vjepa2":
        export_vjepa2(unwrapped, output_dir)
    else:
        unwrapped.export_encoder().save_pretrained(output_dir)
    with open(output_dir / "training_log.jsonl", "w") as file:
        file.writelines(json.dumps(entry) + "\n" for entry in log_history)
    plot_training_curves(log_history, output_dir / "training_curves.png")
    if args.probe_after_training and args.modality == "image":
        card_values["probe"] = probe_against_random_init(args, accelerator, output_dir)
    write_model_card(output_dir, MODEL_CARD_TEMPLATE, card_values, card_data)
    if args.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi(token=args.hub_token)
        repo_id = api.create_repo(args.hub_model_id, exist_ok=True, private=args.hub_private_repo).repo_id
        api.upload_folder(
            repo_id=repo_id, folder_path=output_dir, commit_message="Upload pretrained JEPA encoder",
            ignore_patterns=["checkpoint-*", "checkpoint-*/**", ".tmp-checkpoint-*", ".tmp-checkpoint-*/**", LOCK_FILE,
                             "probe/**/features_*"],
        )
        logger.info(f"Pushed {output_dir} to https://huggingface.co/{repo_id}")


def schedule_summary(schedules: Schedules, last_step: int) -> dict[str, str]:
    """The learning rate, weight decay and EMA momentum of optimizer step 1 and of the last trained step."""
    steps = {"first": 1, "last": max(1, last_step)}
    # Momenta sit just below 1: they need more digits than the learning rate and weight decay to be told apart.
    return {f"{name}_{which}": f"{value:.6g}" if name == "momentum" else f"{value:.3g}"
            for which, step in steps.items() for name, value in schedules.values(step).items()} | {
        "peak_lr": f"{schedules.lr:.3g}"}


def card_contents(args, accelerator, state, num_examples, description, global_batch, schedules, wall_clock):
    image = args.modality == "image"
    model_type = model_type_of(args)
    # I-JEPA and V-JEPA 2 export in an architecture that transformers ships; V-JEPA needs our remote code.
    stock_loadable = model_type in ("ijepa", "vjepa2")
    method, paper = METHODS[model_type]
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    card_data = {
        "library_name": "transformers" if stock_loadable else "modeling_ijepa",
        "pipeline_tag": "image-feature-extraction" if image else "video-classification",
        "license": "apache-2.0",
        "tags": [model_type, "jepa", "self-supervised-learning", "vision", "modeling_ijepa"],
    }
    if args.dataset_name and not Path(args.dataset_name).exists():
        card_data["datasets"] = [args.dataset_name]
    hyperparameters = {key: (list(value) if isinstance(value, tuple) else value) for key, value in vars(args).items()
                       if key not in ("hub_token",)}
    values = {
        "model_name": Path(args.hub_model_id or args.output_dir).name,
        "repo_id": args.hub_model_id or args.output_dir,
        # The template spells out the size once, in the encoder row.
        "architecture": "ViT",
        "method": method,
        "paper": paper,
        "model_type": model_type,
        "stock_loadable": stock_loadable,
        # How stock `VJEPA2Model`'s predictor differs from training, for its users.
        "stock_note": VJEPA2_CARD_NOTE.read_text() if model_type == "vjepa2" else "",
        "dataset_description": description,
        "num_examples": num_examples,
        "global_step": state["global_step"],
        "images_seen": state["images_seen"],
        "unit": "image" if image else "clip",
        "epochs": f"{state['global_step'] * args.gradient_accumulation_steps / max(1, state['batches_per_epoch']):.2f}",
        "global_batch_size": global_batch,
        "num_processes": accelerator.num_processes,
        "per_device_batch": args.per_device_train_batch_size,
        "accumulation": args.gradient_accumulation_steps,
        "hidden_size": args.hidden_size,
        "num_layers": args.num_hidden_layers,
        "num_heads": args.num_attention_heads,
        "patch_size": args.patch_size,
        "image_size": args.image_size,
        "num_patches": (args.image_size // args.patch_size) ** 2,
        "predictor_hidden_size": args.predictor_hidden_size,
        "predictor_layers": args.predictor_num_hidden_layers,
        "masking": (
            f"target blocks: {args.num_targets}, scale {tuple(args.target_scale)}, aspect {tuple(args.target_aspect_ratio)}; "
            f"context scale {tuple(args.context_scale)}" if image else "V-JEPA multi-block 3D: 8 short-range + 2 long-range blocks"
        ),
        # The values the first and the last trained step really used (the schedules count steps from 1).
        "schedule": schedule_summary(schedules, state["global_step"]),
        "warmup_steps": schedules.warmup_steps, "momentum_schedule": args.momentum_schedule,
        "precision": mixed_precision_in_use(accelerator)
        + (f", float32 matmul precision {args.matmul_precision}" if args.matmul_precision else ""),
        "final_loss": f"{losses[-1]:.4f}" if losses else "n/a",
        "wall_clock": f"{wall_clock / 60:.1f} min",
        "hyperparameters": hyperparameters,
    }
    return values, card_data


# ----------------------------------------------------------------------------------------------- training


class SkippedBatches:
    """`--on_nonfinite_loss skip`: the step skips a batch whose loss is not finite; MAX_CONSECUTIVE_NONFINITE
    skipped batches in a row mean the run has diverged, and stop it."""

    def __init__(self):
        self.consecutive = 0

    def count(self, skipped: bool, step: int, epoch: int) -> None:
        if not skipped:
            self.consecutive = 0
            return
        self.consecutive += 1
        message = f"Non-finite loss at optimizer step {step} (epoch {epoch})."
        if self.consecutive >= MAX_CONSECUTIVE_NONFINITE:
            raise NonFiniteLossError(f"{message} {self.consecutive} batches in a row had a non-finite "
                                     "loss: the run has diverged. The last good checkpoint is kept.")
        logger.warning(message + " Skipping this batch.", main_process_only=False)


def build_accelerator(args) -> Accelerator:
    accelerator = Accelerator(
        # Without an accelerator, processes started by torchrun (`accelerate launch --multi_gpu`) join a gloo group.
        cpu=not torch.accelerator.is_available(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    configure_logging(accelerator.is_local_main_process)
    logger.info(accelerator.state, main_process_only=False)
    if mixed_precision_in_use(accelerator) != accelerator.mixed_precision:
        logger.warning(f"--mixed_precision {accelerator.mixed_precision} is not supported on {accelerator.device.type}: "
                       "training in float32 (the model card says so).")
    return accelerator


def prepare_output_dir(args, accelerator) -> Path:
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(output_dir, os.W_OK):
            raise PermissionError(f"--output_dir {output_dir} is not writable.")
        RUN_RESOURCES.enter_context(OutputDirLock(output_dir))
    return output_dir


def initial_state(args, output_dir: Path, model, optimizer, batches_per_epoch: int, run: dict) -> dict:
    """The run's counters, log and fingerprint `run`: fresh, or read from `--resume_from_checkpoint` (a folder or
    `latest`), which must have been written by the same run (see `checkpointing.check_resume`)."""
    state = {"global_step": 0, "epoch": 0, "batches_in_epoch": 0, "images_seen": 0, "num_skipped": 0,
             "log_history": [], "batches_per_epoch": batches_per_epoch, "wall_clock": 0.0, "run": run}
    checkpoint = args.resume_from_checkpoint
    if checkpoint == "latest":
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is None:
            logger.info(f"No checkpoint in {output_dir}: starting from scratch.")
    if checkpoint:
        state = load_checkpoint(checkpoint, model, optimizer, run, allow_run_changes=args.allow_changed_run)
        state["run"] = run
        logger.info(f"Resumed from {checkpoint} at step {state['global_step']} (epoch {state['epoch']}, "
                    f"batch {state['batches_in_epoch']}).")
    return state


def last_checkpoint_name(output_dir: Path) -> str | None:
    checkpoint = latest_checkpoint(output_dir)
    return str(checkpoint) if checkpoint is not None else None


def log_entry(accelerator, result, state: dict, epoch: int, monitor: bool) -> dict:
    """One line of `training_log.jsonl` after optimizer step `state["global_step"]`, with the learning rate, weight
    decay and momentum that step used (`result` is its `StepResult`); with `monitor`, the collapse statistics of the
    target features too."""
    loss = accelerator.reduce(result.loss.detach(), "mean").item()
    entry = {"step": state["global_step"], "epoch": epoch, "loss": loss,
             "lr": result.lr, "weight_decay": result.weight_decay, "momentum": result.momentum,
             "images_seen": state["images_seen"], "skipped_examples": state["num_skipped"]}
    for name in ("prediction_loss", "regularisation_loss"):  # the parts of the loss, with a regulariser on
        part = getattr(result.output, name, None)
        if part is not None:
            entry[name] = accelerator.reduce(part.detach(), "mean").item()
    if monitor:
        entry |= collapse_statistics(first_targets(result.output.targets))
    return entry


def train(args, step_callback=None):
    """Run pretraining; returns `(accelerator, model, state, card)` where card holds the model-card values.

    `step_callback(accelerator, unwrapped_model, step)` is called after every optimizer step and EMA update."""
    accelerator = build_accelerator(args)
    set_seed(args.seed)
    if args.matmul_precision is not None:
        torch.set_float32_matmul_precision(args.matmul_precision)
    output_dir = prepare_output_dir(args, accelerator)

    examples, collate, dataloader, description = build_dataloader(args, accelerator)
    global_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps

    model = build_model(args)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    optimizer = build_optimizer(model, args.learning_rate, (args.adam_beta1, args.adam_beta2), args.adam_epsilon)
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    if args.torch_compile:
        model = torch.compile(model, dynamic=True)  # index lengths vary from batch to batch
    unwrapped = accelerator.unwrap_model(model)

    batches_per_epoch = len(dataloader)
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    schedules = build_schedules(args, steps_per_epoch)
    total_steps = schedules.total_steps
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    if args.report_to:
        accelerator.init_trackers("jepa_pretraining", {k: str(v) for k, v in vars(args).items() if k != "hub_token"})
    data = data_fingerprint(examples.dataset, description, args.train_split)
    run = run_fingerprint(unwrapped.config, data, global_batch, batches_per_epoch, args.seed, schedules,
                          {name: getattr(args, name) for name in TRAJECTORY_ARGUMENTS})
    state = initial_state(args, output_dir, unwrapped, optimizer, batches_per_epoch, run)
    preemption = RUN_RESOURCES.enter_context(PreemptionHandler())

    logger.info(f"***** Pretraining ({args.modality}) *****")
    logger.info(f"  Examples = {len(examples)}, epochs = {num_epochs}, optimizer steps = {total_steps}")
    logger.info(f"  Per-device batch = {args.per_device_train_batch_size}, global batch = {global_batch}")
    progress = tqdm(range(total_steps), initial=state["global_step"], disable=not accelerator.is_local_main_process)
    checkpoint_every = int(args.checkpointing_steps) if str(args.checkpointing_steps).isdigit() else None
    started = time.perf_counter() - state["wall_clock"]
    train_step = build_step(args, accelerator, model, optimizer, schedules)
    kept_checkpoint = functools.partial(last_checkpoint_name, output_dir)  # named when a non-finite loss stops the run
    skipped_batches = SkippedBatches()

    def save(step: int) -> None:
        train_step.raise_if_nonfinite(kept_checkpoint)  # never checkpoint non-finite weights
        if not accelerator.is_main_process:  # the main process checks in save_checkpoint; all stop together
            check_finite_state(unwrapped, optimizer, output_dir / f"checkpoint-{step}")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state["wall_clock"] = time.perf_counter() - started
            path = save_checkpoint(output_dir, step, unwrapped, optimizer, state, args.checkpoints_total_limit)
            logger.info(f"Saved {path}")
        accelerator.wait_for_everyone()

    model.train()
    for epoch in range(state["epoch"], num_epochs):
        if state["global_step"] >= total_steps or out_of_time(accelerator, started, args.max_train_minutes) \
                or preemption.stopped:
            break
        # A resumed epoch starts after the batches its checkpoint had seen, with the same data and mask draws.
        skip = state["batches_in_epoch"] if epoch == state["epoch"] else 0
        examples.set_epoch(epoch)
        dataloader.set_epoch(epoch)
        collate.set_epoch(epoch, start_batch=skip)
        epoch_loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        state["epoch"], state["batches_in_epoch"] = epoch, skip
        for batch in epoch_loader:
            state["batches_in_epoch"] += 1
            state["num_skipped"] += batch.pop("num_skipped", 0)
            if "context_indices" not in batch:  # every example of this batch was unreadable
                continue
            batch = pixel_values_of(batch, args.image_size)  # --in_memory_data: crops made on the device
            inputs = model_inputs(batch, args.modality)
            result = train_step(inputs, step=state["global_step"] + 1, epoch=epoch)
            skipped_batches.count(result.skipped, state["global_step"] + 1, epoch)
            if result.skipped:
                continue
            state["images_seen"] += len(next(iter(inputs.values()))) * accelerator.num_processes
            if not result.updated:
                continue
            state["global_step"] = step = state["global_step"] + 1
            progress.update(1)
            if step_callback is not None:
                step_callback(accelerator, unwrapped, step)
            stopping = step >= total_steps or out_of_time(accelerator, started, args.max_train_minutes)
            # Step 1's targets come from the target encoder as initialised: the reference the collapse plot needs.
            monitor = step == 1 or step % args.monitor_steps == 0 or stopping
            if step % args.logging_steps == 0 or monitor:
                train_step.raise_if_nonfinite(kept_checkpoint)
                entry = log_entry(accelerator, result, state, epoch, monitor)
                state["log_history"].append(entry)
                progress.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}")
                accelerator.log(entry, step=step)
            saved = checkpoint_every is not None and step % checkpoint_every == 0
            if saved:
                save(step)
            if stopping or preemption.should_stop():
                # The last step (or a time-limited stop) leaves a checkpoint too, when checkpoints are asked for;
                # a preempted run always does (and logs as if it went on, so that its resumed log is the same).
                if (args.checkpointing_steps or preemption.stopped) and not saved:
                    save(step)
                break
        else:
            state["epoch"], state["batches_in_epoch"] = epoch + 1, 0
            if args.checkpointing_steps == "epoch":
                save(state["global_step"])
    progress.close()
    train_step.raise_if_nonfinite(kept_checkpoint)
    if preemption.stopped:
        checkpoint = output_dir / f"checkpoint-{state['global_step']}"
        logger.warning(f"Stopped by {preemption.received} after step {state['global_step']} and saved {checkpoint}: "
                       f"exiting with code {PREEMPTION_EXIT_CODE}; resume with --resume_from_checkpoint latest.")
        accelerator.end_training()
        raise Preempted(preemption.received, checkpoint)
    if state["num_skipped"]:
        logger.warning(f"Skipped {state['num_skipped']} unreadable examples in total.")
    check_data_was_usable(accelerator, state, args.max_skip_fraction)

    wall_clock = time.perf_counter() - started
    card = card_contents(args, accelerator, state, len(examples), description, global_batch, schedules, wall_clock)
    return accelerator, model, state, card


# ----------------------------------------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(argv)
    with RUN_RESOURCES:
        accelerator, model, state, (card_values, card_data) = train(args)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            export_final_model(accelerator, model, args, state["log_history"], card_values, card_data)
            logger.info(f"Saved the exported encoder and model card to {args.output_dir}")
        accelerator.end_training()
    return state


if __name__ == "__main__":
    main()
