# SPDX-License-Identifier: Apache-2.0
"""V-JEPA: the video ViT encoder, the predictor and the pretraining model (Bardes et al., 2024).

The blocks are transformers' I-JEPA layers and the parameter names follow our I-JEPA models; what differs is the
tubelet patch embedding (a `Conv3d`), the fixed 3D sin-cos position table, one predictor mask token per mask type,
and an L1-type loss averaged over mask types. This file imports only transformers, torch and the I-JEPA model and
config files, so that a saved folder (which gets copies of them) loads with `trust_remote_code=True` alone.
"""

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.ijepa.modeling_ijepa import IJepaLayer
from transformers.utils import ModelOutput
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_ijepa import as_pair
from .configuration_vjepa import VJepaConfig
from .modeling_ijepa import (
    EmaTargetEncoderMixin,
    IJepaPreTrainedModel,
    JepaPredictor,
    check_index_tensor,
    check_index_values,
    encode_tokens,
    gather_tokens,
    sincos_1d,
)


def sincos_3d(embed_dim: int, grid_size: tuple[int, int, int], uniform_power: bool) -> torch.Tensor:
    """Fixed 3D sin-cos table [T*H*W, embed_dim] for a (time, rows, columns) token grid, in row-major token order.

    Channels are laid out `[time | row | column]`, the layout of the reference implementation (and so of its
    checkpoints): time D/2 and rows and columns D/4 each, or with `uniform_power` `2 * ceil(D / 6)` each, cut to D.
    """
    frames, rows, columns = torch.meshgrid(
        *(torch.arange(size, dtype=torch.float64) for size in grid_size), indexing="ij"
    )
    if uniform_power:
        time_dim = row_dim = column_dim = 2 * math.ceil(embed_dim / 6)
    else:
        time_dim, row_dim, column_dim = embed_dim // 2, embed_dim // 4, embed_dim // 4
    table = torch.cat([sincos_1d(time_dim, frames), sincos_1d(row_dim, rows), sincos_1d(column_dim, columns)], dim=1)
    return table[:, :embed_dim].float()


def check_video_rank(pixel_values_videos: torch.Tensor) -> None:
    """Raise `ValueError` unless `pixel_values_videos` is a tensor of clips (5 dimensions) or of images (4)."""
    if not isinstance(pixel_values_videos, torch.Tensor) or pixel_values_videos.ndim not in (4, 5):
        received = (
            f"shape {tuple(pixel_values_videos.shape)}"
            if isinstance(pixel_values_videos, torch.Tensor)
            else type(pixel_values_videos).__name__
        )
        raise ValueError(
            "`pixel_values_videos` must be clips [batch, frames, channels, height, width] or images "
            f"[batch, channels, height, width], got {received}."
        )


def channels_first_clips(
    pixel_values_videos: torch.Tensor, num_channels: int, num_frames: int, channels_before_time: bool
) -> torch.Tensor:
    """Clips `[B, T, C, H, W]` (`[B, C, T, H, W]` with `channels_before_time`), or images `[B, C, H, W]` made still
    clips of `num_frames` frames, -> clips `[B, C, T, H, W]`, the layout of `nn.Conv3d`.

    Raises `ValueError` where the channels are not `num_channels`, saying which layout the input looks like.
    """
    check_video_rank(pixel_values_videos)
    shape = tuple(pixel_values_videos.shape)
    if pixel_values_videos.ndim == 4:
        if shape[1] != num_channels:
            raise ValueError(
                f"Images in `pixel_values_videos` must be [batch, channels, height, width] with {num_channels} "
                f"channels at dim 1, got shape {shape}."
            )
        return pixel_values_videos.unsqueeze(2).expand(-1, -1, num_frames, -1, -1)
    channel_dim, frame_dim = (1, 2) if channels_before_time else (2, 1)
    if shape[channel_dim] != num_channels:
        if shape[frame_dim] == num_channels:
            found, fix = (
                ("[B, T, C, H, W]", "pass it without `channels_before_time=True`")
                if channels_before_time
                else ("[B, C, T, H, W]", "pass `channels_before_time=True` or permute it to [B, T, C, H, W]")
            )
            raise ValueError(
                f"`pixel_values_videos` of shape {shape} has {num_channels} channels at dim {frame_dim}: it looks "
                f"like {found}; {fix}."
            )
        raise ValueError(
            f"`pixel_values_videos` must have {num_channels} channels at dim {channel_dim}, got "
            f"{shape[channel_dim]} (shape {shape})."
        )
    return pixel_values_videos if channels_before_time else pixel_values_videos.transpose(1, 2)


class VJepaTubeletEmbeddings(nn.Module):
    """Clips [B, C, T, H, W] -> tokens [B, T/t * H/p * W/p, D]: one token per tubelet of t frames x p x p pixels."""

    def __init__(self, config: VJepaConfig):
        super().__init__()
        patch_size = as_pair(config.patch_size, "patch_size")
        kernel_size = (config.tubelet_size, *patch_size)
        self.projection = nn.Conv3d(
            config.num_channels, config.hidden_size, kernel_size=kernel_size, stride=kernel_size
        )

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.projection(video).flatten(2).transpose(1, 2)


class VJepaEmbeddings(nn.Module):
    """Tubelet embedding plus the fixed 3D sin-cos position of each token (no CLS token).

    The table is a parameter (the reference stores it in its checkpoints) that never trains. At another clip size
    it is generated again for the new grid rather than interpolated: the table is a fixed function of the grid, so
    this is exact, while interpolation would blur it. (The reference instead stretches its table by trilinear
    interpolation, so outputs at other sizes differ from the reference's; at the configured size they are equal.)
    """

    def __init__(self, config: VJepaConfig):
        super().__init__()
        self.grid_size = config.grid_size
        self.uniform_power = config.uniform_power
        self.patch_embeddings = VJepaTubeletEmbeddings(config)
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_patches, config.hidden_size))

    def position_table(self, grid_size: tuple[int, int, int]) -> torch.Tensor:
        """Positions `[1, T*H*W, D]` for a (time, rows, columns) token grid."""
        if grid_size == self.grid_size:
            return self.position_embeddings
        table = sincos_3d(self.position_embeddings.shape[-1], grid_size, self.uniform_power)
        return table[None].to(self.position_embeddings.device, self.position_embeddings.dtype)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, C, T, H, W] -> embedded tokens [B, N, D], N = T/t * H/p * W/p."""
        embeddings = self.patch_embeddings(video)
        kernel_size = self.patch_embeddings.projection.kernel_size
        grid_size = tuple(size // kernel for size, kernel in zip(video.shape[2:], kernel_size))
        return embeddings + self.position_table(grid_size)


class VJepaPreTrainedModel(IJepaPreTrainedModel):
    """Shares I-JEPA's weight freezing (fixed position tables; re-frozen after `from_pretrained`) and attention
    support. The base model is the target encoder, so `AutoModel.from_pretrained` on a saved pretraining folder
    loads the target encoder, the one the paper evaluates."""

    config: VJepaConfig
    config_class = VJepaConfig
    base_model_prefix = "target_encoder"
    main_input_name = "pixel_values_videos"
    input_modalities = ("video",)
    _no_split_modules = ["VJepaEmbeddings", "IJepaLayer", "VJepaPredictor"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, nn.Conv3d):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            init.zeros_(module.bias)
        elif isinstance(module, VJepaEmbeddings):
            table = sincos_3d(module.position_embeddings.shape[-1], module.grid_size, module.uniform_power)
            init.copy_(module.position_embeddings, table[None])


class VJepaModel(VJepaPreTrainedModel):
    """The V-JEPA video ViT encoder: tubelet embedding + fixed 3D sin-cos positions (no CLS token), pre-norm
    blocks, final LayerNorm. Given `context_indices` it runs on those tokens only, as the context encoder does
    during pretraining.

    Inputs follow transformers' video models: `pixel_values_videos` [B, T, C, H, W]. Clips in the layout of the
    reference code and of `nn.Conv3d`, [B, C, T, H, W], need `channels_before_time=True`. An image batch
    [B, C, H, W] is treated as a still clip: each image is repeated `config.num_frames` times, as the reference
    does when it evaluates a video model on images.
    """

    def __init__(self, config: VJepaConfig):
        super().__init__(config)
        self.embeddings = VJepaEmbeddings(config)
        self.layers = nn.ModuleList([IJepaLayer(config) for _ in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()
        self.freeze_fixed_parameters()

    def prepare_pixel_values(
        self,
        pixel_values_videos: torch.Tensor,
        channels_before_time: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """Check the input and return it as clips [B, C, T, H, W] in the encoder's dtype.

        Args:
            pixel_values_videos: `[B, T, C, H, W]` clips, `[B, C, T, H, W]` with `channels_before_time`, or
                `[B, C, H, W]` images (each repeated `config.num_frames` times).
            channels_before_time: the clips are `[B, C, T, H, W]`.
            interpolate_pos_encoding: allow a frame count and resolution other than the configured ones.

        Raises:
            ValueError: naming what was expected and what was received.
        """
        config = self.config
        video = channels_first_clips(pixel_values_videos, config.num_channels, config.num_frames, channels_before_time)
        shape = tuple(pixel_values_videos.shape)
        num_frames, height, width = video.shape[2:]
        expected_height, expected_width = as_pair(config.image_size, "image_size")
        if not interpolate_pos_encoding:
            if num_frames != config.num_frames:
                raise ValueError(
                    f"`pixel_values_videos` must have {config.num_frames} frames, got {num_frames} (shape {shape}); "
                    "pass `interpolate_pos_encoding=True` to run on clips of another length."
                )
            if (height, width) != (expected_height, expected_width):
                raise ValueError(
                    f"`pixel_values_videos` must be {expected_height}x{expected_width} pixels, got {height}x{width}; "
                    "pass `interpolate_pos_encoding=True` to run at another resolution."
                )
        tubelet, patch_height, patch_width = self.embeddings.patch_embeddings.projection.kernel_size
        if num_frames % tubelet or height % patch_height or width % patch_width:
            raise ValueError(
                f"`pixel_values_videos` with {num_frames} frames of {height}x{width} pixels does not split into "
                f"tubelets of {tubelet} frames x {patch_height}x{patch_width} pixels."
            )
        return video.to(self.embeddings.patch_embeddings.projection.weight.dtype)

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values_videos: torch.Tensor,
        context_indices: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        channels_before_time: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            pixel_values_videos (`torch.FloatTensor` of shape `[B, T, C, H, W]`): clips; `[B, C, T, H, W]` with
                `channels_before_time=True`; or images `[B, C, H, W]`, each repeated `config.num_frames` times.
            context_indices (`torch.LongTensor` of shape `[B, K]`, *optional*): token positions to keep, row-major in
                (time, row, column); the encoder then sees only those `K` tokens (with their own positions).
            interpolate_pos_encoding (`bool`, *optional*): run on another frame count or resolution (the position
                table is generated for the new token grid).
            channels_before_time (`bool`, defaults to `False`): the clips are `[B, C, T, H, W]`, the layout of the
                reference code and of `nn.Conv3d`.

        Returns:
            `BaseModelOutputWithPooling` with `last_hidden_state` `[B, N or K, D]` and `pooler_output` `[B, D]` (the
            mean over tokens: V-JEPA has no CLS token).
        """
        video = self.prepare_pixel_values(pixel_values_videos, channels_before_time, bool(interpolate_pos_encoding))
        return encode_tokens(self, self.embeddings(video), context_indices, **kwargs)


class VJepaPredictor(JepaPredictor):
    """The V-JEPA predictor, run once per mask type: the 3D sin-cos table of the token grid, and one learned mask
    token per mask type (`mask_tokens.{i}`, as in the reference checkpoints)."""

    def __init__(self, config: VJepaConfig):
        super().__init__(config)
        self.uniform_power = config.uniform_power

    def add_mask_tokens(self, config: VJepaConfig) -> None:
        self.mask_tokens = nn.ParameterList(
            [nn.Parameter(torch.zeros(1, 1, config.predictor_hidden_size)) for _ in range(config.num_mask_tokens)]
        )

    def init_mask_tokens(self, std: float) -> None:
        # Zero mask tokens, as in the published V-JEPA recipes (`zero_init_mask_tokens`).
        for mask_token in self.mask_tokens:
            init.zeros_(mask_token)

    def position_table(self) -> torch.Tensor:
        return sincos_3d(self.position_embeddings.shape[-1], self.grid_size, self.uniform_power)

    def forward(
        self,
        context_hidden_states: torch.Tensor,
        context_indices: torch.Tensor,
        target_indices: torch.Tensor,
        mask_index: int,
    ) -> torch.Tensor:
        """
        Args:
            context_hidden_states: `[B, Kc, D]` context-encoder output at `context_indices`.
            context_indices: `[B, Kc]` int64 token positions of the context tokens.
            target_indices: `[B, Kt]` int64 token positions to predict.
            mask_index: the mask type; it uses mask token `mask_index % num_mask_tokens`, as in the reference.

        Returns:
            `[B, Kt, D]`: predicted target-encoder features of each target token.
        """
        mask_token = self.mask_tokens[mask_index % len(self.mask_tokens)]
        return self.predict(context_hidden_states, context_indices, target_indices, mask_token)


@dataclass
class VJepaForPreTrainingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `[]`): mean over mask types of `mean(|predictions_i - targets_i|^p) / p`.
    predictions (`list[torch.FloatTensor]`, one `[B, Kt_i, D]` per mask type): predictor output.
    targets (`list[torch.FloatTensor]`, one `[B, Kt_i, D]` per mask type): target-encoder features at the target
        tokens, layer-normed over features without affine parameters.
    context_hidden_states (`list[torch.FloatTensor]`, one `[B, Kc_i, D]` per mask type): context-encoder output.
    """

    loss: torch.FloatTensor | None = None
    predictions: list[torch.FloatTensor] | None = None
    targets: list[torch.FloatTensor] | None = None
    context_hidden_states: list[torch.FloatTensor] | None = None


def mask_type_loss(predictions: list[torch.Tensor], targets: list[torch.Tensor], exponent: float) -> torch.Tensor:
    """The V-JEPA loss: the mean over mask types of `mean(|prediction - target|^p) / p`, each type weighted equally
    whatever its number of target tokens (one `[B, Kt_i, D]` pair per type)."""
    losses = [
        (prediction - target).abs().pow(exponent).mean() / exponent for prediction, target in zip(predictions, targets)
    ]
    return torch.stack(losses).mean()


def check_mask_type_indices(
    context_indices: list[torch.Tensor],
    target_indices: list[torch.Tensor],
    batch_size: int,
    grid_size: tuple[int, int, int],
) -> None:
    """Raise `ValueError` unless both are equally long lists of [B, K_i] int64 tensors of positions on the token grid
    `grid_size` (on CUDA the values are asserted on the device instead: see `check_index_values`)."""
    for name, indices in (("context_indices", context_indices), ("target_indices", target_indices)):
        if not isinstance(indices, (list, tuple)) or not indices:
            received = (
                f"a tensor of shape {tuple(indices.shape)}" if isinstance(indices, torch.Tensor) else repr(indices)
            )
            raise ValueError(
                f"`{name}` must be a non-empty list with one [batch, K] LongTensor per mask type, got {received}."
            )
    if len(context_indices) != len(target_indices):
        raise ValueError(
            f"`context_indices` has {len(context_indices)} mask types but `target_indices` has {len(target_indices)}."
        )
    for mask_index, (context, target) in enumerate(zip(context_indices, target_indices)):
        for name, indices in ((f"context_indices[{mask_index}]", context), (f"target_indices[{mask_index}]", target)):
            check_index_tensor(name, indices, 2, batch_size)
            check_index_values(name, indices, grid_size)


class VJepaForPreTraining(EmaTargetEncoderMixin, VJepaPreTrainedModel):
    """V-JEPA pretraining: a context encoder, a predictor, and a target encoder that is an exponential moving
    average of the context encoder (no gradients; it moves only through `update_target_encoder`).

    The target encoder runs once on the full clip; then, for each mask type `i`, the context encoder runs on
    `context_indices[i]` and the predictor, with mask token `i`, predicts the layer-normed target features at
    `target_indices[i]`. The target encoder is the base model: `AutoModel.from_pretrained` on a saved folder loads it.
    """

    def __init__(self, config: VJepaConfig):
        super().__init__(config)
        self.context_encoder = VJepaModel(config)
        self.target_encoder = VJepaModel(config)
        self.predictor = VJepaPredictor(config)
        self.post_init()
        self.freeze_fixed_parameters()

    @torch.no_grad()
    def compute_targets(self, video: torch.Tensor, target_indices: list[torch.Tensor]) -> list[torch.Tensor]:
        """video [B, C, T, H, W], target_indices (one [B, Kt_i] per mask type) -> layer-normed targets [B, Kt_i, D]."""
        features = self.target_encoder(video, channels_before_time=True).last_hidden_state
        features = F.layer_norm(features, (features.shape[-1],))
        return [gather_tokens(features, indices) for indices in target_indices]

    def forward(
        self,
        pixel_values_videos: torch.Tensor,
        context_indices: list[torch.Tensor],
        target_indices: list[torch.Tensor],
        channels_before_time: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VJepaForPreTrainingOutput | tuple:
        r"""
        Args:
            pixel_values_videos (`torch.FloatTensor` of shape `[B, T, C, H, W]`): clips at the configured size
                (`[B, C, T, H, W]` with `channels_before_time=True`).
            context_indices (`list[torch.LongTensor]`, one `[B, Kc_i]` per mask type): tokens the context encoder sees.
            target_indices (`list[torch.LongTensor]`, one `[B, Kt_i]` per mask type): tokens to predict.
            channels_before_time (`bool`, defaults to `False`): the clips are `[B, C, T, H, W]`.
        """
        video = self.context_encoder.prepare_pixel_values(pixel_values_videos, channels_before_time)
        check_mask_type_indices(context_indices, target_indices, video.shape[0], self.config.grid_size)

        targets = self.compute_targets(video, target_indices)
        predictions, context_hidden_states = [], []
        for mask_index, (context, target) in enumerate(zip(context_indices, target_indices)):
            hidden_states = self.context_encoder(video, context_indices=context, channels_before_time=True)
            context_hidden_states.append(hidden_states.last_hidden_state)
            predictions.append(self.predictor(hidden_states.last_hidden_state, context, target, mask_index))
        output = VJepaForPreTrainingOutput(
            loss=mask_type_loss(predictions, targets, self.config.loss_exponent),
            predictions=predictions,
            targets=targets,
            context_hidden_states=context_hidden_states,
        )
        return output if return_dict is not False else output.to_tuple()

    def export_encoder(self) -> VJepaModel:
        """The target encoder, the one the paper evaluates and publishes."""
        return self.target_encoder

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        # `AutoModel` on a pretraining folder loads the target encoder (the base model). Naming its class in the
        # `auto_map` makes that work with `trust_remote_code=True` too, where this package is not installed.
        if self.is_remote_code():
            module = VJepaModel.__module__.rsplit(".", 1)[-1]
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModel": f"{module}.VJepaModel",
            }
        super().save_pretrained(save_directory, *args, **kwargs)


# `save_pretrained` then copies this file and its relative imports into the folder and writes an `auto_map`.
VJepaModel.register_for_auto_class("AutoModel")
VJepaForPreTraining.register_for_auto_class("AutoModelForPreTraining")

__all__ = [
    "VJepaPreTrainedModel",
    "VJepaModel",
    "VJepaPredictor",
    "VJepaForPreTraining",
    "VJepaForPreTrainingOutput",
]
