# SPDX-License-Identifier: Apache-2.0
"""Convert checkpoints of the reference V-JEPA code (facebookresearch/jepa) into `VJepaForPreTraining`.

Used through `python -m modeling_ijepa.convert_official`, which recognises video checkpoints by their 3D patch
embedding. Sizes come from the tensor shapes; the token grid and the position-table layout (`uniform_power`), which
the shapes alone do not fix, are read off the stored sin-cos table unless given.
"""

import logging
import math

import torch

from modeling_ijepa.configuration_vjepa import VJepaConfig
from modeling_ijepa.conversion.reference import encoder_sizes, load_networks, strip_prefix
from modeling_ijepa.modeling_vjepa import VJepaForPreTraining, sincos_3d

logger = logging.getLogger(__name__)


def candidate_grids(num_tokens: int, tubelet_size: int, num_frames: int | None) -> list[tuple[int, int, int]]:
    """(time, rows, columns) token grids with square frames that hold `num_tokens` tokens: the one that
    `num_frames` implies, or every one when it is not given."""
    if num_frames is None:
        sides = [side for side in range(1, math.isqrt(num_tokens) + 1) if num_tokens % (side * side) == 0]
        return [(num_tokens // (side * side), side, side) for side in sides]
    if num_frames <= 0 or num_frames % tubelet_size:
        raise ValueError(f"`num_frames` ({num_frames}) must be a positive multiple of the tubelet size {tubelet_size}.")
    depth = num_frames // tubelet_size
    side = math.isqrt(num_tokens // depth)
    if depth * side * side != num_tokens:
        raise ValueError(
            f"The checkpoint has {num_tokens} position tokens, which is not {depth} tubelet steps ({num_frames} frames "
            f"/ tubelet {tubelet_size}) of a square grid: check `num_frames`."
        )
    return [(depth, side, side)]


def detect_position_layout(
    position_table: torch.Tensor, tubelet_size: int, num_frames: int | None, uniform_power: bool | None
) -> tuple[tuple[int, int, int], bool]:
    """The token grid and `uniform_power` whose sin-cos table is the stored `position_table` [1, N, D].

    What the caller gives is taken as fixed; the rest is found by generating every remaining candidate table and
    comparing. When the caller fixes both and the stored table differs, the caller wins (the stored table is
    loaded as it is either way) and a warning says so.
    """
    num_tokens, embed_dim = position_table.shape[1:]
    powers = (True, False) if uniform_power is None else (uniform_power,)
    layouts = [(grid, power) for grid in candidate_grids(num_tokens, tubelet_size, num_frames) for power in powers]
    stored = position_table[0].float()
    matching = [
        (grid, power) for grid, power in layouts if torch.allclose(sincos_3d(embed_dim, grid, power), stored, atol=1e-4)
    ]
    if len(matching) == 1:
        return matching[0]
    if len(layouts) == 1:
        logger.warning(
            "The stored position table is not the 3D sin-cos table of grid %s with uniform_power=%s; "
            "using them anyway.",
            *layouts[0],
        )
        return layouts[0]
    described = ", ".join(f"grid {grid} uniform_power={power}" for grid, power in matching or layouts)
    raise ValueError(
        f"Cannot tell the token grid and position layout from the stored position table: "
        f"{'several' if matching else 'none'} of [{described}] match it. Pass `num_frames` and `uniform_power`."
    )


def convert_vjepa(
    checkpoint: dict,
    num_attention_heads: int,
    predictor_num_attention_heads: int | None = None,
    num_frames: int | None = None,
    uniform_power: bool | None = None,
) -> VJepaForPreTraining:
    """A loaded reference V-JEPA checkpoint -> `VJepaForPreTraining` (eval mode) holding its three networks.

    Args:
        checkpoint: the reference checkpoint dict (`encoder`, `target_encoder`, `predictor` state dicts with keys
            prefixed `module.backbone.`).
        num_attention_heads: encoder heads (not recorded in the tensors).
        predictor_num_attention_heads: predictor heads; defaults to `num_attention_heads`, as in the reference.
        num_frames: frames per clip; with it the resolution follows from the token count. Read off the stored
            position table when not given.
        uniform_power: layout of the 3D sin-cos table; read off the stored table when not given.
    """
    encoder, target_encoder = strip_prefix(checkpoint["encoder"]), strip_prefix(checkpoint["target_encoder"])
    predictor = strip_prefix(checkpoint["predictor"])
    sizes = encoder_sizes(encoder, predictor)
    tubelet_size = encoder["patch_embed.proj.weight"].shape[2]
    num_mask_tokens = sum(key.startswith("mask_tokens.") for key in predictor)
    if num_mask_tokens == 0:
        raise ValueError(
            "The predictor has no `mask_tokens.N`: checkpoints trained without mask tokens are not supported."
        )
    grid_size, uniform_power = detect_position_layout(encoder["pos_embed"], tubelet_size, num_frames, uniform_power)
    config = VJepaConfig(
        **sizes,
        num_frames=grid_size[0] * tubelet_size,
        tubelet_size=tubelet_size,
        image_size=grid_size[1] * sizes["patch_size"],
        uniform_power=uniform_power,
        num_attention_heads=num_attention_heads,
        predictor_num_attention_heads=predictor_num_attention_heads,
        num_mask_tokens=num_mask_tokens,
    )
    return load_networks(VJepaForPreTraining(config), encoder, target_encoder, predictor)


__all__ = ["convert_vjepa"]
