# SPDX-License-Identifier: Apache-2.0
"""The run's Accelerator, the precision it really trains in, and the wall-clock limit."""

import contextlib
import time

import torch
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration

from modeling_ijepa.cli import configure_logging

logger = get_logger(__name__)


def out_of_time(accelerator, started: float, max_minutes: float | None) -> bool:
    """Whether `max_minutes` have passed since `started` (a `time.perf_counter()` value). Every process must stop
    at the same step, so all of them go by the slowest one's clock (a collective: call it on every process).
    A single process reads its own clock and touches no device; several share theirs through a reduction, which
    waits for the device (the price of stopping together on a time limit)."""
    if max_minutes is None:
        return False
    if accelerator.num_processes == 1:
        return time.perf_counter() - started >= max_minutes * 60
    elapsed = torch.tensor([time.perf_counter() - started], device=accelerator.device)
    return accelerator.reduce(elapsed, "max").item() >= max_minutes * 60


@contextlib.contextmanager
def float32_matmul_precision(precision: str | None):
    """torch's process-wide float32 matmul precision (`torch.set_float32_matmul_precision`) set to `precision` for
    the block, then restored; None leaves it alone. Training may take bf16 products ('medium'); what follows in the
    same process (the probe's L-BFGS fit, another run) must not inherit them."""
    previous = torch.get_float32_matmul_precision()
    if precision is not None:
        torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def has_native_bf16(device_type: str) -> bool:
    """Whether `device_type` computes in bf16 natively. A CPU needs oneDNN's bf16 kernels (AVX-512 or AMX): on an
    AVX2-only CPU bf16 autocast is emulated, and the CIFAR-10 recipe's step ran 17x slower than in float32."""
    if device_type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    return True  # other accelerators: their own autocast decides


def resolve_mixed_precision(requested: str | None, device_type: str) -> str | None:
    """`requested`, with `auto` replaced by `bf16` where `device_type` computes bf16 natively and `no` elsewhere."""
    if requested != "auto":
        return requested
    return "bf16" if has_native_bf16(device_type) else "no"


def training_device_type() -> str:
    """The device type a run trains on: the accelerator's when there is one (as Accelerate picks), else the CPU."""
    return torch.accelerator.current_accelerator().type if torch.accelerator.is_available() else "cpu"


def mixed_precision_in_use(accelerator) -> str:
    """The mixed precision the run really trains in. Accelerate accepts `fp16` on a CPU, then runs in float32 (no
    autocast, no gradient scaler) while still reporting `fp16`."""
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        return "no"
    return accelerator.mixed_precision


def accumulation_for(global_batch_size: int, per_device_batch_size: int, num_processes: int) -> int:
    """The gradient accumulation steps that make `global_batch_size` examples per optimizer step."""
    per_pass = per_device_batch_size * num_processes
    if global_batch_size <= 0 or global_batch_size % per_pass:
        raise ValueError(
            f"--global_batch_size {global_batch_size} is not a positive multiple of --per_device_train_batch_size "
            f"{per_device_batch_size} x {num_processes} processes = {per_pass}: change one of them."
        )
    return global_batch_size // per_pass


def build_accelerator(args) -> Accelerator:
    """The run's Accelerator; with --global_batch_size, the gradient accumulation that keeps that global batch on
    this number of processes (it is set in `args` too, for the fingerprint and the model card)."""
    # Without an accelerator, processes started by torchrun (`accelerate launch --multi_gpu`) join a gloo group.
    device_type = training_device_type()
    cpu = device_type == "cpu"
    requested, args.mixed_precision = args.mixed_precision, resolve_mixed_precision(args.mixed_precision, device_type)
    if args.global_batch_size is not None:
        num_processes = PartialState(cpu=cpu).num_processes
        args.gradient_accumulation_steps = accumulation_for(
            args.global_batch_size, args.per_device_train_batch_size, num_processes)
    accelerator = Accelerator(
        cpu=cpu,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    configure_logging(accelerator.is_local_main_process)
    logger.info(accelerator.state, main_process_only=False)
    if requested == "auto":
        native = "computes bf16 natively" if args.mixed_precision == "bf16" else "has no native bf16"
        logger.info(f"--mixed_precision auto: {args.mixed_precision} ({accelerator.device.type} {native}).")
    if mixed_precision_in_use(accelerator) != accelerator.mixed_precision:
        logger.warning(f"--mixed_precision {accelerator.mixed_precision} is not supported on "
                       f"{accelerator.device.type}: training in float32 (the model card says so).")
    return accelerator
