# SPDX-License-Identifier: Apache-2.0
"""The pretraining loop: one function, `train`, that builds the run from its arguments, trains through
`PretrainingStep`, checkpoints, resumes and stops on time, on a signal or on divergence."""

import contextlib
import functools
import math
import os
import time
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from modeling_ijepa.data.in_memory import pixel_values_of
from modeling_ijepa.data.pipeline import build_dataloader
from modeling_ijepa.data.skipping import check_data_was_usable
from modeling_ijepa.hub.pretraining_card import card_contents
from modeling_ijepa.hub.publish import export_final_model
from modeling_ijepa.training.arguments import parse_args
from modeling_ijepa.training.checkpointing import (
    check_finite_state,
    data_fingerprint,
    latest_checkpoint,
    load_checkpoint,
    run_fingerprint,
    save_checkpoint,
)
from modeling_ijepa.training.collapse import collapse_statistics
from modeling_ijepa.training.models import build_model
from modeling_ijepa.training.optimization import NonFiniteLossError, PretrainingStep, build_optimizer
from modeling_ijepa.training.run_control import (
    PREEMPTION_EXIT_CODE,
    OutputDirLock,
    Preempted,
    PreemptionHandler,
)
from modeling_ijepa.training.runtime import build_accelerator, out_of_time
from modeling_ijepa.training.schedules import Schedules

logger = get_logger(__name__)


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
