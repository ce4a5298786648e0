# SPDX-License-Identifier: Apache-2.0
"""The model card of a pretraining run: what the card template is filled with."""

from pathlib import Path

from accelerate.logging import get_logger

from modeling_ijepa.hub.model_card import plural
from modeling_ijepa.training.models import METHODS, model_sizes, model_type_of
from modeling_ijepa.training.runtime import mixed_precision_in_use
from modeling_ijepa.training.schedules import Schedules

logger = get_logger(__name__)


MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "templates" / "jepa_pretraining.md"

VJEPA2_CARD_NOTE = MODEL_CARD_TEMPLATE.with_name("vjepa2_note.md")


def schedule_summary(schedules: Schedules, last_step: int) -> dict[str, str]:
    """The learning rate, weight decay and EMA momentum of optimizer step 1 and of the last trained step."""
    steps = {"first": 1, "last": max(1, last_step)}
    # Momenta sit just below 1: they need more digits than the learning rate and weight decay to be told apart.
    return {f"{name}_{which}": f"{value:.6g}" if name == "momentum" else f"{value:.3g}"
            for which, step in steps.items() for name, value in schedules.values(step).items()} | {
        "peak_lr": f"{schedules.lr:.3g}"}


def card_metadata(args, model_type: str) -> dict:
    """The card's YAML metadata: library, pipeline, license, tags and, for a Hub data set, its id."""
    # I-JEPA and V-JEPA 2 export in an architecture that transformers ships; V-JEPA needs our remote code.
    stock_loadable = model_type in ("ijepa", "vjepa2")
    card_data = {
        "library_name": "transformers" if stock_loadable else "modeling_ijepa",
        "pipeline_tag": "image-feature-extraction" if model_type == "ijepa" else "video-classification",
        "license": "apache-2.0",
        "tags": [model_type, "jepa", "self-supervised-learning", "vision", "modeling_ijepa"],
    }
    if args.dataset_name and not Path(args.dataset_name).exists():
        card_data["datasets"] = [args.dataset_name]
    return card_data


def architecture_values(config, model_type: str, grid: dict[str, int]) -> dict:
    """The encoder and predictor rows of the card, read off the trained model's `config` and token `grid`."""
    sizes = model_sizes(config, model_type)
    side = grid["image_size"] // grid["patch_size"]
    if "num_frames" in grid:
        num_patches = side * side * (grid["num_frames"] // grid["tubelet_size"])
        input_shape = (f"{plural(grid['num_frames'], 'frame')} of {grid['image_size']} x {grid['image_size']}, "
                       f"tubelet {grid['tubelet_size']}")
    else:
        num_patches, input_shape = side * side, f"{grid['image_size']} x {grid['image_size']}"
    return {
        "hidden_size": sizes["hidden_size"], "num_layers": sizes["num_hidden_layers"],
        "num_heads": sizes["num_attention_heads"], "patch_size": grid["patch_size"], "image_size": input_shape,
        "num_patches": num_patches, "predictor_hidden_size": sizes["predictor_hidden_size"],
        "predictor_layers": sizes["predictor_num_hidden_layers"],
    }


def epochs_trained(args, state: dict, num_examples: int | None) -> str | None:
    """Passes over the data, as the card shows them; None for a stream of unknown size (the card says "streamed")."""
    if getattr(args, "streaming", False):
        return f"{state['images_seen'] / num_examples:.2f}" if num_examples else None
    return f"{state['global_step'] * args.gradient_accumulation_steps / max(1, state['batches_per_epoch']):.2f}"


def masking_description(args, image: bool) -> str:
    if image:
        return (f"target blocks: {args.num_targets}, scale {tuple(args.target_scale)}, aspect "
                f"{tuple(args.target_aspect_ratio)}; context scale {tuple(args.context_scale)}")
    return "V-JEPA multi-block 3D: 8 short-range + 2 long-range blocks"


def card_contents(args, accelerator, state: dict, data, config, global_batch: int, schedules: Schedules):
    """`(values, card_data)`: what the card template is filled with, and the card's metadata, for a finished run
    with `state`, its `TrainingData` `data` and the trained model's `config`."""
    model_type = model_type_of(args)
    image = model_type == "ijepa"
    method, paper = METHODS[model_type]
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    hyperparameters = {key: (list(value) if isinstance(value, tuple) else value) for key, value in vars(args).items()
                       if key not in ("hub_token",)}
    values = {
        "model_name": Path(args.hub_model_id or args.output_dir).name,
        "repo_id": args.hub_model_id or args.output_dir,
        # The template spells out the size once, in the encoder row.
        "architecture": "ViT", "method": method, "paper": paper, "model_type": model_type,
        "stock_loadable": model_type in ("ijepa", "vjepa2"),
        # How stock `VJEPA2Model`'s predictor differs from training, for its users.
        "stock_note": VJEPA2_CARD_NOTE.read_text() if model_type == "vjepa2" else "",
        "dataset_description": data.description, "num_examples": data.num_examples,
        "global_step": state["global_step"], "images_seen": state["images_seen"], "unit": "image" if image else "clip",
        "epochs": epochs_trained(args, state, data.num_examples),
        "global_batch_size": global_batch, "num_processes": accelerator.num_processes,
        "per_device_batch": args.per_device_train_batch_size, "accumulation": args.gradient_accumulation_steps,
        **architecture_values(config, model_type, data.grid),
        "masking": masking_description(args, image),
        # The values the first and the last trained step really used (the schedules count steps from 1).
        "schedule": schedule_summary(schedules, state["global_step"]),
        "warmup_steps": schedules.warmup_steps, "momentum_schedule": args.momentum_schedule,
        "precision": mixed_precision_in_use(accelerator)
        + (f", float32 matmul precision {args.matmul_precision}" if args.matmul_precision else ""),
        "final_loss": f"{losses[-1]:.4f}" if losses else "n/a",
        "wall_clock": f"{state['wall_clock'] / 60:.1f} min",
        "hyperparameters": hyperparameters,
    }
    return values, card_metadata(args, model_type)
