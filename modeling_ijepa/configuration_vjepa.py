# SPDX-License-Identifier: Apache-2.0
"""V-JEPA configuration: the video ViT encoder (tubelet patches, 3D sin-cos positions) and the predictor."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_ijepa import VIT_DIVISIBLE_SIZES, VIT_SIZES, PredictorLayerConfig, patch_grid, validate_sizes

# The sizes a video ViT adds, which the training script names as its arguments, and the rule between them
# (see `VIT_DIVISIBLE_SIZES`).
VIDEO_SIZES = ("num_frames", "tubelet_size")
FRAME_TUBELETS = ("num_frames", "tubelet_size", "each token covers a whole tubelet of frames")


@strict
class VJepaConfig(PreTrainedConfig):
    r"""
    Configuration of a V-JEPA model (Bardes et al., 2024): a ViT over video tubelets with a fixed 3D sin-cos
    position embedding and no CLS token, and the narrow ViT predictor used during pretraining.

    The defaults describe the published ViT-L/16 recipe: 16 frames at 224x224, tubelets of 2 frames x 16x16 pixels.

    Args:
        image_size (`int` or `(h, w)`, defaults to 224): frame resolution; must be divisible by `patch_size`.
        num_frames (`int`, defaults to 16): frames per clip; must be divisible by `tubelet_size`.
        tubelet_size (`int`, defaults to 2): frames per token (the temporal size of the patch embedding kernel).
        patch_size (`int` or `(h, w)`, defaults to 16): spatial size of a tubelet.
        num_channels (`int`, defaults to 3): input channels.
        hidden_size (`int`, defaults to 1024): encoder width D.
        num_hidden_layers (`int`, defaults to 24): encoder depth.
        num_attention_heads (`int`, defaults to 16): encoder heads; must divide `hidden_size`.
        intermediate_size (`int`, defaults to 4096): width of the encoder MLP (MLP ratio 4).
        hidden_act (`str`, defaults to `"gelu"`): MLP activation (exact GELU, as in the reference).
        hidden_dropout_prob (`float`, defaults to 0.0): dropout after attention and MLP (the reference uses none).
        attention_probs_dropout_prob (`float`, defaults to 0.0): dropout on attention weights.
        layer_norm_eps (`float`, defaults to 1e-6): LayerNorm epsilon of the reference implementation.
        qkv_bias (`bool`, defaults to `True`): bias in the query, key and value projections.
        initializer_range (`float`, defaults to 0.02): std of the truncated normal initialisation.
        uniform_power (`bool`, defaults to `True`): layout of the 3D sin-cos table. `False`: time gets D/2 channels,
            rows and columns D/4 each. `True` (the published V-JEPA recipes): each of the three gets
            `2 * ceil(D / 6)` channels and the concatenation `[time | row | column]` is cut to D.
        predictor_hidden_size (`int`, defaults to 384): predictor width.
        predictor_num_hidden_layers (`int`, defaults to 12): predictor depth.
        predictor_num_attention_heads (`int`, *optional*): predictor heads; defaults to `num_attention_heads` as in
            the reference; must divide `predictor_hidden_size`.
        num_mask_tokens (`int`, defaults to 2): learned predictor mask tokens, one per mask type (V-JEPA samples
            short-range and long-range masks). Mask type `i` uses token `i % num_mask_tokens`, as in the reference.
        loss_exponent (`float`, defaults to 1.0): p in the loss `mean(|prediction - target|^p) / p` (1: L1).

    The predictor's MLP has the same ratio to its width as the encoder's.
    """

    model_type = "vjepa"

    image_size: int | list[int] | tuple[int, int] = 224
    num_frames: int = 16
    tubelet_size: int = 2
    patch_size: int | list[int] | tuple[int, int] = 16
    num_channels: int = 3
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    initializer_range: float = 0.02
    uniform_power: bool = True
    predictor_hidden_size: int = 384
    predictor_num_hidden_layers: int = 12
    predictor_num_attention_heads: int | None = None
    num_mask_tokens: int = 2
    loss_exponent: float | int = 1.0

    def __post_init__(self, **kwargs):
        if self.predictor_num_attention_heads is None:
            self.predictor_num_attention_heads = self.num_attention_heads
        super().__post_init__(**kwargs)
        # A `ValueError` naming the field, rather than the `StrictDataclassClassValidationError` of `validate()`
        # (see `IJepaConfig.__post_init__`).
        self.validate_architecture()

    def validate_architecture(self) -> None:
        """Part of `@strict`-powered validation: raise `ValueError` naming the first size that cannot make a model."""
        super().validate_architecture()
        validate_sizes(
            vars(self),
            positive=(
                *VIT_SIZES,
                "intermediate_size",
                "num_channels",
                *VIDEO_SIZES,
                "num_mask_tokens",
                "loss_exponent",
            ),
            divisible=(*VIT_DIVISIBLE_SIZES, FRAME_TUBELETS),
        )
        if not self.uniform_power:
            # Time, row and column get D/2, D/4 and D/4 sin-cos channels, and each part needs an even count.
            for name in ("hidden_size", "predictor_hidden_size"):
                if getattr(self, name) % 8:
                    raise ValueError(
                        f"`{name}` ({getattr(self, name)}) must be divisible by 8 when `uniform_power=False`: the 3D "
                        "sin-cos table gives time D/2 and rows and columns D/4 channels each, all even."
                    )

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Tokens along time, rows and columns at the configured clip size."""
        return self.num_frames // self.tubelet_size, *patch_grid(self.image_size, self.patch_size)

    @property
    def num_patches(self) -> int:
        """Tokens per clip (one per tubelet)."""
        frames, rows, columns = self.grid_size
        return frames * rows * columns

    def predictor_layer_config(self) -> PredictorLayerConfig:
        """What one predictor block (transformers' `IJepaLayer`) reads as its config: the predictor's sizes, and the
        rest (the attention implementation included) from this config, live."""
        return PredictorLayerConfig(self)


# `save_pretrained` then copies this file into the folder and writes an `auto_map`, so the folder loads with
# `trust_remote_code=True` where this package is not installed.
VJepaConfig.register_for_auto_class()

__all__ = ["VJepaConfig"]
