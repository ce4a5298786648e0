# SPDX-License-Identifier: Apache-2.0
"""Sharded training (FSDP2) for runs past one machine: applying `fully_shard`, the EMA target encoder's layout,
and the full model gathered once for the export (the checkpoints are in `sharded_checkpointing`).

Sharding. On GPUs, `accelerate launch --config_file configs/accelerate/fsdp2_gpu.yaml` makes `accelerator.prepare`
apply `fully_shard` (FSDP2) itself. Accelerate (1.15) ignores an FSDP config on CPUs: the processes join a gloo
group as `MULTI_CPU` and `prepare` wraps the model in DDP. `prepare_model_and_optimizer` covers both: Accelerate's
FSDP2 where it applies, else `shard_model` (`fully_shard` on every transformer block, then on the root, as
Accelerate does) with the block names and `reshard_after_forward` of the launch config.

The EMA target encoder. `fully_shard` shards every parameter along dim 0 over one mesh, the target encoder's exactly
like the context encoder's, and after the backward every parameter is its local shard again (FSDP2 also reshards
the groups that ran forward without gradients, such as the target encoder's). `update_target_encoder`'s
`torch._foreach_*` lerp therefore runs on the local shards with no communication; `check_ema_is_local` checks the
layout that this needs."""

import logging
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
)
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from modeling_ijepa.training.checkpointing import (
    describe_names,
)

logger = logging.getLogger(__name__)


# The transformer blocks of our encoders and predictors (I-JEPA and V-JEPA use transformers' `IJepaLayer`, V-JEPA 2
# its `VJEPA2Layer`): each becomes one FSDP unit, all-gathered just before it runs.
TRANSFORMER_BLOCKS = ("IJepaLayer", "VJEPA2Layer")


def fsdp_requested() -> bool:
    """Whether `accelerate launch` was given an FSDP2 config (it exports `ACCELERATE_USE_FSDP` and `FSDP_VERSION`
    to every process), whether or not Accelerate then applies it."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and os.environ.get("FSDP_VERSION") == "2"


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `fully_shard` was applied to `model` or to one of its modules."""
    return any(isinstance(module, FSDPModule) for module in model.modules())


def shard_model(
    model: torch.nn.Module, block_names: list[str] | None = None, reshard_after_forward: bool = True
) -> torch.nn.Module:
    """Apply FSDP2 to `model` in place over all processes: `fully_shard` on every module whose class is named in
    `block_names` (default: `TRANSFORMER_BLOCKS`), then on `model` itself for the remaining parameters (patch
    embeddings, final norms, the predictor's tables). Every parameter becomes a `DTensor` sharded along dim 0.

    Build the optimizer after this call: `fully_shard` replaces the parameters. `reshard_after_forward=False`
    keeps each block's gathered parameters from the forward to the backward (more memory, fewer all-gathers)."""
    present = {type(module).__name__ for module in model.modules()}
    if block_names is None:
        block_names = [name for name in TRANSFORMER_BLOCKS if name in present]
    unknown = sorted(set(block_names) - present)
    if unknown:
        candidates = sorted(name for name in present if name.endswith("Layer"))
        raise ValueError(f"No module of class {', '.join(unknown)} in {type(model).__name__} to shard "
                         f"(fsdp_transformer_layer_cls_to_wrap); its layer classes are {', '.join(candidates)}.")
    for module in model.modules():
        if type(module).__name__ in block_names:
            fully_shard(module, reshard_after_forward=reshard_after_forward)
    # The root keeps FSDP's default (no resharding between its forward and backward: they follow each other).
    fully_shard(model)
    return model


def prepare_model_and_optimizer(
    accelerator, model: torch.nn.Module, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """`accelerator.prepare` for the model and its optimizer (`make_optimizer(model)`, e.g. `build_optimizer`), with
    FSDP2 also on CPUs: where Accelerate applies the launch config's FSDP2 (GPUs) it shards them itself; where it
    ignores it (CPUs: `MULTI_CPU`), `shard_model` does, with the config's blocks and `reshard_after_forward`, and
    the optimizer is built on the sharded parameters. Without an FSDP2 config this is a plain `prepare` (DDP)."""
    if accelerator.distributed_type == DistributedType.FSDP or not fsdp_requested():
        return accelerator.prepare(model, make_optimizer(model))
    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables that `accelerate launch` set
    if plugin.activation_checkpointing or isinstance(plugin.cpu_offload, CPUOffloadPolicy) \
            or accelerator.mixed_precision != "no":
        logger.warning("FSDP2 on CPU shards the model only: fsdp_activation_checkpointing (use "
                       "--gradient_checkpointing), fsdp_offload_params and mixed precision are not applied.")
    model = shard_model(model.to(accelerator.device), plugin.transformer_cls_names_to_wrap,
                        bool(plugin.reshard_after_forward))
    return model, accelerator.prepare(make_optimizer(model))


def layout(tensor: torch.Tensor) -> tuple:
    """Where a tensor's values live: its mesh, placements and local shape for a `DTensor`, else its shape."""
    if isinstance(tensor, DTensor):
        return tensor.device_mesh, tuple(tensor.placements), tuple(tensor.to_local().shape)
    return None, None, tuple(tensor.shape)


def check_ema_is_local(model: torch.nn.Module) -> None:
    """Raise `ValueError` unless every target-encoder parameter of `model` (a pretraining model, sharded or not)
    is laid out like its context-encoder counterpart (same type, mesh, placements and local shape), so that
    `update_target_encoder` combines local shards only. Call it after sharding; it communicates nothing."""
    model = getattr(model, "module", model)  # DDP
    pairs = zip(model.target_encoder.named_parameters(), model.context_encoder.parameters(), strict=True)
    differ = [name for (name, target), context in pairs
              if type(target) is not type(context) or layout(target) != layout(context)]
    if differ:
        raise ValueError(f"The target encoder is not sharded like the context encoder ({describe_names(differ)}): "
                         "the EMA update would mix shards of different parameters. Shard both the same way.")


def gather_full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of `model`, on the CPU of the main process (rank 0); other processes get an
    empty dict. A collective: call it on every process. Its names are the model's own, whatever wraps it
    (`unsharded_copy` loads it into a plain model to export)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def unsharded_copy(model: torch.nn.Module) -> torch.nn.Module | None:
    """An unsharded copy of the pretraining model `model` (sharded or not), on the CPU of the main process, for the
    final export (`save_pretrained`, `export_encoder`); None on the other processes. A collective."""
    state = gather_full_state_dict(model)
    if distributed_ready() and dist.get_rank() != 0:
        return None
    model = getattr(model, "module", model)  # DDP
    # `fully_shard` swaps the model's class for a subclass of FSDPModule: build the class it had.
    model_class = next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))
    copy = model_class(model.config)
    copy.load_state_dict(state)
    return copy


def distributed_ready() -> bool:
    return dist.is_available() and dist.is_initialized()
