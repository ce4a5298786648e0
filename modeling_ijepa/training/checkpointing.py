# SPDX-License-Identifier: Apache-2.0
"""Crash-safe training checkpoints made of safetensors and JSON only (no pickle).

A checkpoint is a folder `checkpoint-{step}` holding
    model.safetensors, config.json   the full pretraining model (`save_pretrained`)
    optimizer.safetensors            every optimizer state tensor, keyed "{parameter index}.{name}"
    optimizer.json                   the optimizer's param_groups (hyperparameters and parameter indices) and
                                     the names of the tensors optimizer.safetensors holds
    trainer_state.json               step, epoch, position in the epoch, counters, log history, and the run's
                                     fingerprint (what determines its trajectory; see `run_changes`)

It is written into a temporary sibling folder, flushed to disk, then renamed in one step, so a crash or a kill
at any moment leaves either the previous checkpoints or a complete new one, never a half-written
`checkpoint-{step}`. Checkpoints are deleted the same way round: renamed to a temporary name first, so a kill
during the deletion leaves no half-deleted `checkpoint-{step}` either. Leftover temporary folders are ignored
and removed on the next save.

Nothing untrustworthy is written or read: `save_checkpoint` refuses weights or optimizer state that are not
finite, `verify_checkpoint` checks that a folder is complete, readable and finite, `latest_checkpoint` skips (and
logs) the newest ones that are not, and `load_checkpoint` also requires every tensor the model expects and no
other. Errors name the file.
"""

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TEMPORARY_PREFIX = ".tmp-checkpoint-"
TRAINER_STATE = "trainer_state.json"
# Every file of a checkpoint besides the model's weights (one safetensors file, or shards listed by an index).
CHECKPOINT_FILES = ("config.json", "optimizer.safetensors", "optimizer.json", TRAINER_STATE)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, read-only folder, ...); the previous ones are intact."""


class NonFiniteStateError(RuntimeError):
    """The weights or the optimizer state hold NaN or infinite values: they are not written as a checkpoint."""


class CheckpointError(ValueError):
    """A checkpoint or model folder that cannot be trusted: incomplete, unreadable, not finite, not matching the
    model, or from another run. The message names the file."""


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in `tensors` that hold a NaN or an infinity (one read-back in all)."""
    by_device: dict[torch.device, list[str]] = {}
    for name, value in tensors.items():
        if torch.is_floating_point(value):
            by_device.setdefault(value.device, []).append(name)
    bad = set()
    for names in by_device.values():
        finite = torch.stack([torch.isfinite(tensors[name]).all() for name in names]).tolist()
        bad.update(name for name, ok in zip(names, finite) if not ok)
    return [name for name in tensors if name in bad]


def describe_names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def check_finite_state(model, optimizer: torch.optim.Optimizer | None, where: str | Path) -> None:
    """Raise `NonFiniteStateError` if a weight of `model` or a tensor of `optimizer`'s state is not finite, before
    they are written to `where`.

    Identical on every process of a data-parallel run (they hold the same weights), so each can call it and all
    stop together."""
    tensors = {f"model: {name}": value for name, value in model.state_dict().items()}
    for index, state in (optimizer.state_dict()["state"] if optimizer is not None else {}).items():
        tensors |= {
            f"optimizer: {index}.{name}": value for name, value in state.items() if isinstance(value, torch.Tensor)
        }
    bad = non_finite_tensors(tensors)
    if bad:
        raise NonFiniteStateError(
            f"Not writing {where}: {len(bad)} of {len(tensors)} tensors are not finite ({describe_names(bad)}). The "
            "run has diverged; earlier checkpoints are kept. Lower the learning rate or clip gradients "
            "(--max_grad_norm)."
        )


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
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars, "tensors": sorted(tensors)}


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


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files holding a `save_pretrained` folder's weights: `model.safetensors`, or the shards that
    its index lists when the model was saved in several."""
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return [folder / "model.safetensors"]
    try:
        shards = json.loads(index.read_text())["weight_map"].values()
    except (OSError, ValueError, KeyError, AttributeError) as error:
        raise CheckpointError(f"{index} is not a readable weight index ({error}).") from None
    return [folder / name for name in sorted(set(shards))]


def verify_safetensors(path: Path) -> list[str]:
    """Open `path` and check that every tensor is finite, one tensor at a time (a checkpoint may be larger than
    memory); returns the tensor names. Raises `CheckpointError` naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing.")
    try:
        with safe_open(path, "pt") as file:
            names = list(file.keys())
            bad = [name for name in names if non_finite_tensors({name: file.get_tensor(name)})]
    except (SafetensorError, OSError) as error:
        # Truncated files fail here ("header too small", "incomplete metadata, file not fully covered").
        raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from None
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} of {len(names)} tensors are not finite ({describe_names(bad)}).")
    return names


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable JSON file: {error}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} does not hold a JSON object.")
    return value


def verify_checkpoint(checkpoint: str | Path) -> None:
    """Check that `checkpoint` is complete and intact without loading it into a model: every file present and
    readable, the optimizer's tensors those that its `optimizer.json` lists, and every tensor finite. Raises
    `CheckpointError` naming the file at fault."""
    checkpoint = Path(checkpoint)
    missing = [name for name in CHECKPOINT_FILES if not (checkpoint / name).is_file()]
    if missing:
        raise CheckpointError(f"{checkpoint} is not a complete checkpoint folder: no {', '.join(missing)}.")
    for name in ("config.json", "optimizer.json", TRAINER_STATE):
        read_json(checkpoint / name)
    for path in weight_files(checkpoint):
        verify_safetensors(path)
    stored = set(verify_safetensors(checkpoint / "optimizer.safetensors"))
    listed = set(read_json(checkpoint / "optimizer.json").get("tensors", ()))
    if stored != listed:
        missing, unexpected = describe_names(sorted(listed - stored)), describe_names(sorted(stored - listed))
        raise CheckpointError(
            f"{checkpoint / 'optimizer.safetensors'} does not hold the tensors that optimizer.json lists (missing: "
            f"{missing or 'none'}; unexpected: {unexpected or 'none'})."
        )


def latest_checkpoint(output_dir: str | Path, verify: Callable[[Path], object] | None = None) -> Path | None:
    """The newest checkpoint in `output_dir` that `verify` (default `verify_checkpoint`) accepts; newer ones that it
    refuses are skipped with a warning saying why. None when `output_dir` holds no checkpoint. Raises
    `CheckpointError` when it holds checkpoints and none of them verifies: starting from scratch then would silently
    discard the run."""
    verify = verify or verify_checkpoint
    checkpoints = list_checkpoints(output_dir)
    reasons = []
    for checkpoint in reversed(checkpoints):
        try:
            verify(checkpoint)
        except CheckpointError as error:
            logger.warning(f"Skipping {checkpoint.name}: {error}")
            reasons.append(str(error))
            continue
        return checkpoint
    if checkpoints:
        raise CheckpointError(f"No checkpoint in {output_dir} can be resumed: " + " ".join(reasons))
    return None


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
    `NonFiniteStateError` before writing anything if a weight or optimizer tensor is not finite, and
    `CheckpointWriteError` naming the folder and the cause if anything cannot be written."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    check_finite_state(model, optimizer, final)
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


def check_loaded_weights(model, loading_info: dict, source: str | Path, tolerate_unexpected: bool = False) -> None:
    """Refuse a `from_pretrained(..., output_loading_info=True)` result that transformers would only have warned
    about: tensors the model expects but the files lack (they would keep their random initialisation), tensors of
    another shape, tensors the model does not know (unless `tolerate_unexpected`: a folder holding a larger model,
    e.g. an encoder loaded from a pretraining folder), and non-finite values. Raises `CheckpointError` naming
    `source`."""
    problems = []
    for kind in ("missing_keys", "mismatched_keys", *(() if tolerate_unexpected else ("unexpected_keys",))):
        names = sorted(str(key[0] if isinstance(key, tuple) else key) for key in loading_info.get(kind, ()))
        if names:
            problems.append(f"{len(names)} {kind.replace('_keys', '')} tensors ({describe_names(names)})")
    if loading_info.get("error_msgs"):
        problems.append("; ".join(loading_info["error_msgs"]))
    bad = non_finite_tensors(model.state_dict())
    if bad:
        problems.append(f"{len(bad)} non-finite tensors ({describe_names(bad)})")
    if problems:
        raise CheckpointError(f"Refusing the weights in {source}: " + "; ".join(problems) + ".")


def model_fingerprint(config: PretrainedConfig) -> dict:
    """The fields of a model config that define the architecture: those its class adds to `PretrainedConfig`'s
    generic ones (version, architectures, output flags, ...), and the model type."""
    generic = set(PretrainedConfig().to_dict()) - {"model_type"}
    return {key: value for key, value in config.to_dict().items() if key not in generic}


def run_fingerprint(
    config: PretrainedConfig, data: dict, global_batch_size: int, batches_per_epoch: int, seed: int, schedules,
    arguments: dict,
) -> dict:
    """What determines a run's trajectory, stored in every checkpoint and compared on resume (`check_resume`).

    `data` comes from `data.fingerprint.data_fingerprint`, `schedules` is the run's `Schedules` (a dataclass) and
    `arguments` holds the other settings that change what a step computes (masking, augmentation, optimizer betas,
    ...)."""
    fingerprint = {
        "model": model_fingerprint(config), "data": data, "global_batch_size": global_batch_size,
        "batches_per_epoch": batches_per_epoch, "seed": seed, "schedules": dataclasses.asdict(schedules),
        "arguments": arguments,
    }
    return json.loads(json.dumps(fingerprint))  # as it reads back from trainer_state.json: tuples become lists


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_changes(stored: dict, current: dict) -> list[str]:
    """One line per setting that differs between two run fingerprints: `name: stored -> current`."""
    stored, current = flatten(stored), flatten(current)
    missing = "(not set)"
    return [f"{key}: {stored.get(key, missing)!r} -> {current.get(key, missing)!r}"
            for key in sorted(set(stored) | set(current)) if stored.get(key, missing) != current.get(key, missing)]


def check_resume(state: dict, run: dict, allow_changes: bool, source: str | Path) -> None:
    """Refuse to resume `state` (a checkpoint's trainer state) in a run whose fingerprint `run` differs from the
    stored one, unless `allow_changes` (the changes are then logged), and refuse counters that the run cannot have
    reached. Raises `CheckpointError` naming `source`."""
    stored = state.get("run")
    changes = run_changes(stored, run) if stored is not None else ["(the checkpoint stores no run fingerprint)"]
    if changes and not allow_changes:
        raise CheckpointError(
            f"{source} was written by a different run; resuming it would not continue that run. What changed "
            "(checkpoint -> now):\n  " + "\n  ".join(changes)
            + "\nRestore these settings, start in a new --output_dir, or pass --allow_changed_run to continue anyway."
        )
    if changes:
        logger.warning(f"Resuming {source} with changed settings (--allow_changed_run):\n  " + "\n  ".join(changes))
    total_steps, batches_per_epoch = run["schedules"]["total_steps"], run["batches_per_epoch"]
    bounds = {"global_step": total_steps, "epoch": None, "batches_in_epoch": batches_per_epoch}
    for name, upper in bounds.items():
        value = state.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (upper is not None and value > upper):
            within = f"an integer in [0, {upper}]" if upper is not None else "a non-negative integer"
            raise CheckpointError(f"{Path(source) / TRAINER_STATE}: {name} is {value!r}; this run needs {within}.")


def load_checkpoint(
    checkpoint: str | Path,
    model,
    optimizer: torch.optim.Optimizer | None = None,
    run: dict | None = None,
    allow_run_changes: bool = False,
) -> dict:
    """Restore `model` (unwrapped) and `optimizer` in place from a checkpoint folder; returns the trainer state.

    Strict: the folder must pass `verify_checkpoint`, hold exactly the tensors `model` expects, and, when the
    current run's fingerprint `run` is given, pass `check_resume` (checked before any weight is loaded). Raises
    `CheckpointError` naming the file."""
    checkpoint = Path(checkpoint)
    verify_checkpoint(checkpoint)
    state = read_json(checkpoint / TRAINER_STATE)
    if run is not None:
        check_resume(state, run, allow_run_changes, checkpoint)
    # from_pretrained applies the on-disk key renaming (the target encoder is stored under `ijepa.`).
    loaded, loading_info = type(model).from_pretrained(checkpoint, use_safetensors=True, output_loading_info=True)
    check_loaded_weights(loaded, loading_info, weight_files(checkpoint)[0])
    try:
        model.load_state_dict(loaded.state_dict())
    except RuntimeError as error:
        raise CheckpointError(f"{checkpoint} holds another model than this run's: {error}") from None
    if optimizer is not None:
        meta = read_json(checkpoint / "optimizer.json")
        try:
            optimizer.load_state_dict(optimizer_from_files(load_file(checkpoint / "optimizer.safetensors"), meta))
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"{checkpoint / 'optimizer.json'} does not fit this optimizer: {error}") from None
    return state
