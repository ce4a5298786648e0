# SPDX-License-Identifier: Apache-2.0
"""Picture of I-JEPA's multi-block masks: the context and the target blocks drawn over real images.

    python -m benchmarks.plot_masks --config configs/cifar10_quality.yaml --output outputs/masks.png

The masks are the real output of the training collator (`modeling_ijepa.data.pipeline.build_mask_collator`: the
recipe's masking settings over the patch grid of the recipe's model), drawn for a whole training batch so that the
context has the length training gives it (every context of a batch keeps as many patches as the smallest one); the
first images of the batch are shown.
"""

import argparse
import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402

from modeling_ijepa.data.images import (  # noqa: E402
    evaluation_transform,
    find_image_column,
    load_image_dataset,
    prepare_image_dataset,
)
from modeling_ijepa.data.pipeline import build_mask_collator, input_grid  # noqa: E402
from modeling_ijepa.training.arguments import parse_args  # noqa: E402
from modeling_ijepa.training.models import build_model  # noqa: E402

TARGET_COLOURS = ("tab:red", "tab:orange", "tab:cyan", "tab:purple", "tab:green", "tab:pink")


def first_images(args, num_images: int, image_size: int) -> torch.Tensor:
    """The first `num_images` training images of the recipe's dataset, resized to `image_size` and normalised:
    [N, 3, H, W]."""
    splits = load_image_dataset(args.dataset_name, args.dataset_config_name, args.train_dir, args.cache_dir)
    split = splits[args.train_split]
    column = find_image_column(split, args.image_column_name)
    split = prepare_image_dataset(split.select(range(num_images)), column, evaluation_transform(image_size))
    return torch.stack([example["pixel_values"] for example in split])


def to_display(pixel_values: torch.Tensor) -> np.ndarray:
    """A normalised [3, H, W] image -> [H, W, 3] in [0, 1]."""
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None], torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None]
    return (pixel_values * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def plot_masks(
    images: torch.Tensor, context_indices: torch.Tensor, target_indices: torch.Tensor, patch_size: int, path, title: str
) -> Path:
    """Rows of (image, context, target blocks) for each image.

    Args:
        images: `[N, 3, H, W]` normalised images.
        context_indices: `[N, Kc]` row-major patch positions the context encoder sees.
        target_indices: `[N, M, Kt]` row-major patch positions of the M target blocks.
    """
    num_images, _, height, width = images.shape
    grid_width = width // patch_size
    extent = (0, width, height, 0)
    figure, axes = plt.subplots(num_images, 3, figsize=(7.5, 2.5 * num_images), squeeze=False)
    for row in range(num_images):
        picture = to_display(images[row])
        # Patches outside the context are greyed out: what the context encoder never sees.
        hidden = np.ones(height // patch_size * grid_width, dtype=bool)
        hidden[context_indices[row].numpy()] = False
        shade = np.zeros((height // patch_size, grid_width, 4))
        shade[..., :3], shade[..., 3] = 0.5, 0.85 * hidden.reshape(shade.shape[:2])
        panels = axes[row]
        for axis in panels:
            axis.imshow(picture, extent=extent, interpolation="bicubic")
            axis.set_xticks(range(0, width + 1, patch_size), labels=[])
            axis.set_yticks(range(0, height + 1, patch_size), labels=[])
            axis.tick_params(length=0)
            axis.grid(color="white", alpha=0.25, linewidth=0.5)
        panels[1].imshow(shade, extent=extent, interpolation="nearest")
        for block, colour in zip(target_indices[row], itertools.cycle(TARGET_COLOURS)):
            rows, columns = (block // grid_width).numpy(), (block % grid_width).numpy()
            corner = (columns.min() * patch_size, rows.min() * patch_size)
            size = ((columns.max() - columns.min() + 1) * patch_size, (rows.max() - rows.min() + 1) * patch_size)
            panels[2].add_patch(Rectangle(corner, *size, facecolor=colour, alpha=0.3))
            panels[2].add_patch(Rectangle(corner, *size, fill=False, edgecolor=colour, linewidth=2))
        panels[0].set_title("image" if row == 0 else "")
        panels[1].set_title(f"context: {context_indices.shape[1]} of {hidden.size} patches", fontsize=9)
        panels[2].set_title(f"{target_indices.shape[1]} target blocks of {target_indices.shape[2]} patches", fontsize=9)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def plot_recipe_masks(args, path, num_images: int = 4) -> Path:
    """The masks of one training batch of the recipe `args` (parsed pretraining arguments), over its data."""
    batch_size = args.per_device_train_batch_size
    # The grid comes from the model's config, as in training (a recipe may load a model of its own size).
    grid = input_grid(build_model(args).config)
    collator = build_mask_collator(args, grid, seed=args.seed)
    context_indices, target_indices = collator.sample_indices(batch_size)
    images = first_images(args, num_images, grid["image_size"])
    patch_size, side = grid["patch_size"], grid["image_size"] // grid["patch_size"]
    title = (
        f"I-JEPA masks ({side}x{side} patches of {patch_size}px): grey = hidden from the context encoder, "
        f"coloured = blocks to predict.\nEvery context of a batch ({batch_size}) is cut to the shortest one's length, "
        + ("keeping a random subset" if args.random_subset else "in raster order")
    )
    return plot_masks(images, context_indices[:num_images], target_indices[:num_images], patch_size, path, title)


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="masks.png", help="PNG file to write.")
    parser.add_argument("--num_images", type=int, default=4)
    own, pretraining_argv = parser.parse_known_args(argv)
    path = plot_recipe_masks(parse_args(pretraining_argv), own.output, own.num_images)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
