# SPDX-License-Identifier: Apache-2.0
"""What a probe adds to a model card: its accuracies in the model-index, with how much of each split was used."""

from pathlib import Path

from accelerate.logging import get_logger

from modeling_ijepa.hub.model_card import CardMetric, plural, update_model_card

logger = get_logger(__name__)


def split_description(split: str, num_used: int, num_available: int, unit: str) -> str:
    """What a probe saw of a split: "test split, 2,000 of 10,000 images", or "test split, 10,000 images" for all."""
    if num_used == num_available:
        return f"{split} split, {plural(num_used, unit)}"
    return f"{split} split, {num_used:,} of {plural(num_available, unit)}"


def sweep_edge_notes(details: dict) -> dict[str, str]:
    """hyperparameter -> "chosen weight_decay 0.0001 is the lowest value swept (0.0001 to 0.01)", for each one
    that a probe (`details`: its entry in the results) chose at the edge of its sweep."""
    notes = {}
    for name, edge in details["at_sweep_edge"].items():
        swept = [row[name] for row in details["sweep"]]
        notes[name] = (
            f"chosen {name} {details['chosen'][name]:g} is the {edge} value swept ({min(swept):g} to {max(swept):g})"
        )
    return notes


def linear_features_description(normalisations: list[str]) -> str:
    """"standardised features", or the normalisations the linear probe's sweep chose among."""
    names = {"standardise": "standardised features", "unit_norm": "unit-norm centred features (as MSN's low-shot)"}
    described = [names[kind] for kind in normalisations]
    return described[0] if len(described) == 1 else f"{' or '.join(described)}, chosen with the L2 strength"


def probe_training_description(args) -> dict:
    features = linear_features_description(args.linear_feature_normalisations)
    description = {
        "linear": f"multinomial logistic regression on {features}, full-batch L-BFGS from zero weights, at most "
        f"{args.linear_max_iter} iterations; sweep over the L2 strength"
    }
    if args.modality == "video":
        description["attentive"] = (
            f"cross-attention pooling (one learned query) + LayerNorm + linear, on standardised tokens; AdamW with "
            f"cosine decay, {args.attentive_epochs} epochs, batch {args.attentive_batch_size}; sweep over learning "
            "rate x weight decay"
        )
    return description


def low_shot_description(args) -> str:
    if args.samples_per_class is not None:
        return f" ({args.samples_per_class} per class)"
    if args.label_fraction is not None and args.label_fraction < 1:
        return f" ({args.label_fraction:.0%} of labels)"
    return ""


def card_metrics(results: dict, args) -> list[CardMetric]:
    suffix = low_shot_description(args)
    probe_args = {"feature_layers": args.feature_layers, "training_data": results["train_data"]}
    if args.samples_per_class is not None:
        probe_args["samples_per_class"] = args.samples_per_class
    if args.label_fraction is not None:
        probe_args["label_fraction"] = args.label_fraction

    def swept_probe_args(probe: str) -> dict:
        details = results[f"{probe}_probe"]
        notes = sweep_edge_notes(details)
        return probe_args | details["chosen"] | ({"at_sweep_edge": "; ".join(notes.values())} if notes else {})

    metrics = [CardMetric(f"Linear probe top-1 accuracy{suffix}", results["linear_top1"], swept_probe_args("linear"))]
    if "attentive_top1" in results:
        attentive_args = swept_probe_args("attentive")
        metrics.append(CardMetric(f"Attentive probe top-1 accuracy{suffix}", results["attentive_top1"], attentive_args))
    knn_args = probe_args | {"k": args.knn_k, "temperature": args.knn_temperature}
    metrics.append(CardMetric(f"kNN top-1 accuracy (k={args.knn_k}){suffix}", results["knn_top1"], knn_args))
    return metrics


def maybe_update_model_card(results: dict, args) -> Path | None:
    """Record the accuracies of a probe run (`results`, as in `probe_results.json`) in the model folder's card, when
    it has one and the probed weights are its own."""
    card_path = Path(args.model_name_or_path).expanduser() / "README.md"
    if args.no_update_model_card or args.random_init or not card_path.is_file():
        return None
    name = results["dataset"]["name"]
    dataset_type = Path(name).name if Path(name).exists() else name
    update_model_card(
        card_path,
        card_metrics(results, args),
        task_type=f"{args.modality}-classification",
        dataset_type=dataset_type,
        # The pretty name says how much of the split was evaluated; `dataset_split` stays a loadable split name.
        dataset_name=f"{dataset_type} ({results['eval_data']})",
        dataset_config=args.dataset_config_name,
        dataset_split=results["eval_split"],
    )
    logger.info(f"Added the probe accuracies to the model-index of {card_path}.")
    return card_path
