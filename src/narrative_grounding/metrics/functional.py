"""The metric definitions, on per-phrase counts.

Everything here works on small 1-D arrays (one entry per phrase / expression), never on masks:
the evaluate modules reduce masks to counts as soon as they are added (see `mask_counts.py`),
and a training loop that already gathered intersections and unions across processes calls these
functions directly, so every path shares one definition.

Average Recall (PNG, Gonzalez et al. ICCV 2021): recall(t) is the fraction of phrases whose mask
IoU is >= t, and AR is the area under recall(t) for t in [0, 1]. Because
integral_0^1 1[IoU >= t] dt = IoU, the exact area is the mean IoU. The published code instead sums
recall(t_k) * (t_{k+1} - t_k) on t = arange(0, 1, 1e-5) (a left Riemann sum that also leaves out the
last interval); it differs from the exact area by at most 1e-5.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

INTEGRATIONS = ("exact", "official")
EMPTY_GROUND_TRUTH_POLICIES = ("raise", "skip")
#: The grid of the official PNG evaluation: `np.arange(0, 1, 1e-5)` (100,000 thresholds).
OFFICIAL_THRESHOLD_STEP = 1e-5
#: Thresholds of the returned recall curves (for plotting); the AR itself never uses this grid.
CURVE_THRESHOLDS = np.linspace(0.0, 1.0, 101)
AVERAGE_RECALL_SPLITS = ("things", "stuff", "singular", "plural")
#: The Average Recall result keys, overall first; each has a phrase count (`AVERAGE_RECALL_COUNT_KEYS`).
AVERAGE_RECALL_KEYS = ("average_recall", *(f"average_recall_{split}" for split in AVERAGE_RECALL_SPLITS))
AVERAGE_RECALL_COUNT_KEYS = ("num_phrases", *(f"num_{split}" for split in AVERAGE_RECALL_SPLITS))
DEFAULT_PRECISION_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _as_1d(values: Any, name: str, dtype: Any) -> np.ndarray:
    """Converts a list / array / tensor of per-phrase values to a 1-D numpy array, or says why not."""
    if hasattr(values, "detach"):  # torch tensor, possibly on an accelerator
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"`{name}` must hold one value per phrase (1-D), got shape {array.shape}.")
    if array.dtype == object:
        raise ValueError(f"`{name}` holds missing or non-numeric values; give one number per phrase.")
    if dtype is bool:
        if array.dtype != bool:
            if array.size and not np.isin(array, (0, 1)).all():
                bad = int(np.flatnonzero(~np.isin(array, (0, 1)))[0])
                raise ValueError(f"`{name}` must be booleans; phrase {bad} has {array[bad]!r}.")
            array = array.astype(bool)
        return array
    if not np.issubdtype(array.dtype, np.integer):
        if array.size and not (np.isfinite(array).all() and (array == np.round(array)).all()):
            bad = int(np.flatnonzero(~(np.isfinite(array) & (array == np.round(array))))[0])
            raise ValueError(f"`{name}` must be integer counts; phrase {bad} has {array[bad]!r}.")
    return array.astype(np.int64)


def _check_lengths(**arrays: np.ndarray) -> int:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"Per-phrase inputs differ in length: {lengths}; give one entry per phrase in each.")
    return next(iter(lengths.values()))


def _first(indices: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:limit])
    return shown + (f", ... ({len(indices)} in all)" if len(indices) > limit else "")


def area_under_recall_curve(ious: np.ndarray, integration: str = "exact") -> float:
    """Area under recall(t) = mean(IoU >= t) for t in [0, 1].

    Args:
        ious: `P` IoUs in [0, 1].
        integration: "exact" (the mean IoU: the area of the step function, to float64 rounding) or
            "official" (the published left Riemann sum on `np.arange(0, 1, 1e-5)`).

    Returns:
        The area as a float in [0, 1], or nan when `ious` is empty (a split with no phrase).
    """
    if integration not in INTEGRATIONS:
        raise ValueError(f"`integration` must be one of {INTEGRATIONS}, got {integration!r}.")
    if len(ious) == 0:
        return float("nan")
    if integration == "exact":
        return float(np.mean(ious, dtype=np.float64))
    thresholds = np.arange(0.0, 1.0, OFFICIAL_THRESHOLD_STEP)
    recall = recall_at(ious, thresholds)
    # left Riemann sum over consecutive thresholds: recall(t_k) * (t_{k+1} - t_k), k < K - 1
    return float(np.sum(recall[:-1] * np.abs(np.diff(thresholds))))


def recall_at(ious: np.ndarray, thresholds: np.ndarray | Sequence[float]) -> np.ndarray:
    """Fraction of `ious` that are >= each threshold (`len(thresholds)` values; nan if no IoU)."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if len(ious) == 0:
        return np.full(thresholds.shape, np.nan)
    ordered = np.sort(np.asarray(ious, dtype=np.float64))
    # number of IoUs strictly below t, for every t at once (O((P + K) log P), no P x K matrix)
    below = np.searchsorted(ordered, thresholds, side="left")
    return (len(ordered) - below) / len(ordered)


def average_recall_from_ious(
    ious: Sequence[float] | np.ndarray,
    is_thing: Sequence[bool] | np.ndarray,
    num_segments: Sequence[int] | np.ndarray,
    integration: str = "exact",
    *,
    num_skipped_empty_ground_truth: int = 0,
) -> dict[str, Any]:
    """Average Recall of PNG, overall and on the things / stuff / singular / plural splits.

    Args:
        ious: `P` mask IoUs in [0, 1], one per evaluated phrase.
        is_thing: `P` booleans: the phrase's segments are of a COCO "thing" category (else stuff).
        num_segments: `P` numbers of ground-truth segments: 1 is singular, more is plural.
        integration: "exact" (default) or "official"; see `area_under_recall_curve`.
        num_skipped_empty_ground_truth: reported as is (set by callers that skipped phrases).

    Returns:
        A dict with `average_recall`, `average_recall_{things,stuff,singular,plural}` (fractions;
        nan for a split without phrases), `recall_at_0.5` (fraction of phrases with IoU >= 0.5),
        the phrase counts `num_phrases`, `num_{things,stuff,singular,plural}`,
        `num_skipped_empty_ground_truth`, and `recall_curve`: a dict with `iou_thresholds` (101
        values in [0, 1]) and the recall of `overall` and of each split at those thresholds.
    """
    ious = np.asarray(ious.detach().cpu() if hasattr(ious, "detach") else ious, dtype=np.float64)
    if ious.ndim != 1:
        raise ValueError(f"`ious` must hold one value per phrase (1-D), got shape {ious.shape}.")
    is_thing = _as_1d(is_thing, "is_thing", bool)
    num_segments = _as_1d(num_segments, "num_segments", np.int64)
    _check_lengths(ious=ious, is_thing=is_thing, num_segments=num_segments)
    invalid = np.flatnonzero(~((ious >= 0.0) & (ious <= 1.0)))  # also catches nan
    if len(invalid):
        raise ValueError(
            f"IoUs must lie in [0, 1]; phrases {_first(invalid)} have {ious[invalid[:5]].tolist()} "
            "(a nan IoU comes from an empty union, i.e. an empty ground truth and prediction)."
        )
    no_segment = np.flatnonzero(num_segments < 1)
    if len(no_segment):
        raise ValueError(
            f"Phrases {_first(no_segment)} have num_segments < 1; a phrase is evaluated only when it "
            "has at least one ground-truth segment."
        )
    # The phrases of each split, in the order of AVERAGE_RECALL_SPLITS (things, stuff, singular, plural).
    selections = (is_thing, ~is_thing, num_segments == 1, num_segments > 1)
    splits = dict(zip(AVERAGE_RECALL_SPLITS, selections, strict=True))
    results: dict[str, Any] = {"average_recall": area_under_recall_curve(ious, integration)}
    for name, selected in splits.items():
        results[f"average_recall_{name}"] = area_under_recall_curve(ious[selected], integration)
    results["recall_at_0.5"] = float(recall_at(ious, [0.5])[0])
    results["num_phrases"] = len(ious)
    for name, selected in splits.items():
        results[f"num_{name}"] = int(selected.sum())
    results["num_skipped_empty_ground_truth"] = int(num_skipped_empty_ground_truth)
    curve = {
        "iou_thresholds": CURVE_THRESHOLDS.tolist(),
        "overall": recall_at(ious, CURVE_THRESHOLDS).tolist(),
    }
    for name, selected in splits.items():
        curve[name] = recall_at(ious[selected], CURVE_THRESHOLDS).tolist()
    results["recall_curve"] = curve
    return results


def validate_counts(
    intersections: np.ndarray, unions: np.ndarray, reference_areas: np.ndarray | None = None
) -> None:
    """Raises a ValueError naming the first phrases whose counts cannot come from two masks."""
    checks = [
        (intersections < 0, "a negative intersection"),
        (unions < intersections, "an intersection larger than the union"),
    ]
    if reference_areas is not None:
        known = reference_areas >= 0  # -1 marks "not given"
        checks += [
            (known & (reference_areas < intersections), "an intersection larger than the ground-truth area"),
            (known & (reference_areas > unions), "a ground-truth area larger than the union"),
        ]
    for bad, what in checks:
        where = np.flatnonzero(bad)
        if len(where):
            raise ValueError(f"Phrases {_first(where)} have {what}: these counts cannot come from two masks.")


def average_recall_from_counts(
    intersections: Sequence[int] | np.ndarray,
    unions: Sequence[int] | np.ndarray,
    is_thing: Sequence[bool] | np.ndarray,
    num_segments: Sequence[int] | np.ndarray,
    reference_areas: Sequence[int | None] | np.ndarray | None = None,
    integration: str = "exact",
    empty_ground_truth: str = "raise",
) -> dict[str, Any]:
    """Average Recall from per-phrase pixel counts (what the evaluate module stores).

    Args:
        intersections: `P` counts |pred AND gt| (integers).
        unions: `P` counts |pred OR gt|.
        is_thing: `P` booleans, see `average_recall_from_ious`.
        num_segments: `P` ground-truth segment counts (0 marks a phrase without ground truth).
        reference_areas: optional `P` counts |gt| (None or -1 where unknown). Only needed to detect a
            ground truth that became empty (e.g. a tiny segment lost at stride 4) while the
            prediction is not: without it such a phrase looks like an ordinary miss (IoU 0).
        integration: "exact" or "official".
        empty_ground_truth: "raise" (default: a phrase with an empty ground truth is an error, the
            published code would divide by zero) or "skip" (leave it out and count it in
            `num_skipped_empty_ground_truth`).

    Returns:
        The dict of `average_recall_from_ious`.
    """
    if empty_ground_truth not in EMPTY_GROUND_TRUTH_POLICIES:
        raise ValueError(
            f"`empty_ground_truth` must be one of {EMPTY_GROUND_TRUTH_POLICIES}, got {empty_ground_truth!r}."
        )
    intersections = _as_1d(intersections, "intersections", np.int64)
    unions = _as_1d(unions, "unions", np.int64)
    is_thing = _as_1d(is_thing, "is_thing", bool)
    num_segments = _as_1d(num_segments, "num_segments", np.int64)
    if reference_areas is None:
        reference_areas = np.full(len(intersections), -1, dtype=np.int64)
    else:
        reference_areas = _as_1d(
            [-1 if a is None else a for a in reference_areas], "reference_areas", np.int64
        )
    _check_lengths(
        intersections=intersections,
        unions=unions,
        is_thing=is_thing,
        num_segments=num_segments,
        reference_areas=reference_areas,
    )
    validate_counts(intersections, unions, reference_areas)
    inconsistent = np.flatnonzero((num_segments == 0) & (reference_areas > 0))
    if len(inconsistent):
        raise ValueError(
            f"Phrases {_first(inconsistent)} have num_segments == 0 but a non-empty ground-truth mask."
        )
    negative = np.flatnonzero(num_segments < 0)
    if len(negative):
        raise ValueError(f"Phrases {_first(negative)} have a negative num_segments.")
    empty = (unions == 0) | (reference_areas == 0) | (num_segments == 0)
    empty_indices = np.flatnonzero(empty)
    if len(empty_indices) and empty_ground_truth == "raise":
        raise ValueError(
            f"{len(empty_indices)} phrase(s) have an empty ground truth (phrases {_first(empty_indices)}, "
            "counted in the order they were added): their IoU is undefined (the published code divides "
            "by zero). PNG evaluates only phrases with at least one ground-truth segment; remove them, or "
            "pass `empty_ground_truth='skip'` to leave them out and count them."
        )
    kept = ~empty
    ious = intersections[kept] / unions[kept]
    return average_recall_from_ious(
        ious,
        is_thing[kept],
        num_segments[kept],
        integration=integration,
        num_skipped_empty_ground_truth=len(empty_indices),
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
    intersections = _as_1d(intersections, "intersections", np.int64)
    unions = _as_1d(unions, "unions", np.int64)
    reference_areas = _as_1d(reference_areas, "reference_areas", np.int64)
    _check_lengths(intersections=intersections, unions=unions, reference_areas=reference_areas)
    if (reference_areas < 0).any():
        bad = np.flatnonzero(reference_areas < 0)
        raise ValueError(f"Expressions {_first(bad)} have a negative (or unknown) ground-truth area.")
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
