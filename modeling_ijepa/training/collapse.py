# SPDX-License-Identifier: Apache-2.0
"""The collapse monitor: statistics of the target features that show a representation collapsing to a constant."""

import torch


@torch.no_grad()
def collapse_statistics(features: torch.Tensor, max_rows: int = 2048) -> dict[str, float]:
    """Signs of representation collapse in target features [..., D].

    Returns the mean over dimensions of the per-dimension standard deviation across tokens (near 0 when all
    tokens map to one point) and the effective rank (exp of the entropy of the normalised singular values of
    the centred features; near 1 when they span one direction, up to D when they use every dimension), with the
    largest effective rank these rows could have, `min(rows, D)`, to read it against."""
    features = features.detach().float().reshape(-1, features.shape[-1])[:max_rows]
    centred = features - features.mean(dim=0, keepdim=True)
    singular_values = torch.linalg.svdvals(centred)
    weights = singular_values / singular_values.sum().clamp_min(1e-12)
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum()
    return {"feature_std": features.std(dim=0).mean().item(), "effective_rank": entropy.exp().item(),
            "effective_rank_max": min(features.shape)}
