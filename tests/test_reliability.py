# SPDX-License-Identifier: Apache-2.0
"""Reliability of pretraining: crash-safe and exactly resumable under SIGKILL, clear failures on a full or
read-only disk and on a diverging loss, no code run from untrusted checkpoints, robust to bad images and bad
arguments.

Covered elsewhere: two processes (tests/test_run_pretraining.py), properties of the mask collators
(tests/test_masking.py), corrupt videos (tests/test_video_data.py), damaged or mismatched checkpoints
(tests/test_checkpointing.py), preemption signals and the output-folder lock (tests/test_run_control.py). `benchmarks/soak_kill_resume.py` is a longer
version of the kill test.
"""

import errno
import json
import os
import pickle
import re
import resource
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModel
from transformers.models.ijepa.modeling_ijepa import IJepaModel as StockIJepaModel

import run_pretraining
from benchmarks.kill_resume import (
    KILL_KINDS,
    RUN_ENV,
    assert_every_checkpoint_loads,
    checkpoint_folders,
    fresh_model_and_optimizer,
    kill_plan,
    run_with_kills,
    step_of,
    temporary_folders,
)
from modeling_ijepa import IJepaForPreTraining
from modeling_ijepa.conversion.ijepa import UnsafeCheckpointError, load_reference_checkpoint
from modeling_ijepa.data import pipeline
from modeling_ijepa.data.images import DecodeAndTransform, decode_image, pretraining_transform
from modeling_ijepa.data.skipping import UnusableDataError
from modeling_ijepa.training import checkpointing, runtime
from modeling_ijepa.training.checkpointing import (
    TEMPORARY_PREFIX,
    CheckpointWriteError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from modeling_ijepa.training.loop import MAX_CONSECUTIVE_NONFINITE
from modeling_ijepa.training.optimization import NonFiniteLossError

from .conftest import CIFAR10, REPO_ROOT, require
from .test_run_pretraining import TINY, assert_same_weights, cifar_args, pretraining_weights

# ------------------------------------------------------------------------------------- 1. kill -9 and resume

TOTAL_STEPS, KEEP = 10, 2
KILL_SEED = 2024
# The run every attempt continues: the tiny model on 64 CIFAR-10 images (output folder, steps and checkpointing
# are added by `benchmarks.kill_resume`).
KILL_RUN = ["--dataset_name", str(CIFAR10), "--max_train_samples", "64", "--per_device_train_batch_size", "16", *TINY]


def assert_kill_point_was_hit(hit: dict, output_dir: Path) -> None:
    kind, trigger, on_disk = hit["kind"], hit["trigger_step"], hit["on_disk_at_kill"]
    latest = step_of(latest_checkpoint(output_dir))
    if kind in ("write", "rename"):
        # Killed inside the write of checkpoint-{trigger}: its temporary folder existed and is not taken.
        assert any(name.startswith(f"{TEMPORARY_PREFIX}{trigger}-") for name in on_disk), hit
        assert f"checkpoint-{trigger}" not in on_disk and latest == trigger - 1, hit
    elif kind == "prune":
        assert latest == hit["window"]["step"] >= trigger, hit
    elif kind == "random":
        assert latest >= trigger, hit
    elif kind == "export":
        assert latest == trigger and (output_dir / "pretraining").is_dir(), hit
        # Killed before this attempt wrote the encoder (an earlier attempt, killed at a random point after the last
        # checkpoint, may have written one already).
        encoder = output_dir / "model.safetensors"
        assert not encoder.exists() or encoder.stat().st_mtime < hit["released_at"], hit
    hit["latest_after_kill"] = latest


def test_kill_at_random_points_then_resume_ends_bitwise_equal_to_an_uninterrupted_run(tmp_path, record_property):
    require(CIFAR10)
    plan = kill_plan(KILL_SEED)

    def check_after_kill(hit, output_dir, argv):
        hit["checkpoints_after_kill"] = assert_every_checkpoint_loads(output_dir, argv)
        hit["temporary_after_kill"] = temporary_folders(output_dir)
        assert len(hit["checkpoints_after_kill"]) <= KEEP + 1  # K, or K+1 when killed before the oldest went
        assert_kill_point_was_hit(hit, output_dir)

    hits, outputs = run_with_kills(tmp_path, plan, KILL_RUN, TOTAL_STEPS, KEEP, on_kill=check_after_kill)
    record_property("kill_points", hits)
    print("\nkill points:", *(json.dumps(hit) for hit in hits), sep="\n  ")
    assert [hit["kind"] for hit in hits] == list(KILL_KINDS)

    assert_same_weights(outputs["interrupted"] / "pretraining", outputs["uninterrupted"] / "pretraining")
    encoder = AutoModel.from_pretrained(outputs["interrupted"]).state_dict()
    for name, value in AutoModel.from_pretrained(outputs["uninterrupted"]).state_dict().items():
        assert torch.equal(encoder[name], value), name
    logs = [(folder / "training_log.jsonl").read_text().splitlines() for folder in outputs.values()]
    assert len(logs[0]) == TOTAL_STEPS and logs[0] == logs[1]  # same losses, schedules and counters at every step
    # Only the newest K checkpoints are kept, and no temporary folder outlives the run.
    for folder in outputs.values():
        assert [path.name for path in checkpoint_folders(folder)] == ["checkpoint-9", "checkpoint-10"]
        assert temporary_folders(folder) == []


# ---------------------------------------------------------------------------------------- 2. failing writes


def fail_on_step(step: int, error: Exception):
    """A stand-in for a writer that fails with `error` when writing (into) checkpoint `step`'s temporary folder."""

    def is_for_step(path) -> bool:
        return any(part.startswith(f"{TEMPORARY_PREFIX}{step}-") for part in Path(path).parts)

    def save_file(tensors, filename, *args, **kwargs):
        if is_for_step(filename):
            raise error
        return real_save_file(tensors, filename, *args, **kwargs)

    def save_pretrained(self, folder, *args, **kwargs):
        if is_for_step(folder):
            raise error
        return real_save_pretrained(self, folder, *args, **kwargs)

    def mkdtemp(suffix=None, prefix=None, dir=None):
        if prefix == f"{TEMPORARY_PREFIX}{step}-":
            raise error
        return real_mkdtemp(suffix, prefix, dir)

    return {"save_file": save_file, "save_pretrained": save_pretrained, "mkdtemp": mkdtemp}


real_save_file = checkpointing.save_file
real_save_pretrained = IJepaForPreTraining.save_pretrained
real_mkdtemp = checkpointing.tempfile.mkdtemp
DISK_FULL = OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    "writer, error, cause",
    [
        ("save_file", DISK_FULL, "No space left on device"),  # the optimizer tensors
        ("save_pretrained", DISK_FULL, "No space left on device"),  # the model
        # What safetensors itself raises on a full disk: not an OSError.
        ("save_file", SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
         "No space left on device"),
        ("mkdtemp", OSError(errno.EROFS, "Read-only file system"), "Read-only file system"),
        ("mkdtemp", PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
    ],
    ids=["disk-full-optimizer", "disk-full-model", "disk-full-safetensors-error", "read-only", "permission-denied"],
)
def test_a_failing_checkpoint_write_stops_the_run_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, writer, error, cause):
    fake = fail_on_step(2, error)[writer]
    if writer == "save_file":
        monkeypatch.setattr(checkpointing, "save_file", fake)
    elif writer == "save_pretrained":
        monkeypatch.setattr(IJepaForPreTraining, "save_pretrained", fake)
    else:
        monkeypatch.setattr(checkpointing.tempfile, "mkdtemp", fake)
    argv = cifar_args(tmp_path, "--max_train_steps", "3", "--checkpointing_steps", "1")
    with pytest.raises(CheckpointWriteError) as raised:
        run_pretraining.main(argv)
    message = str(raised.value)
    assert str(tmp_path / "checkpoint-2") in message and cause in message, message
    assert list_checkpoints(tmp_path) == [tmp_path / "checkpoint-1"]
    assert assert_every_checkpoint_loads(tmp_path, argv) == [1]
    assert temporary_folders(tmp_path) == []  # the half-written folder is removed, not left to fill the disk
    assert not (tmp_path / "pretraining").exists()  # the run stopped there


def test_a_real_full_disk_is_reported_as_a_checkpoint_write_error(tmp_path):
    """A 900 KiB tmpfs holds one tiny checkpoint (about 600 KiB) but not two: the real ENOSPC, raised inside
    safetensors and transformers, must still become a `CheckpointWriteError`. Needs permission to mount."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=900k", "tmpfs", str(disk)], check=False, capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        argv = cifar_args(disk, "--max_train_steps", "3", "--checkpointing_steps", "1", "--checkpoints_total_limit", "5")
        with pytest.raises(CheckpointWriteError, match=r"checkpoint-2.*No space left on device"):
            run_pretraining.main(argv)
        assert list_checkpoints(disk) == [disk / "checkpoint-1"]
        assert assert_every_checkpoint_loads(disk, argv) == [1]
        assert temporary_folders(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# -------------------------------------------------------------------------------------- 3. non-finite loss

# A learning rate of 1e30 from the first step: step 1 (finite loss) throws the weights to ~1e30, so the next
# forward pass overflows.
DIVERGE = ["--learning_rate", "1e30", "--start_lr", "1e30", "--warmup_steps", "0", "--max_train_steps", "4",
           "--checkpointing_steps", "1"]


def test_a_diverging_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    argv = cifar_args(tmp_path, *DIVERGE)
    with pytest.raises(NonFiniteLossError, match=r"Non-finite loss \(nan\) at optimizer step 2 \(epoch 0\)"):
        run_pretraining.main(argv)
    assert list_checkpoints(tmp_path) == [tmp_path / "checkpoint-1"]
    assert assert_every_checkpoint_loads(tmp_path, argv) == [1]
    assert not (tmp_path / "pretraining").exists()


def test_skipping_non_finite_losses_warns_for_each_step_but_cannot_undo_a_divergence(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        state = run_pretraining.main(cifar_args(tmp_path, *DIVERGE, "--on_nonfinite_loss", "skip"))
    skipped = [record.getMessage() for record in caplog.records if "Non-finite loss" in record.getMessage()]
    # 64 examples, batches of 16: the first batch trains, the other three of the (only) epoch are skipped.
    assert len(skipped) == 3 and all("at optimizer step 2" in m and "Skipping this batch" in m for m in skipped)
    # Skipped batches never reach the optimizer, so the run ends short of its 4 steps ...
    assert state["global_step"] == 1
    assert [entry["step"] for entry in state["log_history"]] == [1]
    # ... and no NaN gets into the weights; but skipping cannot repair the step that diverged with a finite
    # loss: the exported weights are finite and useless.
    weights = pretraining_weights(tmp_path / "pretraining")
    assert all(torch.isfinite(value).all() for value in weights.values())
    assert max(value.abs().max().item() for value in weights.values()) > 1e20


def test_skipping_stops_once_the_run_has_clearly_diverged(tmp_path):
    argv = cifar_args(tmp_path, *DIVERGE, "--on_nonfinite_loss", "skip", "--max_train_samples", "256")
    with pytest.raises(NonFiniteLossError, match=f"{MAX_CONSECUTIVE_NONFINITE} batches in a row"):
        run_pretraining.main(argv)
    assert list_checkpoints(tmp_path) == [tmp_path / "checkpoint-1"]


# -------------------------------------------------------------------------------------- 6. untrusted files


class RunsCodeWhenUnpickled:
    """Unpickling this calls `exec`, which writes a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def write_malicious_checkpoint(path: Path, marker: Path, serialization: str) -> Path:
    payload = {"encoder": {"pos_embed": RunsCodeWhenUnpickled(marker)}, "predictor": {}, "target_encoder": {}, "epoch": 1}
    if serialization == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=serialization == "zip")
    return path


@pytest.mark.parametrize("serialization", ["zip", "legacy", "pickle"])
def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path, serialization):
    marker = tmp_path / "marker"
    checkpoint = write_malicious_checkpoint(tmp_path / "IN1K-vit.h.14-300e.pth.tar", marker, serialization)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(f"Refusing to load {checkpoint}")):
        load_reference_checkpoint(checkpoint)
    assert not marker.exists()
    # The file is really dangerous: a full unpickle runs the code.
    if serialization == "pickle":
        pickle.loads(checkpoint.read_bytes())
    else:
        torch.load(checkpoint, weights_only=False)
    assert marker.read_text() == "code ran"


def test_the_converter_command_refuses_a_checkpoint_that_would_run_code(tmp_path):
    marker = tmp_path / "marker"
    checkpoint = write_malicious_checkpoint(tmp_path / "evil.pth.tar", marker, "zip")
    result = subprocess.run(
        [sys.executable, "-m", "modeling_ijepa.convert_official", "--checkpoint", str(checkpoint),
         "--output_dir", str(tmp_path / "converted"), "--num_attention_heads", "2"],
        check=False, cwd=REPO_ROOT, env=os.environ | RUN_ENV, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "UnsafeCheckpointError" in result.stderr and f"Refusing to load {checkpoint}" in result.stderr, result.stderr[-3000:]
    assert not marker.exists()
    assert not (tmp_path / "converted").exists()


SAFE_SUFFIXES = {".safetensors", ".json", ".md", ".png", ".jsonl"}


def test_our_checkpoints_and_exports_hold_no_pickle_and_load_without_it(tmp_path, monkeypatch):
    argv = cifar_args(tmp_path, "--max_train_steps", "2", "--checkpointing_steps", "1")
    run_pretraining.main(argv)
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert {path.relative_to(tmp_path).parts[0] for path in files} >= {"checkpoint-2", "pretraining", "model.safetensors"}
    for path in files:
        assert path.suffix in SAFE_SUFFIXES, path
        if path.suffix == ".safetensors":
            with safe_open(path, "pt") as tensors:
                assert list(tensors.keys())
        elif path.suffix == ".json":
            json.loads(path.read_text())

    def refuse(*args, **kwargs):
        raise AssertionError("nothing of ours needs torch.load or pickle")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, refuse)
    model, optimizer = fresh_model_and_optimizer(argv)
    assert load_checkpoint(tmp_path / "checkpoint-2", model, optimizer)["global_step"] == 2
    IJepaForPreTraining.from_pretrained(tmp_path / "pretraining")
    assert "auto_map" not in json.loads((tmp_path / "config.json").read_text())
    assert AutoConfig.from_pretrained(tmp_path, trust_remote_code=False).model_type == "ijepa"
    assert type(AutoModel.from_pretrained(tmp_path, trust_remote_code=False)) is StockIJepaModel


# ----------------------------------------------------------------------------------------------- 7. bad data


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def solid_png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    """A valid 1-bit palette PNG of one colour, written directly: a few KB on disk however large it is, so
    huge images cost nothing to make (only to decode)."""
    rows = (b"\x00" + bytes((width + 7) // 8)) * height
    header = struct.pack(">IIBBBBB", width, height, 1, 3, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"PLTE", bytes(colour) + bytes(3))
            + png_chunk(b"IDAT", zlib.compress(rows, 9)) + png_chunk(b"IEND", b""))


HUGE_COLOUR = (200, 30, 90)
QUADRANTS = [(230, 20, 20), (20, 200, 40), (30, 40, 220), (250, 250, 250)]


def quadrant_image() -> Image.Image:
    image = Image.new("RGB", (32, 32))
    for index, colour in enumerate(QUADRANTS):
        x, y = 16 * (index % 2), 16 * (index // 2)
        image.paste(colour, (x, y, x + 16, y + 16))
    return image


def write_bad_image_folder(root: Path) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    """8 CIFAR photos, 5 images in awkward but valid forms, 3 files that are not images. Returns the train folder
    and the convertible and unreadable files by name."""
    from datasets import load_dataset

    folder = root / "train" / "things"
    folder.mkdir(parents=True)
    for index, row in enumerate(load_dataset(str(require(CIFAR10)), split="test[:8]")):
        row["img"].save(folder / f"photo{index}.png")
    convertible = {name: folder / name for name in ("cmyk.jpg", "sixteen.png", "palette_alpha.png", "la.png", "huge.png")}
    quadrant_image().convert("CMYK").save(convertible["cmyk.jpg"], quality=100)
    gradient = np.linspace(1000, 61000, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(gradient).save(convertible["sixteen.png"])
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (16, 0, 32, 32))  # left half: index 0 (red, transparent); right half: index 1 (green)
    palette.save(convertible["palette_alpha.png"], transparency=0)
    alpha = Image.new("L", (32, 32), 255)
    alpha.paste(0, (0, 16, 32, 32))  # bottom half fully transparent
    Image.merge("LA", (Image.new("L", (32, 32), 200), alpha)).save(convertible["la.png"])
    convertible["huge.png"].write_bytes(solid_png(10_000, 10_000, HUGE_COLOUR))  # 1e8 pixels: over PIL's warning limit
    unreadable = {name: folder / name for name in ("bomb.png", "empty.jpg", "notes.jpg")}
    unreadable["bomb.png"].write_bytes(solid_png(20_000, 20_000, HUGE_COLOUR))  # 4e8 pixels: PIL refuses it
    unreadable["empty.jpg"].write_bytes(b"")
    unreadable["notes.jpg"].write_text("Shopping list: eggs, milk.\n" * 20)
    return root / "train", convertible, unreadable


def test_awkward_images_are_converted_faithfully_and_unreadable_files_raise_clear_errors(tmp_path):
    _, convertible, unreadable = write_bad_image_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning (or any other) escapes for the huge image
        decoded = {name: decode_image({"path": str(path), "bytes": None}) for name, path in convertible.items()}
    assert all(image.mode == "RGB" for image in decoded.values())

    cmyk = np.asarray(decoded["cmyk.jpg"], dtype=np.int16)
    for index, colour in enumerate(QUADRANTS):
        x, y = 16 * (index % 2) + 8, 16 * (index // 2) + 8
        assert np.abs(cmyk[y, x] - colour).max() <= 12, (index, cmyk[y, x])
    sixteen = np.asarray(decoded["sixteen.png"])
    assert (sixteen[..., 0] == sixteen[..., 1]).all() and (sixteen[..., 0] == sixteen[..., 2]).all()
    assert sixteen.min() == 0 and sixteen.max() == 255 and sixteen[16, 0, 0] > sixteen[8, 0, 0]  # rescaled, not clipped
    palette = np.asarray(decoded["palette_alpha.png"])
    assert (palette[:, :16] == 0).all() and (palette[:, 16:] == (0, 255, 0)).all()  # transparent -> black
    la = np.asarray(decoded["la.png"])
    assert (la[:16] == 200).all() and (la[16:] == 0).all()
    huge = decoded["huge.png"]
    assert huge.size == (10_000, 10_000) and huge.getpixel((9_999, 9_999)) == HUGE_COLOUR

    for name, path in unreadable.items():
        with pytest.raises((OSError, ValueError, Image.DecompressionBombError), match=r"cannot identify|bomb") as raised:
            decode_image({"path": str(path), "bytes": None})
        assert str(path) in str(raised.value) or name == "bomb.png"


def test_the_data_path_skips_unreadable_files_and_feeds_real_pixels_for_the_rest(tmp_path):
    _, convertible, unreadable = write_bad_image_folder(tmp_path)
    transform = pretraining_transform(32, (1.0, 1.0))
    decode = DecodeAndTransform("image", transform)
    cells = [{"path": str(path), "bytes": None} for path in [*convertible.values(), *unreadable.values()]]
    started, rss_before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pixel_values = decode({"image": cells})["pixel_values"]
    seconds, rss_after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert [value is None for value in pixel_values] == [False] * len(convertible) + [True] * len(unreadable)
    # The 10,000 x 10,000 image costs one decode (about 300 MB, a few seconds), not a crash or a hang.
    assert seconds < 60 and rss_after < 4 * 1024 * 1024, (seconds, rss_before, rss_after)
    mean, std = torch.tensor(transform.transforms[-1].mean), torch.tensor(transform.transforms[-1].std)
    huge = pixel_values[list(convertible).index("huge.png")] * std[:, None, None] + mean[:, None, None]
    torch.testing.assert_close(huge, torch.tensor(HUGE_COLOUR).div(255).float()[:, None, None].expand(3, 32, 32),
                               atol=1e-5, rtol=0)
    assert all(torch.isfinite(value).all() for value in pixel_values if value is not None)


def test_too_many_unreadable_files_stop_the_run_before_the_export(tmp_path):
    train_dir, _, _ = write_bad_image_folder(tmp_path / "images")  # 3 unreadable files of 16
    argv = ["--train_dir", str(train_dir), "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "out"),
            "--num_train_epochs", "1", *TINY]
    with pytest.raises(UnusableDataError, match=r"3 of 16 examples read \(19%\) could not be read, more than "
                                                r"--max_skip_fraction 0.1"):
        run_pretraining.main(argv)
    assert not (tmp_path / "out" / "pretraining").exists()


def test_a_folder_of_unreadable_files_trains_nothing_and_is_an_error(tmp_path):
    folder = tmp_path / "images" / "train" / "things"
    folder.mkdir(parents=True)
    for index in range(40):
        (folder / f"corrupt{index}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    argv = ["--train_dir", str(tmp_path / "images" / "train"), "--per_device_train_batch_size", "8",
            "--output_dir", str(tmp_path / "out"), *TINY]
    with pytest.raises(UnusableDataError, match=r"40 of 40 examples read \(100%\) could not be read"):
        run_pretraining.main(argv)
    with pytest.raises(UnusableDataError, match=r"No optimizer step was trained"):
        run_pretraining.main([*argv, "--max_skip_fraction", "1"])
    assert not (tmp_path / "out" / "pretraining").exists() and not (tmp_path / "out" / "README.md").exists()


def test_a_run_over_bad_files_skips_and_counts_them_and_trains_on_the_rest(tmp_path, caplog):
    train_dir, convertible, unreadable = write_bad_image_folder(tmp_path / "images")
    # 3 unreadable files of 16 are more than the default --max_skip_fraction (0.1) tolerates.
    argv = ["--train_dir", str(train_dir), "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "out"),
            "--num_train_epochs", "1", "--max_skip_fraction", "0.2", *TINY]
    with caplog.at_level("WARNING"):
        state = run_pretraining.main(argv)
    assert state["num_skipped"] == len(unreadable) == 3
    assert state["images_seen"] == 8 + len(convertible) == 13
    assert f"Skipped {len(unreadable)} unreadable examples" in caplog.text
    assert all(np.isfinite(entry["loss"]) for entry in state["log_history"])


# ------------------------------------------------------------------------------------------ 8. bad arguments


@pytest.fixture
def no_work_may_start(monkeypatch):
    """Loading data or building the accelerator means work started: fail the test if it happens."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the arguments were refused")

    monkeypatch.setattr(pipeline, "load_image_dataset", forbidden)
    monkeypatch.setattr(pipeline, "build_video_dataset", forbidden)
    monkeypatch.setattr(runtime, "Accelerator", forbidden)


BAD_ARGUMENTS = {
    # Recipe values reach argparse as defaults, which it neither type-checks (unless strings) nor checks against
    # the choices.
    "recipe-not-a-mapping": ("- hidden_size\n- 64\n", [], "must hold a mapping"),
    "recipe-float-for-int": ("gradient_accumulation_steps: 1.5\n", [], r"gradient_accumulation_steps must be an integer, got 1.5"),
    "recipe-bool-for-float": ("final_lr: yes\n", [], r"final_lr must be a number, got True"),
    "recipe-string-for-flag": ("push_to_hub: 'no'\n", [], r"push_to_hub must be true or false, got 'no'"),
    "recipe-bad-choice": ("modality: audio\n", [], r"modality must be one of \['image', 'video'\], got 'audio'"),
    "recipe-bad-choice-nonfinite": ("on_nonfinite_loss: ignore\n", [], r"on_nonfinite_loss must be one of \['error', 'skip'\]"),
    "recipe-short-pair": ("target_scale: [0.1]\n", [], r"`--target_scale` to be a \(min, max\) pair of numbers"),
    "recipe-number-for-pair": ("context_scale: 0.9\n", [], r"`--context_scale` to be a \(min, max\) pair of numbers"),
    "recipe-missing": (None, ["--config", "no/such/recipe.yaml"], "no such file"),
    "accumulation-zero": (None, ["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps must be a positive integer"),
    "max-steps-negative": (None, ["--max_train_steps", "-3"], "max_train_steps must be positive"),
    "keep-zero-checkpoints": (None, ["--checkpoints_total_limit", "0"], "checkpoints_total_limit must be positive"),
    "checkpoint-every-0": (None, ["--checkpointing_steps", "0"], r"checkpointing_steps must be a positive integer or 'epoch', got '0'"),
    "checkpoint-every-word": (None, ["--checkpointing_steps", "every"], r"checkpointing_steps must be a positive integer or 'epoch'"),
    "monitor-every-0": (None, ["--monitor_steps", "0"], "monitor_steps must be a positive integer"),
    "workers-negative": (None, ["--dataloader_num_workers", "-1"], "dataloader_num_workers must be >= 0"),
    "warmup-negative": (None, ["--warmup_steps", "-1"], "warmup_steps must be >= 0"),
    "learning-rate-negative": (None, ["--learning_rate=-0.001"], "learning_rate must be >= 0"),
    "crop-scale-reversed": (None, ["--crop_scale", "1.0,0.3"], r"`--crop_scale` to be a \(min, max\) pair in \(0, 1.0\] with min <= max"),
    "target-scale-reversed": (None, ["--target_scale", "0.5,0.1"], r"`--target_scale` to be a \(min, max\) pair in \(0, 1.0\]"),
    "context-scale-zero": (None, ["--context_scale", "0,0.5"], r"`--context_scale` to be a \(min, max\) pair in \(0, 1.0\]"),
    "aspect-ratio-reversed": (None, ["--target_aspect_ratio", "2,1"], r"`--target_aspect_ratio` to be a \(min, max\) pair in \(0, inf\)"),
    "ema-momentum-above-1": (None, ["--ema_momentum", "1.5"], r"ema_momentum must be in \[0, 1\]"),
    "no-targets": (None, ["--num_targets", "0"], "num_targets must be a positive integer"),
    "frames-vs-tubelets": (None, ["--modality", "video", "--num_frames", "15"], "num_frames 15 is not divisible by --tubelet_size 2"),
    "grad-norm-negative": (None, ["--max_grad_norm=-1"], "max_grad_norm must be positive when given, got -1.0"),
    "grad-norm-zero": (None, ["--max_grad_norm", "0"], "max_grad_norm must be positive when given, got 0.0"),
    "context-larger-than-grid": (None, ["--min_context_patches", "1000"],
                                 r"cannot be met on the 8x8 patch grid \(64 patches\).*keeps at most 40 patches.*"
                                 r"min_context_patches=1000"),
    "targets-cover-the-context": (None, ["--target_scale", "0.9,0.95"],
                                  r"cannot be met on the 8x8 patch grid.*target blocks of scale \(0.9, 0.95\).*keeps at "
                                  r"most 7 patches"),
    "two-data-sources": (None, ["--dataset_name", "cifar10", "--train_dir", "images"],
                         "--dataset_name cifar10 and --train_dir images both name the training data"),
    "skip-fraction-above-1": (None, ["--max_skip_fraction", "1.5"], r"max_skip_fraction must be in \[0, 1\]"),
    "unknown-tracker": (None, ["--report_to", "tensorbored"], "--report_to tensorbored: not a tracker Accelerate knows"),
}


@pytest.mark.parametrize("recipe, extra, message", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bad_arguments_are_refused_before_any_work(tmp_path, no_work_may_start, recipe, extra, message):
    argv = ["--output_dir", str(tmp_path / "out"), "--image_size", "32", "--patch_size", "4", *extra]
    if recipe is not None:
        (tmp_path / "recipe.yaml").write_text(recipe)
        argv = ["--config", str(tmp_path / "recipe.yaml"), *argv]
    started = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        run_pretraining.main(argv)
    assert time.perf_counter() - started < 5
    assert not (tmp_path / "out").exists()


def test_a_tracker_whose_package_is_missing_is_refused_before_any_work(tmp_path, no_work_may_start, monkeypatch):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])  # as without tensorboard installed
    with pytest.raises(ValueError, match=r"--report_to tensorboard: its package is not installed"):
        run_pretraining.main(["--output_dir", str(tmp_path / "out"), "--report_to", "tensorboard"])
    assert not (tmp_path / "out").exists()


def test_a_predictor_wider_than_the_encoder_is_allowed_with_a_warning(caplog):
    with caplog.at_level("WARNING"):
        args = run_pretraining.parse_args(["--hidden_size", "32", "--num_attention_heads", "2", "--predictor_hidden_size", "64"])
    assert args.predictor_hidden_size == 64
    assert "--predictor_hidden_size 64 is wider than the encoder (32)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        run_pretraining.parse_args(["--hidden_size", "32", "--num_attention_heads", "2", "--predictor_hidden_size", "16"])
    assert "wider than the encoder" not in caplog.text


def test_an_image_column_that_holds_no_images_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"Column `label` holds ClassLabel\(.*\), not images; its columns are "
                                         r"\['img', 'label'\]"):
        run_pretraining.main(cifar_args(tmp_path, "--image_column_name", "label"))


def test_fp16_on_a_cpu_falls_back_to_float32_with_a_warning_and_the_card_says_so(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        run_pretraining.main(cifar_args(tmp_path, "--max_train_steps", "1", "--mixed_precision", "fp16"))
    assert "--mixed_precision fp16 is not supported on cpu: training in float32" in caplog.text
    assert "| precision | no |" in (tmp_path / "README.md").read_text()


def test_runs_in_one_process_each_start_from_their_own_accelerate_state(tmp_path):
    """A bf16 pretraining, then a float32 one, a probe and the MAE baseline, one after another in one process (as
    the benchmarks run them): each run forgets the Accelerate state it made, so the next gets its own precision."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    from benchmarks import mae_pretraining
    from modeling_ijepa.evaluation import linear_probe

    run_pretraining.main(cifar_args(tmp_path / "bf16", "--max_train_steps", "1", "--mixed_precision", "bf16"))
    assert "| precision | bf16 |" in (tmp_path / "bf16" / "README.md").read_text()
    assert not AcceleratorState._shared_state and not PartialState._shared_state
    run_pretraining.main(cifar_args(tmp_path / "fp32", "--max_train_steps", "1"))  # refused without the release
    assert "| precision | no |" in (tmp_path / "fp32" / "README.md").read_text()
    linear_probe.main(["--model_name_or_path", str(tmp_path / "bf16"), "--dataset_name", str(require(CIFAR10)),
                       "--output_dir", str(tmp_path / "probe"), "--max_train_samples", "40",
                       "--max_eval_samples", "20", "--linear_weight_decays", "0.1", "--no_update_model_card"])
    assert not AcceleratorState._shared_state
    mae_pretraining.main(["--dataset_name", str(require(CIFAR10)), "--max_train_samples", "32",
                          "--per_device_train_batch_size", "16", "--image_size", "32", "--patch_size", "8",
                          "--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2",
                          "--decoder_hidden_size", "16", "--decoder_num_hidden_layers", "1",
                          "--decoder_num_attention_heads", "2", "--max_train_steps", "1", "--mixed_precision", "bf16",
                          "--output_dir", str(tmp_path / "mae")])
    assert not AcceleratorState._shared_state
    # A state the caller made before a run is the caller's: the run uses it and leaves it.
    callers = Accelerator(cpu=True)
    run_pretraining.main(cifar_args(tmp_path / "inside", "--max_train_steps", "1"))
    assert AcceleratorState._shared_state and callers.mixed_precision == "no" and callers.device.type == "cpu"


def test_a_dataset_smaller_than_one_batch_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"The dataset has 8 examples, fewer than one batch \(16 per device"):
        run_pretraining.main(cifar_args(tmp_path, "--max_train_samples", "8"))
    assert checkpoint_folders(tmp_path) == [] and list(tmp_path.iterdir()) == []
