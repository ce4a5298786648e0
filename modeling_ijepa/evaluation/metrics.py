# SPDX-License-Identifier: Apache-2.0
"""Top-k accuracy as an `evaluate` metric that works offline.

`evaluate.load("accuracy")` downloads the metric's script from the Hub; this module defines the metric in the
package instead, so it is instantiated directly:

    >>> metric = TopKAccuracy()
    >>> metric.compute(predictions=[[0.1, 0.9], [0.8, 0.2]], references=[1, 1])
    {'top1': 0.5}
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Top-1 and top-k accuracy of per-class scores (logits, probabilities or vote counts): an example counts as correct
at k when its reference class is among the k highest-scoring classes. Classes with equal scores are ranked by class
index (lowest first). Top-k is only reported when there are more than k classes: with k or fewer classes it would
be 1.0 whatever the scores.
"""

_INPUTS_DESCRIPTION = """\
Args:
    predictions (`list[list[float]]` of shape [N, C]): the score of every class for each example.
    references (`list[int]` of length N): the true class of each example, in [0, C).
    k (`int`, *optional*, defaults to 5): the second accuracy reported, besides top-1.

Returns:
    `dict`: `top1`, and `top{k}` when C > k; fractions in [0, 1].
"""


class TopKAccuracy(evaluate.Metric):
    """Top-1 and top-k accuracy from per-class scores. Instantiate it directly; no download is needed."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k: int = 5) -> dict[str, float]:
        scores = np.asarray(predictions, dtype=np.float64)
        references = np.asarray(references, dtype=np.int64)
        if scores.ndim != 2 or len(scores) != len(references):
            raise ValueError(f"Expected scores [N, C] for N references, got {scores.shape} for {len(references)}.")
        num_classes = scores.shape[1]
        if len(references) and (references.min() < 0 or references.max() >= num_classes):
            raise ValueError(f"References must lie in [0, {num_classes - 1}], the columns of the scores.")
        # A stable sort of the negated scores ranks tied classes by index, so results do not depend on the platform.
        ranking = np.argsort(-scores, axis=1, kind="stable")
        hits = ranking == references[:, None]
        results = {"top1": float(hits[:, 0].mean())}
        if num_classes > k:
            results[f"top{k}"] = float(hits[:, :k].any(axis=1).mean())
        return results
