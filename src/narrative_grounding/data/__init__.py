"""PNG data: the official layout as a ``datasets`` builder, per-phrase mask decoding, validation, export,
and a synthetic dataset written in the same layout (``narrative_grounding.data.synthetic``)."""

from .alignment import CaptionMismatchError, utterance_offsets
from .builder import PanopticNarrativeGroundingBuilder, PngBuilderConfig, load_png_dataset, png_features
from .export import export_parquet, load_parquet_dataset, push_png_dataset_to_hub
from .layout import SPLIT_DIRS, PngDataError, id_to_rgb, rgb_to_id
from .masks import decode_phrase_masks, panoptic_id_map, phrase_masks_from_id_map
from .report import ISSUE_KINDS, DataIssue, PngDataReport
from .validation import validate_png_directory

__all__ = [
    "CaptionMismatchError",
    "ISSUE_KINDS",
    "SPLIT_DIRS",
    "DataIssue",
    "PanopticNarrativeGroundingBuilder",
    "PngBuilderConfig",
    "PngDataError",
    "PngDataReport",
    "decode_phrase_masks",
    "export_parquet",
    "id_to_rgb",
    "load_parquet_dataset",
    "load_png_dataset",
    "panoptic_id_map",
    "phrase_masks_from_id_map",
    "png_features",
    "push_png_dataset_to_hub",
    "rgb_to_id",
    "utterance_offsets",
    "validate_png_directory",
]
