# SPDX-License-Identifier: Apache-2.0
"""V-JEPA 2 configuration: transformers' `vjepa2` fields (encoder and predictor, both with 3D RoPE) plus the loss."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers import VJEPA2Config as StockVJEPA2Config

from .configuration_ijepa import HEAD_CHANNELS, validate_sizes


def rope_axis_dims(head_dim: int) -> int:
    """Channels of a head that rotate with each of frame, row and column: `2 * ((head_dim // 3) // 2)`.

    The remaining `head_dim - 3 * a` channels are not rotated.
    """
    return 2 * ((head_dim // 3) // 2)


@strict
class VJepa2Config(StockVJEPA2Config):
    r"""
    Configuration of a V-JEPA 2 model (Assran et al., 2025) for pretraining: the fields and `model_type` of
    transformers' [`~transformers.VJEPA2Config`], so that the exported encoder and predictor load in stock
    `transformers.VJEPA2Model`, plus what pretraining needs.

    The video ViT has no position table and no CLS token: every attention layer, in the encoder and in the
    predictor, applies 3D rotary embeddings to queries and keys. Each head splits into three slices of
    `a = 2 * ((head_dim // 3) // 2)` channels, rotated with the token's frame, row and column on the token grid; the
    remaining channels are not rotated.

    The stock defaults describe the released ViT-L/16 at 256x256 (64 frames, the cool-down length).

    Args:
        crop_size (`int`, defaults to 256): frame height and width; must be divisible by `patch_size`.
        frames_per_clip (`int`, defaults to 64): frames per training clip (the token grid of the masks); must be
            divisible by `tubelet_size`. Images are repeated this many times.
        patch_size (`int`, defaults to 16): spatial side of a tubelet.
        tubelet_size (`int`, defaults to 2): frames per token (the temporal size of the patch embedding kernel).
        in_chans (`int`, defaults to 3): input channels.
        hidden_size (`int`, defaults to 1024): encoder width D.
        num_hidden_layers (`int`, defaults to 24): encoder depth.
        num_attention_heads (`int`, defaults to 16): encoder heads; must divide `hidden_size`, with a head dim of
            at least 6 so that RoPE rotates something (the reference code itself needs 12).
        mlp_ratio (`float`, defaults to 4.0): encoder MLP width over `hidden_size`.
        hidden_act (`str`, defaults to `"gelu"`): MLP activation (exact GELU, as in the reference).
        layer_norm_eps (`float`, defaults to 1e-6): LayerNorm epsilon of the blocks and final norms.
        qkv_bias (`bool`, defaults to `True`): bias in the query, key and value projections.
        drop_path_rate (`float`, defaults to 0.0): stochastic depth, growing linearly to this rate over the blocks.
        attention_probs_dropout_prob (`float`, defaults to 0.0): dropout on attention weights.
        attention_dropout (`float`, defaults to 0.0): dropout in the attentive pooler (video classification only).
        initializer_range (`float`, defaults to 0.02): std of the truncated normal initialisation.
        num_pooler_layers (`int`, defaults to 3): self-attention layers of the attentive pooler of
            `VJEPA2ForVideoClassification` (not used in pretraining).
        pred_hidden_size (`int`, defaults to 384): predictor width.
        pred_num_hidden_layers (`int`, defaults to 12): predictor depth.
        pred_num_attention_heads (`int`, defaults to 12): predictor heads; must divide `pred_hidden_size`, head dim
            at least 6.
        pred_mlp_ratio (`float`, defaults to 4.0): predictor MLP width over `pred_hidden_size`.
        pred_num_mask_tokens (`int`, defaults to 10): learned mask tokens. The reference trains with one per
            (mask type, clip length) pair, but picks them by clip-length group only, so a single-length run uses
            token 0 for every mask type.
        pred_zero_init_mask_tokens (`bool`, defaults to `True`): initialise the mask tokens to zero.
        loss_exponent (`float`, defaults to 1.0): p in the loss `mean(|prediction - target|^p) / p` (1: L1).
    """

    model_type = "vjepa2"

    loss_exponent: float | int = 1.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # A `ValueError` naming the field, rather than the `StrictDataclassClassValidationError` of `validate()`
        # (see `IJepaConfig.__post_init__`).
        self.validate_architecture()

    def validate_architecture(self) -> None:
        """Part of `@strict`-powered validation: raise `ValueError` naming the first size that cannot make a model."""
        super().validate_architecture()
        positive = (
            "crop_size", "frames_per_clip", "tubelet_size", "in_chans", "hidden_size", "num_hidden_layers",
            "num_attention_heads", "pred_hidden_size", "pred_num_hidden_layers", "pred_num_attention_heads",
            "pred_num_mask_tokens", "loss_exponent",
        )  # fmt: skip
        validate_sizes(vars(self), positive=positive)
        if not isinstance(self.patch_size, int) or self.patch_size <= 0:
            # Stock `vjepa2` layers read `patch_size` as one number (square patches).
            raise ValueError(f"`patch_size` must be a positive int (square patches), got {self.patch_size!r}.")
        divisible = (
            ("crop_size", "patch_size", "frames split into square patches"),
            ("frames_per_clip", "tubelet_size", "each token covers a whole tubelet of frames"),
            ("hidden_size", "num_attention_heads", HEAD_CHANNELS),
            ("pred_hidden_size", "pred_num_attention_heads", HEAD_CHANNELS),
        )
        validate_sizes(vars(self), divisible=divisible)
        for width_name, heads_name, _ in divisible[2:]:
            head_dim = getattr(self, width_name) // getattr(self, heads_name)
            if rope_axis_dims(head_dim) == 0:
                raise ValueError(
                    f"`{width_name}` / `{heads_name}` = {head_dim} channels per head is too few for 3D RoPE: "
                    "frame, row and column need at least 2 channels each (6 in all; the reference code needs 12)."
                )

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Tokens along time, rows and columns of a training clip."""
        side = self.crop_size // self.patch_size
        return self.frames_per_clip // self.tubelet_size, side, side

    @property
    def num_patches(self) -> int:
        """Tokens per training clip (one per tubelet); token `i` sits at frame `i // (H'W')`, row
        `(i % H'W') // W'`, column `i % W'`."""
        frames, rows, columns = self.grid_size
        return frames * rows * columns

    def stock_config(self) -> StockVJEPA2Config:
        """The fields of transformers' own `VJEPA2Config` alone (what an exported model saves)."""
        own_fields = set(StockVJEPA2Config.__dataclass_fields__) - set(PreTrainedConfig.__dataclass_fields__)
        return StockVJEPA2Config(**{name: getattr(self, name) for name in own_fields})


__all__ = ["VJepa2Config"]
