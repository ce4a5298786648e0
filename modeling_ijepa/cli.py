# SPDX-License-Identifier: Apache-2.0
"""What every command of the package shares (pretraining, probing, conversion, the benchmarks): the one logging
setup, the `--help` format, and Accelerate's state scoped to the run that made it.

Every command calls `configure_logging` once, before it logs, so that all of them print the same format. As in
transformers' example scripts, the main process keeps `datasets` and `transformers` at warnings and the other
processes of a distributed run silence them to errors, so that a message is printed once rather than once a process.
"""

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable

import datasets
import transformers
from accelerate.state import AcceleratorState, PartialState

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(main_process: bool = True) -> None:
    """Log at INFO in `LOG_FORMAT` to stderr (a no-op for the root logger when it already has handlers, as under
    pytest); `main_process=False` on the other processes of a distributed run quiets the libraries to errors."""
    logging.basicConfig(format=LOG_FORMAT, level=logging.INFO)
    if main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()


def float_pair(text: str) -> tuple[float, float]:
    values = [float(value) for value in str(text).replace("(", "").replace(")", "").split(",")]
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers, got {text!r}")
    return values[0], values[1]


@contextlib.contextmanager
def scoped_accelerator_state():
    """Forget, when the block ends, the Accelerate state that a command made inside it.

    Accelerate keeps one state per process, fixed by its first `Accelerator`: a later run in the same process that
    asks for another mixed precision is refused, and one that asks for none is handed the earlier run's, so a probe
    after a bf16 pretraining would extract its features in bf16 too. Commands called one after another in one
    process (the benchmarks, a notebook) therefore each start from none. A state that existed before the block (the
    caller's own `Accelerator`) is the caller's and is left as it is; so is the process-wide part (`PartialState`,
    the device and process group) when only it existed.
    """
    made_partial_state = not PartialState._shared_state
    made_state = not AcceleratorState._shared_state
    try:
        yield
    finally:
        if made_state:
            # Accelerate's own test cases reset its state this way between runs; there is no public call for it.
            AcceleratorState._reset_state(reset_partial_state=made_partial_state)


def run_entry_point(main: Callable[[], object]) -> None:
    """Run a command's `main()` as its script's entry point. A process of a distributed run (`WORLD_SIZE` > 1) whose
    `main` returned, or ended on purpose with an exit code (`SystemExit`, as a preempted run does once its checkpoint
    is written), then ends at once with that code (0 when it returned), its logs and output flushed, without
    finalizing the interpreter; any other exception propagates as usual.

    Why: with FSDP2 over gloo the process group outlives `destroy_process_group`, and so do its worker threads:
    references to it remain (default arguments of `torch.distributed.nn`'s functions when that module is first
    imported after the group exists, as `torch._dynamo` does; one more after a `fully_shard` model is deleted). A
    worker that drops the tensors of the last collective after the interpreter began to finalize needs the GIL to
    release their Python objects; Python ends such a thread, and the C++ unwinding aborts the process (SIGABRT,
    "terminate called without an active exception"). A run that had written all of its checkpoints and exports
    would then fail: 11 of 60 launches of a two-process gloo script whose main process ended later than the other
    aborted so, none of 60 through this function. Nothing is left to finalize after `main`: its files are closed
    and its trackers ended (`Accelerator.end_training`).
    """
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    exit_code = 0
    try:
        main()
    except SystemExit as stop:
        if not distributed or not isinstance(stop.code, int | None):
            raise
        exit_code = stop.code or 0
    if distributed:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """`--help` keeps the description's and epilog's line breaks (they hold example commands) and shows every
    argument's default."""


__all__ = [
    "LOG_FORMAT", "HelpFormatter", "configure_logging", "float_pair", "run_entry_point", "scoped_accelerator_state",
]
