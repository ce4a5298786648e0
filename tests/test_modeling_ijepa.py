# SPDX-License-Identifier: Apache-2.0
"""Behaviour of the I-JEPA config, encoder, predictor and pretraining model."""

import math

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.ijepa import modeling_ijepa as stock_modeling_ijepa

from modeling_ijepa import IJepaConfig, IJepaForPreTraining, IJepaModel, IJepaPredictor
from modeling_ijepa.modeling_ijepa import JepaPredictor


def random_indices(batch_size=2, num_targets=4, context_length=20, target_length=9, num_patches=64):
    context = torch.stack([torch.randperm(num_patches)[:context_length] for _ in range(batch_size)])
    target = torch.stack(
        [torch.stack([torch.randperm(num_patches)[:target_length] for _ in range(num_targets)]) for _ in range(batch_size)]
    )
    return context, target


def record_attention_implementations(monkeypatch) -> dict:
    """Wrap the eager and SDPA attention functions of transformers' I-JEPA layers; the returned dict then maps each
    attention module that runs to the implementation that computed it."""
    used = {}

    def recording(implementation, attention):
        def recorded(module, *args, **kwargs):
            used[module] = implementation
            return attention(module, *args, **kwargs)

        return recorded

    eager = stock_modeling_ijepa.eager_attention_forward
    monkeypatch.setattr(stock_modeling_ijepa, "eager_attention_forward", recording("eager", eager))
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", recording("sdpa", sdpa))
    return used


def check_set_attn_implementation_reaches_every_layer(model, run_forward, monkeypatch):
    """Switch `model` from SDPA to eager and back; after each switch every attention layer must run the new one."""
    attention_layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, stock_modeling_ijepa.IJepaAttention)
    }
    assert any(name.startswith("predictor.") for name in attention_layers)
    used = record_attention_implementations(monkeypatch)
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        used.clear()
        with torch.no_grad():
            run_forward()
        assert {name: used.get(module) for name, module in attention_layers.items()} == dict.fromkeys(
            attention_layers, implementation
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image_size": 30, "patch_size": 4}, "divisible by `patch_size`"),
        ({"hidden_size": 64, "num_attention_heads": 5}, "divisible by `num_attention_heads`"),
        ({"predictor_hidden_size": 30, "predictor_num_attention_heads": 4}, "divisible by `predictor_num_attention_heads`"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"patch_size": 0}, "patch_size"),
    ],
)
def test_invalid_configs_raise_value_error(overrides, message):
    base = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=4)
    with pytest.raises(ValueError, match=message):
        IJepaConfig(**(base | overrides))


def test_config_is_validated_the_transformers_way(tiny_ijepa_config, tmp_path):
    """`@strict`: field types are checked when set, and `validate()` (which `save_pretrained` runs) reruns the size
    checks, so a config changed after construction cannot be saved with sizes that make no model."""
    with pytest.raises(StrictDataclassFieldValidationError, match="predictor_hidden_size"):
        tiny_ijepa_config.predictor_hidden_size = "wide"
    tiny_ijepa_config.validate()
    tiny_ijepa_config.num_attention_heads = 5
    message = r"(?s)validate_architecture.*`hidden_size` \(64\) must be divisible by `num_attention_heads` \(5\)"
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        tiny_ijepa_config.validate()
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        tiny_ijepa_config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"`image_size` must be a positive number, got \(32, 0\)"):
        IJepaConfig(image_size=(32, 0), patch_size=4)


def test_predictor_parameters_keep_their_names_and_order(tiny_ijepa_config):
    """The state-dict names of checkpoints, and the order of the optimizer states saved with them."""
    predictor = IJepaPredictor(tiny_ijepa_config)
    assert isinstance(predictor, JepaPredictor)
    names = [name for name, _ in predictor.named_parameters()]
    assert names[:4] == ["mask_token", "position_embeddings", "embed.weight", "embed.bias"]
    assert names[4].startswith("layers.0.") and names[-4:] == [
        "layernorm.weight", "layernorm.bias", "projection.weight", "projection.bias",
    ]  # fmt: skip


def test_predictor_heads_default_to_encoder_heads():
    config = IJepaConfig(hidden_size=64, num_attention_heads=4, predictor_hidden_size=32)
    assert config.predictor_num_attention_heads == 4
    assert config.layer_norm_eps == 1e-6


def test_encoder_shapes_and_pooling(tiny_ijepa_config):
    model = IJepaModel(tiny_ijepa_config).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    output = model(pixel_values, output_hidden_states=True)
    assert output.last_hidden_state.shape == (2, 64, 64)
    torch.testing.assert_close(output.pooler_output, output.last_hidden_state.mean(1))
    assert len(output.hidden_states) == tiny_ijepa_config.num_hidden_layers + 1
    context, _ = random_indices()
    assert model(pixel_values, context_indices=context).last_hidden_state.shape == (2, 20, 64)


def test_masked_encoder_equals_encoder_on_cropped_sequence(tiny_ijepa_config):
    """Running on context indices must equal running the blocks on exactly those embedded tokens."""
    model = IJepaModel(tiny_ijepa_config).eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    all_patches = torch.arange(64)[None]
    with torch.no_grad():
        full = model(pixel_values).last_hidden_state
        identity = model(pixel_values, context_indices=all_patches).last_hidden_state
    torch.testing.assert_close(full, identity)


def test_other_resolutions_with_interpolation(tiny_ijepa_config):
    model = IJepaModel(tiny_ijepa_config).eval()
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(torch.randn(1, 3, 48, 48))
    output = model(torch.randn(1, 3, 48, 48), interpolate_pos_encoding=True)
    assert output.last_hidden_state.shape == (1, 144, 64)


def test_sdpa_and_eager_attention_agree(tiny_ijepa_config):
    eager = IJepaForPreTraining._from_config(tiny_ijepa_config, attn_implementation="eager").eval()
    sdpa = IJepaForPreTraining._from_config(tiny_ijepa_config, attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    pixel_values = torch.randn(2, 3, 32, 32)
    context, target = random_indices()
    with torch.no_grad():
        torch.testing.assert_close(
            eager(pixel_values, context, target).predictions, sdpa(pixel_values, context, target).predictions, atol=1e-5, rtol=1e-4
        )


def test_set_attn_implementation_reaches_every_layer(tiny_ijepa_config, monkeypatch):
    model = IJepaForPreTraining._from_config(tiny_ijepa_config, attn_implementation="sdpa").eval()
    pixel_values, (context, target) = torch.randn(2, 3, 32, 32), random_indices()
    check_set_attn_implementation_reaches_every_layer(model, lambda: model(pixel_values, context, target), monkeypatch)


def test_encoder_alone_rejects_context_indices_off_the_grid(tiny_ijepa_config):
    """The encoder checks only the shape of `context_indices`; `torch.gather` itself rejects positions off the grid."""
    model = IJepaModel(tiny_ijepa_config).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    for bad in (64, -1):
        context = random_indices()[0]
        context[1, 3] = bad
        with pytest.raises(RuntimeError, match="out of bounds"):
            model(pixel_values, context_indices=context)


def test_target_encoder_starts_as_copy_and_round_trips(tiny_ijepa_config, tmp_path):
    model = IJepaForPreTraining(tiny_ijepa_config)
    for target, context in zip(model.target_encoder.state_dict().values(), model.context_encoder.state_dict().values()):
        assert torch.equal(target, context)
    model.update_target_encoder(0.0)
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin")) and (tmp_path / "model.safetensors").exists()
    loaded = IJepaForPreTraining.from_pretrained(tmp_path)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert not any(parameter.requires_grad for parameter in loaded.target_encoder.parameters())


def test_gradients_reach_context_encoder_and_predictor_only(tiny_ijepa_config):
    model = IJepaForPreTraining(tiny_ijepa_config).train()
    context, target = random_indices()
    output = model(torch.randn(2, 3, 32, 32), context, target)
    assert output.predictions.shape == output.targets.shape == (2, 4, 9, 64)
    output.loss.backward()
    for name, parameter in model.named_parameters():
        fixed = name.startswith("target_encoder") or name.endswith("position_embeddings")
        if fixed:
            assert parameter.grad is None, name
        else:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    touched = [p for n, p in model.named_parameters() if n.startswith(("context_encoder.layers", "predictor.layers"))]
    assert all(p.grad.abs().sum() > 0 for p in touched)


def test_targets_are_layer_normed_without_affine(tiny_ijepa_config):
    model = IJepaForPreTraining(tiny_ijepa_config).eval()
    context, target = random_indices()
    targets = model(torch.randn(2, 3, 32, 32), context, target).targets
    torch.testing.assert_close(targets.mean(-1), torch.zeros(targets.shape[:-1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(targets.var(-1, unbiased=False), torch.ones(targets.shape[:-1]), atol=1e-3, rtol=0)


def test_update_target_encoder_is_exact_ema(tiny_ijepa_config):
    model = IJepaForPreTraining(tiny_ijepa_config)
    with torch.no_grad():
        for parameter in model.context_encoder.parameters():
            parameter.copy_(torch.randn_like(parameter))
    before = {n: p.clone() for n, p in model.target_encoder.named_parameters()}
    context = dict(model.context_encoder.named_parameters())
    momentum = 0.996
    model.update_target_encoder(momentum)
    for name, parameter in model.target_encoder.named_parameters():
        expected = before[name] * momentum + context[name].detach() * (1 - momentum)
        torch.testing.assert_close(parameter, expected, atol=1e-7, rtol=1e-6)
    after = {n: p.clone() for n, p in model.target_encoder.named_parameters()}
    model.update_target_encoder(1.0)  # momentum 1 (end of the schedule) freezes the target encoder
    assert all(torch.equal(p, after[n]) for n, p in model.target_encoder.named_parameters())


@pytest.mark.parametrize(
    "case, message",
    [
        ("channels", "must have 3 channels"),
        ("size", "must be 32x32 pixels, got 40x40"),
        ("out_of_range", r"must lie in \[0, 63\].*got values from 0 to 64"),
        ("negative", r"must lie in \[0, 63\]"),
        ("dtype", "must have dtype torch.int64, got torch.int32"),
        ("context_shape", "`context_indices` must have 2 dimensions"),
        ("target_shape", "`target_indices` must have 3 dimensions"),
        ("batch", "batch size 3 but the pixel values have batch size 2"),
        ("rank", r"\[batch, channels, height, width\]"),
    ],
)
def test_bad_input_names_expected_and_received(tiny_ijepa_config, case, message):
    model = IJepaForPreTraining(tiny_ijepa_config)
    pixel_values = torch.randn(2, 3, 32, 32)
    context, target = random_indices()
    if case == "channels":
        pixel_values = torch.randn(2, 1, 32, 32)
    elif case == "size":
        pixel_values = torch.randn(2, 3, 40, 40)
    elif case == "out_of_range":
        context = context.clone()
        context[0, 0] = 64
        context[1, 0] = 0
    elif case == "negative":
        target = target.clone()
        target[0, 0, 0] = -1
    elif case == "dtype":
        context = context.int()
    elif case == "context_shape":
        context = context[0]
    elif case == "target_shape":
        target = target[:, 0]
    elif case == "batch":
        context = torch.cat([context, context[:1]])
    elif case == "rank":
        pixel_values = pixel_values[0]
    with pytest.raises(ValueError, match=message):
        model(pixel_values, context, target)


def test_activation_checkpointing_gives_same_gradients(tiny_ijepa_config):
    model = IJepaForPreTraining(tiny_ijepa_config).train()
    context, target = random_indices()
    pixel_values = torch.randn(2, 3, 32, 32)
    model(pixel_values, context, target).loss.backward()
    expected = [p.grad.clone() for p in model.context_encoder.parameters() if p.grad is not None]
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(pixel_values, context, target).loss.backward()
    observed = [p.grad for p in model.context_encoder.parameters() if p.grad is not None]
    for a, b in zip(expected, observed):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------ options beyond the paper (off by default)


def regularised_config(config, variance=1.0, covariance=0.5):
    weights = {"variance_loss_weight": variance, "covariance_loss_weight": covariance}
    return IJepaConfig.from_dict({**config.to_dict(), **weights})


def test_regulariser_is_off_by_default_and_costs_nothing(tiny_ijepa_config, monkeypatch):
    from modeling_ijepa import modeling_ijepa

    assert tiny_ijepa_config.variance_loss_weight == tiny_ijepa_config.covariance_loss_weight == 0.0

    def never_called(*args, **kwargs):
        raise AssertionError("the regulariser ran with both weights 0")

    monkeypatch.setattr(modeling_ijepa, "variance_covariance_loss", never_called)
    model = IJepaForPreTraining(tiny_ijepa_config)
    context, target = random_indices()
    output = model(torch.randn(2, 3, 32, 32), context, target)
    assert output.prediction_loss is None and output.regularisation_loss is None
    assert torch.equal(output.loss, torch.nn.functional.smooth_l1_loss(output.predictions, output.targets))


def test_l1_prediction_loss_is_the_mean_absolute_error_and_unknown_losses_are_refused(tiny_ijepa_config):
    from modeling_ijepa.configuration_ijepa import PREDICTION_LOSSES
    from modeling_ijepa.modeling_ijepa import PREDICTION_LOSS_FUNCTIONS

    assert tuple(PREDICTION_LOSS_FUNCTIONS) == PREDICTION_LOSSES
    assert tiny_ijepa_config.prediction_loss == "smooth_l1"  # the paper's
    config = IJepaConfig.from_dict({**tiny_ijepa_config.to_dict(), "prediction_loss": "l1"})
    model = IJepaForPreTraining(config)
    context, target = random_indices()
    output = model(torch.randn(2, 3, 32, 32), context, target)
    expected = (output.predictions - output.targets).abs().mean()
    torch.testing.assert_close(output.loss, expected)
    # Errors under 1 make smooth L1 half the squared error: the two losses differ on the same predictions.
    assert not torch.allclose(expected, torch.nn.functional.smooth_l1_loss(output.predictions, output.targets))
    with pytest.raises(ValueError, match="`prediction_loss` must be one of smooth_l1, l1, got 'l2'"):
        IJepaConfig.from_dict({**tiny_ijepa_config.to_dict(), "prediction_loss": "l2"})


def test_variance_covariance_loss_matches_its_definition():
    from modeling_ijepa.modeling_ijepa import variance_covariance_loss

    features = torch.randn(2, 30, 8) * torch.linspace(0.1, 2.0, 8)  # [B, Kc, D]: some dimensions below unit std
    flat = features.reshape(-1, 8)
    variance = torch.relu(1 - torch.sqrt(flat.var(dim=0) + 1e-4)).mean()
    covariance = torch.cov(flat.T)
    off_diagonal = (covariance.pow(2).sum() - covariance.diagonal().pow(2).sum()) / 8
    torch.testing.assert_close(variance_covariance_loss(features, 1.0, 0.0), variance)
    torch.testing.assert_close(variance_covariance_loss(features, 0.0, 1.0), off_diagonal)
    torch.testing.assert_close(variance_covariance_loss(features, 2.0, 0.5), 2.0 * variance + 0.5 * off_diagonal)
    # Collapsed features: every dimension constant pays the full variance term; one shared direction pays covariance.
    torch.testing.assert_close(variance_covariance_loss(torch.ones(40, 8), 1.0, 0.0), torch.tensor(1 - 1e-2))
    shared = torch.randn(40, 1).expand(-1, 8)
    torch.testing.assert_close(variance_covariance_loss(shared, 0.0, 1.0), 7 * shared[:, 0].var() ** 2)


def test_regulariser_adds_to_the_loss_and_trains_the_context_encoder(tiny_ijepa_config):
    model = IJepaForPreTraining(regularised_config(tiny_ijepa_config)).train()
    context, target = random_indices()
    pixel_values = torch.randn(2, 3, 32, 32)
    output = model(pixel_values, context, target)
    from modeling_ijepa.modeling_ijepa import variance_covariance_loss

    expected = variance_covariance_loss(output.context_hidden_states, 1.0, 0.5)
    torch.testing.assert_close(output.regularisation_loss, expected)
    assert output.regularisation_loss > 0
    torch.testing.assert_close(output.loss, output.prediction_loss + output.regularisation_loss)
    # The prediction part is the loss of the same model with the option off.
    model.config.variance_loss_weight = model.config.covariance_loss_weight = 0.0
    torch.testing.assert_close(model(pixel_values, context, target).loss, output.prediction_loss)
    # The regulariser alone reaches the context encoder, not the predictor or the (EMA) target encoder.
    output.regularisation_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.context_encoder.layers.parameters())
    assert all(p.grad is None for p in model.predictor.parameters())
    assert all(p.grad is None for p in model.target_encoder.parameters())


def test_regulariser_weights_are_saved_with_the_config(tiny_ijepa_config, tmp_path):
    IJepaForPreTraining(regularised_config(tiny_ijepa_config, 0.25, 0.04)).save_pretrained(tmp_path)
    loaded = IJepaForPreTraining.from_pretrained(tmp_path).config
    assert (loaded.variance_loss_weight, loaded.covariance_loss_weight) == (0.25, 0.04)
    with pytest.raises(ValueError, match="`variance_loss_weight` must be >= 0"):
        regularised_config(tiny_ijepa_config, -1.0, 0.0)


def epps_pulley_closed_form(samples: torch.Tensor) -> torch.Tensor:
    """n * integral over the real line of |phi_n(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt for 1-D samples [n], with the
    Gaussian integrals done by hand: the pairs give sqrt(2 pi) exp(-(x_j - x_k)^2 / 2), the cross term
    2 sqrt(pi) exp(-x_j^2 / 4), the Gaussian's own term sqrt(2 pi / 3)."""
    n = len(samples)
    pairs = torch.exp(-0.5 * (samples[:, None] - samples[None, :]).square()).sum() * math.sqrt(2 * math.pi) / n**2
    cross = 2 * math.sqrt(math.pi) * torch.exp(-samples.square() / 4).mean()
    return n * (pairs - cross + math.sqrt(2 * math.pi / 3))


def test_sigreg_is_the_epps_pulley_statistic_of_the_projections():
    from modeling_ijepa.modeling_ijepa import sketched_isotropic_gaussian_loss

    # In one dimension every direction is +1 or -1, and the statistic does not depend on the sign.
    samples = torch.randn(300, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float() * 1.5 + 0.3
    expected = epps_pulley_closed_form(samples.double()).float()
    fine = sketched_isotropic_gaussian_loss(samples[:, None], 3, num_knots=4001, max_frequency=12.0)
    torch.testing.assert_close(fine, expected, rtol=1e-4, atol=1e-4)
    default = sketched_isotropic_gaussian_loss(samples[:, None], 3)  # LeJEPA's 17 knots up to t = 5
    torch.testing.assert_close(default, expected, rtol=0.02, atol=0.0)


def test_sigreg_is_small_for_a_standard_gaussian_and_large_for_collapsed_or_scaled_features():
    from modeling_ijepa.modeling_ijepa import sketched_isotropic_gaussian_loss

    gaussian = torch.randn(2, 500, 16, generator=torch.Generator().manual_seed(1))  # [B, Kc, D]
    near = sketched_isotropic_gaussian_loss(gaussian, 64)
    assert near < 3.0
    for far in (torch.zeros_like(gaussian), 3 * gaussian, gaussian + 1, gaussian * torch.linspace(0.1, 2.0, 16)):
        assert sketched_isotropic_gaussian_loss(far, 64) > 10 * near
    # The seed draws the directions: the same seed the same value, another seed other directions.
    skewed = gaussian.exp()
    seeded = sketched_isotropic_gaussian_loss(skewed, 8, seed=3)
    assert torch.equal(sketched_isotropic_gaussian_loss(skewed, 8, seed=3), seeded)
    assert sketched_isotropic_gaussian_loss(skewed, 8, seed=4) != seeded
    # bf16 autocast does not reach it: the float32 value.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = sketched_isotropic_gaussian_loss(skewed, 8, seed=3)
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, seeded)


def test_sigreg_adds_to_the_regularisation_with_its_weight_and_seed(tiny_ijepa_config, monkeypatch):
    from modeling_ijepa import modeling_ijepa
    from modeling_ijepa.modeling_ijepa import sketched_isotropic_gaussian_loss, variance_covariance_loss

    config = IJepaConfig.from_dict({**tiny_ijepa_config.to_dict(), "variance_loss_weight": 1.0,
                                    "sigreg_loss_weight": 0.5, "sigreg_num_slices": 7})
    model = IJepaForPreTraining(config).train()
    context, target = random_indices()
    pixel_values = torch.randn(2, 3, 32, 32)
    output = model(pixel_values, context, target, regulariser_seed=11)
    hidden = output.context_hidden_states
    expected = variance_covariance_loss(hidden, 1.0, 0.0) + 0.5 * sketched_isotropic_gaussian_loss(hidden, 7, seed=11)
    torch.testing.assert_close(output.regularisation_loss, expected)
    torch.testing.assert_close(output.loss, output.prediction_loss + output.regularisation_loss)
    unseeded = model(pixel_values, context, target).regularisation_loss
    torch.testing.assert_close(unseeded, variance_covariance_loss(hidden, 1.0, 0.0)
                               + 0.5 * sketched_isotropic_gaussian_loss(hidden, 7, seed=0))
    # It trains the context encoder only.
    model.zero_grad()
    (output.regularisation_loss - variance_covariance_loss(hidden, 1.0, 0.0)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.context_encoder.layers.parameters())
    assert all(p.grad is None for p in model.predictor.parameters())
    # Off by default: never computed.
    monkeypatch.setattr(modeling_ijepa, "sketched_isotropic_gaussian_loss", None)
    assert tiny_ijepa_config.sigreg_loss_weight == 0.0
    assert IJepaForPreTraining(tiny_ijepa_config)(pixel_values, context, target).regularisation_loss is None
    for field, value, message in (("sigreg_loss_weight", -0.1, ">= 0"), ("sigreg_num_slices", 0, ">= 1")):
        with pytest.raises(ValueError, match=f"`{field}` must be {message}"):
            IJepaConfig.from_dict({**tiny_ijepa_config.to_dict(), field: value})


def test_averaged_target_layers_are_the_normed_mean_of_the_last_blocks(tiny_ijepa_config):
    from torch.nn.functional import layer_norm

    config = IJepaConfig.from_dict({**tiny_ijepa_config.to_dict(), "target_average_layers": 2})
    model = IJepaForPreTraining(config).eval()
    context, target = random_indices()
    pixel_values = torch.randn(2, 3, 32, 32)
    # The two blocks of the tiny encoder, run by hand: each output layer-normed, averaged, layer-normed again.
    encoder = model.target_encoder
    hidden = encoder.embeddings(pixel_values)
    normed = []
    for layer in encoder.layers:
        hidden = layer(hidden, None)
        normed.append(layer_norm(hidden, hidden.shape[-1:]))
    mean = (normed[0] + normed[1]) / 2
    expected = layer_norm(mean, mean.shape[-1:])
    flat = target.reshape(2, -1)
    expected = torch.stack([expected[i, flat[i]] for i in range(2)]).view(*target.shape, -1)
    torch.testing.assert_close(model(pixel_values, context, target).targets, expected)
    # The default is the paper's: the final output (after the encoder's LayerNorm), layer-normed.
    model.config.target_average_layers = 1
    final = layer_norm(encoder(pixel_values).last_hidden_state, (config.hidden_size,))
    expected = torch.stack([final[i, flat[i]] for i in range(2)]).view(*target.shape, -1)
    torch.testing.assert_close(model(pixel_values, context, target).targets, expected)
    assert tiny_ijepa_config.target_average_layers == 1
    with pytest.raises(ValueError, match="`target_average_layers` must be between 1 and the encoder's 2 layers"):
        IJepaConfig.from_dict({**tiny_ijepa_config.to_dict(), "target_average_layers": 3})


def count_calls(module) -> list:
    calls = []
    module.register_forward_hook(lambda _module, args, _output: calls.append(args[0].shape[0]))
    return calls


def test_mask_draws_share_one_target_pass_and_match_the_naive_loss(tiny_ijepa_config):
    num_images, num_draws = 2, 3
    model = IJepaForPreTraining(tiny_ijepa_config).train()
    context, target = random_indices(batch_size=num_images * num_draws)  # rows of image i: i*N ... i*N + N - 1
    pixel_values = torch.randn(num_images, 3, 32, 32)
    target_calls, context_calls = count_calls(model.target_encoder), count_calls(model.context_encoder)
    output = model(pixel_values, context, target)
    assert target_calls == [num_images]  # one pass, on the B images
    assert context_calls == [num_images * num_draws]  # every draw
    assert output.predictions.shape == output.targets.shape == (num_images * num_draws, 4, 9, 64)
    assert output.context_hidden_states.shape == (num_images * num_draws, 20, 64)
    output.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # Naively: every draw its own row, with its image repeated (and the target encoder run on each copy).
    model.zero_grad()
    naive = model(pixel_values.repeat_interleave(num_draws, dim=0), context, target)
    assert target_calls == [num_images, num_images * num_draws]
    torch.testing.assert_close(output.targets, naive.targets)
    torch.testing.assert_close(output.loss, naive.loss)
    naive.loss.backward()
    assert grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            torch.testing.assert_close(grads[name], parameter.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_mask_draws_targets_come_from_their_own_image(tiny_ijepa_config):
    model = IJepaForPreTraining(tiny_ijepa_config)
    context, target = random_indices(batch_size=4)
    pixel_values = torch.randn(2, 3, 32, 32)
    targets = model(pixel_values, context, target).targets
    for row in range(4):
        alone = model(pixel_values[row // 2 : row // 2 + 1], context[row : row + 1], target[row : row + 1]).targets
        torch.testing.assert_close(targets[row : row + 1], alone, atol=1e-5, rtol=1e-5)


def test_mask_draws_with_the_regulariser_and_bad_row_counts(tiny_ijepa_config):
    model = IJepaForPreTraining(regularised_config(tiny_ijepa_config))
    context, target = random_indices(batch_size=4)
    pixel_values = torch.randn(2, 3, 32, 32)
    output = model(pixel_values, context, target)
    from modeling_ijepa.modeling_ijepa import variance_covariance_loss

    expected = variance_covariance_loss(output.context_hidden_states, 1.0, 0.5)
    torch.testing.assert_close(output.regularisation_loss, expected)
    with pytest.raises(ValueError, match="batch size 5 but the pixel values have batch size 2: it needs"):
        model(pixel_values, torch.cat([context, context[:1]]), target)
    with pytest.raises(ValueError, match="`target_indices` has batch size 2 but `context_indices` has batch size 4"):
        model(pixel_values, context, target[:2])
