# SPDX-License-Identifier: Apache-2.0
"""Reading checkpoints of the reference I-JEPA / V-JEPA code, and the tensor renames that both converters share.

`load_reference_checkpoint` reads a `.pth.tar` with `torch.load(weights_only=True)` and checks that it holds the
three networks as finite tensors; `convert_encoder`, `convert_predictor` and `load_networks` map the reference ViT
names onto ours. The I-JEPA (`convert_official`), V-JEPA (`convert_vjepa`) and V-JEPA 2 (`convert_vjepa2`)
converters import from here, and this module imports none of them.
"""

import pickle
import re
from pathlib import Path

import torch

from modeling_ijepa.training.checkpointing import CheckpointError, describe_names, non_finite_tensors

# Reference block names -> transformers' I-JEPA layer names (the fused qkv is split separately).
BLOCK_RENAMES = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.o_proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


# The networks of a reference training checkpoint (the optimizer state and counters beside them are not used).
NETWORKS = ("encoder", "predictor", "target_encoder")
ENCODER_TENSORS = {"pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
PREDICTOR_TENSORS = {"predictor_pos_embed", "mask_token"} | {
    f"predictor_{name}.{kind}" for name in ("embed", "norm", "proj") for kind in ("weight", "bias")
}


class UnsafeCheckpointError(ValueError):
    """The file is not a plain tensor checkpoint: unpickling it would run code or build arbitrary objects."""


def load_reference_checkpoint(path: str | Path) -> dict:
    """Load a reference `.pth.tar` safely (`weights_only=True`: tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"Refusing to load {path}: it holds objects that only a full unpickle could build, and a full unpickle "
            f"can run arbitrary code. Reference checkpoints contain only tensors and numbers. ({error})"
        ) from None
    missing = [
        name for name in NETWORKS if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get(name), dict)
    ]
    if missing:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path} is not a reference I-JEPA/V-JEPA training checkpoint: it lacks the {', '.join(missing)} state "
            f"dict(s) (its entries are {found})."
        )
    for name in NETWORKS:
        not_tensors = sorted(key for key, value in checkpoint[name].items() if not isinstance(value, torch.Tensor))
        bad = not_tensors or non_finite_tensors(checkpoint[name])
        if bad:
            kind = "are not tensors" if not_tensors else "are not finite"
            raise CheckpointError(f"{path}: {len(bad)} tensors of its `{name}` {kind} ({describe_names(bad)}).")
    return checkpoint


def strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the DDP `module.` prefix and V-JEPA's `backbone.` wrapper prefix."""
    return {re.sub(r"^(module\.)?(backbone\.)?", "", key): value for key, value in state_dict.items()}


def convert_blocks(
    state_dict: dict[str, torch.Tensor],
    source: str,
    target: str,
    renames: dict[str, str] = BLOCK_RENAMES,
    projections: tuple[str, str, str] = ("q_proj", "k_proj", "v_proj"),
) -> dict[str, torch.Tensor]:
    """`{source}.{i}.*` reference blocks -> `{target}.{i}.*` transformers layers: the fused qkv rows `[q; k; v]` are
    split into `attention.{projections}`, the other tensors renamed by `renames` (I-JEPA's layers by default)."""
    converted = {}
    pattern = re.compile(rf"^{re.escape(source)}\.(\d+)\.(.+)\.(weight|bias)$")
    for key, value in state_dict.items():
        match = pattern.match(key)
        if not match:
            continue
        index, name, kind = match.groups()
        prefix = f"{target}.{index}"
        if name == "attn.qkv":
            for projection, chunk in zip(projections, value.chunk(3, dim=0)):
                converted[f"{prefix}.attention.{projection}.{kind}"] = chunk.clone()
        elif name in renames:
            converted[f"{prefix}.{renames[name]}.{kind}"] = value
        else:
            raise ValueError(f"The reference checkpoint has an unknown block tensor `{key}` (known: {sorted(renames)}).")
    return converted


def check_all_known(state_dict: dict[str, torch.Tensor], fixed: set[str], blocks: str, network: str) -> None:
    """Refuse tensors that the conversion would silently drop: all must be `fixed` ones, blocks `{blocks}.N.*` of a
    known layer, or (predictor) mask tokens."""
    pattern = re.compile(rf"^{re.escape(blocks)}\.\d+\.(.+)\.(weight|bias)$")
    known_layers = set(BLOCK_RENAMES) | {"attn.qkv"}
    unknown = sorted(
        key for key in state_dict
        if key not in fixed and not key.startswith("mask_tokens.")
        and not ((match := pattern.match(key)) and match.group(1) in known_layers)
    )
    if unknown:
        raise ValueError(f"its `{network}` holds tensors that the conversion does not know: {describe_names(unknown)}.")


def count_blocks(state_dict: dict[str, torch.Tensor], source: str) -> int:
    indices = {int(match.group(1)) for key in state_dict if (match := re.match(rf"^{re.escape(source)}\.(\d+)\.", key))}
    if not indices:
        raise ValueError(f"The checkpoint has no `{source}.N.*` blocks.")
    return max(indices) + 1


def convert_encoder(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference ViT encoder -> `IJepaModel`/`VJepaModel` parameter names."""
    check_all_known(state_dict, ENCODER_TENSORS, "blocks", "encoder")
    converted = convert_blocks(state_dict, "blocks", "layers")
    converted["embeddings.position_embeddings"] = state_dict["pos_embed"]
    converted["embeddings.patch_embeddings.projection.weight"] = state_dict["patch_embed.proj.weight"]
    converted["embeddings.patch_embeddings.projection.bias"] = state_dict["patch_embed.proj.bias"]
    converted["layernorm.weight"] = state_dict["norm.weight"]
    converted["layernorm.bias"] = state_dict["norm.bias"]
    return converted


def convert_predictor(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference predictor -> `IJepaPredictor`/`VJepaPredictor` parameter names (without the `predictor.`)."""
    check_all_known(state_dict, PREDICTOR_TENSORS, "predictor_blocks", "predictor")
    converted = convert_blocks(state_dict, "predictor_blocks", "layers")
    converted["position_embeddings"] = state_dict["predictor_pos_embed"]
    for kind in ("weight", "bias"):
        converted[f"embed.{kind}"] = state_dict[f"predictor_embed.{kind}"]
        converted[f"layernorm.{kind}"] = state_dict[f"predictor_norm.{kind}"]
        converted[f"projection.{kind}"] = state_dict[f"predictor_proj.{kind}"]
    for key, value in state_dict.items():
        if key == "mask_token" or key.startswith("mask_tokens."):
            converted[key] = value
    return converted


def encoder_sizes(encoder: dict[str, torch.Tensor], predictor: dict[str, torch.Tensor]) -> dict:
    """The config fields that the tensor shapes determine (shared by images and video)."""
    patch_weight = encoder["patch_embed.proj.weight"]  # [D, C, (t,) p, p]
    return {
        "hidden_size": patch_weight.shape[0],
        "num_channels": patch_weight.shape[1],
        "patch_size": patch_weight.shape[-1],
        "num_hidden_layers": count_blocks(encoder, "blocks"),
        "intermediate_size": encoder["blocks.0.mlp.fc1.weight"].shape[0],
        "qkv_bias": "blocks.0.attn.qkv.bias" in encoder,
        "predictor_hidden_size": predictor["predictor_embed.weight"].shape[0],
        "predictor_num_hidden_layers": count_blocks(predictor, "predictor_blocks"),
    }


def load_networks(model, encoder: dict, target_encoder: dict, predictor: dict,
                  encoder_names=convert_encoder, predictor_names=convert_predictor):
    """Put the three reference networks into a pretraining model (all keys must match); eval mode. `encoder_names`
    and `predictor_names` rename a reference state dict into the model's networks (ours by default)."""
    state_dict = {f"context_encoder.{key}": value for key, value in encoder_names(encoder).items()}
    state_dict |= {f"target_encoder.{key}": value for key, value in encoder_names(target_encoder).items()}
    state_dict |= {f"predictor.{key}": value for key, value in predictor_names(predictor).items()}
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


__all__ = [
    "UnsafeCheckpointError",
    "check_all_known",
    "convert_blocks",
    "convert_encoder",
    "convert_predictor",
    "count_blocks",
    "encoder_sizes",
    "load_networks",
    "load_reference_checkpoint",
    "strip_prefix",
]
