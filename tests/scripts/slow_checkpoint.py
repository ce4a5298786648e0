# SPDX-License-Identifier: Apache-2.0
"""Run pretraining with one moment of a checkpoint write (or of the final export) held open, so that a test
can SIGKILL the process exactly there.

    python tests/scripts/slow_checkpoint.py PHASE STEP SIGNAL_FILE [run_pretraining.py arguments]

STEP is a step number, or `wait:FILE`: import everything, wait until FILE exists and read the step from it, then
start. A test can so start the next attempt (and pay for its imports) while the current one still runs.
PHASE is one of
    write    checkpoint-STEP's temporary folder holds the model files but not yet the optimizer's;
    rename   every file of checkpoint-STEP is written and flushed, the folder is not yet renamed;
    prune    a checkpoint of step >= STEP is in place and an older one is being deleted (its model file is
             already gone, its trainer_state.json not yet);
    export   training is over and `pretraining/` is exported, the encoder not yet (STEP is ignored);
    none     nothing is held: plain `run_pretraining.py`, killed from outside when the test decides.
When the moment comes the script writes SIGNAL_FILE (JSON: phase, step, path) and sleeps, so the test sees
the window open and kills the process inside it. Nothing else changes: the weights are those of
`python run_pretraining.py` with the same arguments.
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import run_pretraining
from modeling_ijepa.hub import publish
from modeling_ijepa.training import checkpointing

HOLD_SECONDS = 120  # the test kills the process long before this


def main():
    phase, step, signal_file = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    argv = sys.argv[4:]
    if step.startswith("wait:"):
        go_file = Path(step.removeprefix("wait:"))
        deadline = time.monotonic() + HOLD_SECONDS * 5  # an abandoned process does not wait forever
        while not go_file.is_file():
            if time.monotonic() > deadline:
                raise SystemExit(f"{go_file} never appeared")
            time.sleep(0.01)
        step = go_file.read_text()
    step = int(step)
    output_dir = Path(run_pretraining.parse_args(argv).output_dir)
    saved = {"step": 0}

    def hold(path) -> None:
        partial = signal_file.with_suffix(".partial")
        partial.write_text(json.dumps({"phase": phase, "step": saved["step"] if phase == "prune" else step,
                                       "path": str(path)}))
        os.replace(partial, signal_file)
        time.sleep(HOLD_SECONDS)

    def is_temporary_of(path: Path, wanted: int) -> bool:
        return path.name.startswith(f"{checkpointing.TEMPORARY_PREFIX}{wanted}-")

    if phase == "write":
        real_save_file = checkpointing.save_file

        def save_file(tensors, filename, *args, **kwargs):
            if is_temporary_of(Path(filename).parent, step):
                hold(Path(filename).parent)
            return real_save_file(tensors, filename, *args, **kwargs)

        checkpointing.save_file = save_file
    elif phase in ("rename", "prune"):
        real_fsync_tree = checkpointing.fsync_tree

        def fsync_tree(folder):
            real_fsync_tree(folder)
            saved["step"] = int(Path(folder).name[len(checkpointing.TEMPORARY_PREFIX):].split("-")[0])
            if phase == "rename" and saved["step"] == step:
                hold(folder)

        checkpointing.fsync_tree = fsync_tree
        if phase == "prune":
            real_rmtree = shutil.rmtree

            def rmtree(path, *args, **kwargs):
                path = Path(path)
                newest = output_dir / f"checkpoint-{saved['step']}"
                # The old checkpoint, or a temporary folder it was first moved into.
                models = [*path.glob("model.safetensors"), *path.glob("checkpoint-*/model.safetensors")]
                deleting_old = path.parent == output_dir and path != newest and models
                if saved["step"] >= step and newest.is_dir() and deleting_old:
                    models[0].unlink()
                    hold(path)
                return real_rmtree(path, *args, **kwargs)

            shutil.rmtree = rmtree
    elif phase == "export":
        real_save_encoder = publish.save_encoder_for_transformers

        def save_encoder_for_transformers(encoder, folder):
            hold(folder)
            return real_save_encoder(encoder, folder)

        publish.save_encoder_for_transformers = save_encoder_for_transformers
    elif phase != "none":
        raise SystemExit(f"unknown phase {phase!r}")
    run_pretraining.main(argv)


if __name__ == "__main__":
    main()
