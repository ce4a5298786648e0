# SPDX-License-Identifier: Apache-2.0
"""Command-line arguments of the pretraining script, with YAML recipes.

`--config recipe.yaml` sets defaults from a recipe whose keys are argument names; arguments given on the
command line override it. Unknown keys and impossible values are refused before any work starts.
"""

import argparse
import logging
from pathlib import Path

import yaml

from modeling_ijepa.cli import HelpFormatter, float_pair
from modeling_ijepa.configuration_ijepa import PREDICTION_LOSSES, VIT_DIVISIBLE_SIZES, VIT_SIZES, validate_sizes
from modeling_ijepa.configuration_vjepa import FRAME_TUBELETS, VIDEO_SIZES
from modeling_ijepa.data.masking import MultiBlockMaskCollator, as_range
from modeling_ijepa.data.streaming import check_streaming_arguments

logger = logging.getLogger(__name__)


PRETRAINING_DESCRIPTION = """I-JEPA (images) and V-JEPA / V-JEPA 2 (video) self-supervised pretraining with Accelerate.

With no dataset argument it pretrains on scikit-learn's bundled digits, which need no download. At the end
--output_dir holds the target encoder in transformers' format, the full pretraining model in pretraining/, the
training curves and a model card."""

PRETRAINING_EXAMPLES = """examples:
  # the CIFAR-10 recipe, one process per device
  accelerate launch run_pretraining.py --config configs/cifar10_vit_tiny.yaml --output_dir outputs/cifar10

  # a quick run on the bundled digits, on a CPU
  python run_pretraining.py --config configs/digits_vit_micro.yaml --max_train_steps 50 --output_dir outputs/digits

  # V-JEPA on a folder of videos, resumed from the newest checkpoint
  accelerate launch run_pretraining.py --config configs/vjepa_vitl16.yaml --train_dir videos/train \\
      --checkpointing_steps 1000 --resume_from_checkpoint latest"""


def add_image_data_arguments(group) -> None:
    """The arguments `data.pipeline.build_image_dataset` reads (also used by the MAE baseline's trainer)."""
    group.add_argument(
        "--dataset_name", type=str, default=None,
        help="Hub id or local folder in Hub layout; with neither it nor --train_dir, scikit-learn's bundled digits.",
    )
    group.add_argument("--dataset_config_name", type=str, default=None, help="Configuration of --dataset_name.")
    group.add_argument("--train_dir", type=str, default=None, help="Image folder, or video folder for --modality video.")
    group.add_argument("--train_split", type=str, default="train", help="Split of --dataset_name to train on.")
    group.add_argument("--image_column_name", type=str, default=None, help="Image column; detected when absent.")
    group.add_argument("--max_train_samples", type=int, default=None, help="Train on the first N examples only.")
    group.add_argument("--cache_dir", type=str, default=None, help="Cache folder of `datasets`.")
    group.add_argument(
        "--streaming", action="store_true",
        help="Images: stream --dataset_name (a Hub id, or a local folder of parquet or webdataset shards) instead of "
             "loading it whole; each process reads its own share. Needs --max_train_steps; a resumed run continues "
             "the stream where it stopped, on the same number of processes.",
    )
    group.add_argument(
        "--shuffle_buffer_size", type=int, default=1000,
        help="--streaming: images shuffled together, in windows of this many (each process holds up to three).",
    )
    group.add_argument("--crop_scale", type=float_pair, default=(0.3, 1.0), help="RandomResizedCrop scale range.")
    group.add_argument(
        "--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes (0: load in the main one)."
    )
    group.add_argument(
        "--in_memory_data", action="store_true",
        help="Images: decode the data set once into memory (uint8) and crop, flip and normalise whole batches on the "
             "training device, with the same per-example random crops as the default path. Above "
             "--max_in_memory_gib the run warns and uses the default path (the model card records which ran).",
    )
    group.add_argument(
        "--max_in_memory_gib", type=float, default=8.0,
        help="The most memory, in GiB, that --in_memory_data may take for the decoded images, in each process (every "
             "process holds its own copy).",
    )
    group.add_argument(
        "--horizontal_flip", type=float, default=0.0,
        help="Images: probability of a horizontal flip after the random resized crop; 0 (off) as in the reference.",
    )
    group.add_argument(
        "--num_views", type=int, default=1,
        help="Images: crops of each image in a step, each with its own random resized crop, flip and masks; "
             "--per_device_train_batch_size counts images, so a step trains on batch x views crops. 1 as in the "
             "reference.",
    )


def add_data_arguments(group) -> None:
    """The data arguments: the image ones (`add_image_data_arguments`) and those of video."""
    add_image_data_arguments(group)
    group.add_argument("--video_column_name", type=str, default=None, help="Video: video column; detected when absent.")
    group.add_argument("--num_frames", type=int, default=16, help="Video: frames per clip.")
    group.add_argument("--frame_step", type=int, default=4, help="Video: stride between sampled frames.")
    group.add_argument(
        "--max_skip_fraction", type=float, default=0.1,
        help="Stop with an error when more than this fraction of the examples read (images) or found (videos) cannot "
             "be decoded; 0 tolerates none, 1 any number.",
    )


def add_model_arguments(group) -> None:
    """The model's architecture and sizes, or the saved model to continue."""
    group.add_argument(
        "--architecture", choices=["vjepa", "vjepa2"], default="vjepa",
        help="Video model: V-JEPA (Bardes et al., 2024; fixed sin-cos positions, exported with remote code) or "
             "V-JEPA 2 (Assran et al., 2025; 3D RoPE, exported as transformers' own `vjepa2`, which stock "
             "transformers loads). For V-JEPA 2, --image_size is its crop_size, --num_frames its frames_per_clip and "
             "--predictor_* its pred_* fields.",
    )
    group.add_argument(
        "--model_name_or_path", type=str, default=None,
        help="Continue pretraining from a saved pretraining model (context encoder, predictor and target encoder): a "
             "run's --output_dir or its pretraining/ folder, or for V-JEPA 2 the --output_dir of `python -m "
             "modeling_ijepa.conversion.vjepa2`. Its sizes replace the size arguments and the crops and masks follow "
             "its token grid; --patch_size and --tubelet_size must be those it was trained with, and so must "
             "--image_size and --num_frames except for V-JEPA 2 (RoPE has no position table of a fixed size).",
    )
    group.add_argument("--image_size", type=int, default=224, help="Side of the square crops (and of the model input).")
    group.add_argument("--patch_size", type=int, default=16, help="Side of a square patch; divides --image_size.")
    group.add_argument("--tubelet_size", type=int, default=2, help="Video: frames per patch; divides --num_frames.")
    group.add_argument("--hidden_size", type=int, default=768, help="Encoder width.")
    group.add_argument("--num_hidden_layers", type=int, default=12, help="Encoder depth.")
    group.add_argument("--num_attention_heads", type=int, default=12, help="Encoder attention heads.")
    group.add_argument("--mlp_ratio", type=float, default=4.0, help="Encoder MLP width over --hidden_size.")
    group.add_argument("--predictor_hidden_size", type=int, default=384, help="Predictor width (narrower than the encoder).")
    group.add_argument("--predictor_num_hidden_layers", type=int, default=6, help="Predictor depth.")
    group.add_argument(
        "--predictor_num_attention_heads", type=int, default=None,
        help="Predictor attention heads; the encoder's when not given.",
    )
    group.add_argument(
        "--uniform_power", action=argparse.BooleanOptionalAction, default=True,
        help="Video (V-JEPA): the 3D sin-cos positions give time, rows and columns equal shares of the channels, as "
             "the reference does by default.",
    )
    group.add_argument(
        "--attn_implementation", type=str, default="sdpa",
        choices=["eager", "sdpa", "flash_attention_2", "flex_attention"],
        help="transformers' attention implementation.",
    )
    group.add_argument(
        "--gradient_checkpointing", action="store_true", help="Recompute activations in the backward pass to save memory."
    )
    group.add_argument("--torch_compile", action="store_true", help="Compile the model with torch.compile.")
    group.add_argument("--variance_loss_weight", type=float, default=0.0,
                       help="Images: weight of a VICReg-style variance term on the context encoder's output "
                            "(as in C-JEPA). 0 (off) reproduces the paper.")
    group.add_argument("--covariance_loss_weight", type=float, default=0.0,
                       help="Images: weight of a VICReg-style covariance term on the context encoder's output "
                            "(as in C-JEPA). 0 (off) reproduces the paper.")
    group.add_argument("--sigreg_loss_weight", type=float, default=0.0,
                       help="Images: weight of LeJEPA's SIGReg on the context encoder's output (an isotropic Gaussian "
                            "along random directions, new ones at every step). 0 (off) reproduces the paper.")
    group.add_argument("--sigreg_num_slices", type=int, default=256,
                       help="Images: how many random directions SIGReg tests at each step.")
    group.add_argument("--target_average_layers", type=int, default=1,
                       help="Images: the target is the mean of the target encoder's last K blocks, each layer-normed, "
                            "layer-normed again (as in data2vec). 1 (the last block) reproduces the paper.")
    group.add_argument("--prediction_loss", choices=PREDICTION_LOSSES, default="smooth_l1",
                       help="Images: how predictions are compared with the targets: 'smooth_l1' (the paper's) or "
                            "'l1' (the absolute error, V-JEPA's).")
    group.add_argument("--view_invariance_weight", type=float, default=0.0,
                       help="Images, with --num_views 2 or more: weight of a term that pulls together the mean "
                            "context-encoder tokens of an image's crops (VICReg's invariance). 0 (off) reproduces "
                            "the paper.")


def add_masking_arguments(group) -> None:
    """The multi-block masks (images; video uses V-JEPA's fixed 3D recipe)."""
    group.add_argument("--num_targets", type=int, default=4, help="Target blocks per image.")
    group.add_argument(
        "--target_scale", type=float_pair, default=(0.15, 0.2), help="Range of a target block's area, 'low,high' (a fraction of the grid)."
    )
    group.add_argument(
        "--target_aspect_ratio", type=float_pair, default=(0.75, 1.5), help="Range of a target block's aspect ratio, 'low,high'."
    )
    group.add_argument(
        "--context_scale", type=float_pair, default=(0.85, 1.0),
        help="Range of the context block's area, 'low,high', before the target patches are removed from it.",
    )
    group.add_argument(
        "--min_context_patches", type=int, default=10,
        help="A context left with fewer patches once the targets are removed is drawn again.",
    )
    group.add_argument(
        "--allow_overlap", action="store_true", help="Keep context patches that fall in a target block (off in the paper)."
    )
    group.add_argument("--full_range_placement", action="store_true",
                         help="Let blocks reach the last row and column (the reference never does).")
    group.add_argument("--random_subset", action="store_true",
                         help="Equalise index lengths with a random subset instead of the reference's raster-order cut.")
    group.add_argument("--num_mask_draws", type=int, default=1,
                         help="Images: mask draws per image in each step, all predicted from one pass of the target "
                              "encoder. 1 reproduces the paper.")


def add_schedule_arguments(group) -> None:
    """The learning-rate, weight-decay and EMA-momentum schedules."""
    group.add_argument("--learning_rate", type=float, default=1e-3, help="Peak learning rate.")
    group.add_argument("--start_lr", type=float, default=2e-4, help="Learning rate at the start of the warmup.")
    group.add_argument("--final_lr", type=float, default=1e-6, help="Learning rate at the end of the cosine decay.")
    group.add_argument("--warmup_epochs", type=float, default=0.0, help="Linear learning-rate warmup, in epochs.")
    group.add_argument("--warmup_steps", type=int, default=None, help="Overrides --warmup_epochs.")
    group.add_argument(
        "--weight_decay", type=float, default=0.04,
        help="Weight decay at the start of its cosine schedule (biases and 1-D parameters are not decayed).",
    )
    group.add_argument("--final_weight_decay", type=float, default=0.4, help="Weight decay at the end.")
    group.add_argument(
        "--ema_momentum", type=float, default=0.996, help="Momentum of the target encoder's EMA at the start."
    )
    group.add_argument("--final_ema_momentum", type=float, default=1.0, help="EMA momentum at the end.")
    group.add_argument(
        "--momentum_schedule", choices=["linear", "cosine"], default="linear",
        help="Shape of the EMA momentum's rise from --ema_momentum to --final_ema_momentum.",
    )
    group.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW's beta1.")
    group.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW's beta2.")
    group.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW's epsilon.")
    group.add_argument(
        "--ipe_scale", type=float, default=1.0,
        help="Stretch the learning-rate, weight-decay and momentum schedules to ipe_scale times the trained steps, so "
             "a run stops before they reach their final values (the reference V-JEPA recipe: 1.25).",
    )


def add_precision_arguments(group) -> None:
    """The training precision (also used by the MAE baseline's trainer): Accelerate's mixed precision and torch's
    float32 matmul precision, which holds for the training loop only (`runtime.float32_matmul_precision`)."""
    group.add_argument(
        "--mixed_precision", choices=["no", "fp16", "bf16", "auto"], default=None,
        help="Accelerate's mixed precision; when not given, that of `accelerate config` or `accelerate launch`. "
             "'auto' is bf16 where the device computes bf16 natively (a GPU that supports it, a CPU with AVX-512 or "
             "AMX) and float32 elsewhere: on an AVX2-only CPU bf16 autocast is emulated, many times slower.",
    )
    group.add_argument(
        "--matmul_precision", choices=["highest", "high", "medium"], default=None,
        help="torch.set_float32_matmul_precision for float32 matrix products: 'high' allows TF32 on GPUs, 'medium' "
             "bf16 products (AMX on recent Intel CPUs). On a CPU, pair 'medium' with --attn_implementation eager: "
             "the CPU's SDPA kernel slows down in that mode.",
    )


def add_optimisation_arguments(group) -> None:
    """Batch, steps, AdamW, clipping and precision."""
    group.add_argument("--per_device_train_batch_size", type=int, default=8, help="Batch size on each process.")
    group.add_argument(
        "--gradient_accumulation_steps", type=int, default=1, help="Batches accumulated into one optimizer step."
    )
    group.add_argument(
        "--global_batch_size", type=int, default=None,
        help="Keep this many examples per optimizer step on any number of processes: sets "
             "--gradient_accumulation_steps to global / (--per_device_train_batch_size x processes), which must "
             "divide it (the I-JEPA recipe: 2048 = 16 GPUs x 128, or 8 GPUs x 128 x 2 accumulation steps).",
    )
    group.add_argument("--num_train_epochs", type=int, default=1, help="Passes over the training data.")
    group.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    group.add_argument(
        "--max_train_minutes", type=float, default=None,
        help="Stop (and export) after this much training time; the schedules still follow the step count.",
    )
    group.add_argument(
        "--max_grad_norm", type=float, default=None,
        help="Clip the context encoder's and the predictor's gradients, each to this 2-norm on its own; off by default.",
    )
    group.add_argument(
        "--clip_grad_after_warmup", action="store_true",
        help="Clip (--max_grad_norm) only in the epochs after the warmup epochs (0-based epoch index > "
             "--warmup_epochs), as the reference V-JEPA does.",
    )
    add_precision_arguments(group)
    group.add_argument("--seed", type=int, default=0, help="Seed of the initialisation, data order, crops and masks.")
    group.add_argument(
        "--on_nonfinite_loss", choices=["error", "skip"], default="error",
        help="On a NaN or infinite loss: stop with an error, or skip the batch (many in a row still stop the run).",
    )


def add_output_arguments(group) -> None:
    """Output folder, checkpoints, logging, trackers and the Hub."""
    group.add_argument(
        "--output_dir", type=str, default="outputs/ijepa",
        help="Where the exported encoder, the pretraining model, checkpoints, curves and the model card go.",
    )
    group.add_argument(
        "--checkpointing_steps", type=str, default=None,
        help="Save a resumable checkpoint every N optimizer steps (an integer) or at the end of every 'epoch'.",
    )
    group.add_argument("--checkpoints_total_limit", type=int, default=2, help="Keep only the newest K checkpoints.")
    group.add_argument(
        "--resume_from_checkpoint", type=str, default=None,
        help="A checkpoint folder, or 'latest': the newest one in --output_dir that is complete and finite (newer "
             "damaged ones are skipped with a warning).",
    )
    group.add_argument(
        "--allow_changed_run", action="store_true",
        help="Resume a checkpoint even though the model, data, batch size, seed, schedules or masking differ from "
             "those it was trained with (the differences are logged). Without it such a resume is refused.",
    )
    group.add_argument("--logging_steps", type=int, default=10, help="Log the loss and schedules every N steps.")
    group.add_argument("--monitor_steps", type=int, default=50, help="Collapse monitor every N steps.")

    group.add_argument(
        "--report_to", type=str, default=None,
        help="An Accelerate tracker (tensorboard, wandb, ...; its package must be installed), or 'all' installed ones.",
    )
    group.add_argument("--push_to_hub", action="store_true", help="Upload --output_dir to the Hub at the end.")
    group.add_argument(
        "--hub_model_id", type=str, default=None, help="Hub repository to push to (e.g. your-name/ijepa-vit-tiny)."
    )
    group.add_argument(
        "--hub_token", type=str, default=None, help="Hub token; the one of `hf auth login` when not given."
    )
    group.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repository as private.")


def add_probe_arguments(group) -> None:
    """The probe that ends a run: the exported encoder against random initialisation."""
    group.add_argument(
        "--probe_after_training", action=argparse.BooleanOptionalAction, default=True,
        help="At the end, probe the exported encoder and the same architecture at random initialisation (linear "
             "probe and kNN on frozen features) on the data's labelled splits, and put both in the model card. "
             "Runs when the training split has a label column and a held-out split exists (digits: always).",
    )
    group.add_argument("--probe_eval_split", type=str, default=None,
                       help="Held-out split to evaluate on; by default the first of 'test', 'validation'.")
    group.add_argument("--probe_label_column_name", type=str, default=None, help="Label column; detected when absent.")
    group.add_argument("--probe_max_train_samples", type=int, default=5000,
                       help="Training images the probes fit on (a seeded random subset), to keep the check cheap.")
    group.add_argument("--probe_max_eval_samples", type=int, default=2000,
                       help="Held-out images the probes are evaluated on (a seeded random subset).")
    group.add_argument("--probe_feature_layers", type=int, default=1,
                       help="The probes' features: the mean over patches of each of the last K layers, concatenated "
                            "(1: the last layer, as the reference evaluates).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_pretraining.py", description=PRETRAINING_DESCRIPTION, epilog=PRETRAINING_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add(
        "--config", type=str, default=None,
        help="YAML recipe whose keys are argument names; command-line arguments override its values (and with "
             "--config, --help shows the recipe's values as the defaults).",
    )
    add("--modality", choices=["image", "video"], default="image", help="Images train I-JEPA, videos V-JEPA.")

    add_data_arguments(parser.add_argument_group("data"))
    add_model_arguments(parser.add_argument_group("model"))
    add_masking_arguments(parser.add_argument_group("masking"))
    add_optimisation_arguments(parser.add_argument_group("optimisation"))
    add_schedule_arguments(parser.add_argument_group("schedules"))
    add_output_arguments(parser.add_argument_group("output"))
    add_probe_arguments(parser.add_argument_group("probe after training (images with labels)"))
    return parser


def load_recipe(path: str | Path, parser: argparse.ArgumentParser) -> dict:
    """Read a YAML recipe and refuse keys the parser does not know."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path}: no such file.")
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"--config {path} must hold a mapping of argument names to values.")
    known = {action.dest for action in parser._actions} - {"help", "config"}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise ValueError(f"Unknown keys in {path}: {unknown}. Valid keys are the script's argument names: {sorted(known)}.")
    actions = {action.dest: action for action in parser._actions}
    for key, value in recipe.items():
        check_recipe_value(path, key, value, actions[key])
    pairs = {action.dest for action in parser._actions if action.type is float_pair}
    return {key: tuple(value) if key in pairs and isinstance(value, list) else value for key, value in recipe.items()}


def check_recipe_value(path: Path, key: str, value, action: argparse.Action) -> None:
    """Refuse a recipe value that the command line would refuse: argparse converts string defaults with the
    argument's type, but checks neither their choices nor the type of non-string ones."""
    if value is None:
        return
    kind = None
    if action.nargs == 0 and not isinstance(value, bool):
        kind = "true or false"
    elif action.type is int and not isinstance(value, str) and (isinstance(value, bool) or not isinstance(value, int)):
        kind = "an integer"
    elif action.type is float and not isinstance(value, str) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        kind = "a number"
    elif action.choices is not None and value not in action.choices:
        kind = f"one of {list(action.choices)}"
    if kind is not None:
        raise ValueError(f"{path}: {key} must be {kind}, got {value!r}.")


# The script's words for the size checks of the model configs (`validate_sizes`): they name its flags.
ARGUMENT_SIZE_MESSAGES = {
    "positive": "--{name} must be a positive integer, got {value}.",
    "divisible": "--{name} {value} is not divisible by --{divisor_name} {divisor}: {reason}.",
}


def validate_model_and_masks(args: argparse.Namespace) -> None:
    """The model's sizes, by the rules of its config, and the mask settings, by the collator's own checks."""
    # As in the configs, the predictor has as many heads as the encoder unless told otherwise.
    heads = args.predictor_num_attention_heads
    sizes = vars(args) | {"predictor_num_attention_heads": args.num_attention_heads if heads is None else heads}
    validate_sizes(sizes, positive=VIT_SIZES, divisible=VIT_DIVISIBLE_SIZES, messages=ARGUMENT_SIZE_MESSAGES)
    if args.modality == "video":
        validate_sizes(sizes, positive=VIDEO_SIZES, divisible=[FRAME_TUBELETS], messages=ARGUMENT_SIZE_MESSAGES)
    if args.predictor_hidden_size > args.hidden_size:
        logger.warning(
            "--predictor_hidden_size %d is wider than the encoder (%d): allowed, but I-JEPA's predictor is meant to be narrow.",
            args.predictor_hidden_size, args.hidden_size,
        )
    if args.num_targets <= 0:
        raise ValueError(f"--num_targets must be a positive integer, got {args.num_targets}.")
    for name, upper in (("crop_scale", 1.0), ("target_scale", 1.0), ("context_scale", 1.0), ("target_aspect_ratio", None)):
        as_range(getattr(args, name), f"--{name}", upper=upper)
    if args.modality == "image":
        MultiBlockMaskCollator(
            args.image_size, args.patch_size, num_targets=args.num_targets, target_scale=args.target_scale,
            target_aspect_ratio=args.target_aspect_ratio, context_scale=args.context_scale,
            min_context_patches=args.min_context_patches, allow_overlap=args.allow_overlap,
            full_range_placement=args.full_range_placement,
        ).check_satisfiable()


def validate_numbers(args: argparse.Namespace) -> None:
    """Counts, rates and fractions outside their ranges."""
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "logging_steps",
                 "monitor_steps"):
        value = getattr(args, name)
        if value is None or value <= 0:
            raise ValueError(f"--{name} must be a positive integer, got {value}.")
    for name in ("max_train_steps", "max_train_samples", "checkpoints_total_limit", "max_train_minutes",
                 "max_grad_norm", "probe_max_train_samples", "probe_max_eval_samples", "probe_feature_layers"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name} must be positive when given, got {value}.")
    if args.probe_after_training and args.probe_feature_layers > args.num_hidden_layers:
        raise ValueError(f"--probe_feature_layers {args.probe_feature_layers} exceeds the encoder's "
                         f"{args.num_hidden_layers} layers (--num_hidden_layers).")
    for name in ("learning_rate", "start_lr", "final_lr", "weight_decay", "final_weight_decay", "warmup_epochs",
                 "warmup_steps", "dataloader_num_workers", "variance_loss_weight", "covariance_loss_weight",
                 "sigreg_loss_weight", "view_invariance_weight"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise ValueError(f"--{name} must be >= 0, got {value}.")
    if args.sigreg_num_slices < 1:
        raise ValueError(f"--sigreg_num_slices must be >= 1, got {args.sigreg_num_slices}.")
    if args.num_mask_draws < 1:
        raise ValueError(f"--num_mask_draws must be >= 1, got {args.num_mask_draws}.")
    if args.num_views < 1:
        raise ValueError(f"--num_views must be >= 1, got {args.num_views}.")
    if args.view_invariance_weight and args.num_views < 2:
        raise ValueError(f"--view_invariance_weight {args.view_invariance_weight} compares the crops of each image: "
                         f"it needs --num_views 2 or more, got {args.num_views}.")
    if not 1 <= args.target_average_layers <= args.num_hidden_layers:
        raise ValueError(f"--target_average_layers must be between 1 and the encoder's {args.num_hidden_layers} "
                         f"layers (--num_hidden_layers), got {args.target_average_layers}.")
    if args.checkpointing_steps not in (None, "epoch") and not (
        str(args.checkpointing_steps).isdigit() and int(args.checkpointing_steps) > 0
    ):
        raise ValueError(f"--checkpointing_steps must be a positive integer or 'epoch', got {args.checkpointing_steps!r}.")
    for name in ("max_skip_fraction", "ema_momentum", "final_ema_momentum"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ValueError(f"--{name} must be in [0, 1], got {getattr(args, name)}.")
    if not 0.0 <= args.horizontal_flip <= 1.0:
        raise ValueError(f"--horizontal_flip is a probability and must be in [0, 1], got {args.horizontal_flip}.")
    if not args.max_in_memory_gib > 0:
        raise ValueError(f"--max_in_memory_gib must be positive, got {args.max_in_memory_gib}.")
    if not args.ipe_scale >= 1.0:
        raise ValueError(f"--ipe_scale stretches the schedules and must be >= 1, got {args.ipe_scale}.")
    if not args.adam_epsilon > 0:
        raise ValueError(f"--adam_epsilon must be positive, got {args.adam_epsilon}.")


def validate(args: argparse.Namespace) -> None:
    """Contradictions that would fail later, refused now with the argument's name."""
    validate_numbers(args)
    if args.modality == "video":
        for name, off in (("num_mask_draws", 1), ("variance_loss_weight", 0.0), ("covariance_loss_weight", 0.0),
                          ("sigreg_loss_weight", 0.0), ("target_average_layers", 1), ("prediction_loss", "smooth_l1"),
                          ("num_views", 1), ("view_invariance_weight", 0.0)):
            if getattr(args, name) != off:
                raise ValueError(f"--{name} is an image (I-JEPA) option: it is not available with --modality video.")
    if args.modality == "image" and args.architecture != "vjepa":
        raise ValueError(
            f"--architecture {args.architecture} is a video model: pass --modality video (images train I-JEPA)."
        )
    for name in ("in_memory_data", "horizontal_flip"):
        if getattr(args, name) and args.modality != "image":
            raise ValueError(f"--{name} applies to images: it needs --modality image.")
    if args.dataset_name is not None and args.train_dir is not None:
        raise ValueError(
            f"--dataset_name {args.dataset_name} and --train_dir {args.train_dir} both name the training data: give one."
        )
    validate_model_and_masks(args)
    check_tracker(args.report_to)
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/ijepa-vit-tiny-cifar10).")
    if args.clip_grad_after_warmup and args.max_grad_norm is None:
        raise ValueError("--clip_grad_after_warmup needs --max_grad_norm (the norm to clip to).")


def check_tracker(report_to: str | None) -> None:
    """Refuse a `--report_to` tracker that Accelerate does not know or whose package is missing: Accelerate would
    only log a debug message and run untracked."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    if report_to in (None, "all"):
        return
    if report_to not in LoggerType.list():
        raise ValueError(f"--report_to {report_to}: not a tracker Accelerate knows; choose one of {LoggerType.list()}.")
    if report_to not in get_available_trackers():
        raise ValueError(f"--report_to {report_to}: its package is not installed (e.g. `pip install {report_to}`).")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    preliminary, _ = parser.parse_known_args(argv)
    if preliminary.config:
        parser.set_defaults(**load_recipe(preliminary.config, parser))
    args = parser.parse_args(argv)
    validate(args)
    if args.streaming:
        check_streaming_arguments(args)
    return args


def rows_per_step(args: argparse.Namespace) -> int:
    """Rows of pixels a process puts through the encoders a step: `--per_device_train_batch_size` images times the
    `--num_views` crops of each."""
    return args.per_device_train_batch_size * args.num_views
