# SPDX-License-Identifier: Apache-2.0
"""Image datasets for pretraining and probing: loading, column detection, safe decoding, transforms.

Images are decoded by us (the dataset column is cast to `Image(decode=False)`), so that a corrupt or truncated
file becomes a counted skip instead of an exception deep inside `datasets`, and every mode PIL can open
(grayscale, palette, RGBA, CMYK, 16-bit) is converted to RGB the same way.
"""

import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Image, Value, load_dataset
from PIL import Image as PILImage
from torchvision.transforms import v2
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

logger = logging.getLogger(__name__)

IMAGE_COLUMN_CANDIDATES = ("image", "img", "pixel_values", "picture", "photo")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label", "class", "target")
DIGITS_NAME = "sklearn-digits"


def load_digits_dataset() -> DatasetDict:
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes) as a `DatasetDict` with
    `train`/`test` splits (80/20, fixed): a real image set that needs no download."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [PILImage.fromarray((image * (255 / 16)).astype(np.uint8), mode="L") for image in digits.images]
    dataset = Dataset.from_dict(
        {"image": images, "label": digits.target.tolist()},
    ).cast_column("label", ClassLabel(names=[str(digit) for digit in range(10)]))
    return dataset.train_test_split(test_size=0.2, seed=0, stratify_by_column="label")


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    cache_dir: str | None = None,
) -> DatasetDict:
    """A Hub id or a local folder in Hub layout (`dataset_name`), an imagefolder (`train_dir`), or, with neither,
    scikit-learn's digits. Raises `ValueError` naming the path when a local path is missing."""
    if dataset_name == DIGITS_NAME or (dataset_name is None and train_dir is None):
        return load_digits_dataset()
    if train_dir is not None:
        if not Path(train_dir).is_dir():
            raise ValueError(f"--train_dir {train_dir} is not a folder.")
        return load_dataset("imagefolder", data_dir=train_dir, cache_dir=cache_dir)
    looks_local = dataset_name.startswith((".", "/", "~")) or Path(dataset_name).exists()
    if looks_local and not Path(dataset_name).expanduser().exists():
        raise ValueError(f"--dataset_name {dataset_name}: no such local folder (and it is not a Hub id).")
    return load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)


def find_column(dataset: Dataset, requested: str | None, feature_type: type, candidates: tuple[str, ...], kind: str) -> str:
    """The requested column, else the first of the given feature type, else the first known name."""
    columns = list(dataset.column_names)
    if requested is not None:
        if requested not in columns:
            raise ValueError(f"No column `{requested}` in the dataset; its columns are {columns}.")
        return requested
    for name, feature in dataset.features.items():
        if isinstance(feature, feature_type):
            return name
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(f"Could not find the {kind} column among {columns}; pass it with --{kind}_column_name.")


def find_image_column(dataset: Dataset, requested: str | None = None) -> str:
    """The image column (see `find_column`); raises `ValueError` if it holds something else than images or image
    files (paths, bytes), which the cast to undecoded images would fail on with an Arrow error."""
    column = find_column(dataset, requested, Image, IMAGE_COLUMN_CANDIDATES, "image")
    feature = dataset.features[column]
    is_files = isinstance(feature, Value) and feature.dtype in ("string", "large_string", "binary", "large_binary")
    if not (isinstance(feature, Image) or is_files):
        raise ValueError(
            f"Column `{column}` holds {feature}, not images; its columns are {list(dataset.column_names)}. Pass the "
            "image column with --image_column_name."
        )
    return column


def find_label_column(dataset: Dataset, requested: str | None = None) -> str:
    return find_column(dataset, requested, ClassLabel, LABEL_COLUMN_CANDIDATES, "label")


def to_rgb(image: PILImage.Image) -> PILImage.Image:
    """Any PIL mode -> 8-bit RGB. Transparency is composited on black, 16/32-bit images are rescaled from
    their own range (not clipped), CMYK/palette/grayscale go through PIL's conversions."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = values.min(), values.max()
        scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
        return PILImage.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = PILImage.new("RGBA", rgba.size, (0, 0, 0, 255))
        return PILImage.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(value) -> PILImage.Image:
    """A datasets image cell ({"bytes", "path"}, a PIL image, or a path) -> fully decoded RGB image.

    Raises `OSError`/`ValueError` for unreadable data (`load()` forces truncated files to fail here), and PIL's
    `DecompressionBombError` for images of more than twice `PIL.Image.MAX_IMAGE_PIXELS` pixels."""
    with warnings.catch_warnings():
        # Large images are legitimate photos here; they are cropped and resized right after. PIL warns when it
        # opens them (images over twice its limit still raise `DecompressionBombError`).
        warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
        if isinstance(value, PILImage.Image):
            image = value
        elif isinstance(value, dict) and value.get("bytes") is not None:
            image = PILImage.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            image = PILImage.open(value["path"])
        elif isinstance(value, (str, Path)):
            image = PILImage.open(value)
        else:
            raise ValueError(f"not an image cell: {type(value).__name__}")
        image.load()
    return to_rgb(image)


def pretraining_transform(image_size: int, crop_scale: tuple[float, float] = (0.3, 1.0),
                          flip_probability: float = 0.0, num_views: int = 1):
    """The I-JEPA recipe: random resized crop, ImageNet normalisation, no other augmentation; optionally a
    horizontal flip after the crop (off in the reference), drawn as `in_memory_images.InMemoryImages` draws it. With
    `num_views` above 1 (`--num_views`), that many independent crops of each image, stacked (`Views`)."""
    flip = [v2.RandomHorizontalFlip(flip_probability)] if flip_probability > 0 else []
    transform = v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(image_size, scale=crop_scale, antialias=True),
            *flip,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ]
    )
    return Views(transform, num_views) if num_views > 1 else transform


class Views:
    """`num_views` independent draws of `transform` on one image, stacked: `(num_views, C, H, W)`. Drawn one after
    the other from the example's seeded RNG, as `in_memory.InMemoryImages` draws its crops."""

    def __init__(self, transform, num_views: int):
        self.transform = transform
        self.num_views = num_views

    def __call__(self, image) -> torch.Tensor:
        return torch.stack([self.transform(image) for _ in range(self.num_views)])


def evaluation_transform(image_size: int) -> v2.Compose:
    """Resize to the model's resolution and normalise (what the exported image processor does)."""
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize((image_size, image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ]
    )


class DecodeAndTransform:
    """`dataset.set_transform` function: decodes the image column and applies `transform`.

    An image that cannot be decoded yields `pixel_values=None`; `SkipUnreadable` drops and counts it at
    collation. Other columns listed in `keep_columns` pass through (e.g. labels)."""

    def __init__(self, image_column: str, transform, keep_columns: tuple[str, ...] = ()):
        self.image_column = image_column
        self.transform = transform
        self.keep_columns = keep_columns

    def __call__(self, batch: dict) -> dict:
        pixel_values = []
        for cell in batch[self.image_column]:
            try:
                pixel_values.append(self.transform(decode_image(cell)))
            except (OSError, ValueError, SyntaxError, PILImage.DecompressionBombError) as error:
                logger.debug("Skipping an unreadable image: %s", error)
                pixel_values.append(None)
        return {"pixel_values": pixel_values} | {column: batch[column] for column in self.keep_columns}


def prepare_image_dataset(dataset: Dataset, image_column: str, transform, keep_columns: tuple[str, ...] = ()) -> Dataset:
    """Cast the image column to undecoded cells and attach the decoding transform."""
    dataset = dataset.cast_column(image_column, Image(decode=False))
    dataset.set_transform(DecodeAndTransform(image_column, transform, keep_columns))
    return dataset


class SkipUnreadable:
    """Collate wrapper: drops examples whose `pixel_values` is None, and reports how many in `num_skipped`.

    The count travels with the batch because DataLoader workers are separate processes."""

    def __init__(self, collate_fn):
        self.collate_fn = collate_fn

    def __call__(self, examples: list[dict]) -> dict:
        readable = [example for example in examples if example["pixel_values"] is not None]
        if not readable:
            return {"num_skipped": len(examples)}
        batch = self.collate_fn(readable)
        batch["num_skipped"] = len(examples) - len(readable)
        return batch

    def __getattr__(self, name):
        # `set_epoch` and friends of the wrapped collator.
        return getattr(self.collate_fn, name)
