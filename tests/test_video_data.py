# SPDX-License-Identifier: Apache-2.0
"""Tests of video decoding, clip transforms and the clip dataset (`modeling_ijepa.data.videos`)."""

import logging
from pathlib import Path

import av
import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from modeling_ijepa.data.examples import SeededExamples
from modeling_ijepa.data.videos import VideoClipDataset, VideoClipTransform, VideoDecodeError, decode_clip

from .conftest import VIDEO_TINY, require

requires_video_tiny = pytest.mark.skipif(
    not VIDEO_TINY.is_dir(),
    reason=f"the video_tiny clips are not at {VIDEO_TINY} (the repository must sit next to shared/)",
)

# 8 frames every 2 frames: a clip spans 15 frames of the video.
NUM_FRAMES, FRAME_STEP, SPAN = 8, 2, 15


def write_video(path: Path, frames: np.ndarray, **container_options: str) -> Path:
    """Writes uint8 RGB frames [T, H, W, 3] (H and W even) as a lossless H.264 video at 15 fps."""
    with av.open(str(path), "w", options=container_options) as container:
        stream = container.add_stream("libx264", rate=15, options={"crf": "0"})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def pattern_frames(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Identical frames [T, H, W, 3] with a distinct value at each position, so any crop can be told apart."""
    rows, columns = np.mgrid[0:height, 0:width]
    frame = np.stack([columns * 255 // width, rows * 255 // height, (rows * 7 + columns * 3) % 256], axis=-1)
    return np.repeat(frame[None].astype(np.uint8), num_frames, axis=0)


def moving_frames(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Uniform grey frames [T, H, W, 3] whose value encodes the frame index: frame t has value 8 * t."""
    values = 8 * np.arange(num_frames, dtype=np.uint8)
    return np.ascontiguousarray(np.broadcast_to(values[:, None, None, None], (num_frames, height, width, 3)))


@pytest.fixture
def bad_videos(tmp_path: Path) -> dict[str, Path]:
    """One file per way a video can be unusable, with the reason `VideoClipDataset` should give."""
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "truncated.mp4").write_bytes((VIDEO_TINY / "unlabelled" / "bikes.mp4").read_bytes()[:2048])
    write_video(folder / "short.mp4", moving_frames(5))
    with av.open(str(folder / "audio_only.mkv"), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return {path.name: path for path in folder.iterdir()}


EXPECTED_REASONS = {
    "corrupt.mp4": "unreadable",
    "truncated.mp4": "unreadable",
    "empty.mp4": "empty",
    "short.mp4": "too short",
    "audio_only.mkv": "no video stream",
}


@requires_video_tiny
def test_decode_clip_real_video():
    path = VIDEO_TINY / "unlabelled" / "bikes.mp4"
    clip = decode_clip(path, NUM_FRAMES, FRAME_STEP, torch.Generator().manual_seed(0))

    assert clip.shape == (NUM_FRAMES, 128, 302, 3)
    assert clip.dtype == torch.uint8
    # A real scene changes over 14 frames (~1 s), and successive frames differ too.
    assert (clip[0].float() - clip[-1].float()).abs().mean() > 2
    assert all(not torch.equal(clip[t], clip[t + 1]) for t in range(NUM_FRAMES - 1))

    again = decode_clip(path, NUM_FRAMES, FRAME_STEP, torch.Generator().manual_seed(0))
    assert torch.equal(clip, again)
    others = [decode_clip(path, NUM_FRAMES, FRAME_STEP, torch.Generator().manual_seed(seed)) for seed in (1, 2, 3)]
    assert any(not torch.equal(clip, other) for other in others)

    from_bytes = decode_clip(path.read_bytes(), NUM_FRAMES, FRAME_STEP, torch.Generator().manual_seed(0))
    assert torch.equal(clip, from_bytes)


def test_decode_clip_takes_the_right_frames(tmp_path):
    path = write_video(tmp_path / "moving.mp4", moving_frames(20))
    for seed in range(5):
        clip = decode_clip(path, NUM_FRAMES, FRAME_STEP, torch.Generator().manual_seed(seed))
        frame_indices = clip[:, 0, 0, 0].float() / 8
        start = int(frame_indices[0].round())
        assert 0 <= start <= 20 - SPAN
        expected = torch.arange(start, start + SPAN, FRAME_STEP).float()
        torch.testing.assert_close(frame_indices, expected, atol=0.3, rtol=0)


def test_decode_clip_without_frame_count_in_header(tmp_path):
    # A raw H.264 stream stores neither a frame count nor a duration, so the frames are counted from the packets.
    path = write_video(tmp_path / "raw.h264", moving_frames(20))
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0 and container.duration is None
    assert decode_clip(path, NUM_FRAMES, FRAME_STEP).shape == (NUM_FRAMES, 48, 64, 3)
    with pytest.raises(VideoDecodeError, match="it has 20 frames, 29 are needed"):
        decode_clip(path, 8, 4)


@requires_video_tiny
def test_decode_clip_errors_name_the_file(bad_videos):
    for name, path in bad_videos.items():
        with pytest.raises(VideoDecodeError) as error_info:
            decode_clip(path, NUM_FRAMES, FRAME_STEP)
        assert error_info.value.reason == EXPECTED_REASONS[name]
        assert str(path) in str(error_info.value)
    with pytest.raises(VideoDecodeError, match=f"it has 5 frames, {SPAN} are needed"):
        decode_clip(bad_videos["short.mp4"], NUM_FRAMES, FRAME_STEP)


@requires_video_tiny
def test_from_folder_labelled():
    dataset = VideoClipDataset.from_folder(
        VIDEO_TINY / "labelled" / "train", NUM_FRAMES, FRAME_STEP, transform=VideoClipTransform(32)
    )

    assert dataset.class_names == ["doing_exercises", "typing"]
    assert len(dataset) + dataset.num_skipped == 49 and dataset.num_skipped == 0
    assert sorted(set(dataset.labels)) == [0, 1]
    for name, label in zip(dataset.video_names, dataset.labels):
        assert Path(name).parent.name == dataset.class_names[label]
    for index in (0, len(dataset) - 1):
        item = dataset[index]
        assert item["labels"] == dataset.labels[index]
        assert item["pixel_values_videos"].shape == (NUM_FRAMES, 3, 32, 32)


@requires_video_tiny
def test_from_folder_unlabelled_skips_short_videos():
    dataset = VideoClipDataset.from_folder(VIDEO_TINY / "unlabelled", num_frames=16, frame_step=4)

    assert dataset.class_names is None and dataset.labels is None
    # 4 of the 14 clips have fewer than the 61 frames needed.
    assert len(dataset) == 10
    assert {Path(name).name for name in dataset.skipped["too short"]} == {
        "S001C001P001R001A001_rgb.mp4",
        "carphone_pristine.mp4",
        "demo_skeleton.mp4",
        "demo_spatiotemporal_det.mp4",
    }
    assert "labels" not in dataset[0]


@requires_video_tiny
def test_items_are_normalised():
    dataset = VideoClipDataset.from_folder(VIDEO_TINY / "unlabelled", NUM_FRAMES, FRAME_STEP, VideoClipTransform(32))
    batch = default_collate([dataset[index] for index in range(len(dataset))])
    pixel_values = batch["pixel_values_videos"]

    assert pixel_values.shape == (len(dataset), NUM_FRAMES, 3, 32, 32) and pixel_values.dtype == torch.float32
    assert abs(pixel_values.mean()) < 0.5 and 0.5 < pixel_values.std() < 1.5


def test_normalisation_of_known_colours(tmp_path):
    # Frames of the mean colour normalise to 0, white frames to (1 - mean) / std.
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN), torch.tensor(IMAGENET_DEFAULT_STD)
    grey = np.broadcast_to((mean * 255).round().to(torch.uint8).numpy(), (20, 48, 64, 3))
    white = np.full((20, 48, 64, 3), 255, np.uint8)
    write_video(tmp_path / "grey.mp4", np.ascontiguousarray(grey))
    write_video(tmp_path / "white.mp4", white)
    dataset = VideoClipDataset.from_folder(tmp_path, NUM_FRAMES, FRAME_STEP, VideoClipTransform(32))

    grey_item, white_item = (
        dataset[dataset.video_names.index(str(tmp_path / name))] for name in ("grey.mp4", "white.mp4")
    )
    assert grey_item["pixel_values_videos"].abs().max() < 0.05
    expected = ((1 - mean) / std)[None, :, None, None].expand(NUM_FRAMES, 3, 32, 32)
    torch.testing.assert_close(white_item["pixel_values_videos"], expected, atol=0.03, rtol=0)


def test_same_crop_for_all_frames(tmp_path):
    write_video(tmp_path / "pattern.mp4", pattern_frames(20))
    dataset = VideoClipDataset.from_folder(tmp_path, NUM_FRAMES, FRAME_STEP, VideoClipTransform(32, scale=(0.1, 0.3)))
    clips = [SeededExamples(dataset, seed)[0]["pixel_values_videos"] for seed in range(3)]

    for clip in clips:
        # The frames are identical, so one crop for the whole clip gives identical output frames.
        assert (clip - clip[0]).abs().max() < 1e-5
    # ... and the crop is random: other seeds crop elsewhere.
    assert (clips[0] - clips[1]).abs().max() > 0.5 and (clips[0] - clips[2]).abs().max() > 0.5


def test_eval_transform_is_deterministic():
    video = torch.from_numpy(moving_frames(NUM_FRAMES, height=48, width=80))
    transform = VideoClipTransform(32, train=False)
    clip = transform(video)

    assert clip.shape == (NUM_FRAMES, 3, 32, 32) and type(clip) is torch.Tensor
    assert torch.equal(clip, transform(video))


@requires_video_tiny
def test_bad_videos_are_skipped_and_counted(bad_videos, caplog):
    folder = next(iter(bad_videos.values())).parent
    write_video(folder / "good_1.mp4", moving_frames(20))
    write_video(folder / "good_2.mp4", moving_frames(16))
    with caplog.at_level(logging.WARNING, logger="modeling_ijepa.data.videos"):
        dataset = VideoClipDataset.from_folder(folder, NUM_FRAMES, FRAME_STEP, VideoClipTransform(32))

    assert len(dataset) == 2 and dataset.num_skipped == len(bad_videos)
    expected = {}
    for name, reason in EXPECTED_REASONS.items():
        expected.setdefault(reason, []).append(str(bad_videos[name]))
    assert {reason: sorted(names) for reason, names in dataset.skipped.items()} == {
        reason: sorted(names) for reason, names in expected.items()
    }
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    for path in bad_videos.values():
        assert sum(str(path) in message for message in warnings) == 1


@requires_video_tiny
def test_folder_of_bad_videos_raises(bad_videos):
    folder = next(iter(bad_videos.values())).parent
    with pytest.raises(ValueError, match=r"all 5 videos were skipped: .*1 too short \(need 15 frames\)") as error_info:
        VideoClipDataset.from_folder(folder, NUM_FRAMES, FRAME_STEP)
    assert "2 unreadable" in str(error_info.value) and "1 empty" in str(error_info.value)


def test_decode_failure_at_read_time_falls_back(tmp_path, caplog):
    # The header (written first with faststart) survives the truncation, so the probe accepts the file,
    # but its frames are gone.
    noise = np.random.default_rng(0).integers(0, 256, (20, 48, 64, 3), np.uint8)
    write_video(tmp_path / "broken.mp4", noise, movflags="faststart")
    content = (tmp_path / "broken.mp4").read_bytes()
    (tmp_path / "broken.mp4").write_bytes(content[: len(content) // 3])
    write_video(tmp_path / "good.mp4", moving_frames(20))
    dataset = VideoClipDataset.from_folder(tmp_path, NUM_FRAMES, FRAME_STEP, VideoClipTransform(32, train=False))
    assert len(dataset) == 2 and dataset.video_names[0].endswith("broken.mp4")

    with caplog.at_level(logging.WARNING, logger="modeling_ijepa.data.videos"):
        items = [dataset[0], dataset[1]]
    assert dataset.decode_failures == 1
    assert "broken.mp4" in caplog.text
    assert default_collate(items)["pixel_values_videos"].shape == (2, NUM_FRAMES, 3, 32, 32)

    with pytest.raises(VideoDecodeError, match=r"only \d+ of the 20 frames its header announces could be decoded"):
        decode_clip(tmp_path / "broken.mp4", NUM_FRAMES, FRAME_STEP)
    dataset.max_decode_retries = 0
    with pytest.raises(RuntimeError, match="could not decode any of the 1 videos tried from item 0 on"):
        dataset[0]


@requires_video_tiny
def test_from_hf_dataset(tmp_path):
    folder = VIDEO_TINY / "labelled" / "val"
    paths = sorted(str(path) for path in folder.glob("*/*.mp4"))[::3]
    labels = [Path(path).parent.name for path in paths]
    # A row of bytes (as in parquet shards on the Hub) next to rows of paths.
    videos = [{"path": path, "bytes": None} for path in paths[:-1]]
    videos.append({"path": None, "bytes": Path(paths[-1]).read_bytes()})
    hf_dataset = datasets.Dataset.from_dict({"video": videos, "label": labels})
    hf_dataset = hf_dataset.cast_column("video", datasets.Video(decode=False))
    hf_dataset = hf_dataset.cast_column("label", datasets.ClassLabel(names=["doing_exercises", "typing"]))

    dataset = VideoClipDataset.from_hf_dataset(
        hf_dataset, "video", "label", NUM_FRAMES, FRAME_STEP, VideoClipTransform(32)
    )
    assert len(dataset) == len(paths) and dataset.num_skipped == 0
    assert dataset.class_names == ["doing_exercises", "typing"]
    assert [dataset.class_names[label] for label in dataset.labels] == labels
    assert dataset.video_names[-1] == f"row {len(paths) - 1}"
    batch = default_collate([dataset[0], dataset[len(dataset) - 1]])
    assert batch["pixel_values_videos"].shape == (2, NUM_FRAMES, 3, 32, 32)
    assert batch["labels"].tolist() == [hf_dataset[0]["label"], hf_dataset[-1]["label"]]

    # Plain string paths and string labels work too.
    plain = datasets.Dataset.from_dict({"clip": paths, "action": labels})
    dataset = VideoClipDataset.from_hf_dataset(plain, "clip", "action", NUM_FRAMES, FRAME_STEP, VideoClipTransform(32))
    assert dataset.class_names == sorted(set(labels)) and dataset[0]["labels"] == dataset.labels[0]


def raw_frames(clip: torch.Tensor) -> torch.Tensor:
    """The decoded clip as it is, uint8 [T, H, W, C]: shows the clip start alone, with no crop."""
    return clip


def epoch_clips(examples: SeededExamples, epochs, num_workers: int = 0) -> list[list[torch.Tensor]]:
    """Every clip of each epoch in index order, loaded as the training loop does: `set_epoch`, then a DataLoader."""
    loader = DataLoader(
        examples, batch_size=len(examples), num_workers=num_workers, persistent_workers=num_workers > 0, collate_fn=list
    )
    clips = []
    for epoch in epochs:
        # With persistent workers, the epoch set here must still reach the workers started for the first epoch.
        examples.set_epoch(epoch)
        clips.append([item["pixel_values_videos"] for item in next(iter(loader))])
    return clips


def test_epochs_draw_other_clip_starts_and_crops(tmp_path):
    # Clip starts: decoded frames of real videos, not cropped.
    videos = VideoClipDataset.from_folder(require(VIDEO_TINY / "unlabelled"), NUM_FRAMES, FRAME_STEP, raw_frames)
    starts = epoch_clips(SeededExamples(videos, seed=0), [1, 2])
    # Crops: identical frames, so the start changes nothing and only the crop can tell the epochs apart.
    write_video(tmp_path / "pattern.mp4", pattern_frames(20))
    pattern = VideoClipDataset.from_folder(tmp_path, NUM_FRAMES, FRAME_STEP, VideoClipTransform(32, scale=(0.1, 0.3)))
    (crop_1,), (crop_2,) = epoch_clips(SeededExamples(pattern, seed=0), [1, 2])

    # Two epochs may draw the same start by chance (1 in 22 for the shortest video here), but not for most videos.
    moved = [not torch.equal(first, second) for first, second in zip(*starts)]
    assert sum(moved) >= len(videos) - 2, moved
    assert (crop_1 - crop_2).abs().max() > 0.5


def test_items_depend_only_on_seed_epoch_and_index():
    videos = VideoClipDataset.from_folder(
        require(VIDEO_TINY / "unlabelled"), NUM_FRAMES, FRAME_STEP, VideoClipTransform(32)
    )
    in_process = epoch_clips(SeededExamples(videos, seed=7), [0, 1])
    in_workers = epoch_clips(SeededExamples(videos, seed=7), [0, 1], num_workers=2)
    # A resumed run starts in epoch 1 in a fresh process, and may read the items in any order.
    resumed = SeededExamples(videos, seed=7)
    resumed.set_epoch(1)
    resumed_clips = {index: resumed[index]["pixel_values_videos"] for index in reversed(range(len(videos)))}

    assert in_process[0][0].shape == (NUM_FRAMES, 3, 32, 32)
    for epoch in range(2):
        assert all(torch.equal(a, b) for a, b in zip(in_process[epoch], in_workers[epoch], strict=True))
    assert all(torch.equal(clip, in_process[1][index]) for index, clip in resumed_clips.items())
    assert not any(torch.equal(a, b) for a, b in zip(in_process[0], in_process[1]))
