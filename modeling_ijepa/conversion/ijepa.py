# SPDX-License-Identifier: Apache-2.0
"""Convert checkpoints of the reference I-JEPA and V-JEPA code into our models.

    python -m modeling_ijepa.conversion --checkpoint IN1K-vit.h.14-300e.pth.tar --output_dir out \
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
from pathlib import Path

from modeling_ijepa.cli import HelpFormatter, configure_logging
from modeling_ijepa.configuration_ijepa import IJepaConfig

# The shared reference-loading helpers live in `reference_checkpoints`; they stay importable from here.
from modeling_ijepa.conversion.reference import (
    UnsafeCheckpointError,
    convert_blocks,
    convert_encoder,
    convert_predictor,
    count_blocks,
    encoder_sizes,
    load_networks,
    load_reference_checkpoint,
    strip_prefix,
)
from modeling_ijepa.conversion.vjepa import convert_vjepa
from modeling_ijepa.hub.export import save_encoder_for_transformers
from modeling_ijepa.modeling_ijepa import IJepaForPreTraining
from modeling_ijepa.training.checkpointing import CheckpointError

PROG = "python -m modeling_ijepa.conversion"
logger = logging.getLogger(__name__)


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
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
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
    configure_logging()
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


__all__ = [
    "UnsafeCheckpointError",
    "convert_blocks",
    "convert_checkpoint",
    "convert_encoder",
    "convert_ijepa",
    "convert_predictor",
    "count_blocks",
    "encoder_sizes",
    "is_video_checkpoint",
    "load_networks",
    "load_reference_checkpoint",
    "strip_prefix",
    "write_converted",
]

if __name__ == "__main__":
    main()
