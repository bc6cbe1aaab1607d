"""Metrics of narrative grounding: PNG Average Recall and the referring-segmentation metrics.

Each metric is an `evaluate` module (a folder whose .py has the folder's name) that
`evaluate.load(path)` accepts offline, and also a class to use directly:

>>> import evaluate
>>> from narrative_grounding.metrics import AVERAGE_RECALL_PATH
>>> metric = evaluate.load(AVERAGE_RECALL_PATH)            # or evaluate.load(path, "stride4")

The Average Recall module is one self-contained file (it loads where this package is not
installed, e.g. from a Hub repository); its definitions are re-exported here, so a training loop
that has gathered per-phrase IoUs or counts can call `average_recall_from_ious` / `..._from_counts`
and get exactly the numbers the module gives.
"""

from pathlib import Path

from .average_recall.average_recall import (
    AVERAGE_RECALL_COUNT_KEYS,
    AVERAGE_RECALL_KEYS,
    AVERAGE_RECALL_SPLITS,
    BINARY_PROTOCOLS,
    EMPTY_GROUND_TRUTH_POLICIES,
    INTEGRATIONS,
    PROTOCOLS,
    AverageRecall,
    CountingMetric,
    average_recall_from_counts,
    average_recall_from_ious,
    evaluation_size,
    mask_counts,
    resize_for_protocol,
    stride4_input_size,
)
from .referring_segmentation.referring_segmentation import (
    ReferringSegmentation,
    referring_segmentation_from_counts,
)

#: Folder to pass to `evaluate.load` for Average Recall.
AVERAGE_RECALL_PATH = str(Path(__file__).parent / "average_recall")
#: Folder to pass to `evaluate.load` for the referring-segmentation metrics.
REFERRING_SEGMENTATION_PATH = str(Path(__file__).parent / "referring_segmentation")

__all__ = [
    "AVERAGE_RECALL_COUNT_KEYS",
    "AVERAGE_RECALL_KEYS",
    "AVERAGE_RECALL_PATH",
    "EMPTY_GROUND_TRUTH_POLICIES",
    "INTEGRATIONS",
    "PROTOCOLS",
    "AVERAGE_RECALL_SPLITS",
    "BINARY_PROTOCOLS",
    "REFERRING_SEGMENTATION_PATH",
    "AverageRecall",
    "CountingMetric",
    "ReferringSegmentation",
    "average_recall_from_counts",
    "average_recall_from_ious",
    "evaluation_size",
    "mask_counts",
    "referring_segmentation_from_counts",
    "resize_for_protocol",
    "stride4_input_size",
]
