# SPDX-License-Identifier: Apache-2.0
"""Subsets of a split: random caps, stratified held-out parts and folds, and low-shot subsets (N per class or a
fraction)."""

import logging
from collections.abc import Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)


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


def stratified_folds(labels: torch.Tensor, num_folds: int, seed: int) -> list[torch.Tensor]:
    """Seeded stratified partition of the examples into `num_folds` folds: every class is shuffled and dealt out
    round-robin, continuing where the previous class stopped, so that each fold holds `n_c / num_folds` examples of
    class c (give or take one) and the folds' sizes differ by at most one. Returns each fold's sorted indices."""
    if not 2 <= num_folds <= len(labels):
        raise ValueError(
            f"Cannot cut {len(labels)} examples into {num_folds} folds (at least 2, at most one per example)."
        )
    generator = np.random.default_rng(seed)
    labels = labels.numpy()
    folds, position = [[] for _ in range(num_folds)], 0
    for label in np.unique(labels):
        for index in generator.permutation(np.flatnonzero(labels == label)):
            folds[position % num_folds].append(index)
            position += 1
    return [torch.tensor(sorted(fold), dtype=torch.long) for fold in folds]


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
