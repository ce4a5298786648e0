# SPDX-License-Identifier: Apache-2.0
"""How much unreadable data a run tolerates: too many skipped examples stop it with an error that says so."""

import torch


class UnusableDataError(ValueError):
    """The data could not train the model: no optimizer step was made, or too many examples were unreadable."""


def check_skip_fraction(num_skipped: int, num_read: float, max_fraction: float, what: str) -> None:
    """Raise `UnusableDataError` when more than `max_fraction` of `num_read` examples were skipped as unreadable."""
    if num_skipped > max_fraction * num_read:
        raise UnusableDataError(
            f"{num_skipped} of {num_read:.0f} {what} ({num_skipped / num_read:.0%}) could not be read, more than "
            f"--max_skip_fraction {max_fraction}: check the data (or raise --max_skip_fraction)."
        )


def check_data_was_usable(accelerator, state: dict, max_skip_fraction: float) -> None:
    """After the training loop: refuse a run whose skipped examples exceed `max_skip_fraction` of those read, or that
    trained no optimizer step (an untrained model must not be exported as a result).

    Skips are counted per process (`state["num_skipped"]`) while `state["images_seen"]` counts the global batch, so
    each process judges its own share, and with several processes they agree through a max-reduction (a
    collective: call it on every process)."""
    num_read = state["num_skipped"] + state["images_seen"] / accelerator.num_processes
    over = state["num_skipped"] > max_skip_fraction * num_read
    if accelerator.num_processes > 1:
        over_anywhere = accelerator.reduce(torch.tensor(int(over), device=accelerator.device), "max").item()
        if over_anywhere and not over:
            raise UnusableDataError(
                f"Another process could not read more than --max_skip_fraction {max_skip_fraction} of its examples: "
                "check the data (or raise --max_skip_fraction)."
            )
    check_skip_fraction(state["num_skipped"], num_read, max_skip_fraction, "examples read")
    if state["global_step"] == 0:
        raise UnusableDataError(
            "No optimizer step was trained: every batch was unreadable or skipped. Nothing is exported."
        )
