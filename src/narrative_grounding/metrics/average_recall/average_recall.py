"""Average Recall of Panoptic Narrative Grounding, as an `evaluate` module.

Load it with `evaluate.load(narrative_grounding.metrics.AVERAGE_RECALL_PATH)` (this folder) or use
the class `narrative_grounding.metrics.AverageRecall`. The definition is in
`narrative_grounding.metrics.functional`; the metric card (README.md beside this file) states it.
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate

from narrative_grounding.metrics.base import CountingMetric, as_list_of
from narrative_grounding.metrics.functional import (
    EMPTY_GROUND_TRUTH_POLICIES,
    INTEGRATIONS,
    average_recall_from_counts,
)

_CITATION = """\
@inproceedings{gonzalez2021panoptic,
  title={Panoptic Narrative Grounding},
  author={Gonz{\\'a}lez, Cristina and Ayobi, Nicol{\\'a}s and Hern{\\'a}ndez, Isabela and Hern{\\'a}ndez, Jos{\\'e} and Pont-Tuset, Jordi and Arbel{\\'a}ez, Pablo},
  booktitle={ICCV},
  year={2021}
}
"""

_DESCRIPTION = """\
Average Recall (AR) of Panoptic Narrative Grounding: the area under the curve of recall (the
fraction of noun phrases whose predicted mask has IoU >= t with the ground truth) against the IoU
threshold t in [0, 1], overall and on the things / stuff / singular / plural splits. Computed
exactly (the mean IoU) by default; `integration="official"` reproduces the published left Riemann
sum on a 1e-5 grid. The config name is the evaluation protocol: "original" (default, compare at
the original image size as EPNG) or "stride4" (compare at stride 4 of an ~800-pixel input as the
PPMN family).
"""

_KWARGS_DESCRIPTION = """
Args (per phrase, one list entry each; masks may differ in size between phrases):
    predictions: predicted masks, `H x W` 0/1 arrays or tensors (or a `P x H x W` stack);
        float maps are probabilities (or logits with `prediction_type="logits"` at load time),
        resized to the protocol's resolution and thresholded.
    references: ground-truth masks at the original image size, `H x W` 0/1.
    intersections, unions: instead of masks, precomputed pixel counts |pred & gt|, |pred | gt|.
    reference_areas: with counts only, optional |gt| (catches a ground truth emptied by resizing).
    is_thing: whether the phrase's segments are of a "thing" category (else "stuff").
    num_segments: number of ground-truth segments of the phrase (1 singular, > 1 plural).
Compute options:
    integration: "exact" (default) or "official".
    empty_ground_truth: "raise" (default) or "skip" (skipped phrases are counted).
Returns:
    average_recall, average_recall_things, average_recall_stuff, average_recall_singular,
    average_recall_plural (fractions in [0, 1]; nan for an empty split), recall_at_0.5,
    num_phrases, num_things, num_stuff, num_singular, num_plural, num_skipped_empty_ground_truth,
    recall_curve (dict: iou_thresholds and the recall of overall and of each split).
Examples:
    >>> import numpy as np
    >>> metric = AverageRecall()
    >>> gt = np.zeros((4, 4), dtype=np.uint8); gt[:2] = 1
    >>> pred = np.zeros((4, 4), dtype=np.uint8); pred[:1] = 1
    >>> metric.compute(predictions=[pred, gt], references=[gt, gt], is_thing=[True, False],
    ...                num_segments=[1, 2])["average_recall"]
    0.75
"""


class AverageRecall(CountingMetric):
    """PNG Average Recall; see the module docstring and the metric card for the definition.

    Construction arguments are those of `CountingMetric` (protocol as `config_name`,
    `prediction_type`, `threshold`, and `evaluate.Metric`'s own).
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # counts only: masks never reach the Arrow cache (see CountingMetric)
            features=datasets.Features(
                {
                    "intersections": datasets.Value("int64"),
                    "unions": datasets.Value("int64"),
                    "reference_areas": datasets.Value("int64"),
                    "is_thing": datasets.Value("bool"),
                    "num_segments": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2109.04988", "https://arxiv.org/abs/2208.05647"],
        )

    def add_batch(
        self,
        *,
        predictions: Any = None,
        references: Any = None,
        is_thing: Any = None,
        num_segments: Any = None,
        intersections: Any = None,
        unions: Any = None,
        reference_areas: Any = None,
    ) -> None:
        """Adds a batch of phrases, reducing masks to pixel counts at once."""
        if is_thing is None or num_segments is None:
            raise ValueError("Every phrase needs `is_thing` and `num_segments` (one entry per phrase).")
        columns = self._counts(
            predictions, references, intersections, unions, reference_areas, require_reference_areas=False
        )
        is_thing = as_list_of(is_thing, bool, "is_thing")
        num_segments = as_list_of(num_segments, int, "num_segments")
        self._write({**columns, "is_thing": is_thing, "num_segments": num_segments})

    def add(
        self,
        *,
        prediction: Any = None,
        reference: Any = None,
        is_thing: Any = None,
        num_segments: Any = None,
        intersection: Any = None,
        union: Any = None,
        reference_area: Any = None,
    ) -> None:
        """Adds one phrase (the singular form of `add_batch`)."""

        def one(value: Any) -> list[Any] | None:
            return None if value is None else [value]

        self.add_batch(
            predictions=one(prediction),
            references=one(reference),
            is_thing=one(is_thing),
            num_segments=one(num_segments),
            intersections=one(intersection),
            unions=one(union),
            reference_areas=one(reference_area),
        )

    def compute(
        self,
        *,
        predictions: Any = None,
        references: Any = None,
        is_thing: Any = None,
        num_segments: Any = None,
        intersections: Any = None,
        unions: Any = None,
        reference_areas: Any = None,
        integration: str = "exact",
        empty_ground_truth: str = "raise",
    ) -> dict[str, Any] | None:
        """Adds the given phrases (if any), then computes Average Recall over every phrase added.

        Returns the results dict on process 0 and None on the others (evaluate's convention).
        """
        # checked before anything is added: a call that fails must not leave its phrases in the metric
        if integration not in INTEGRATIONS:
            raise ValueError(f"`integration` must be one of {INTEGRATIONS}, got {integration!r}.")
        if empty_ground_truth not in EMPTY_GROUND_TRUTH_POLICIES:
            raise ValueError(
                f"`empty_ground_truth` must be one of {EMPTY_GROUND_TRUTH_POLICIES}, got {empty_ground_truth!r}."
            )
        given = (predictions, references, is_thing, num_segments, intersections, unions, reference_areas)
        if any(value is not None for value in given):
            self.add_batch(
                predictions=predictions,
                references=references,
                is_thing=is_thing,
                num_segments=num_segments,
                intersections=intersections,
                unions=unions,
                reference_areas=reference_areas,
            )
        self._check_something_added()
        return super().compute(integration=integration, empty_ground_truth=empty_ground_truth)

    def _compute(
        self,
        *,
        intersections: list[int],
        unions: list[int],
        reference_areas: list[int],
        is_thing: list[bool],
        num_segments: list[int],
        integration: str = "exact",
        empty_ground_truth: str = "raise",
    ) -> dict[str, Any]:
        return average_recall_from_counts(
            intersections,
            unions,
            is_thing,
            num_segments,
            reference_areas=reference_areas,
            integration=integration,
            empty_ground_truth=empty_ground_truth,
        )
