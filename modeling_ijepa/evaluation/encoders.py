# SPDX-License-Identifier: Apache-2.0
"""The frozen encoder a probe evaluates: an exported folder, a pretraining folder, a reference checkpoint
(converted on the fly), or a random initialisation of the same architecture."""

import argparse
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, VJEPA2Model

from modeling_ijepa.conversion.ijepa import convert_checkpoint
from modeling_ijepa.evaluation.features import (
    model_files_fingerprint,
)
from modeling_ijepa.modeling_ijepa import IJepaModel
from modeling_ijepa.modeling_vjepa import VJepaModel
from modeling_ijepa.training.checkpointing import check_loaded_weights

logger = logging.getLogger(__name__)  # probing runs on one process


# Encoder classes for `--random_init`: ours with fixed sin-cos positions (stock transformers' `IJepaModel` would draw
# its position table at random instead); V-JEPA 2 has no position table (RoPE), so stock `VJEPA2Model` is exact.
ENCODER_CLASSES = {"ijepa": IJepaModel, "vjepa": VJepaModel, "vjepa2": VJEPA2Model}


MODALITY_OF_MODEL_TYPE = {"ijepa": "image", "vjepa": "video", "vjepa2": "video", "vit_mae": "image"}


# Encoders with a CLS token before the patch tokens: it is left out of the average over patches, and MAE's
# random masking is switched off so that the encoder sees every patch.
PREFIX_TOKENS = {"vit_mae": 1}


LOAD_OVERRIDES = {"vit_mae": {"mask_ratio": 0.0}}


# Stock `VJEPA2Model` also runs its predictor unless told not to; probes need the encoder alone.
FORWARD_ARGUMENTS = {"vjepa2": {"skip_predictor": True}}


def load_encoder(args: argparse.Namespace) -> torch.nn.Module:
    """The frozen encoder to probe, in eval mode.

    A file is a reference checkpoint, converted with its target encoder kept. A folder or Hub id goes through
    `AutoModel`, which gives the target encoder of a saved pretraining model (stored as the base model) and the
    encoder itself otherwise. With `--random_init` only the configuration is kept.
    """
    source = Path(args.model_name_or_path).expanduser()
    if source.is_file():
        if args.num_attention_heads is None:
            raise ValueError(
                f"{source} is a reference checkpoint: converting it needs --num_attention_heads (the head count is "
                "not stored in its tensors)."
            )
        encoder = convert_checkpoint(source, args.num_attention_heads, num_frames=args.num_frames).export_encoder()
        config = encoder.config
    elif args.model_name_or_path.startswith((".", "/", "~")) and not source.exists():
        raise ValueError(f"--model_name_or_path {args.model_name_or_path}: no such file or folder.")
    elif args.random_init:
        config = AutoConfig.from_pretrained(args.model_name_or_path)
    else:
        model_type = AutoConfig.from_pretrained(args.model_name_or_path).model_type
        encoder, loading_info = AutoModel.from_pretrained(
            args.model_name_or_path, output_loading_info=True, **LOAD_OVERRIDES.get(model_type, {})
        )
        config = encoder.config
        holds_pretraining = any(name.endswith("ForPreTraining") for name in config.architectures or [])
        # Every encoder tensor must be in the files (a missing one would be probed at its random initialisation);
        # a pretraining folder also holds the other networks, which are left unloaded.
        check_loaded_weights(encoder, loading_info, args.model_name_or_path, tolerate_unexpected=holds_pretraining)
        if holds_pretraining:
            logger.info(
                f"{args.model_name_or_path} holds a pretraining model: probing its target encoder (the context "
                "encoder and predictor weights are left unloaded)."
            )
    if MODALITY_OF_MODEL_TYPE.get(config.model_type) != args.modality:
        expected = [kind for kind, modality in MODALITY_OF_MODEL_TYPE.items() if modality == args.modality]
        raise ValueError(
            f"{args.model_name_or_path} is a `{config.model_type}` model, which does not take {args.modality} "
            f"input (--modality {args.modality} needs one of {expected})."
        )
    if args.random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            encoder = ENCODER_CLASSES[config.model_type](config)
    encoder.requires_grad_(False)
    return encoder.eval()


def model_identity(args: argparse.Namespace) -> dict:
    identity = model_files_fingerprint(args.model_name_or_path)
    if args.random_init:
        identity["random_init_seed"] = args.seed
    return identity
