# SPDX-License-Identifier: Apache-2.0
"""What every command of the package shares (pretraining, probing, conversion, the benchmarks): the one logging
setup, and the `--help` format.

Every command calls `configure_logging` once, before it logs, so that all of them print the same format. As in
transformers' example scripts, the main process keeps `datasets` and `transformers` at warnings and the other
processes of a distributed run silence them to errors, so that a message is printed once rather than once a process.
"""

import argparse
import logging

import datasets
import transformers

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


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """`--help` keeps the description's and epilog's line breaks (they hold example commands) and shows every
    argument's default."""


__all__ = ["LOG_FORMAT", "HelpFormatter", "configure_logging", "float_pair"]
