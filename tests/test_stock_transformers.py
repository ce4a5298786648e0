# SPDX-License-Identifier: Apache-2.0
"""Our checkpoints load in stock transformers with no custom code, and give the same outputs."""

import torch
from PIL import Image
from transformers import AutoModel, pipeline
from transformers.models.ijepa.modeling_ijepa import IJepaModel as StockIJepaModel

from modeling_ijepa import IJepaForPreTraining, IJepaModel
from modeling_ijepa.conversion.ijepa import main as convert_main

from .conftest import CIFAR10, OFFICIAL, require


def converted_encoder(tmp_path):
    checkpoint = require(OFFICIAL / "ijepa_official_tiny.pth.tar")
    convert_main(["--checkpoint", str(checkpoint), "--output_dir", str(tmp_path), "--num_attention_heads", "4"])
    return tmp_path / "encoder"


@torch.no_grad()
def test_exported_encoder_matches_in_stock_transformers(tmp_path):
    encoder_dir = converted_encoder(tmp_path)
    stock = AutoModel.from_pretrained(encoder_dir).eval()
    ours = IJepaModel.from_pretrained(encoder_dir).eval()
    assert type(stock) is StockIJepaModel
    assert "auto_map" not in (encoder_dir / "config.json").read_text()
    pixel_values = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(stock(pixel_values).last_hidden_state, ours(pixel_values).last_hidden_state, atol=1e-5, rtol=0)


def test_feature_extraction_pipeline_on_a_real_photo(tmp_path):
    encoder_dir = converted_encoder(tmp_path)
    from datasets import load_dataset

    photo = load_dataset(str(require(CIFAR10)), split="test[:1]")[0]["img"]
    assert isinstance(photo, Image.Image)
    extractor = pipeline("image-feature-extraction", model=str(encoder_dir), device="cpu")
    features = torch.tensor(extractor(photo))
    assert features.shape == (1, 64, 64)  # one image, 8x8 patches, width 64
    assert torch.isfinite(features).all() and features.std() > 0


def test_auto_model_on_pretraining_folder_gives_trained_target_encoder(tmp_path, tiny_ijepa_config, caplog):
    model = IJepaForPreTraining(tiny_ijepa_config)
    with torch.no_grad():  # make the two encoders differ, as after training
        for parameter in model.context_encoder.parameters():
            parameter.add_(0.1)
    model.update_target_encoder(0.5)
    model.save_pretrained(tmp_path)

    with caplog.at_level("WARNING"):
        loaded = AutoModel.from_pretrained(tmp_path)
    assert "newly initialized" not in caplog.text and "MISSING" not in caplog.text
    for name, parameter in model.target_encoder.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], parameter, atol=0, rtol=0)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.target_encoder(pixel_values).last_hidden_state
        torch.testing.assert_close(loaded(pixel_values).last_hidden_state, expected, atol=1e-6, rtol=0)


def test_auto_model_for_pretraining_gives_our_pretraining_model(tmp_path, tiny_ijepa_config):
    from transformers import AutoModelForPreTraining

    model = IJepaForPreTraining(tiny_ijepa_config)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path, attn_implementation="eager")
    assert type(loaded) is IJepaForPreTraining and loaded.config.predictor_hidden_size == 32
    assert loaded.predictor.layers[0].attention.config._attn_implementation == "eager"
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
