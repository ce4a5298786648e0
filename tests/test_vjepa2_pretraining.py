# SPDX-License-Identifier: Apache-2.0
"""`run_pretraining.py --architecture vjepa2` end to end on real clips: a tiny run whose folder stock transformers
loads in a process without our package (target encoder and trained predictor), the video probe on it, continued
pretraining of a converted reference checkpoint, the recipes, and the errors for what cannot be trained."""

import json

import pytest
import torch
from accelerate import PartialState
from huggingface_hub import ModelCard
from safetensors.torch import load_file

import run_pretraining
from modeling_ijepa import MultiBlock3DMaskCollator, VJepa2ForPreTraining, VJepaConfig, VJepaForPreTraining
from modeling_ijepa.hub.pretraining_card import VJEPA2_CARD_NOTE
from modeling_ijepa.training.models import build_model

from .conftest import REPO_ROOT, VIDEO_TINY, require
from .test_vjepa2_parity import convert_fixture
from .test_vjepa2_stock import NUM_LABELS, our_eval_preprocessing, real_clip, run_stock, stock_inputs

ATOL = 1e-5
# The token grid of the reference fixture too (32 px, patch 8, 8 frames, tubelet 2), so that its converted
# checkpoint continues on the same data.
DATA = [
    "--modality", "video", "--architecture", "vjepa2", "--num_frames", "8", "--frame_step", "2", "--image_size", "32",
    "--patch_size", "8", "--tubelet_size", "2", "--per_device_train_batch_size", "4", "--max_train_steps", "2",
    "--logging_steps", "1", "--monitor_steps", "1",
]  # fmt: skip
SIZES = [
    "--hidden_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "4", "--predictor_hidden_size", "32",
    "--predictor_num_hidden_layers", "2", "--predictor_num_attention_heads", "4",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _accelerate_state():
    """`build_model` runs inside the script's `Accelerator`, whose logger needs the state."""
    PartialState()


def unlabelled() -> str:
    return str(require(VIDEO_TINY / "unlabelled"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("vjepa2_run")
    state = run_pretraining.main(
        [*DATA, *SIZES, "--train_dir", unlabelled(), "--warmup_steps", "1", "--output_dir", str(output_dir)]
    )
    return output_dir, state


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("converted")
    convert_fixture(output_dir)
    return output_dir


@torch.no_grad()
def test_tiny_run_exports_stock_vjepa2_with_target_encoder_and_trained_predictor(tiny_run, tmp_path):
    output_dir, state = tiny_run
    assert state["global_step"] == 2 and state["images_seen"] == 8
    config = json.loads((output_dir / "config.json").read_text())
    assert config["model_type"] == "vjepa2" and config["architectures"] == ["VJEPA2Model"]
    assert "auto_map" not in config and not list(output_dir.glob("*.py"))

    model = VJepa2ForPreTraining.from_pretrained(output_dir / "pretraining").eval()
    collator = MultiBlock3DMaskCollator(num_frames=8, image_size=32, patch_size=8, seed=0)
    batch = collator([{"pixel_values_videos": torch.randn(8, 3, 32, 32)} for _ in range(2)])
    clips = batch["pixel_values_videos"]
    context_indices, target_indices = batch["context_indices"], batch["target_indices"]
    inputs = stock_inputs(model, clips, torch.randn(2, 3, 32, 32), real_clip(8), context_indices, target_indices)
    outputs, report = run_stock(output_dir, inputs, tmp_path)

    assert report["class"] == "transformers.models.vjepa2.modeling_vjepa2.VJEPA2Model"
    assert report["our_package_loaded"] == []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert report["loading_info"].get(kind, []) == [], kind
    # The target encoder, output for output.
    torch.testing.assert_close(outputs["encoder"], model.target_encoder(clips).last_hidden_state, atol=ATOL, rtol=0)
    # The trained predictor: the model card's recipe gives the training predictions.
    predictions = model(clips, context_indices, target_indices).predictions
    for i, prediction in enumerate(predictions):
        torch.testing.assert_close(outputs[f"recipe_{i}"], prediction, atol=ATOL, rtol=0)
    # Stock preprocessing of a real clip is our evaluation transform.
    ours = our_eval_preprocessing(inputs["real_clip"], 32)
    torch.testing.assert_close(outputs["real_clip_pixel_values"][0], ours, atol=ATOL, rtol=0)
    features = model.target_encoder(ours.unsqueeze(0)).last_hidden_state
    torch.testing.assert_close(outputs["real_clip_features"], features, atol=ATOL, rtol=0)
    # Video classification starts from the folder, with a new pooler and classifier only.
    info = report["classifier_loading_info"]
    assert info.get("unexpected_keys", []) == []
    assert info["missing_keys"] and all(key.startswith(("pooler.", "classifier.")) for key in info["missing_keys"])
    assert outputs["classifier_logits"].shape == (2, NUM_LABELS)
    torch.testing.assert_close(outputs["classifier_encoder"], outputs["encoder"], atol=0, rtol=0)


def test_tiny_run_card_is_a_stock_vjepa2_card_with_the_predictor_note(tiny_run):
    output_dir, _ = tiny_run
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "video-classification"
    assert "vjepa2" in card.data.tags and "V-JEPA 2 (Assran et al., 2025)" in card.text
    assert "trust_remote_code" not in card.text and "AutoVideoProcessor.from_pretrained" in card.text
    note = VJEPA2_CARD_NOTE.read_text().strip()
    assert note in card.text


def test_video_probe_runs_on_the_vjepa2_folder(tiny_run):
    from modeling_ijepa.evaluation.linear_probe import main as probe_main

    output_dir, _ = tiny_run
    labelled = require(VIDEO_TINY / "labelled")
    results = probe_main(
        [
            "--modality", "video", "--model_name_or_path", str(output_dir),
            "--train_dir", str(labelled / "train"), "--validation_dir", str(labelled / "val"),
            "--output_dir", str(output_dir / "probe"), "--per_device_eval_batch_size", "16",
            "--attentive_epochs", "2", "--attentive_learning_rates", "1e-3", "--attentive_weight_decays", "1e-2",
            "--linear_max_iter", "50", "--linear_weight_decays", "1e-2",
        ]
    )  # fmt: skip
    assert results["sizes"]["train_used"] == 49 and results["sizes"]["eval"] == 15
    for key in ("attentive_top1", "linear_top1", "knn_top1"):
        assert 0.0 <= results[key] <= 1.0
    # Token features of clips of the training length and frame size: [clips, 4 x 4 x 4 tokens, width].
    assert tuple(load_file(results["features"]["cache_files"]["eval"])["features"].shape) == (15, 64, 64)
    assert ModelCard.load(output_dir / "README.md").data.eval_results


def continue_args(converted, output_dir, *extra):
    return run_pretraining.parse_args(
        [*DATA, "--train_dir", unlabelled(), "--model_name_or_path", str(converted), "--output_dir", str(output_dir),
         *extra]
    )  # fmt: skip


def test_converted_checkpoint_continues_with_its_three_networks_and_sizes(converted, tmp_path):
    args = continue_args(converted, tmp_path, "--num_frames", "16")
    model = build_model(args)
    reference = VJepa2ForPreTraining.from_pretrained(converted / "pretraining")
    assert model.state_dict().keys() == reference.state_dict().keys()
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert not any(p.requires_grad for p in model.target_encoder.parameters())
    # Sizes come from the checkpoint; RoPE lets the clip length be the run's own.
    assert (args.hidden_size, args.predictor_hidden_size, args.predictor_num_attention_heads) == (64, 48, 4)
    assert model.config.frames_per_clip == 16 and model.config.crop_size == 32


def test_continued_pretraining_with_a_short_warmup_moves_the_converted_weights_a_little(converted, tmp_path):
    schedule = ["--warmup_steps", "2", "--start_lr", "1e-5", "--learning_rate", "1e-4", "--final_lr", "1e-4",
                "--ema_momentum", "0.99925", "--final_ema_momentum", "0.99925"]  # fmt: skip
    state = run_pretraining.main([*DATA, "--train_dir", unlabelled(), "--model_name_or_path", str(converted),
                                  "--output_dir", str(tmp_path), *schedule])  # fmt: skip
    assert state["global_step"] == 2
    before = VJepa2ForPreTraining.from_pretrained(converted / "pretraining")
    after = VJepa2ForPreTraining.from_pretrained(tmp_path / "pretraining")
    for network in ("context_encoder", "target_encoder", "predictor"):
        start, end = getattr(before, network).state_dict(), getattr(after, network).state_dict()
        change = max((end[name] - value).abs().max().item() for name, value in start.items())
        assert 0 < change < 0.01, network
    assert "| predictor | width 48, 2 blocks |" in (tmp_path / "README.md").read_text()


def test_vjepa1_folder_passed_as_vjepa2_is_refused(tmp_path):
    config = VJepaConfig(image_size=32, num_frames=8, patch_size=8, hidden_size=64, num_hidden_layers=1,
                         num_attention_heads=4, intermediate_size=128, predictor_hidden_size=32,
                         predictor_num_hidden_layers=1)  # fmt: skip
    VJepaForPreTraining(config).save_pretrained(tmp_path / "vjepa")
    args = continue_args(tmp_path / "vjepa", tmp_path / "out")
    message = r"of type `vjepa`, but this run trains V-JEPA 2.*: to continue it, pass .* --architecture vjepa\."
    with pytest.raises(ValueError, match=message):
        build_model(args)


@pytest.mark.parametrize(
    "folder, extra, message",
    [
        ("encoder", [], r"VJEPA2Model.*without its predictor and context encoder.*pretraining/"),
        ("", ["--patch_size", "16"], r"trained with patch_size 8.*--patch_size 16: pass --patch_size 8"),
    ],
)  # fmt: skip
def test_checkpoints_that_cannot_continue_are_refused(converted, tmp_path, folder, extra, message):
    with pytest.raises(ValueError, match=message):
        build_model(continue_args(converted / folder, tmp_path, *extra))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num_frames", "7"], r"--num_frames 7 is not divisible by --tubelet_size 2"),
        (["--modality", "image"], r"--architecture vjepa2 is a video model: pass --modality video"),
    ],
)
def test_bad_vjepa2_arguments_fail_before_any_work(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        run_pretraining.main([*DATA, "--train_dir", unlabelled(), "--output_dir", str(tmp_path), *extra])


@pytest.mark.parametrize("recipe", ["vjepa2_tiny_cpu.yaml", "vjepa_tiny_cpu.yaml"])
def test_tiny_video_recipes_need_no_other_argument(recipe):
    args = run_pretraining.parse_args(["--config", str(REPO_ROOT / "configs" / recipe)])
    assert args.modality == "video" and args.train_dir and args.output_dir.startswith("outputs/")
    assert args.architecture == recipe.partition("_")[0]


def test_vjepa2_paper_recipe_has_the_reference_numbers():
    args = run_pretraining.parse_args(["--config", str(REPO_ROOT / "configs" / "vjepa2_vitl16.yaml")])
    assert (args.architecture, args.image_size, args.num_frames, args.patch_size, args.tubelet_size) == (
        "vjepa2", 256, 16, 16, 2
    )
    assert (args.hidden_size, args.num_hidden_layers, args.num_attention_heads) == (1024, 24, 16)
    assert (args.predictor_hidden_size, args.predictor_num_hidden_layers, args.predictor_num_attention_heads) == (
        384, 12, 12
    )
    assert (args.start_lr, args.learning_rate, args.final_lr) == (1e-4, 5.25e-4, 5.25e-4)
    assert (args.ema_momentum, args.final_ema_momentum, args.weight_decay, args.final_weight_decay) == (
        0.99925, 0.99925, 0.04, 0.04
    )
    assert (args.warmup_steps, args.max_train_steps, args.max_grad_norm) == (12_000, 240_000, None)
