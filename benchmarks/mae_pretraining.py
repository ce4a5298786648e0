# SPDX-License-Identifier: Apache-2.0
"""MAE pretraining with Accelerate: the baseline of `quality_cifar10`, on I-JEPA's data path and training loop.

    python -m benchmarks.mae_pretraining --dataset_name ../shared/data/cifar10 --image_size 32 --patch_size 4 \
        --hidden_size 192 --num_hidden_layers 6 --num_attention_heads 3 --max_train_steps 1000 --output_dir outputs/mae

`transformers.ViTMAEForPreTraining` (He et al., 2022: 75% of the patches masked, pixels of the masked patches
regressed, normalised per patch) trained on exactly the examples I-JEPA sees: the package's
`build_training_data` without masks (random resized crop and ImageNet normalisation, no other augmentation)
behind the same seeded per-example randomness, and the same `TrainingLoop` and `PretrainingStep` as I-JEPA
(for a model without a target encoder the step clips the whole model and does no EMA). The optimiser is the MAE
paper's AdamW (betas 0.9 / 0.95, weight decay 0.05 on matrices only) with linear warmup and cosine decay, from
I-JEPA's `Schedules`. `--max_train_minutes` stops the run early, as in I-JEPA pretraining.

`--output_dir` receives the encoder alone (`ViTMAEModel`, saved with `mask_ratio=0.0` so that it sees every patch
when used as a feature extractor), an image processor, and `training_log.jsonl`. The module exposes
`parse_args(argv)`, `train(args, step_callback=None)` and `main(argv)` like `modeling_ijepa.training.pretraining`.
"""

import argparse
import json
import math
from pathlib import Path

from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, set_seed
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from modeling_ijepa.cli import configure_logging, run_entry_point, scoped_accelerator_state
from modeling_ijepa.data.pipeline import build_training_data
from modeling_ijepa.data.skipping import check_data_was_usable
from modeling_ijepa.hub.export import image_processor_for
from modeling_ijepa.training.arguments import add_image_data_arguments, add_precision_arguments
from modeling_ijepa.training.loop import RUN_RESOURCES, LoopSettings, TrainingLoop, initial_state, prepare_output_dir
from modeling_ijepa.training.optimization import PretrainingStep, build_optimizer
from modeling_ijepa.training.runtime import float32_matmul_precision, resolve_mixed_precision, training_device_type
from modeling_ijepa.training.schedules import Schedules

logger = get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data (as in I-JEPA pretraining)")
    add_image_data_arguments(data)
    data.add_argument(
        "--max_skip_fraction", type=float, default=0.1,
        help="Stop with an error when more than this fraction of the images read cannot be decoded.",
    )

    model = parser.add_argument_group("model")
    model.add_argument("--image_size", type=int, default=32)
    model.add_argument("--patch_size", type=int, default=4)
    model.add_argument("--hidden_size", type=int, default=192)
    model.add_argument("--num_hidden_layers", type=int, default=12)
    model.add_argument("--num_attention_heads", type=int, default=3)
    model.add_argument("--mlp_ratio", type=float, default=4.0)
    model.add_argument("--decoder_hidden_size", type=int, default=96)
    model.add_argument("--decoder_num_hidden_layers", type=int, default=4)
    model.add_argument("--decoder_num_attention_heads", type=int, default=3)
    model.add_argument("--mask_ratio", type=float, default=0.75)
    model.add_argument(
        "--norm_pix_loss", action=argparse.BooleanOptionalAction, default=True,
        help="Regress pixels normalised per patch (the MAE paper's better-representation setting).",
    )
    model.add_argument("--attn_implementation", type=str, default="sdpa", choices=["eager", "sdpa"])

    optimisation = parser.add_argument_group("optimisation")
    optimisation.add_argument("--per_device_train_batch_size", type=int, default=128)
    optimisation.add_argument("--max_train_steps", type=int, required=True)
    optimisation.add_argument("--max_train_minutes", type=float, default=None, help="Stop (and save) after this long.")
    optimisation.add_argument("--learning_rate", type=float, default=1.5e-3, help="Peak learning rate.")
    optimisation.add_argument("--start_lr", type=float, default=0.0)
    optimisation.add_argument("--final_lr", type=float, default=1e-6)
    optimisation.add_argument("--warmup_steps", type=int, default=0)
    optimisation.add_argument("--weight_decay", type=float, default=0.05)
    optimisation.add_argument("--adam_beta1", type=float, default=0.9)
    optimisation.add_argument("--adam_beta2", type=float, default=0.95)
    optimisation.add_argument("--max_grad_norm", type=float, default=None)
    add_precision_arguments(optimisation)
    optimisation.add_argument("--seed", type=int, default=0)

    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", type=str, default="outputs/mae")
    output.add_argument("--logging_steps", type=int, default=10)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    for name in ("max_train_steps", "per_device_train_batch_size", "logging_steps"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}.")
    if not 0 <= args.warmup_steps <= args.max_train_steps:
        raise ValueError(f"--warmup_steps must lie in [0, --max_train_steps], got {args.warmup_steps}.")
    if not 0.0 <= args.max_skip_fraction <= 1.0:
        raise ValueError(f"--max_skip_fraction must lie in [0, 1], got {args.max_skip_fraction}.")
    if not 0 <= args.mask_ratio < 1:
        raise ValueError(f"--mask_ratio must lie in [0, 1), got {args.mask_ratio}.")
    if args.num_views != 1:
        raise ValueError(f"--num_views {args.num_views}: several crops of an image are for I-JEPA's invariance term; "
                         "MAE trains on one crop of each image.")
    return args


def build_model(args: argparse.Namespace) -> ViTMAEForPreTraining:
    config = ViTMAEConfig(
        image_size=args.image_size, patch_size=args.patch_size, hidden_size=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers, num_attention_heads=args.num_attention_heads,
        intermediate_size=int(args.hidden_size * args.mlp_ratio), decoder_hidden_size=args.decoder_hidden_size,
        decoder_num_hidden_layers=args.decoder_num_hidden_layers,
        decoder_num_attention_heads=args.decoder_num_attention_heads,
        decoder_intermediate_size=int(args.decoder_hidden_size * args.mlp_ratio),
        mask_ratio=args.mask_ratio, norm_pix_loss=args.norm_pix_loss,
    )
    return ViTMAEForPreTraining._from_config(config, attn_implementation=args.attn_implementation)


def build_accelerator(args: argparse.Namespace) -> Accelerator:
    device_type = training_device_type()
    accelerator = Accelerator(
        cpu=device_type == "cpu",
        mixed_precision=resolve_mixed_precision(args.mixed_precision, device_type),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    configure_logging(accelerator.is_local_main_process)
    return accelerator


def build_schedules(args: argparse.Namespace) -> Schedules:
    # The MAE recipe keeps weight decay constant and has no target encoder: flat weight decay, momentum unused.
    return Schedules(
        total_steps=args.max_train_steps, warmup_steps=args.warmup_steps, lr=args.learning_rate,
        start_lr=args.start_lr, final_lr=args.final_lr, weight_decay=args.weight_decay,
        final_weight_decay=args.weight_decay, ema_momentum=1.0, final_ema_momentum=1.0,
    )


def train(args: argparse.Namespace, step_callback=None):
    """Pretrain; returns `(accelerator, model, state)`, `state` holding `global_step`, `images_seen`,
    `wall_clock` (seconds) and `log_history` (the entries of `training_log.jsonl`).

    `step_callback(accelerator, unwrapped_model, step)` is called after every optimizer step."""
    RUN_RESOURCES.enter_context(scoped_accelerator_state())
    accelerator = build_accelerator(args)
    set_seed(args.seed)
    output_dir = prepare_output_dir(args.output_dir, accelerator)
    model = build_model(args)
    data = build_training_data(args, accelerator, model.config, masks=False)  # MAE draws its own masks
    optimizer = build_optimizer(model, args.learning_rate, (args.adam_beta1, args.adam_beta2))
    model, optimizer, data.dataloader = accelerator.prepare(model, optimizer, data.dataloader)
    schedules = build_schedules(args)
    settings = LoopSettings(
        total_steps=schedules.total_steps, num_epochs=math.ceil(schedules.total_steps / data.batches_per_epoch),
        logging_steps=args.logging_steps, max_train_minutes=args.max_train_minutes, image_size=data.grid["image_size"],
    )
    # This baseline never resumes, so the run fingerprint that a resume is checked against stays empty.
    state = initial_state(None, output_dir, accelerator.unwrap_model(model), optimizer, data.batches_per_epoch, run={})
    logger.info(f"***** MAE pretraining: {len(data.examples)} examples, {settings.total_steps} optimizer steps *****")
    train_step = PretrainingStep(accelerator, model, optimizer, schedules, max_grad_norm=args.max_grad_norm)
    loop = TrainingLoop(accelerator, model, optimizer, train_step, data, state, settings, output_dir, step_callback)
    with float32_matmul_precision(args.matmul_precision):
        state = loop.run()
    check_data_was_usable(accelerator, state, args.max_skip_fraction)
    return accelerator, model, state


def save_encoder(model: ViTMAEForPreTraining, log_history: list[dict], output_dir: str | Path) -> None:
    """The encoder as a `ViTMAEModel` that keeps every patch, its image processor and the training log."""
    output_dir = Path(output_dir)
    encoder = model.vit
    # `ViTMAEModel` masks (and shuffles) patches at the config's ratio even in eval mode: 0 keeps them all.
    encoder.config.mask_ratio = 0.0
    encoder.save_pretrained(output_dir)
    image_processor_for(encoder.config.image_size).save_pretrained(output_dir)
    with open(output_dir / "training_log.jsonl", "w") as file:
        file.writelines(json.dumps(entry) + "\n" for entry in log_history)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with RUN_RESOURCES:  # the lock on --output_dir and the preemption handlers, released when the run ends
        accelerator, model, state = train(args)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_encoder(accelerator.unwrap_model(model), state["log_history"], args.output_dir)
            logger.info(f"Saved the MAE encoder to {args.output_dir}")
        accelerator.end_training()
    return state


if __name__ == "__main__":
    run_entry_point(main)
