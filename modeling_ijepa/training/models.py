# SPDX-License-Identifier: Apache-2.0
"""The pretraining model of a run: built from the size arguments, or loaded from a saved pretraining folder to
continue it."""

from pathlib import Path

from accelerate.logging import get_logger
from transformers import PreTrainedConfig

from modeling_ijepa import (
    IJepaConfig,
    IJepaForPreTraining,
    VJepa2Config,
    VJepa2ForPreTraining,
    VJepaConfig,
    VJepaForPreTraining,
)
from modeling_ijepa.training.checkpointing import (
    check_loaded_weights,
)

logger = get_logger(__name__)


# (config class, pretraining class) of each model type the script trains.
PRETRAINING_CLASSES = {
    "ijepa": (IJepaConfig, IJepaForPreTraining),
    "vjepa": (VJepaConfig, VJepaForPreTraining),
    "vjepa2": (VJepa2Config, VJepa2ForPreTraining),
}


# The method and paper of each model type, as the model card names them.
METHODS = {
    "ijepa": ("I-JEPA", "Assran et al., CVPR 2023"),
    "vjepa": ("V-JEPA", "Bardes et al., 2024"),
    "vjepa2": ("V-JEPA 2", "Assran et al., 2025"),
}


MODEL_TYPE_FLAGS = {
    "ijepa": "--modality image", "vjepa": "--modality video --architecture vjepa",
    "vjepa2": "--modality video --architecture vjepa2",
}


# The size arguments, which I-JEPA and V-JEPA configs name as the script does (and `intermediate_size` for
# --mlp_ratio); V-JEPA 2 keeps the field names of transformers' own `vjepa2` config.
SIZE_ARGUMENTS = (
    "image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "predictor_hidden_size",
    "predictor_num_hidden_layers", "predictor_num_attention_heads",
)


VJEPA2_FIELDS = {
    "image_size": "crop_size", "num_frames": "frames_per_clip", "patch_size": "patch_size",
    "tubelet_size": "tubelet_size", "hidden_size": "hidden_size", "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads", "mlp_ratio": "mlp_ratio",
    "predictor_hidden_size": "pred_hidden_size", "predictor_num_hidden_layers": "pred_num_hidden_layers",
    "predictor_num_attention_heads": "pred_num_attention_heads",
}


# The pretraining objective's fields of an I-JEPA config: a run sets them even on a model it continues.
IJEPA_OBJECTIVE_FIELDS = (
    "variance_loss_weight", "covariance_loss_weight", "sigreg_loss_weight", "sigreg_num_slices",
    "target_average_layers", "prediction_loss", "num_views", "view_invariance_weight",
)


def model_type_of(args) -> str:
    """The model type a run trains: `ijepa` for images; for video `vjepa` or `vjepa2`, as --architecture says."""
    return "ijepa" if args.modality == "image" else args.architecture


def build_model(args):
    """A new pretraining model with the size arguments, or the one saved at --model_name_or_path. An I-JEPA model
    takes this run's training objective (--variance_loss_weight, --covariance_loss_weight, --sigreg_loss_weight,
    --sigreg_num_slices, --target_average_layers, --prediction_loss) either way."""
    objective = {name: getattr(args, name) for name in IJEPA_OBJECTIVE_FIELDS}
    if args.model_name_or_path:
        model = load_pretraining_model(args)
        if model_type_of(args) == "ijepa":
            for name, value in objective.items():
                setattr(model.config, name, value)
            model.config.validate_objective()
        return model
    model_type = model_type_of(args)
    config_class, model_class = PRETRAINING_CLASSES[model_type]
    if model_type == "vjepa2":
        fields = {field: getattr(args, name) for name, field in VJEPA2_FIELDS.items()}
        # As in the reference, the predictor has as many heads as the encoder unless told otherwise.
        fields["pred_num_attention_heads"] = args.predictor_num_attention_heads or args.num_attention_heads
        config = VJepa2Config(**fields)
    else:
        extra = objective if model_type == "ijepa" else {
            "num_frames": args.num_frames, "tubelet_size": args.tubelet_size, "uniform_power": args.uniform_power,
        }
        config = config_class(
            image_size=args.image_size, patch_size=args.patch_size, hidden_size=args.hidden_size,
            num_hidden_layers=args.num_hidden_layers, num_attention_heads=args.num_attention_heads,
            intermediate_size=int(args.hidden_size * args.mlp_ratio), predictor_hidden_size=args.predictor_hidden_size,
            predictor_num_hidden_layers=args.predictor_num_hidden_layers,
            predictor_num_attention_heads=args.predictor_num_attention_heads, **extra,
        )
    return model_class._from_config(config, attn_implementation=args.attn_implementation)


def pretraining_source(model_name_or_path: str) -> str:
    """`model_name_or_path`, or its `pretraining/` sub-folder where it has one: a run's --output_dir (the exported
    encoder at its top) and a converter's output (the export in `encoder/`) keep the pretraining model there."""
    nested = Path(model_name_or_path) / "pretraining"
    return str(nested) if (nested / "config.json").is_file() else model_name_or_path


def load_pretraining_model(args):
    """The pretraining model saved at --model_name_or_path (see `pretraining_source`), to continue pretraining it:
    context encoder, predictor and target encoder, every tensor present and finite.

    Its sizes replace the size arguments, so that the saved hyperparameters describe it, and the data and masks
    are cut to its grid. V-JEPA 2 alone takes the run's frame size and clip length (RoPE reads positions off the
    token grid, with no table of a fixed size: its reference cool-down continues a 16-frame model on 64 frames)."""
    model_type = model_type_of(args)
    source = pretraining_source(args.model_name_or_path)
    saved = PreTrainedConfig.get_config_dict(source)[0]
    saved_type, architectures = saved.get("model_type"), saved.get("architectures") or []
    if saved_type != model_type:
        flags = MODEL_TYPE_FLAGS.get(saved_type)
        raise ValueError(
            f"--model_name_or_path {source} holds a model of type `{saved_type}`, but this run trains "
            f"{METHODS[model_type][0]} (`{model_type}`; {MODEL_TYPE_FLAGS[model_type]})"
            + (f": to continue it, pass {flags}." if flags else ".")
        )
    if not any(name.endswith("ForPreTraining") for name in architectures):
        raise ValueError(
            f"--model_name_or_path {source} holds {architectures or 'a model'} without its predictor and context "
            "encoder: continuing pretraining needs the pretraining model, the `pretraining/` folder beside an export."
        )
    model_class = PRETRAINING_CLASSES[model_type][1]
    geometry = {"crop_size": args.image_size, "frames_per_clip": args.num_frames} if model_type == "vjepa2" else {}
    model, loading_info = model_class.from_pretrained(
        source, output_loading_info=True, attn_implementation=args.attn_implementation, **geometry
    )
    check_loaded_weights(model, loading_info, source)
    if model_type == "vjepa2":
        model.config.validate_architecture()
    adopt_saved_sizes(args, model.config, model_type, source)
    return model


def model_sizes(config, model_type: str) -> dict:
    """The sizes of a model with `config`, under the script's argument names (`image_size`, `hidden_size`,
    `predictor_hidden_size`, `mlp_ratio`, ...; `num_frames` and `tubelet_size` for video)."""
    if model_type == "vjepa2":
        return {name: getattr(config, field) for name, field in VJEPA2_FIELDS.items()}
    names = [*SIZE_ARGUMENTS, *(("num_frames", "tubelet_size") if model_type == "vjepa" else ())]
    sizes = {name: getattr(config, name) for name in names}
    sizes["mlp_ratio"] = config.intermediate_size / config.hidden_size
    return sizes


def adopt_saved_sizes(args, config, model_type: str, source: str) -> None:
    """Set the size arguments to those of a loaded model's `config`, logging each change, so that the saved
    hyperparameters describe the model. Its token grid is refused when the arguments name another one: the data
    and masks follow the model's config, and a run must not silently ignore what it was asked for."""
    # V-JEPA 2 takes the run's frame size and clip length (`load_pretraining_model` passes them to its config).
    grid = ("patch_size", "tubelet_size") if model_type == "vjepa2" else (
        "image_size", "patch_size", "num_frames", "tubelet_size")
    changes = []
    for name, value in model_sizes(config, model_type).items():
        if getattr(args, name) == value:
            continue
        if name in grid:
            raise ValueError(
                f"{source} was trained with {name} {value}, but this run was given --{name} "
                f"{getattr(args, name)}: pass --{name} {value}."
            )
        changes.append(f"--{name} {value} (was {getattr(args, name)})")
        setattr(args, name, value)
    if changes:
        logger.info(f"Sizes of {source}: {', '.join(changes)}.")
