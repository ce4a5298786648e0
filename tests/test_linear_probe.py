# SPDX-License-Identifier: Apache-2.0
"""Frozen-feature probes (`run_linear_probe.py`, `modeling_ijepa.evaluation`): end to end on real images and
videos, the feature cache, low-shot subsets, the offline metric, model-card results and clear errors."""

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData
from safetensors.torch import load_file

from modeling_ijepa import IJepaForPreTraining
from modeling_ijepa.evaluation.arguments import parse_args
from modeling_ijepa.evaluation.features import LabelledFeatures
from modeling_ijepa.evaluation.knn import knn_scores
from modeling_ijepa.evaluation.linear_probe import main as probe_main
from modeling_ijepa.evaluation.linear_probe import low_shot_training, run_probes
from modeling_ijepa.evaluation.metrics import TopKAccuracy
from modeling_ijepa.evaluation.probes import (
    fit_logistic_regression,
    standardise,
    sweep_and_refit,
    sweep_edges,
    unit_norm_rows,
)
from modeling_ijepa.evaluation.subsets import samples_per_class_subset, stratified_folds, stratified_sample
from modeling_ijepa.hub.export import save_encoder_for_transformers
from modeling_ijepa.hub.probe_card import split_description

from .conftest import CIFAR10, OFFICIAL, VIDEO_TINY, require

# Few L-BFGS iterations and two L2 strengths: the tests check the pipeline, not the accuracy.
FAST = ["--linear_max_iter", "50", "--linear_weight_decays", "1e-4", "1e-2"]


@pytest.fixture(autouse=True)
def _one_thread():
    """The probes here are tiny: on a shared 2-core runner, intra-op threads cost more in synchronisation than
    they save (10x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def pretraining_folder(tmp_path, tiny_ijepa_config):
    """A saved tiny `IJepaForPreTraining` whose context and target encoders differ, as after training."""
    model = IJepaForPreTraining(tiny_ijepa_config)
    with torch.no_grad():
        for parameter in model.context_encoder.parameters():
            parameter.add_(0.1)
    model.update_target_encoder(0.5)
    folder = tmp_path / "pretraining"
    model.save_pretrained(folder)
    return folder, model


def cifar_args(model, output_dir, *extra, train=300, evaluation=200):
    return [
        "--model_name_or_path", str(model),
        "--dataset_name", str(require(CIFAR10)),
        "--max_train_samples", str(train),
        "--max_eval_samples", str(evaluation),
        "--output_dir", str(output_dir),
        *FAST,
        *extra,
    ]  # fmt: skip


def cached_tensors(results, role):
    return load_file(results["features"]["cache_files"][role])


def test_cifar_end_to_end_cache_and_target_encoder(tmp_path, pretraining_folder):
    folder, model = pretraining_folder
    output_dir = tmp_path / "probe"
    first = probe_main(cifar_args(folder, output_dir))

    written = json.loads((output_dir / "probe_results.json").read_text())
    assert written == first
    assert written["sizes"] == {
        "train_extracted": 300,
        "train_used": 300,
        "eval": 200,
        "skipped": {"train": 0, "eval": 0},
        "max_train_samples": 300,
        "max_eval_samples": 200,
    }
    assert written["dataset"]["image_column"] == "img" and written["num_classes"] == 10
    for key in ("linear_top1", "linear_top5", "knn_top1", "knn_top5"):
        assert 0.0 <= written[key] <= 1.0
    sweep = written["linear_probe"]["sweep"]
    assert [row["weight_decay"] for row in sweep] == [1e-4, 1e-2]
    assert all(0.0 <= row["validation_top1"] <= 1.0 for row in sweep)
    assert written["linear_probe"]["chosen"]["weight_decay"] in (1e-4, 1e-2)
    # Stratified 10% of 300 examples in 10 classes, rounded per class.
    assert 20 <= written["linear_probe"]["num_validation"] <= 40
    assert written["features"]["cached"] == {"train": False, "eval": False}
    assert written["features"]["dim"] == 64

    second = probe_main(cifar_args(folder, output_dir))
    assert second["features"]["cached"] == {"train": True, "eval": True}
    assert second["features"]["cache_files"] == first["features"]["cache_files"]
    for key in ("linear_top1", "linear_top5", "knn_top1", "linear_probe"):
        assert second[key] == first[key]

    # The pretraining folder is probed through its target encoder: the same features as the exported encoder.
    exported = tmp_path / "encoder"
    save_encoder_for_transformers(model.target_encoder, exported)
    from_export = probe_main(cifar_args(exported, tmp_path / "probe_export"))
    torch.testing.assert_close(
        cached_tensors(from_export, "train")["features"], cached_tensors(first, "train")["features"], atol=1e-5, rtol=0
    )


def test_feature_layers_and_random_init(tmp_path, pretraining_folder):
    folder, _ = pretraining_folder
    two_layers = probe_main(cifar_args(folder, tmp_path / "two", "--feature_layers", "2", train=60))
    assert two_layers["features"]["dim"] == 128
    features = cached_tensors(two_layers, "train")["features"]
    # Each layer is layer-normed without affine parameters before pooling: every half has a mean near 0.
    assert features[:, :64].mean(dim=1).abs().max() < 1e-4 and features[:, 64:].mean(dim=1).abs().max() < 1e-4

    trained = cached_tensors(probe_main(cifar_args(folder, tmp_path / "trained", train=60)), "train")["features"]
    random = probe_main(cifar_args(folder, tmp_path / "random", "--random_init", train=60))
    assert random["random_init"] is True
    random_features = cached_tensors(random, "train")["features"]
    assert not torch.allclose(random_features, trained)
    # Seeded: a second random model with the same seed is the same model.
    repeat = probe_main(cifar_args(folder, tmp_path / "random_again", "--random_init", train=60))
    torch.testing.assert_close(cached_tensors(repeat, "train")["features"], random_features, atol=0, rtol=0)


def test_sklearn_digits_by_default(tmp_path, pretraining_folder):
    folder, _ = pretraining_folder
    results = probe_main(["--model_name_or_path", str(folder), "--output_dir", str(tmp_path), *FAST])
    assert results["dataset"]["name"] == "sklearn-digits"
    assert results["sizes"]["train_used"] == 1437 and results["sizes"]["eval"] == 360
    assert 0.0 <= results["linear_top1"] <= 1.0 and 0.0 <= results["knn_top1"] <= 1.0
    # Real digits: even random-ish features are far above chance (10%) with a converged linear probe.
    assert results["linear_top1"] > 0.3


def test_image_folders_skip_unreadable_files_and_align_classes(tmp_path, pretraining_folder):
    """`--train_dir`/`--validation_dir`: a corrupt file is skipped and counted with its label, and an eval folder
    missing a class keeps the training numbering (classes are matched by name)."""
    from datasets import load_dataset

    photos = load_dataset(str(require(CIFAR10)), split="test[:60]")
    names = photos.features["label"].names
    expected = {"train": [0, 0, 0], "validation": [0, 0, 0]}
    for index, example in enumerate(photos):
        if example["label"] > 2 or (index >= 40 and example["label"] == 0):
            continue
        split = "train" if index < 40 else "validation"
        folder = tmp_path / split / names[example["label"]]
        folder.mkdir(parents=True, exist_ok=True)
        example["img"].save(folder / f"{index}.png")
        expected[split][example["label"]] += 1
    (tmp_path / "train" / names[1] / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 8)

    folder, _ = pretraining_folder
    results = probe_main(
        [
            "--model_name_or_path", str(folder),
            "--train_dir", str(tmp_path / "train"),
            "--validation_dir", str(tmp_path / "validation"),
            "--output_dir", str(tmp_path / "probe"),
            "--per_device_eval_batch_size", "8",
            *FAST,
        ]
    )  # fmt: skip
    assert results["class_names"] == names[:3] and results["eval_split"] == "validation"
    assert results["sizes"]["skipped"] == {"train": 1, "eval": 0}
    for role, split in (("train", "train"), ("eval", "validation")):
        labels = cached_tensors(results, role)["labels"]
        assert torch.bincount(labels, minlength=3).tolist() == expected[split]


def test_reference_checkpoint(tmp_path):
    checkpoint = require(OFFICIAL / "ijepa_official_tiny.pth.tar")
    args = cifar_args(checkpoint, tmp_path, train=100, evaluation=50)
    with pytest.raises(ValueError, match="--num_attention_heads"):
        probe_main(args)
    results = probe_main(args + ["--num_attention_heads", "4"])
    assert results["model_name_or_path"] == str(checkpoint)
    assert 0.0 <= results["linear_top1"] <= 1.0
    assert results["model_card_updated"] is None


def test_low_shot_subsets(tmp_path, pretraining_folder):
    folder, _ = pretraining_folder
    full = probe_main(cifar_args(folder, tmp_path))
    labels = cached_tensors(full, "train")["labels"]

    five_shot = probe_main(cifar_args(folder, tmp_path, "--samples_per_class", "5"))
    assert five_shot["features"]["cached"] == {"train": True, "eval": True}  # subsets come from the cache
    assert five_shot["sizes"]["train_used"] == 50 and five_shot["low_shot"]["samples_per_class"] == 5
    assert five_shot["linear_probe"]["num_validation"] == 10 and five_shot["linear_probe"]["num_folds"] == 1
    folded = probe_main(cifar_args(folder, tmp_path, "--samples_per_class", "5", "--sweep_folds", "5"))
    assert folded["linear_probe"]["num_validation"] == 50 and folded["linear_probe"]["num_folds"] == 5
    assert folded["linear_probe"]["num_fit"] == 40 and folded["sweep_folds"] == 5
    chosen = samples_per_class_subset(labels, 5, [str(label) for label in range(10)], seed=0)
    assert torch.bincount(labels[chosen], minlength=10).tolist() == [5] * 10
    torch.testing.assert_close(chosen, samples_per_class_subset(labels, 5, [str(label) for label in range(10)], seed=0))

    # Another subset seed draws other examples, for the same encoder: the random initialisation's weights follow
    # --seed alone, so several draws probe one random encoder.
    args = parse_args(cifar_args(folder, tmp_path, "--samples_per_class", "5", "--subset_seed", "1"))
    positions = LabelledFeatures(torch.arange(len(labels)).float()[:, None], labels)  # each example's index
    redrawn = low_shot_training(positions, [str(label) for label in range(10)], args)
    other = samples_per_class_subset(labels, 5, [str(label) for label in range(10)], seed=1)
    assert redrawn.features[:, 0].long().tolist() == other.tolist()
    assert not torch.equal(other, chosen)
    assert probe_main(cifar_args(folder, tmp_path, "--samples_per_class", "5", "--subset_seed", "1"))["low_shot"] == {
        "samples_per_class": 5, "label_fraction": None, "subset_seed": 1
    }
    assert five_shot["low_shot"]["subset_seed"] == 0

    half = probe_main(cifar_args(folder, tmp_path, "--label_fraction", "0.5"))
    counts = torch.bincount(labels, minlength=10)
    expected = [max(1, round(0.5 * int(count))) for count in counts]
    assert half["sizes"]["train_used"] == sum(expected)
    assert torch.bincount(labels[stratified_sample(labels, 0.5, seed=0)], minlength=10).tolist() == expected

    smallest = int(counts.argmin())
    with pytest.raises(ValueError, match=rf"class '\w+' \(label {smallest}\) has only {int(counts.min())} examples"):
        probe_main(cifar_args(folder, tmp_path, "--samples_per_class", str(int(counts.min()) + 1)))


def test_stratified_folds_partition_every_class_evenly():
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 7)
    folds = stratified_folds(labels, 5, seed=3)
    assert torch.cat(folds).sort().values.tolist() == list(range(27))  # a partition: every example once
    assert sorted(len(fold) for fold in folds) == [5, 5, 5, 6, 6]
    for fold in folds:
        counts = torch.bincount(labels[fold], minlength=3).tolist()
        assert counts[:2] == [2, 2] and counts[2] in (1, 2)
    assert all(torch.equal(a, b) for a, b in zip(folds, stratified_folds(labels, 5, seed=3)))
    assert not all(torch.equal(a, b) for a, b in zip(folds, stratified_folds(labels, 5, seed=4)))
    for num_folds in (1, 28):
        with pytest.raises(ValueError, match=f"Cannot cut 27 examples into {num_folds} folds"):
            stratified_folds(labels, num_folds, seed=0)


def test_sweep_by_cross_validation_scores_every_training_example_once():
    """At 10 examples per class, a 10% held-out part is one example per class; 5 folds validate on all 100. The
    table is the count of correct held-out predictions over the folds, each fold's probes fitted on the rest."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(100) % 10
    features = torch.randn(100, 16, generator=generator) + 0.8 * torch.nn.functional.one_hot(labels, 16).float()
    decays = [1e-4, 1e-1, 10.0]

    def fit(train, train_labels, settings):
        return [fit_logistic_regression(train, train_labels, 10, setting["weight_decay"], 50) for setting in settings]

    settings = [{"weight_decay": value} for value in decays]
    single = sweep_and_refit(fit, settings, features, labels, features, 0.1, seed=0)
    assert (single.num_validation, single.num_fit, single.num_folds) == (10, 90, 1)

    folded = sweep_and_refit(fit, settings, features, labels, features, 0.1, seed=0, num_folds=5)
    assert (folded.num_validation, folded.num_fit, folded.num_folds) == (100, 80, 5)
    correct = [0] * len(decays)
    for fold in stratified_folds(labels, 5, seed=0):
        rest = torch.ones(100, dtype=torch.bool)
        rest[fold] = False
        fit_features, held_out = standardise(features[rest], features[fold])
        for index, probe in enumerate(fit(fit_features, labels[rest], settings)):
            correct[index] += (probe(held_out).argmax(dim=1) == labels[fold]).sum().item()
    assert [row["validation_top1"] for row in folded.table] == [count / 100 for count in correct]
    assert folded.chosen == settings[max(range(len(decays)), key=lambda index: correct[index])]


def test_unit_norm_rows_centres_and_normalises_each_feature_vector():
    generator = torch.Generator().manual_seed(0)
    train, other = torch.randn(6, 5, generator=generator), torch.randn(3, 5, generator=generator)
    normalised_train, normalised_other = unit_norm_rows(train, other)
    for normalised in (normalised_train, normalised_other):
        torch.testing.assert_close(normalised.mean(dim=1), torch.zeros(len(normalised)), atol=1e-6, rtol=0)
        torch.testing.assert_close(normalised.norm(dim=1), torch.ones(len(normalised)))
    # Per example, unlike standardise: a vector's result depends on that vector only, not on its scale or offset.
    (rescaled,) = unit_norm_rows(3 * other[:1] + 2)
    torch.testing.assert_close(rescaled, normalised_other[:1])


def test_sweep_over_normalisations_is_the_union_of_the_sweeps_of_each():
    """Sweeping two feature normalisations validates every L2 strength under each, exactly as two single sweeps
    would, chooses the best of all, and refits with the chosen normalisation."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    # Class information in two large channels, noise in many small ones: the normalisations disagree.
    signal = 3 * torch.nn.functional.one_hot(labels, 2 + 1)[:, :2].float() + torch.randn(60, 2, generator=generator)
    features = torch.cat([signal, 0.05 * torch.randn(60, 30, generator=generator)], dim=1)
    settings = [{"weight_decay": value} for value in (1e-4, 1e-1, 10.0)]

    def fit(train, train_labels, settings):
        return [fit_logistic_regression(train, train_labels, 3, setting["weight_decay"], 50) for setting in settings]

    def sweep(*normalisations):
        return sweep_and_refit(fit, settings, features, labels, features, 0.2, 0, 5, normalisations)

    both = sweep("standardise", "unit_norm")
    single = {kind: sweep(kind) for kind in ("standardise", "unit_norm")}
    expected = [row | {"features": kind} for kind in single for row in single[kind].table]
    assert both.table == expected
    best = max(range(len(expected)), key=lambda index: expected[index]["validation_top1"])
    assert both.chosen == {key: value for key, value in expected[best].items() if key != "validation_top1"}
    refit = sweep_and_refit(fit, [{"weight_decay": both.chosen["weight_decay"]}], features, labels, features, 0.2, 0,
                            5, (both.chosen["features"],))  # fmt: skip
    torch.testing.assert_close(both.scores, refit.scores)
    assert both.at_edge == sweep_edges(settings, {"weight_decay": both.chosen["weight_decay"]})
    # One normalisation is no choice: the table and the chosen setting do not name it.
    assert "features" not in single["unit_norm"].chosen
    with pytest.raises(ValueError, match="Unknown or no feature normalisations \\['whiten'\\]"):
        sweep("standardise", "whiten")


def test_top_k_accuracy_metric():
    metric = TopKAccuracy()
    scores = [
        [0.1, 0.5, 0.2, 0.0, 0.0, 0.0, 0.1],  # reference 1 ranks first
        [0.9, 0.05, 0.3, 0.2, 0.1, 0.4, 0.6],  # reference 3 ranks fifth
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],  # reference 0 ranks last
    ]
    results = metric.compute(predictions=scores, references=[1, 3, 0])
    assert results == pytest.approx({"top1": 1 / 3, "top5": 2 / 3})
    # Five classes or fewer: top-5 would always be 1, so it is left out. Ties go to the lower class index.
    assert metric.compute(predictions=[[1.0, 1.0], [0.0, 2.0]], references=[1, 1]) == {"top1": 0.5}


def test_knn_weights_votes_by_similarity():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    scores = knn_scores(train, torch.tensor([0, 0, 1]), torch.tensor([[0.0, 2.0], [3.0, 0.1]]), num_classes=2, k=3)
    assert scores.argmax(dim=1).tolist() == [1, 0]
    # The nearest neighbour's vote outweighs two farther ones at a low temperature.
    assert scores[0, 1] > scores[0, 0]


def test_model_card_gets_a_model_index_entry(tmp_path, pretraining_folder):
    folder, _ = pretraining_folder
    prior = "# Tiny I-JEPA\n\nPrior text that must survive.\n"
    ModelCard.from_template(
        ModelCardData(license="apache-2.0", tags=["ijepa"]), template_str="---\n{{ card_data }}\n---\n" + prior
    ).save(folder / "README.md")
    args = cifar_args(folder, tmp_path / "probe", train=100, evaluation=50)
    results = probe_main(args)
    assert results["model_card_updated"] == str(folder / "README.md")

    card = ModelCard.load(folder / "README.md")
    assert "Prior text that must survive." in card.text
    assert card.data.license == "apache-2.0" and card.data.tags == ["ijepa"]
    by_name = {result.metric_name: result for result in card.data.eval_results}
    linear, knn = by_name["Linear probe top-1 accuracy"], by_name["kNN top-1 accuracy (k=20)"]
    assert linear.metric_value == round(results["linear_top1"], 4) and knn.metric_value == round(results["knn_top1"], 4)
    assert (linear.task_type, linear.dataset_type, linear.dataset_split, linear.metric_type) == (
        "image-classification",
        "cifar10",
        "test",
        "accuracy",
    )
    # The card says how much of each split the probe saw, and that two L2 strengths put the choice at an edge.
    assert linear.dataset_name == "cifar10 (test split, 50 of 10,000 images)"
    assert linear.metric_args["training_data"] == "train split, 100 of 50,000 images"
    chosen = results["linear_probe"]["chosen"]["weight_decay"]
    assert linear.metric_args["weight_decay"] == chosen
    assert linear.metric_args["at_sweep_edge"] == (
        f"chosen weight_decay {chosen:g} is the {'lowest' if chosen == 1e-4 else 'highest'} value swept (0.0001 to 0.01)"
    )
    assert "at_sweep_edge" not in knn.metric_args

    probe_main(args)  # a rerun replaces its entries instead of adding more
    assert len(ModelCard.load(folder / "README.md").data.eval_results) == 2
    # Two normalisations of the features: every L2 strength under each, and the card names the one chosen.
    swept = probe_main(args + ["--linear_feature_normalisations", "standardise", "unit_norm"])
    assert [(row["features"], row["weight_decay"]) for row in swept["linear_probe"]["sweep"]] == [
        ("standardise", 1e-4), ("standardise", 1e-2), ("unit_norm", 1e-4), ("unit_norm", 1e-2)
    ]  # fmt: skip
    by_name = {result.metric_name: result for result in ModelCard.load(folder / "README.md").data.eval_results}
    assert by_name["Linear probe top-1 accuracy"].metric_args["features"] == swept["linear_probe"]["chosen"]["features"]
    assert len(by_name) == 2
    before = (folder / "README.md").read_text()
    probe_main(args + ["--no_update_model_card", "--samples_per_class", "2"])
    assert (folder / "README.md").read_text() == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset_name", "/no/such/dataset"], "no such local folder"),
        (["--dataset_name", str(CIFAR10), "--eval_split", "validation"], r"No split `validation`.*\['train', 'test'\]"),
        (["--dataset_name", str(CIFAR10), "--label_column_name", "fine"], "No column `fine`"),
        (["--train_dir", "/no/such/folder"], "is not a folder"),
        (["--subset_seed", "1"], "--subset_seed seeds a low-shot subset"),
    ],
)
def test_clear_errors(tmp_path, pretraining_folder, extra, message):
    if str(CIFAR10) in extra:
        require(CIFAR10)
    folder, _ = pretraining_folder
    with pytest.raises(ValueError, match=message):
        probe_main(["--model_name_or_path", str(folder), "--output_dir", str(tmp_path), *extra])


def test_video_attentive_probe(tmp_path):
    from modeling_ijepa import VJepaConfig, VJepaForPreTraining

    labelled = require(VIDEO_TINY / "labelled")
    # 32x32 frames, 4-frame clips: 2 x 4 x 4 tokens of width 64.
    config = VJepaConfig(image_size=32, num_frames=4, tubelet_size=2, patch_size=8, hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=256, predictor_hidden_size=32,
                         predictor_num_hidden_layers=2)
    VJepaForPreTraining(config).save_pretrained(tmp_path / "vjepa")
    results = probe_main(
        [
            "--modality", "video",
            "--model_name_or_path", str(tmp_path / "vjepa"),
            "--train_dir", str(labelled / "train"),
            "--validation_dir", str(labelled / "test"),
            "--output_dir", str(tmp_path / "probe"),
            "--per_device_eval_batch_size", "8",
            "--attentive_epochs", "20",
            *FAST,
        ]
    )  # fmt: skip
    written = json.loads((tmp_path / "probe" / "probe_results.json").read_text())
    assert written["class_names"] == ["doing_exercises", "typing"]
    assert written["sizes"]["train_used"] == 49 and written["sizes"]["eval"] == 5
    assert len(written["attentive_probe"]["sweep"]) == 9
    for key in ("attentive_top1", "linear_top1", "knn_top1"):
        assert 0.0 <= written[key] <= 1.0
    assert written["attentive_top5"] is None  # two classes
    # Token features are cached per clip: [clips, tokens (2 x 4 x 4), width].
    assert tuple(cached_tensors(results, "eval")["features"].shape) == (5, 32, 64)


def test_mae_encoder_is_probed_on_every_patch_without_its_cls_token(tmp_path):
    """The quality benchmark probes an MAE encoder the same way: masking off, CLS token left out of the pool."""
    from transformers import ViTMAEConfig, ViTMAEModel

    config = ViTMAEConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, mask_ratio=0.75)
    ViTMAEModel(config).save_pretrained(tmp_path / "mae")
    results = probe_main(["--model_name_or_path", str(tmp_path / "mae"), "--output_dir", str(tmp_path / "out"), *FAST])
    assert results["features"]["dim"] == 32 and results["linear_top1"] > 0.3
    from modeling_ijepa.evaluation.arguments import parse_args
    from modeling_ijepa.evaluation.encoders import load_encoder

    assert load_encoder(parse_args(["--model_name_or_path", str(tmp_path / "mae")])).config.mask_ratio == 0.0


def test_split_description():
    assert split_description("test", 2000, 10_000, "image") == "test split, 2,000 of 10,000 images"
    assert split_description("validation", 360, 360, "image") == "validation split, 360 images"
    assert split_description("test", 1, 1, "video") == "test split, 1 video"


def test_sweep_edges():
    settings = [{"weight_decay": value} for value in (1e-2, 1e-4, 1e-3)]
    assert sweep_edges(settings, {"weight_decay": 1e-4}) == {"weight_decay": "lowest"}
    assert sweep_edges(settings, {"weight_decay": 1e-2}) == {"weight_decay": "highest"}
    assert sweep_edges(settings, {"weight_decay": 1e-3}) == {}
    assert sweep_edges(settings[:1], {"weight_decay": 1e-2}) == {}  # a single value is no sweep
    grid = [{"learning_rate": lr, "weight_decay": wd} for lr in (1e-3, 1e-2) for wd in (1e-3, 1e-2, 1e-1)]
    assert sweep_edges(grid, {"learning_rate": 1e-2, "weight_decay": 1e-2}) == {"learning_rate": "highest"}


def test_probe_warns_when_the_chosen_l2_strength_is_at_the_edge_of_the_sweep(caplog):
    # Two well separated classes: every L2 strength classifies the held-out examples perfectly, and the tie goes to
    # the first one swept, the lowest.
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    features = torch.randn(40, 8, generator=generator) + 4 * labels[:, None].float()
    data = LabelledFeatures(features, labels)
    args = parse_args(["--model_name_or_path", "unused", "--linear_max_iter", "20",
                       "--linear_weight_decays", "1e-4", "1e-2", "1e-1"])  # fmt: skip
    with caplog.at_level("WARNING", logger="modeling_ijepa.evaluation.linear_probe"):
        results = run_probes(data, data, 2, args, "cpu")

    assert results["linear_probe"]["chosen"] == {"weight_decay": 1e-4}
    assert results["linear_probe"]["at_sweep_edge"] == {"weight_decay": "lowest"}
    (warning,) = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warning.endswith(
        "The linear probe's chosen weight_decay 0.0001 is the lowest value swept (0.0001 to 0.1): the best value may "
        "lie beyond the sweep; widen --linear_weight_decays."
    )

    args.linear_weight_decays = [1e-2]
    caplog.clear()
    with caplog.at_level("WARNING", logger="modeling_ijepa.evaluation.linear_probe"):
        assert run_probes(data, data, 2, args, "cpu")["linear_probe"]["at_sweep_edge"] == {}
    assert not caplog.records


def test_the_pretraining_probe_loads_its_data_once_for_both_encoders(tmp_path, pretraining_folder, monkeypatch):
    """The end-of-pretraining probe reads the dataset once, and each encoder's results are those of the probe
    command run alone on the same arguments (which loads the data itself)."""
    import argparse

    from accelerate import Accelerator

    from modeling_ijepa.data import images
    from modeling_ijepa.evaluation import pretraining_probe, splits

    folder, _ = pretraining_folder
    loads = []

    def counted_load(*args, **kwargs):
        loads.append(args)
        return images.load_image_dataset(*args, **kwargs)

    args = argparse.Namespace(
        dataset_name=None, dataset_config_name=None, train_dir=None, cache_dir=None, image_column_name=None,
        train_split="train", probe_label_column_name=None, probe_eval_split=None, probe_max_train_samples=200,
        probe_max_eval_samples=100, probe_feature_layers=1, seed=0,
    )  # fmt: skip
    with monkeypatch.context() as patch:
        patch.setattr(pretraining_probe, "load_image_dataset", counted_load)
        patch.setattr(splits, "load_image_dataset", counted_load)
        summary = pretraining_probe.probe_against_random_init(args, Accelerator(), folder)
    assert len(loads) == 1
    assert summary["eval_data"] == "test split, 100 of 360 images"

    for encoder, random_init in (("pretrained", False), ("random_init", True)):
        argv = pretraining_probe.probe_arguments(args, folder, "train", "test", random_init)
        alone = probe_main(argv[: argv.index("--output_dir")] + argv[argv.index("--output_dir") + 2:]
                           + ["--output_dir", str(tmp_path / encoder)])  # fmt: skip
        assert summary[f"{encoder}_linear_top1"] == alone["linear_top1"]
        assert summary[f"{encoder}_knn_top1"] == alone["knn_top1"]
        shared = json.loads((folder / "probe" / encoder / "probe_results.json").read_text())
        for key in ("linear_probe", "sizes", "train_data", "eval_data", "dataset", "class_names"):
            assert shared[key] == alone[key], key
        assert [Path(path).name for path in shared["features"]["cache_files"].values()] == [
            Path(path).name for path in alone["features"]["cache_files"].values()
        ]
