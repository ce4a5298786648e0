# SPDX-License-Identifier: Apache-2.0
"""A few steps of I-JEPA pretraining on fixed batches, through `PretrainingStep`, on every process of a
torch.distributed run (started by `accelerate launch`, `torchrun`, or one process per rank with the `RANK`,
`WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT` variables), for tests/test_fsdp.py.

    python tests/scripts/fsdp_train.py --images IMAGES --output_dir DIR --result RESULT [options]

Every step trains on the same global batch of 8 images and masks whatever the number of processes (each takes its
rows), so runs on 1 and on 2 processes follow the same trajectory, up to rounding. `--sharding fsdp` shards the model
with `prepare_model_and_optimizer` (FSDP2), `ddp` prepares it with plain Accelerate (DDP), `both` trains both, one
after the other. With `--checkpoint_every`, FSDP runs write sharded checkpoints; `--resume` starts from the latest.
`--hold PHASE:STEP` holds the write of checkpoint-STEP open and writes `--signal` (JSON), so that a test can SIGKILL
every process inside it:
    shards   the last process is about to write its shard (the others may have written theirs);
    rename   every shard and JSON file is written and flushed, the folder is not yet renamed.
The main process writes `RESULT` (JSON: the run's layout, the final weights' file and, with
`--count_ema_collectives`, the collectives of each EMA update), `{RESULT stem}-{sharding}.safetensors` (the final
full state of the model) and, unless resuming, `{RESULT stem}-{sharding}-initial.safetensors` (the initial one).
"""

import argparse
import faulthandler
import functools
import json
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

from modeling_ijepa import IJepaConfig, IJepaForPreTraining, MultiBlockMaskCollator
from modeling_ijepa.cli import run_entry_point
from modeling_ijepa.training import sharded_checkpointing
from modeling_ijepa.training.checkpointing import TEMPORARY_PREFIX
from modeling_ijepa.training.optimization import PretrainingStep, build_optimizer
from modeling_ijepa.training.schedules import Schedules
from modeling_ijepa.training.sharded_checkpointing import (
    flat_state,
    latest_sharded_checkpoint,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)
from modeling_ijepa.training.sharding import (
    check_ema_is_local,
    fsdp_requested,
    gather_full_state_dict,
    is_sharded,
    prepare_model_and_optimizer,
)

TINY = IJepaConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, predictor_hidden_size=16, predictor_num_hidden_layers=1,
                   predictor_num_attention_heads=2)
GLOBAL_BATCH = 8
HOLD_SECONDS = 120  # the test kills the processes long before this
# What a resumed run must share with the checkpoint it resumes (see `checkpointing.check_resume`); 6 steps, the
# default of --steps.
RUN = {"model": "tiny", "seed": 0, "global_batch_size": GLOBAL_BATCH, "batches_per_epoch": 100,
       "schedules": {"total_steps": 6}}


def parse_args(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=Path, required=True, help="safetensors file: `pixel_values` [N, 3, 16, 16]")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--sharding", choices=["fsdp", "ddp", "both"], default="fsdp")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--checkpoint_every", type=int, default=None)
    parser.add_argument("--total_limit", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--hold", default=None, help="PHASE:STEP, PHASE one of shards, rename")
    parser.add_argument("--signal", type=Path, default=None)
    parser.add_argument("--count_ema_collectives", action="store_true")
    parser.add_argument("--dump_state", type=Path, default=None,
                        help="folder: write the full model and optimizer state after each save and after resuming")
    return parser.parse_args(argv)


def schedules(total_steps: int) -> Schedules:
    # An EMA momentum that moves the target encoder visibly in 6 steps.
    return Schedules(total_steps=total_steps, warmup_steps=2, lr=1e-3, start_lr=2e-4, final_lr=1e-5,
                     weight_decay=0.04, final_weight_decay=0.4, ema_momentum=0.8, final_ema_momentum=1.0)


def global_batch(images: torch.Tensor, step: int) -> dict:
    """The global batch of optimizer step `step` (from 1): 8 images and masks, the same on every process."""
    collator = MultiBlockMaskCollator(16, 4, min_context_patches=4, seed=0)
    collator.set_epoch(0, start_batch=step - 1)
    rows = [(step * GLOBAL_BATCH + index) % len(images) for index in range(GLOBAL_BATCH)]
    batch = collator([{"pixel_values": images[row]} for row in rows])
    return {key: batch[key] for key in ("pixel_values", "context_indices", "target_indices")}


def local_rows(batch: dict, accelerator) -> dict:
    size = GLOBAL_BATCH // accelerator.num_processes
    start = accelerator.process_index * size
    return {key: value[start:start + size].to(accelerator.device) for key, value in batch.items()}


def hold(args, phase: str, step: int) -> None:
    partial = args.signal.with_suffix(".partial")
    partial.write_text(json.dumps({"phase": phase, "step": step, "pid": os.getpid()}))
    os.replace(partial, args.signal)
    time.sleep(HOLD_SECONDS)


def install_hold(args, accelerator) -> None:
    """Hold checkpoint-STEP's write open at PHASE (see the module docstring)."""
    phase, step = args.hold.split(":")
    temporary = f"{TEMPORARY_PREFIX}{step}-sharded"
    if phase == "shards":
        real_write_data = HuggingFaceStorageWriter.write_data

        def write_data(self, plan, planner):
            if Path(self.path).name == temporary and accelerator.process_index == accelerator.num_processes - 1:
                hold(args, phase, int(step))
            return real_write_data(self, plan, planner)

        HuggingFaceStorageWriter.write_data = write_data
    elif phase == "rename":
        real_fsync_tree = sharded_checkpointing.fsync_tree

        def fsync_tree(folder):
            real_fsync_tree(folder)
            if Path(folder).name == temporary:
                hold(args, phase, int(step))

        sharded_checkpointing.fsync_tree = fsync_tree
    else:
        raise SystemExit(f"unknown phase {phase!r}")


def dump_state(accelerator, model, optimizer, path: Path) -> None:
    """The full model and optimizer state, on the main process, into one safetensors file (a collective)."""
    model_state, optimizer_state = get_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    tensors, _ = flat_state(model_state, optimizer_state)
    if accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({name: value.contiguous() for name, value in tensors.items()}, path)


def count_ema_collectives(model, counts: list[int]) -> None:
    """Record how many collectives each EMA update issues (it must issue none: it works on the local shards)."""
    from torch.distributed.tensor.debug import CommDebugMode  # imports torch._inductor: seconds, so only when asked

    update = model.update_target_encoder

    def counted(momentum):
        with CommDebugMode() as comm:
            update(momentum)
        counts.append(comm.get_total_counts())

    model.update_target_encoder = counted


def prepare(accelerator, sharding: str):
    torch.manual_seed(0)  # the same initial weights on every process and in every run
    model = IJepaForPreTraining(TINY)
    make_optimizer = functools.partial(build_optimizer, lr=1e-3)
    if sharding == "fsdp":
        return prepare_model_and_optimizer(accelerator, model, make_optimizer)
    return accelerator.prepare(model, make_optimizer(model))


def resume(args, accelerator, unwrapped, optimizer) -> int:
    checkpoint = latest_sharded_checkpoint(args.output_dir)
    if checkpoint is None:
        return 0
    state = load_sharded_checkpoint(checkpoint, unwrapped, optimizer, run=RUN)
    if args.dump_state:
        dump_state(accelerator, unwrapped, optimizer, args.dump_state / f"resumed-{state['global_step']}.safetensors")
    return state["global_step"]


def train(args, accelerator, images: torch.Tensor, sharding: str) -> dict:
    """Train `args.steps` steps with `sharding`; returns what the result file records of this run."""
    model, optimizer = prepare(accelerator, sharding)
    unwrapped = accelerator.unwrap_model(model)
    if not args.resume:
        initial = gather_full_state_dict(unwrapped)  # a collective: every process takes part
        if accelerator.is_main_process:
            save_file({name: value.contiguous() for name, value in initial.items()},
                      args.result.with_name(f"{args.result.stem}-{sharding}-initial.safetensors"))
    layout = {"sharded": is_sharded(unwrapped),
              "parameter_types": sorted({type(parameter).__name__ for parameter in unwrapped.parameters()})}
    if sharding == "fsdp":
        check_ema_is_local(unwrapped)
    ema_collectives: list[int] = []
    if args.count_ema_collectives:
        count_ema_collectives(unwrapped, ema_collectives)
    train_step = PretrainingStep(accelerator, model, optimizer, schedules(args.steps), max_grad_norm=1.0)
    first = resume(args, accelerator, unwrapped, optimizer) + 1 if args.resume else 1
    for step in range(first, args.steps + 1):
        train_step(local_rows(global_batch(images, step), accelerator), step=step, epoch=0)
        if sharding == "fsdp" and args.checkpoint_every and step % args.checkpoint_every == 0:
            state = {"global_step": step, "epoch": 0, "batches_in_epoch": step, "run": RUN}
            save_sharded_checkpoint(args.output_dir, step, unwrapped, optimizer, state, args.total_limit)
            if args.dump_state:
                dump_state(accelerator, unwrapped, optimizer, args.dump_state / f"saved-{step}.safetensors")
    weights = args.result.with_name(f"{args.result.stem}-{sharding}.safetensors")
    full = gather_full_state_dict(unwrapped)
    if accelerator.is_main_process:
        save_file({name: value.contiguous() for name, value in full.items()}, weights)
    return {**layout, "first_step": first, "ema_collectives": ema_collectives, "weights": str(weights)}


def main(argv=None):
    faulthandler.enable()  # a native crash (an abort at exit, say) prints every thread's Python stack to the log
    args = parse_args(argv)
    # As `runtime.build_accelerator`: without an accelerator, the processes join a gloo group.
    accelerator = Accelerator(cpu=not torch.accelerator.is_available())
    if args.hold:
        install_hold(args, accelerator)
    images = load_file(args.images)["pixel_values"]
    result = {"distributed_type": str(accelerator.distributed_type), "world_size": accelerator.num_processes,
              "fsdp_requested": fsdp_requested()}
    for sharding in (("fsdp", "ddp") if args.sharding == "both" else (args.sharding,)):
        result[sharding] = train(args, accelerator, images, sharding)
    if accelerator.is_main_process:
        args.result.write_text(json.dumps(result, indent=1))
    accelerator.end_training()


if __name__ == "__main__":
    run_entry_point(main)  # a rank ends without finalizing the interpreter, which can abort after gloo collectives
