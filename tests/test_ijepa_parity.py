# SPDX-License-Identifier: Apache-2.0
"""Parity with the reference I-JEPA implementation, through the checkpoint converter."""

import pytest
import torch
from safetensors import safe_open

from modeling_ijepa import IJepaForPreTraining
from modeling_ijepa.conversion.ijepa import main as convert_main

from .conftest import OFFICIAL, require

ATOL = 1e-5


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    checkpoint = require(OFFICIAL / "ijepa_official_tiny.pth.tar")
    output_dir = tmp_path_factory.mktemp("converted")
    convert_main(["--checkpoint", str(checkpoint), "--output_dir", str(output_dir), "--num_attention_heads", "4"])
    return output_dir


@pytest.fixture(scope="module")
def reference():
    with safe_open(require(OFFICIAL / "ijepa_official_tiny_io.safetensors"), "pt") as file:
        return {key: file.get_tensor(key) for key in file.keys()}


@pytest.fixture(scope="module")
def model(converted):
    return IJepaForPreTraining.from_pretrained(converted / "pretraining").eval()


def test_config_inferred_from_tensors(model):
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (64, 2, 256)
    assert (config.image_size, config.patch_size, config.num_channels) == (32, 4, 3)
    assert (config.predictor_hidden_size, config.predictor_num_hidden_layers) == (32, 2)
    assert config.predictor_num_attention_heads == 4 and config.layer_norm_eps == 1e-6


@torch.no_grad()
def test_encoders_match_reference(model, reference):
    pixel_values = reference["pixel_values"]
    for name in ("context_encoder", "target_encoder"):
        output = getattr(model, name)(pixel_values).last_hidden_state
        torch.testing.assert_close(output, reference[f"{name}_last_hidden_state"], atol=ATOL, rtol=0)
    masked = model.context_encoder(pixel_values, context_indices=reference["context_indices"]).last_hidden_state
    torch.testing.assert_close(masked, reference["context_encoder_masked_last_hidden_state"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_predictions_targets_and_loss_match_reference(model, reference):
    # The reference stacks target blocks first: target_indices [M, B, Kt], rows of outputs ordered m * B + b.
    target_indices = reference["target_indices"].transpose(0, 1).contiguous()
    output = model(reference["pixel_values"], reference["context_indices"], target_indices)
    num_targets, batch_size, target_length = reference["target_indices"].shape

    def reference_order(tensor):
        return tensor.transpose(0, 1).reshape(num_targets * batch_size, target_length, -1)

    torch.testing.assert_close(reference_order(output.predictions), reference["predictions"], atol=ATOL, rtol=0)
    torch.testing.assert_close(reference_order(output.targets), reference["targets"], atol=ATOL, rtol=0)
    torch.testing.assert_close(output.loss.reshape(1), reference["loss"], atol=ATOL, rtol=0)


def test_encoder_choice(tmp_path):
    checkpoint = require(OFFICIAL / "ijepa_official_tiny.pth.tar")
    convert_main(
        ["--checkpoint", str(checkpoint), "--output_dir", str(tmp_path), "--num_attention_heads", "4", "--encoder", "context"]
    )
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(tmp_path / "encoder")
    reference = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.testing.assert_close(encoder.layernorm.weight, reference["encoder"]["module.norm.weight"])
