# SPDX-License-Identifier: Apache-2.0
"""The README's main job pays off: pretrained features beat random initialisation on the held-out digits."""

import json

import run_pretraining

from .conftest import REPO_ROOT


def test_the_main_job_beats_random_initialisation_in_both_probes(tmp_path):
    run_pretraining.main(["--config", str(REPO_ROOT / "configs" / "digits_vit_micro.yaml"),
                          "--output_dir", str(tmp_path), "--checkpointing_steps", "1000000"])
    comparison = json.loads((tmp_path / "probe" / "comparison.json").read_text())
    assert comparison["eval_data"] == "test split, 360 images"
    assert comparison["pretrained_linear_top1"] > comparison["random_init_linear_top1"], comparison
    assert comparison["pretrained_knn_top1"] > comparison["random_init_knn_top1"], comparison
    assert comparison["pays_off"] and "Pretraining beats random initialisation" in (tmp_path / "README.md").read_text()
