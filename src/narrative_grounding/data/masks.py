"""Per-phrase ground-truth masks decoded from the panoptic PNG, for ``Dataset.with_transform``.

The id map is decoded once per image; every phrase mask is then one lookup: pixel id -> index among the
phrase segments (``np.searchsorted``) -> ``P x S`` membership table -> ``P x H x W``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from .layout import rgb_to_id


def panoptic_id_map(png: Any) -> np.ndarray:
    """``H x W`` uint32 segment ids from a panoptic PNG given as a PIL image, an ``H x W x 3`` array, a
    ``{"bytes", "path"}`` dict (``datasets.Image(decode=False)``) or a file path."""
    if isinstance(png, dict):
        png = Image.open(io.BytesIO(png["bytes"])) if png.get("bytes") is not None else png.get("path")
    if isinstance(png, str):
        png = Image.open(png)
    if isinstance(png, Image.Image):
        png = np.asarray(png if png.mode == "RGB" else png.convert("RGB"))
    return rgb_to_id(np.asarray(png))


def phrase_masks_from_id_map(
    id_map: np.ndarray,
    phrase_segment_ids: Sequence[Sequence[int]],
    dtype: np.dtype | type = np.uint8,
) -> np.ndarray:
    """The mask of each phrase: the union of its segments.

    Args:
        id_map: ``H x W`` panoptic segment ids.
        phrase_segment_ids: P lists of segment ids.
        dtype: of the result (uint8 or bool).
    Returns:
        ``P x H x W`` array, 1 where the pixel belongs to one of the phrase's segments.
    """
    height, width = id_map.shape
    num_phrases = len(phrase_segment_ids)
    if num_phrases == 0:
        return np.zeros((0, height, width), dtype=dtype)
    segment_ids = np.unique(np.concatenate([np.asarray(ids, dtype=np.int64) for ids in phrase_segment_ids]))
    if segment_ids.size == 0:
        return np.zeros((num_phrases, height, width), dtype=dtype)
    flat = id_map.reshape(-1).astype(np.int64)  # N
    position = np.searchsorted(segment_ids, flat)  # N, in [0, S]
    position_clipped = np.minimum(position, segment_ids.size - 1)
    # S (one past the last segment) marks pixels that belong to no phrase's segment.
    position = np.where(segment_ids[position_clipped] == flat, position_clipped, segment_ids.size)
    membership = np.zeros((num_phrases, segment_ids.size + 1), dtype=dtype)  # P x (S + 1)
    for index, ids in enumerate(phrase_segment_ids):
        membership[index, np.searchsorted(segment_ids, np.asarray(ids, dtype=np.int64))] = 1
    return membership[:, position].reshape(num_phrases, height, width)  # P x H x W


def _example_masks(phrases: Sequence[dict[str, Any]], png: Any, dtype: np.dtype | type) -> np.ndarray:
    return phrase_masks_from_id_map(
        panoptic_id_map(png), [phrase["segment_ids"] for phrase in phrases], dtype
    )


def decode_phrase_masks(
    batch: dict[str, Any],
    *,
    dtype: np.dtype | type = np.uint8,
    keep_panoptic_png: bool = True,
) -> dict[str, Any]:
    """Add ``phrase_masks`` (one ``P x H x W`` array per example, in the order of ``phrases``).

    Works as ``dataset.with_transform(decode_phrase_masks)`` (a batch: dict of lists) and on one example
    (``decode_phrase_masks(dataset[0])``). Use ``functools.partial`` to pick ``dtype=bool`` or to drop the
    ``panoptic_png`` column from the output.
    """
    for column in ("phrases", "panoptic_png"):
        if column not in batch:
            raise KeyError(
                f"decode_phrase_masks needs the {column!r} column (got {sorted(batch)}); "
                "apply it to the PNG dataset before removing columns"
            )
    output = dict(batch)
    # One example's panoptic_png is an image (or dict / array), never a list; a batch's is a list.
    is_batch = isinstance(batch["panoptic_png"], list)
    if is_batch:
        output["phrase_masks"] = [
            _example_masks(phrases, png, dtype)
            for phrases, png in zip(batch["phrases"], batch["panoptic_png"], strict=True)
        ]
    else:
        output["phrase_masks"] = _example_masks(batch["phrases"], batch["panoptic_png"], dtype)
    if not keep_panoptic_png:
        del output["panoptic_png"]
    return output
