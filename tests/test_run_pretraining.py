# SPDX-License-Identifier: Apache-2.0
"""End-to-end behaviour of run_pretraining.py: export, resume, multi-process, Hub upload, bad input."""

import functools
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, pipeline
from transformers.models.ijepa.modeling_ijepa import IJepaModel as StockIJepaModel

import run_pretraining
from modeling_ijepa import IJepaConfig, IJepaForPreTraining
from modeling_ijepa.training import loop
from modeling_ijepa.training.pretraining import build_schedules, build_step

from .conftest import CIFAR10, REPO_ROOT, free_port, require

TINY = [
    "--image_size", "32", "--patch_size", "8", "--hidden_size", "32", "--num_hidden_layers", "2",
    "--num_attention_heads", "2", "--predictor_hidden_size", "16", "--predictor_num_hidden_layers", "1",
    "--min_context_patches", "2", "--logging_steps", "1", "--monitor_steps", "2", "--warmup_steps", "1",
    "--learning_rate", "1e-3", "--no-probe_after_training",
]


def cifar_args(output_dir, *extra):
    return ["--dataset_name", str(require(CIFAR10)), "--max_train_samples", "64", "--per_device_train_batch_size", "16",
            "--output_dir", str(output_dir), *TINY, *extra]


def pretraining_weights(folder):
    return IJepaForPreTraining.from_pretrained(folder).state_dict()


def assert_same_weights(folder, reference) -> None:
    """The pretraining models saved in `folder` and `reference` hold the same tensors, bitwise."""
    expected, actual = pretraining_weights(reference), pretraining_weights(folder)
    assert actual.keys() == expected.keys()
    for name, value in actual.items():
        assert torch.equal(value, expected[name]), name


def test_tiny_run_exports_an_encoder_for_stock_transformers(tmp_path):
    state = run_pretraining.main(cifar_args(tmp_path, "--max_train_steps", "3"))
    assert state["global_step"] == 3 and state["images_seen"] == 48
    encoder = AutoModel.from_pretrained(tmp_path)
    assert type(encoder) is StockIJepaModel
    trained = IJepaForPreTraining.from_pretrained(tmp_path / "pretraining")
    for name, value in trained.target_encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[name], value), name

    from datasets import load_dataset

    photo = load_dataset(str(CIFAR10), split="test[:1]")[0]["img"]
    features = torch.tensor(pipeline("image-feature-extraction", model=str(tmp_path), device="cpu")(photo))
    assert features.shape == (1, 16, 32)

    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-feature-extraction"
    assert "ijepa" in card.data.tags and "training_curves.png" in card.text

    # The linear probe runs on what the run exported and records its accuracy in the run's model card.
    from modeling_ijepa.evaluation.linear_probe import main as probe_main

    results = probe_main(["--model_name_or_path", str(tmp_path), "--dataset_name", str(CIFAR10), "--output_dir",
                          str(tmp_path / "probe"), "--max_train_samples", "200", "--max_eval_samples", "100"])
    assert 0.0 <= results["linear_top1"] <= 1.0 and (tmp_path / "probe" / "probe_results.json").is_file()
    assert ModelCard.load(tmp_path / "README.md").data.eval_results
    assert (tmp_path / "training_curves.png").stat().st_size > 1000
    log = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3]
    assert all(k in log[1] for k in ("loss", "lr", "weight_decay", "momentum", "feature_std", "effective_rank"))
    assert log[0]["momentum"] == pytest.approx(0.996) and log[1]["momentum"] > log[0]["momentum"]


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    # 64 examples / batch 16 = 4 batches per epoch; 6 steps cross an epoch; checkpoint 2 is mid-epoch.
    args = ["--max_train_steps", "6", "--checkpointing_steps", "2", "--checkpoints_total_limit", "5"]
    run_pretraining.main(cifar_args(tmp_path / "full", *args))
    assert sorted(p.name for p in (tmp_path / "full").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]

    # A run stopped after 2 steps: all that survived is its checkpoint.
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    state = run_pretraining.main(cifar_args(tmp_path / "resumed", *args, "--resume_from_checkpoint", "latest"))
    assert state["global_step"] == 6
    assert_same_weights(tmp_path / "resumed" / "pretraining", tmp_path / "full" / "pretraining")
    full_log = json.loads((tmp_path / "full" / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    resumed_log = json.loads((tmp_path / "resumed" / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    assert [e["loss"] for e in full_log] == [e["loss"] for e in resumed_log]


def launch(record_dir, num_processes, per_device_batch, output_dir, *extra):
    record_dir.mkdir(parents=True, exist_ok=True)
    command = [
        # accelerate's `--cpu` launcher starts one process unless MPI is set up; `--multi_gpu` starts them with
        # torchrun, and without a GPU the script joins them in a gloo group.
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu" if num_processes > 1 else "--cpu",
        "--num_processes", str(num_processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        str(REPO_ROOT / "tests" / "scripts" / "record_weights.py"), str(record_dir),
        "--dataset_name", str(require(CIFAR10)), "--max_train_samples", "64", "--output_dir", str(output_dir),
        "--per_device_train_batch_size", str(per_device_batch), "--max_train_steps", "3", *TINY, *extra,
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def test_two_processes_hold_identical_weights_and_match_one_process(tmp_path):
    launch(tmp_path / "two", 2, 8, tmp_path / "out2")
    rank0 = json.loads((tmp_path / "two" / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "two" / "rank1.json").read_text())
    assert list(rank0) == ["1", "2", "3"] and rank0 == rank1  # every step, EMA target encoders included

    launch(tmp_path / "one", 1, 16, tmp_path / "out1")
    two = load_file(tmp_path / "two" / "rank0.safetensors")
    one = load_file(tmp_path / "one" / "rank0.safetensors")
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, atol=2e-5, rtol=1e-4, msg=name)
    # Training moved the context encoder away from the EMA target (both start equal), so the match is not trivial.
    name = "layers.0.mlp.fc1.weight"
    assert not torch.equal(one[f"context_encoder.{name}"], one[f"target_encoder.{name}"])


def test_push_to_hub_uploads_the_output_folder(tmp_path, monkeypatch):
    import huggingface_hub

    calls = {}

    class RepoUrl:
        repo_id = "someone/ijepa-tiny"

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)
        return RepoUrl()

    def upload_folder(self, repo_id, folder_path, **kwargs):
        calls["upload_folder"] = (repo_id, sorted(p.name for p in folder_path.iterdir()), kwargs)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    run_pretraining.main(cifar_args(tmp_path, "--max_train_steps", "2", "--push_to_hub", "--hub_model_id", "someone/ijepa-tiny",
                                    "--checkpointing_steps", "1"))
    assert calls["create_repo"][0] == "someone/ijepa-tiny"
    repo_id, files, kwargs = calls["upload_folder"]
    assert repo_id == "someone/ijepa-tiny"
    for required in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "training_curves.png", "pretraining"):
        assert required in files
    assert any(pattern.startswith("checkpoint-") for pattern in kwargs["ignore_patterns"])
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "transformers"


def test_unknown_recipe_keys_are_refused(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("hidden_size: 64\nlearning_rte: 0.1\n")
    with pytest.raises(ValueError, match=r"Unknown keys .*\['learning_rte'\]"):
        run_pretraining.main(["--config", str(recipe), "--output_dir", str(tmp_path)])


def test_command_line_overrides_recipe(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("hidden_size: 64\nnum_attention_heads: 4\ntarget_scale: [0.1, 0.2]\n")
    args = run_pretraining.parse_args(["--config", str(recipe), "--hidden_size", "32"])
    assert args.hidden_size == 32 and args.num_attention_heads == 4 and args.target_scale == (0.1, 0.2)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset_name", "./no/such/folder"], "no such local folder"),
        (["--image_size", "30"], "not divisible by --patch_size"),
        (["--per_device_train_batch_size", "0"], "per_device_train_batch_size must be a positive integer"),
        (["--per_device_train_batch_size", "-4"], "per_device_train_batch_size must be a positive integer"),
        (["--hidden_size", "30", "--num_attention_heads", "4"], "not divisible by --num_attention_heads"),
        (["--push_to_hub"], "needs --hub_model_id"),
    ],
)
def test_bad_arguments_fail_before_any_work(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        run_pretraining.main(["--output_dir", str(tmp_path), "--image_size", "32", "--patch_size", "4", *extra])


def test_dataset_without_an_image_column_is_a_clear_error(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("text,label\nhello,0\nworld,1\n")
    with pytest.raises(ValueError, match=r"Could not find the image column among \['text', 'label'\]"):
        run_pretraining.main(cifar_args(tmp_path / "out")[2:] + ["--dataset_name", str(tmp_path / "data")])


def write_image_folder(root):
    """Real CIFAR photos in many modes, plus a corrupt and a truncated file."""
    from datasets import load_dataset

    photos = [row["img"] for row in load_dataset(str(require(CIFAR10)), split="test[:24]")]
    folder = root / "train" / "things"
    folder.mkdir(parents=True)
    for i, photo in enumerate(photos[:16]):
        photo.save(folder / f"rgb{i}.png")
    photos[16].convert("L").save(folder / "gray.png")
    photos[17].convert("RGBA").save(folder / "rgba.png")
    photos[18].convert("CMYK").save(folder / "cmyk.jpg")
    photos[19].convert("P").save(folder / "palette.png")
    Image.fromarray((torch.rand(32, 32).numpy() * 60000).astype("uint16")).save(folder / "sixteen.png")
    photos[20].resize((2000, 2000)).save(folder / "large.jpg")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    photos[21].resize((256, 256)).save(folder / "whole.jpg", quality=95)
    (folder / "truncated.jpg").write_bytes((folder / "whole.jpg").read_bytes()[:700])
    (folder / "whole.jpg").unlink()
    return root / "train"


def test_unreadable_images_are_skipped_and_counted_and_other_modes_converted(tmp_path, caplog):
    train_dir = write_image_folder(tmp_path / "images")
    args = ["--train_dir", str(train_dir), "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "out"),
            "--num_train_epochs", "1", *TINY]
    with caplog.at_level("WARNING"):
        state = run_pretraining.main(args)
    assert state["num_skipped"] == 2  # the corrupt and the truncated file, of 24
    assert state["images_seen"] == 24 - 2
    assert "Skipped 2 unreadable examples" in caplog.text


def test_tiny_video_run_on_real_clips(tmp_path):
    from modeling_ijepa import VJepaForPreTraining

    from .conftest import VIDEO_TINY

    state = run_pretraining.main([
        "--modality", "video", "--train_dir", str(require(VIDEO_TINY / "unlabelled")), "--num_frames", "8",
        "--frame_step", "2", "--per_device_train_batch_size", "4", "--max_train_steps", "2",
        "--output_dir", str(tmp_path), *TINY,
    ])
    assert state["global_step"] == 2 and state["images_seen"] == 8
    encoder = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    trained = VJepaForPreTraining.from_pretrained(tmp_path / "pretraining")
    for name, value in trained.target_encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[name], value), name
    log = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in log)
    assert ModelCard.load(tmp_path / "README.md").data.pipeline_tag == "video-classification"


@pytest.mark.parametrize("recipe", sorted((REPO_ROOT / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_shipped_recipes_parse(recipe):
    args = run_pretraining.parse_args(["--config", str(recipe)])
    assert args.image_size % args.patch_size == 0


def test_paper_recipe_has_the_paper_numbers():
    args = run_pretraining.parse_args(["--config", str(REPO_ROOT / "configs" / "in1k_vith14_ep300.yaml")])
    assert (args.hidden_size, args.num_hidden_layers, args.patch_size, args.image_size) == (1280, 32, 14, 224)
    assert (args.per_device_train_batch_size, args.num_train_epochs, args.warmup_epochs) == (128, 300, 40)
    assert (args.weight_decay, args.final_weight_decay, args.ema_momentum) == (0.04, 0.4, 0.996)
    assert (args.target_scale, args.context_scale, args.num_targets) == ((0.15, 0.2), (0.85, 1.0), 4)


def test_vjepa_recipe_stretches_its_schedules_and_clips_after_the_warmup():
    args = run_pretraining.parse_args(["--config", str(REPO_ROOT / "configs" / "vjepa_vitl16.yaml")])
    assert (args.ipe_scale, args.max_grad_norm, args.clip_grad_after_warmup) == (1.25, 10.0, True)
    schedules = build_schedules(args, steps_per_epoch=300)
    assert schedules.schedule_steps == int(1.25 * 300 * args.num_train_epochs)
    assert schedules.learning_rate(schedules.total_steps) > args.final_lr


def test_clipping_after_the_warmup_starts_in_the_epoch_after_it():
    args = run_pretraining.parse_args(["--max_grad_norm", "10", "--clip_grad_after_warmup", "--warmup_epochs", "2"])
    model = IJepaForPreTraining(IJepaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=64, image_size=16, patch_size=4,
                                            predictor_hidden_size=16, predictor_num_hidden_layers=1))
    optimizer = torch.optim.AdamW(model.parameters())
    step = build_step(args, Accelerator(cpu=True), model, optimizer,
                                      build_schedules(args, steps_per_epoch=3))
    assert [step.clips_at(epoch) for epoch in range(5)] == [False, False, False, True, True]


def test_clip_grad_after_warmup_needs_a_norm():
    with pytest.raises(ValueError, match="--clip_grad_after_warmup needs --max_grad_norm"):
        run_pretraining.parse_args(["--clip_grad_after_warmup"])


def test_epoch_checkpointing_also_saves_the_last_epoch(tmp_path):
    run_pretraining.main(cifar_args(tmp_path, "--num_train_epochs", "2", "--checkpointing_steps", "epoch",
                                    "--checkpoints_total_limit", "5"))
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]


def test_matmul_precision_applies_to_training_only_and_is_recorded_in_the_card(tmp_path, monkeypatch):
    """`--matmul_precision medium` (bf16 products of float32 matrices) holds while the loop trains, and the card
    says so; afterwards torch's setting is restored, so the probe at the end of a run fits in full float32."""
    from modeling_ijepa.training.loop import TrainingLoop

    before = torch.get_float32_matmul_precision()
    during = []
    run = TrainingLoop.run

    def recording_run(loop):
        during.append(torch.get_float32_matmul_precision())
        return run(loop)

    monkeypatch.setattr(TrainingLoop, "run", recording_run)
    state = run_pretraining.main(cifar_args(tmp_path, "--max_train_steps", "2", "--matmul_precision", "medium",
                                            "--attn_implementation", "eager"))
    assert during == ["medium"] and before != "medium"
    assert torch.get_float32_matmul_precision() == before
    assert state["global_step"] == 2 and all(torch.isfinite(torch.tensor(e["loss"])) for e in state["log_history"])
    assert "float32 matmul precision medium" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("native", [True, False])
def test_mixed_precision_auto_trains_in_bf16_only_where_the_cpu_computes_it_natively(native, tmp_path, monkeypatch):
    """`--mixed_precision auto` is bf16 autocast on a CPU with oneDNN's bf16 kernels and float32 on one without
    (emulated there, a step ran 17x slower); the card says which it trained in."""
    from modeling_ijepa.training import runtime

    assert runtime.has_native_bf16("cpu") == torch.ops.mkldnn._is_mkldnn_bf16_supported()  # this machine's answer
    monkeypatch.setattr(runtime, "has_native_bf16", lambda device_type: native)  # both answers, on any machine
    assert runtime.resolve_mixed_precision("auto", "cpu") == ("bf16" if native else "no")
    assert runtime.resolve_mixed_precision("bf16", "cpu") == "bf16"  # an explicit choice is kept
    dtypes = []
    forward = IJepaForPreTraining.forward

    @functools.wraps(forward)  # the loop reads the signature
    def recording_forward(model, *args, **kwargs):
        dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return forward(model, *args, **kwargs)

    monkeypatch.setattr(IJepaForPreTraining, "forward", recording_forward)
    run_pretraining.main(cifar_args(tmp_path, "--max_train_steps", "1", "--mixed_precision", "auto"))
    assert dtypes == [torch.bfloat16 if native else torch.float32]
    assert f"| precision | {'bf16' if native else 'no'} |" in (tmp_path / "README.md").read_text()


# What the README calls each value the progress bar can show.
PROGRESS_BAR_NAMES = {"loss": "the loss", "lr": "the learning rate", "weight_decay": "the weight decay",
                      "momentum": "the EMA momentum"}


def test_readme_says_what_the_progress_bar_shows(tmp_path, monkeypatch):
    shown = set()

    class RecordingBar(loop.tqdm):
        def set_postfix(self, *args, **kwargs):
            shown.update(kwargs)
            super().set_postfix(*args, **kwargs)

    monkeypatch.setattr(loop, "tqdm", RecordingBar)
    run_pretraining.main(cifar_args(tmp_path, "--max_train_steps", "1"))
    sentence = re.search(r"The progress bar shows ([^.;]+)", (REPO_ROOT / "README.md").read_text())
    assert sentence, "the README no longer says what the progress bar shows"
    assert set(re.split(r",\s+|\s+and\s+", sentence.group(1).replace("\n", " "))) == {
        PROGRESS_BAR_NAMES[key] for key in shown
    }


def test_the_end_of_pretraining_probes_against_random_init_and_says_so_in_the_card(tmp_path):
    # The default data (scikit-learn's digits) has labels and a test split.
    run_pretraining.main(["--output_dir", str(tmp_path), *TINY, "--max_train_steps", "2",
                          "--per_device_train_batch_size", "16", "--probe_after_training",
                          "--probe_max_train_samples", "300", "--probe_max_eval_samples", "100"])
    comparison = json.loads((tmp_path / "probe" / "comparison.json").read_text())
    assert comparison["eval_data"] == "test split, 100 of 360 images"
    card = (tmp_path / "README.md").read_text()
    assert "## Does pretraining pay off?" in card and comparison["verdict"] in card
    for encoder in ("pretrained", "random_init"):
        for metric in ("linear_top1", "knn_top1"):
            value = comparison[f"{encoder}_{metric}"]
            assert 0.0 <= value <= 1.0 and f"{100 * value:.1f}%" in card
    assert comparison["pays_off"] == all(gain > 0 for gain in comparison["gains"].values())
    assert (tmp_path / "probe_vs_random_init.png").stat().st_size > 1000


def test_the_end_of_pretraining_probe_can_read_the_last_layers(tmp_path):
    run_pretraining.main(["--output_dir", str(tmp_path), *TINY, "--max_train_steps", "1",
                          "--per_device_train_batch_size", "16", "--probe_after_training", "--probe_feature_layers", "2",
                          "--probe_max_train_samples", "200", "--probe_max_eval_samples", "100"])
    comparison = json.loads((tmp_path / "probe" / "comparison.json").read_text())
    assert comparison["features"].startswith("last 2 layers, concatenated")
    for encoder in ("pretrained", "random_init"):
        results = json.loads((tmp_path / "probe" / encoder / "probe_results.json").read_text())
        assert results["features"]["layers"] == 2
    with pytest.raises(ValueError, match="--probe_feature_layers must be positive"):
        run_pretraining.main(["--output_dir", str(tmp_path / "bad"), "--probe_feature_layers", "0"])
    with pytest.raises(ValueError, match="--probe_feature_layers 3 exceeds the encoder's 2 layers"):
        run_pretraining.main(["--output_dir", str(tmp_path / "bad"), *TINY, "--probe_after_training",
                              "--probe_feature_layers", "3"])


def test_the_probe_after_training_can_be_turned_off(tmp_path):
    run_pretraining.main(["--output_dir", str(tmp_path), *TINY, "--max_train_steps", "1",
                          "--per_device_train_batch_size", "16", "--no-probe_after_training"])
    assert "Does pretraining pay off?" not in (tmp_path / "README.md").read_text()
    assert not (tmp_path / "probe").exists()


def test_a_probe_that_does_not_beat_random_init_is_a_plain_warning():
    from modeling_ijepa.evaluation.pretraining_probe import verdict

    pays_off, sentence = verdict({"linear_top1": 0.02, "knn_top1": -0.081})
    assert not pays_off and "does not beat random initialisation" in sentence and "kNN -8.1 points" in sentence
    assert verdict({"linear_top1": 0.02, "knn_top1": 0.1})[0]


def test_data_without_a_held_out_split_is_not_probed(tmp_path):
    from modeling_ijepa.evaluation.pretraining_probe import labelled_splits

    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(2):
            Image.new("RGB", (8, 8), (index * 90, 0, 0)).save(tmp_path / "images" / label / f"{index}.png")
    args = run_pretraining.parse_args(["--train_dir", str(tmp_path / "images")])
    assert "no held-out split" in labelled_splits(args)


def test_a_run_with_the_variance_covariance_regulariser_trains_and_logs_its_parts(tmp_path):
    state = run_pretraining.main(cifar_args(tmp_path, "--max_train_samples", "32", "--max_train_steps", "2",
                                            "--variance_loss_weight", "1.0", "--covariance_loss_weight", "0.04"))
    assert state["global_step"] == 2
    config = IJepaForPreTraining.from_pretrained(tmp_path / "pretraining").config
    assert (config.variance_loss_weight, config.covariance_loss_weight) == (1.0, 0.04)
    entries = state["log_history"]
    assert entries and all(entry["regularisation_loss"] > 0 for entry in entries)
    for entry in entries:
        assert entry["loss"] == pytest.approx(entry["prediction_loss"] + entry["regularisation_loss"], rel=1e-5)


def test_a_run_with_sigreg_draws_new_directions_at_every_step(tmp_path, monkeypatch):
    from modeling_ijepa import modeling_ijepa

    seeds, sigreg = [], modeling_ijepa.sketched_isotropic_gaussian_loss

    def recording(features, num_slices, seed=0, **kwargs):
        seeds.append((seed, num_slices))
        return sigreg(features, num_slices, seed=seed, **kwargs)

    monkeypatch.setattr(modeling_ijepa, "sketched_isotropic_gaussian_loss", recording)
    state = run_pretraining.main(cifar_args(tmp_path, "--max_train_samples", "32", "--max_train_steps", "2",
                                            "--sigreg_loss_weight", "0.02", "--sigreg_num_slices", "16"))
    assert state["global_step"] == 2 and seeds == [(1, 16), (2, 16)]  # the optimizer step seeds the directions
    config = IJepaForPreTraining.from_pretrained(tmp_path / "pretraining").config
    assert (config.sigreg_loss_weight, config.sigreg_num_slices) == (0.02, 16)
    assert all(entry["regularisation_loss"] > 0 for entry in state["log_history"])
    assert "sigreg_loss_weight" not in json.loads((tmp_path / "config.json").read_text())  # stock export
    with pytest.raises(ValueError, match="--sigreg_num_slices must be >= 1"):
        run_pretraining.parse_args([*TINY, "--sigreg_num_slices", "0"])
    with pytest.raises(ValueError, match="--sigreg_loss_weight is an image"):
        run_pretraining.parse_args(["--modality", "video", "--sigreg_loss_weight", "0.1"])


def test_a_run_with_several_mask_draws_per_image_trains(tmp_path):
    state = run_pretraining.main(cifar_args(tmp_path, "--max_train_samples", "32", "--max_train_steps", "2",
                                            "--num_mask_draws", "2"))
    assert state["global_step"] == 2 and state["images_seen"] == 32  # images, not draws
    assert all("regularisation_loss" not in entry for entry in state["log_history"])
    with pytest.raises(ValueError, match="--num_mask_draws is an image"):
        run_pretraining.parse_args(["--modality", "video", "--num_mask_draws", "2"])


def test_a_run_with_averaged_target_layers_saves_them_and_refuses_what_the_encoder_lacks(tmp_path):
    state = run_pretraining.main(cifar_args(tmp_path, "--max_train_samples", "32", "--max_train_steps", "2",
                                            "--target_average_layers", "2"))
    assert state["global_step"] == 2
    assert IJepaForPreTraining.from_pretrained(tmp_path / "pretraining").config.target_average_layers == 2
    # The export is stock transformers' config, which has no such field.
    assert "target_average_layers" not in json.loads((tmp_path / "config.json").read_text())
    layers = TINY[TINY.index("--num_hidden_layers") + 1]
    with pytest.raises(ValueError, match=f"--target_average_layers must be between 1 and the encoder's {layers}"):
        run_pretraining.parse_args([*TINY, "--target_average_layers", str(int(layers) + 1)])
    with pytest.raises(ValueError, match="--target_average_layers is an image"):
        run_pretraining.parse_args(["--modality", "video", "--target_average_layers", "2"])


def test_a_run_with_the_l1_prediction_loss_saves_it_and_video_refuses_it(tmp_path, capsys):
    state = run_pretraining.main(cifar_args(tmp_path, "--max_train_samples", "32", "--max_train_steps", "2",
                                            "--prediction_loss", "l1"))
    assert state["global_step"] == 2
    assert IJepaForPreTraining.from_pretrained(tmp_path / "pretraining").config.prediction_loss == "l1"
    assert "prediction_loss" not in json.loads((tmp_path / "config.json").read_text())  # stock config: no such field
    with pytest.raises(SystemExit):
        run_pretraining.parse_args([*TINY, "--prediction_loss", "l2"])
    assert "argument --prediction_loss: invalid choice: 'l2'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--prediction_loss is an image"):
        run_pretraining.parse_args(["--modality", "video", "--prediction_loss", "l1"])


def test_a_global_batch_size_sets_the_accumulation_for_the_number_of_processes(tmp_path):
    from modeling_ijepa.training.runtime import accumulation_for

    assert accumulation_for(2048, 128, 16) == 1 and accumulation_for(2048, 128, 8) == 2
    with pytest.raises(ValueError, match=r"--global_batch_size 2000 is not a positive multiple of .* 128 x 8 "):
        accumulation_for(2000, 128, 8)
    state = run_pretraining.main(cifar_args(tmp_path, "--max_train_steps", "2", "--global_batch_size", "32"))
    # 16 per device on 1 process: 2 batches accumulated into each optimizer step.
    assert state["global_step"] == 2 and state["images_seen"] == 64
    card = (tmp_path / "README.md").read_text()
    assert "| global batch | 32 (1 process x 16 per device x 2 accumulation steps) |" in card
