"""The benchmark scripts run (on tiny settings); their numbers are not checked here, only that they are produced."""

import json
import sys

from .conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))


def test_gpu_train_step_script_runs_on_cpu_with_a_tiny_model(tmp_path, monkeypatch):
    import common
    import gpu_train_step

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    rows = gpu_train_step.main(["--tiny", "--device", "cpu", "--batch_size", "8", "--steps", "1", "--warmup", "1",
                                "--output_name", "gpu_tiny"])
    assert [row["variant"] for row in rows] == ["ours", "reference", "ours_compiled", "ours_compiled_layers"]
    assert all(row["images_per_s"] > 0 and row["counted_tflops_per_step"] > 0 for row in rows)
    # MFU is about the same work: every variant is credited with the model FLOPs counted on `ours`.
    assert {row["tflops_per_step"] for row in rows} == {rows[0]["counted_tflops_per_step"]}
    saved = json.loads((tmp_path / "gpu_tiny.json").read_text())
    assert saved["device"] == "cpu" and len(saved["rows"]) == 4


def test_gpu_train_step_records_a_failing_variant_and_measures_the_rest(tmp_path, monkeypatch):
    """A compiler error (torch 2.11's inductor failed on ViT-H with dynamic shapes) must not lose the other rows."""
    import common
    import gpu_train_step
    import torch

    def failing_compile(*args, **kwargs):
        raise AssertionError("inductor could not split the fused node")

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(torch, "compile", failing_compile)
    rows = gpu_train_step.main(["--tiny", "--device", "cpu", "--batch_size", "8", "--steps", "1", "--warmup", "1",
                                "--variants", "ours_compiled", "ours", "--output_name", "gpu_fail"])
    assert rows[0] == {"model": "tiny", "variant": "ours_compiled", "batch_size": 8,
                       "error": "AssertionError: inductor could not split the fused node"}
    assert rows[1]["variant"] == "ours" and rows[1]["images_per_s"] > 0
    assert len(json.loads((tmp_path / "gpu_fail.json").read_text())["rows"]) == 2
