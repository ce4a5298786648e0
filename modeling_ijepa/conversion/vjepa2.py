# SPDX-License-Identifier: Apache-2.0
"""Convert checkpoints of the reference V-JEPA 2 code (facebookresearch/vjepa2) and export for stock transformers.

    python -m modeling_ijepa.conversion.vjepa2 --checkpoint vitl.pt --output_dir out --num_attention_heads 16 \
        --pred_num_attention_heads 12 --crop_size 256 --frames_per_clip 16 --ignore_position_tables

writes `out/pretraining/` (`VJepa2ForPreTraining`: context encoder, target encoder and predictor, to continue
pretraining) and `out/encoder/` (the target encoder and the predictor as a stock `VJEPA2Model`, with a video
processor; it loads with `transformers.AutoModel` and no custom code).

Sizes come from the tensor shapes. What the tensors do not record must be given: the head counts, and the frame size
and clip length (RoPE reads rows and columns off the `crop_size / patch_size` grid). The checkpoint is read with
`torch.load(weights_only=True)`.
"""

import argparse
import functools
import logging
from pathlib import Path

import torch

from modeling_ijepa.cli import HelpFormatter, configure_logging
from modeling_ijepa.configuration_vjepa2 import VJepa2Config
from modeling_ijepa.conversion.reference import (
    convert_blocks,
    encoder_sizes,
    load_networks,
    load_reference_checkpoint,
    strip_prefix,
)
from modeling_ijepa.hub.export import export_vjepa2, video_processor_for
from modeling_ijepa.modeling_vjepa2 import VJepa2ForPreTraining

PROG = "python -m modeling_ijepa.conversion.vjepa2"
logger = logging.getLogger(__name__)

POSITION_TABLES = ("pos_embed", "predictor_pos_embed")


# Reference block names -> stock `VJEPA2Layer` names (the fused qkv is split into query, key and value).
VJEPA2_BLOCK_RENAMES = {
    "norm1": "norm1", "attn.proj": "attention.proj", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
VJEPA2_PROJECTIONS = ("query", "key", "value")


def convert_encoder(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference encoder -> stock `VJEPA2Encoder` names (the key mapping of transformers' own conversion script)."""
    converted = convert_blocks(state_dict, "blocks", "layer", VJEPA2_BLOCK_RENAMES, VJEPA2_PROJECTIONS)
    for kind in ("weight", "bias"):
        converted[f"embeddings.patch_embeddings.proj.{kind}"] = state_dict[f"patch_embed.proj.{kind}"]
        converted[f"layernorm.{kind}"] = state_dict[f"norm.{kind}"]
    return converted


def convert_predictor(state_dict: dict[str, torch.Tensor], num_mask_tokens: int) -> dict[str, torch.Tensor]:
    """Reference predictor -> stock `VJEPA2Predictor` names; `mask_tokens.{i}` [1, 1, Dp] are stacked into
    `embeddings.mask_tokens` [n, 1, 1, Dp]."""
    converted = convert_blocks(state_dict, "predictor_blocks", "layer", VJEPA2_BLOCK_RENAMES, VJEPA2_PROJECTIONS)
    for kind in ("weight", "bias"):
        converted[f"embeddings.predictor_embeddings.{kind}"] = state_dict[f"predictor_embed.{kind}"]
        converted[f"layernorm.{kind}"] = state_dict[f"predictor_norm.{kind}"]
        converted[f"proj.{kind}"] = state_dict[f"predictor_proj.{kind}"]
    converted["embeddings.mask_tokens"] = torch.stack([state_dict[f"mask_tokens.{i}"] for i in range(num_mask_tokens)])
    return converted


def check_is_vjepa2(
    encoder: dict[str, torch.Tensor], predictor: dict[str, torch.Tensor], ignore_position_tables: bool
) -> None:
    """Raise `ValueError` for what is not a V-JEPA 2 video checkpoint.

    A V-JEPA 1 checkpoint has the same keys plus fixed sin-cos position tables that its networks add to the tokens;
    V-JEPA 2 places tokens with RoPE alone. Released V-JEPA 2 checkpoints still carry unused tables, so the tensors
    cannot tell the two apart: a checkpoint with tables converts only when the caller says it is V-JEPA 2.
    """
    patch_weight = encoder.get("patch_embed.proj.weight")
    if patch_weight is None or patch_weight.ndim != 5:
        found = "no patch embedding" if patch_weight is None else f"a {patch_weight.ndim - 2}D patch embedding"
        raise ValueError(
            f"Not a V-JEPA 2 video checkpoint: the encoder has {found}, expected a Conv3d "
            "`patch_embed.proj.weight` [D, C, tubelet, patch, patch]. Image (I-JEPA) checkpoints convert with "
            "`modeling_ijepa.convert_official`."
        )
    if not any(key.startswith("mask_tokens.") for key in predictor):
        raise ValueError("Not a V-JEPA 2 checkpoint: the predictor has no `mask_tokens.N`.")
    tables = [key for key in POSITION_TABLES if key in encoder or key in predictor]
    if tables and not ignore_position_tables:
        raise ValueError(
            f"The checkpoint holds position tables ({', '.join(tables)}): it looks like a V-JEPA 1 checkpoint, whose "
            "networks add these tables to their tokens, while V-JEPA 2 uses RoPE and no table. Convert V-JEPA 1 "
            "checkpoints with `modeling_ijepa.convert_official` (`VJepaForPreTraining`). Released V-JEPA 2 "
            "checkpoints still carry such tables unused: for those, pass `ignore_position_tables=True` "
            "(`--ignore_position_tables`) to drop them."
        )


def convert_vjepa2(
    checkpoint: dict,
    num_attention_heads: int,
    crop_size: int,
    frames_per_clip: int,
    pred_num_attention_heads: int | None = None,
    ignore_position_tables: bool = False,
) -> VJepa2ForPreTraining:
    """A loaded reference V-JEPA 2 checkpoint -> `VJepa2ForPreTraining` (eval mode) holding its three networks.

    Args:
        checkpoint: the reference checkpoint dict (`encoder`, `target_encoder`, `predictor` state dicts with keys
            prefixed `module.backbone.`), as written by the reference training loop.
        num_attention_heads: encoder heads (not recorded in the tensors).
        crop_size: frame height and width the model was trained at (RoPE's row and column grid).
        frames_per_clip: frames per training clip.
        pred_num_attention_heads: predictor heads; defaults to `num_attention_heads`, as in the reference.
        ignore_position_tables: drop the unused `pos_embed` / `predictor_pos_embed` tables that released V-JEPA 2
            checkpoints carry (without it a checkpoint with tables is refused as V-JEPA 1).

    Raises:
        ValueError: the checkpoint is not V-JEPA 2 (see `check_is_vjepa2`), or the sizes do not make a model.
    """
    for name in ("encoder", "target_encoder", "predictor"):
        if not isinstance(checkpoint.get(name), dict):
            raise ValueError(f"Not a reference V-JEPA 2 training checkpoint: no `{name}` state dict.")
    encoder, target_encoder = strip_prefix(checkpoint["encoder"]), strip_prefix(checkpoint["target_encoder"])
    predictor = strip_prefix(checkpoint["predictor"])
    check_is_vjepa2(encoder, predictor, ignore_position_tables)
    for state_dict in (encoder, target_encoder, predictor):
        for key in POSITION_TABLES:
            state_dict.pop(key, None)

    sizes = encoder_sizes(encoder, predictor)
    num_mask_tokens = sum(key.startswith("mask_tokens.") for key in predictor)
    config = VJepa2Config(
        crop_size=crop_size,
        frames_per_clip=frames_per_clip,
        patch_size=sizes["patch_size"],
        tubelet_size=encoder["patch_embed.proj.weight"].shape[2],  # [D, C, t, p, p]
        in_chans=sizes["num_channels"],
        hidden_size=sizes["hidden_size"],
        num_hidden_layers=sizes["num_hidden_layers"],
        num_attention_heads=num_attention_heads,
        mlp_ratio=sizes["intermediate_size"] / sizes["hidden_size"],
        qkv_bias=sizes["qkv_bias"],
        pred_hidden_size=sizes["predictor_hidden_size"],
        pred_num_hidden_layers=sizes["predictor_num_hidden_layers"],
        pred_num_attention_heads=pred_num_attention_heads or num_attention_heads,
        pred_mlp_ratio=predictor["predictor_blocks.0.mlp.fc1.weight"].shape[0] / sizes["predictor_hidden_size"],
        pred_num_mask_tokens=num_mask_tokens,
    )
    return load_networks(
        VJepa2ForPreTraining(config), encoder, target_encoder, predictor, encoder_names=convert_encoder,
        predictor_names=functools.partial(convert_predictor, num_mask_tokens=num_mask_tokens),
    )


def write_converted(model: VJepa2ForPreTraining, output_dir: str | Path) -> None:
    """Write `output_dir/pretraining/` (the full pretraining model) and `output_dir/encoder/` (the stock export)."""
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir / "pretraining")
    export_vjepa2(model, output_dir / "encoder")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="Reference V-JEPA 2 .pt / .pth.tar training checkpoint.")
    parser.add_argument("--output_dir", required=True, help="Folder for pretraining/ and encoder/.")
    parser.add_argument("--num_attention_heads", type=int, required=True, help="Encoder heads (not in the tensors).")
    parser.add_argument(
        "--pred_num_attention_heads", type=int, default=None, help="Predictor heads; defaults to the encoder's."
    )
    parser.add_argument("--crop_size", type=int, required=True, help="Frame size the model was trained at.")
    parser.add_argument("--frames_per_clip", type=int, required=True, help="Frames per training clip.")
    parser.add_argument(
        "--ignore_position_tables",
        action="store_true",
        help="Drop the unused position tables of released V-JEPA 2 checkpoints (otherwise refused as V-JEPA 1).",
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    configure_logging()
    args = parse_args(argv)
    model = convert_vjepa2(
        load_reference_checkpoint(args.checkpoint),
        num_attention_heads=args.num_attention_heads,
        crop_size=args.crop_size,
        frames_per_clip=args.frames_per_clip,
        pred_num_attention_heads=args.pred_num_attention_heads,
        ignore_position_tables=args.ignore_position_tables,
    )
    write_converted(model, args.output_dir)
    logger.info("Wrote %s/pretraining and %s/encoder.", args.output_dir, args.output_dir)


__all__ = ["convert_vjepa2", "export_vjepa2", "video_processor_for"]

if __name__ == "__main__":
    main()
