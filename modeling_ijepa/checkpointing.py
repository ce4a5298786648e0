"""Crash-safe training checkpoints made of safetensors and JSON only (no pickle).

A checkpoint is a folder `checkpoint-{step}` holding
    model.safetensors, config.json   the full pretraining model (`save_pretrained`)
    optimizer.safetensors            every optimizer state tensor, keyed "{parameter index}.{name}"
    optimizer.json                   the optimizer's param_groups (hyperparameters and parameter indices)
    trainer_state.json               step, epoch, position in the epoch, counters, log history

It is written into a temporary sibling folder, flushed to disk, then renamed in one step, so a crash or a kill
at any moment leaves either the previous checkpoints or a complete new one, never a half-written
`checkpoint-{step}`. Checkpoints are deleted the same way round: renamed to a temporary name first, so a kill
during the deletion leaves no half-deleted `checkpoint-{step}` either. Leftover temporary folders are ignored
and removed on the next save.
"""

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TEMPORARY_PREFIX = ".tmp-checkpoint-"
TRAINER_STATE = "trainer_state.json"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, read-only folder, ...); the previous ones are intact."""


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split `optimizer.state_dict()` into tensors (for safetensors) and JSON-able hyperparameters."""
    state_dict = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in state_dict["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of `optimizer_to_files`: an optimizer state dict ready for `load_state_dict`."""
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    param_groups = [
        {name: tuple(value) if name == "betas" else value for name, value in group.items()} for group in meta["param_groups"]
    ]
    return {"state": state, "param_groups": param_groups}


def fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as file:
            os.fsync(file.fileno())
    fsync_directory(folder)


def fsync_directory(folder: Path) -> None:
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def discard(folder: Path) -> None:
    """Delete a checkpoint folder without ever leaving it half deleted under its own name."""
    doomed = Path(tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}discard-", dir=folder.parent))
    os.replace(folder, doomed / folder.name)
    shutil.rmtree(doomed, ignore_errors=True)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), path) for path in output_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(path.name))]
    return [path for _, path in sorted(found) if (path / TRAINER_STATE).is_file()]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict,
    total_limit: int | None = None,
) -> Path:
    """Atomically write `output_dir/checkpoint-{step}` and keep only the newest `total_limit` checkpoints.

    `model` is the unwrapped pretraining model (its `save_pretrained` writes safetensors). Raises
    `CheckpointWriteError` naming the folder and the cause if anything cannot be written."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    temporary = None
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        for leftover in output_dir.glob(f"{TEMPORARY_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        temporary = Path(tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}{step}-", dir=output_dir))
        model.save_pretrained(temporary)
        tensors, meta = optimizer_to_files(optimizer)
        save_file(tensors, temporary / "optimizer.safetensors")
        (temporary / "optimizer.json").write_text(json.dumps(meta))
        (temporary / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2))
        fsync_tree(temporary)
        if final.exists():  # a checkpoint of the same step from an earlier attempt: replace it
            discard(final)
        os.replace(temporary, final)
        fsync_directory(output_dir)  # make the rename itself durable
    except (OSError, SafetensorError) as error:  # safetensors reports a full disk as a SafetensorError
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)  # do not leave a partial copy filling the disk
        raise CheckpointWriteError(
            f"Could not write checkpoint {final}: {getattr(error, 'strerror', None) or error}. "
            "Earlier checkpoints are intact."
        ) from error
    if total_limit is not None:
        for old in list_checkpoints(output_dir)[:-total_limit]:
            try:
                discard(old)
            except OSError as error:
                logger.warning(f"Could not delete the old checkpoint {old}: {error}")
    return final


def load_checkpoint(checkpoint: str | Path, model, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Restore `model` (unwrapped) and `optimizer` in place from a checkpoint folder; returns the trainer state."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / TRAINER_STATE).is_file():
        raise ValueError(f"{checkpoint} is not a complete checkpoint folder (no {TRAINER_STATE}).")
    # from_pretrained applies the on-disk key renaming (the target encoder is stored under `ijepa.`).
    model.load_state_dict(type(model).from_pretrained(checkpoint, use_safetensors=True).state_dict())
    if optimizer is not None:
        tensors = load_file(checkpoint / "optimizer.safetensors")
        meta = json.loads((checkpoint / "optimizer.json").read_text())
        optimizer.load_state_dict(optimizer_from_files(tensors, meta))
    return json.loads((checkpoint / TRAINER_STATE).read_text())
