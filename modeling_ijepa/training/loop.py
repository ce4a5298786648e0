# SPDX-License-Identifier: Apache-2.0
"""The training-loop core that I-JEPA, V-JEPA and any baseline (the MAE benchmark) share.

A method brings its model, its optimisation step (a `PretrainingStep`) and its data (`TrainingData`); `TrainingLoop`
runs the epochs: it feeds each batch to the step, counts optimizer steps, logs, checkpoints every N steps or epochs,
resumes mid-epoch on exactly the batches and masks an uninterrupted run would see, and stops at the last step, at
`max_train_minutes`, on a preemption signal (checkpointing first) or when the loss diverges.
"""

import contextlib
import functools
import inspect
import os
import time
from dataclasses import dataclass
from pathlib import Path

from accelerate.logging import get_logger
from tqdm.auto import tqdm

from modeling_ijepa.data.in_memory import pixel_values_of
from modeling_ijepa.data.pipeline import TrainingData
from modeling_ijepa.training.checkpointing import (
    check_finite_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from modeling_ijepa.training.collapse import collapse_statistics
from modeling_ijepa.training.optimization import NonFiniteLossError, PretrainingStep
from modeling_ijepa.training.run_control import PREEMPTION_EXIT_CODE, OutputDirLock, Preempted, PreemptionHandler
from modeling_ijepa.training.runtime import out_of_time
from modeling_ijepa.training.sharded_checkpointing import (
    is_sharded_checkpoint,
    latest_sharded_checkpoint,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)
from modeling_ijepa.training.sharding import is_sharded

logger = get_logger(__name__)

# With `on_nonfinite_loss="skip"`, this many skipped batches in a row mean the run has diverged: stop it.
MAX_CONSECUTIVE_NONFINITE = 10

# What a run holds until it ends: the lock on its output folder, the preemption signal handlers and the Accelerate
# state it made (`cli.scoped_accelerator_state`). The entry point releases them (`with RUN_RESOURCES:`), so that the
# next run in the same process starts afresh; a process that ends otherwise releases them by ending.
RUN_RESOURCES = contextlib.ExitStack()


@dataclass
class LoopSettings:
    """When the loop logs, checkpoints and stops.

    total_steps: optimizer steps of the whole run.
    num_epochs: epochs it takes (the last one may stop early).
    logging_steps: log every this many optimizer steps.
    monitor_steps: add the collapse statistics of the target features every this many steps (and at steps 1 and
        the last); None for a model without targets.
    checkpointing_steps: a number (every N optimizer steps), "epoch", or None (no checkpoints).
    checkpoints_total_limit: keep the newest this many checkpoints (None: all).
    max_train_minutes: stop, checkpointing when checkpoints are on, after this long (None: no limit).
    image_size: the crop size of in-memory batches, made on the device (`pixel_values_of`).
    """

    total_steps: int
    num_epochs: int
    logging_steps: int = 10
    monitor_steps: int | None = None
    checkpointing_steps: int | str | None = None
    checkpoints_total_limit: int | None = None
    max_train_minutes: float | None = None
    image_size: int | None = None

    @property
    def checkpoint_every(self) -> int | None:
        return int(self.checkpointing_steps) if str(self.checkpointing_steps).isdigit() else None


class SkippedBatches:
    """`on_nonfinite_loss="skip"`: the step skips a batch whose loss is not finite; MAX_CONSECUTIVE_NONFINITE
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


def prepare_output_dir(output_dir: str | Path, accelerator) -> Path:
    """`output_dir`, created and locked for this run on the main process (a second run in it is refused)."""
    output_dir = Path(output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(output_dir, os.W_OK):
            raise PermissionError(f"--output_dir {output_dir} is not writable.")
        RUN_RESOURCES.enter_context(OutputDirLock(output_dir))
    return output_dir


def initial_state(resume_from: str | None, output_dir: Path, model, optimizer, batches_per_epoch: int, run: dict,
                  allow_changed_run: bool = False, sharded: bool = False) -> dict:
    """The run's counters, log and fingerprint `run`: fresh, or read from checkpoint `resume_from` (a folder or
    `latest`), which must have been written by the same run (see `checkpointing.check_resume`). A `sharded` model
    (FSDP2) resumes from sharded checkpoints, written by any number of processes."""
    state = {"global_step": 0, "epoch": 0, "batches_in_epoch": 0, "images_seen": 0, "num_skipped": 0,
             "log_history": [], "batches_per_epoch": batches_per_epoch, "wall_clock": 0.0, "run": run}
    checkpoint = resume_from
    if checkpoint == "latest":
        checkpoint = (latest_sharded_checkpoint if sharded else latest_checkpoint)(output_dir)
        if checkpoint is None:
            logger.info(f"No checkpoint in {output_dir}: starting from scratch.")
    if checkpoint:
        load = load_sharded_checkpoint if sharded else load_checkpoint
        state = load(checkpoint, model, optimizer, run, allow_run_changes=allow_changed_run)
        state["run"] = run
        logger.info(f"Resumed from {checkpoint} at step {state['global_step']} (epoch {state['epoch']}, "
                    f"batch {state['batches_in_epoch']}).")
    return state


def last_checkpoint_name(output_dir: Path, sharded: bool = False) -> str | None:
    """The newest checkpoint's path, to name it in an error message (for sharded ones without reading every shard)."""
    if sharded:
        checkpoints = [path for path in list_checkpoints(output_dir) if is_sharded_checkpoint(path)]
        return str(checkpoints[-1]) if checkpoints else None
    checkpoint = latest_checkpoint(output_dir)
    return str(checkpoint) if checkpoint is not None else None


def first_targets(targets):
    """The target features of a model output: the first mask type's for V-JEPA (a list, one per mask type)."""
    return targets[0] if isinstance(targets, list) else targets


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
    targets = getattr(result.output, "targets", None)
    if monitor and targets is not None:
        entry |= collapse_statistics(first_targets(targets))
    return entry


class TrainingLoop:
    """Runs the epochs of one run (see the module docstring); `run()` returns the final `state`.

    Args:
        accelerator, model, optimizer: as `accelerator.prepare` returned them.
        train_step: the method's `PretrainingStep` over that model and optimizer.
        data: the run's `TrainingData` (its DataLoader prepared too).
        state: `initial_state(...)`: fresh, or a resumed run's counters.
        settings: `LoopSettings`.
        output_dir: where checkpoints go.
        step_callback: `step_callback(accelerator, unwrapped_model, step)` after every optimizer step.
    """

    def __init__(self, accelerator, model, optimizer, train_step: PretrainingStep, data: TrainingData, state: dict,
                 settings: LoopSettings, output_dir: Path, step_callback=None):
        self.accelerator, self.model, self.optimizer, self.train_step = accelerator, model, optimizer, train_step
        self.data, self.state, self.settings, self.output_dir = data, state, settings, Path(output_dir)
        self.step_callback = step_callback
        self.unwrapped = accelerator.unwrap_model(model)
        # The batch keys the model's forward takes: the pixels, and the mask indices for a JEPA model.
        self.input_names = frozenset(inspect.signature(self.unwrapped.forward).parameters)
        self.sharded = is_sharded(self.unwrapped)  # FSDP2: every process writes its shards of each checkpoint
        self.kept_checkpoint = functools.partial(last_checkpoint_name, self.output_dir, self.sharded)
        self.skipped_batches = SkippedBatches()
        self.started = time.perf_counter() - state["wall_clock"]
        self.preemption = None

    def out_of_time(self) -> bool:
        return out_of_time(self.accelerator, self.started, self.settings.max_train_minutes)

    def run(self) -> dict:
        state, settings = self.state, self.settings
        self.preemption = RUN_RESOURCES.enter_context(PreemptionHandler())
        self.progress = tqdm(range(settings.total_steps), initial=state["global_step"],
                             disable=not self.accelerator.is_local_main_process)
        self.model.train()
        for epoch in range(state["epoch"], settings.num_epochs):
            if state["global_step"] >= settings.total_steps or self.out_of_time() or self.preemption.stopped:
                break
            if self.run_epoch(epoch):
                break
            state["epoch"], state["batches_in_epoch"] = epoch + 1, 0
            if settings.checkpointing_steps == "epoch":
                self.save(state["global_step"])
        self.progress.close()
        self.finish()
        state["wall_clock"] = time.perf_counter() - self.started
        return state

    def run_epoch(self, epoch: int) -> bool:
        """Train on one epoch's batches; returns whether the run stops within it."""
        state = self.state
        # A resumed epoch starts after the batches its checkpoint had seen, with the same data and mask draws.
        skip = state["batches_in_epoch"] if epoch == state["epoch"] else 0
        state["epoch"], state["batches_in_epoch"] = epoch, skip
        for batch in self.data.epoch_batches(self.accelerator, epoch, skip):
            state["batches_in_epoch"] += 1
            state["num_skipped"] += batch.pop("num_skipped", 0)
            batch = pixel_values_of(batch, self.settings.image_size)  # in-memory data: crops made on the device
            inputs = {name: value for name, value in batch.items() if name in self.input_names}
            if self.unwrapped.main_input_name not in inputs:  # every example of this batch was unreadable
                continue
            if self.train_batch(inputs, epoch):
                return True
        return False

    def train_batch(self, inputs: dict, epoch: int) -> bool:
        """One step's share of work on `inputs`; returns whether the run stops after it."""
        state, settings = self.state, self.settings
        result = self.train_step(inputs, step=state["global_step"] + 1, epoch=epoch)
        self.skipped_batches.count(result.skipped, state["global_step"] + 1, epoch)
        if result.skipped:
            return False
        # Images, not crops: with --num_views V a batch holds V rows of pixels for each image.
        crops = len(inputs[self.unwrapped.main_input_name])
        state["images_seen"] += crops // getattr(self.unwrapped.config, "num_views", 1) * self.accelerator.num_processes
        if not result.updated:
            return False
        state["global_step"] = step = state["global_step"] + 1
        self.progress.update(1)
        if self.step_callback is not None:
            self.step_callback(self.accelerator, self.unwrapped, step)
        stopping = step >= settings.total_steps or self.out_of_time()
        # Step 1's targets come from the target encoder as initialised: the reference the collapse plot needs.
        monitor = settings.monitor_steps is not None and (step == 1 or step % settings.monitor_steps == 0 or stopping)
        if step % settings.logging_steps == 0 or monitor or stopping:
            self.log(result, epoch, monitor)
        saved = settings.checkpoint_every is not None and step % settings.checkpoint_every == 0
        if saved:
            self.save(step)
        if stopping or self.preemption.should_stop():
            # The last step (or a time-limited stop) leaves a checkpoint too, when checkpoints are asked for; a
            # preempted run always does (and logs as if it went on, so that its resumed log is the same).
            if (settings.checkpointing_steps or self.preemption.stopped) and not saved:
                self.save(step)
            return True
        return False

    def log(self, result, epoch: int, monitor: bool) -> None:
        self.train_step.raise_if_nonfinite(self.kept_checkpoint)
        entry = log_entry(self.accelerator, result, self.state, epoch, monitor)
        self.state["log_history"].append(entry)
        self.progress.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}")
        self.accelerator.log(entry, step=self.state["global_step"])

    def save(self, step: int) -> None:
        accelerator = self.accelerator
        self.train_step.raise_if_nonfinite(self.kept_checkpoint)  # never checkpoint non-finite weights
        self.data.save_state(self.state)  # with --streaming a collective: every process's stream position
        if self.sharded:  # a collective: every process writes its shards, and all raise together
            self.state["wall_clock"] = time.perf_counter() - self.started
            path = save_sharded_checkpoint(self.output_dir, step, self.unwrapped, self.optimizer, self.state,
                                           self.settings.checkpoints_total_limit)
            logger.info(f"Saved {path}")
            return
        if not accelerator.is_main_process:  # the main process checks in save_checkpoint; all stop together
            check_finite_state(self.unwrapped, self.optimizer, self.output_dir / f"checkpoint-{step}")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self.state["wall_clock"] = time.perf_counter() - self.started
            path = save_checkpoint(self.output_dir, step, self.unwrapped, self.optimizer, self.state,
                                   self.settings.checkpoints_total_limit)
            logger.info(f"Saved {path}")
        accelerator.wait_for_everyone()

    def finish(self) -> None:
        """After the last step: refuse a diverged run, and exit for a preempted one (its checkpoint is written)."""
        self.train_step.raise_if_nonfinite(self.kept_checkpoint)
        if self.preemption.stopped:
            checkpoint = self.output_dir / f"checkpoint-{self.state['global_step']}"
            logger.warning(f"Stopped by {self.preemption.received} after step {self.state['global_step']} and saved "
                           f"{checkpoint}: exiting with code {PREEMPTION_EXIT_CODE}; resume with "
                           "--resume_from_checkpoint latest.")
            self.accelerator.end_training()
            raise Preempted(self.preemption.received, checkpoint)
