# SPDX-License-Identifier: Apache-2.0
"""I-JEPA configuration: transformers' encoder fields plus the predictor."""

from transformers import IJepaConfig as StockIJepaConfig
from transformers import PreTrainedConfig


def as_pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """`224` -> `(224, 224)`; `(224, 160)` stays as it is."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"Expected an int or a (height, width) pair, got {value!r}.")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def check_positive(**values: int | float) -> None:
    for name, value in values.items():
        if value is None or value <= 0:
            raise ValueError(f"`{name}` must be a positive number, got {value!r}.")


def check_divisible(width_name: str, width: int, heads_name: str, heads: int) -> None:
    if width % heads != 0:
        raise ValueError(
            f"`{width_name}` ({width}) must be divisible by `{heads_name}` ({heads}): "
            f"each attention head gets {width_name} / {heads_name} channels."
        )


def check_vit_sizes(config) -> None:
    """The checks every JEPA config shares: positive sizes, an image that splits into patches, widths that
    split into heads, for the encoder and the predictor."""
    check_positive(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        num_channels=config.num_channels,
        predictor_hidden_size=config.predictor_hidden_size,
        predictor_num_hidden_layers=config.predictor_num_hidden_layers,
        predictor_num_attention_heads=config.predictor_num_attention_heads,
    )
    image_size, patch_size = as_pair(config.image_size), as_pair(config.patch_size)
    check_positive(image_size=min(image_size), patch_size=min(patch_size))
    if image_size[0] % patch_size[0] or image_size[1] % patch_size[1]:
        raise ValueError(
            f"`image_size` {config.image_size} must be divisible by `patch_size` {config.patch_size}: "
            f"{image_size[0]}x{image_size[1]} pixels do not split into {patch_size[0]}x{patch_size[1]} patches."
        )
    check_divisible("hidden_size", config.hidden_size, "num_attention_heads", config.num_attention_heads)
    check_divisible(
        "predictor_hidden_size",
        config.predictor_hidden_size,
        "predictor_num_attention_heads",
        config.predictor_num_attention_heads,
    )


class PredictorLayerConfig:
    """The config that transformers' `IJepaLayer` reads for one predictor block: the predictor's width, heads and
    depth, an MLP with the encoder's ratio to its width, and every other attribute read through from the model's
    config.

    It is a view, not a copy: the model's config stays the single source of truth for what can change after the
    model is built. A copy would freeze the attention implementation, so that `model.set_attn_implementation(...)`
    (which updates the model's config) would switch the encoders but leave the predictor on the old one.
    """

    def __init__(self, model_config):
        self.model_config = model_config

    @property
    def hidden_size(self) -> int:
        return self.model_config.predictor_hidden_size

    @property
    def num_attention_heads(self) -> int:
        return self.model_config.predictor_num_attention_heads

    @property
    def num_hidden_layers(self) -> int:
        return self.model_config.predictor_num_hidden_layers

    @property
    def intermediate_size(self) -> int:
        config = self.model_config
        return config.intermediate_size * config.predictor_hidden_size // config.hidden_size

    def __getattr__(self, name):
        # Reached only for names the view does not define. `copy` and `pickle` look up methods such as
        # `__setstate__` before they restore `model_config`: without it there is nothing to read through.
        if name == "model_config":
            raise AttributeError(name)
        return getattr(self.model_config, name)


class IJepaConfig(StockIJepaConfig):
    r"""
    Configuration of an I-JEPA model: the ViT encoder (the fields and `model_type` of transformers'
    [`~transformers.IJepaConfig`], so an exported encoder loads with stock transformers) and the narrow
    ViT predictor used during pretraining.

    Args:
        hidden_size (`int`, defaults to 768): encoder width D.
        num_hidden_layers (`int`, defaults to 12): encoder depth.
        num_attention_heads (`int`, defaults to 12): encoder heads; must divide `hidden_size`.
        intermediate_size (`int`, defaults to 3072): width of the encoder MLP (MLP ratio 4 in the paper).
        hidden_act (`str`, defaults to `"gelu"`): MLP activation (exact GELU, as in the reference).
        layer_norm_eps (`float`, defaults to 1e-6): LayerNorm epsilon of the reference implementation.
        image_size (`int` or `(h, w)`, defaults to 224): input resolution; must be divisible by `patch_size`.
        patch_size (`int`, defaults to 16): side of the square patches.
        num_channels (`int`, defaults to 3): input channels.
        qkv_bias (`bool`, defaults to `True`): bias in the query, key and value projections.
        predictor_hidden_size (`int`, defaults to 384): predictor width (the paper uses 384 for ViT-H).
        predictor_num_hidden_layers (`int`, defaults to 12): predictor depth.
        predictor_num_attention_heads (`int`, *optional*): predictor heads; defaults to `num_attention_heads`
            as in the paper; must divide `predictor_hidden_size`.
        initializer_range (`float`, defaults to 0.02): std of the truncated normal initialisation.
        variance_loss_weight (`float`, defaults to 0.0): weight of a VICReg-style variance term on the context
            encoder's output (as in C-JEPA), `mean over features of relu(1 - sqrt(var + 1e-4))`, the variance taken
            over every context token of the batch. Not in the paper; 0 (off) reproduces it.
        covariance_loss_weight (`float`, defaults to 0.0): weight of a VICReg-style covariance term on the same
            tokens, `sum of squared off-diagonal covariances / D`. Not in the paper; 0 (off) reproduces it.

    The predictor's MLP has the same ratio to its width as the encoder's.
    """

    model_type = "ijepa"

    layer_norm_eps: float = 1e-6
    predictor_hidden_size: int = 384
    predictor_num_hidden_layers: int = 12
    predictor_num_attention_heads: int | None = None
    variance_loss_weight: float = 0.0
    covariance_loss_weight: float = 0.0

    def __post_init__(self, **kwargs):
        if self.predictor_num_attention_heads is None:
            self.predictor_num_attention_heads = self.num_attention_heads
        super().__post_init__(**kwargs)
        self.check_sizes()
        for name in ("variance_loss_weight", "covariance_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)!r}.")

    def check_sizes(self) -> None:
        """Raise `ValueError` naming the first field whose value cannot make a model."""
        check_vit_sizes(self)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches per column and per row at the configured resolution."""
        image_size, patch_size = as_pair(self.image_size), as_pair(self.patch_size)
        return image_size[0] // patch_size[0], image_size[1] // patch_size[1]

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def predictor_layer_config(self) -> PredictorLayerConfig:
        """What one predictor block reads as its config: the predictor's sizes, and the rest (the attention
        implementation included) from this config, live."""
        return PredictorLayerConfig(self)

    def stock_config(self) -> StockIJepaConfig:
        """The encoder part alone, as transformers' own `IJepaConfig` (what an exported encoder saves)."""
        own_fields = set(StockIJepaConfig.__dataclass_fields__) - set(PreTrainedConfig.__dataclass_fields__)
        return StockIJepaConfig(**{name: getattr(self, name) for name in own_fields})


__all__ = ["IJepaConfig"]
