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
                                "--compile", "both", "--output_name", "gpu_tiny"])
    assert [row["compile"] for row in rows] == [False, True]
    assert all(row["images_per_s"] > 0 and row["tflops_per_step"] > 0 for row in rows)
    saved = json.loads((tmp_path / "gpu_tiny.json").read_text())
    assert saved["device"] == "cpu" and len(saved["rows"]) == 2
