# SPDX-License-Identifier: Apache-2.0
"""Parity with the reference V-JEPA implementation, through the checkpoint converter."""

import logging

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModel

from modeling_ijepa import VJepaForPreTraining, VJepaModel
from modeling_ijepa.conversion.ijepa import load_reference_checkpoint
from modeling_ijepa.conversion.ijepa import main as convert_main
from modeling_ijepa.conversion.vjepa import convert_vjepa

from .conftest import OFFICIAL, require

ATOL = 1e-5
MASK_TYPES = (0, 1)


@pytest.fixture(scope="module")
def checkpoint():
    return load_reference_checkpoint(require(OFFICIAL / "vjepa_official_tiny.pth.tar"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    checkpoint = require(OFFICIAL / "vjepa_official_tiny.pth.tar")
    output_dir = tmp_path_factory.mktemp("converted")
    convert_main(
        [
            "--checkpoint",
            str(checkpoint),
            "--output_dir",
            str(output_dir),
            "--num_attention_heads",
            "4",
            "--num_frames",
            "8",
        ]
    )
    return output_dir


@pytest.fixture(scope="module")
def reference():
    with safe_open(require(OFFICIAL / "vjepa_official_tiny_io.safetensors"), "pt") as file:
        return {key: file.get_tensor(key) for key in file.keys()}


@pytest.fixture(scope="module")
def model(converted):
    return VJepaForPreTraining.from_pretrained(converted / "pretraining").eval()


def test_config_inferred_from_tensors(model):
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (64, 2, 256)
    assert (config.num_frames, config.tubelet_size, config.image_size, config.patch_size) == (8, 2, 32, 8)
    assert (config.predictor_hidden_size, config.predictor_num_hidden_layers, config.predictor_num_attention_heads) == (
        32,
        2,
        4,
    )
    assert config.uniform_power is True and config.num_mask_tokens == 2 and config.grid_size == (4, 4, 4)


@torch.no_grad()
def test_encoders_match_reference(model, reference):
    clips = reference["pixel_values_videos"]  # [B, C, T, H, W], the reference layout
    for name in ("context_encoder", "target_encoder"):
        expected = reference[f"{name}_last_hidden_state"]
        encoder = getattr(model, name)
        torch.testing.assert_close(
            encoder(clips, channels_before_time=True).last_hidden_state, expected, atol=ATOL, rtol=0
        )
        torch.testing.assert_close(encoder(clips.transpose(1, 2)).last_hidden_state, expected, atol=ATOL, rtol=0)
    for mask_type in MASK_TYPES:
        context_indices = reference[f"context_indices_{mask_type}"]
        masked = model.context_encoder(clips, context_indices=context_indices, channels_before_time=True)
        expected = reference[f"context_encoder_masked_last_hidden_state_{mask_type}"]
        torch.testing.assert_close(masked.last_hidden_state, expected, atol=ATOL, rtol=0)


@torch.no_grad()
def test_predictions_targets_and_loss_match_reference(model, reference):
    output = model(
        reference["pixel_values_videos"],
        [reference[f"context_indices_{mask_type}"] for mask_type in MASK_TYPES],
        [reference[f"target_indices_{mask_type}"] for mask_type in MASK_TYPES],
        channels_before_time=True,
    )
    for mask_type in MASK_TYPES:
        expected_context = reference[f"context_encoder_masked_last_hidden_state_{mask_type}"]
        torch.testing.assert_close(output.context_hidden_states[mask_type], expected_context, atol=ATOL, rtol=0)
        torch.testing.assert_close(
            output.predictions[mask_type], reference[f"predictions_{mask_type}"], atol=ATOL, rtol=0
        )
        torch.testing.assert_close(output.targets[mask_type], reference[f"targets_{mask_type}"], atol=ATOL, rtol=0)
    torch.testing.assert_close(output.loss.reshape(1), reference["loss"], atol=ATOL, rtol=0)


def test_grid_and_uniform_power_read_off_the_position_table(checkpoint, caplog):
    inferred = convert_vjepa(checkpoint, num_attention_heads=4)
    assert inferred.config.uniform_power is True
    assert (inferred.config.num_frames, inferred.config.image_size) == (8, 32)
    with caplog.at_level(logging.WARNING):
        forced = convert_vjepa(checkpoint, num_attention_heads=4, num_frames=8, uniform_power=False)
    assert forced.config.uniform_power is False and "not the 3D sin-cos table" in caplog.text

    with pytest.raises(ValueError, match="64 position tokens.*check `num_frames`"):
        convert_vjepa(checkpoint, num_attention_heads=4, num_frames=6)
    learned = {**checkpoint, "encoder": dict(checkpoint["encoder"])}
    learned["encoder"]["module.backbone.pos_embed"] = torch.randn(1, 64, 64)
    with pytest.raises(ValueError, match="Pass `num_frames` and `uniform_power`"):
        convert_vjepa(learned, num_attention_heads=4, num_frames=8)


@torch.no_grad()
def test_exported_encoder_folder_is_the_target_encoder(converted, model, reference):
    encoder = AutoModel.from_pretrained(converted / "encoder").eval()
    assert type(encoder) is VJepaModel
    assert '"AutoModel": "modeling_vjepa.VJepaModel"' in (converted / "encoder" / "config.json").read_text()
    clips = reference["pixel_values_videos"]
    expected = reference["target_encoder_last_hidden_state"]
    torch.testing.assert_close(encoder(clips, channels_before_time=True).last_hidden_state, expected, atol=ATOL, rtol=0)
