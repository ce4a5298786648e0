# SPDX-License-Identifier: Apache-2.0
"""I-JEPA, V-JEPA and V-JEPA 2 pretraining from the command-line arguments: `train(args)` assembles the run (the
accelerator, the model, its data and masks built from the model's config, the step) and hands it to the shared
`TrainingLoop`; `main(argv)` then exports the encoder and writes the model card.
"""

import functools
import math

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed

from modeling_ijepa.cli import scoped_accelerator_state
from modeling_ijepa.data.pipeline import build_training_data
from modeling_ijepa.data.skipping import check_data_was_usable
from modeling_ijepa.hub.pretraining_card import card_contents
from modeling_ijepa.hub.publish import export_final_model
from modeling_ijepa.training.arguments import parse_args
from modeling_ijepa.training.checkpointing import run_fingerprint
from modeling_ijepa.training.loop import RUN_RESOURCES, LoopSettings, TrainingLoop, initial_state, prepare_output_dir
from modeling_ijepa.training.models import build_model
from modeling_ijepa.training.optimization import PretrainingStep, build_optimizer
from modeling_ijepa.training.runtime import build_accelerator, float32_matmul_precision
from modeling_ijepa.training.schedules import Schedules
from modeling_ijepa.training.sharding import is_sharded, prepare_model_and_optimizer, unsharded_copy

logger = get_logger(__name__)

# Settings besides the model, data, batch, seed and schedules that change what a step computes: a resumed run must
# keep them (they go into the run fingerprint that every checkpoint stores).
TRAJECTORY_ARGUMENTS = (
    "modality", "crop_scale", "num_frames", "frame_step", "num_targets", "target_scale", "target_aspect_ratio",
    "context_scale", "min_context_patches", "allow_overlap", "full_range_placement", "random_subset", "adam_beta1",
    "adam_beta2", "adam_epsilon", "max_grad_norm", "clip_grad_after_warmup", "gradient_accumulation_steps",
    "horizontal_flip", "num_mask_draws", "streaming", "shuffle_buffer_size",
)


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


def loop_settings(args, schedules: Schedules, steps_per_epoch: int, image_size: int) -> LoopSettings:
    return LoopSettings(
        total_steps=schedules.total_steps, num_epochs=math.ceil(schedules.total_steps / steps_per_epoch),
        logging_steps=args.logging_steps, monitor_steps=args.monitor_steps,
        checkpointing_steps=args.checkpointing_steps, checkpoints_total_limit=args.checkpoints_total_limit,
        max_train_minutes=args.max_train_minutes, image_size=image_size,
    )


def train(args, step_callback=None):
    """Run pretraining; returns `(accelerator, model, state, card)` where card holds the model-card values.

    `step_callback(accelerator, unwrapped_model, step)` is called after every optimizer step and EMA update."""
    RUN_RESOURCES.enter_context(scoped_accelerator_state())
    accelerator = build_accelerator(args)
    set_seed(args.seed)
    output_dir = prepare_output_dir(args.output_dir, accelerator)

    model = build_model(args)
    data = build_training_data(args, accelerator, model.config)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    make_optimizer = functools.partial(build_optimizer, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                       eps=args.adam_epsilon)
    # DDP, or FSDP2 when launched with an FSDP2 config (configs/accelerate/), the target encoder sharded too.
    model, optimizer = prepare_model_and_optimizer(accelerator, model, make_optimizer)
    if not args.streaming:  # a stream is split across processes already and sends its batches to the device itself
        data.dataloader = accelerator.prepare(data.dataloader)
    if args.torch_compile:
        model = torch.compile(model, dynamic=True)  # index lengths vary from batch to batch
    unwrapped = accelerator.unwrap_model(model)

    steps_per_epoch = math.ceil(data.batches_per_epoch / args.gradient_accumulation_steps)
    schedules = build_schedules(args, steps_per_epoch)
    settings = loop_settings(args, schedules, steps_per_epoch, data.grid["image_size"])
    if args.report_to:
        accelerator.init_trackers("jepa_pretraining", {k: str(v) for k, v in vars(args).items() if k != "hub_token"})
    global_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    run = run_fingerprint(unwrapped.config, data.fingerprint(args.train_split), global_batch,
                          data.batches_per_epoch, args.seed, schedules,
                          {name: getattr(args, name) for name in TRAJECTORY_ARGUMENTS})
    state = initial_state(args.resume_from_checkpoint, output_dir, unwrapped, optimizer, data.batches_per_epoch, run,
                          args.allow_changed_run, sharded=is_sharded(unwrapped))
    data.load_state(state)

    logger.info(f"***** Pretraining ({args.modality}) *****")
    logger.info(f"  Examples = {data.num_examples or 'streamed'}, epochs = {settings.num_epochs}, "
                f"optimizer steps = {settings.total_steps}")
    crops = f" images x {args.num_views} crops" if args.num_views > 1 else ""
    logger.info(f"  Per-device batch = {args.per_device_train_batch_size}{crops}, global batch = {global_batch}{crops}")
    train_step = build_step(args, accelerator, model, optimizer, schedules)
    loop = TrainingLoop(accelerator, model, optimizer, train_step, data, state, settings, output_dir, step_callback)
    with float32_matmul_precision(args.matmul_precision):
        state = loop.run()
    if state["num_skipped"]:
        logger.warning(f"Skipped {state['num_skipped']} unreadable examples in total.")
    check_data_was_usable(accelerator, state, args.max_skip_fraction)
    card = card_contents(args, accelerator, state, data, unwrapped.config, global_batch, schedules)
    return accelerator, model, state, card


def main(argv=None):
    args = parse_args(argv)
    with RUN_RESOURCES:
        accelerator, model, state, (card_values, card_data) = train(args)
        accelerator.wait_for_everyone()
        if is_sharded(accelerator.unwrap_model(model)):  # the full model, gathered once on the main process
            model = unsharded_copy(accelerator.unwrap_model(model))
        if accelerator.is_main_process:
            export_final_model(accelerator, model, args, state["log_history"], card_values, card_data)
            logger.info(f"Saved the exported encoder and model card to {args.output_dir}")
        accelerator.end_training()
    return state
