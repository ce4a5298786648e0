# SPDX-License-Identifier: Apache-2.0
"""Video clips for V-JEPA: decoding with PyAV, clip transforms and a clip dataset.

The data path for video is

    video file (path, or bytes from a `datasets` video column)
      -> `decode_clip`: `num_frames` frames, `frame_step` apart, at a random start   uint8 [T, H, W, C]
      -> `VideoClipTransform`: one random resized crop for the whole clip, normalise  float [T, C, S, S]
      -> `VideoClipDataset` item {"pixel_values_videos": [T, C, S, S], "labels": int}

Decoding uses PyAV directly rather than `datasets`' own video decoding, which needs torchcodec and a
system FFmpeg; PyAV wheels bundle FFmpeg.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Union

import av
import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

if TYPE_CHECKING:
    import datasets


logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")

VideoSource = Union[str, os.PathLike, bytes, BinaryIO]
"""A video file: a path, its bytes, or a binary file-like object (its `name` attribute, if any, names it in errors)."""


class VideoDecodeError(ValueError):
    """A video cannot give the clip asked for.

    Attributes:
        source_name (`str`): the path or name of the video.
        reason (`str`): one of `"unreadable"`, `"empty"`, `"no video stream"`, `"too short"`; `VideoClipDataset`
            groups skipped videos by it.
    """

    def __init__(self, source_name: str, reason: str, detail: str):
        super().__init__(f"{source_name}: {detail}")
        self.source_name = source_name
        self.reason = reason


def _source_name(source: VideoSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return str(getattr(source, "name", None) or "<in-memory video>")


def _open_video(source: VideoSource) -> av.container.InputContainer:
    """Opens `source` with PyAV, turning every way this can fail into a `VideoDecodeError`."""
    name = _source_name(source)
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif not isinstance(source, (str, os.PathLike)) and source.seekable():
        # A file-like object may have been read before (e.g. by a probe): FFmpeg must see it from its start.
        source.seek(0)
    # FFmpeg's message for an empty file ("Invalid data found") would hide the simple cause.
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source) and os.path.getsize(source) == 0:
        raise VideoDecodeError(name, "empty", "the file is empty (0 bytes)")
    if isinstance(source, io.BytesIO) and source.getbuffer().nbytes == 0:
        raise VideoDecodeError(name, "empty", "the video is empty (0 bytes)")
    try:
        container = av.open(source)
    except (av.error.FFmpegError, OSError) as error:
        raise VideoDecodeError(name, "unreadable", f"cannot open the video ({error})") from error
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(name, "no video stream", "the file has no video stream")
    return container


def _count_frames(container: av.container.InputContainer) -> int:
    """Number of frames of the first video stream, from the header when possible.

    Most containers (mp4, mov, avi) store the exact count. Others (mkv, webm) only store a duration, so the count
    is estimated as duration * frame rate and may be off by one; `decode_clip` copes with that. Without either, the
    packets are counted, which reads the file but decodes nothing. This consumes the container.
    """
    stream = container.streams.video[0]
    if stream.frames > 0:
        return stream.frames
    rate = stream.average_rate or stream.guessed_rate
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / av.time_base
    else:
        seconds = 0.0
    if rate and seconds > 0:
        return round(seconds * rate)
    return sum(1 for packet in container.demux(stream) if packet.size > 0)


def _probe_num_frames(source: VideoSource) -> int:
    """Opens `source` and returns its (possibly estimated) number of video frames; raises `VideoDecodeError`."""
    with _open_video(source) as container:
        return _count_frames(container)


def _check_length(name: str, total_frames: int, num_frames: int, frame_step: int) -> None:
    needed = (num_frames - 1) * frame_step + 1
    if total_frames == 0:
        raise VideoDecodeError(name, "empty", "the video stream has no frames")
    if total_frames < needed:
        raise VideoDecodeError(
            name,
            "too short",
            f"the video is too short: it has {total_frames} frames, {needed} are needed for a clip of "
            f"{num_frames} frames every {frame_step} frames",
        )


def _decode_frames(source: VideoSource, frame_indices: range) -> tuple[list[np.ndarray], int]:
    """Decodes frames from the start of the video up to the last of `frame_indices` and keeps those.

    Returns:
        The kept frames (uint8 [H, W, C] each, fewer than asked when the video ends early) and the number of frames
        decoded.
    """
    frames = []
    num_decoded = 0
    with _open_video(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for index, frame in enumerate(container.decode(stream)):
                num_decoded = index + 1
                # Only the frames kept are converted to RGB, which costs about as much as decoding them.
                if index in frame_indices:
                    frames.append(frame.to_ndarray(format="rgb24"))
                if index == frame_indices[-1]:
                    break
        except av.error.FFmpegError as error:
            raise VideoDecodeError(
                _source_name(source), "unreadable", f"corrupt data after {num_decoded} frames ({error})"
            ) from error
    return frames, num_decoded


def _decode_clip_of(
    source: VideoSource, total_frames: int, num_frames: int, frame_step: int, generator: torch.Generator | None
) -> torch.Tensor:
    """`decode_clip` for a video whose number of frames, `total_frames`, is already known (maybe estimated)."""
    name = _source_name(source)
    span = (num_frames - 1) * frame_step + 1
    _check_length(name, total_frames, num_frames, frame_step)
    start = int(torch.randint(total_frames - span + 1, (1,), generator=generator))
    frames, num_decoded = _decode_frames(source, range(start, start + span, frame_step))
    if len(frames) < num_frames:
        # The header over-counted the frames (an estimate from the duration, or a truncated file): draw the start
        # again among the frames that really exist.
        if num_decoded < span:
            raise VideoDecodeError(
                name,
                "unreadable",
                f"only {num_decoded} of the {total_frames} frames its header announces could be decoded, {span} are "
                "needed (truncated file?)",
            )
        start = int(torch.randint(num_decoded - span + 1, (1,), generator=generator))
        frames, _ = _decode_frames(source, range(start, start + span, frame_step))
        if len(frames) < num_frames:
            raise VideoDecodeError(name, "unreadable", "the video gives a different number of frames on each read")
    return torch.from_numpy(np.stack(frames))


def decode_clip(
    source: VideoSource, num_frames: int = 16, frame_step: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Decodes one clip of `num_frames` frames taken every `frame_step` frames, at a random start.

    The start is uniform over all starts for which the clip fits in the video, drawn from `generator`. Frames are
    decoded sequentially from the beginning and decoding stops at the last frame of the clip, so only the part of
    the video up to the clip is read.

    Args:
        source (`str`, `os.PathLike`, `bytes` or binary file object):
            The video file, or its content.
        num_frames (`int`, *optional*, defaults to 16):
            Number of frames T of the clip.
        frame_step (`int`, *optional*, defaults to 4):
            Distance between two frames of the clip, in frames of the video.
        generator (`torch.Generator`, *optional*):
            Source of randomness for the start, for reproducible clips. Defaults to torch's global generator.

    Returns:
        `torch.Tensor` of dtype uint8 and shape [T, H, W, C] with C = 3 (RGB).

    Raises:
        `VideoDecodeError`: the video is unreadable or corrupt, has no video stream, has no frames, or has fewer
        than `(num_frames - 1) * frame_step + 1` frames. The message names the video.
    """
    return _decode_clip_of(source, _probe_num_frames(source), num_frames, frame_step, generator)


class VideoClipTransform:
    """Crops, resizes and normalises a clip, with the same crop for every frame.

    Training applies one random resized crop to the whole clip: cropping frames independently would make the
    content jump between frames, which V-JEPA would have to predict. Evaluation resizes the short side to
    `resize_size` and takes the center `image_size` square. Randomness comes from torch's global generator, as in
    torchvision; `modeling_ijepa.training.SeededExamples` seeds it per item.

    Args:
        image_size (`int`):
            Height and width S of the output frames.
        scale (`tuple[float, float]`, *optional*, defaults to `(0.3, 1.0)`):
            Range of the crop's area, as a fraction of the frame's area (training only).
        ratio (`tuple[float, float]`, *optional*, defaults to `(3/4, 4/3)`):
            Range of the crop's aspect ratio, width / height (training only).
        mean (`Sequence[float]`, *optional*, defaults to `IMAGENET_DEFAULT_MEAN`):
            Per-channel mean subtracted after scaling pixel values to [0, 1].
        std (`Sequence[float]`, *optional*, defaults to `IMAGENET_DEFAULT_STD`):
            Per-channel standard deviation the values are divided by.
        train (`bool`, *optional*, defaults to `True`):
            Random resized crop if `True`, else resize and center crop.
        resize_size (`int`, *optional*):
            Evaluation only: the short side is resized (bilinear, antialiased) to this before the center crop of
            `image_size`; at least `image_size`, which is the default (the crop then keeps the whole short side).
            Stock `VJEPA2VideoProcessor` resizes to `modeling_ijepa.hub.export.vjepa2_resize_size(image_size)`, i.e.
            `int(image_size * 256 / 224)`: pass that to preprocess as it does.

    Call with a uint8 tensor [T, H, W, C] (as `decode_clip` returns); returns float32 [T, C, S, S].
    """

    def __init__(
        self,
        image_size: int,
        scale: tuple[float, float] = (0.3, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        train: bool = True,
        resize_size: int | None = None,
    ):
        if resize_size is not None and train:
            raise ValueError("`resize_size` sets the evaluation resize; training takes a random resized crop.")
        resize_size = image_size if resize_size is None else resize_size
        if resize_size < image_size:
            raise ValueError(
                f"`resize_size` ({resize_size}) must be at least `image_size` ({image_size}): the center crop is "
                "taken from the resized frames."
            )
        if train:
            resize = [v2.RandomResizedCrop(image_size, scale=scale, ratio=ratio, antialias=True)]
        else:
            resize = [v2.Resize(resize_size, antialias=True), v2.CenterCrop(image_size)]
        # Resizing before the conversion to float works on 4x less data.
        self.transform = v2.Compose([*resize, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        # A `tv_tensors.Video` [T, C, H, W] tells torchvision that all T frames share one set of random parameters.
        clip = tv_tensors.Video(video.permute(0, 3, 1, 2))
        return self.transform(clip).as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.transform})"


class _HFVideoColumn(Sequence):
    """Lazy view of a `datasets` video column cast to `Video(decode=False)`.

    Item i is the video's path, or an in-memory file of its bytes named after the row. Rows are read only when
    asked for, so video bytes stay in the (memory-mapped) Arrow table rather than in Python memory.
    """

    def __init__(self, dataset: datasets.Dataset, column: str):
        self.dataset = dataset.select_columns([column]).with_format(None)
        self.column = column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> VideoSource:
        video = self.dataset[index][self.column] or {"path": None, "bytes": None}
        path, content = video["path"], video["bytes"]
        if content is not None:
            file = io.BytesIO(content)
            file.name = f"row {index} ({path})" if path else f"row {index}"
            return file
        if path is None:
            raise VideoDecodeError(f"row {index}", "unreadable", "the row has neither a path nor bytes")
        return path


class VideoClipDataset(Dataset):
    """Clips of videos, decoded with PyAV, for V-JEPA pretraining and video probes.

    Build it with `from_folder` or `from_hf_dataset`. At construction every video is probed cheaply (opened, its
    frame count read from the header) and the unusable ones are skipped with one warning each: unreadable or
    corrupt files, empty files and videos without frames, files without a video stream, and videos shorter than a
    clip. `skipped` maps each of these reasons to the videos skipped for it.

    A video can still fail while its frames are decoded (e.g. a file truncated after its header). The item then
    comes from the next video instead, so that a batch keeps its size; `decode_failures` counts these failures
    (per process: each DataLoader worker has its own count) and more than `max_decode_retries` failures in a row
    raise a `RuntimeError`.

    Each item's randomness (clip start, crop) is drawn from torch's global generator, and the dataset seeds
    nothing itself: wrap it in `modeling_ijepa.training.SeededExamples`, the one owner of per-example seeding, for
    items that depend only on (seed, epoch, index), whichever DataLoader worker loads them, and that change with
    the epoch.

    Args:
        videos (`Sequence[VideoSource]`):
            The videos: paths, bytes or binary file objects.
        labels (`Sequence[int]`, *optional*):
            One integer label per video, or `None` for unlabelled videos.
        class_names (`list[str]`, *optional*):
            Names of the labels, `class_names[label]`.
        num_frames (`int`, *optional*, defaults to 16):
            Frames T per clip.
        frame_step (`int`, *optional*, defaults to 4):
            Distance between two frames of a clip, in frames of the video.
        transform (`Callable`, *optional*):
            Maps a uint8 clip [T, H, W, C] to the float [T, C, S, S] returned. Defaults to
            `VideoClipTransform(224)`. Its randomness must come from torch's global generator to be reproducible.
        max_decode_retries (`int`, *optional*, defaults to 10):
            How many other videos an item may fall back to when decoding fails before giving up.

    Attributes:
        class_names (`list[str]` or `None`): label names, `None` for unlabelled videos.
        labels (`list[int]` or `None`): the label of each item.
        video_names (`list[str]`): the path (or row name) of each item's video.
        skipped (`dict[str, list[str]]`): reason -> names of the videos skipped at construction.
        decode_failures (`int`): decoding failures met while loading items in this process.

    Items are `{"pixel_values_videos": float [T, C, S, S], "labels": int}`, without `"labels"` when unlabelled;
    they have fixed shapes and batch with `torch.utils.data.default_collate`.
    """

    def __init__(
        self,
        videos: Sequence[VideoSource],
        labels: Sequence[int] | None = None,
        class_names: list[str] | None = None,
        num_frames: int = 16,
        frame_step: int = 4,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        max_decode_retries: int = 10,
    ):
        if labels is not None and len(labels) != len(videos):
            raise ValueError(f"got {len(labels)} labels for {len(videos)} videos")
        self.num_frames = num_frames
        self.frame_step = frame_step
        self.transform = transform if transform is not None else VideoClipTransform(224)
        self.max_decode_retries = max_decode_retries
        self.class_names = class_names
        self.decode_failures = 0

        self._videos = videos
        self._video_indices: list[int] = []
        self._total_frames: list[int] = []
        self.video_names: list[str] = []
        self.skipped: dict[str, list[str]] = {}
        for index in range(len(videos)):
            try:
                source = videos[index]
                total_frames = _probe_num_frames(source)
                _check_length(_source_name(source), total_frames, num_frames, frame_step)
            except VideoDecodeError as error:
                logger.warning("Skipping video %s", error)
                self.skipped.setdefault(error.reason, []).append(error.source_name)
                continue
            self._video_indices.append(index)
            self._total_frames.append(total_frames)
            self.video_names.append(_source_name(source))
        self.labels = [int(labels[i]) for i in self._video_indices] if labels is not None else None

        if not self._video_indices:
            if not videos:
                raise ValueError("no videos were given")
            raise ValueError(f"all {len(videos)} videos were skipped: {self._describe_skipped()}")
        if self.skipped:
            logger.info("Skipped %d of %d videos: %s", self.num_skipped, len(videos), self._describe_skipped())

    @classmethod
    def from_folder(
        cls,
        root: str | os.PathLike,
        num_frames: int = 16,
        frame_step: int = 4,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        max_decode_retries: int = 10,
    ) -> VideoClipDataset:
        """Videos found recursively under `root` (by extension: mp4, avi, mkv, mov, webm; hidden files ignored).

        If no video sits directly in `root`, its immediate sub-folders are classes: the sorted names of those holding
        videos become `class_names` and each video gets the label of the sub-folder it is in (at any depth).
        Otherwise the videos are unlabelled. The other arguments are those of `VideoClipDataset`.
        """
        root = Path(root)
        if not root.is_dir():
            raise NotADirectoryError(f"{root} is not a folder")
        paths = sorted(
            path
            for path in root.rglob("*")
            if path.suffix.lower() in VIDEO_EXTENSIONS
            and not any(part.startswith(".") for part in path.relative_to(root).parts)
            and path.is_file()
        )
        if not paths:
            raise ValueError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {root}")
        labels = class_names = None
        if all(path.parent != root for path in paths):
            folders = [path.relative_to(root).parts[0] for path in paths]
            class_names = sorted(set(folders))
            labels = [class_names.index(folder) for folder in folders]
        return cls([str(path) for path in paths], labels=labels, class_names=class_names, num_frames=num_frames,
                   frame_step=frame_step, transform=transform, max_decode_retries=max_decode_retries)

    @classmethod
    def from_hf_dataset(
        cls,
        dataset: datasets.Dataset,
        video_column: str = "video",
        label_column: str | None = None,
        num_frames: int = 16,
        frame_step: int = 4,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        max_decode_retries: int = 10,
    ) -> VideoClipDataset:
        """Videos of a `datasets.Dataset` column (paths, bytes, or a `datasets.Video` feature).

        The column is cast to `datasets.Video(decode=False)`, so rows give `{"path", "bytes"}` and PyAV decodes them:
        `datasets`' own decoding would need torchcodec and a system FFmpeg. Labels come from `label_column`: a
        `ClassLabel` gives `class_names`, strings are numbered in sorted order, integers are used as they are. The
        other arguments are those of `VideoClipDataset`.
        """
        import datasets

        for column in (video_column, label_column):
            if column is not None and column not in dataset.column_names:
                raise KeyError(f"column {column!r} not in the dataset's columns {dataset.column_names}")
        if dataset.features[video_column] != datasets.Video(decode=False):
            dataset = dataset.cast_column(video_column, datasets.Video(decode=False))
        labels = class_names = None
        if label_column is not None:
            labels = list(dataset.with_format(None)[label_column])
            feature = dataset.features[label_column]
            if isinstance(feature, datasets.ClassLabel):
                class_names = list(feature.names)
            elif labels and isinstance(labels[0], str):
                class_names = sorted(set(labels))
                labels = [class_names.index(label) for label in labels]
        return cls(_HFVideoColumn(dataset, video_column), labels=labels, class_names=class_names, num_frames=num_frames,
                   frame_step=frame_step, transform=transform, max_decode_retries=max_decode_retries)

    @property
    def num_skipped(self) -> int:
        """Number of videos skipped at construction."""
        return sum(len(names) for names in self.skipped.values())

    def _describe_skipped(self) -> str:
        needed = (self.num_frames - 1) * self.frame_step + 1
        return ", ".join(
            f"{len(names)} {reason}" + (f" (need {needed} frames)" if reason == "too short" else "")
            for reason, names in self.skipped.items()
        )

    def __len__(self) -> int:
        return len(self._video_indices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        for attempt in range(self.max_decode_retries + 1):
            # Falling back to the next videos keeps the choice deterministic, whichever worker loads the item.
            position = (index + attempt) % len(self)
            try:
                # The start comes from torch's global generator, which `SeededExamples` seeds per item, like the crop.
                clip = _decode_clip_of(
                    self._videos[self._video_indices[position]],
                    self._total_frames[position],
                    self.num_frames,
                    self.frame_step,
                    generator=None,
                )
                break
            except VideoDecodeError as error:
                self.decode_failures += 1
                last_error = error
                logger.warning("Could not decode item %d, using the next video instead: %s", position, error)
        else:
            raise RuntimeError(
                f"could not decode any of the {self.max_decode_retries + 1} videos tried from item {index} on "
                f"({self.decode_failures} decoding failures in this process so far); the last error: {last_error}"
            )
        item: dict[str, torch.Tensor | int] = {"pixel_values_videos": self.transform(clip)}
        if self.labels is not None:
            item["labels"] = self.labels[position]
        return item
