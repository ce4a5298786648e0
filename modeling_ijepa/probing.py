# SPDX-License-Identifier: Apache-2.0
"""Frozen-feature evaluation: feature extraction with an on-disk cache, linear and attentive probes with a
hyperparameter sweep, kNN, low-shot subsets and model-card results.

The protocol, shared by `run_linear_probe.py` and the benchmarks:

    frozen encoder (eval mode, no grad) -> features, extracted once per split and cached (safetensors)
      images: mean over tokens of the last layer (or of each of the last K layers, concatenated)  [N, D or K*D]
      video:  every token of the last layer(s), for the attentive probe                           [N, T, D or K*D]
    -> optional low-shot subset of the training split (N per class, or a stratified fraction)
    -> probe: linear (L2-regularised logistic regression, L-BFGS to convergence; sweep over the L2 strength) or
       attentive (video; AdamW, sweep over learning rate x weight decay), the setting chosen on a stratified
       held-out part of the training split, refit on the whole training split, evaluated once on the eval split
    -> kNN on the same features (cosine similarity, temperature-weighted votes)

Nothing is ever chosen on the eval split.
"""

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import EvalResult, ModelCard, try_to_load_from_cache
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------------------


def select_tokens(outputs, feature_layers: int) -> torch.Tensor:
    """Token features [B, N, D] (one layer) or [B, N, K*D] (the last K layers, concatenated over channels).

    With `feature_layers=1` these are the model's `last_hidden_state`, after its final (affine) LayerNorm. With
    K > 1 they are the outputs of the last K blocks taken from `hidden_states`, which in transformers' I-JEPA are
    captured before the final LayerNorm; each block output is layer-normed over channels without affine parameters
    (as I-JEPA normalises its targets) so that the K layers enter the concatenation on the same scale. Using the
    final LayerNorm's affine parameters on earlier layers would apply weights trained for the last layer only.
    """
    if feature_layers == 1:
        return outputs.last_hidden_state
    block_outputs = outputs.hidden_states[1:]  # hidden_states[0] is the embedding output
    if feature_layers > len(block_outputs):
        raise ValueError(f"--feature_layers {feature_layers} exceeds the model's {len(block_outputs)} layers.")
    return torch.cat([F.layer_norm(hidden, hidden.shape[-1:]) for hidden in block_outputs[-feature_layers:]], dim=-1)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataloader: torch.utils.data.DataLoader,
    input_name: str,
    feature_layers: int = 1,
    pool_tokens: bool = True,
    accelerator=None,
    description: str = "Extracting features",
    skip_tokens: int = 0,
    forward_arguments: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Run the frozen `model` over `dataloader` and collect features and labels on the CPU.

    The first `skip_tokens` tokens (a CLS token, for encoders that have one) are left out. `forward_arguments` go to
    every call of `model` (`{"skip_predictor": True}` runs stock `VJEPA2Model`'s encoder alone).
    Batches are dicts with `input_name` (`pixel_values` or `pixel_values_videos`), `labels`, and optionally
    `num_skipped` (unreadable examples that `image_data.SkipUnreadable` dropped together with their labels).

    Returns:
        `{"features": [N, D] (pooled) or [N, T, D] (tokens) float32, "labels": [N] int64, "num_skipped": [] int64}`.
    """
    model.eval()
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    features, labels, num_skipped = [], [], 0
    disable = accelerator is not None and not accelerator.is_local_main_process
    for batch in tqdm(dataloader, desc=description, disable=disable):
        num_skipped += int(batch.get("num_skipped", 0))
        if input_name not in batch:  # every example of this batch was unreadable
            continue
        inputs = batch[input_name].to(device)
        with accelerator.autocast() if accelerator is not None else torch.autocast(device.type, enabled=False):
            outputs = model(
                **{input_name: inputs}, output_hidden_states=feature_layers > 1, **(forward_arguments or {})
            )
        tokens = select_tokens(outputs, feature_layers)[:, skip_tokens:].float()
        features.append((tokens.mean(dim=1) if pool_tokens else tokens).cpu())
        labels.append(torch.as_tensor(batch["labels"], dtype=torch.long))
    if not features:
        raise ValueError(f"{description}: no readable example (skipped {num_skipped}).")
    return {"features": torch.cat(features), "labels": torch.cat(labels), "num_skipped": torch.tensor(num_skipped)}


def fingerprint(parts: dict) -> str:
    """A short stable hash of a JSON-able description (what a cached feature file was computed from)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_files_fingerprint(model_name_or_path: str) -> dict:
    """What identifies a model's weights on disk: path, size and modification time of the files a loader reads
    (a checkpoint file, or a folder's `config.json` and weight files; other files such as a model card or probe
    results do not invalidate the cache). A Hub id is identified by its name and the commit of the snapshot that
    loading it put in the local Hub cache."""
    path = Path(model_name_or_path).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
    else:
        cached_config = try_to_load_from_cache(model_name_or_path, "config.json")
        return {
            "hub_id": model_name_or_path,
            "commit": Path(cached_config).parent.name if isinstance(cached_config, str) else None,
        }
    return {"path": str(path.resolve()), "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]}


def cached_features(path: Path, compute: Callable[[], dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], bool]:
    """Load the tensors stored at `path`, or compute and store them there (written to a temporary file, then
    renamed, so an interrupted run never leaves a truncated cache). Returns the tensors and whether they came
    from the cache."""
    if path.is_file():
        logger.info("Loading cached features from %s (extraction skipped).", path)
        return load_file(path), True
    tensors = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, temporary)
    os.replace(temporary, path)
    logger.info("Cached features in %s.", path)
    return tensors, False


# --------------------------------------------------------------------------------------------------------------
# Subsets
# --------------------------------------------------------------------------------------------------------------


def random_subset(num_examples: int, max_examples: int | None, seed: int) -> list[int] | None:
    """Sorted indices of a seeded random selection of `max_examples` rows, or `None` to keep all rows."""
    if max_examples is None or max_examples >= num_examples:
        return None
    return sorted(np.random.default_rng(seed).choice(num_examples, max_examples, replace=False).tolist())


def stratified_sample(labels: torch.Tensor, fraction: float, seed: int, leave_at_least: int = 0) -> torch.Tensor:
    """Seeded per-class sample: `round(fraction * n_c)` examples of each class c, but at least one and at most
    `n_c - leave_at_least`, so that every class is represented (and, with `leave_at_least=1`, also remains in the
    rest). Returns sorted indices into `labels`."""
    if not 0 < fraction < 1:
        raise ValueError(f"The fraction must lie in (0, 1), got {fraction}.")
    generator = np.random.default_rng(seed)
    labels = labels.numpy()
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = min(max(1, round(fraction * len(members))), len(members) - leave_at_least)
        chosen.append(generator.choice(members, count, replace=False))
    return torch.from_numpy(np.sort(np.concatenate(chosen))).long()


def samples_per_class_subset(
    labels: torch.Tensor, samples_per_class: int, class_names: Sequence[str], seed: int
) -> torch.Tensor:
    """Seeded choice of exactly `samples_per_class` examples of every class. Raises `ValueError` naming the first
    class that has fewer. Returns sorted indices into `labels`."""
    generator = np.random.default_rng(seed)
    labels = labels.numpy()
    chosen = []
    for label, name in enumerate(class_names):
        members = np.flatnonzero(labels == label)
        if len(members) < samples_per_class:
            raise ValueError(
                f"--samples_per_class {samples_per_class}: class {name!r} (label {label}) has only {len(members)} "
                "examples in the training split (after --max_train_samples and skipping unreadable files)."
            )
        chosen.append(generator.choice(members, samples_per_class, replace=False))
    return torch.from_numpy(np.sort(np.concatenate(chosen))).long()


def low_shot_subset(
    labels: torch.Tensor,
    class_names: Sequence[str],
    samples_per_class: int | None,
    label_fraction: float | None,
    seed: int,
) -> torch.Tensor | None:
    """Indices of the labelled training examples a low-shot evaluation may use, or `None` for all of them."""
    if samples_per_class is not None:
        return samples_per_class_subset(labels, samples_per_class, class_names, seed)
    if label_fraction is not None and label_fraction < 1:
        return stratified_sample(labels, label_fraction, seed)
    return None


def complement(indices: torch.Tensor, size: int) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    keep[indices] = False
    return keep.nonzero().squeeze(1)


# --------------------------------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------------------------------


class AttentiveProbe(nn.Module):
    """The V-JEPA attentive probe: one learned query cross-attends to the frozen tokens, then LayerNorm and a linear
    classifier. tokens [B, N, D] -> logits [B, num_classes]."""

    def __init__(self, hidden_size: int, num_classes: int, num_heads: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, hidden_size))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(hidden_size)
        self.classifier = nn.Linear(hidden_size, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.attention(self.query.expand(tokens.shape[0], -1, -1), tokens, tokens, need_weights=False)
        return self.classifier(self.layernorm(pooled.squeeze(1)))


def attentive_num_heads(hidden_size: int, preferred: int = 16) -> int:
    """The largest head count up to `preferred` that divides the width (16 as in V-JEPA for ViT-L/H)."""
    return next(heads for heads in range(min(preferred, hidden_size), 0, -1) if hidden_size % heads == 0)


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Standardise every channel (last dimension) with the mean and std of `train` (over all examples and tokens),
    so that one hyperparameter grid suits any encoder's feature scale."""
    flat = train.reshape(-1, train.shape[-1])
    mean, std = flat.mean(dim=0), flat.std(dim=0).clamp_min(1e-6)
    return [(tensor - mean) / std for tensor in (train, *others)]


def fit_logistic_regression(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int = 1000,
    device: str | torch.device = "cpu",
) -> nn.Linear:
    """Multinomial logistic regression trained to convergence: full-batch L-BFGS on the mean cross-entropy plus
    `weight_decay / 2 * ||W||^2` (the bias is not penalised), from zero weights.

    The problem is convex, so the result depends on the L2 strength only, not on a learning rate, a batch order or
    an initialisation (the kind of probe of the MSN and I-JEPA low-shot evaluations, which use L2-regularised
    logistic regression). A mini-batch SGD probe stopped after a fixed budget is instead under-trained by an amount
    that differs between encoders, which biases their comparison.
    """
    features, labels = features.to(device), labels.to(device)
    probe = nn.Linear(features.shape[1], num_classes).to(device)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(
        probe.parameters(),
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(probe(features), labels) + weight_decay / 2 * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe.eval()


@dataclass
class MiniBatchTraining:
    """How the attentive probe trains: AdamW with a cosine learning-rate decay over shuffled mini-batches (the
    whole set when it is smaller than `batch_size`), for a fixed number of epochs."""

    epochs: int = 100
    batch_size: int = 256
    device: str | torch.device = "cpu"


def train_probes(
    make_probe: Callable[[], nn.Module],
    features: torch.Tensor,
    labels: torch.Tensor,
    settings: Sequence[dict],
    training: MiniBatchTraining,
    seed: int,
) -> list[nn.Module]:
    """Train one fresh probe per setting (`{"learning_rate", "weight_decay"}`) on (standardised) features.

    The probes train side by side: the same initialisation (from `seed`), the same mini-batches, and one AdamW
    with a parameter group per setting. The summed loss separates over probes and AdamW is per-parameter, so
    each probe follows exactly the updates it would get alone, with one pass over the data for the whole grid.
    """
    probes = []
    for _ in settings:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            probes.append(make_probe().to(training.device))
    features, labels = features.to(training.device), labels.to(training.device)
    optimizer = torch.optim.AdamW(
        [
            {"params": probe.parameters(), "lr": setting["learning_rate"], "weight_decay": setting["weight_decay"]}
            for probe, setting in zip(probes, settings)
        ]
    )
    steps_per_epoch = math.ceil(len(features) / training.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=training.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    for probe in probes:
        probe.train()
    for _ in range(training.epochs):
        order = torch.randperm(len(features), generator=generator).to(training.device)
        for batch_indices in order.split(training.batch_size):
            batch_features, batch_labels = features[batch_indices], labels[batch_indices]
            loss = sum(F.cross_entropy(probe(batch_features), batch_labels) for probe in probes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return [probe.eval() for probe in probes]


@torch.no_grad()
def probe_scores(probe: nn.Module, features: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits [N, C] of a trained probe, on the CPU."""
    device = next(probe.parameters()).device
    return torch.cat([probe(chunk.to(device)).float().cpu() for chunk in features.split(batch_size)])


@dataclass
class SweepResult:
    """Outcome of `sweep_and_refit`: the validation table, the chosen setting, the eval-split scores, and
    `at_edge`: each hyperparameter whose chosen value is the lowest or highest of the values swept (see
    `sweep_edges`)."""

    table: list[dict]
    chosen: dict
    num_fit: int
    num_validation: int
    scores: torch.Tensor
    at_edge: dict[str, str]


def sweep_edges(settings: Sequence[dict], chosen: dict) -> dict[str, str]:
    """The hyperparameters of `chosen` whose value is the `"lowest"` or `"highest"` of the two or more values
    `settings` sweep, name -> edge. The best value may then lie outside the sweep, which should be widened."""
    edges = {}
    for name, value in chosen.items():
        swept = sorted({setting[name] for setting in settings})
        if len(swept) > 1 and value in (swept[0], swept[-1]):
            edges[name] = "lowest" if value == swept[0] else "highest"
    return edges


def sweep_and_refit(
    fit_probes: Callable[[torch.Tensor, torch.Tensor, list[dict]], list[nn.Module]],
    settings: Sequence[dict],
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    eval_features: torch.Tensor,
    validation_fraction: float,
    seed: int,
) -> SweepResult:
    """Choose a probe setting on a stratified held-out part of the training features, then refit on all of them
    with that setting and score the eval features.

    `fit_probes(features, labels, settings)` returns one trained probe per setting. Every setting is trained on
    the rest of the training features (standardised with their own statistics) and scored by top-1 accuracy on
    the held-out part; ties go to the earlier setting. With a single setting nothing is held out (and nothing is at
    the edge of a sweep).
    """
    settings = list(settings)
    table, chosen, num_fit, num_validation = [], settings[0], len(train_features), 0
    if len(settings) > 1:
        validation = stratified_sample(train_labels, validation_fraction, seed, leave_at_least=1)
        if len(validation) == 0:
            raise ValueError(
                "Cannot hold out examples to choose among several probe settings: every class has a single training "
                "example. Give a single setting (one weight decay, and for the attentive probe one learning rate)."
            )
        fit = complement(validation, len(train_labels))
        num_fit, num_validation = len(fit), len(validation)
        fit_features, validation_features = standardise(train_features[fit], train_features[validation])
        for probe, setting in zip(fit_probes(fit_features, train_labels[fit], settings), settings):
            predictions = probe_scores(probe, validation_features).argmax(dim=1)
            num_correct = (predictions == train_labels[validation]).sum().item()
            table.append(setting | {"validation_top1": num_correct / len(validation)})
        best = max(range(len(table)), key=lambda row: table[row]["validation_top1"])  # the first of equal rows
        chosen = settings[best]
    train_features, eval_features = standardise(train_features, eval_features)
    (probe,) = fit_probes(train_features, train_labels, [chosen])
    scores = probe_scores(probe, eval_features)
    return SweepResult(table, chosen, num_fit, num_validation, scores, sweep_edges(settings, chosen))


@torch.no_grad()
def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Weighted kNN votes [N_query, C], the kNN evaluation of DINO (Caron et al., 2021).

    Features are L2-normalised; each query's k most cosine-similar training examples vote for their class with
    weight `exp(similarity / temperature)`, which favours the closest neighbours over a plain majority vote.
    """
    train_features = F.normalize(train_features.float(), dim=1)
    k = min(k, len(train_features))
    scores = []
    for queries in F.normalize(query_features.float(), dim=1).split(batch_size):
        similarities, neighbours = (queries @ train_features.T).topk(k, dim=1)
        votes = torch.zeros(len(queries), num_classes)
        scores.append(votes.scatter_add_(1, train_labels[neighbours], (similarities / temperature).exp()))
    return torch.cat(scores)


# --------------------------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------------------------


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


@contextmanager
def timed(timings: dict, name: str):
    """Store the wall time of the `with` block in `timings[name]` (seconds)."""
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 3)


__all__ = [
    "AttentiveProbe",
    "CardMetric",
    "MiniBatchTraining",
    "SweepResult",
    "attentive_num_heads",
    "cached_features",
    "extract_features",
    "fingerprint",
    "fit_logistic_regression",
    "knn_scores",
    "low_shot_subset",
    "model_files_fingerprint",
    "random_subset",
    "samples_per_class_subset",
    "select_tokens",
    "standardise",
    "stratified_sample",
    "sweep_and_refit",
    "sweep_edges",
    "timed",
    "train_probes",
    "update_model_card",
]
