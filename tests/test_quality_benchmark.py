# SPDX-License-Identifier: Apache-2.0
"""Smoke test of `benchmarks.quality_cifar10`: the whole pipeline (calibration, I-JEPA and MAE pretraining for a
few seconds, six probe runs, results, pictures) on a tiny model and a few hundred CIFAR-10 images."""

import json

import pytest
import torch
from PIL import Image
from transformers import AutoModel, ViTMAEModel

from benchmarks import quality_cifar10

from .conftest import CIFAR10, require

TINY = [
    "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--predictor_hidden_size", "16",
    "--predictor_num_hidden_layers", "1", "--predictor_num_attention_heads", "2", "--per_device_train_batch_size", "32",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    """A tiny model on a shared 2-core runner: intra-op threads cost more in synchronisation than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_quality_benchmark_end_to_end(tmp_path):
    results_dir = tmp_path / "results"
    rows = quality_cifar10.main([
        "--budget_minutes", "0.1", "--calibration_steps", "3", "--dataset_name", str(require(CIFAR10)),
        "--probe_train_samples", "200", "--probe_eval_samples", "100", "--feature_layers", "2", "--lowshot_draws", "2",
        "--output_dir", str(tmp_path / "run"), "--results_dir", str(results_dir), *TINY,
    ])  # fmt: skip

    written = json.loads((results_dir / "quality_cifar10.json").read_text())
    assert written == json.loads(json.dumps(rows))
    assert [row["method"] for row in written] == ["ijepa", "mae", "random"]
    for row in written:
        assert row["budget_minutes"] == 0.1 and "probe_error" not in row
        for key in ("linear_top1", "lowshot_top1", "knn_top1"):
            assert 0.0 <= row[key] <= 1.0, (row["method"], key)
        assert row["probe_eval_examples"] == 100 and row["lowshot_train_examples"] == 10 * 10
        # The low-shot probe's L2 strength is chosen by 5-fold cross-validation over its 100 images.
        probes = tmp_path / "run" / "probes" / row["method"]
        lowshot = json.loads((probes / "probe_results_lowshot_0.json").read_text())
        assert row["lowshot_sweep_folds"] == 5 and lowshot["linear_probe"]["num_validation"] == 100
        # `lowshot_top1` is the mean over the seeded draws of the labelled subset, each probed on one encoder.
        draws = [json.loads((probes / f"probe_results_lowshot_{draw}.json").read_text()) for draw in (0, 1)]
        assert [draw["low_shot"]["subset_seed"] for draw in draws] == [0, 1]
        assert row["lowshot_top1_draws"] == [draw["linear_top1"] for draw in draws]
        assert row["lowshot_top1"] == pytest.approx(sum(row["lowshot_top1_draws"]) / 2, abs=1e-4)
        assert [entry["weight_decay"] for entry in lowshot["linear_probe"]["sweep"]] == row["lowshot_weight_decays"]
        assert max(row["lowshot_weight_decays"]) == 100.0
    # I-JEPA saw 32 images a step in the recipe's two crops each; MAE the same 64 rows, one crop of 64 images.
    for row, images_per_step in zip(written[:2], (32, 64)):
        assert 0 < row["steps"] <= row["planned_steps"] and row["images_seen"] == images_per_step * row["steps"]
        assert row["calibrated_images_per_second"] > 0 and row["device"] == "cpu"
    assert written[2]["images_seen"] == 0
    # MAE ran at its own paper's peak learning rate for its batch: 1.5e-4 x 64 / 256.
    assert "lr 3.75e-05 " in written[1]["recipe"] and "batch 32 images x 2 crops" in written[0]["recipe"]

    table = (results_dir / "quality_cifar10.md").read_text()
    assert all(row["seed"] == 0 for row in written)
    assert table.startswith("| method | seed | budget_minutes | images_seen | linear_top1 | lowshot_top1 |")
    assert all(f"| {method} |" in table for method in ("ijepa", "mae", "random"))
    assert f"--budget_minutes 0.1 {' '.join(TINY)} --seed S`" in table  # the command that reproduces it
    for name in ("loss_curves", "ijepa_collapse", "masks"):
        with Image.open(results_dir / f"quality_cifar10_{name}.png") as picture:
            assert picture.width > 400 and picture.height > 200, name

    # The same encoders probed again, the linear probes choosing between two feature normalisations as well.
    reprobed = quality_cifar10.main([
        "--budget_minutes", "0.1", "--dataset_name", str(require(CIFAR10)), "--skip_pretraining",
        "--probe_train_samples", "200", "--probe_eval_samples", "100", "--feature_layers", "2", "--lowshot_draws", "1",
        "--probe_feature_normalisations", "standardise", "unit_norm",
        "--output_dir", str(tmp_path / "run"), "--results_dir", str(tmp_path / "normalised"), *TINY,
    ])  # fmt: skip
    for row in reprobed:
        assert row["probe_feature_normalisations"] == ["standardise", "unit_norm"]
        lowshot = json.loads((tmp_path / "run" / "probes" / row["method"] / "probe_results_lowshot_0.json").read_text())
        assert [entry["features"] for entry in lowshot["linear_probe"]["sweep"]] == (
            ["standardise"] * 9 + ["unit_norm"] * 9
        )
        assert row["probe_chosen"]["lowshot"][0]["features"] in ("standardise", "unit_norm")
    assert "or unit-norm centred features" in (tmp_path / "normalised" / "quality_cifar10.md").read_text()

    # The MAE encoder is saved to be used whole: every patch kept.
    mae = AutoModel.from_pretrained(tmp_path / "run" / "mae")
    assert type(mae) is ViTMAEModel and mae.config.mask_ratio == 0.0
    assert mae(torch.zeros(1, 3, 32, 32)).last_hidden_state.shape == (1, 1 + 64, 32)


def test_results_keep_the_rows_of_runs_on_other_devices_and_budgets(tmp_path):
    path = tmp_path / "quality_cifar10.json"
    cpu_run = [{"method": method, "device": "cpu", "budget_minutes": 30.0, "linear_top1": 0.4}
               for method in ("ijepa", "mae")]
    gpu_run = [{"method": "ijepa", "device": "cuda", "budget_minutes": 1.5, "linear_top1": 0.5}]
    assert quality_cifar10.merge_with_earlier_runs(cpu_run, path) == cpu_run  # no file yet
    path.write_text(json.dumps(cpu_run))
    assert quality_cifar10.merge_with_earlier_runs(gpu_run, path) == cpu_run + gpu_run
    # A rerun of the same method, device and budget replaces its earlier row.
    rerun = [{"method": "mae", "device": "cpu", "budget_minutes": 30.0, "linear_top1": 0.45}]
    assert quality_cifar10.merge_with_earlier_runs(rerun, path) == cpu_run[:1] + rerun
    path.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="does not hold a list of result rows"):
        quality_cifar10.merge_with_earlier_runs(rerun, path)


def test_runs_of_several_seeds_sit_side_by_side_and_the_goals_are_judged_on_their_mean(tmp_path):
    path = tmp_path / "quality_cifar10.json"
    accuracies = {0: {"ijepa": (0.575, 0.284), "mae": (0.483, 0.235), "random": (0.454, 0.221)},
                  1: {"ijepa": (0.601, 0.312), "mae": (0.497, 0.241), "random": (0.448, 0.219)}}

    def run(seed):
        return [{"method": method, "seed": seed, "device": "cpu", "budget_minutes": 30.0, "linear_top1": linear,
                 "lowshot_top1": lowshot, "lowshot_per_class": 10}
                for method, (linear, lowshot) in accuracies[seed].items()]

    first = run(0)
    del first[0]["seed"]  # a row written before the seed was recorded: seed 0, the default
    path.write_text(json.dumps(first))
    rows = quality_cifar10.merge_with_earlier_runs(run(1), path)
    assert rows == first + run(1)
    assert quality_cifar10.merge_with_earlier_runs(run(0), path) == run(0)  # the same seed again replaces its rows

    report = quality_cifar10.goals_over_seeds(rows)
    seed_0, seed_1, mean = report.split("\n\n")
    assert seed_0 == "Seed 0:\n" + quality_cifar10.goal_summary({row["method"]: row for row in first})
    assert seed_1 == "Seed 1:\n" + quality_cifar10.goal_summary({row["method"]: row for row in run(1)})
    assert mean.startswith("Mean over seeds 0, 1 (accuracies averaged, then compared):\n")
    ijepa, mae = (sum(accuracies[seed][method][0] for seed in (0, 1)) / 2 for method in ("ijepa", "mae"))
    assert f"I-JEPA {100 * (ijepa - mae):+.1f} points over MAE with all labels" in mean
    # One seed alone is reported as before, without a mean.
    assert quality_cifar10.goals_over_seeds(run(1)) == quality_cifar10.goal_summary(
        {row["method"]: row for row in run(1)})


def test_the_reproducing_command_names_a_config_other_than_the_recipe(tmp_path):
    import argparse

    args = quality_cifar10.parse_args(["--hidden_size", "64", "--mae_learning_rate", "1e-4"])
    in_repository = quality_cifar10.REPO_ROOT / "configs" / "cifar10_vit_tiny.yaml"
    elsewhere = tmp_path / "two_views.yaml"
    flags = {config: quality_cifar10.reproducing_flags(args, argparse.Namespace(config=str(config)))
             for config in (quality_cifar10.DEFAULT_CONFIG, in_repository, elsewhere)}
    assert flags[quality_cifar10.DEFAULT_CONFIG] == " --hidden_size 64 --mae_learning_rate 0.0001"
    assert flags[in_repository] == " --config configs/cifar10_vit_tiny.yaml --hidden_size 64 --mae_learning_rate 0.0001"
    assert flags[elsewhere] == " --config two_views.yaml --hidden_size 64 --mae_learning_rate 0.0001"


def test_calibration_times_the_steady_state_after_the_prefetched_batches(monkeypatch):
    """With 3 workers the first 2 + 2 * 3 steps come from the prefetch buffer (fast here); only later ones count."""
    import argparse
    import types

    clock = {"now": 0.0}
    steps_run = []

    def parse_args(argv):
        steps = int(argv[argv.index("--max_train_steps") + 1])
        return argparse.Namespace(dataloader_num_workers=3, max_train_steps=steps)

    def train(args, step_callback):
        for step in range(1, args.max_train_steps + 1):
            # buffered steps, then the data-bound rate
            clock["now"] += 0.01 if step <= quality_cifar10.UNTIMED_STEPS + 6 else 0.1
            step_callback(None, None, step)
        steps_run.append(args.max_train_steps)
        return None, None, {"images_seen": 32 * args.max_train_steps, "global_step": args.max_train_steps}

    monkeypatch.setitem(quality_cifar10.PRETRAINERS, "ijepa", types.SimpleNamespace(parse_args=parse_args, train=train))
    monkeypatch.setattr(quality_cifar10, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    step_seconds, images_per_second = quality_cifar10.calibrate("ijepa", [], calibration_steps=5)
    assert steps_run == [quality_cifar10.UNTIMED_STEPS + 2 * 3 + 5]
    assert step_seconds == pytest.approx(0.1) and images_per_second == pytest.approx(320)


def test_mae_gets_the_recipes_data_path_augmentation_and_precision():
    """Both methods must see the same images at the same speed-ups: the in-memory data path, flips and crops, and
    the float32 matmul precision and attention kernel of the I-JEPA recipe go to MAE as well."""
    from benchmarks import mae_pretraining
    from modeling_ijepa.training import arguments

    ijepa = arguments.parse_args(["--config", str(quality_cifar10.DEFAULT_CONFIG), "--horizontal_flip", "0.5"])
    mae = mae_pretraining.parse_args(quality_cifar10.mae_argv(ijepa, 7.5e-5) + ["--max_train_steps", "1"])
    for name in ("in_memory_data", "max_in_memory_gib", "horizontal_flip", "crop_scale", "matmul_precision",
                 "attn_implementation", "image_size", "patch_size", "hidden_size", "num_hidden_layers",
                 "final_lr", "mixed_precision"):
        assert getattr(mae, name) == getattr(ijepa, name), name
    assert mae.per_device_train_batch_size == arguments.rows_per_step(ijepa)
    # The recipe's, so the check above is not vacuous.
    assert mae.in_memory_data and mae.matmul_precision == "medium" and mae.mixed_precision == "auto"


def test_mae_learning_rate_scales_maes_whole_schedule_and_is_recorded(capsys):
    """MAE's peak learning rate follows its own paper's rule unless `--mae_learning_rate` says otherwise; it moves
    the start of MAE's warmup by the same factor, leaves I-JEPA's alone, and the row's recipe text names it."""
    from benchmarks import mae_pretraining
    from modeling_ijepa.training import arguments

    assert quality_cifar10.mae_paper_learning_rate(128) == pytest.approx(7.5e-5)
    assert quality_cifar10.mae_paper_learning_rate(4096) == pytest.approx(2.4e-3)  # the MAE paper's ViT-L setting
    ijepa = arguments.parse_args(["--config", str(quality_cifar10.DEFAULT_CONFIG)])
    mae = mae_pretraining.parse_args(quality_cifar10.mae_argv(ijepa, 7.5e-5) + ["--max_train_steps", "1"])
    factor = 7.5e-5 / ijepa.learning_rate
    assert mae.learning_rate == pytest.approx(7.5e-5)
    assert mae.start_lr == pytest.approx(ijepa.start_lr * factor)
    assert mae.final_lr == ijepa.final_lr
    assert "lr 7.5e-05 " in quality_cifar10.recipe_text("mae", ijepa, 0.1, 7.5e-5)
    assert f"lr {ijepa.learning_rate:g} " in quality_cifar10.recipe_text("ijepa", ijepa, 0.1, 7.5e-5)
    with pytest.raises(SystemExit):
        quality_cifar10.parse_args(["--mae_learning_rate", "0"])
    assert "--mae_learning_rate must be positive" in capsys.readouterr().err


def test_mae_sees_as_many_rows_a_step_as_the_recipes_two_crops():
    """The recipe's 64 images x 2 crops put 128 rows through the encoder a step; MAE (one crop per image) gets batch
    128 and its paper's rate for 128, not 64 (at which it broke down), and both rows' recipe texts say so."""
    from benchmarks import mae_pretraining
    from modeling_ijepa.training import arguments

    ijepa = arguments.parse_args(["--config", str(quality_cifar10.DEFAULT_CONFIG)])
    assert (ijepa.per_device_train_batch_size, ijepa.num_views, ijepa.view_invariance_weight) == (64, 2, 1.0)
    assert arguments.rows_per_step(ijepa) == 128
    learning_rate = quality_cifar10.mae_paper_learning_rate(arguments.rows_per_step(ijepa))
    mae = mae_pretraining.parse_args(quality_cifar10.mae_argv(ijepa, learning_rate) + ["--max_train_steps", "1"])
    assert mae.per_device_train_batch_size == 128 and learning_rate == pytest.approx(7.5e-5)
    ijepa_text = quality_cifar10.recipe_text("ijepa", ijepa, 0.1, learning_rate)
    assert "batch 64 images x 2 crops" in ijepa_text and "invariance weight 1 between crops" in ijepa_text
    assert "batch 128," in quality_cifar10.recipe_text("mae", ijepa, 0.1, learning_rate)


@pytest.mark.parametrize("folds", ["0", "11"])
def test_lowshot_folds_must_each_hold_an_image_of_every_class(folds, capsys):
    with pytest.raises(SystemExit):
        quality_cifar10.parse_args(["--lowshot_samples_per_class", "10", "--lowshot_sweep_folds", folds])
    assert "--lowshot_sweep_folds must lie between 1 and --lowshot_samples_per_class" in capsys.readouterr().err
