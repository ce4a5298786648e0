# SPDX-License-Identifier: Apache-2.0
"""The benchmark scripts run (on tiny settings); their numbers are not checked here, only that they are produced."""

import json
import sys

import pytest
import torch

from benchmarks import common, gpu_train_step, in_memory_data, train_step


def test_gpu_train_step_script_runs_on_cpu_with_a_tiny_model(tmp_path, monkeypatch):
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


def test_interleaved_seconds_rotates_the_order_and_drops_the_warmup_rounds(monkeypatch):
    calls = []
    functions = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = common.interleaved_seconds(functions, repeats=3, warmup=1)
    # Round r starts at function r mod 3, so each one is first, second and last in turn.
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_train_step_speedup_is_the_median_of_per_round_ratios():
    spec = {"batch_size": 10}
    # A slow phase in round 2 hits both variants: the per-round ratio stays 2.
    seconds = {"reference": [2.0, 8.0, 2.0, 2.0], "ours": [1.0, 4.0, 1.0, 1.0]}
    row = train_step.comparison_row("s", spec, "ours", seconds, {"reference": 100.0, "ours": 90.0})
    assert row["speedup"] == 2.0 and row["speedup_quartiles"] == [2.0, 2.0]
    assert row["reference_images_per_s"] == 5.0 and row["ours_images_per_s"] == 10.0
    assert row["memory_ratio"] == 0.9


def test_train_step_variants_run_one_step_each_in_one_process():
    import torch

    spec = {"depth": 1, "predictor_depth": 1, "batch_size": 4}
    # The compiled variant is left out: compiling takes minutes on a CPU (gpu_train_step's test compiles).
    variants = [variant for variant in train_step.VARIANTS if variant != train_step.COMPILED]
    steps = {variant: train_step.build_step(variant, spec) for variant in variants}
    try:
        for variant, step in steps.items():
            step()
            # Each step sets the process-wide matmul precision that its variant needs.
            expected = "medium" if variant.endswith(train_step.BF16_MATMUL) else "highest"
            assert torch.get_float32_matmul_precision() == expected
    finally:
        torch.set_float32_matmul_precision("highest")


def test_a_worker_started_by_a_large_process_reports_its_own_peak_memory():
    """`ru_maxrss` survives fork + exec on Linux: a worker would report its parent's peak, not its own."""
    import subprocess

    import torch

    from .conftest import REPO_ROOT

    ballast = torch.ones(256 * 2**20)  # 1 GiB resident in this process
    command = [sys.executable, "-c", "from benchmarks import common; print(common.peak_rss_mib())"]
    child_peak = float(subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout)
    assert 0 < child_peak < 900, child_peak
    del ballast


def test_in_memory_data_benchmark_compares_both_paths_on_a_small_subset(tmp_path, monkeypatch):
    from .conftest import CIFAR10, require

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    rows = in_memory_data.main(["--dataset_name", str(require(CIFAR10)), "--max_train_samples", "256",
                                "--settings", "32/4", "--batch_size", "16", "--num_workers", "0", "--rounds", "2",
                                "--warmup", "1", "--batches", "2", "--output_name", "in_memory_tiny"])
    assert [row["image_size"] for row in rows] == [32]
    assert rows[0]["per_example_images_per_s"] > 0 and rows[0]["in_memory_images_per_s"] > 0
    assert rows[0]["speedup_min"] <= rows[0]["speedup"] <= rows[0]["speedup_max"]
    saved = json.loads((tmp_path / "in_memory_tiny.json").read_text())
    assert saved["dataset"]["images"] == 256 and "cpu_model" in saved["machine"]


def test_in_memory_data_benchmark_times_the_recipes_whole_training_step_on_both_paths(tmp_path, monkeypatch):
    from .conftest import CIFAR10, require

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    steps_taken = []
    original = in_memory_data.RecipeStep.__call__

    def counted(self, batch):
        # The step gets the recipe's input on its device, whichever path made it.
        assert batch["pixel_values"].shape == (16, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
        assert batch["context_indices"].shape[0] == 16 and batch["target_indices"].shape[:2] == (16, 4)
        steps_taken.append(self)
        return original(self, batch)

    monkeypatch.setattr(in_memory_data.RecipeStep, "__call__", counted)
    rows = in_memory_data.main(["--dataset_name", str(require(CIFAR10)), "--max_train_samples", "128",
                                "--settings", "32/4", "--batch_size", "16", "--num_workers", "0", "--rounds", "2",
                                "--warmup", "1", "--batches", "1", "--train_step", "--output_name", "step_tiny",
                                "--extra", "--hidden_size", "32", "--num_hidden_layers", "2",
                                "--num_attention_heads", "2", "--predictor_hidden_size", "16",
                                "--predictor_num_attention_heads", "2", "--probe_feature_layers", "1"])
    # Two rounds of two batches (one untimed) on each path, each path training its own model.
    assert len(steps_taken) == 8 and len({id(step) for step in steps_taken}) == 2
    assert all(step.model.config.hidden_size == 32 for step in steps_taken)
    assert rows[0]["timed"] == "training step" and "output_write_bound_images_per_s" not in rows[0]
    assert rows[0]["speedup_min"] <= rows[0]["speedup"] <= rows[0]["speedup_max"]
    saved = json.loads((tmp_path / "step_tiny.json").read_text())
    assert saved["recipe"]["options"][:2] == ["--hidden_size", "32"]


def test_in_memory_data_benchmark_refuses_recipe_options_without_the_training_step(capsys):
    with pytest.raises(SystemExit):
        in_memory_data.main(["--extra", "--hidden_size", "32"])
    assert "only --train_step uses" in capsys.readouterr().err


def test_the_ablation_probes_each_variant_on_held_out_training_images(tmp_path, monkeypatch):
    from benchmarks import ablation_cifar10

    tiny = ["--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--predictor_hidden_size",
            "16", "--predictor_num_hidden_layers", "1", "--predictor_num_attention_heads", "2",
            "--per_device_train_batch_size", "32", "--probe_feature_layers", "1"]  # fmt: skip
    payload = ablation_cifar10.main([
        "--work_dir", str(tmp_path), "--results_dir", str(tmp_path / "results"), "--max_images", "200",
        "--max_train_steps", "2", "--variants", "options_off", "vicreg", "--seeds", "0", "1", "--extra", *tiny,
    ])
    # The held-out images are training images (never the test split), and every run was probed on them.
    splits = sorted(path.name.split("-")[0] for path in (tmp_path / "cifar10_held_out" / "data").iterdir())
    assert splits == ["train"] * 4 + ["validation"]
    assert [row["variant"] for row in payload["rows"]] == ["options_off", "vicreg"]
    assert all(row["runs"] == 2 for row in payload["rows"])
    for runs in payload["runs"].values():
        for run in runs:
            assert (run["train_data"], run["eval_data"]) == ("train split, 160 images", "validation split, 40 images")
            assert run["run_seconds"] > 0 and run["machine"]["cpu_count"] >= 1  # each run says where and how long
    log = (tmp_path / "vicreg-seed1" / "training_log.jsonl").read_text().splitlines()
    assert "regularisation_loss" in json.loads(log[0])  # the variant's option reached the run
    assert json.loads(log[-1])["step"] == 2
    assert (tmp_path / "results" / "ablation_cifar10.md").read_text().startswith("| variant | runs |")
    # A later invocation with the same budget adds its variant to the earlier ones.
    payload = ablation_cifar10.main([
        "--work_dir", str(tmp_path), "--results_dir", str(tmp_path / "results"), "--max_images", "200",
        "--max_train_steps", "2", "--variants", "recipe+bf16+batch_256", "--seeds", "0", "1", "--extra", *tiny,
    ])
    assert [row["variant"] for row in payload["rows"]] == ["options_off", "vicreg", "recipe+bf16+batch_256"]
    # A variant of another batch size runs the steps that take as long as the others' (0.6 x 2, rounded).
    log = (tmp_path / "recipe+bf16+batch_256-seed1" / "training_log.jsonl").read_text().splitlines()
    assert json.loads(log[-1])["step"] == 1
    # Started again on the same --work_dir (an interrupted ablation), the finished runs are read back, not retrained.
    monkeypatch.setattr(ablation_cifar10, "pretrain", lambda argv: pytest.fail("a finished run was trained again"))
    again = ablation_cifar10.main([
        "--work_dir", str(tmp_path), "--results_dir", str(tmp_path / "again"), "--max_images", "200",
        "--max_train_steps", "2", "--variants", "vicreg", "--seeds", "0", "1", "--extra", *tiny,
    ])
    assert again["runs"]["vicreg"] == payload["runs"]["vicreg"]


def test_step_phases_times_every_phase_of_the_recipes_step_against_its_variants(tmp_path, monkeypatch):
    import torch

    from benchmarks import step_phases

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    tiny = ["--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--predictor_hidden_size",
            "16", "--predictor_num_hidden_layers", "1", "--predictor_num_attention_heads", "2",
            "--per_device_train_batch_size", "4", "--probe_feature_layers", "1"]  # fmt: skip
    try:
        payload = step_phases.main(["--repeats", "3", "--warmup", "1", "--output_name", "phases_tiny",
                                    "--variants", "batch_256", "depth_12", "--extra", *tiny])
    finally:
        torch.set_float32_matmul_precision("highest")
    assert json.loads((tmp_path / "phases_tiny.json").read_text()) == json.loads(json.dumps(payload))
    recipe, doubled, deeper = payload["rows"]
    assert [row["variant"] for row in payload["rows"]] == ["recipe", "batch_256", "depth_12"]
    # Rows: the recipe's 4 images x 2 crops; batch 256 (of 2 crops) is four times the recipe's 128 rows.
    assert (recipe["batch_size"], doubled["batch_size"], deeper["batch_size"]) == (8, 32, 8)
    for row in (recipe, doubled, deeper):
        phases = [row[f"{phase}_s"] for phase in step_phases.PHASES]
        assert all(seconds > 0 for seconds in phases)
        # The phases tile the step: their medians add up to about the median step (medians need not add exactly).
        assert 0.5 * row["step_s"] < sum(phases) < 1.5 * row["step_s"]
    assert doubled["images_per_s_ratio"] > 0 and deeper["images_per_s_ratio"] > 0
    assert "images_per_s_ratio" not in recipe
    assert payload["variants"]["depth_12"] == ["--num_hidden_layers", "12"]


def test_step_phases_variants_are_the_ablations_on_top_of_either_recipe_base():
    from benchmarks import ablation_cifar10, step_phases

    # A float32 round's variant and a bf16 round's: each is its ablation options less the base it was run on.
    assert step_phases.VARIANTS["min_context_16"] == ["--min_context_patches", "16"]
    assert step_phases.VARIANTS["depth_12"] == ["--num_hidden_layers", "12"]
    assert step_phases.VARIANTS["bf16_autocast"] == ["--mixed_precision", "bf16"]
    prefixed = [name for name in ablation_cifar10.VARIANTS if name.startswith("recipe+")]
    assert len(prefixed) + 1 == len(step_phases.VARIANTS)  # and the speed-only SDPA variant


def test_step_phases_scales_a_variants_rows_with_the_recipes():
    from benchmarks import step_phases

    # The recipe's 128 rows (64 images x 2 crops) run at 4 rows (a test's --extra): batch 256 of 2 crops is four times
    # the rows, the two crops' variant (the recipe since its adoption) the same, one crop of each image half.
    assert step_phases.variant_batch(step_phases.VARIANTS["batch_256"], 4) == 16
    assert step_phases.variant_batch(step_phases.VARIANTS["depth_12"], 4) == 4
    assert step_phases.variant_batch(step_phases.VARIANTS["two_views_invariance"], 4) == 4
    one_crop = ["--num_views", "1", "--view_invariance_weight", "0"]
    assert step_phases.variant_batch(one_crop, 4) == 2
    with pytest.raises(ValueError, match=r"3 x 64 / 128 is not"):
        step_phases.variant_batch(one_crop, 3)
