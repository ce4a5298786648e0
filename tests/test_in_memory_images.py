# SPDX-License-Identifier: Apache-2.0
"""The in-memory image path: decoding once under a memory limit, per-example crops seeded by (seed, epoch,
index), and batch crops that match torchvision's."""

import io
import json
import logging
import re
import shutil

import pytest
import torch
from datasets import Dataset, Image, load_dataset
from safetensors.torch import load_file
from torch.utils.data import DataLoader, default_collate
from torchvision.transforms import v2
from transformers import AutoModel
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import run_pretraining
from modeling_ijepa import IJepaForPreTraining, MultiBlockMaskCollator
from modeling_ijepa.data import in_memory as in_memory_images
from modeling_ijepa.data.examples import GlobalBatchMaskCollate, SeededExamples
from modeling_ijepa.data.images import find_image_column, prepare_image_dataset, pretraining_transform
from modeling_ijepa.data.in_memory import InMemoryImages, InMemoryLimitExceeded, decode_images, resized_crops

from .conftest import CIFAR10, require
from .test_run_pretraining import assert_same_weights, cifar_args, launch

# One level of 255 after normalisation by the smallest ImageNet std: the per-example path rounds resized pixels to
# uint8, this one does not.
ONE_LEVEL = 1 / 255 / min(IMAGENET_DEFAULT_STD)


@pytest.fixture(scope="module")
def cifar():
    train = load_dataset(str(require(CIFAR10)))["train"].select(range(96))
    return train, find_image_column(train)


@pytest.fixture(scope="module")
def cifar_images(cifar):
    train, image_column = cifar
    return decode_images(train, image_column, size=32, max_bytes=2**30)


def collated(dataset, indices):
    return default_collate([dataset[index] for index in indices])


def batch_pixels(dataset, indices, size):
    batch = collated(dataset, indices)
    return resized_crops(batch["images"], batch["crop_boxes"], batch["flips"], size)


def test_decoding_keeps_every_image_as_stored(cifar, cifar_images):
    train, image_column = cifar
    assert cifar_images.shape == (96, 3, 32, 32) and cifar_images.dtype == torch.uint8
    assert torch.equal(cifar_images[5], v2.functional.pil_to_tensor(train[5][image_column].convert("RGB")))


@pytest.mark.parametrize("image_size, flip", [(32, 0.0), (56, 0.0), (20, 0.0), (32, 0.5)])  # 20 shrinks most crops
def test_same_crops_and_pixels_as_the_per_example_path(cifar, cifar_images, image_size, flip):
    train, image_column = cifar
    transform = pretraining_transform(image_size, flip_probability=flip)
    per_example = SeededExamples(prepare_image_dataset(train, image_column, transform), seed=7)
    in_memory = InMemoryImages(cifar_images, seed=7, flip_probability=flip)
    per_example.set_epoch(3)
    in_memory.set_epoch(3)
    indices = [0, 1, 17, 42, 95]
    expected = torch.stack([per_example[index]["pixel_values"] for index in indices])
    pixel_values = batch_pixels(in_memory, indices, image_size)
    assert pixel_values.shape == expected.shape == (5, 3, image_size, image_size)
    assert (pixel_values - expected).abs().max() <= ONE_LEVEL * 1.01


class TorchvisionBoxes(torch.utils.data.Dataset):
    """The box that torchvision's RandomResizedCrop draws for each image, from the global RNG."""

    def __init__(self, images, scale, ratio):
        self.images, self.crop = images, v2.RandomResizedCrop(1, scale=scale, ratio=ratio)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        box = self.crop.make_params([self.images[index]])
        return box["top"], box["left"], box["height"], box["width"]


# The default crop, small crops, and aspect ratios that most tries miss on a square image (10 misses: the fallback).
@pytest.mark.parametrize("scale, ratio", [((0.3, 1.0), (3 / 4, 4 / 3)), ((0.08, 0.2), (0.5, 2.0)),
                                          ((0.6, 1.0), (1.6, 3.0)), ((0.9, 1.0), (0.2, 0.3))])
@pytest.mark.parametrize("shape", [(32, 32), (7, 50)])
def test_crop_boxes_are_torchvisions_under_the_same_seed(scale, ratio, shape):
    images = torch.zeros(300, 3, *shape, dtype=torch.uint8)
    expected = SeededExamples(TorchvisionBoxes(images, scale, ratio), seed=5)
    in_memory = InMemoryImages(images, seed=5, scale=scale, ratio=ratio)
    expected.set_epoch(4)
    in_memory.set_epoch(4)
    assert [expected[index] for index in range(300)] == [tuple(in_memory[index]["crop_boxes"].tolist())
                                                          for index in range(300)]


@pytest.mark.parametrize("box", [(3, 5, 20, 24), (0, 0, 32, 32), (10, 2, 22, 9), (31, 31, 1, 1)])
@pytest.mark.parametrize("size", [48, 16])
def test_a_fixed_box_gives_torchvision_float_resized_crop(cifar_images, box, size):
    images = cifar_images[:4]
    flips = torch.tensor([False, True, False, True])
    pixel_values = resized_crops(images, torch.tensor([box] * 4), flips, size)
    normalise = v2.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    for image, flip, result in zip(images, flips, pixel_values):
        crop = v2.functional.resized_crop(image.float() / 255, *box, [size, size], antialias=True)
        expected = normalise(v2.functional.horizontal_flip(crop) if flip else crop)
        torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)


def test_the_crop_of_an_example_depends_only_on_seed_epoch_and_index(cifar_images):
    dataset = InMemoryImages(cifar_images, seed=0, flip_probability=0.5)
    dataset.set_epoch(2)
    alone = batch_pixels(dataset, [40], 32)
    for batch in ([40, 3, 9], [70, 40], [1, 2, 3, 4, 5, 6, 7, 40]):
        row = batch.index(40)
        torch.testing.assert_close(batch_pixels(dataset, batch, 32)[row : row + 1], alone, atol=1e-6, rtol=0)
    other_seed = InMemoryImages(cifar_images, seed=1, flip_probability=0.5)
    other_seed.set_epoch(2)
    assert not torch.equal(batch_pixels(other_seed, [40], 32), alone)


def test_each_epoch_draws_other_crops_and_repeats_them_when_run_again(cifar_images):
    dataset = InMemoryImages(cifar_images, seed=0)
    indices = list(range(32))
    boxes = {}
    for epoch in (0, 1, 0):
        dataset.set_epoch(epoch)
        boxes.setdefault(epoch, []).append(collated(dataset, indices)["crop_boxes"])
    assert torch.equal(boxes[0][0], boxes[0][1])
    assert (boxes[0][0] != boxes[1][0]).any(dim=1).float().mean() > 0.9


def test_batches_do_not_depend_on_the_number_of_workers(cifar_images):
    def batches(num_workers):
        collate = GlobalBatchMaskCollate(MultiBlockMaskCollator(32, 4, min_context_patches=10, seed=0), 16)
        dataset = InMemoryImages(cifar_images, seed=0, flip_probability=0.5)
        dataset.set_epoch(1)
        collate.set_epoch(1)
        loader = DataLoader(dataset, batch_size=16, shuffle=True, drop_last=True, collate_fn=collate,
                            num_workers=num_workers, generator=torch.Generator().manual_seed(0))
        return list(loader)

    for serial, parallel in zip(batches(0), batches(2), strict=True):
        assert serial.keys() == parallel.keys() == {"images", "crop_boxes", "flips", "context_indices",
                                                    "target_indices"}
        assert all(torch.equal(serial[key], parallel[key]) for key in serial)


def test_flips_mirror_the_same_crops(cifar_images):
    indices = list(range(64))
    unflipped = InMemoryImages(cifar_images, seed=0, flip_probability=0.0)
    flipped = InMemoryImages(cifar_images, seed=0, flip_probability=1.0)
    # The flip is drawn after the box, so the boxes are the same.
    torch.testing.assert_close(batch_pixels(flipped, indices, 32), batch_pixels(unflipped, indices, 32).flip(-1))
    half = collated(InMemoryImages(cifar_images, seed=0, flip_probability=0.5), indices)["flips"]
    assert 16 <= half.sum() <= 48


def test_output_is_normalised_float_pixels(cifar_images):
    dataset = InMemoryImages(cifar_images, seed=0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    pixel_values = batch_pixels(dataset, list(range(96)), 32)
    assert pixel_values.dtype == torch.float32 and pixel_values.shape == (96, 3, 32, 32)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    # A crop of the whole image is the image: its statistics are those of the normalised stored pixels.
    expected = (cifar_images.float() / 255 - mean) / std
    torch.testing.assert_close(pixel_values.mean(dim=(0, 2, 3)), expected.mean(dim=(0, 2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(pixel_values.std(dim=(0, 2, 3)), expected.std(dim=(0, 2, 3)), atol=1e-4, rtol=0)


def test_the_memory_limit_refuses_before_decoding(cifar, monkeypatch):
    train, image_column = cifar
    needed = 96 * 3 * 32 * 32

    def no_decoding(cell):
        raise AssertionError("decoded an image although the data set is over the limit")

    monkeypatch.setattr(in_memory_images, "decode_image", no_decoding)
    with pytest.raises(InMemoryLimitExceeded, match=r"96 images of 3x32x32 \(uint8\) need 0\.00 GiB .* limit of"):
        decode_images(train, image_column, size=32, max_bytes=needed - 1)
    monkeypatch.undo()
    assert decode_images(train, image_column, size=32, max_bytes=needed).shape == (96, 3, 32, 32)


def test_images_of_mixed_sizes_are_resized_once_and_unreadable_ones_dropped(cifar, caplog):
    train, image_column = cifar
    images = [train[index][image_column] for index in range(3)]
    mixed = [images[0].resize((40, 30)), images[1].convert("L"), images[2].resize((64, 64)).convert("RGBA")]
    cells = []
    for image in mixed:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        cells.append({"bytes": buffer.getvalue(), "path": None})
    cells.insert(1, {"bytes": b"not an image", "path": None})
    dataset = Dataset.from_dict({"image": cells}).cast_column("image", Image(decode=False))
    with caplog.at_level(logging.WARNING):
        decoded = decode_images(dataset, "image", size=24, max_bytes=2**20)
    assert decoded.shape == (3, 3, 24, 24)
    assert "Skipped 1 unreadable images of 4" in caplog.text
    # Shorter side to 24, then the centre: the 40x30 image becomes 32x24 and loses 4 columns on each side.
    expected = v2.functional.pil_to_tensor(v2.functional.center_crop(v2.functional.resize(mixed[0], 24), 24))
    assert torch.equal(decoded[0], expected)
    # Grayscale is stored as RGB with equal channels.
    assert torch.equal(decoded[1][0], decoded[1][2])


def test_a_data_set_of_one_size_keeps_it_whatever_the_size_argument(cifar):
    train, image_column = cifar
    assert decode_images(train.select(range(4)), image_column, size=224, max_bytes=2**20).shape == (4, 3, 32, 32)


def test_rejects_images_that_are_not_uint8_rgb():
    with pytest.raises(ValueError, match="uint8 images of shape"):
        InMemoryImages(torch.zeros(2, 3, 8, 8), seed=0)
    with pytest.raises(ValueError, match="uint8 images of shape"):
        InMemoryImages(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_batch_crop_runs_on_the_gpu_as_on_the_cpu(cifar_images):
    dataset = InMemoryImages(cifar_images, seed=0, flip_probability=0.5)
    batch = collated(dataset, list(range(64)))
    on_cpu = resized_crops(batch["images"], batch["crop_boxes"], batch["flips"], 224)
    on_gpu = resized_crops(*(batch[key].cuda() for key in ("images", "crop_boxes", "flips")), 224)
    # Where float32 matmuls run in TF32, pixels differ by about 1e-3.
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=5e-3, rtol=0)


def test_two_processes_see_the_batch_of_one(cifar_images):
    """Accelerate gives each of 2 processes half of the global batch; together they see the 1-process batch."""
    dataset = InMemoryImages(cifar_images, seed=0, flip_probability=0.5)
    global_batch = torch.randperm(96, generator=torch.Generator().manual_seed(0))[:16].tolist()

    def process_batch(num_processes, process_index):
        collate = GlobalBatchMaskCollate(MultiBlockMaskCollator(32, 4, min_context_patches=10, seed=0),
                                         16 // num_processes, num_processes, process_index)
        share = len(global_batch) // num_processes
        batch = collate([dataset[index] for index in global_batch[process_index * share : (process_index + 1) * share]])
        batch["pixel_values"] = resized_crops(batch.pop("images"), batch.pop("crop_boxes"), batch.pop("flips"), 32)
        return batch

    one = process_batch(1, 0)
    halves = [process_batch(2, index) for index in range(2)]
    for key in ("pixel_values", "context_indices", "target_indices"):
        torch.testing.assert_close(torch.cat([half[key] for half in halves]), one[key], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ run_pretraining --in_memory_data


def test_an_in_memory_run_trains_and_exports(tmp_path):
    state = run_pretraining.main(cifar_args(tmp_path, "--in_memory_data", "--horizontal_flip", "0.5",
                                            "--max_train_steps", "3"))
    assert state["global_step"] == 3 and state["images_seen"] == 48
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in state["log_history"])
    encoder = AutoModel.from_pretrained(tmp_path)
    trained = IJepaForPreTraining.from_pretrained(tmp_path / "pretraining")
    for name, value in trained.target_encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[name], value), name
    assert "data_path: in-memory" in (tmp_path / "README.md").read_text()


def test_a_resumed_in_memory_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    # 4 batches per epoch: 6 steps cross an epoch, and checkpoint 2 is mid-epoch.
    args = ["--in_memory_data", "--horizontal_flip", "0.5", "--max_train_steps", "6", "--checkpointing_steps", "2",
            "--checkpoints_total_limit", "5"]
    run_pretraining.main(cifar_args(tmp_path / "full", *args))
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    state = run_pretraining.main(cifar_args(tmp_path / "resumed", *args, "--resume_from_checkpoint", "latest"))
    assert state["global_step"] == 6
    assert_same_weights(tmp_path / "resumed" / "pretraining", tmp_path / "full" / "pretraining")


def test_two_in_memory_processes_match_one(tmp_path):
    launch(tmp_path / "two", 2, 8, tmp_path / "out2", "--in_memory_data", "--horizontal_flip", "0.5")
    launch(tmp_path / "one", 1, 16, tmp_path / "out1", "--in_memory_data", "--horizontal_flip", "0.5")
    assert json.loads((tmp_path / "two" / "rank0.json").read_text()) == json.loads(
        (tmp_path / "two" / "rank1.json").read_text())
    two = load_file(tmp_path / "two" / "rank0.safetensors")
    one = load_file(tmp_path / "one" / "rank0.safetensors")
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, atol=2e-5, rtol=1e-4, msg=name)


def test_over_the_memory_limit_the_run_says_so_and_trains_per_example(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        state = run_pretraining.main(cifar_args(tmp_path, "--in_memory_data", "--max_in_memory_gib", "1e-6",
                                                "--max_train_steps", "2"))
    assert state["global_step"] == 2
    assert re.search(r"--in_memory_data: 64 images of 3x32x32 \(uint8\) need 0\.00 GiB in memory, above the in-memory "
                     r"limit of 0\.00 GiB\. Using the per-example path instead\.", caplog.text)
    assert "data_path: per-example (over the in-memory limit)" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--horizontal_flip", "1.5"], "--horizontal_flip is a probability"),
    (["--max_in_memory_gib", "0"], "--max_in_memory_gib must be positive"),
    (["--in_memory_data", "--modality", "video"], "--in_memory_data applies to images"),
])
def test_bad_in_memory_arguments_are_refused(extra, message):
    with pytest.raises(ValueError, match=message):
        run_pretraining.parse_args(extra)
