# SPDX-License-Identifier: Apache-2.0
"""MAE pretraining with Accelerate: the baseline of `quality_cifar10.py`, on I-JEPA's data path.

    python benchmarks/mae_pretraining.py --dataset_name ../shared/data/cifar10 --image_size 32 --patch_size 4 \
        --hidden_size 192 --num_hidden_layers 6 --num_attention_heads 3 --max_train_steps 1000 --output_dir outputs/mae

`transformers.ViTMAEForPreTraining` (He et al., 2022: 75% of the patches masked, pixels of the masked patches
regressed, normalised per patch) trained on exactly the examples I-JEPA sees: `run_pretraining.build_image_dataset`
(random resized crop and ImageNet normalisation, no other augmentation) behind the same seeded per-example
randomness. The optimiser is the MAE paper's AdamW (betas 0.9 / 0.95, weight decay 0.05 on matrices only) with
linear warmup and cosine decay, from I-JEPA's `Schedules`. `--max_train_minutes` stops the run early, as in
`run_pretraining.py`.

`--output_dir` receives the encoder alone (`ViTMAEModel`, saved with `mask_ratio=0.0` so that it sees every patch
when used as a feature extractor), an image processor, and `training_log.jsonl`. The script exposes
`parse_args(argv)`, `train(args, step_callback=None)` and `main(argv)` like `run_pretraining.py`.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader, default_collate
from tqdm.auto import tqdm
from transformers import ViTMAEConfig, ViTMAEForPreTraining

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling_ijepa.cli import configure_logging  # noqa: E402
from modeling_ijepa.data.examples import SeededExamples  # noqa: E402
from modeling_ijepa.data.images import SkipUnreadable  # noqa: E402
from modeling_ijepa.data.in_memory import pixel_values_of  # noqa: E402
from modeling_ijepa.data.pipeline import build_image_dataset  # noqa: E402
from modeling_ijepa.hub.export import image_processor_for  # noqa: E402
from modeling_ijepa.training.arguments import add_image_data_arguments  # noqa: E402
from modeling_ijepa.training.optimization import apply_schedules, parameter_groups  # noqa: E402
from modeling_ijepa.training.runtime import out_of_time  # noqa: E402
from modeling_ijepa.training.schedules import Schedules  # noqa: E402

logger = get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_image_data_arguments(parser.add_argument_group("data (as in run_pretraining.py)"))

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
    optimisation.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
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
    if not 0 <= args.mask_ratio < 1:
        raise ValueError(f"--mask_ratio must lie in [0, 1), got {args.mask_ratio}.")
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


def train(args: argparse.Namespace, step_callback=None):
    """Pretrain; returns `(accelerator, model, state)`, `state` holding `global_step`, `images_seen`,
    `wall_clock` (seconds) and `log_history`.

    `step_callback(accelerator, unwrapped_model, step)` is called after every optimizer step."""
    accelerator = Accelerator(
        cpu=not torch.accelerator.is_available(),
        mixed_precision=args.mixed_precision,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    configure_logging(accelerator.is_local_main_process)
    set_seed(args.seed)
    dataset, _ = build_image_dataset(args)
    examples = SeededExamples(dataset, args.seed)
    dataloader = DataLoader(
        examples, batch_size=args.per_device_train_batch_size, shuffle=True,
        drop_last=True, collate_fn=SkipUnreadable(default_collate), num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    if len(dataloader) == 0:
        raise ValueError(
            f"The dataset has {len(dataset)} examples, fewer than one batch of {args.per_device_train_batch_size}."
        )
    model = build_model(args)
    optimizer = torch.optim.AdamW(
        parameter_groups(model), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2)
    )
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    # The MAE recipe keeps weight decay constant and has no target encoder: flat weight decay, momentum unused.
    schedules = Schedules(
        total_steps=args.max_train_steps, warmup_steps=args.warmup_steps, lr=args.learning_rate,
        start_lr=args.start_lr, final_lr=args.final_lr, weight_decay=args.weight_decay,
        final_weight_decay=args.weight_decay, ema_momentum=1.0, final_ema_momentum=1.0,
    )
    unwrapped = accelerator.unwrap_model(model)
    state = {"global_step": 0, "images_seen": 0, "log_history": []}
    logger.info(f"***** MAE pretraining: {len(dataset)} examples, {args.max_train_steps} optimizer steps *****")
    progress = tqdm(range(args.max_train_steps), disable=not accelerator.is_local_main_process)
    started = time.perf_counter()

    model.train()
    stopping = False
    for epoch in range(math.ceil(args.max_train_steps / len(dataloader))):
        examples.set_epoch(epoch)
        dataloader.set_epoch(epoch)
        for batch in dataloader:
            batch = pixel_values_of(batch, args.image_size)  # --in_memory_data: crops made on the device
            if "pixel_values" not in batch:  # every example of this batch was unreadable
                continue
            step = state["global_step"]
            apply_schedules(optimizer, schedules, step + 1)  # optimizer steps count from 1
            loss = model(pixel_values=batch["pixel_values"]).loss
            # Decided on every process's loss, so that all processes stop together.
            if not accelerator.gather(torch.isfinite(loss.detach()).reshape(1)).all():
                raise FloatingPointError(f"Non-finite MAE loss ({loss.item()}) at step {step}; lower --learning_rate.")
            accelerator.backward(loss)
            if args.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state["images_seen"] += len(batch["pixel_values"]) * accelerator.num_processes
            state["global_step"] = step = step + 1
            progress.update(1)
            if step_callback is not None:
                step_callback(accelerator, unwrapped, step)
            stopping = step >= args.max_train_steps or out_of_time(accelerator, started, args.max_train_minutes)
            if step % args.logging_steps == 0 or stopping:
                entry = {"step": step, "epoch": epoch, "loss": accelerator.reduce(loss.detach(), "mean").item(),
                         "lr": schedules.learning_rate(step), "images_seen": state["images_seen"],
                         "seconds": time.perf_counter() - started}
                state["log_history"].append(entry)
                progress.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}")
            if stopping:
                break
        if stopping:
            break
    progress.close()
    state["wall_clock"] = time.perf_counter() - started
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
    accelerator, model, state = train(args)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_encoder(accelerator.unwrap_model(model), state["log_history"], args.output_dir)
        logger.info(f"Saved the MAE encoder to {args.output_dir}")
    accelerator.end_training()
    return state


if __name__ == "__main__":
    main()
