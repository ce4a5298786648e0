# SPDX-License-Identifier: Apache-2.0
"""Streamed pretraining data (`--streaming`) on local parquet and webdataset shards of real CIFAR-10: exact resume
from a JSON state, disjoint shares across processes, a shuffle buffer that shuffles, batches that do not depend on the
number of DataLoader workers, and clear errors for bad input."""

import dataclasses
import io
import itertools
import json
import shutil
import tarfile
import threading
from argparse import Namespace
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset, Features, Image, Value, load_dataset

from modeling_ijepa import MultiBlockMaskCollator
from modeling_ijepa.data.examples import GlobalBatchMaskCollate, SeededExamples
from modeling_ijepa.data.images import SkipUnreadable, prepare_image_dataset, pretraining_transform
from modeling_ijepa.data.streaming import (
    STREAM_STATE_KEY,
    StreamedImages,
    StreamingDataLoader,
    build_streaming_training_data,
    check_streaming_arguments,
    load_streaming_images,
    write_parquet_shards,
)

from .conftest import CIFAR10, require

IMAGE_SIZE, PATCH_SIZE, BATCH, BUFFER, SEED = 16, 4, 8, 40, 0
NUM_IMAGES = 96  # 12 batches per data epoch; windows of 40 rows end at 40, 80 and 96
NUM_BATCHES = 30  # two and a half data epochs


@pytest.fixture(scope="module")
def cifar():
    return load_dataset(str(require(CIFAR10)))["train"].select(range(NUM_IMAGES))


@pytest.fixture(scope="module")
def shards(cifar, tmp_path_factory):
    """Folders of 4 and of 3 parquet shards of the same 96 images (4 split by shards over 2 processes, 3 by
    examples)."""
    folders = {}
    for num_shards in (4, 3):
        folders[num_shards] = tmp_path_factory.mktemp(f"parquet{num_shards}")
        write_parquet_shards(cifar, folders[num_shards], num_shards, seed=SEED)
    return folders


def make_loader(folder, rank=0, world_size=1, num_workers=0, buffer_size=BUFFER, seed=SEED):
    examples = load_streaming_images(str(folder), seed=seed, buffer_size=buffer_size, rank=rank, world_size=world_size)
    masks = MultiBlockMaskCollator(IMAGE_SIZE, PATCH_SIZE, min_context_patches=2, seed=seed)
    collate = SkipUnreadable(GlobalBatchMaskCollate(masks, BATCH, world_size, rank))
    images = StreamedImages(pretraining_transform(IMAGE_SIZE), seed)
    return StreamingDataLoader(examples, images, collate, BATCH, num_workers=num_workers)


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def assert_same_batches(expected, actual):
    assert len(expected) == len(actual)
    for index, (a, b) in enumerate(zip(expected, actual)):
        assert a.keys() == b.keys(), index
        for key in ("pixel_values", "context_indices", "target_indices"):
            assert torch.equal(a[key], b[key]), (index, key)
        assert a["num_skipped"] == b["num_skipped"] == 0


def stream_keys(examples, epoch=0):
    """The raw bytes of one data epoch's images, in stream order."""
    examples.set_epoch(epoch)
    return [cell["bytes"] for _, _, cell in itertools.takewhile(lambda item: item[0] == epoch, examples)]


@pytest.fixture(scope="module")
def uninterrupted(shards):
    """The first batches of rank 0 of 1 on 4 shards, and of rank 1 of 2 on 3 shards, keyed by (shards, rank, world)."""
    return {(num_shards, rank, world_size): take(make_loader(shards[num_shards], rank, world_size), NUM_BATCHES)
            for num_shards, rank, world_size in [(4, 0, 1), (3, 1, 2)]}


@pytest.mark.parametrize("num_shards, rank, world_size, stop", [
    (4, 0, 1, 5),   # at a window's end
    (4, 0, 1, 12),  # at a data epoch's end
    (4, 0, 1, 17),  # inside a window of the second data epoch
    (3, 1, 2, 7),   # one example in two per process, over the end of the first data epoch
])
def test_resumed_stream_yields_the_batches_of_an_uninterrupted_one(shards, uninterrupted, num_shards, rank,
                                                                   world_size, stop):
    expected = uninterrupted[(num_shards, rank, world_size)]
    loader = make_loader(shards[num_shards], rank, world_size)
    first = take(loader, stop)
    # The state travels through trainer_state.json; the resumed run rebuilds everything from scratch.
    state = json.loads(json.dumps(loader.state_dict()))
    assert state["batches"] == stop
    resumed = make_loader(shards[num_shards], rank, world_size)
    resumed.load_state_dict(state)
    assert_same_batches(expected, first + take(resumed, NUM_BATCHES - stop))


def test_iterating_again_continues_after_the_last_batch_received(shards, uninterrupted):
    loader = make_loader(shards[4])
    # DataLoader and the stream's read-ahead thread both run ahead of the batches the caller took.
    batches = take(loader, 3) + take(loader, 4)
    assert_same_batches(uninterrupted[(4, 0, 1)][:7], batches)
    # An iterator left behind stops its read-ahead thread.
    assert not [thread for thread in threading.enumerate() if thread.name == "stream-read-ahead"]


def test_batches_do_not_depend_on_the_number_of_workers(shards, uninterrupted):
    assert_same_batches(uninterrupted[(4, 0, 1)][:14], take(make_loader(shards[4], num_workers=2), 14))


@pytest.mark.parametrize("num_shards", [4, 3])
def test_two_processes_see_disjoint_examples(cifar, shards, num_shards):
    shares = [stream_keys(load_streaming_images(str(shards[num_shards]), buffer_size=BUFFER, rank=rank, world_size=2))
              for rank in (0, 1)]
    assert not set(shares[0]) & set(shares[1])
    everything = [cell["bytes"] for cell in cifar.cast_column("img", Image(decode=False))["img"]]
    assert sorted(shares[0] + shares[1]) == sorted(everything)


def test_masks_of_a_global_batch_are_the_same_on_every_process(shards):
    # Two processes keep their rows of the masks that one process with their global batch (16) would draw.
    masks = MultiBlockMaskCollator(IMAGE_SIZE, PATCH_SIZE, min_context_patches=2, seed=SEED)
    context, _ = masks.sample_indices(2 * BATCH)
    rows = [take(make_loader(shards[4], rank, 2), 1)[0]["context_indices"] for rank in (0, 1)]
    assert torch.equal(torch.cat(rows), context)


def test_shuffle_buffer_shuffles_within_windows(shards):
    folder = str(shards[4])
    file_order = stream_keys(load_streaming_images(folder, buffer_size=1))
    examples = load_streaming_images(folder, buffer_size=BUFFER, seed=SEED)
    order = stream_keys(examples)
    assert order != file_order
    for start in range(0, NUM_IMAGES, BUFFER):  # each window is a permutation of the rows it was filled with
        assert sorted(order[start:start + BUFFER]) == sorted(file_order[start:start + BUFFER])
    assert stream_keys(examples, epoch=1) != order
    assert stream_keys(load_streaming_images(folder, buffer_size=BUFFER, seed=SEED + 1)) != order


def test_streamed_examples_get_the_transform_of_the_map_style_path(cifar, shards):
    # Without shuffling, position i of the first data epoch is row i of the shards, i.e. of the shuffled dataset.
    batch = take(make_loader(shards[4], buffer_size=1), 1)[0]
    transform = pretraining_transform(IMAGE_SIZE)
    mapped = SeededExamples(prepare_image_dataset(cifar.shuffle(seed=SEED), "img", transform), SEED)
    mapped.set_epoch(0)
    expected = torch.stack([mapped[index]["pixel_values"] for index in range(BATCH)])
    assert torch.equal(batch["pixel_values"], expected)


def test_unreadable_images_are_skipped_and_counted(cifar, tmp_path):
    cells = cifar.cast_column("img", Image(decode=False))["img"][:16]
    for index in (2, 9, 10):
        cells[index] = {"bytes": b"not an image", "path": None}
    broken = Dataset.from_dict({"img": cells}, features=Features({"img": Image(decode=False)}))
    write_parquet_shards(broken, tmp_path, 1, seed=None)
    batches = take(make_loader(tmp_path, buffer_size=1), 2)
    assert [batch["num_skipped"] for batch in batches] == [1, 2]
    assert [len(batch["pixel_values"]) for batch in batches] == [7, 6]
    assert [len(batch["context_indices"]) for batch in batches] == [7, 6]


def write_webdataset(cifar, folder, num_shards=2):
    """Tar shards with `{key}.png` and `{key}.cls` files, the webdataset layout datasets reads."""
    cells = cifar.cast_column("img", Image(decode=False))["img"]
    per_shard = len(cells) // num_shards
    for shard in range(num_shards):
        with tarfile.open(folder / f"train-{shard:05d}.tar", "w") as tar:
            for index in range(shard * per_shard, (shard + 1) * per_shard):
                for suffix, payload in (("png", cells[index]["bytes"]), ("cls", str(cifar[index]["label"]).encode())):
                    info = tarfile.TarInfo(f"{index:06d}.{suffix}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))


def test_webdataset_shards_load_and_resume(cifar, tmp_path):
    write_webdataset(cifar.select(range(48)), tmp_path)
    assert load_streaming_images(str(tmp_path)).image_column == "png"
    expected = take(make_loader(tmp_path), 8)  # 48 images: over the end of the first data epoch
    assert expected[0]["pixel_values"].shape == (BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)
    loader = make_loader(tmp_path)
    first = take(loader, 5)
    resumed = make_loader(tmp_path)
    resumed.load_state_dict(json.loads(json.dumps(loader.state_dict())))
    assert_same_batches(expected, first + take(resumed, 3))


def streaming_args(**overrides):
    args = {
        "max_train_steps": 10, "dataset_name": None, "train_dir": None, "warmup_epochs": 0.0, "warmup_steps": None,
        "modality": "image", "in_memory_data": False, "max_train_samples": None, "checkpointing_steps": None,
        "clip_grad_after_warmup": False, "train_split": "train", "image_column_name": None, "seed": SEED,
        "shuffle_buffer_size": BUFFER, "dataset_config_name": None, "cache_dir": None,
        "per_device_train_batch_size": BATCH, "image_size": IMAGE_SIZE, "crop_scale": [0.3, 1.0],
        "horizontal_flip": 0.0, "num_views": 1, "dataloader_num_workers": 0, "gradient_accumulation_steps": 2,
    }
    return Namespace(**(args | overrides))


def build_data(folder, **overrides):
    args = streaming_args(dataset_name=str(folder), **overrides)
    accelerator = SimpleNamespace(process_index=0, num_processes=1, device=torch.device("cpu"))
    masks = MultiBlockMaskCollator(IMAGE_SIZE, PATCH_SIZE, min_context_patches=2, seed=SEED)
    return build_streaming_training_data(args, accelerator, {"image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE}, masks)


def test_training_data_resumes_from_a_checkpointed_trainer_state(shards, uninterrupted):
    data = build_data(shards[4])
    assert data.batches_per_epoch == 20  # --max_train_steps 10 x --gradient_accumulation_steps 2
    assert data.description == str(shards[4]) and data.num_examples is None
    state = {"global_step": 0, "epoch": 0, "batches_in_epoch": 0}
    data.load_state(state)  # a fresh run: nothing to load
    first = list(itertools.islice(data.epoch_batches(None, 0, 0), 6))
    state |= {"global_step": 3, "batches_in_epoch": 6}
    data.save_state(state)  # one process: a list of one stream state
    assert len(state[STREAM_STATE_KEY]) == 1
    state = json.loads(json.dumps(state))  # through trainer_state.json

    resumed = build_data(shards[4])
    with pytest.raises(RuntimeError, match="must call `load_state`"):
        resumed.epoch_batches(None, 0, 6)
    resumed.load_state(state)
    rest = list(itertools.islice(resumed.epoch_batches(None, 0, 6), 3))
    assert_same_batches(uninterrupted[(4, 0, 1)][:9], first + rest)
    json.dumps(resumed.fingerprint("train"))

    with pytest.raises(ValueError, match="split over 1 processes; resume it with 1 processes"):
        dataclasses.replace(resumed, num_processes=2, process_index=1).load_state(state)
    with pytest.raises(ValueError, match="not written by a --streaming run"):
        resumed.load_state({"global_step": 3, "epoch": 0, "batches_in_epoch": 6})


@pytest.mark.parametrize("overrides, message", [
    ({"max_train_steps": None}, "--streaming needs --max_train_steps"),
    ({"dataset_name": None}, "--streaming needs --dataset_name"),
    ({"warmup_epochs": 1.0}, "--warmup_steps"),
    ({"in_memory_data": True}, "--in_memory_data cannot be used with --streaming"),
    ({"checkpointing_steps": "epoch"}, "--checkpointing_steps epoch cannot be used"),
])
def test_streaming_arguments_are_checked(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_streaming_arguments(streaming_args(**({"dataset_name": "some/dataset"} | overrides)))


def test_bad_input_gives_a_clear_error(cifar, shards, tmp_path):
    with pytest.raises(ValueError, match="is not a local folder"):
        load_streaming_images(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="No split `validation`.*'train'"):
        load_streaming_images(str(shards[4]), split="validation")
    write_parquet_shards(Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]},
                                           features=Features({"text": Value("string"), "label": Value("int64")})),
                         tmp_path / "text", 1)
    with pytest.raises(ValueError, match="holds .*string.* not images|Could not find the image column"):
        load_streaming_images(str(tmp_path / "text"))
    with pytest.raises(ValueError, match="at least one example"):
        load_streaming_images(str(shards[4]), buffer_size=0)
    loader = make_loader(shards[4])
    with pytest.raises(ValueError, match="--shuffle_buffer_size 40"):
        make_loader(shards[4], buffer_size=10).load_state_dict(loader.state_dict())


def test_an_empty_share_of_the_stream_is_an_error(cifar, tmp_path):
    write_parquet_shards(cifar.select(range(1)), tmp_path, 1)
    with pytest.raises(ValueError, match="share of the stream has no examples"):
        take(make_loader(tmp_path, rank=1, world_size=2), 1)


# ------------------------------------------------------------------------------------ through run_pretraining.py


def streaming_run_args(shards, output_dir, *extra):
    from .test_run_pretraining import TINY

    return ["--streaming", "--dataset_name", str(shards), "--shuffle_buffer_size", "16",
            "--per_device_train_batch_size", "8", "--output_dir", str(output_dir), "--max_train_steps", "6",
            "--checkpointing_steps", "2", "--checkpoints_total_limit", "5", *TINY, *extra]  # fmt: skip


def test_a_streaming_run_resumed_mid_stream_ends_as_an_uninterrupted_one(tmp_path):
    import run_pretraining

    from .test_run_pretraining import assert_same_weights

    shards = tmp_path / "shards"
    write_parquet_shards(load_dataset(str(require(CIFAR10)), split="train").select(range(40)), shards, 4)
    full = run_pretraining.main(streaming_run_args(shards, tmp_path / "full"))
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = run_pretraining.main(streaming_run_args(shards, tmp_path / "resumed", "--resume_from_checkpoint", "latest"))

    assert full["global_step"] == resumed["global_step"] == 6
    assert [entry["loss"] for entry in full["log_history"]] == [entry["loss"] for entry in resumed["log_history"]]
    assert full["data_stream"] == resumed["data_stream"]
    assert_same_weights(tmp_path / "resumed" / "pretraining", tmp_path / "full" / "pretraining")
    card = (tmp_path / "full" / "README.md").read_text()
    # Local shards carry no row count the stream can read: the card says the data was streamed, not how many.
    assert f"| data | {shards} (streamed) |" in card
