"""Dataset rows (the PNG schema of `narrative_grounding.data.png_features`) -> processor -> model batch.

A row holds the image, the caption, its grounded phrases (character spans + segment ids) and the panoptic
PNG. The collator decodes each phrase's ground-truth mask from the PNG, hands everything to the
`PngProcessor` (which resizes, tokenizes and builds `labels` at the input resolution) and, for
evaluation, keeps what the metric needs at the *original* image size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..data.masks import panoptic_id_map, phrase_masks_from_id_map
from ..data.synthetic.levels import EXPRESSION_KINDS

#: Batch keys that are not model inputs (removed before `model(**batch)`).
REFERENCE_KEYS = (
    "reference_masks",
    "is_thing",
    "num_segments",
    "expression_kinds",
    "image_ids",
    "original_sizes",
    "metadata",
)
NO_EXPRESSION_KIND = -1  # a phrase whose annotation records no expression kind (the official PNG files)


def _rgb(image: Any) -> Any:
    if hasattr(image, "convert"):
        return image if image.mode == "RGB" else image.convert("RGB")
    return image


def _expression_kind(row: Mapping[str, Any], phrase: Mapping[str, Any]) -> int:
    """The index of a phrase's expression kind in `EXPRESSION_KINDS` (`NO_EXPRESSION_KIND` when unrecorded)."""
    kind = phrase.get("expression")
    if kind is None:
        return NO_EXPRESSION_KIND
    if kind not in EXPRESSION_KINDS:
        raise ValueError(
            f"image {row.get('image_id')}: phrase {phrase.get('text')!r} has the unknown expression kind "
            f"{kind!r}; the known kinds are {', '.join(EXPRESSION_KINDS)}"
        )
    return EXPRESSION_KINDS.index(kind)


def row_phrase_masks(row: Mapping[str, Any]) -> np.ndarray:
    """`P x H x W` uint8 ground-truth masks of a row's phrases, at the original image size."""
    phrases = row["phrases"]
    try:
        id_map = panoptic_id_map(row["panoptic_png"])
    except Exception as error:  # an undecodable PNG must name its image, not fail inside PIL
        raise ValueError(f"image {row.get('image_id')}: cannot decode its panoptic PNG: {error}") from error
    return phrase_masks_from_id_map(id_map, [phrase["segment_ids"] for phrase in phrases])


class PngCollator:
    """Turns a list of dataset rows into the inputs of `PngForPanopticNarrativeGrounding` (with `labels`).

    Args:
        processor: a `PngProcessor` (image processor + tokenizer).
        with_references: also return, per sample, the original-size ground-truth masks (`reference_masks`:
            a list of `P_i x H_i x W_i` bool tensors), `is_thing`, `num_segments` and `expression_kinds`
            (lists of `P_i` tensors; a kind is an index into `EXPRESSION_KINDS`, -1 where unrecorded),
            `image_ids`, `original_sizes` and the processor's per-sample `metadata` (for evaluation; see
            `REFERENCE_KEYS`).
    """

    def __init__(self, processor: Any, *, with_references: bool = False) -> None:
        self.processor = processor
        self.with_references = with_references

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not rows:
            raise ValueError("PngCollator got an empty batch")
        images, texts, spans, masks = [], [], [], []
        for row in rows:
            if not row["phrases"]:
                raise ValueError(
                    f"image {row.get('image_id')}: the narrative has no grounded phrase; "
                    "the dataset builder leaves such narratives out, so this dataset was not built by it"
                )
            images.append(_rgb(row["image"]))
            texts.append(row["caption"])
            spans.append([(int(phrase["start"]), int(phrase["end"])) for phrase in row["phrases"]])
            masks.append(row_phrase_masks(row))
        features = self.processor(
            images=images, text=texts, phrases=spans, phrase_masks=masks, return_tensors="pt"
        )
        batch = dict(features)
        if self.with_references:
            # what post-processing needs to undo the resize / padding exactly, per sample
            batch["metadata"] = list(getattr(features, "metadata", []))
            batch["reference_masks"] = [torch.from_numpy(mask.astype(bool)) for mask in masks]
            batch["is_thing"] = [
                torch.tensor([bool(phrase["is_thing"]) for phrase in row["phrases"]]) for row in rows
            ]
            batch["num_segments"] = [
                torch.tensor([int(phrase["num_segments"]) for phrase in row["phrases"]]) for row in rows
            ]
            batch["expression_kinds"] = [
                torch.tensor([_expression_kind(row, phrase) for phrase in row["phrases"]], dtype=torch.long)
                for row in rows
            ]
            batch["image_ids"] = torch.tensor([int(row.get("image_id", -1)) for row in rows])
            batch["original_sizes"] = torch.tensor([mask.shape[-2:] for mask in masks])
        return batch


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch without the evaluation-only keys."""
    return {key: value for key, value in batch.items() if key not in REFERENCE_KEYS}
