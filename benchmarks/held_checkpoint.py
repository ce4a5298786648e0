# SPDX-License-Identifier: Apache-2.0
"""Run pretraining with one moment of a checkpoint write (or of the final export) held open, so that whoever
started it can SIGKILL the process exactly there (`benchmarks.kill_resume` does).

    python -m benchmarks.held_checkpoint PHASE STEP SIGNAL_FILE [pretraining arguments]

STEP is a step number, or `wait:FILE`: import everything, wait until FILE exists and read the step from it, then
start. The next attempt can so be started (and pay for its imports) while the current one still runs.
PHASE is one of
    write    checkpoint-STEP's temporary folder holds the model files but not yet the optimizer's;
    rename   every file of checkpoint-STEP is written and flushed, the folder is not yet renamed;
    prune    a checkpoint of step >= STEP is in place and an older one is being deleted (its model file is
             already gone, its trainer_state.json not yet);
    export   training is over and `pretraining/` is exported, the encoder not yet (STEP is ignored);
    none     nothing is held: plain pretraining, killed from outside when the caller decides.
When the moment comes the run writes SIGNAL_FILE (JSON: phase, step, path) and sleeps, so the caller sees the
window open and kills the process inside it. Nothing else changes: the weights are those of
`modeling_ijepa.training.pretraining.main` (what `run_pretraining.py` runs) with the same arguments.
"""

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from modeling_ijepa.hub import publish
from modeling_ijepa.training import checkpointing
from modeling_ijepa.training.arguments import parse_args
from modeling_ijepa.training.pretraining import main as pretrain

PHASES = ("write", "rename", "prune", "export", "none")
HOLD_SECONDS = 120  # the caller kills the process long before this


def wait_for_step(step: str) -> int:
    """STEP as a number: given, or read from the go file of `wait:FILE` once it appears."""
    if not step.startswith("wait:"):
        return int(step)
    go_file = Path(step.removeprefix("wait:"))
    deadline = time.monotonic() + HOLD_SECONDS * 5  # an abandoned process does not wait forever
    while not go_file.is_file():
        if time.monotonic() > deadline:
            raise SystemExit(f"{go_file} never appeared")
        time.sleep(0.01)
    return int(go_file.read_text())


def step_of_temporary(folder: Path) -> int | None:
    """The step of a checkpoint's temporary folder (`TEMPORARY_PREFIX{step}-...`); None for any other folder."""
    name = Path(folder).name
    if not name.startswith(checkpointing.TEMPORARY_PREFIX):
        return None
    return int(name[len(checkpointing.TEMPORARY_PREFIX):].split("-")[0])


class Holder:
    """Opens the window of one phase: writes the signal file and sleeps until the caller kills the process."""

    def __init__(self, phase: str, step: int, signal_file: Path, output_dir: Path):
        self.phase, self.step, self.signal_file, self.output_dir = phase, step, signal_file, output_dir
        self.saved = 0  # the step of the newest checkpoint flushed so far (the prune phase reports it)

    def hold(self, path) -> None:
        partial = self.signal_file.with_suffix(".partial")
        step = self.saved if self.phase == "prune" else self.step
        partial.write_text(json.dumps({"phase": self.phase, "step": step, "path": str(path)}))
        os.replace(partial, self.signal_file)  # the caller never reads a half-written signal
        time.sleep(HOLD_SECONDS)

    def install(self) -> None:
        """Wrap the library function at which this phase's window opens."""
        if self.phase == "write":
            checkpointing.save_file = self.wrap_save_file(checkpointing.save_file)
        elif self.phase in ("rename", "prune"):
            checkpointing.fsync_tree = self.wrap_fsync_tree(checkpointing.fsync_tree)
            if self.phase == "prune":
                shutil.rmtree = self.wrap_rmtree(shutil.rmtree)
        elif self.phase == "export":
            publish.save_encoder_for_transformers = self.wrap_export(publish.save_encoder_for_transformers)

    def wrap_save_file(self, save_file):
        def held_save_file(tensors, filename, *args, **kwargs):
            # The model files are in the temporary folder; this call would write the optimizer's.
            if step_of_temporary(Path(filename).parent) == self.step:
                self.hold(Path(filename).parent)
            return save_file(tensors, filename, *args, **kwargs)

        return held_save_file

    def wrap_fsync_tree(self, fsync_tree):
        def held_fsync_tree(folder):
            fsync_tree(folder)
            flushed = step_of_temporary(folder)
            if flushed is not None:
                self.saved = flushed
            if self.phase == "rename" and self.saved == self.step:
                self.hold(folder)

        return held_fsync_tree

    def wrap_rmtree(self, rmtree):
        def held_rmtree(path, *args, **kwargs):
            path = Path(path)
            newest = self.output_dir / f"checkpoint-{self.saved}"
            # The old checkpoint, or a temporary folder it was first moved into.
            models = [*path.glob("model.safetensors"), *path.glob("checkpoint-*/model.safetensors")]
            deleting_old = path.parent == self.output_dir and path != newest and models
            if self.saved >= self.step and newest.is_dir() and deleting_old:
                models[0].unlink()
                self.hold(path)
            return rmtree(path, *args, **kwargs)

        return held_rmtree

    def wrap_export(self, save_encoder):
        def held_save_encoder(encoder, folder):
            self.hold(folder)
            return save_encoder(encoder, folder)

        return held_save_encoder


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=PHASES, help="The moment to hold open.")
    parser.add_argument("step", help="The checkpoint step it concerns, or wait:FILE.")
    parser.add_argument("signal_file", type=Path, help="Written when the window opens.")
    parser.add_argument("pretraining_argv", nargs=argparse.REMAINDER, help="The pretraining run's arguments.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    step = wait_for_step(args.step)
    output_dir = Path(parse_args(args.pretraining_argv).output_dir)
    Holder(args.phase, step, args.signal_file, output_dir).install()
    pretrain(args.pretraining_argv)


if __name__ == "__main__":
    main()
