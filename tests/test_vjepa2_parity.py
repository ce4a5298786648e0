# SPDX-License-Identifier: Apache-2.0
"""Parity of V-JEPA 2 pretraining with the reference implementation, through the checkpoint converter, and the
errors for inputs it cannot take."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForPreTraining

from modeling_ijepa import VJepa2Config, VJepa2ForPreTraining
from modeling_ijepa.conversion.ijepa import load_reference_checkpoint
from modeling_ijepa.conversion.vjepa2 import convert_vjepa2
from modeling_ijepa.conversion.vjepa2 import main as convert_main

from .conftest import OFFICIAL, require

ATOL = 1e-5
CHECKPOINT = "vjepa2_official_tiny.pth.tar"


def load_reference() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The stored reference tensors and the numbers that describe them (the safetensors metadata)."""
    with safe_open(require(OFFICIAL / "vjepa2_official_tiny_io.safetensors"), "pt") as file:
        return {key: file.get_tensor(key) for key in file.keys()}, file.metadata()


def converter_arguments(metadata: dict[str, str]) -> dict:
    """What the converter needs beyond the tensors, read off the fixture."""
    return {
        "num_attention_heads": int(metadata["num_attention_heads"]),
        "pred_num_attention_heads": int(metadata["predictor_num_attention_heads"]),
        "crop_size": int(metadata["image_size"]),
        "frames_per_clip": int(metadata["num_frames"]),
    }


def convert_fixture(output_dir) -> None:
    """Convert the reference checkpoint with the command line, into `output_dir/{pretraining,encoder}`."""
    arguments = converter_arguments(load_reference()[1])
    argv = ["--checkpoint", str(require(OFFICIAL / CHECKPOINT)), "--output_dir", str(output_dir)]
    for name, value in arguments.items():
        argv += [f"--{name}", str(value)]
    convert_main(argv)


def mask_types(metadata: dict[str, str]) -> range:
    return range(int(metadata["num_mask_types"]))


@pytest.fixture(scope="module")
def reference():
    return load_reference()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("converted")
    convert_fixture(output_dir)
    return output_dir


@pytest.fixture(scope="module")
def model(converted):
    return AutoModelForPreTraining.from_pretrained(converted / "pretraining").eval()


def clips_of(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reference clips `[B, C, T, H, W]` in the layout of transformers' video models, `[B, T, C, H, W]`."""
    return tensors["pixel_values_videos"].permute(0, 2, 1, 3, 4)


def test_config_comes_from_the_tensors_and_the_fixture(model, reference):
    _, metadata = reference
    config = model.config
    assert type(model) is VJepa2ForPreTraining
    assert config.model_type == "vjepa2"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        int(metadata["hidden_size"]),
        int(metadata["num_hidden_layers"]),
        int(metadata["num_attention_heads"]),
    )
    assert (config.pred_hidden_size, config.pred_num_hidden_layers, config.pred_num_mask_tokens) == (
        int(metadata["predictor_hidden_size"]),
        int(metadata["predictor_num_hidden_layers"]),
        int(metadata["num_mask_tokens"]),
    )
    assert (config.crop_size, config.frames_per_clip, config.patch_size, config.tubelet_size) == (
        int(metadata["image_size"]),
        int(metadata["num_frames"]),
        int(metadata["patch_size"]),
        int(metadata["tubelet_size"]),
    )
    assert config.mlp_ratio == config.pred_mlp_ratio == float(metadata["mlp_ratio"])
    assert list(config.grid_size) == json.loads(metadata["grid_t_h_w"])
    assert config.num_patches == int(metadata["num_patches"])


@torch.no_grad()
def test_encoders_match_reference(model, reference):
    tensors, metadata = reference
    clips = clips_of(tensors)
    for name in ("context_encoder", "target_encoder"):
        output = getattr(model, name)(clips).last_hidden_state
        torch.testing.assert_close(output, tensors[f"{name}_last_hidden_state"], atol=ATOL, rtol=0)
    for mask_type in mask_types(metadata):
        masked = model.context_encoder(clips, context_indices=tensors[f"context_indices_{mask_type}"])
        expected = tensors[f"context_encoder_masked_last_hidden_state_{mask_type}"]
        torch.testing.assert_close(masked.last_hidden_state, expected, atol=ATOL, rtol=0)


@torch.no_grad()
def test_predictions_targets_and_losses_match_reference(model, reference):
    tensors, metadata = reference
    context_indices = [tensors[f"context_indices_{mask_type}"] for mask_type in mask_types(metadata)]
    target_indices = [tensors[f"target_indices_{mask_type}"] for mask_type in mask_types(metadata)]
    mask_index = int(metadata["training_mask_index"])
    output = model(clips_of(tensors), context_indices, target_indices, mask_index=mask_index)
    for mask_type in mask_types(metadata):
        for name, ours in (
            ("context_encoder_masked_last_hidden_state", output.context_hidden_states[mask_type]),
            ("predictions", output.predictions[mask_type]),
            ("targets", output.targets[mask_type]),
        ):
            torch.testing.assert_close(ours, tensors[f"{name}_{mask_type}"], atol=ATOL, rtol=0)
    assert model.config.loss_exponent == float(metadata["loss_exp"])
    torch.testing.assert_close(output.loss.reshape(1), tensors["loss"], atol=ATOL, rtol=0)

    squared = VJepa2ForPreTraining(VJepa2Config(**(model.config.to_dict() | {"loss_exponent": 2.0})))
    squared.load_state_dict(model.state_dict())
    output = squared.eval()(clips_of(tensors), context_indices, target_indices, mask_index=mask_index)
    torch.testing.assert_close(output.loss.reshape(1), tensors["loss_exp_2"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_images_are_still_clips_of_the_training_length(model, reference):
    tensors, metadata = reference
    images = tensors["pixel_values_images"]  # [B, C, H, W]
    assert model.config.frames_per_clip == int(metadata["img_as_video_nframes"])
    torch.testing.assert_close(
        model.target_encoder(images).last_hidden_state,
        tensors["image_target_encoder_last_hidden_state"],
        atol=ATOL,
        rtol=0,
    )
    # What stock transformers makes of a one-frame clip: the image repeated to one tubelet.
    one_tubelet = images.unsqueeze(1).expand(-1, model.config.tubelet_size, -1, -1, -1)
    torch.testing.assert_close(
        model.target_encoder(one_tubelet).last_hidden_state,
        tensors["image_target_encoder_last_hidden_state_2frames"],
        atol=ATOL,
        rtol=0,
    )


@torch.no_grad()
def test_attention_implementations_agree(model, reference):
    tensors, metadata = reference
    context_indices = [tensors[f"context_indices_{mask_type}"] for mask_type in mask_types(metadata)]
    target_indices = [tensors[f"target_indices_{mask_type}"] for mask_type in mask_types(metadata)]
    try:
        model.set_attn_implementation("eager")
        assert model.predictor.layer[0].attention.config._attn_implementation == "eager"
        output = model(clips_of(tensors), context_indices, target_indices)
    finally:
        model.set_attn_implementation("sdpa")
    torch.testing.assert_close(output.predictions[0], tensors["predictions_0"], atol=ATOL, rtol=0)


def test_vjepa1_checkpoint_is_refused_with_a_clear_error():
    checkpoint = load_reference_checkpoint(require(OFFICIAL / "vjepa_official_tiny.pth.tar"))
    arguments = converter_arguments(load_reference()[1])
    with pytest.raises(ValueError, match="looks like a V-JEPA 1 checkpoint.*convert_official.*ignore_position_tables"):
        convert_vjepa2(checkpoint, **arguments)


def test_image_checkpoint_is_refused_with_a_clear_error():
    checkpoint = load_reference_checkpoint(require(OFFICIAL / "ijepa_official_tiny.pth.tar"))
    with pytest.raises(ValueError, match="Not a V-JEPA 2 video checkpoint: the encoder has a 2D patch embedding"):
        convert_vjepa2(checkpoint, **converter_arguments(load_reference()[1]))


@torch.no_grad()
def test_released_checkpoints_with_unused_position_tables_convert(reference):
    """Released V-JEPA 2 checkpoints carry position tables they never use: dropped on request, same model."""
    tensors, metadata = reference
    checkpoint = load_reference_checkpoint(require(OFFICIAL / CHECKPOINT))
    num_patches, hidden_size = int(metadata["num_patches"]), int(metadata["hidden_size"])
    tables = {"encoder": "pos_embed", "target_encoder": "pos_embed", "predictor": "predictor_pos_embed"}
    for name, table in tables.items():
        unused = {f"module.backbone.{table}": torch.randn(1, num_patches, hidden_size)}
        checkpoint[name] = dict(checkpoint[name]) | unused
    model = convert_vjepa2(checkpoint, **converter_arguments(metadata), ignore_position_tables=True)
    torch.testing.assert_close(
        model.target_encoder(clips_of(tensors)).last_hidden_state,
        tensors["target_encoder_last_hidden_state"],
        atol=ATOL,
        rtol=0,
    )


@pytest.mark.parametrize(
    "shape, message",
    [
        ((2, 6, 3, 32, 32), r"must have 8 frames \(`frames_per_clip`"),
        ((2, 3, 8, 32, 32), r"looks like \[B, C, T, H, W\]: pass `pixel_values_videos.permute\(0, 2, 1, 3, 4\)`"),
        ((2, 8, 3, 16, 16), r"Frames must be 32x32 pixels"),
        ((2, 3, 16, 16), r"Images must be \[batch, 3, 32, 32\].*got shape \(2, 3, 16, 16\)"),
        ((2, 1, 32, 32), r"Images must be \[batch, 3, 32, 32\]"),
        ((2, 3, 32), r"must be clips \[batch, frames, channels, height, width\] or images"),
    ],
)
def test_pretraining_rejects_bad_inputs(model, reference, shape, message):
    tensors, _ = reference
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape), [tensors["context_indices_0"]], [tensors["target_indices_0"]])


def test_encoder_takes_any_whole_number_of_tubelets_and_nothing_else(model):
    config = model.config
    longer = torch.zeros(1, config.frames_per_clip + config.tubelet_size, 3, config.crop_size, config.crop_size)
    with torch.no_grad():
        tokens_per_step = (config.crop_size // config.patch_size) ** 2
        assert model.target_encoder(longer).last_hidden_state.shape[1] == config.num_patches + tokens_per_step
    with pytest.raises(ValueError, match=r"multiple of `tubelet_size` \(2\) frames, got 7"):
        model.target_encoder(torch.zeros(1, 7, 3, config.crop_size, config.crop_size))


def test_indices_off_the_token_grid_are_rejected(model, reference):
    tensors, _ = reference
    outside = tensors["target_indices_0"].clone()
    outside[0, 0] = model.config.num_patches
    with pytest.raises(ValueError, match="target_indices\\[0\\]"):
        model(clips_of(tensors), [tensors["context_indices_0"]], [outside])
    with pytest.raises(ValueError, match="one \\[batch, K\\] LongTensor per mask type"):
        model(clips_of(tensors), tensors["context_indices_0"], [outside])


def test_training_step_reaches_context_encoder_and_predictor_only(reference):
    tensors, metadata = reference
    config = VJepa2Config(
        crop_size=32,
        frames_per_clip=8,
        patch_size=8,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        pred_hidden_size=24,
        pred_num_hidden_layers=1,
        pred_num_attention_heads=2,
        pred_num_mask_tokens=2,
    )
    model = VJepa2ForPreTraining(config)
    assert all(torch.equal(t, c) for t, c in zip(model.target_encoder.parameters(), model.context_encoder.parameters()))
    assert not any(parameter.requires_grad for parameter in model.target_encoder.parameters())
    model.activation_checkpointing_enable()
    model.train()
    output = model(
        clips_of(tensors),
        [tensors[f"context_indices_{mask_type}"] for mask_type in mask_types(metadata)],
        [tensors[f"target_indices_{mask_type}"] for mask_type in mask_types(metadata)],
    )
    output.loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith("target_encoder."):
            assert parameter.grad is None, name
        else:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    # Only the mask token of the batch's clip-length group (0) is used.
    mask_token_grads = model.predictor.embeddings.mask_tokens.grad.flatten(1).abs().sum(1)
    assert mask_token_grads[0] > 0 and mask_token_grads[1] == 0

    before = [parameter.clone() for parameter in model.target_encoder.parameters()]
    with torch.no_grad():
        for parameter in model.context_encoder.parameters():
            parameter.add_(1.0)
    model.update_target_encoder(0.75)
    for old, new, context in zip(before, model.target_encoder.parameters(), model.context_encoder.parameters()):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * context)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_attention_heads": 16}, r"4 channels per head is too few for 3D RoPE"),
        ({"crop_size": 30}, r"`crop_size` \(30\) must be divisible by `patch_size` \(8\)"),
        ({"frames_per_clip": 7}, r"`frames_per_clip` \(7\) must be divisible by `tubelet_size` \(2\)"),
        ({"pred_hidden_size": 50}, r"`pred_hidden_size` \(50\) must be divisible by `pred_num_attention_heads`"),
        ({"patch_size": [8, 4]}, r"`patch_size` must be a positive int"),
        ({"loss_exponent": 0}, r"`loss_exponent` must be a positive number"),
    ],
)
def test_invalid_configs_raise_value_error(overrides, message):
    base = {"crop_size": 32, "frames_per_clip": 8, "patch_size": 8, "hidden_size": 64, "num_attention_heads": 4}
    base |= {"pred_hidden_size": 48, "pred_num_attention_heads": 4}
    with pytest.raises(ValueError, match=message):
        VJepa2Config(**(base | overrides))
