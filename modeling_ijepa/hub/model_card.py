# SPDX-License-Identifier: Apache-2.0
"""Model cards and training-curve pictures for pretraining runs."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402
from huggingface_hub import EvalResult, ModelCard, ModelCardData  # noqa: E402


def plural(count: int, noun: str) -> str:
    """`count` with thousands separators and `noun`, in the plural (+"es" after a sibilant, else +"s") unless
    `count` is 1: "1 process", "2 processes", "10,000 images".

    Every count in a card goes through this, in Python or in a card template (which `write_model_card` gives it).
    """
    if count == 1:
        return f"{count:,} {noun}"
    return f"{count:,} {noun}{'es' if noun.endswith(('s', 'x', 'z', 'ch', 'sh')) else 's'}"


def loss_flattens(losses: list[float]) -> bool:
    """Whether a loss curve spans more than a decade, where a linear axis shows its later part as a flat line."""
    positive = [loss for loss in losses if loss > 0]
    return len(positive) == len(losses) > 1 and max(positive) > 10 * min(positive)


def plot_training_curves(log_history: list[dict], path: str | Path) -> Path:
    """Loss (left; on a log scale when it spans more than a decade) and collapse monitor (right) against the
    optimizer step, as a PNG. The monitor is read against its references: the effective rank as a fraction of the
    largest it could be, and the per-dimension std as a fraction of its value at the first logged step (the target
    encoder as initialised, when the run logged step 1)."""
    figure, (loss_axis, monitor_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    losses = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    if losses:
        # A line through one point draws nothing: a run that logged once gets a marker.
        loss_axis.plot(*zip(*losses), color="tab:blue", marker="o" if len(losses) == 1 else None)
        if loss_flattens([loss for _, loss in losses]):
            loss_axis.set_yscale("log")
    loss_axis.set(xlabel="optimizer step", ylabel="prediction loss", title="Loss")
    loss_axis.grid(alpha=0.3)
    monitor = [entry for entry in log_history if "effective_rank" in entry]
    if monitor:
        steps = [entry["step"] for entry in monitor]
        maximum = monitor[0].get("effective_rank_max")
        ranks = [entry["effective_rank"] / (maximum or 1) for entry in monitor]
        initial_std = monitor[0]["feature_std"] or 1.0
        stds = [entry["feature_std"] / initial_std for entry in monitor]
        monitor_axis.plot(steps, ranks, color="tab:green", marker="o", markersize=3)
        monitor_axis.plot(steps, stds, color="tab:red", linestyle="--", marker="s", markersize=3)
        rank_label = f"effective rank / its maximum ({maximum})" if maximum else "effective rank"
        monitor_axis.legend([rank_label, f"per-dimension std / its value at step {steps[0]} ({initial_std:.3g})"],
                            loc="best", fontsize=8)
        monitor_axis.axhline(1.0, color="gray", linewidth=0.8)
        monitor_axis.set_ylim(bottom=0)
    monitor_axis.set(xlabel="optimizer step", ylabel="fraction of reference", title="Collapse monitor")
    monitor_axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def write_model_card(output_dir: str | Path, template: str | Path, card_values: dict, card_data: dict) -> ModelCard:
    """Render `template` (Jinja, with `card_data` as YAML front matter) into `output_dir/README.md`.

    The template sees `card_values` and the function `plural`, for counts: `{{ plural(num_processes, "process") }}`.
    """
    data = ModelCardData(**card_data)
    values = dict(card_values, plural=plural)
    values["hyperparameters"] = yaml.safe_dump(json.loads(json.dumps(values.pop("hyperparameters"))), sort_keys=True).strip()
    card = ModelCard.from_template(data, template_path=str(template), **values)
    card.save(Path(output_dir) / "README.md")
    return card


@dataclass
class CardMetric:
    """One accuracy to publish in a model card's model-index."""

    name: str
    value: float
    args: dict


def update_model_card(
    card_path: Path,
    metrics: Sequence[CardMetric],
    task_type: str,
    dataset_type: str,
    dataset_name: str,
    dataset_config: str | None,
    dataset_split: str,
) -> ModelCard:
    """Add (or replace) accuracy entries in the model-index of the model card at `card_path`, keeping its text and
    other metadata. An existing entry with the same task, dataset, config, split and metric name is replaced, so a
    rerun updates its numbers instead of adding duplicates."""
    card = ModelCard.load(card_path)
    new_results = [
        EvalResult(
            task_type=task_type,
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_config=dataset_config,
            dataset_split=dataset_split,
            metric_type="accuracy",
            metric_name=metric.name,
            metric_value=round(metric.value, 4),
            metric_args=metric.args,
        )
        for metric in metrics
    ]

    def identity(result: EvalResult) -> tuple:
        return result.task_type, result.dataset_type, result.dataset_config, result.dataset_split, result.metric_name

    replaced = {identity(result) for result in new_results}
    kept = [result for result in card.data.eval_results or [] if identity(result) not in replaced]
    card.data.eval_results = kept + new_results
    if card.data.model_name is None:  # the model-index needs a name
        card.data.model_name = card_path.parent.resolve().name
    card.save(card_path)
    return card
