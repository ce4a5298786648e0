# SPDX-License-Identifier: Apache-2.0
"""The meta-device memory estimate (`benchmarks/memory_estimate.py`) counts what it says it counts."""

import pytest

from benchmarks import common, memory_estimate
from modeling_ijepa import IJepaConfig, IJepaForPreTraining

SIZES = {"image_size": 32, "patch_size": 4, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 128, "predictor_hidden_size": 32, "predictor_num_hidden_layers": 1,
         "predictor_num_attention_heads": 4}


def test_parameters_are_those_of_the_real_model():
    row = memory_estimate.estimate("tiny", batch_size=8, world_size=2, seed=0, sizes=SIZES)
    model = IJepaForPreTraining(IJepaConfig(**SIZES))
    trained = sum(p.numel() for network in (model.context_encoder, model.predictor) for p in network.parameters())
    target = sum(p.numel() for p in model.target_encoder.parameters())
    assert (row["trained_parameters"], row["target_parameters"]) == (trained, target)


def test_activations_grow_with_the_batch_and_fsdp_states_shrink_with_the_world():
    small = memory_estimate.estimate("tiny", batch_size=8, world_size=2, seed=0, sizes=SIZES)
    large = memory_estimate.estimate("tiny", batch_size=16, world_size=8, seed=0, sizes=SIZES)
    assert large["activations_gib"] >= small["activations_gib"]
    assert large["fsdp2_states_gib"] <= small["fsdp2_states_gib"]


def test_the_table_of_the_two_large_models(monkeypatch, tmp_path):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    payload = memory_estimate.main(["--world_size", "16"])
    assert (tmp_path / "memory_estimate.json").is_file()
    rows = {row["model"]: row for row in payload["rows"]}
    # ViT-H/14 has about 632M encoder parameters (the I-JEPA paper's model), ViT-g/14 about 1.0B.
    assert 620 <= rows["ViT-H/14"]["target_parameters_m"] <= 640
    assert 1000 <= rows["ViT-g/14"]["target_parameters_m"] <= 1020
    for row in rows.values():
        assert row["fsdp2_gib"] < row["ddp_gib"]
        assert row["fsdp2_checkpointed_gib"] < row["fsdp2_gib"]
        assert row["activations_gib"] > 0


if __name__ == "__main__":
    pytest.main([__file__])
