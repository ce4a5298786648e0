# SPDX-License-Identifier: Apache-2.0
"""Pretraining images held in memory: decoded once into a uint8 tensor, cropped and normalised a whole batch at a
time on the training device.

The per-example path (`image_data`) decodes every image with PIL and runs torchvision's transform on it, every
epoch. For a data set that fits in memory this path pays the decoding once (`decode_images`); per example, the
DataLoader then only draws the crop box and gathers the uint8 pixels (`InMemoryImages`), and `resized_crops`
turns the whole batch into normalised `pixel_values` on the device.

Example `i` of epoch `e` draws its crop from a generator seeded with `training.example_seed(seed, e, i)`, the
same draws and the same box as the per-example path under `SeededExamples`: the two paths see the same crops,
and runs that differ in worker count, process count or resume point see the same batches. `resized_crops`
computes torchvision's antialiased bilinear `resized_crop` of each box.
"""

import io
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from datasets import Dataset as HFDataset
from datasets import Image
from PIL import Image as PILImage
from torchvision.transforms import v2
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from modeling_ijepa.data.examples import SeededExamples, example_seed
from modeling_ijepa.data.images import decode_image

logger = logging.getLogger(__name__)

GIB = 2**30
DECODE_CHUNK = 1024
UNREADABLE = (OSError, ValueError, SyntaxError, PILImage.DecompressionBombError)


class InMemoryLimitExceeded(ValueError):
    """Decoding the data set would take more memory than allowed; its message says how much. The caller falls
    back to the per-example path."""


def _check_memory(num_images: int, height: int, width: int, max_bytes: int) -> None:
    needed = num_images * 3 * height * width
    if needed > max_bytes:
        raise InMemoryLimitExceeded(
            f"{num_images:,} images of 3x{height}x{width} (uint8) need {needed / GIB:.2f} GiB in memory, above the "
            f"in-memory limit of {max_bytes / GIB:.2f} GiB."
        )


def _stored_size(cell: dict) -> tuple[int, int] | None:
    """(height, width) of an undecoded datasets image cell, read from its header; None when it cannot be read."""
    try:
        with PILImage.open(io.BytesIO(cell["bytes"]) if cell.get("bytes") is not None else cell["path"]) as image:
            return image.height, image.width
    except UNREADABLE:
        return None


def decode_images(dataset: HFDataset, image_column: str, size: int, max_bytes: int,
                  num_threads: int | None = None) -> torch.Tensor:
    """Decodes every image of `dataset[image_column]` once, as RGB, into one uint8 tensor.

    Args:
        dataset (`datasets.Dataset`): a map-style data set.
        image_column (`str`): its image column (decoded or not).
        size (`int`): when the images do not all have the same size, each one is resized once so that its
            shorter side is `size`, then centre-cropped to `size x size`; images that share a size keep it.
        max_bytes (`int`): the most memory the decoded tensor may take (in each process: every process of a
            multi-process run decodes its own copy).
        num_threads (`int`, *optional*): decoding threads (PIL releases the GIL while it decodes); defaults to
            the number of CPUs.

    Returns:
        `torch.ByteTensor` of shape `(N, 3, H, W)`, N being the number of readable images (unreadable ones are
        logged and dropped, so row `i` is the i-th readable image).

    Raises:
        `InMemoryLimitExceeded`, before decoding anything, when `N * 3 * H * W` bytes exceed `max_bytes`.
    """
    cells = dataset.select_columns([image_column]).cast_column(image_column, Image(decode=False))
    if len(cells) == 0:
        raise ValueError("The data set has no images to decode.")
    # A data set far over the limit is refused before its headers are read (which takes a while on disk):
    # however the sizes turn out, the tensor takes at least this much.
    first = _stored_size(cells[0][image_column]) or (size, size)
    smallest = min(first, (size, size), key=lambda shape: shape[0] * shape[1])
    _check_memory(len(cells), *smallest, max_bytes)

    sizes = [_stored_size(cell) for chunk in cells.iter(batch_size=DECODE_CHUNK) for cell in chunk[image_column]]
    readable = [index for index, shape in enumerate(sizes) if shape is not None]
    shapes = {sizes[index] for index in readable}
    height, width = shapes.pop() if len(shapes) == 1 else (size, size)
    _check_memory(len(readable), height, width, max_bytes)

    resize = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])

    def decode(cell) -> torch.Tensor | None:
        try:
            image = decode_image(cell)
        except UNREADABLE:
            return None
        if (image.height, image.width) != (height, width):
            image = resize(image)
        return v2.functional.pil_to_tensor(image)

    images = torch.empty(len(readable), 3, height, width, dtype=torch.uint8)
    kept = 0
    cells = cells.select(readable) if len(readable) < len(cells) else cells
    with ThreadPoolExecutor(num_threads or os.cpu_count()) as executor:
        # One chunk at a time: `map` submits all it is given, and decoded images would pile up ahead of the copy.
        for chunk in cells.iter(batch_size=DECODE_CHUNK):
            for image in executor.map(decode, chunk[image_column]):
                if image is not None:
                    images[kept] = image
                    kept += 1
    if kept < len(sizes):
        logger.warning(f"Skipped {len(sizes) - kept} unreadable images of {len(sizes)} while decoding into memory.")
    logger.info(f"Decoded {kept:,} images of 3x{height}x{width} into memory ({images[:kept].nbytes / GIB:.2f} GiB).")
    return images[:kept]


class InMemoryImages(SeededExamples):
    """Decoded images as pretraining examples: example `i` of epoch `e` is image `i` with the random resized crop
    (and flip) to apply to it, drawn from a generator seeded with `example_seed(seed, e, i)`.

    The draws are those that the per-example path makes from torch's global RNG under the same seed:
    torchvision's `RandomResizedCrop` box (`crop_box`), then a flip when `torch.rand(1) <
    flip_probability`, as a `RandomHorizontalFlip` after the crop would draw it. The example's own generator
    spares forking and reseeding the global RNG for each example, which cost more than the rest of this path.

    Args:
        images (`torch.ByteTensor` of shape `(N, 3, H, W)`): from `decode_images`.
        seed (`int`): the run's seed.
        scale (`tuple[float, float]`): range of the crop's area, as a fraction of the image's.
        ratio (`tuple[float, float]`): range of the crop's aspect ratio (width / height).
        flip_probability (`float`): probability of a horizontal flip.
        num_views (`int`): crops of each image (`--num_views`), drawn one after the other, crop and flip, as the
            per-example path's `images.Views` draws them.

    Items are dicts of `images` (uint8 `(3, H, W)`), `crop_boxes` (int64 `(4,)`: top, left, height, width) and
    `flips` (`bool`); collated, they are what `resized_crops` takes. With `num_views = V > 1`, `crop_boxes` is
    `(V, 4)` and `flips` a bool tensor `(V,)`, and `pixel_values_of` makes the `V` crops of each image.
    """

    def __init__(self, images: torch.Tensor, seed: int, scale: tuple[float, float] = (0.3, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_probability: float = 0.0, num_views: int = 1):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Expected uint8 images of shape (N, 3, H, W), got {images.dtype} {tuple(images.shape)}.")
        super().__init__(images, seed)
        self.scale = scale
        self.ratio = ratio
        self.log_ratio = torch.log(torch.tensor(ratio)).tolist()  # rounded to float32, as torchvision holds it
        self.flip_probability = flip_probability
        self.num_views = num_views

    def __getitem__(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(example_seed(self.seed, self.epoch, index))
        image = self.dataset[index]
        boxes, flips = [], []
        for _ in range(self.num_views):
            boxes.append(self.crop_box(generator, image.shape[1], image.shape[2]))
            flip = self.flip_probability > 0 and torch.rand(1, generator=generator).item() < self.flip_probability
            flips.append(flip)
        if self.num_views == 1:
            return {"images": image, "crop_boxes": torch.tensor(boxes[0]), "flips": flips[0]}
        return {"images": image, "crop_boxes": torch.tensor(boxes), "flips": torch.tensor(flips)}

    def crop_box(self, generator: torch.Generator, height: int, width: int) -> tuple[int, int, int, int]:
        """torchvision's `RandomResizedCrop.make_params`, drawing from `generator`, draw for draw and with the same
        arithmetic: up to 10 tries of an area fraction in `scale` and a log aspect ratio, then a centre crop at the
        nearest allowed aspect ratio. Returns (top, left, height, width)."""
        area = height * width
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(*self.scale, generator=generator).item()
            aspect_ratio = torch.exp(torch.empty(1).uniform_(*self.log_ratio, generator=generator)).item()
            crop_width = int(round(math.sqrt(target_area * aspect_ratio)))
            crop_height = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                top = torch.randint(0, height - crop_height + 1, size=(1,), generator=generator).item()
                left = torch.randint(0, width - crop_width + 1, size=(1,), generator=generator).item()
                return top, left, crop_height, crop_width
        if width / height < min(self.ratio):
            crop_width, crop_height = width, int(round(width / min(self.ratio)))
        elif width / height > max(self.ratio):
            crop_width, crop_height = int(round(height * max(self.ratio))), height
        else:
            crop_width, crop_height = width, height
        return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def _resize_weights(starts: torch.Tensor, lengths: torch.Tensor, input_size: int, output_size: int,
                    flips: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example matrices that resize the span [start, start + length) of an axis of `input_size` pixels to
    `output_size` pixels, with the antialiased bilinear (triangle) filter of torch's `interpolate(...,
    antialias=True)` and PIL: its support widens with the shrink factor, and its taps are confined to the
    span and renormalised at its edges.

    Args:
        starts, lengths (`torch.Tensor` of shape `(B,)`): the spans, in pixels.
        flips (`torch.BoolTensor` of shape `(B,)`, *optional*): spans whose output runs backwards (a flip).

    Returns:
        `torch.FloatTensor` of shape `(B, output_size, input_size)` whose rows sum to 1.
    """
    device = starts.device
    lengths = lengths.float()[:, None]
    scale = lengths / output_size
    support = scale.clamp(min=1.0)
    outputs = torch.arange(output_size, device=device).expand(len(starts), -1)
    if flips is not None:
        outputs = torch.where(flips[:, None], output_size - 1 - outputs, outputs)
    # Distances between input and output pixel centres, in the span's frame and in units of the support. Pixels
    # outside the span are moved far away, out of every output pixel's reach.
    centres = scale * (outputs + 0.5) / support
    positions = torch.arange(input_size, device=device) - starts[:, None]
    positions = torch.where((positions >= 0) & (positions < lengths), (positions + 0.5) / support, torch.inf)
    weights = (positions[:, None, :] - centres[:, :, None]).abs_().neg_().add_(1).clamp_(min=0)
    return weights.mul_(1 / weights.sum(dim=-1, keepdim=True))


def resized_crops(images: torch.Tensor, crop_boxes: torch.Tensor, flips: torch.Tensor, size: int,
                  mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN, std: tuple[float, ...] = IMAGENET_DEFAULT_STD
                  ) -> torch.Tensor:
    """Crops each image to its box, resizes it to `size x size`, flips it where asked and normalises it: one
    batch, on the device of `images`, with no loop over examples.

    The result equals torchvision's `resized_crop(image, *box, [size, size], antialias=True)` computed in
    float32, then normalised, up to float rounding (and TF32 rounding where the device's float32 matmuls use
    TF32). torchvision on a uint8 image on the CPU, as in the per-example path, also rounds the resized
    pixels to integers: the two differ by at most about one level of 255.

    Args:
        images (`torch.ByteTensor` of shape `(B, 3, H, W)`).
        crop_boxes (`torch.LongTensor` of shape `(B, 4)`): top, left, height, width of each crop, in pixels.
        flips (`torch.BoolTensor` of shape `(B,)`): which crops to flip horizontally.
        size (`int`): side of the output, the model's image size.

    Returns:
        `torch.FloatTensor` of shape `(B, 3, size, size)`: pixel values normalised with `mean` and `std`.
    """
    batch_size, channels, height, width = images.shape
    device = images.device
    # Each output pixel is a convex combination of input pixels (the weights' rows sum to 1), so normalising
    # the input gives the same result as normalising the output, and the input is usually the smaller.
    std = torch.tensor(std, device=device).view(1, channels, 1, 1)
    mean = torch.tensor(mean, device=device).view(1, channels, 1, 1)
    pixels = images.float().mul_(1 / (255 * std)).sub_(mean / std)
    boxes = crop_boxes.to(device)
    rows = _resize_weights(boxes[:, 0], boxes[:, 2], height, size)
    columns = _resize_weights(boxes[:, 1], boxes[:, 3], width, size, flips=flips.to(device))
    # Separable resize, one matrix product per image and channel: rows (B3, S, H) @ (B3, H, W) -> (B3, S, W),
    # then columns (B3, S, W) @ (B3, W, S) -> (B3, S, S), which is the contiguous (B, 3, S, S) output.
    resized_rows = torch.bmm(rows.repeat_interleave(channels, dim=0), pixels.view(-1, height, width))
    resized = torch.bmm(resized_rows, columns.transpose(1, 2).repeat_interleave(channels, dim=0))
    return resized.view(batch_size, channels, size, size)


def pixel_values_of(batch: dict, size: int) -> dict:
    """A batch of `InMemoryImages` (uint8 `images`, `crop_boxes`, `flips`) with those replaced by normalised
    `pixel_values` [B, 3, size, size], made on the batch's device; any other batch as it is. Every training loop calls
    it on each batch, so a loop works with both data paths.

    With several crops per image (`--num_views V`), either path's batch becomes `pixel_values` [B * V, 3, size,
    size], the `V` crops of image `i` at rows `i * V ... i * V + V - 1`."""
    if "images" in batch:
        images, boxes, flips = batch.pop("images"), batch.pop("crop_boxes"), batch.pop("flips")
        if boxes.ndim == 3:  # (B, V, 4): several crops of each image
            images = images.repeat_interleave(boxes.shape[1], dim=0)
            boxes, flips = boxes.flatten(0, 1), flips.flatten(0, 1)
        batch["pixel_values"] = resized_crops(images, boxes, flips, size)
    elif "pixel_values" in batch and batch["pixel_values"].ndim == 5:  # (B, V, 3, S, S) from `images.Views`
        batch["pixel_values"] = batch["pixel_values"].flatten(0, 1)
    return batch

