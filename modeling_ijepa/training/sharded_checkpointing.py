# SPDX-License-Identifier: Apache-2.0
"""Sharded checkpoints (`torch.distributed.checkpoint`) of FSDP2 runs (see `sharding`).

A sharded checkpoint is a folder `checkpoint-{step}` holding

    shard-{r:05d}-model-00001-of-00001.safetensors   one per process r (from 1): its shards of the model's and the
                                                     optimizer's tensors, each with its offsets in the full tensor
    sharded_checkpoint.json                          every tensor's full shape and dtype, the shard files, the world
                                                     size, the optimizer's param_groups and non-tensor state
    config.json, trainer_state.json                  as in `checkpointing` (the trainer state and run fingerprint)

Tensor names are the model's own (`target_encoder.layers.0...`, under `model.`), whatever wraps the model (FSDP,
DDP, activation checkpointing), so a checkpoint written by N processes loads on any number M: DCP reads each
process's part of every tensor from whichever shards hold it.

No pickle. DCP's default storage (`FileSystemWriter`) writes `.metadata` with `pickle.dump`, and
`FileSystemReader` reads it back with `pickle.load`, which runs whatever code the file names; its
`__{rank}_0.distcp` files are `torch.save` archives (tensors read back with `weights_only=True`, any other value with
`weights_only=False`). This module uses what torch offers instead, `torch.distributed.checkpoint.hf_storage`
(`HuggingFaceStorageWriter(save_distributed=True)` / `HuggingFaceStorageReader`): the same planner, resharding and
one-file-per-process writes, but safetensors files whose headers hold each shard's offsets as JSON, and no metadata
file. Everything that is not a tensor goes to JSON here. Nothing written or read is pickle.

Crash safety, as in `checkpointing`: every process writes its shards into one temporary folder; once all have
written (and fsynced) them, the main process writes the JSON files, fsyncs and renames the folder to
`checkpoint-{step}` in one step, then deletes the checkpoints beyond the newest `total_limit`. A kill at any moment
leaves only complete checkpoints under that name; `latest_sharded_checkpoint` also skips any that
`verify_sharded_checkpoint` refuses. Every process takes part in every function here (they are collectives) and
they all raise together, so a failure never leaves some of them waiting. `output_dir` must be one folder that every
process sees (a shared file system on several machines).
"""

import json
import logging
import math
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError, safe_open
from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.tensor import DTensor

from modeling_ijepa.training.checkpointing import (
    TEMPORARY_PREFIX,
    TRAINER_STATE,
    CheckpointError,
    CheckpointWriteError,
    NonFiniteStateError,
    check_resume,
    describe_names,
    discard,
    fsync_directory,
    fsync_tree,
    latest_checkpoint,
    list_checkpoints,
    non_finite_tensors,
    read_json,
    verify_safetensors,
)
from modeling_ijepa.training.sharding import distributed_ready

logger = logging.getLogger(__name__)

SHARDED_MANIFEST = "sharded_checkpoint.json"
MANIFEST_FORMAT = "torch.distributed.checkpoint hf_storage (safetensors shards) + JSON, version 1"
# The key under which DCP's safetensors writer stores each tensor's offsets in the file header (JSON).
SHARDING_INFO_KEY = "DCP_SHARDING_INFO"


def local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def flat_state(model_state: dict, optimizer_state: dict | None) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors DCP writes or reads, keyed `model.{name}` and `optimizer.{name}.{state}`, and the optimizer's
    other values (`{name}.{state}` -> value) that go to JSON."""
    tensors = {f"model.{name}": value for name, value in model_state.items()}
    scalars = {}
    for name, values in (optimizer_state or {}).get("state", {}).items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{name}.{key}"] = value
            else:
                scalars[f"{name}.{key}"] = value
    return tensors, scalars


def flag_device() -> torch.device:
    """A device the process group's backend reduces on (NCCL needs the process's GPU)."""
    if torch.accelerator.is_available():
        return torch.device(torch.accelerator.current_accelerator().type, torch.accelerator.current_device_index())
    return torch.device("cpu")


def agree(failure: str | None, error_class: type[Exception], what: str) -> None:
    """Raise `error_class` on every process if `failure` (this process's message, or None) is set on any of them,
    so that all stop together; the others name the first process that failed."""
    failed_rank = torch.tensor([dist.get_rank() + 1 if failure else 0], device=flag_device())
    dist.all_reduce(failed_rank, op=dist.ReduceOp.MAX)
    first = int(failed_rank.item()) - 1
    if failure:
        raise error_class(failure)
    if first >= 0:
        raise error_class(f"{what} failed on process {first}; its log says why.")


def is_sharded_checkpoint(checkpoint: str | Path) -> bool:
    return (Path(checkpoint) / SHARDED_MANIFEST).is_file()


def require_distributed(checkpoint: Path, action: str) -> None:
    """Refuse to read or write a sharded checkpoint where `torch.distributed` is not initialised, saying what to do."""
    if distributed_ready():
        return
    raise CheckpointError(
        f"{checkpoint} is a sharded checkpoint (torch.distributed.checkpoint, one file per process): it cannot be "
        f"{action} without torch.distributed, which is not initialised in this process. Start the run under "
        "torch.distributed, on any number of processes (the shards are redistributed): `accelerate launch "
        "--config_file configs/accelerate/fsdp2_cpu.yaml --num_processes 1 run_pretraining.py ...` (fsdp2_gpu.yaml "
        "on GPUs), or `torchrun --nproc_per_node 1 ...`. A single-process run without torch.distributed writes and "
        "reads `checkpointing.save_checkpoint`'s format instead."
    )


def build_manifest(tensors: dict[str, torch.Tensor], scalars: dict, optimizer_state: dict | None,
                   shards: list[str]) -> dict:
    """What `sharded_checkpoint.json` records: full shapes and dtypes, shard files, and the optimizer's JSON part."""
    return {
        "format": MANIFEST_FORMAT,
        "torch_version": torch.__version__,
        "world_size": dist.get_world_size(),
        "shards": shards,
        "tensors": {name: {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
                    for name, value in tensors.items()},
        "optimizer": {"param_groups": (optimizer_state or {}).get("param_groups", []), "scalars": scalars},
    }


def publish(temporary: Path, final: Path, manifest: dict, config, state: dict, total_limit: int | None) -> None:
    """Main process, once every process has written its shards into `temporary`: add the JSON files, flush it
    all to disk, rename it to `final` in one step, then delete the checkpoints beyond the newest `total_limit`."""
    (temporary / SHARDED_MANIFEST).write_text(json.dumps(manifest, indent=1))
    config.to_json_file(temporary / "config.json")
    (temporary / TRAINER_STATE).write_text(json.dumps(state, indent=2))
    fsync_tree(temporary)
    if final.exists():  # a checkpoint of the same step from an earlier attempt: replace it
        discard(final)
    os.replace(temporary, final)
    fsync_directory(final.parent)  # make the rename itself durable
    if total_limit is not None:
        for old in list_checkpoints(final.parent)[:-total_limit]:
            try:
                discard(old)
            except OSError as error:
                logger.warning(f"Could not delete the old checkpoint {old}: {error}")


def write_failure(final: Path, error: Exception) -> str:
    return (f"Could not write checkpoint {final}: {getattr(error, 'strerror', None) or error}. "
            "Earlier checkpoints are intact.")


def start_temporary(output_dir: Path, temporary: Path) -> None:
    """Main process: remove what killed saves left behind, and create the folder every process writes into."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for leftover in output_dir.glob(f"{TEMPORARY_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    temporary.mkdir()


def save_sharded_checkpoint(
    output_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
    total_limit: int | None = None,
) -> Path:
    """Atomically write `output_dir/checkpoint-{step}` from every process, each its own shards, and keep only the
    newest `total_limit` checkpoints; returns the folder. A collective: call it on every process.

    `model` is the pretraining model as `prepare_model_and_optimizer` returned it (sharded, or DDP) and `state` the
    trainer state (written by the main process). Raises, on every process, `NonFiniteStateError` before anything is
    written if a weight or optimizer tensor is not finite on any process, and `CheckpointWriteError` naming the
    folder and the cause if anything cannot be written."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    require_distributed(final, "written")
    model_state, optimizer_state = get_state_dict(model, optimizer)
    tensors, scalars = flat_state(model_state, optimizer_state)
    bad = non_finite_tensors({name: local(value) for name, value in tensors.items()})
    agree(f"Not writing {final}: {len(bad)} of {len(tensors)} tensors are not finite ({describe_names(bad)}). The "
          "run has diverged; earlier checkpoints are kept. Lower the learning rate or clip gradients "
          "(--max_grad_norm)." if bad else None, NonFiniteStateError, f"Writing {final}")
    main = dist.get_rank() == 0
    temporary = output_dir / f"{TEMPORARY_PREFIX}{step}-sharded"
    failure = None
    try:
        if main:
            start_temporary(output_dir, temporary)
        agree(None, CheckpointWriteError, f"Writing {final}")  # the folder exists before anyone writes into it
        dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(temporary), save_distributed=True))
    except (OSError, SafetensorError, dcp.CheckpointException) as error:
        failure = write_failure(final, error)
    if failure and main:
        shutil.rmtree(temporary, ignore_errors=True)
    agree(failure, CheckpointWriteError, f"Writing {final}")
    if main:
        try:
            shards = sorted(path.name for path in temporary.glob("*.safetensors"))
            manifest = build_manifest(tensors, scalars, optimizer_state, shards)
            publish(temporary, final, manifest, getattr(model, "module", model).config, state, total_limit)
        except (OSError, TypeError, ValueError) as error:  # TypeError, ValueError: state that JSON cannot hold
            failure = write_failure(final, error)
            shutil.rmtree(temporary, ignore_errors=True)  # do not leave a partial copy filling the disk
    agree(failure, CheckpointWriteError, f"Writing {final}")
    return final


def read_shard_header(path: Path) -> dict[str, tuple[list[int], list[int]]]:
    """`name -> (offsets, shape)` of every tensor part that one shard file holds, from its header alone (a
    truncated file fails here). Raises `CheckpointError` naming the file."""
    try:
        with safe_open(path, "pt") as file:
            offsets = json.loads((file.metadata() or {}).get(SHARDING_INFO_KEY, "{}"))
            names = file.keys()
            return {name: (offsets[name]["saved_offsets"], file.get_slice(name).get_shape()) for name in names}
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint shard: {error!r}") from None


def check_coverage(checkpoint: Path, expected: dict, parts: dict[str, list]) -> None:
    """Check that the shard files together hold every tensor that the manifest lists, whole, and no other."""
    missing, unexpected = sorted(set(expected) - set(parts)), sorted(set(parts) - set(expected))
    incomplete = []
    for name in sorted(set(expected) & set(parts)):
        full = expected[name]["shape"]
        inside = all(len(offsets) == len(full) and all(0 <= o and o + s <= f for o, s, f in zip(offsets, shape, full))
                     for offsets, shape in parts[name])
        if not inside or sum(math.prod(shape) for _, shape in parts[name]) != math.prod(full):
            incomplete.append(name)
    if missing or unexpected or incomplete:
        raise CheckpointError(
            f"The shards of {checkpoint} do not hold the tensors that {SHARDED_MANIFEST} lists (missing: "
            f"{describe_names(missing) or 'none'}; incomplete: {describe_names(incomplete) or 'none'}; unexpected: "
            f"{describe_names(unexpected) or 'none'})."
        )


def read_manifest(checkpoint: Path) -> dict:
    if not (checkpoint / SHARDED_MANIFEST).is_file():
        raise CheckpointError(f"{checkpoint} is not a complete sharded checkpoint: no {SHARDED_MANIFEST}.")
    manifest = read_json(checkpoint / SHARDED_MANIFEST)
    kinds = {"shards": list, "tensors": dict, "optimizer": dict, "world_size": int}
    wrong = [key for key, kind in kinds.items() if not isinstance(manifest.get(key), kind)]
    if wrong or manifest.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{checkpoint / SHARDED_MANIFEST} is not a sharded-checkpoint manifest of format "
                              f"{MANIFEST_FORMAT!r} (format {manifest.get('format')!r}; bad fields: "
                              f"{', '.join(wrong) or 'none'}).")
    return manifest


def verify_sharded_checkpoint(checkpoint: str | Path) -> dict:
    """Check that `checkpoint` is a complete, intact sharded checkpoint without loading it: its JSON files
    readable, exactly the shard files that the manifest lists, those holding every listed tensor whole, and every
    value finite. Returns the manifest; raises `CheckpointError` naming the file at fault.

    Under torch.distributed it is a collective: each process reads the values of its share of the shard files
    (all of them read every header), and all raise together."""
    checkpoint = Path(checkpoint)
    manifest = read_manifest(checkpoint)
    for name in ("config.json", TRAINER_STATE):
        read_json(checkpoint / name)
    present = sorted(path.name for path in checkpoint.glob("*.safetensors"))
    if present != sorted(manifest["shards"]):
        raise CheckpointError(f"{checkpoint} holds the shard files {present}; {SHARDED_MANIFEST} lists "
                              f"{sorted(manifest['shards'])}.")
    parts: dict[str, list] = {}
    for shard in present:
        for name, part in read_shard_header(checkpoint / shard).items():
            parts.setdefault(name, []).append(part)
    check_coverage(checkpoint, manifest["tensors"], parts)
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed_ready() else (0, 1)
    failure = None
    for shard in present[rank::world_size]:
        try:
            verify_safetensors(checkpoint / shard)
        except CheckpointError as error:
            failure = str(error)
            break
    if distributed_ready():
        agree(failure, CheckpointError, f"Verifying {checkpoint}")
    elif failure:
        raise CheckpointError(failure)
    return manifest


def latest_sharded_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint in `output_dir` that `verify_sharded_checkpoint` accepts; newer ones that it refuses
    (and checkpoints of a single-process run) are skipped with a warning saying why. None when `output_dir` holds no
    checkpoint; `CheckpointError` when it holds some and none can be resumed (starting from scratch would silently
    discard the run). A collective under torch.distributed."""
    return latest_checkpoint(output_dir, verify=verify_as_sharded)


def verify_as_sharded(checkpoint: Path) -> None:
    """`verify_sharded_checkpoint`, refusing first a checkpoint that a single-process run wrote."""
    if not is_sharded_checkpoint(checkpoint):
        raise CheckpointError(f"{checkpoint} is not a sharded checkpoint (no {SHARDED_MANIFEST}): a "
                              "single-process run wrote it, and a single-process run resumes it.")
    verify_sharded_checkpoint(checkpoint)


def check_same_tensors(checkpoint: Path, manifest: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a checkpoint whose tensors (those `tensors` asks for: the model's, and the optimizer's when given)
    differ from this run's in names or full shapes, naming them."""
    wanted = {"model."} | ({"optimizer."} if any(name.startswith("optimizer.") for name in tensors) else set())
    stored = {name: spec["shape"] for name, spec in manifest["tensors"].items() if name.startswith(tuple(wanted))}
    here = {name: list(value.shape) for name, value in tensors.items()}
    problems = []
    other_shape = [f"{name} is {stored[name]} there and {here[name]} here"
                   for name in sorted(set(stored) & set(here)) if stored[name] != here[name]]
    if other_shape:
        problems.append(f"{len(other_shape)} tensors of another shape ({describe_names(other_shape, 3)})")
    for kind, names in (("missing", set(here) - set(stored)), ("unexpected", set(stored) - set(here))):
        if names:
            problems.append(f"{len(names)} {kind} tensors ({describe_names(sorted(names))})")
    if problems:
        raise CheckpointError(f"{checkpoint} holds another model than this run's: " + "; ".join(problems) + ".")


def optimizer_state_from(checkpoint: Path, manifest: dict, tensors: dict, current: dict) -> dict:
    """The optimizer state dict to restore: the loaded tensors, the manifest's other values and param_groups (JSON
    lists made tuples again where the current groups hold tuples, e.g. `betas`). `current` is this run's optimizer
    state dict (from `get_state_dict`), which fixes the structure; a checkpoint of another optimizer is refused."""
    stored_groups, scalars = manifest["optimizer"]["param_groups"], manifest["optimizer"]["scalars"]
    if [group.get("params") for group in stored_groups] != [group["params"] for group in current["param_groups"]]:
        raise CheckpointError(f"{checkpoint / SHARDED_MANIFEST}: the optimizer's parameter groups are not this "
                              "run's (another model, or another grouping of its parameters).")
    groups = [{key: tuple(value) if isinstance(live.get(key), tuple) else value for key, value in stored.items()}
              for stored, live in zip(stored_groups, current["param_groups"])]
    state = {}
    for name, values in current["state"].items():
        try:
            state[name] = {key: tensors[f"optimizer.{name}.{key}"] if isinstance(value, torch.Tensor)
                           else scalars[f"{name}.{key}"] for key, value in values.items()}
        except KeyError as error:
            raise CheckpointError(f"{checkpoint} holds no optimizer state {error} for {name}.") from None
    return {"state": state, "param_groups": groups}


def load_sharded_checkpoint(
    checkpoint: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    run: dict | None = None,
    allow_run_changes: bool = False,
) -> dict:
    """Restore `model` and `optimizer` in place from a sharded checkpoint written on any number of processes;
    returns the trainer state. A collective: call it on every process, each with its sharded (or DDP) model.

    Strict, like `checkpointing.load_checkpoint`: the folder must pass `verify_sharded_checkpoint`, hold exactly
    the tensors `model` (and `optimizer`) has, with the same full shapes, and, when the current run's fingerprint
    `run` is given, pass `check_resume` (all checked before any weight is loaded). Raises `CheckpointError` naming
    the file, and saying what to do when torch.distributed is not initialised."""
    checkpoint = Path(checkpoint)
    if not is_sharded_checkpoint(checkpoint):
        raise CheckpointError(f"{checkpoint} is not a sharded checkpoint (no {SHARDED_MANIFEST}); a single-process "
                              "run's checkpoint loads with `checkpointing.load_checkpoint`.")
    require_distributed(checkpoint, "loaded")
    manifest = verify_sharded_checkpoint(checkpoint)
    state = read_json(checkpoint / TRAINER_STATE)
    if run is not None:
        check_resume(state, run, allow_run_changes, checkpoint)
    if optimizer is None:
        model_state, optimizer_state = get_model_state_dict(model), None
    else:
        model_state, optimizer_state = get_state_dict(model, optimizer)
    tensors, _ = flat_state(model_state, optimizer_state)
    check_same_tensors(checkpoint, manifest, tensors)
    try:
        # Each process reads, from whichever shard files hold them, the parts of every tensor that it holds.
        dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(checkpoint)))
    except dcp.CheckpointException as error:
        raise CheckpointError(f"Could not read {checkpoint}: {error}") from None
    model_state = {name: tensors[f"model.{name}"] for name in model_state}
    if optimizer is None:
        set_model_state_dict(model, model_state)
    else:
        restored = optimizer_state_from(checkpoint, manifest, tensors, optimizer_state)
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=restored)
    return state
