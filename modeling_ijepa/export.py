"""Writing an encoder folder that stock transformers loads: weights, config and image processor."""

from pathlib import Path

from transformers import ViTImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .configuration_ijepa import as_pair


def image_processor_for(image_size: int | tuple[int, int]) -> ViTImageProcessor:
    """Resize to the training resolution, scale to [0, 1] and normalise with ImageNet statistics, as in
    pretraining."""
    height, width = as_pair(image_size)
    return ViTImageProcessor(
        size={"height": height, "width": width},
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )


def save_encoder_for_transformers(encoder, output_dir: str | Path) -> None:
    """Save an `IJepaModel` so that `AutoModel.from_pretrained(output_dir)` and
    `pipeline("image-feature-extraction", model=output_dir)` work with stock transformers and no custom code.

    The config is written as transformers' own `IJepaConfig` (no predictor fields, no `auto_map`).
    """
    output_dir = Path(output_dir)
    encoder.save_pretrained(output_dir)
    stock_config = encoder.config.stock_config()
    stock_config.architectures = ["IJepaModel"]
    stock_config.save_pretrained(output_dir)
    image_processor_for(encoder.config.image_size).save_pretrained(output_dir)
