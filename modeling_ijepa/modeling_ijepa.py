# SPDX-License-Identifier: Apache-2.0
"""I-JEPA: the ViT encoder, the narrow predictor and the pretraining model (Assran et al., CVPR 2023).

The encoder reuses transformers' I-JEPA layers and parameter names, so the target encoder exported after
pretraining loads in stock `transformers.IJepaModel` with no custom code.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.ijepa.modeling_ijepa import IJepaEmbeddings, IJepaLayer
from transformers.models.ijepa.modeling_ijepa import IJepaPreTrainedModel as StockIJepaPreTrainedModel
from transformers.utils import ModelOutput
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_ijepa import IJepaConfig


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Fixed 1D sin-cos embedding: positions [N] (float64) -> [N, embed_dim] (float64), sines then cosines."""
    frequencies = 1.0 / 10000 ** (torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0))
    angles = positions.reshape(-1, 1) * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(embed_dim: int, grid_size: tuple[int, int]) -> torch.Tensor:
    """Fixed 2D sin-cos table [H*W, embed_dim] in row-major patch order.

    The first half of the channels encodes the column and the second half the row, the layout of the
    reference implementation (and so of its checkpoints).
    """
    rows, columns = torch.meshgrid(
        torch.arange(grid_size[0], dtype=torch.float64),
        torch.arange(grid_size[1], dtype=torch.float64),
        indexing="ij",
    )
    table = torch.cat([sincos_1d(embed_dim // 2, columns), sincos_1d(embed_dim // 2, rows)], dim=1)
    return table.float()


def check_index_tensor(
    name: str, indices: torch.Tensor, ndim: int, batch_size: int, reference: str = "the pixel values have"
) -> None:
    """Raise `ValueError` unless `indices` is a non-empty int64 tensor of `ndim` dims whose batch size is `batch_size`
    (that of what `reference` names in the message).

    Reads only the type, dtype and shape, which the host knows: no value, so no wait for the device.
    """
    if not isinstance(indices, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.LongTensor, got {type(indices).__name__}.")
    if indices.dtype != torch.long:
        raise ValueError(f"`{name}` must have dtype torch.int64, got {indices.dtype}.")
    if indices.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimensions, got shape {tuple(indices.shape)}.")
    if indices.shape[0] != batch_size:
        raise ValueError(f"`{name}` has batch size {indices.shape[0]} but {reference} batch size {batch_size}.")
    if indices.numel() == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(indices.shape)}): every block needs a patch.")


def check_index_values(name: str, indices: torch.Tensor, grid_size: tuple[int, ...]) -> None:
    """Check that every value of `indices` (any shape, non-empty) is a row-major position on the grid `grid_size`.

    A check on the host, such as `int(indices.max())`, makes the host wait until the device has run every queued
    kernel: the host cannot queue the next ones meanwhile and the device idles, once per check, in every training
    step. So the comparison stays on the device and `torch._assert_async` checks its result there. On CUDA that is
    a kernel like any other, the host does not wait, and an index off the grid fails the run with a device-side
    assertion at the next synchronisation. On the CPU the assertion is evaluated at once (there is no device to wait
    for) and becomes a `ValueError` that names the tensor, the grid and the values received; the values are read
    only then, once the step has failed anyway.

    The pretraining models call this once per index tensor, where the batch enters: the indexing that follows would
    not catch every bad index by itself, as `positions[indices]` wraps negative ones.
    """
    if indices.device.type == "meta":  # shapes only (memory estimates): there are no values to check
        return
    num_positions = math.prod(grid_size)
    low, high = torch.aminmax(indices)
    in_grid = torch.logical_and(low >= 0, high < num_positions)
    grid = "x".join(str(size) for size in grid_size)
    message = f"`{name}` must lie in [0, {num_positions - 1}], the row-major positions on the {grid} patch grid"
    if indices.device.type == "cuda":
        torch._assert_async(in_grid, message)
        return
    # `torch._assert_async` has CPU and CUDA kernels only: other devices pay for one copy to the host here.
    try:
        torch._assert_async(in_grid.cpu(), message)
    except RuntimeError:
        raise ValueError(f"{message}, got values from {int(low)} to {int(high)}.") from None


def gather_tokens(hidden_states: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """hidden_states [B, N, D], indices [B, K] -> [B, K, D]: the tokens at those positions."""
    return torch.gather(hidden_states, 1, indices.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1]))


def encode_tokens(encoder, hidden_states: torch.Tensor, context_indices: torch.Tensor | None, **kwargs):
    """The part of an encoder after its embeddings, shared by the image and video encoders.

    hidden_states [B, N, D] (embedded tokens with positions) -> keep `context_indices` [B, Kc] if given ->
    blocks -> final LayerNorm. Returns `BaseModelOutputWithPooling` with the mean over tokens as `pooler_output`.

    Only the shape of `context_indices` is checked here, not the values: the pretraining models check those once,
    where the batch enters, and an encoder used on its own needs no check of them, as `torch.gather` rejects every
    position off the sequence, negative ones included.
    """
    if context_indices is not None:
        check_index_tensor("context_indices", context_indices, 2, hidden_states.shape[0])
        hidden_states = gather_tokens(hidden_states, context_indices)
    for layer in encoder.layers:
        hidden_states = layer(hidden_states, None, **kwargs)
    sequence_output = encoder.layernorm(hidden_states)
    return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=sequence_output.mean(dim=1))


def layer_normed_last_blocks(hidden_states: tuple[torch.Tensor, ...], num_layers: int) -> list[torch.Tensor]:
    """An encoder's `hidden_states` (the embedding output, then one `[B, N, D]` per block, captured before the final
    LayerNorm) -> the last `num_layers` block outputs, each layer-normed over channels without affine parameters (as
    I-JEPA normalises its targets), so that outputs of several blocks enter a mean or a concatenation on one scale."""
    return [F.layer_norm(hidden, hidden.shape[-1:]) for hidden in hidden_states[1:][-num_layers:]]


def target_features(target_encoder: nn.Module, pixel_values: torch.Tensor, average_layers: int) -> torch.Tensor:
    """pixel_values [B, C, H, W] -> the layer-normed features [B, N, D] that the predictor regresses.

    With `average_layers=1` (the paper) the final output is layer-normed. With K > 1 the outputs of the last K
    blocks (captured before the final LayerNorm) are each layer-normed, averaged, and the mean layer-normed again,
    as data2vec builds its targets: the targets then carry what the earlier blocks encode as well, at the scale of
    the paper's.
    """
    if average_layers == 1:
        features = target_encoder(pixel_values).last_hidden_state
        return F.layer_norm(features, features.shape[-1:])
    hidden_states = target_encoder(pixel_values, output_hidden_states=True).hidden_states
    mean = torch.stack(layer_normed_last_blocks(hidden_states, average_layers)).mean(dim=0)
    return F.layer_norm(mean, mean.shape[-1:])


def num_mask_draws(num_images: int, context_indices: torch.Tensor) -> int:
    """How many mask draws per image a batch holds: `N` when `context_indices` has `N * B` rows for `B` images.

    Reads only the shape. Raises `ValueError` when the rows are not a whole multiple of the images.
    """
    if not isinstance(context_indices, torch.Tensor) or context_indices.ndim == 0:
        return 1  # `check_index_tensor` names the problem
    num_rows = context_indices.shape[0]
    if num_rows == 0 or num_rows % num_images:
        raise ValueError(
            f"`context_indices` has batch size {num_rows} but the pixel values have batch size {num_images}: it needs "
            "one row per image, or N rows per image for N mask draws (those of image i at i*N ... i*N + N - 1)."
        )
    return num_rows // num_images


# `config.prediction_loss` -> its loss between predictions and targets, averaged over every element.
PREDICTION_LOSS_FUNCTIONS = {"smooth_l1": F.smooth_l1_loss, "l1": F.l1_loss}


def variance_covariance_loss(
    features: torch.Tensor, variance_weight: float, covariance_weight: float, epsilon: float = 1e-4
) -> torch.Tensor:
    """VICReg's variance and covariance terms (Bardes et al., 2022), as C-JEPA applies them to I-JEPA's context
    encoder: `variance_weight * mean_d relu(1 - sqrt(var_d + epsilon)) + covariance_weight * sum_{d != e} cov_de^2 / D`.

    Args:
        features: `[..., D]`; every leading position is one sample (for I-JEPA: every context token of the batch).
        variance_weight, covariance_weight: weights of the two terms; a term with weight 0 is not computed.

    Returns:
        The weighted sum, a float32 scalar tensor (never read back to the host).
    """
    features = features.reshape(-1, features.shape[-1]).float()
    num_samples, width = features.shape
    centred = features - features.mean(dim=0)
    loss = features.new_zeros(())
    if variance_weight:
        variance = centred.pow(2).sum(dim=0) / (num_samples - 1)
        loss = loss + variance_weight * F.relu(1.0 - torch.sqrt(variance + epsilon)).mean()
    if covariance_weight:
        covariance = centred.T @ centred / (num_samples - 1)
        off_diagonal = covariance.pow(2).sum() - covariance.diagonal().pow(2).sum()
        loss = loss + covariance_weight * off_diagonal / width
    return loss


def view_invariance_loss(context_hidden_states: torch.Tensor, num_views: int, num_draws: int = 1) -> torch.Tensor:
    """How far apart the crops of each image lie: the squared difference between the mean context tokens of two
    crops of an image, averaged over features, pairs of crops and images (for two crops, `mse(z_1, z_2)`), computed
    as twice their unbiased variance across the crops.

    Args:
        context_hidden_states: `[B * V * N, Kc, D]` context-encoder output, the `V * N` rows of image `i` at
            `i * V * N ... (i + 1) * V * N - 1`, crop by crop, each crop's `N` mask draws together (averaged first).
        num_views: `V`, the crops per image (at least 2).
        num_draws: `N`, the mask draws per crop.

    Returns:
        A float32 scalar tensor.
    """
    pooled = context_hidden_states.float().mean(dim=1)
    per_crop = pooled.view(-1, num_views, num_draws, pooled.shape[-1]).mean(dim=2)
    return 2 * per_crop.var(dim=1).mean()


def sketched_isotropic_gaussian_loss(
    features: torch.Tensor, num_slices: int, seed: int = 0, num_knots: int = 17, max_frequency: float = 5.0
) -> torch.Tensor:
    """SIGReg, LeJEPA's regulariser (Balestriero & LeCun, 2025): how far the samples are from an isotropic standard
    Gaussian, sketched along `num_slices` random unit directions. Along each direction the Epps-Pulley statistic
    `n * integral |phi_n(t) - exp(-t^2 / 2)|^2 exp(-t^2 / 2) dt` compares the empirical characteristic function of the
    `n` projections with the Gaussian's; the loss is its mean over directions. Unlike VICReg's two moments, it
    matches the whole distribution of every projection, which (Cramer-Wold) pins down the whole distribution.

    Args:
        features: `[..., D]`; every leading position is one sample (for I-JEPA: every context token of the batch).
        num_slices: how many random directions.
        seed: seeds the directions: a training run passes the step, so that every step tests new directions, the
            same on every process and again after a resume.
        num_knots, max_frequency: the trapezoidal quadrature over `t` in `[0, max_frequency]` (the integrand is
            even in `t`, so the half line counts twice).

    Returns:
        A float32 scalar tensor (never read back to the host), computed in float32 whatever the autocast.
    """
    features = features.reshape(-1, features.shape[-1])
    num_samples, width = features.shape
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(width, num_slices, generator=generator).to(features.device)
    directions = directions / directions.norm(dim=0, keepdim=True)
    knots = torch.linspace(0.0, max_frequency, num_knots, device=features.device)
    gaussian = torch.exp(-0.5 * knots.square())
    with torch.autocast(device_type=features.device.type, enabled=False):
        angles = (features.float() @ directions).unsqueeze(-1) * knots  # [n, slices, knots]
        real, imaginary = angles.cos().mean(dim=0), angles.sin().mean(dim=0)  # [slices, knots]
        error = ((real - gaussian).square() + imaginary.square()) * gaussian
        statistic = 2 * num_samples * torch.trapezoid(error, knots, dim=-1)  # [slices]
    return statistic.mean()


def as_ijepa_config(config) -> IJepaConfig:
    """`AutoConfig` reads the `ijepa` model type as transformers' own config: give it our predictor fields."""
    if isinstance(config, IJepaConfig):
        return config
    converted = IJepaConfig.from_dict(config.to_dict())
    converted._attn_implementation = config._attn_implementation
    return converted


class IJepaPreTrainedModel(StockIJepaPreTrainedModel):
    config: IJepaConfig
    config_class = IJepaConfig
    _no_split_modules = ["IJepaEmbeddings", "IJepaLayer", "IJepaPredictor"]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # Loading replaces parameters with fresh ones that require gradients: freeze the fixed ones again.
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).freeze_fixed_parameters()
        return loaded

    def freeze_fixed_parameters(self) -> None:
        """Stop gradients to what never trains: sin-cos position tables (and, in pretraining, the EMA target)."""
        for name, parameter in self.named_parameters():
            if name.endswith("position_embeddings"):
                parameter.requires_grad_(False)

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, IJepaEmbeddings):
            grid_size = (module.image_size[0] // module.patch_size, module.image_size[1] // module.patch_size)
            init.copy_(module.position_embeddings, sincos_2d(module.position_embeddings.shape[-1], grid_size)[None])
        elif isinstance(module, JepaPredictor):
            init.copy_(module.position_embeddings, module.position_table()[None])
            module.init_mask_tokens(self.config.initializer_range)


class IJepaModel(IJepaPreTrainedModel):
    """The I-JEPA ViT encoder: patch embedding + fixed 2D sin-cos positions (no CLS token), pre-norm blocks,
    final LayerNorm. Given `context_indices` it runs on those patches only, as the context encoder does
    during pretraining. Its parameter names are those of `transformers.IJepaModel`.
    """

    def __init__(self, config: IJepaConfig):
        config = as_ijepa_config(config)
        super().__init__(config)
        # Fixed sin-cos positions: stored in the checkpoint (stock transformers expects them) but never trained.
        self.embeddings = IJepaEmbeddings(config)
        self.layers = nn.ModuleList([IJepaLayer(config) for _ in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()
        self.freeze_fixed_parameters()

    def check_pixel_values(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool) -> None:
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
            raise ValueError(f"`pixel_values` must be a [batch, channels, height, width] tensor, got {shape}.")
        _, channels, height, width = pixel_values.shape
        if channels != self.config.num_channels:
            raise ValueError(
                f"`pixel_values` must have {self.config.num_channels} channels (dim 1), got {channels} "
                f"(shape {tuple(pixel_values.shape)})."
            )
        expected = self.embeddings.image_size
        if not interpolate_pos_encoding and (height, width) != tuple(expected):
            raise ValueError(
                f"`pixel_values` must be {expected[0]}x{expected[1]} pixels, got {height}x{width}; "
                "pass `interpolate_pos_encoding=True` to run at another resolution."
            )
        patch = self.config.patch_size if isinstance(self.config.patch_size, int) else self.config.patch_size[0]
        if height % patch or width % patch:
            raise ValueError(f"`pixel_values` {height}x{width} is not divisible by the patch size {patch}.")

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        context_indices: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `[B, C, H, W]`): images.
            context_indices (`torch.LongTensor` of shape `[B, Kc]`, *optional*): row-major patch positions to
                keep; the encoder then sees only those `Kc` patches (with their own positions).
            interpolate_pos_encoding (`bool`, *optional*): interpolate the position table to the input size,
                to run at a resolution other than `config.image_size`.

        Returns:
            `BaseModelOutputWithPooling` with `last_hidden_state` `[B, N or Kc, D]` and `pooler_output` `[B, D]`
            (the mean over tokens: I-JEPA has no CLS token).
        """
        interpolate_pos_encoding = bool(interpolate_pos_encoding)
        self.check_pixel_values(pixel_values, interpolate_pos_encoding)
        pixel_values = pixel_values.to(self.embeddings.patch_embeddings.projection.weight.dtype)
        hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        return encode_tokens(self, hidden_states, context_indices, **kwargs)


class JepaPredictor(nn.Module):
    """The narrow ViT predictor that I-JEPA and V-JEPA share.

    Each target block is predicted in a sequence of its own, `[context tokens | one mask token per target
    patch]`, where every token carries the fixed sin-cos position of its patch; the outputs at the mask
    tokens are projected back to the encoder width. The blocks of a batch run as one batch of sequences: the
    context tokens are broadcast to them with `expand`, not copied per block in Python.

    A subclass adds its mask tokens (`add_mask_tokens`, `init_mask_tokens`), its position table (`position_table`)
    and a `forward` that picks the mask token of a call. The config (`IJepaConfig`, `VJepaConfig`) gives the encoder
    and predictor sizes, the token grid (`grid_size`, `num_patches`) and the blocks' config
    (`predictor_layer_config`).
    """

    def __init__(self, config):
        super().__init__()
        layer_config = config.predictor_layer_config()
        self.grid_size = config.grid_size
        self.embed = nn.Linear(config.hidden_size, config.predictor_hidden_size)
        # Between `embed` and the positions: parameters are listed in the order they are registered, which the
        # optimizer states of saved checkpoints follow.
        self.add_mask_tokens(config)
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_patches, config.predictor_hidden_size))
        self.layers = nn.ModuleList([IJepaLayer(layer_config) for _ in range(config.predictor_num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.predictor_hidden_size, eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.predictor_hidden_size, config.hidden_size)

    def add_mask_tokens(self, config) -> None:
        """Register the learned mask tokens, each `[1, 1, Dp]`."""
        raise NotImplementedError

    def init_mask_tokens(self, std: float) -> None:
        """Initialise the mask tokens (`std`: the config's `initializer_range`)."""
        raise NotImplementedError

    def position_table(self) -> torch.Tensor:
        """The fixed sin-cos positions `[N, Dp]` of the grid's `N` patches, row-major, that `position_embeddings`
        holds."""
        raise NotImplementedError

    def predict(
        self,
        context_hidden_states: torch.Tensor,
        context_indices: torch.Tensor,
        target_indices: torch.Tensor,
        mask_token: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            context_hidden_states: `[B, Kc, D]` context-encoder output at `context_indices`.
            context_indices: `[B, Kc]` int64 patch positions of the context tokens.
            target_indices: `[B, *S, Kt]` int64 patch positions to predict, one sequence for each of the `*S` blocks
                of a context (`[B, M, Kt]` for M blocks; `[B, Kt]` for one).
            mask_token: `[1, 1, Dp]` learned token at every target position.

        Returns:
            `[B, *S, Kt, D]`: predicted target-encoder features of each target patch.
        """
        batch_size, context_length = context_indices.shape
        positions = self.position_embeddings[0]
        context_tokens = self.embed(context_hidden_states) + positions[context_indices]
        mask_tokens = mask_token + positions[target_indices]  # [B, *S, Kt, Dp]
        num_block_dims = target_indices.ndim - 2
        context_tokens = context_tokens.view(batch_size, *(1,) * num_block_dims, context_length, -1)
        context_tokens = context_tokens.expand(*target_indices.shape[:-1], -1, -1)
        hidden_states = torch.cat([context_tokens, mask_tokens], dim=-2).flatten(0, -3)  # [B * prod(S), Kc + Kt, Dp]
        for layer in self.layers:
            hidden_states = layer(hidden_states, None)
        predictions = self.projection(self.layernorm(hidden_states[:, context_length:]))
        return predictions.view(*target_indices.shape, -1)


class IJepaPredictor(JepaPredictor):
    """The I-JEPA predictor: one learned mask token, the 2D sin-cos table of the patch grid, and the `M` target
    blocks of each image predicted from its context, each in its own sequence."""

    def add_mask_tokens(self, config: IJepaConfig) -> None:
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.predictor_hidden_size))

    def init_mask_tokens(self, std: float) -> None:
        init.trunc_normal_(self.mask_token, std=std)

    def position_table(self) -> torch.Tensor:
        return sincos_2d(self.position_embeddings.shape[-1], self.grid_size)

    def forward(
        self, context_hidden_states: torch.Tensor, context_indices: torch.Tensor, target_indices: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            context_hidden_states: `[B, Kc, D]` context-encoder output at `context_indices`.
            context_indices: `[B, Kc]` int64 patch positions of the context tokens.
            target_indices: `[B, M, Kt]` int64 patch positions of the M target blocks.

        Returns:
            `[B, M, Kt, D]`: predicted target-encoder features of each target patch.
        """
        return self.predict(context_hidden_states, context_indices, target_indices, self.mask_token)


@dataclass
class IJepaForPreTrainingOutput(ModelOutput):
    r"""
    With `N` mask draws per image (`N = 1` unless the batch holds more, see `IJepaForPreTraining.forward`), every
    per-draw output has `R = B * N` rows, those of image `i` at `i * N ... i * N + N - 1`.

    loss (`torch.FloatTensor` of shape `[]`): the training loss, `prediction_loss` plus `regularisation_loss` when
        there is one.
    predictions (`torch.FloatTensor` of shape `[R, M, Kt, D]`): predictor output for each target block.
    targets (`torch.FloatTensor` of shape `[R, M, Kt, D]`): target-encoder features at the target patches,
        layer-normed over features without affine parameters.
    context_hidden_states (`torch.FloatTensor` of shape `[R, Kc, D]`): context-encoder output.
    prediction_loss (`torch.FloatTensor` of shape `[]`, *optional*): smooth L1 between predictions and targets
        (beta 1, mean); set only with a regulariser on (otherwise it is `loss`).
    regularisation_loss (`torch.FloatTensor` of shape `[]`, *optional*): the weighted variance-covariance term on
        `context_hidden_states` (`config.variance_loss_weight`, `config.covariance_loss_weight`) plus the weighted
        SIGReg term on them (`config.sigreg_loss_weight`) plus the weighted invariance term between the crops of
        each image (`config.view_invariance_weight`); `None` when all are off.
    """

    loss: torch.FloatTensor | None = None
    predictions: torch.FloatTensor | None = None
    targets: torch.FloatTensor | None = None
    context_hidden_states: torch.FloatTensor | None = None
    prediction_loss: torch.FloatTensor | None = None
    regularisation_loss: torch.FloatTensor | None = None


class EmaTargetEncoderMixin:
    """For a pretraining model with a `context_encoder` trained by gradients and a `target_encoder` that follows it
    as an exponential moving average: the target starts as a copy, never gets gradients, and moves only through
    `update_target_encoder`. Shared by I-JEPA and V-JEPA; put it before the `PreTrainedModel` base.
    """

    def freeze_fixed_parameters(self) -> None:
        super().freeze_fixed_parameters()
        self.target_encoder.requires_grad_(False)

    def init_weights(self):
        super().init_weights()
        self.copy_context_to_target()

    @torch.no_grad()
    def copy_context_to_target(self) -> None:
        """Make the target encoder an exact copy of the context encoder (its state at the start of training)."""
        for target, context in zip(self.target_encoder.parameters(), self.context_encoder.parameters()):
            target.copy_(context)

    @torch.no_grad()
    def update_target_encoder(self, momentum: float) -> None:
        """EMA step: `target = momentum * target + (1 - momentum) * context`, for every parameter."""
        target_parameters = list(self.target_encoder.parameters())
        context_parameters = [parameter.detach() for parameter in self.context_encoder.parameters()]
        torch._foreach_mul_(target_parameters, momentum)
        torch._foreach_add_(target_parameters, context_parameters, alpha=1.0 - momentum)


class IJepaForPreTraining(EmaTargetEncoderMixin, IJepaPreTrainedModel):
    """I-JEPA pretraining: a context encoder, a predictor, and a target encoder that is an exponential moving
    average of the context encoder (no gradients; it moves only through `update_target_encoder`).

    The target encoder is the model's base model: it is what evaluation uses, what `export_encoder` returns,
    and it is saved under the `ijepa.` prefix so that `AutoModel.from_pretrained` on a saved pretraining
    folder loads it into stock `transformers.IJepaModel`.
    """

    base_model_prefix = "target_encoder"

    def __init__(self, config: IJepaConfig):
        config = as_ijepa_config(config)
        super().__init__(config)
        self.context_encoder = IJepaModel(config)
        self.target_encoder = IJepaModel(config)
        self.predictor = IJepaPredictor(config)
        self.post_init()
        self.freeze_fixed_parameters()

    @torch.no_grad()
    def compute_targets(self, pixel_values: torch.Tensor, target_indices: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, C, H, W], target_indices [B * N, M, Kt] -> layer-normed targets [B * N, M, Kt, D].

        The target encoder runs once per image, whatever the number `N` of mask draws: the `N` rows of image `i`
        (`i * N ... i * N + N - 1`) all gather from its features, with no copy of them. `target_features` says what
        the features are (`config.target_average_layers`).
        """
        features = target_features(self.target_encoder, pixel_values, self.config.target_average_layers)
        num_rows, num_targets, target_length = target_indices.shape
        targets = gather_tokens(features, target_indices.reshape(pixel_values.shape[0], -1))
        return targets.view(num_rows, num_targets, target_length, -1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        context_indices: torch.Tensor,
        target_indices: torch.Tensor,
        regulariser_seed: int | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> IJepaForPreTrainingOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `[B, C, H, W]`): images.
            context_indices (`torch.LongTensor` of shape `[B * N, Kc]`): patches the context encoder sees.
            target_indices (`torch.LongTensor` of shape `[B * N, M, Kt]`): patches of the M target blocks.
            regulariser_seed (`int`, *optional*): seeds SIGReg's random directions (`config.sigreg_loss_weight`);
                training passes the optimizer step. `None` is 0.

        `N` is the number of mask draws per image, 1 in the paper, read from the shapes: with `N * B` rows the rows
        of image `i` are `i * N ... i * N + N - 1` (as `MultiBlockMaskCollator(num_mask_draws=N)` emits them). The
        target encoder then runs once on the `B` images and each draw gathers its targets from them; the context
        encoder and the predictor run on every draw (the images are repeated for the context encoder). The loss is
        the mean over all draws, equal to that of the `B * N` rows with each image repeated `N` times.

        The prediction loss is `config.prediction_loss` (the paper's smooth L1, or L1) over every element of the
        predicted target tokens. With `config.variance_loss_weight` or `config.covariance_loss_weight` non-zero, the
        loss adds their variance-covariance term (`variance_covariance_loss`) on the context-encoder output, all
        `B * N * Kc` tokens as samples; with `config.sigreg_loss_weight` non-zero, SIGReg on the same tokens
        (`sketched_isotropic_gaussian_loss`, `config.sigreg_num_slices` directions). With
        `config.view_invariance_weight` non-zero, the `B` rows of `pixel_values` are `B / V` images of
        `V = config.num_views` crops each, in consecutive rows, and the loss adds the weighted `view_invariance_loss`
        between the mean context tokens of each image's crops.
        """
        self.context_encoder.check_pixel_values(pixel_values, interpolate_pos_encoding=False)
        invariance_weight, num_views = self.config.view_invariance_weight, self.config.num_views
        if invariance_weight and pixel_values.shape[0] % num_views:
            raise ValueError(
                f"`pixel_values` has {pixel_values.shape[0]} rows, not a multiple of `config.num_views` "
                f"{num_views}: the invariance term needs every crop of each image."
            )
        num_draws = num_mask_draws(pixel_values.shape[0], context_indices)
        num_rows = num_draws * pixel_values.shape[0]
        check_index_tensor("context_indices", context_indices, 2, num_rows)
        check_index_tensor("target_indices", target_indices, 3, num_rows, reference="`context_indices` has")
        for name, indices in (("context_indices", context_indices), ("target_indices", target_indices)):
            check_index_values(name, indices, self.config.grid_size)

        targets = self.compute_targets(pixel_values, target_indices)
        context_pixels = pixel_values.repeat_interleave(num_draws, dim=0) if num_draws > 1 else pixel_values
        context_hidden_states = self.context_encoder(context_pixels, context_indices=context_indices).last_hidden_state
        predictions = self.predictor(context_hidden_states, context_indices, target_indices)
        loss = PREDICTION_LOSS_FUNCTIONS[self.config.prediction_loss](predictions, targets)
        prediction_loss = regularisation_loss = None
        variance_weight = self.config.variance_loss_weight
        covariance_weight = self.config.covariance_loss_weight
        sigreg_weight = self.config.sigreg_loss_weight
        if variance_weight or covariance_weight or sigreg_weight or invariance_weight:
            prediction_loss = loss
            regularisation_loss = variance_covariance_loss(context_hidden_states, variance_weight, covariance_weight)
            if sigreg_weight:
                sigreg = sketched_isotropic_gaussian_loss(
                    context_hidden_states, self.config.sigreg_num_slices, seed=regulariser_seed or 0
                )
                regularisation_loss = regularisation_loss + sigreg_weight * sigreg
            if invariance_weight:
                invariance = view_invariance_loss(context_hidden_states, num_views, num_draws)
                regularisation_loss = regularisation_loss + invariance_weight * invariance
            loss = prediction_loss + regularisation_loss
        output = IJepaForPreTrainingOutput(
            loss=loss,
            predictions=predictions,
            targets=targets,
            context_hidden_states=context_hidden_states,
            prediction_loss=prediction_loss,
            regularisation_loss=regularisation_loss,
        )
        return output if return_dict is not False else output.to_tuple()

    def export_encoder(self) -> IJepaModel:
        """The target encoder, the one the paper evaluates and publishes."""
        return self.target_encoder


# On disk the target encoder lives under `ijepa.`, the base-model prefix of stock `transformers.IJepaModel`,
# which then strips it and finds the trained weights. Saving applies the reverse renaming.
register_checkpoint_conversion_mapping(
    "IJepaForPreTraining",
    [WeightRenaming(source_patterns=r"^ijepa\.", target_patterns="target_encoder.")],
    overwrite=True,
)

__all__ = [
    "EmaTargetEncoderMixin",
    "layer_normed_last_blocks",
    "sketched_isotropic_gaussian_loss",
    "variance_covariance_loss",
    "view_invariance_loss",
    "IJepaPreTrainedModel",
    "IJepaModel",
    "JepaPredictor",
    "IJepaPredictor",
    "IJepaForPreTraining",
    "IJepaForPreTrainingOutput",
]
