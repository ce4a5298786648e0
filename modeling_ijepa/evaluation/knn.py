# SPDX-License-Identifier: Apache-2.0
"""Weighted kNN classification on frozen features (cosine similarity, temperature-weighted votes)."""

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


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
