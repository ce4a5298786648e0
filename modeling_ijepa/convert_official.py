"""Convert checkpoints of the reference I-JEPA and V-JEPA code into our models.

    python -m modeling_ijepa.convert_official --checkpoint IN1K-vit.h.14-300e.pth.tar --output_dir out \
        --num_attention_heads 16

writes `out/pretraining/` (the full pretraining model, safetensors) and `out/encoder/` (the chosen encoder;
for images a folder that stock transformers loads, with an image processor). Sizes that the tensors determine
are inferred; only the head counts must be given. The checkpoint is read with
`torch.load(weights_only=True)`, so a file that would run code when unpickled is refused. Conversion is strict:
the three networks must be there, every tensor finite, every tensor the model needs present and none left over;
errors name the file.
"""

import argparse
import logging
import math
import pickle
import re
from pathlib import Path

import torch

from .checkpointing import CheckpointError, describe_names, non_finite_tensors
from .configuration_ijepa import IJepaConfig
from .export import save_encoder_for_transformers
from .modeling_ijepa import IJepaForPreTraining

logger = logging.getLogger(__name__)

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


def convert_blocks(state_dict: dict[str, torch.Tensor], source: str, target: str) -> dict[str, torch.Tensor]:
    """`{source}.{i}.*` reference blocks -> `{target}.{i}.*` transformers layers, splitting the fused qkv."""
    converted = {}
    pattern = re.compile(rf"^{re.escape(source)}\.(\d+)\.(.+)\.(weight|bias)$")
    for key, value in state_dict.items():
        match = pattern.match(key)
        if not match:
            continue
        index, name, kind = match.groups()
        prefix = f"{target}.{index}"
        if name == "attn.qkv":
            for projection, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                converted[f"{prefix}.attention.{projection}.{kind}"] = chunk.clone()
        else:
            converted[f"{prefix}.{BLOCK_RENAMES[name]}.{kind}"] = value
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


def load_networks(model, encoder: dict, target_encoder: dict, predictor: dict):
    """Put the three converted reference networks into a pretraining model (all keys must match); eval mode."""
    state_dict = {f"context_encoder.{key}": value for key, value in convert_encoder(encoder).items()}
    state_dict |= {f"target_encoder.{key}": value for key, value in convert_encoder(target_encoder).items()}
    state_dict |= {f"predictor.{key}": value for key, value in convert_predictor(predictor).items()}
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def convert_ijepa(checkpoint: dict, num_attention_heads: int, predictor_num_attention_heads: int | None = None):
    """A loaded reference I-JEPA checkpoint -> `IJepaForPreTraining` holding its three networks."""
    encoder, target_encoder = strip_prefix(checkpoint["encoder"]), strip_prefix(checkpoint["target_encoder"])
    predictor = strip_prefix(checkpoint["predictor"])
    sizes = encoder_sizes(encoder, predictor)
    grid_side = math.isqrt(encoder["pos_embed"].shape[1])
    if grid_side * grid_side != encoder["pos_embed"].shape[1]:
        raise ValueError(f"Expected a square patch grid, got {encoder['pos_embed'].shape[1]} positions.")
    config = IJepaConfig(
        **sizes,
        image_size=grid_side * sizes["patch_size"],
        num_attention_heads=num_attention_heads,
        predictor_num_attention_heads=predictor_num_attention_heads,
    )
    return load_networks(IJepaForPreTraining(config), encoder, target_encoder, predictor)


def is_video_checkpoint(checkpoint: dict) -> bool:
    return strip_prefix(checkpoint["encoder"])["patch_embed.proj.weight"].ndim == 5


def convert_checkpoint(
    path: str | Path,
    num_attention_heads: int,
    predictor_num_attention_heads: int | None = None,
    num_frames: int | None = None,
    uniform_power: bool | None = None,
):
    """Load and convert a reference checkpoint of either kind -> `IJepaForPreTraining` or `VJepaForPreTraining`.

    Raises `CheckpointError` naming `path` when a tensor the model needs is missing, or one is left over."""
    checkpoint = load_reference_checkpoint(path)
    try:
        if is_video_checkpoint(checkpoint):
            from .convert_vjepa import convert_vjepa

            return convert_vjepa(
                checkpoint, num_attention_heads, predictor_num_attention_heads, num_frames, uniform_power
            )
        return convert_ijepa(checkpoint, num_attention_heads, predictor_num_attention_heads)
    except KeyError as error:
        raise CheckpointError(f"Cannot convert {path}: it lacks the tensor {error}.") from None
    except (ValueError, RuntimeError) as error:  # RuntimeError: the strict load of the converted tensors
        raise CheckpointError(f"Cannot convert {path}: {error}") from None


def write_converted(model, output_dir: str | Path, encoder: str = "target") -> None:
    """Write `output_dir/pretraining/` (full model) and `output_dir/encoder/` (the chosen encoder)."""
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir / "pretraining")
    chosen = model.target_encoder if encoder == "target" else model.context_encoder
    if isinstance(model, IJepaForPreTraining):
        save_encoder_for_transformers(chosen, output_dir / "encoder")
    else:
        chosen.save_pretrained(output_dir / "encoder")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="Reference .pth.tar checkpoint (I-JEPA or V-JEPA).")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_attention_heads", type=int, required=True, help="Encoder heads (not in the tensors).")
    parser.add_argument("--predictor_num_attention_heads", type=int, default=None, help="Defaults to the encoder's.")
    parser.add_argument("--encoder", choices=["target", "context"], default="target", help="Encoder to export.")
    parser.add_argument("--num_frames", type=int, default=None, help="Video: frames per clip; read off the position table when absent.")
    parser.add_argument(
        "--uniform_power",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Video: layout of the 3D position table; detected from the stored table when not given.",
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    model = convert_checkpoint(
        args.checkpoint,
        args.num_attention_heads,
        args.predictor_num_attention_heads,
        num_frames=args.num_frames,
        uniform_power=args.uniform_power,
    )
    write_converted(model, args.output_dir, args.encoder)
    logger.info("Wrote %s/pretraining and %s/encoder (%s encoder).", args.output_dir, args.output_dir, args.encoder)


if __name__ == "__main__":
    main()
