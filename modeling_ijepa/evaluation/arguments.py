# SPDX-License-Identifier: Apache-2.0
"""Command-line arguments of the probe command (`run_linear_probe.py`)."""

import argparse
import logging
from pathlib import Path

from modeling_ijepa.cli import HelpFormatter
from modeling_ijepa.data.images import DIGITS_NAME
from modeling_ijepa.evaluation.probes import FEATURE_NORMALISATIONS

logger = logging.getLogger(__name__)  # probing runs on one process


PROBE_EXAMPLES = """examples:
  # an exported encoder on CIFAR-10
  python run_linear_probe.py --model_name_or_path outputs/cifar10 --dataset_name uoft-cs/cifar10 \\
      --output_dir outputs/probe_cifar10

  # the baseline: the same architecture at random initialisation, low-shot (10 labelled digits per class)
  python run_linear_probe.py --model_name_or_path outputs/digits --random_init --samples_per_class 10 \\
      --output_dir outputs/probe_digits_random

  # a reference V-JEPA checkpoint on labelled video folders
  python run_linear_probe.py --modality video --model_name_or_path vitl16.pth.tar --num_attention_heads 16 \\
      --train_dir videos/train --validation_dir videos/val --output_dir outputs/probe_video"""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The encoder to probe, and which of its features."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model_name_or_path",
        required=True,
        help="A model folder (exported encoder, pretraining model, or pretraining run output), a Hub id, or a "
        "reference .pth.tar checkpoint (its target encoder is probed).",
    )
    model.add_argument(
        "--random_init",
        action="store_true",
        help="Probe the same architecture with fresh random weights (seeded by --seed), as a baseline.",
    )
    model.add_argument(
        "--num_attention_heads", type=int, default=None, help="Encoder heads, for a .pth.tar checkpoint."
    )
    model.add_argument(
        "--num_frames", type=int, default=None, help="Video .pth.tar: frames per clip, when the checkpoint cannot tell."
    )
    model.add_argument(
        "--feature_layers",
        type=int,
        default=1,
        help="1: the last layer's output (after the final LayerNorm). K > 1: the last K layers concatenated, each "
        "layer-normed without affine parameters.",
    )
    model.add_argument(
        "--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="For feature extraction."
    )


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The labelled splits, how much of them is used, and how they are loaded."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name", type=str, default=None,
        help=f"Hub id or local Hub-layout folder; with neither it nor --train_dir, {DIGITS_NAME}.",
    )
    data.add_argument("--dataset_config_name", type=str, default=None, help="Configuration of --dataset_name.")
    data.add_argument(
        "--train_dir", type=str, default=None, help="Folder with one sub-folder of images/videos per class."
    )
    data.add_argument(
        "--validation_dir", type=str, default=None, help="Same layout; evaluated instead of --eval_split."
    )
    data.add_argument("--image_column_name", type=str, default=None, help="Image column; detected when absent.")
    data.add_argument("--label_column_name", type=str, default=None, help="Label column; detected when absent.")
    data.add_argument("--train_split", type=str, default="train", help="Split the probes are fit on.")
    data.add_argument("--eval_split", type=str, default="test", help="Split the probes are evaluated on, once.")
    data.add_argument("--max_train_samples", type=int, default=None, help="Seeded random subset of the training split.")
    data.add_argument("--max_eval_samples", type=int, default=None, help="Seeded random subset of the eval split.")
    data.add_argument("--frame_step", type=int, default=4, help="Video: frames between two sampled frames of a clip.")
    data.add_argument("--cache_dir", type=str, default=None, help="datasets cache.")
    data.add_argument("--per_device_eval_batch_size", type=int, default=64, help="Batch size of feature extraction.")
    data.add_argument(
        "--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes (0: load in the main one)."
    )


def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    """The probes' sweeps and training, the kNN, and low-shot subsets."""
    probe = parser.add_argument_group("probes")
    probe.add_argument(
        "--validation_fraction", type=float, default=0.1, help="Held out of the training split for the sweep."
    )
    probe.add_argument(
        "--sweep_folds", type=int, default=1,
        help="Above 1: choose the probes' settings by stratified k-fold cross-validation over the training split "
        "(every example held out once) instead of one part of --validation_fraction; for low-shot subsets, where "
        "that part is a few examples.",
    )
    probe.add_argument(
        "--linear_weight_decays",
        type=float,
        nargs="+",
        default=[1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
        help="L2 strengths swept for the linear probe (logistic regression: mean cross-entropy + wd/2 * |W|^2).",
    )
    probe.add_argument(
        "--linear_feature_normalisations",
        nargs="+",
        choices=list(FEATURE_NORMALISATIONS),
        default=["standardise"],
        help="How the linear probe's features are normalised; with several, the choice is part of its sweep. "
        "standardise: every channel to zero mean and unit std over the training split. unit_norm: every feature "
        "vector centred on its own mean and scaled to unit L2 norm, as in MSN's low-shot evaluation.",
    )
    probe.add_argument("--linear_max_iter", type=int, default=1000, help="L-BFGS iterations of the linear probe.")
    probe.add_argument(
        "--attentive_learning_rates", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2],
        help="Video: AdamW learning rates swept for the attentive probe.",
    )
    probe.add_argument(
        "--attentive_weight_decays", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1],
        help="Video: AdamW weight decays swept for the attentive probe.",
    )
    probe.add_argument(
        "--attentive_epochs", type=int, default=100, help="Video: training epochs of the attentive probe."
    )
    probe.add_argument(
        "--attentive_batch_size", type=int, default=256, help="Video: batch size of the attentive probe."
    )
    probe.add_argument("--knn_k", type=int, default=20, help="Neighbours of the weighted kNN classifier.")
    probe.add_argument(
        "--knn_temperature", type=float, default=0.07, help="Temperature of the kNN's similarity weights."
    )
    low_shot = probe.add_mutually_exclusive_group()
    low_shot.add_argument(
        "--samples_per_class", type=int, default=None, help="Low-shot: N labelled examples per class."
    )
    low_shot.add_argument(
        "--label_fraction", type=float, default=None, help="Low-shot: a stratified fraction of labels."
    )
    probe.add_argument(
        "--subset_seed", type=int, default=None,
        help="Low-shot: seed of the labelled subset (default: --seed). Other values draw other labelled examples "
             "for the same encoder, random initialisation included (--seed also seeds its weights).",
    )


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Where results go, the seed, and the model card."""
    output = parser.add_argument_group("output")
    output.add_argument(
        "--output_dir", type=str, default="outputs/linear_probe",
        help="Where the feature cache and probe_results.json go.",
    )
    output.add_argument("--seed", type=int, default=0, help="Seed of the subsets, the held-out part and the probes.")
    output.add_argument(
        "--no_update_model_card", action="store_true", help="Leave the model folder's README.md model card as it is."
    )


def build_parser() -> argparse.ArgumentParser:
    """The arguments of `run_linear_probe.py`, in the groups of its `--help`."""
    parser = argparse.ArgumentParser(
        prog="run_linear_probe.py", description=__doc__, epilog=PROBE_EXAMPLES, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--modality", choices=["image", "video"], default="image", help="Images or videos (video needs folders)."
    )
    for add_arguments in (add_model_arguments, add_data_arguments, add_probe_arguments, add_output_arguments):
        add_arguments(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The probe command's arguments from `argv` (default: `sys.argv[1:]`), checked."""
    args = build_parser().parse_args(argv)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Raise `ValueError` on values the parser cannot reject by type alone."""
    if not 0 < args.validation_fraction < 1:
        raise ValueError(f"--validation_fraction must lie in (0, 1), got {args.validation_fraction}.")
    if args.sweep_folds < 1:
        raise ValueError(f"--sweep_folds must be positive, got {args.sweep_folds}.")
    if args.label_fraction is not None and not 0 < args.label_fraction <= 1:
        raise ValueError(f"--label_fraction must lie in (0, 1], got {args.label_fraction}.")
    if args.samples_per_class is not None and args.samples_per_class < 1:
        raise ValueError(f"--samples_per_class must be positive, got {args.samples_per_class}.")
    if args.subset_seed is not None and args.samples_per_class is None and args.label_fraction is None:
        raise ValueError("--subset_seed seeds a low-shot subset: give --samples_per_class or --label_fraction too.")
    if args.feature_layers < 1:
        raise ValueError(f"--feature_layers must be positive, got {args.feature_layers}.")
    if args.modality == "video" and (args.train_dir is None or args.validation_dir is None):
        raise ValueError(
            "--modality video needs --train_dir and --validation_dir (folders with a sub-folder per class)."
        )
    for name in ("train_dir", "validation_dir"):
        folder = getattr(args, name)
        if folder is not None and not Path(folder).is_dir():
            raise ValueError(f"--{name} {folder} is not a folder.")
