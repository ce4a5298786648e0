# SPDX-License-Identifier: Apache-2.0
"""V-JEPA 2 pretraining (Assran et al., 2025): context encoder, EMA target encoder, RoPE predictor and loss.

transformers ships V-JEPA 2 for inference (`VJEPA2Model`: encoder and predictor), with no EMA target, no loss and no
pretraining. This file composes its modules as they are: the encoders are transformers' `VJEPA2Encoder` and the
predictor its `VJEPA2Predictor`, so every parameter keeps its stock name and `export_encoder` hands back a stock
`VJEPA2Model` with no renaming. Only the two `forward` methods are new, because the training computation differs
from stock inference in two ways:

- the context encoder runs on the kept tokens only (gathered after the patch embedding, before the blocks), each
  token rotated with its original index, whereas stock `VJEPA2Model` always encodes every token and gathers after;
- the predictor takes the context encoder's output at the kept tokens and the mask token of the batch's clip-length
  group (0 for a batch of one clip length), whereas stock gathers from a full-length sequence and always uses
  mask token 1.

Stock `VJEPA2Layer` already accepts the original token indices of a gathered subset (its `position_mask` argument
feeds the RoPE positions), so the layers and their attention are used unchanged.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import VJEPA2Model
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2Encoder, VJEPA2Predictor, VJEPA2PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_vjepa2 import VJepa2Config
from .modeling_ijepa import EmaTargetEncoderMixin, check_index_tensor, gather_tokens
from .modeling_vjepa import check_mask_type_indices, check_video_rank, mask_type_loss

# The reference normalises its targets with `F.layer_norm`'s default epsilon, not the blocks' 1e-6.
TARGET_LAYER_NORM_EPS = 1e-5


def as_vjepa2_config(config) -> VJepa2Config:
    """`AutoConfig` reads the `vjepa2` model type as transformers' own config: give it our pretraining fields."""
    if isinstance(config, VJepa2Config):
        return config
    converted = VJepa2Config.from_dict(config.to_dict())
    converted._attn_implementation = config._attn_implementation
    return converted


def prepare_pixel_values(
    pixel_values_videos: torch.Tensor, config: VJepa2Config, num_frames: int | None = None
) -> torch.Tensor:
    """Check the input of an encoder and return it as clips `[B, T, C, H, W]`, the layout of stock `VJEPA2Model`.

    Args:
        pixel_values_videos: clips `[B, T, C, H, W]`, or images `[B, C, H, W]`. An image becomes a still clip of
            `config.frames_per_clip` frames, as the reference evaluates images (stock `VJEPA2Model` instead repeats a
            one-frame clip `[B, 1, C, H, W]` to `tubelet_size` frames, which gives other features).
        config: the model's config.
        num_frames: the frame count required (pretraining: `config.frames_per_clip`, the grid of the mask indices);
            `None` accepts any positive multiple of `tubelet_size` (RoPE needs no table of a fixed length).

    Raises:
        ValueError: naming what was expected and what was received. Frames must be `crop_size` pixels square:
            stock `vjepa2` layers place tokens on the `crop_size / patch_size` grid, so another resolution would give
            wrong rows and columns.
    """
    channels, size = config.in_chans, config.crop_size
    check_video_rank(pixel_values_videos)
    shape = tuple(pixel_values_videos.shape)
    if pixel_values_videos.ndim == 4:
        if shape[1] != channels or shape[2:] != (size, size):
            raise ValueError(
                f"Images must be [batch, {channels}, {size}, {size}] (channels first, `crop_size` pixels square), got "
                f"shape {shape}."
            )
        pixel_values_videos = pixel_values_videos.unsqueeze(1).expand(-1, config.frames_per_clip, -1, -1, -1)
    else:
        if shape[2] != channels:
            hint = ""
            if shape[1] == channels:
                hint = " It looks like [B, C, T, H, W]: pass `pixel_values_videos.permute(0, 2, 1, 3, 4)`."
            raise ValueError(
                f"Clips must be [batch, frames, channels, height, width] (the layout of stock `VJEPA2Model`) with "
                f"{channels} channels at dim 2, got shape {shape}.{hint}"
            )
        if shape[3:] != (size, size):
            raise ValueError(
                f"Frames must be {size}x{size} pixels (`crop_size`, the grid that RoPE positions are read on), got "
                f"{shape[3]}x{shape[4]} (shape {shape})."
            )
        frames = shape[1]
        if num_frames is not None and frames != num_frames:
            raise ValueError(
                f"Clips must have {num_frames} frames (`frames_per_clip`, the token grid of the mask indices), got "
                f"{frames} (shape {shape})."
            )
        if frames % config.tubelet_size:
            raise ValueError(
                f"Clips must have a multiple of `tubelet_size` ({config.tubelet_size}) frames, got {frames} (shape "
                f"{shape}); pass a single image as [batch, channels, height, width]."
            )
    return pixel_values_videos


class VJepa2PreTrainedModel(VJEPA2PreTrainedModel):
    """Stock `VJEPA2PreTrainedModel` (initialisation, attention implementations, gradient checkpointing) with our
    config. The base model is the target encoder: it is what evaluation uses and what gets exported."""

    config: VJepa2Config
    config_class = VJepa2Config
    base_model_prefix = "target_encoder"

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # Loading replaces parameters with fresh ones that require gradients: freeze the EMA target again.
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).freeze_fixed_parameters()
        return loaded

    def freeze_fixed_parameters(self) -> None:
        """Stop gradients to what never trains. V-JEPA 2 has no position table: only the EMA target (added by
        `EmaTargetEncoderMixin`) is fixed."""


class VJepa2Encoder(VJEPA2Encoder):
    """Stock `VJEPA2Encoder` (tubelet embedding, RoPE blocks, final LayerNorm; no position table, no CLS token)
    that can run on a subset of tokens, as the context encoder does in pretraining."""

    def forward(
        self, pixel_values_videos: torch.Tensor, context_indices: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutput:
        r"""
        Args:
            pixel_values_videos (`torch.FloatTensor` of shape `[B, T, C, H, W]`): clips of any multiple of
                `tubelet_size` frames at `crop_size`; or images `[B, C, H, W]`, each repeated `frames_per_clip` times.
            context_indices (`torch.LongTensor` of shape `[B, Kc]`, *optional*): tokens to keep, row-major in (frame,
                row, column). They are gathered after the patch embedding, and each is rotated with its original
                index, as the reference context encoder does; this differs from encoding all tokens and gathering
                after.

        Returns:
            `BaseModelOutput` with `last_hidden_state` `[B, N or Kc, D]`, `N = T/t * (crop_size/patch_size)^2`.
        """
        video = prepare_pixel_values(pixel_values_videos, self.config)
        hidden_states = self.embeddings(video)
        if context_indices is not None:
            # Shape only: `torch.gather` rejects any index off the sequence; pretraining checks values at its entry.
            check_index_tensor("context_indices", context_indices, 2, hidden_states.shape[0])
            hidden_states = gather_tokens(hidden_states, context_indices)
        for layer in self.layer:
            # Stock layers take each token's original index as `position_mask` (None: 0..N-1), so RoPE rotates the
            # kept tokens where they sit in the clip.
            hidden_states = layer(hidden_states, context_indices, **kwargs)[0]
        return BaseModelOutput(last_hidden_state=self.layernorm(hidden_states))


class VJepa2Predictor(VJEPA2Predictor):
    """Stock `VJEPA2Predictor` run as in training: on the context encoder's output at the kept tokens, with the
    mask token of the batch's clip-length group."""

    def forward(
        self,
        context_hidden_states: torch.Tensor,
        context_indices: torch.Tensor,
        target_indices: torch.Tensor,
        mask_index: int = 0,
        **kwargs,
    ) -> torch.Tensor:
        """
        The sequence is `[predictor_embeddings(context tokens) | one mask token per target token]` (no position is
        added: RoPE in every block places each token at its index). It is sorted by token index, run through the
        blocks and the final LayerNorm, put back in order, and the target rows are projected to the encoder width.

        Args:
            context_hidden_states: `[B, Kc, D]` context-encoder output at `context_indices`.
            context_indices: `[B, Kc]` int64 token indices of the context tokens.
            target_indices: `[B, Kt]` int64 token indices to predict.
            mask_index: mask token `mask_index % pred_num_mask_tokens`. The reference passes the clip-length group
                of the batch, so a batch of one clip length uses token 0 for every mask type.

        Returns:
            `[B, Kt, D]`: predicted target features, in `target_indices` order.
        """
        batch_size, context_length = context_indices.shape
        context_tokens = self.embeddings.predictor_embeddings(context_hidden_states)
        mask_tokens = self.embeddings.mask_tokens[mask_index % self.embeddings.num_mask_tokens]  # [1, 1, Dp]
        mask_tokens = mask_tokens.expand(batch_size, target_indices.shape[1], -1)
        hidden_states = torch.cat([context_tokens, mask_tokens], dim=1)
        positions = torch.cat([context_indices, target_indices], dim=1)
        order = torch.argsort(positions, dim=1)
        hidden_states, positions = self.sort_tokens(hidden_states, positions, order)
        for layer in self.layer:
            hidden_states = layer(hidden_states, positions, **kwargs)[0]
        hidden_states = self.unsort_tokens(self.layernorm(hidden_states), order)
        return self.proj(hidden_states[:, context_length:])


@dataclass
class VJepa2ForPreTrainingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `[]`): mean over mask types of `mean(|predictions_i - targets_i|^p) / p`.
    predictions (`list[torch.FloatTensor]`, one `[B, Kt_i, D]` per mask type): predictor output.
    targets (`list[torch.FloatTensor]`, one `[B, Kt_i, D]` per mask type): target-encoder features at the target
        tokens, layer-normed over features without affine parameters (epsilon 1e-5).
    context_hidden_states (`list[torch.FloatTensor]`, one `[B, Kc_i, D]` per mask type): context-encoder output.
    """

    loss: torch.FloatTensor | None = None
    predictions: list[torch.FloatTensor] | None = None
    targets: list[torch.FloatTensor] | None = None
    context_hidden_states: list[torch.FloatTensor] | None = None


class VJepa2ForPreTraining(EmaTargetEncoderMixin, VJepa2PreTrainedModel):
    """V-JEPA 2 pretraining: a context encoder, the RoPE predictor, and a target encoder that is an exponential
    moving average of the context encoder (no gradients; it moves only through `update_target_encoder`).

    The target encoder runs once on the full clip. Then, for each mask type `i`, the context encoder runs on
    `context_indices[i]` only and the predictor predicts the layer-normed target features at `target_indices[i]`.
    Images `[B, C, H, W]` are trained on as still clips of `frames_per_clip` frames.

    On disk the target encoder and the predictor are saved as `vjepa2.encoder.*` and `vjepa2.predictor.*`, so stock
    `AutoModel.from_pretrained` on a saved pretraining folder loads them into `VJEPA2Model` (and ignores
    `context_encoder.*`). `export_encoder` gives the same as a stock model on its own.
    """

    def __init__(self, config: VJepa2Config):
        config = as_vjepa2_config(config)
        super().__init__(config)
        self.context_encoder = VJepa2Encoder(config)
        self.target_encoder = VJepa2Encoder(config)
        self.predictor = VJepa2Predictor(config)
        self.post_init()
        self.freeze_fixed_parameters()

    @torch.no_grad()
    def compute_targets(self, video: torch.Tensor, target_indices: list[torch.Tensor]) -> list[torch.Tensor]:
        """video `[B, T, C, H, W]`, target_indices (one `[B, Kt_i]` per mask type) -> layer-normed targets
        `[B, Kt_i, D]`."""
        features = self.target_encoder(video).last_hidden_state
        features = F.layer_norm(features, (features.shape[-1],), eps=TARGET_LAYER_NORM_EPS)
        return [gather_tokens(features, indices) for indices in target_indices]

    def forward(
        self,
        pixel_values_videos: torch.Tensor,
        context_indices: list[torch.Tensor],
        target_indices: list[torch.Tensor],
        mask_index: int = 0,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VJepa2ForPreTrainingOutput | tuple:
        r"""
        Args:
            pixel_values_videos (`torch.FloatTensor` of shape `[B, T, C, H, W]`): clips of `frames_per_clip` frames at
                `crop_size`, or images `[B, C, H, W]` (each repeated `frames_per_clip` times).
            context_indices (`list[torch.LongTensor]`, one `[B, Kc_i]` per mask type): tokens the context encoder
                sees, row-major in (frame, row, column) on the `config.grid_size` grid.
            target_indices (`list[torch.LongTensor]`, one `[B, Kt_i]` per mask type): tokens to predict.
            mask_index (`int`, defaults to 0): the predictor's mask token for every mask type of this batch (the
                reference's clip-length group; 0 for a batch of one clip length).
        """
        video = prepare_pixel_values(pixel_values_videos, self.config, num_frames=self.config.frames_per_clip)
        check_mask_type_indices(context_indices, target_indices, video.shape[0], self.config.grid_size)

        targets = self.compute_targets(video, target_indices)
        predictions, context_hidden_states = [], []
        for context, target in zip(context_indices, target_indices):
            hidden_states = self.context_encoder(video, context_indices=context, **kwargs).last_hidden_state
            context_hidden_states.append(hidden_states)
            predictions.append(self.predictor(hidden_states, context, target, mask_index, **kwargs))
        output = VJepa2ForPreTrainingOutput(
            loss=mask_type_loss(predictions, targets, self.config.loss_exponent),
            predictions=predictions,
            targets=targets,
            context_hidden_states=context_hidden_states,
        )
        return output if return_dict is not False else output.to_tuple()

    def export_encoder(self) -> VJEPA2Model:
        """A stock `transformers.VJEPA2Model` holding copies of the target encoder (the one the paper evaluates) and
        the trained predictor, in eval mode. Parameter names are the same, so nothing is renamed."""
        stock = VJEPA2Model(self.config.stock_config())
        state_dict = {f"encoder.{key}": value for key, value in self.target_encoder.state_dict().items()}
        state_dict |= {f"predictor.{key}": value for key, value in self.predictor.state_dict().items()}
        stock.load_state_dict(state_dict, strict=True)
        return stock.to(self.dtype).eval()


# `vjepa2.` is the base-model prefix of stock `VJEPA2Model`, which strips it on loading and so finds the target
# encoder and the predictor under the names it expects. Saving applies the reverse renaming.
register_checkpoint_conversion_mapping(
    "VJepa2ForPreTraining",
    [
        WeightRenaming(source_patterns=r"^vjepa2\.encoder\.", target_patterns="target_encoder."),
        WeightRenaming(source_patterns=r"^vjepa2\.predictor\.", target_patterns="predictor."),
    ],
    overwrite=True,
)

__all__ = [
    "VJepa2PreTrainedModel",
    "VJepa2Encoder",
    "VJepa2Predictor",
    "VJepa2ForPreTraining",
    "VJepa2ForPreTrainingOutput",
]
