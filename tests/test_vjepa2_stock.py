# SPDX-License-Identifier: Apache-2.0
"""The V-JEPA 2 export loads in stock transformers, in a process that cannot import our package, and gives our
outputs; the stock predictor's equalities are exactly those the model-card note states."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModel, VJEPA2Model

from modeling_ijepa import VJepa2ForPreTraining
from modeling_ijepa.data.videos import VideoClipTransform, decode_clip
from modeling_ijepa.hub.export import vjepa2_resize_size
from modeling_ijepa.hub.pretraining_card import VJEPA2_CARD_NOTE
from modeling_ijepa.modeling_vjepa2 import TARGET_LAYER_NORM_EPS

from .conftest import VIDEO_TINY, require
from .test_vjepa2_parity import clips_of, convert_fixture, load_reference, mask_types

ATOL = 1e-5
NUM_LABELS = 3

# Runs with `python -I` outside the repository, and refuses our package on import, so that nothing of it can be
# used: what it loads comes from transformers alone.
STOCK_SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import json
    import sys


    class RefuseOurPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] == "modeling_ijepa":
                raise ModuleNotFoundError(f"{name} is refused in this process")


    sys.meta_path.insert(0, RefuseOurPackage())
    try:
        import modeling_ijepa  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("modeling_ijepa is importable")

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoModelForVideoClassification, AutoVideoProcessor

    folder, inputs_path, outputs_path, report_path, num_labels = sys.argv[1:]
    inputs = load_file(inputs_path)
    report, outputs = {}, {}
    model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    model.eval()
    report["class"] = f"{type(model).__module__}.{type(model).__qualname__}"
    report["loading_info"] = {key: sorted(map(str, value)) for key, value in info.items()}
    with torch.no_grad():
        clips = inputs["clips"]
        outputs["encoder"] = model(clips, skip_predictor=True).last_hidden_state
        images = inputs["images"].unsqueeze(1)
        repeated = images.expand(-1, model.config.frames_per_clip, -1, -1, -1)
        outputs["images_repeated"] = model(repeated, skip_predictor=True).last_hidden_state
        outputs["images_one_frame"] = model(images, skip_predictor=True).last_hidden_state
        mask_types = sorted(int(key.rpartition("_")[2]) for key in inputs if key.startswith("context_indices_"))
        for i in mask_types:
            context_mask, target_mask = [inputs[f"context_indices_{i}"]], [inputs[f"target_indices_{i}"]]
            output = model(clips, context_mask=context_mask, target_mask=target_mask)
            outputs[f"predictor_{i}"] = output.predictor_output.last_hidden_state
            outputs[f"target_hidden_state_{i}"] = output.predictor_output.target_hidden_state
            outputs[f"masked_hidden_state_{i}"] = output.masked_hidden_state
        # The model card's recipe for training-time predictions: mask token 0 in slot 1, the context encoder's
        # output on the context tokens alone, scattered into a full-length sequence.
        mask_tokens = model.predictor.embeddings.mask_tokens
        mask_tokens[1] = mask_tokens[0]
        for i in mask_types:
            outputs[f"recipe_{i}"] = model.predictor(
                encoder_hidden_states=inputs[f"scattered_context_{i}"],
                context_mask=[inputs[f"context_indices_{i}"]],
                target_mask=[inputs[f"target_indices_{i}"]],
            ).last_hidden_state

        processor = AutoVideoProcessor.from_pretrained(folder)
        report["processor"] = f"{type(processor).__module__}.{type(processor).__qualname__}"
        pixel_values = processor(inputs["real_clip"], return_tensors="pt")["pixel_values_videos"]
        outputs["real_clip_pixel_values"] = pixel_values
        fresh = AutoModel.from_pretrained(folder).eval()
        outputs["real_clip_features"] = fresh(pixel_values, skip_predictor=True).last_hidden_state

        classifier, info = AutoModelForVideoClassification.from_pretrained(
            folder, num_labels=int(num_labels), output_loading_info=True
        )
        classifier.eval()
        report["classifier_class"] = type(classifier).__qualname__
        report["classifier_loading_info"] = {key: sorted(map(str, value)) for key, value in info.items()}
        outputs["classifier_logits"] = classifier(clips).logits
        outputs["classifier_encoder"] = classifier.vjepa2(clips, skip_predictor=True).last_hidden_state
    report["our_package_loaded"] = [name for name in sys.modules if name.partition(".")[0] == "modeling_ijepa"]
    save_file({key: value.contiguous() for key, value in outputs.items()}, outputs_path)
    with open(report_path, "w") as file:
        json.dump(report, file)
    """
)


def real_clip(num_frames: int) -> torch.Tensor:
    """uint8 [T, H, W, C]: a clip of a real video, decoded with our PyAV pipeline."""
    video = sorted(require(VIDEO_TINY / "labelled").rglob("*.mp4"))[0]
    return decode_clip(video, num_frames=num_frames, frame_step=2, generator=torch.Generator().manual_seed(0))


def our_eval_preprocessing(clip: torch.Tensor, crop_size: int) -> torch.Tensor:
    """uint8 [T, H, W, C] -> float [T, C, S, S]: our evaluation transform as the probe builds it for V-JEPA 2, with
    the short side resized to the V-JEPA 2 evaluation size that the stock processor applies."""
    return VideoClipTransform(crop_size, train=False, resize_size=vjepa2_resize_size(crop_size))(clip)


@torch.no_grad()
def stock_inputs(model, clips, images, clip, context_indices: list, target_indices: list) -> dict:
    """The inputs `STOCK_SCRIPT` reads: clips [B, T, C, H, W], images [B, C, H, W], a real uint8 clip [T, H, W, C],
    the indices of each mask type, and the model card's recipe input: our context encoder's output on the context
    tokens alone, scattered into a full-length sequence."""
    inputs = {"clips": clips, "images": images, "real_clip": clip}
    for i, (context, target) in enumerate(zip(context_indices, target_indices)):
        inputs[f"context_indices_{i}"], inputs[f"target_indices_{i}"] = context, target
        hidden = model.context_encoder(clips, context_indices=context).last_hidden_state
        scattered = torch.zeros(hidden.shape[0], model.config.num_patches, hidden.shape[-1])
        inputs[f"scattered_context_{i}"] = scattered.scatter_(1, context.unsqueeze(-1).expand_as(hidden), hidden)
    return inputs


def run_stock(folder, inputs: dict, work) -> tuple[dict, dict]:
    """Runs `STOCK_SCRIPT` on the exported `folder` in a fresh process that cannot import our package; returns its
    outputs and report."""
    save_file({key: value.contiguous() for key, value in inputs.items()}, work / "inputs.safetensors")
    (work / "stock.py").write_text(STOCK_SCRIPT)
    paths = [folder, work / "inputs.safetensors", work / "outputs.safetensors", work / "report.json"]
    completed = subprocess.run(
        [sys.executable, "-I", str(work / "stock.py"), *map(str, paths), str(NUM_LABELS)],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return load_file(paths[2]), json.loads(paths[3].read_text())


@pytest.fixture(scope="module")
def reference():
    return load_reference()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("converted")
    convert_fixture(output_dir)
    return output_dir


@pytest.fixture(scope="module")
def model(converted):
    return VJepa2ForPreTraining.from_pretrained(converted / "pretraining").eval()


@pytest.fixture(scope="module")
def stock_run(converted, model, reference, tmp_path_factory):
    """Runs `STOCK_SCRIPT` on the exported folder; returns its outputs and report, and the inputs it was given."""
    tensors, metadata = reference
    inputs = stock_inputs(
        model,
        clips_of(tensors),
        tensors["pixel_values_images"],
        real_clip(model.config.frames_per_clip),
        [tensors[f"context_indices_{i}"] for i in mask_types(metadata)],
        [tensors[f"target_indices_{i}"] for i in mask_types(metadata)],
    )
    outputs, report = run_stock(converted / "encoder", inputs, tmp_path_factory.mktemp("stock"))
    return outputs, report, inputs


def test_export_folder_is_plain_stock_vjepa2(converted, model):
    folder = converted / "encoder"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "vjepa2" and config["architectures"] == ["VJEPA2Model"]
    assert "auto_map" not in config and "loss_exponent" not in config
    assert not list(folder.glob("*.py"))
    processor = json.loads((folder / "video_preprocessor_config.json").read_text())
    assert processor["video_processor_type"] == "VJEPA2VideoProcessor"
    assert processor["crop_size"] == {"height": model.config.crop_size, "width": model.config.crop_size}
    # The short side our evaluation transform resizes to (the stock processor derives it from the crop size).
    assert processor["size"] == {"shortest_edge": vjepa2_resize_size(model.config.crop_size)}
    assert processor["image_mean"] == [0.485, 0.456, 0.406] and processor["image_std"] == [0.229, 0.224, 0.225]


def test_stock_loading_needs_nothing_of_ours_and_finds_every_weight(stock_run):
    _, report, _ = stock_run
    assert report["class"] == "transformers.models.vjepa2.modeling_vjepa2.VJEPA2Model"
    assert report["processor"] == "transformers.models.vjepa2.video_processing_vjepa2.VJEPA2VideoProcessor"
    assert report["our_package_loaded"] == []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert report["loading_info"].get(kind, []) == [], kind


@torch.no_grad()
def test_stock_encoder_equals_our_target_encoder(stock_run, model, reference):
    outputs, _, inputs = stock_run
    tensors, _ = reference
    ours = model.target_encoder(inputs["clips"]).last_hidden_state
    torch.testing.assert_close(outputs["encoder"], ours, atol=ATOL, rtol=0)
    torch.testing.assert_close(outputs["encoder"], tensors["target_encoder_last_hidden_state"], atol=ATOL, rtol=0)
    # Images: repeated to the training length (as ours does with [B, C, H, W]), or a one-frame clip.
    torch.testing.assert_close(
        outputs["images_repeated"], model.target_encoder(inputs["images"]).last_hidden_state, atol=ATOL, rtol=0
    )
    torch.testing.assert_close(
        outputs["images_one_frame"], tensors["image_target_encoder_last_hidden_state_2frames"], atol=ATOL, rtol=0
    )


@torch.no_grad()
def test_stock_predictor_equalities_of_the_model_card(stock_run, model, reference):
    outputs, _, inputs = stock_run
    tensors, metadata = reference
    stock_mask_index = int(metadata["stock_transformers_mask_index"])
    full = model.target_encoder(inputs["clips"]).last_hidden_state
    for i in mask_types(metadata):
        context_indices, target_indices = inputs[f"context_indices_{i}"], inputs[f"target_indices_{i}"]
        gathered = torch.gather(full, 1, context_indices.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
        # Stock: the exported (target) encoder on all tokens, gathered after, then mask token 1.
        torch.testing.assert_close(outputs[f"masked_hidden_state_{i}"], gathered, atol=ATOL, rtol=0)
        stock_style = model.predictor(gathered, context_indices, target_indices, mask_index=stock_mask_index)
        torch.testing.assert_close(outputs[f"predictor_{i}"], stock_style, atol=ATOL, rtol=0)
        # ... which is not the training prediction (differences of order 1, not rounding).
        assert (outputs[f"predictor_{i}"] - tensors[f"predictions_{i}"]).abs().max() > 0.1
        # Its `target_hidden_state` layer-normed is the training target.
        normed = F.layer_norm(outputs[f"target_hidden_state_{i}"], (full.shape[-1],), eps=TARGET_LAYER_NORM_EPS)
        torch.testing.assert_close(normed, tensors[f"targets_{i}"], atol=ATOL, rtol=0)
        # The card's recipe reproduces the training predictions.
        torch.testing.assert_close(outputs[f"recipe_{i}"], tensors[f"predictions_{i}"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_our_names_are_those_of_transformers_conversion(model, reference):
    """A stock `VJEPA2Model` given our context encoder and predictor, as transformers' conversion script builds it
    from `checkpoint['encoder']`, reproduces what the fixture records for that conversion."""
    tensors, metadata = reference
    stock = VJEPA2Model(model.config.stock_config()).eval()
    state_dict = {f"encoder.{key}": value for key, value in model.context_encoder.state_dict().items()}
    state_dict |= {f"predictor.{key}": value for key, value in model.predictor.state_dict().items()}
    stock.load_state_dict(state_dict, strict=True)
    clips = clips_of(tensors)
    for i in mask_types(metadata):
        context_mask, target_mask = [tensors[f"context_indices_{i}"]], [tensors[f"target_indices_{i}"]]
        output = stock(clips, context_mask=context_mask, target_mask=target_mask)
        expected = tensors["context_encoder_last_hidden_state"]
        torch.testing.assert_close(output.last_hidden_state, expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(
            output.predictor_output.last_hidden_state, tensors[f"stock_style_predictions_{i}"], atol=ATOL, rtol=0
        )


def test_video_classification_starts_from_the_export(stock_run):
    outputs, report, inputs = stock_run
    assert report["classifier_class"] == "VJEPA2ForVideoClassification"
    info = report["classifier_loading_info"]
    assert info.get("unexpected_keys", []) == []
    assert info["missing_keys"] and all(key.startswith(("pooler.", "classifier.")) for key in info["missing_keys"])
    assert outputs["classifier_logits"].shape == (inputs["clips"].shape[0], NUM_LABELS)
    assert torch.isfinite(outputs["classifier_logits"]).all()
    torch.testing.assert_close(outputs["classifier_encoder"], outputs["encoder"], atol=0, rtol=0)


@torch.no_grad()
def test_real_clip_through_stock_processor_and_model_equals_ours(stock_run, model):
    outputs, _, inputs = stock_run
    ours = our_eval_preprocessing(inputs["real_clip"], model.config.crop_size)
    torch.testing.assert_close(outputs["real_clip_pixel_values"][0], ours, atol=ATOL, rtol=0)
    features = model.target_encoder(ours.unsqueeze(0)).last_hidden_state
    torch.testing.assert_close(outputs["real_clip_features"], features, atol=ATOL, rtol=0)


def test_model_card_note_describes_the_recipe_tested_here():
    note = VJEPA2_CARD_NOTE.read_text()
    assert "mask_tokens.data[1] = model.predictor.embeddings.mask_tokens.data[0]" in note
    assert "eps=1e-5" in note and "target encoder" in note


@torch.no_grad()
def test_auto_model_on_a_pretraining_folder_gives_target_encoder_and_predictor(converted, model):
    stock = AutoModel.from_pretrained(converted / "pretraining")
    assert type(stock) is VJEPA2Model
    ours = {f"encoder.{key}": value for key, value in model.target_encoder.state_dict().items()}
    ours |= {f"predictor.{key}": value for key, value in model.predictor.state_dict().items()}
    assert stock.state_dict().keys() == ours.keys()
    for key, value in stock.state_dict().items():
        assert torch.equal(value, ours[key]), key
