# SPDX-License-Identifier: Apache-2.0
"""Writing an encoder folder that stock transformers loads: weights, config and image or video processor."""

from pathlib import Path

from transformers import ViTImageProcessor, VJEPA2VideoProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from modeling_ijepa.configuration_ijepa import as_pair


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


def vjepa2_resize_size(crop_size: int) -> int:
    """The short side that stock `VJEPA2VideoProcessor` resizes a clip to before its center crop of `crop_size`:
    `int(crop_size * 256 / 224)`, the V-JEPA 2 evaluation protocol. The processor computes it from `crop_size`
    and ignores any other `size`, so our evaluation transform uses this number to see what stock users see."""
    return int(crop_size * 256 / 224)


def video_processor_for(crop_size: int) -> VJEPA2VideoProcessor:
    """Stock preprocessing for an exported V-JEPA 2 model, the same as our evaluation transform
    (`VideoClipTransform(crop_size, train=False, resize_size=vjepa2_resize_size(crop_size))`): resize the short side
    to `vjepa2_resize_size(crop_size)` (bilinear, antialiased), center crop `crop_size`, scale to [0, 1] and
    normalise with the ImageNet mean and std, as pretraining does after its random resized crop."""
    return VJEPA2VideoProcessor(
        crop_size=crop_size, image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD)
    )


def export_vjepa2(model, output_dir: str | Path) -> None:
    """Write a folder that stock `transformers.AutoModel.from_pretrained(output_dir)` loads as `VJEPA2Model` (no
    custom code, no missing or unexpected keys): the target encoder and the trained predictor of a
    `VJepa2ForPreTraining`, a stock `VJEPA2Config`, and a video processor config (`video_processor_for`).
    `AutoModelForVideoClassification` starts from it too (with a new attentive pooler and classifier)."""
    output_dir = Path(output_dir)
    model.export_encoder().save_pretrained(output_dir)
    video_processor_for(model.config.crop_size).save_pretrained(output_dir)
