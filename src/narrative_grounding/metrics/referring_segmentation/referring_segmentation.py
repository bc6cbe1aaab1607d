"""Referring-segmentation metrics (mIoU, cIoU, gIoU, Pr@t, N-acc, T-acc) as an `evaluate` module.

For single-expression grounding: RefCOCO / RefCOCO+ / RefCOCOg (every expression has a target,
as in EPNG's zero-shot study) and GRES / gRefCOCO (expressions may have no target). Load it with
`evaluate.load(narrative_grounding.metrics.REFERRING_SEGMENTATION_PATH)` or use the class
`narrative_grounding.metrics.ReferringSegmentation`. The definitions are in
`narrative_grounding.metrics.functional.referring_segmentation_from_counts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate

from narrative_grounding.metrics.base import CountingMetric
from narrative_grounding.metrics.functional import (
    DEFAULT_PRECISION_THRESHOLDS,
    referring_segmentation_from_counts,
)

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
("original" default, or "stride4").
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

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "intersections": datasets.Value("int64"),
                    "unions": datasets.Value("int64"),
                    "reference_areas": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2306.00968"],
        )

    def add_batch(
        self,
        *,
        predictions: Any = None,
        references: Any = None,
        intersections: Any = None,
        unions: Any = None,
        reference_areas: Any = None,
    ) -> None:
        """Adds a batch of expressions, reducing masks to pixel counts at once."""
        columns = self._counts(
            predictions, references, intersections, unions, reference_areas, require_reference_areas=True
        )
        self._write(columns)

    def add(
        self,
        *,
        prediction: Any = None,
        reference: Any = None,
        intersection: Any = None,
        union: Any = None,
        reference_area: Any = None,
    ) -> None:
        """Adds one expression (the singular form of `add_batch`)."""

        def one(value: Any) -> list[Any] | None:
            return None if value is None else [value]

        self.add_batch(
            predictions=one(prediction),
            references=one(reference),
            intersections=one(intersection),
            unions=one(union),
            reference_areas=one(reference_area),
        )

    def compute(
        self,
        *,
        predictions: Any = None,
        references: Any = None,
        intersections: Any = None,
        unions: Any = None,
        reference_areas: Any = None,
        precision_thresholds: Sequence[float] = DEFAULT_PRECISION_THRESHOLDS,
    ) -> dict[str, Any] | None:
        """Adds the given expressions (if any), then computes the metrics over every one added.

        Returns the results dict on process 0 and None on the others (evaluate's convention).
        """
        given = (predictions, references, intersections, unions, reference_areas)
        if any(value is not None for value in given):
            self.add_batch(
                predictions=predictions,
                references=references,
                intersections=intersections,
                unions=unions,
                reference_areas=reference_areas,
            )
        self._check_something_added()
        return super().compute(precision_thresholds=tuple(precision_thresholds))

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
