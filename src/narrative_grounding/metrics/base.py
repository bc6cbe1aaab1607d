"""An `evaluate.Metric` that stores pixel counts instead of masks.

`evaluate.Metric.add_batch` encodes its inputs with the module's `Features` and appends them to an
Arrow cache file, read back whole at `compute`. Declaring masks as features would write every mask
of the validation set to disk and load them all at once (56,531 PNG phrases of ~480 x 640 pixels
are ~17 GB as uint8). So the features here are per-phrase integers only, and `add_batch` /
`add` turn masks into counts before handing the batch to `evaluate.Metric.add_batch`; the Arrow
machinery (cache files, `num_process` / `process_id` gathering, `keep_in_memory`) is untouched.
"""

from __future__ import annotations

import abc
from typing import Any

import evaluate
import numpy as np

from .mask_counts import PREDICTION_TYPES, PROTOCOLS, STRIDE4_MAX_SIZE, STRIDE4_SHORT_SIDE, mask_counts


class CountingMetric(evaluate.Metric, metaclass=abc.ABCMeta):
    """Base of the mask metrics: the protocol is the config name, masks are reduced on arrival.

    Args:
        config_name: the evaluation protocol, "original" (the default, also "default") or "stride4"
            (see `narrative_grounding.metrics.mask_counts`).
        prediction_type: how floating-point predictions are read: "probabilities" or "logits".
            Boolean / integer predictions are binary masks.
        threshold: probability above which a resized prediction pixel is foreground.
        stride4_short_side, stride4_max_size: the network input size of the "stride4" protocol.
        **kwargs: `evaluate.Metric` arguments (`keep_in_memory`, `cache_dir`, `num_process`,
            `process_id`, `experiment_id`, ...).
    """

    # abstract so that `evaluate.load`, which takes the first concrete Metric subclass it finds in a
    # module, never picks this base class over the module's own metric
    @abc.abstractmethod
    def _info(self) -> evaluate.MetricInfo: ...

    @abc.abstractmethod
    def _compute(self, **kwargs: Any) -> dict[str, Any]: ...

    def __init__(
        self,
        config_name: str | None = None,
        *,
        prediction_type: str = "probabilities",
        threshold: float = 0.5,
        stride4_short_side: int = STRIDE4_SHORT_SIDE,
        stride4_max_size: int = STRIDE4_MAX_SIZE,
        **kwargs: Any,
    ) -> None:
        protocol = "original" if config_name in (None, "default") else config_name
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"Unknown evaluation protocol (config name) {config_name!r}; choose one of {PROTOCOLS}."
            )
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"`prediction_type` must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"`threshold` must lie in [0, 1), got {threshold}.")
        self.protocol = protocol
        self.prediction_type = prediction_type
        self.threshold = float(threshold)
        self.stride4_short_side = int(stride4_short_side)
        self.stride4_max_size = int(stride4_max_size)
        super().__init__(config_name=protocol, **kwargs)

    def _counts(
        self,
        predictions: Any,
        references: Any,
        intersections: Any,
        unions: Any,
        reference_areas: Any,
        *,
        require_reference_areas: bool,
    ) -> dict[str, list[int]]:
        """Per-phrase (intersection, union, reference area) lists from masks or from counts."""
        gave_masks = predictions is not None or references is not None
        gave_counts = intersections is not None or unions is not None
        if gave_masks and gave_counts:
            raise ValueError(
                "Give either masks (`predictions` and `references`) or counts (`intersections` and "
                "`unions`), not both."
            )
        if gave_masks:
            if predictions is None or references is None:
                raise ValueError("Masks need both `predictions` and `references`.")
            if reference_areas is not None:
                raise ValueError(
                    "`reference_areas` is computed from `references`; do not pass it with masks."
                )
            counts = mask_counts(
                predictions,
                references,
                self.protocol,
                prediction_type=self.prediction_type,
                threshold=self.threshold,
                short_side=self.stride4_short_side,
                max_size=self.stride4_max_size,
            )
            return {name: values.tolist() for name, values in counts.items()}
        if intersections is None or unions is None:
            raise ValueError(
                "Nothing to evaluate: give masks (`predictions` and `references`) or counts "
                "(`intersections` and `unions`)."
            )
        if require_reference_areas and reference_areas is None:
            raise ValueError(
                "Counts need `reference_areas` too (the ground-truth pixel count of each expression)."
            )
        columns = {"intersections": intersections, "unions": unions}
        if reference_areas is not None:
            columns["reference_areas"] = [-1 if area is None else area for area in _as_list(reference_areas)]
        result = {}
        for name, values in columns.items():
            array = np.asarray(_as_list(values))
            if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
                raise ValueError(f"`{name}` must be a flat list of integer pixel counts, one per phrase.")
            result[name] = array.astype(np.int64).tolist()
        if reference_areas is None:
            result["reference_areas"] = [-1] * len(result["intersections"])  # -1: not known
        return result

    def _write(self, columns: dict[str, list[Any]]) -> None:
        """Appends per-phrase columns (the module's features) to evaluate's Arrow cache."""
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"Per-phrase inputs differ in length: {lengths}; give one entry per phrase in each."
            )
        evaluate.Metric.add_batch(self, **columns)

    def _check_something_added(self) -> None:
        if self.writer is None and self.num_process == 1:
            raise ValueError(
                f"{type(self).__name__}.compute() has nothing to evaluate: add phrases with add_batch()/add() "
                "or pass them to compute()."
            )


def _as_list(values: Any) -> list[Any]:
    """A flat Python list from a list, numpy array or (any-device) tensor."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        return values.tolist()
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(
            f"Expected one value per phrase (a list, array or tensor), got {type(values).__name__}."
        )
    return list(values)


def as_list_of(values: Any, kind: type, name: str) -> list[Any]:
    """A validated flat list of bools or ints (one per phrase) from a list, array or tensor."""
    array = np.asarray(_as_list(values))
    if array.ndim != 1:
        raise ValueError(f"`{name}` must hold one value per phrase (1-D), got shape {array.shape}.")
    if kind is bool:
        if array.dtype != bool and (array.dtype == object or not np.isin(array, (0, 1)).all()):
            raise ValueError(f"`{name}` must be booleans (or 0/1), one per phrase.")
        return array.astype(bool).tolist()
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"`{name}` must be integers, one per phrase; got {array.dtype}.")
    return array.astype(np.int64).tolist()
