"""Per-phrase ground-truth masks decoded from the panoptic PNG, for ``Dataset.with_transform``.

The id map is decoded once per image; each distinct segment of the phrases is compared with it once
(``H x W`` boolean), and each phrase mask is the union of its segments' masks.
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
    # One vectorised comparison per distinct segment (S of them, a few dozen at most) beats a
    # searchsorted/lookup over all N pixels, whose random access pattern is several times slower.
    segment_masks = {
        int(segment_id): id_map == segment_id
        for segment_id in np.unique(
            np.concatenate([np.asarray(ids, dtype=np.int64) for ids in phrase_segment_ids])
        )
    }  # S masks of H x W
    masks = np.zeros((num_phrases, height, width), dtype=dtype)  # P x H x W
    for index, ids in enumerate(phrase_segment_ids):
        for segment_id in ids:
            np.logical_or(masks[index], segment_masks[int(segment_id)], out=masks[index], casting="unsafe")
    return masks


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
