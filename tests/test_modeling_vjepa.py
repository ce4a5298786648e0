# SPDX-License-Identifier: Apache-2.0
"""Behaviour of the V-JEPA config, encoder, predictor and pretraining model, and loading with remote code."""

import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from modeling_ijepa import VJepaConfig, VJepaForPreTraining, VJepaModel, VJepaPredictor
from modeling_ijepa.modeling_ijepa import sincos_1d
from modeling_ijepa.modeling_vjepa import sincos_3d

from .conftest import REPO_ROOT
from .test_modeling_ijepa import check_set_attn_implementation_reaches_every_layer

# 4 frames of 16x16 in tubelets of 2 frames x 4x4 pixels: a (2, 4, 4) grid of 32 tokens.
NUM_TOKENS = 32


@pytest.fixture
def tiny_config():
    return VJepaConfig(
        image_size=16,
        num_frames=4,
        tubelet_size=2,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        predictor_hidden_size=16,
        predictor_num_hidden_layers=2,
    )


def random_clips(batch_size=2, num_frames=4, size=16):
    return torch.randn(batch_size, num_frames, 3, size, size)  # [B, T, C, H, W]


def random_indices(batch_size=2, lengths=((10, 12), (6, 20))):
    """One (context, target) pair of [B, K] index tensors per mask type."""

    def draw(length):
        return torch.stack([torch.randperm(NUM_TOKENS)[:length] for _ in range(batch_size)])

    return [draw(context) for context, _ in lengths], [draw(target) for _, target in lengths]


def make_encoders_differ(model):
    """Move the two encoders apart, as after training."""
    with torch.no_grad():
        for parameter in model.context_encoder.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.update_target_encoder(0.5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_frames": 5}, r"`num_frames` \(5\) must be divisible by `tubelet_size` \(2\)"),
        ({"image_size": 18}, "divisible by `patch_size`"),
        ({"hidden_size": 30}, "divisible by `num_attention_heads`"),
        ({"predictor_hidden_size": 18}, "divisible by `predictor_num_attention_heads`"),
        ({"tubelet_size": 0}, "tubelet_size"),
        ({"num_mask_tokens": 0}, "num_mask_tokens"),
        ({"uniform_power": False, "hidden_size": 36}, r"`hidden_size` \(36\) must be divisible by 8"),
    ],
)
def test_invalid_configs_raise_value_error(tiny_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        VJepaConfig(**(tiny_config.to_dict() | overrides))


def test_config_defaults_and_sizes(tiny_config):
    config = VJepaConfig()
    assert (config.model_type, config.num_frames, config.tubelet_size, config.num_mask_tokens) == ("vjepa", 16, 2, 2)
    assert config.predictor_num_attention_heads == config.num_attention_heads and config.layer_norm_eps == 1e-6
    assert config.grid_size == (8, 14, 14) and config.loss_exponent == 1.0
    assert tiny_config.grid_size == (2, 4, 4) and tiny_config.num_patches == NUM_TOKENS
    layer_config = tiny_config.predictor_layer_config()
    assert (layer_config.hidden_size, layer_config.num_attention_heads, layer_config.intermediate_size) == (16, 4, 32)


def test_predictor_parameters_keep_their_names_and_order(tiny_config):
    """The state-dict names of the reference checkpoints, and the order of the optimizer states saved with ours."""
    names = [name for name, _ in VJepaPredictor(tiny_config).named_parameters()]
    assert names[:5] == ["position_embeddings", "embed.weight", "embed.bias", "mask_tokens.0", "mask_tokens.1"]
    assert names[5].startswith("layers.0.") and names[-2:] == ["projection.weight", "projection.bias"]


def test_sincos_3d_layout():
    """Channels are [time | row | column]; each part depends on its own coordinate only."""
    grid = (3, 4, 5)
    frames, rows, columns = (
        axis.flatten().double() for axis in torch.meshgrid(*map(torch.arange, grid), indexing="ij")
    )
    table = sincos_3d(32, grid, uniform_power=False)
    expected = torch.cat([sincos_1d(16, frames), sincos_1d(8, rows), sincos_1d(8, columns)], dim=1).float()
    torch.testing.assert_close(table, expected)
    uniform = sincos_3d(32, grid, uniform_power=True)  # 12 channels each, cut to 32: column keeps 8 of 12
    expected = torch.cat([sincos_1d(12, frames), sincos_1d(12, rows), sincos_1d(12, columns)], dim=1)[:, :32].float()
    torch.testing.assert_close(uniform, expected)


def test_encoder_shapes_pooling_and_masking(tiny_config):
    model = VJepaModel(tiny_config).eval()
    clips = random_clips()
    with torch.no_grad():
        output = model(clips, output_hidden_states=True)
        assert output.last_hidden_state.shape == (2, NUM_TOKENS, 32)
        torch.testing.assert_close(output.pooler_output, output.last_hidden_state.mean(1))
        assert len(output.hidden_states) == tiny_config.num_hidden_layers + 1
        all_tokens = torch.arange(NUM_TOKENS).expand(2, -1)
        torch.testing.assert_close(model(clips, context_indices=all_tokens).last_hidden_state, output.last_hidden_state)
        context = random_indices()[0][0]
        assert model(clips, context_indices=context).last_hidden_state.shape == (2, 10, 32)
    assert not model.embeddings.position_embeddings.requires_grad
    torch.testing.assert_close(model.embeddings.position_embeddings[0], sincos_3d(32, (2, 4, 4), uniform_power=True))


@torch.no_grad()
def test_image_is_a_still_clip_of_num_frames_frames(tiny_config):
    model = VJepaModel(tiny_config).eval()
    images = torch.randn(2, 3, 16, 16)
    still_clips = images[:, None].expand(-1, tiny_config.num_frames, -1, -1, -1)
    torch.testing.assert_close(model(images).last_hidden_state, model(still_clips).last_hidden_state)


@torch.no_grad()
def test_channels_before_time_flag(tiny_config):
    model = VJepaModel(tiny_config).eval()
    clips = random_clips()
    expected = model(clips).last_hidden_state
    observed = model(clips.transpose(1, 2).contiguous(), channels_before_time=True).last_hidden_state
    torch.testing.assert_close(observed, expected)


@torch.no_grad()
def test_other_frame_counts_and_sizes_with_interpolation(tiny_config):
    model = VJepaModel(tiny_config).eval()
    clips = random_clips(num_frames=8, size=24)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(clips)
    assert model(clips, interpolate_pos_encoding=True).last_hidden_state.shape == (2, 4 * 6 * 6, 32)
    native = random_clips()
    torch.testing.assert_close(
        model(native, interpolate_pos_encoding=True).last_hidden_state, model(native).last_hidden_state
    )
    # The table is generated for the new grid, so the native grid's tokens keep exactly their positions.
    longer = model.embeddings.position_table((4, 4, 4))[0].view(4, 16, -1)
    torch.testing.assert_close(longer[:2].reshape(NUM_TOKENS, -1), model.embeddings.position_embeddings[0])


@pytest.mark.parametrize(
    "case, message",
    [
        ("frames", r"must have 4 frames, got 6 .*interpolate_pos_encoding=True"),
        ("size", "must be 16x16 pixels, got 20x20"),
        ("channels_first", r"3 channels at dim 1: it looks like \[B, C, T, H, W\]; pass `channels_before_time=True`"),
        ("frames_first_with_flag", r"it looks like \[B, T, C, H, W\]; pass it without `channels_before_time=True`"),
        ("channel_count", "must have 3 channels at dim 2, got 1"),
        ("rank", r"\[batch, frames, channels, height, width\]"),
        ("tubelets", "does not split into tubelets of 2 frames x 4x4 pixels"),
        ("out_of_range", r"`context_indices\[1\]` must lie in \[0, 31\].*got values from \d+ to 32"),
        ("dtype", r"`target_indices\[0\]` must have dtype torch.int64, got torch.int32"),
        ("not_a_list", r"`context_indices` must be a non-empty list .* got a tensor of shape \(2, 10\)"),
        ("mask_types", "`context_indices` has 2 mask types but `target_indices` has 1"),
        ("batch", r"`target_indices\[1\]` has batch size 3 but the pixel values have batch size 2"),
        ("target_shape", r"`target_indices\[0\]` must have 2 dimensions"),
    ],
)
def test_bad_input_names_expected_and_received(tiny_config, case, message):
    model = VJepaForPreTraining(tiny_config)
    clips, kwargs = random_clips(), {}
    context, target = random_indices()
    if case == "frames":
        clips = random_clips(num_frames=6)
    elif case == "size":
        clips = random_clips(size=20)
    elif case == "channels_first":
        clips = clips.transpose(1, 2)
    elif case == "frames_first_with_flag":
        kwargs = {"channels_before_time": True}
    elif case == "channel_count":
        clips = clips[:, :, :1]
    elif case == "rank":
        clips = clips[0, 0, 0]
    elif case == "tubelets":
        clips, kwargs = random_clips(num_frames=5, size=18), {"interpolate_pos_encoding": True}
        model = model.context_encoder
    elif case == "out_of_range":
        context[1][0, 0] = 32
    elif case == "dtype":
        target[0] = target[0].int()
    elif case == "not_a_list":
        context = context[0]
    elif case == "mask_types":
        target = target[:1]
    elif case == "batch":
        target[1] = torch.cat([target[1], target[1][:1]])
    elif case == "target_shape":
        target[0] = target[0][None]
    with pytest.raises(ValueError, match=message):
        if isinstance(model, VJepaModel):
            model(clips, **kwargs)
        else:
            model(clips, context, target, **kwargs)


def test_pretraining_outputs_and_loss(tiny_config):
    model = VJepaForPreTraining(tiny_config).eval()
    make_encoders_differ(model)
    context, target = random_indices()
    clips = random_clips()
    with torch.no_grad():
        output = model(clips, context, target)
        assert [tuple(t.shape) for t in output.predictions] == [(2, 12, 32), (2, 20, 32)]
        assert [tuple(t.shape) for t in output.targets] == [(2, 12, 32), (2, 20, 32)]
        assert [tuple(t.shape) for t in output.context_hidden_states] == [(2, 10, 32), (2, 6, 32)]
        expected_loss = torch.stack([(p - t).abs().mean() for p, t in zip(output.predictions, output.targets)]).mean()
        torch.testing.assert_close(output.loss, expected_loss)
        for targets in output.targets:  # layer norm without affine parameters
            torch.testing.assert_close(targets.mean(-1), torch.zeros(targets.shape[:-1]), atol=1e-5, rtol=0)
            torch.testing.assert_close(
                targets.var(-1, unbiased=False), torch.ones(targets.shape[:-1]), atol=1e-3, rtol=0
            )
        # Each mask type has its own mask token.
        model.predictor.mask_tokens[1].add_(1.0)
        changed = model(clips, context, target)
        torch.testing.assert_close(changed.predictions[0], output.predictions[0])
        assert not torch.allclose(changed.predictions[1], output.predictions[1])

        model.config.loss_exponent = 2.0
        squared = model(clips, context, target)
        expected_loss = torch.stack(
            [((p - t) ** 2).mean() / 2 for p, t in zip(squared.predictions, squared.targets)]
        ).mean()
        torch.testing.assert_close(squared.loss, expected_loss)


def test_gradients_reach_context_encoder_and_predictor_only(tiny_config):
    model = VJepaForPreTraining(tiny_config).train()
    model(random_clips(), *random_indices()).loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith("target_encoder") or name.endswith("position_embeddings"):
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert all(parameter.grad.abs().sum() > 0 for parameter in model.predictor.mask_tokens)


def test_target_encoder_starts_as_copy_and_follows_by_ema(tiny_config):
    model = VJepaForPreTraining(tiny_config)
    for target, context in zip(model.target_encoder.state_dict().values(), model.context_encoder.state_dict().values()):
        assert torch.equal(target, context)
    with torch.no_grad():
        for parameter in model.context_encoder.parameters():
            parameter.add_(1.0)
    before = [parameter.clone() for parameter in model.target_encoder.parameters()]
    model.update_target_encoder(0.75)
    for previous, target, context in zip(before, model.target_encoder.parameters(), model.context_encoder.parameters()):
        torch.testing.assert_close(target, 0.75 * previous + 0.25 * context)


def test_save_load_round_trip_and_auto_classes(tiny_config, tmp_path, caplog):
    model = VJepaForPreTraining(tiny_config).eval()
    make_encoders_differ(model)
    model.save_pretrained(tmp_path)
    assert sorted(path.name for path in tmp_path.glob("*.py")) == [
        "configuration_ijepa.py",
        "configuration_vjepa.py",
        "modeling_ijepa.py",
        "modeling_vjepa.py",
    ]
    assert type(AutoConfig.from_pretrained(tmp_path)) is VJepaConfig

    loaded = AutoModelForPreTraining.from_pretrained(tmp_path)
    assert type(loaded) is VJepaForPreTraining
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    trainable = {name for name, parameter in loaded.named_parameters() if parameter.requires_grad}
    assert trainable == {name for name, parameter in model.named_parameters() if parameter.requires_grad}

    with caplog.at_level(logging.WARNING):
        encoder = AutoModel.from_pretrained(tmp_path).eval()
    assert type(encoder) is VJepaModel
    assert "newly initialized" not in caplog.text and "MISSING" not in caplog.text
    for name, value in model.target_encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[name], value), name
    assert not encoder.embeddings.position_embeddings.requires_grad


def test_one_mask_token_serves_every_mask_type(tiny_config):
    config = VJepaConfig(**(tiny_config.to_dict() | {"num_mask_tokens": 1}))
    output = VJepaForPreTraining(config)(random_clips(), *random_indices())
    assert len(output.predictions) == 2 and torch.isfinite(output.loss)


def test_sdpa_and_eager_attention_agree(tiny_config):
    eager = VJepaForPreTraining._from_config(tiny_config, attn_implementation="eager").eval()
    sdpa = VJepaForPreTraining._from_config(tiny_config, attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    clips, (context, target) = random_clips(), random_indices()
    with torch.no_grad():
        for a, b in zip(eager(clips, context, target).predictions, sdpa(clips, context, target).predictions):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_set_attn_implementation_reaches_every_layer(tiny_config, monkeypatch):
    model = VJepaForPreTraining._from_config(tiny_config, attn_implementation="sdpa").eval()
    clips, (context, target) = random_clips(), random_indices()
    check_set_attn_implementation_reaches_every_layer(model, lambda: model(clips, context, target), monkeypatch)


FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import os
    import sys

    folder, inputs, repo_root = sys.argv[1:]
    sys.path = [entry for entry in sys.path if os.path.realpath(entry or ".") != repo_root]


    class RefuseOurPackage(importlib.abc.MetaPathFinder):
        # Also hides a copy installed in site-packages: only the files saved in the folder may be used.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "modeling_ijepa":
                raise ModuleNotFoundError(f"No module named {name!r}")


    sys.meta_path.insert(0, RefuseOurPackage())
    try:
        import modeling_ijepa
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("modeling_ijepa is importable in the fresh process")

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForPreTraining

    tensors = load_file(inputs)
    encoder = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(encoder).__name__ == "VJepaModel", type(encoder)
    assert type(encoder).__module__.startswith("transformers_modules."), type(encoder).__module__
    with torch.no_grad():
        output = encoder(tensors["clips"]).last_hidden_state
    torch.testing.assert_close(output, tensors["target_encoder_output"], atol=1e-5, rtol=0)

    pretraining = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(pretraining).__name__ == "VJepaForPreTraining", type(pretraining)
    indices = [tensors["context_0"], tensors["context_1"]], [tensors["target_0"], tensors["target_1"]]
    with torch.no_grad():
        loss = pretraining(tensors["clips"], *indices).loss
    torch.testing.assert_close(loss, tensors["loss"], atol=1e-5, rtol=0)
    assert "modeling_ijepa" not in sys.modules
    print("fresh process ok")
    """
)


def test_trust_remote_code_in_fresh_process_without_the_package(tiny_config, tmp_path):
    model = VJepaForPreTraining(tiny_config).eval()
    make_encoders_differ(model)
    model.save_pretrained(tmp_path / "pretraining")
    clips, (context, target) = random_clips(), random_indices()
    with torch.no_grad():
        tensors = {
            "clips": clips,
            "target_encoder_output": model.target_encoder(clips).last_hidden_state,
            "loss": model(clips, context, target).loss,
            **{f"context_{i}": indices for i, indices in enumerate(context)},
            **{f"target_{i}": indices for i, indices in enumerate(target)},
        }
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, tmp_path / "inputs.safetensors")

    working_dir = tmp_path / "cwd"
    working_dir.mkdir()
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    env |= {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            FRESH_PROCESS_SCRIPT,
            str(tmp_path / "pretraining"),
            str(tmp_path / "inputs.safetensors"),
            os.path.realpath(REPO_ROOT),
        ],
        cwd=working_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fresh process ok" in result.stdout
