# SPDX-License-Identifier: Apache-2.0
"""I-JEPA configuration: transformers' encoder fields plus the predictor, and the size checks of every JEPA config."""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import IJepaConfig as StockIJepaConfig
from transformers import PreTrainedConfig


def as_pair(value: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    """`224` -> `(224, 224)`; `(224, 160)` stays as it is. Raises `ValueError`, naming `name`, for anything but a
    positive int or a pair of them."""
    pair = tuple(value) if isinstance(value, Sequence) else (value, value)
    if len(pair) != 2 or not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in pair):
        raise ValueError(f"Expected `{name}` to be a positive int or a pair of positive ints, got {value!r}.")
    return pair


# How `validate_sizes` words a failure: format strings over `name`, `value` and, for "divisible", `divisor_name`,
# `divisor` and `reason`. The mask collators and the training script (whose words name its flags) pass their own
# to the same checks, so that each size rule is written once: here, or beside the config it belongs to.
SIZE_MESSAGES = {
    "positive": "`{name}` must be a positive number, got {value!r}.",
    "divisible": "`{name}` ({value}) must be divisible by `{divisor_name}` ({divisor}): {reason}.",
}

# The sizes of every JEPA ViT that must be positive; the training script has an argument of each name.
VIT_SIZES = (
    "image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "predictor_hidden_size",
    "predictor_num_hidden_layers", "predictor_num_attention_heads",
)  # fmt: skip

# The names `IJepaConfig.prediction_loss` accepts; `modeling_ijepa.PREDICTION_LOSS_FUNCTIONS` maps each to its loss.
PREDICTION_LOSSES = ("smooth_l1", "l1")

HEAD_CHANNELS = "each attention head gets an equal share of the channels"
# `(size, divisor, why)`: sizes that must be whole multiples of another.
IMAGE_PATCHES = ("image_size", "patch_size", "images split into whole patches")
VIT_DIVISIBLE_SIZES = (
    IMAGE_PATCHES,
    ("hidden_size", "num_attention_heads", HEAD_CHANNELS),
    ("predictor_hidden_size", "predictor_num_attention_heads", HEAD_CHANNELS),
)


def validate_sizes(
    sizes: Mapping[str, Any],
    positive: Iterable[str] = (),
    divisible: Iterable[tuple[str, str, str]] = (),
    messages: Mapping[str, str] = SIZE_MESSAGES,
) -> None:
    """Raise `ValueError` at the first size that cannot make a model.

    Args:
        sizes: the values by name (a config's fields, the script's arguments); a size is a number or an
            `(height, width)` pair.
        positive: names of the sizes that must be positive.
        divisible: `(name, divisor_name, reason)` triples: size `name` must be a whole multiple of size `divisor_name`
            (side by side for pairs).
        messages: the words of a failure (see `SIZE_MESSAGES`).
    """
    for name in positive:
        value = sizes[name]
        sides = value if isinstance(value, (tuple, list)) else (value,)
        if not sides or not all(side is not None and side > 0 for side in sides):
            raise ValueError(messages["positive"].format(name=name, value=value))
    for name, divisor_name, reason in divisible:
        value, divisor = sizes[name], sizes[divisor_name]
        if any(side % part for side, part in zip(as_pair(value, name), as_pair(divisor, divisor_name))):
            raise ValueError(
                messages["divisible"].format(
                    name=name, value=value, divisor_name=divisor_name, divisor=divisor, reason=reason
                )
            )


def patch_grid(
    image_size: int | Sequence[int], patch_size: int | Sequence[int], messages: Mapping[str, str] = SIZE_MESSAGES
) -> tuple[int, int]:
    """Patches per column and per row of an image (`image_size`, `patch_size`: ints or `(height, width)` pairs);
    `ValueError` where they do not split into whole patches."""
    sizes = {"image_size": as_pair(image_size, "image_size"), "patch_size": as_pair(patch_size, "patch_size")}
    validate_sizes(sizes, divisible=[IMAGE_PATCHES], messages=messages)
    (height, width), (patch_height, patch_width) = sizes["image_size"], sizes["patch_size"]
    return height // patch_height, width // patch_width


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


@strict
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
        sigreg_loss_weight (`float`, defaults to 0.0): weight of LeJEPA's SIGReg on the same tokens
            (`sketched_isotropic_gaussian_loss`: how far they are from an isotropic standard Gaussian along random
            directions). Not in the paper; 0 (off) reproduces it.
        sigreg_num_slices (`int`, defaults to 256): how many random directions SIGReg tests at each step.
        target_average_layers (`int`, defaults to 1): how many of the target encoder's last blocks make the target:
            with K > 1 each block's output is layer-normed, the K are averaged and the mean is layer-normed again
            (data2vec's targets). Not in the paper; 1 (the last block, after the final LayerNorm) reproduces it.
        prediction_loss (`str`, defaults to `"smooth_l1"`): how the predictions are compared with the targets,
            averaged over every element: `"smooth_l1"` (the paper's Huber loss with threshold 1, which on
            layer-normed targets is mostly half the squared error) or `"l1"` (the absolute error, as V-JEPA uses).
        num_views (`int`, defaults to 1): how many crops of each image a batch holds, in consecutive rows (the
            pretraining data's `--num_views`); each crop is masked and predicted on its own. 1 in the paper.
        view_invariance_weight (`float`, defaults to 0.0): weight of a term that pulls together the mean
            context-encoder tokens of an image's `num_views` crops (`view_invariance_loss`, VICReg's invariance term
            without a projector). Not in the paper; 0 (off) reproduces it. Needs `num_views` > 1.

    The predictor's MLP has the same ratio to its width as the encoder's.

    The values are checked as transformers checks its configs: `@strict` checks each field's type when it is set,
    and `validate()` runs the `validate_*` methods (after `__init__` and in `save_pretrained`).
    """

    model_type = "ijepa"

    layer_norm_eps: float = 1e-6
    predictor_hidden_size: int = 384
    predictor_num_hidden_layers: int = 12
    predictor_num_attention_heads: int | None = None
    variance_loss_weight: float | int = 0.0
    covariance_loss_weight: float | int = 0.0
    sigreg_loss_weight: float | int = 0.0
    sigreg_num_slices: int = 256
    target_average_layers: int = 1
    prediction_loss: str = "smooth_l1"
    num_views: int = 1
    view_invariance_weight: float | int = 0.0

    def __post_init__(self, **kwargs):
        if self.predictor_num_attention_heads is None:
            self.predictor_num_attention_heads = self.num_attention_heads
        super().__post_init__(**kwargs)
        # `validate()` wraps what it finds in `StrictDataclassClassValidationError`, which is no `ValueError`: the
        # checks run here first, so that a config that cannot make a model fails with a `ValueError` naming the field.
        self.validate_architecture()
        self.validate_objective()

    def validate_architecture(self) -> None:
        """Part of `@strict`-powered validation: raise `ValueError` naming the first size that cannot make a model."""
        super().validate_architecture()
        positive = (*VIT_SIZES, "intermediate_size", "num_channels")
        validate_sizes(vars(self), positive=positive, divisible=VIT_DIVISIBLE_SIZES)

    def validate_objective(self) -> None:
        """Part of `@strict`-powered validation: the regulariser weights are not negative, SIGReg has a direction, the
        target averages layers the encoder has, the prediction loss is one the model knows, and an invariance term
        has several views to compare."""
        for name in ("variance_loss_weight", "covariance_loss_weight", "sigreg_loss_weight", "view_invariance_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)!r}.")
        if self.sigreg_num_slices < 1:
            raise ValueError(f"`sigreg_num_slices` must be >= 1, got {self.sigreg_num_slices!r}.")
        if self.num_views < 1:
            raise ValueError(f"`num_views` must be >= 1, got {self.num_views!r}.")
        if self.view_invariance_weight and self.num_views < 2:
            raise ValueError(
                f"`view_invariance_weight` {self.view_invariance_weight!r} needs `num_views` >= 2: with one view per "
                "image there is nothing to compare."
            )
        if not 1 <= self.target_average_layers <= self.num_hidden_layers:
            raise ValueError(
                f"`target_average_layers` must be between 1 and the encoder's {self.num_hidden_layers} layers, got "
                f"{self.target_average_layers!r}."
            )
        if self.prediction_loss not in PREDICTION_LOSSES:
            raise ValueError(
                f"`prediction_loss` must be one of {', '.join(PREDICTION_LOSSES)}, got {self.prediction_loss!r}."
            )

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches per column and per row at the configured resolution."""
        return patch_grid(self.image_size, self.patch_size)

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
