"""Referring-segmentation metrics (mIoU, cIoU, gIoU, Pr@t, N-acc, T-acc) as an `evaluate` module.

For single-expression grounding: RefCOCO / RefCOCO+ / RefCOCOg (every expression has a target,
as in EPNG's zero-shot study) and GRES / gRefCOCO (expressions may have no target). Load it with
`evaluate.load(narrative_grounding.metrics.REFERRING_SEGMENTATION_PATH)` or use the class
`narrative_grounding.metrics.ReferringSegmentation`. It builds on the Average Recall module's
`CountingMetric` (masks reduced to counts under the same protocols), so it needs the installed
package; its definitions are in `referring_segmentation_from_counts` below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import numpy as np

from narrative_grounding.metrics.average_recall.average_recall import (
    BINARY_PROTOCOLS,
    CountingMetric,
    as_1d,
    check_lengths,
    first_indices,
    validate_counts,
)

DEFAULT_PRECISION_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


_CITATION = """\
@inproceedings{liu2023gres,
  title={GRES: Generalized Referring Expression Segmentation},
  author={Liu, Chang and Ding, Henghui and Jiang, Xudong},
  booktitle={CVPR},
  year={2023}
}
"""

_DESCRIPTION = """\
Referring-segmentation metrics, one expression = one predicted mask vs one ground-truth mask
(possibly empty: a no-target expression). mIoU: mean IoU over target expressions. cIoU:
cumulative intersection over cumulative union over all expressions. gIoU: mean per-expression
IoU where a no-target expression scores 1 if its prediction is empty, else 0. precision_at_t:
fraction of target expressions with IoU >= t. N-acc / T-acc: fraction of no-target expressions
predicted empty / of target expressions predicted non-empty. Config name = evaluation protocol
("original" default, "stride4" or "stride4_padded").
"""

_KWARGS_DESCRIPTION = """
Args (per expression, one list entry each; masks may differ in size between expressions):
    predictions: predicted masks, `H x W` 0/1 arrays or tensors (or an `E x H x W` stack); float
        maps are probabilities (or logits with `prediction_type="logits"` at load time).
    references: ground-truth masks at the original image size, `H x W` 0/1 (all zero = no target).
    intersections, unions, reference_areas: instead of masks, precomputed pixel counts
        |pred & gt|, |pred | gt| and |gt|.
Compute options:
    precision_thresholds: IoU thresholds of precision_at_<t> (default 0.3 ... 0.9 by 0.1).
Returns:
    miou, ciou, giou, precision_at_<t> for each threshold, n_acc, t_acc (fractions in [0, 1];
    nan when nothing to average), num_expressions, num_target, num_no_target.
Examples:
    >>> import numpy as np
    >>> metric = ReferringSegmentation()
    >>> gt = np.zeros((4, 4), dtype=bool); gt[:2] = True
    >>> results = metric.compute(predictions=[gt, np.zeros_like(gt)], references=[gt, np.zeros_like(gt)])
    >>> results["giou"], results["n_acc"]
    (1.0, 1.0)
"""


class ReferringSegmentation(CountingMetric):
    """Referring-segmentation metrics; construction arguments are those of `CountingMetric`."""

    # binary masks only: N-acc / T-acc ask whether a prediction is empty, which soft maps never are
    protocols = BINARY_PROTOCOLS
    integer_counts = True
    requires_reference_areas = True

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(self.count_features()),
            reference_urls=["https://arxiv.org/abs/2306.00968"],
        )

    def _compute(
        self,
        *,
        intersections: list[int],
        unions: list[int],
        reference_areas: list[int],
        precision_thresholds: Sequence[float] = DEFAULT_PRECISION_THRESHOLDS,
    ) -> dict[str, Any]:
        return referring_segmentation_from_counts(
            intersections, unions, reference_areas, precision_thresholds=precision_thresholds
        )


def referring_segmentation_from_counts(
    intersections: Sequence[int] | np.ndarray,
    unions: Sequence[int] | np.ndarray,
    reference_areas: Sequence[int] | np.ndarray,
    precision_thresholds: Sequence[float] = DEFAULT_PRECISION_THRESHOLDS,
) -> dict[str, Any]:
    """Referring-segmentation metrics (RefCOCO family, GRES) from per-expression pixel counts.

    An expression is "no-target" when its ground truth is empty (`reference_areas == 0`), and its
    prediction is "empty" when it has no pixel (`unions - reference_areas + intersections == 0`).

    Args:
        intersections: `E` counts |pred AND gt|.
        unions: `E` counts |pred OR gt|.
        reference_areas: `E` counts |gt|.
        precision_thresholds: IoU thresholds of the `precision_at_<t>` entries.

    Returns:
        `miou`: mean IoU over target expressions; `ciou`: sum of intersections / sum of unions over
        all expressions (a no-target expression adds its predicted pixels to the union);
        `giou`: mean over all expressions of the IoU, where a no-target expression scores 1 when
        its prediction is empty and 0 otherwise; `precision_at_<t>`: fraction of target
        expressions with IoU >= t; `n_acc`: fraction of no-target expressions predicted empty;
        `t_acc`: fraction of target expressions predicted non-empty; and the counts
        `num_expressions`, `num_target`, `num_no_target`. A value with no expression to average
        over is nan.
    """
    intersections = as_1d(intersections, "intersections", int)
    unions = as_1d(unions, "unions", int)
    reference_areas = as_1d(reference_areas, "reference_areas", int)
    check_lengths(intersections=intersections, unions=unions, reference_areas=reference_areas)
    if (reference_areas < 0).any():
        bad = np.flatnonzero(reference_areas < 0)
        raise ValueError(f"Expressions {first_indices(bad)} have a negative (or unknown) ground-truth area.")
    validate_counts(intersections, unions, reference_areas)
    thresholds = [float(t) for t in precision_thresholds]
    if any(not 0.0 <= t <= 1.0 for t in thresholds):
        raise ValueError(f"`precision_thresholds` must lie in [0, 1], got {thresholds}.")

    has_target = reference_areas > 0
    prediction_areas = unions - reference_areas + intersections
    predicted_empty = prediction_areas == 0
    ious = np.zeros(len(unions), dtype=np.float64)
    ious[has_target] = intersections[has_target] / unions[has_target]
    target_ious = ious[has_target]
    # gIoU (GRES): a correct "nothing" answer to a no-target expression is a perfect score
    generalized = np.where(has_target, ious, predicted_empty.astype(np.float64))
    total_union = int(unions.sum())

    def _mean(values: np.ndarray) -> float:
        return float(np.mean(values, dtype=np.float64)) if len(values) else float("nan")

    results: dict[str, Any] = {
        "miou": _mean(target_ious),
        "ciou": float(int(intersections.sum()) / total_union) if total_union else float("nan"),
        "giou": _mean(generalized),
    }
    for threshold in thresholds:
        results[f"precision_at_{threshold:g}"] = _mean((target_ious >= threshold).astype(np.float64))
    results["n_acc"] = _mean(predicted_empty[~has_target].astype(np.float64))
    results["t_acc"] = _mean((~predicted_empty[has_target]).astype(np.float64))
    results["num_expressions"] = len(unions)
    results["num_target"] = int(has_target.sum())
    results["num_no_target"] = int((~has_target).sum())
    return results
