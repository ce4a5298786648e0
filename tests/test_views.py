# SPDX-License-Identifier: Apache-2.0
"""Several crops of each image in a step (`--num_views`) and the invariance term between them
(`--view_invariance_weight`): the same crops on both data paths and on any number of processes, the term as
defined, and a run that trains with them."""

import json

import pytest
import torch
import torch.nn.functional as F
from datasets import load_dataset
from torch.utils.data import default_collate

import run_pretraining
from modeling_ijepa import IJepaConfig, IJepaForPreTraining, MultiBlockMaskCollator
from modeling_ijepa.data.examples import GlobalBatchMaskCollate, SeededExamples
from modeling_ijepa.data.images import find_image_column, prepare_image_dataset, pretraining_transform
from modeling_ijepa.data.in_memory import InMemoryImages, decode_images, pixel_values_of
from modeling_ijepa.modeling_ijepa import view_invariance_loss

from .conftest import CIFAR10, require
from .test_in_memory_images import ONE_LEVEL
from .test_run_pretraining import cifar_args


@pytest.fixture(scope="module")
def cifar():
    train = load_dataset(str(require(CIFAR10)))["train"].select(range(48))
    image_column = find_image_column(train)
    return train, image_column, decode_images(train, image_column, size=32, max_bytes=2**30)


def test_both_data_paths_make_the_same_crops_of_each_image(cifar):
    train, image_column, images = cifar
    transform = pretraining_transform(32, flip_probability=0.5, num_views=3)
    per_example = SeededExamples(prepare_image_dataset(train, image_column, transform), seed=4)
    in_memory = InMemoryImages(images, seed=4, flip_probability=0.5, num_views=3)
    per_example.set_epoch(2)
    in_memory.set_epoch(2)
    indices = [0, 5, 17, 40]
    expected = pixel_values_of(default_collate([per_example[index] for index in indices]), 32)["pixel_values"]
    made = pixel_values_of(default_collate([in_memory[index] for index in indices]), 32)["pixel_values"]
    assert made.shape == expected.shape == (12, 3, 32, 32)  # image i's 3 crops at rows 3i, 3i + 1, 3i + 2
    assert (made - expected).abs().max() <= ONE_LEVEL * 1.01
    # The crops of one image differ, and its first crop is the one a single-view run draws.
    assert not torch.allclose(made[0], made[1])
    single = InMemoryImages(images, seed=4, flip_probability=0.5)
    single.set_epoch(2)
    first = pixel_values_of(default_collate([single[index] for index in indices]), 32)["pixel_values"]
    torch.testing.assert_close(made[::3], first)


def test_two_processes_see_the_crops_and_masks_of_one(cifar):
    images = cifar[2]
    dataset = InMemoryImages(images, seed=0, num_views=2)
    global_batch = list(range(8))

    def process_batch(num_processes, process_index):
        collate = GlobalBatchMaskCollate(MultiBlockMaskCollator(32, 4, min_context_patches=4, seed=0),
                                         8 // num_processes, num_processes, process_index, num_views=2)
        share = len(global_batch) // num_processes
        examples = [dataset[index] for index in global_batch[process_index * share : (process_index + 1) * share]]
        return pixel_values_of(collate(examples), 32)

    one = process_batch(1, 0)
    assert one["pixel_values"].shape[0] == one["context_indices"].shape[0] == one["target_indices"].shape[0] == 16
    halves = [process_batch(2, index) for index in range(2)]
    for key in ("pixel_values", "context_indices", "target_indices"):
        torch.testing.assert_close(torch.cat([half[key] for half in halves]), one[key], atol=1e-6, rtol=0)


def test_the_invariance_term_is_the_squared_distance_between_mean_context_tokens():
    hidden = torch.randn(12, 5, 8)  # 3 images x 2 crops x 2 mask draws, 5 context tokens of width 8
    pooled = hidden.mean(dim=1).view(3, 2, 2, 8).mean(dim=2)  # per crop, its draws averaged
    torch.testing.assert_close(view_invariance_loss(hidden, num_views=2, num_draws=2),
                               F.mse_loss(pooled[:, 0], pooled[:, 1]))
    # Three crops: the mean over the three pairs.
    hidden = torch.randn(6, 5, 8)
    pooled = hidden.mean(dim=1).view(2, 3, 8)
    pairs = [F.mse_loss(pooled[:, a], pooled[:, b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    torch.testing.assert_close(view_invariance_loss(hidden, num_views=3), torch.stack(pairs).mean())
    # Crops of one image with the same mean token cost nothing.
    same = torch.randn(2, 1, 5, 8).expand(2, 2, 5, 8).reshape(4, 5, 8)
    assert view_invariance_loss(same, num_views=2) == 0


def views_config(config, weight=0.5, num_views=2):
    return IJepaConfig.from_dict({**config.to_dict(), "num_views": num_views, "view_invariance_weight": weight})


def test_the_invariance_term_adds_to_the_loss_and_trains_the_context_encoder(tiny_ijepa_config):
    model = IJepaForPreTraining(views_config(tiny_ijepa_config)).train()
    generator = torch.Generator().manual_seed(0)
    collator = MultiBlockMaskCollator(32, 4, min_context_patches=4, seed=0)
    context, target = collator.sample_indices(4)  # 2 images x 2 crops
    pixel_values = torch.randn(4, 3, 32, 32, generator=generator)
    output = model(pixel_values, context, target)
    expected = 0.5 * view_invariance_loss(output.context_hidden_states, num_views=2)
    assert expected > 0
    torch.testing.assert_close(output.regularisation_loss, expected)
    torch.testing.assert_close(output.loss, output.prediction_loss + output.regularisation_loss)
    model.config.view_invariance_weight = 0.0
    torch.testing.assert_close(model(pixel_values, context, target).loss, output.prediction_loss)
    output.regularisation_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.context_encoder.layers.parameters())
    assert all(p.grad is None for p in model.predictor.parameters())
    assert all(p.grad is None for p in model.target_encoder.parameters())


def test_the_invariance_term_needs_whole_images_and_several_views(tiny_ijepa_config):
    model = IJepaForPreTraining(views_config(tiny_ijepa_config, num_views=2))
    context, target = MultiBlockMaskCollator(32, 4, min_context_patches=4, seed=0).sample_indices(3)
    with pytest.raises(ValueError, match="`pixel_values` has 3 rows, not a multiple of `config.num_views` 2"):
        model(torch.randn(3, 3, 32, 32), context, target)
    with pytest.raises(ValueError, match="`view_invariance_weight` 0.5 needs `num_views` >= 2"):
        views_config(tiny_ijepa_config, num_views=1)
    with pytest.raises(ValueError, match="`num_views` must be >= 1"):
        views_config(tiny_ijepa_config, weight=0.0, num_views=0)


@pytest.mark.parametrize("path", [[], ["--in_memory_data"]])
def test_a_run_with_two_views_trains_and_counts_images(tmp_path, path):
    state = run_pretraining.main(cifar_args(tmp_path, *path, "--num_views", "2", "--view_invariance_weight", "1.0",
                                            "--per_device_train_batch_size", "8", "--max_train_steps", "3"))
    assert state["global_step"] == 3 and state["images_seen"] == 24  # images, not crops
    log = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert all(entry["regularisation_loss"] > 0 for entry in log)  # the invariance term, with no other regulariser
    config = IJepaForPreTraining.from_pretrained(tmp_path / "pretraining").config
    assert (config.num_views, config.view_invariance_weight) == (2, 1.0)


@pytest.mark.parametrize("extra, message", [
    (["--view_invariance_weight", "1.0"], "--view_invariance_weight 1.0 compares the crops of each image: it needs "
                                          "--num_views 2 or more, got 1"),
    (["--num_views", "0"], "--num_views must be >= 1"),
    (["--view_invariance_weight", "-1", "--num_views", "2"], "--view_invariance_weight must be >= 0"),
    (["--num_views", "2", "--modality", "video"], "--num_views is an image"),
])
def test_bad_view_arguments_are_refused(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        run_pretraining.main(cifar_args(tmp_path, *extra))


def test_the_mae_baseline_refuses_several_views():
    from benchmarks import mae_pretraining

    with pytest.raises(ValueError, match="--num_views 2: several crops of an image are for I-JEPA's invariance term"):
        mae_pretraining.parse_args(["--num_views", "2", "--max_train_steps", "1"])
