# SPDX-License-Identifier: Apache-2.0
"""Probes on frozen features: L2-regularised logistic regression (L-BFGS), the attentive probe, and the sweep that
chooses their setting on a held-out part of the training split (or by k-fold cross-validation) and refits on all of
it."""

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modeling_ijepa.evaluation.subsets import complement, stratified_folds, stratified_sample

logger = logging.getLogger(__name__)


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


def unit_norm_rows(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Centre every feature vector (last dimension) on its own mean and scale it to unit L2 norm: the preprocessing
    of MSN's low-shot logistic regression (cyanure's `preprocess(centering=True, normalize=True, columns=False)`),
    by the I-JEPA authors. Unlike `standardise`, it keeps the relative scale of the channels, so an L2 penalty
    favours the directions in which the features vary most."""
    return [F.normalize(tensor - tensor.mean(dim=-1, keepdim=True), dim=-1) for tensor in tensors]


FEATURE_NORMALISATIONS = {"standardise": standardise, "unit_norm": unit_norm_rows}


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
    """Outcome of `sweep_and_refit`: the validation table, the chosen setting, how many examples each probe of the
    sweep was fitted on (the mean over folds) and validated on (in all), the number of folds (1: one held-out part),
    the eval-split scores, and `at_edge`: each hyperparameter whose chosen value is the lowest or highest of the
    values swept (see `sweep_edges`)."""

    table: list[dict]
    chosen: dict
    num_fit: int
    num_validation: int
    scores: torch.Tensor
    at_edge: dict[str, str]
    num_folds: int = 1


def sweep_edges(settings: Sequence[dict], chosen: dict) -> dict[str, str]:
    """The hyperparameters of `chosen` whose value is the `"lowest"` or `"highest"` of the two or more values
    `settings` sweep, name -> edge. The best value may then lie outside the sweep, which should be widened."""
    edges = {}
    for name, value in chosen.items():
        if isinstance(value, str):  # a choice among named options has no edges
            continue
        swept = sorted({setting[name] for setting in settings})
        if len(swept) > 1 and value in (swept[0], swept[-1]):
            edges[name] = "lowest" if value == swept[0] else "highest"
    return edges


def validation_splits(
    labels: torch.Tensor, validation_fraction: float, num_folds: int, seed: int
) -> list[torch.Tensor]:
    """The held-out parts a sweep validates on: one stratified part of `validation_fraction` (`num_folds` 1), or
    the `num_folds` folds of a stratified k-fold cross-validation, which holds out every example once."""
    if num_folds > 1:
        return stratified_folds(labels, num_folds, seed)
    validation = stratified_sample(labels, validation_fraction, seed, leave_at_least=1)
    if len(validation) == 0:
        raise ValueError(
            "Cannot hold out examples to choose among several probe settings: every class has a single training "
            "example. Give a single setting (one weight decay, and for the attentive probe one learning rate)."
        )
    return [validation]


def sweep_and_refit(
    fit_probes: Callable[[torch.Tensor, torch.Tensor, list[dict]], list[nn.Module]],
    settings: Sequence[dict],
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    eval_features: torch.Tensor,
    validation_fraction: float,
    seed: int,
    num_folds: int = 1,
    normalisations: Sequence[str] = ("standardise",),
) -> SweepResult:
    """Choose a probe setting on held-out parts of the training features, then refit on all of them with that
    setting and score the eval features.

    `fit_probes(features, labels, settings)` returns one trained probe per setting. The held-out parts are one
    stratified part of `validation_fraction` or, with `num_folds` > 1, the folds of a stratified k-fold
    cross-validation: a low-shot set of 10 examples per class leaves a single example per class to a 10% part,
    too few to tell settings apart. For each part, every setting is trained on the rest of the training features,
    normalised by each of `normalisations` (names of `FEATURE_NORMALISATIONS`; `standardise` with the statistics of
    that rest); its score is its top-1 accuracy over all the held-out examples. With several normalisations, the
    choice among them is part of the sweep: each setting of the table and the chosen one carry it as `features`.
    Ties go to the earlier setting (the first normalisation first). With a single candidate nothing is held out (and
    nothing is at the edge of a sweep).
    """
    unknown = sorted(set(normalisations) - set(FEATURE_NORMALISATIONS))
    if unknown or not normalisations:
        choices = ", ".join(FEATURE_NORMALISATIONS)
        raise ValueError(f"Unknown or no feature normalisations {unknown}: choose one or more of {choices}.")
    settings = list(settings)
    candidates = [(kind, setting) for kind in normalisations for setting in settings]  # by normalisation, then setting
    swept_normalisation = len(normalisations) > 1
    named = [setting | {"features": kind} if swept_normalisation else setting for kind, setting in candidates]
    table, best, num_fit, num_validation, num_parts = [], 0, len(train_features), 0, 1
    if len(candidates) > 1:
        parts = validation_splits(train_labels, validation_fraction, num_folds, seed)
        num_parts = len(parts)
        num_correct, fit_sizes = [0] * len(candidates), []
        for validation in parts:
            fit = complement(validation, len(train_labels))
            fit_sizes.append(len(fit))
            for position, kind in enumerate(normalisations):
                normalise = FEATURE_NORMALISATIONS[kind]
                fit_features, validation_features = normalise(train_features[fit], train_features[validation])
                probes = fit_probes(fit_features, train_labels[fit], settings)
                for index, probe in enumerate(probes, start=position * len(settings)):
                    predictions = probe_scores(probe, validation_features).argmax(dim=1)
                    num_correct[index] += (predictions == train_labels[validation]).sum().item()
        num_fit, num_validation = round(sum(fit_sizes) / len(fit_sizes)), sum(len(part) for part in parts)
        table = [
            setting | {"validation_top1": correct / num_validation} for setting, correct in zip(named, num_correct)
        ]
        best = max(range(len(table)), key=lambda row: table[row]["validation_top1"])  # the first of equal rows
    kind, setting = candidates[best]
    train_features, eval_features = FEATURE_NORMALISATIONS[kind](train_features, eval_features)
    (probe,) = fit_probes(train_features, train_labels, [setting])
    scores = probe_scores(probe, eval_features)
    return SweepResult(table, named[best], num_fit, num_validation, scores, sweep_edges(named, named[best]), num_parts)
