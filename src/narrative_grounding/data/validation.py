"""``validate_png_directory``: every problem of a PNG data directory, without preparing a dataset."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from .layout import SPLIT_DIRS, PngDataError, SplitPaths, rgb_to_id, split_paths
from .narratives import Narrative, read_split
from .report import PngDataReport

# What PIL raises for a file it cannot decode: OSError ("image file is truncated", UnidentifiedImageError),
# SyntaxError (a broken PNG chunk), ValueError, and DecompressionBombError for absurd sizes.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def decode_image(source: str | os.PathLike | bytes) -> Image.Image:
    """Open and fully decode an image file or its bytes (reading the header is not enough: a truncated
    JPEG has a valid one).

    Raises:
        One of :data:`DECODE_ERRORS` when the data does not decode.
    """
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        image.load()
        return image


def _check_pixels(narrative: Narrative, paths: SplitPaths, report: PngDataReport) -> bool:
    """Decode the image and the panoptic PNG; compare the PNG with its segments_info and the image's size.

    Returns False when a file does not decode (the builder leaves such a narrative out).
    """
    split, image_id = paths.split, narrative.image_id
    png_path = paths.panoptic_png_path(narrative.panoptic_file)
    image_path = paths.image_path(narrative.image_file)
    decoded = {}
    for name, path, missing, corrupt in (
        ("png", png_path, "missing_panoptic_png", "corrupt_panoptic_png"),
        ("image", image_path, "missing_image_file", "corrupt_image_file"),
    ):
        try:
            decoded[name] = decode_image(path)
        except FileNotFoundError as error:  # removed since the annotation files were read
            report.add(missing, split, f"cannot be read: {error}", image_id=image_id, file=str(path))
            return False
        except DECODE_ERRORS as error:
            report.add(corrupt, split, f"cannot be decoded: {error}", image_id=image_id, file=str(path))
            return False
    ids = rgb_to_id(np.asarray(decoded["png"].convert("RGB")))  # H x W
    image_size = decoded["image"].size  # (W, H)
    png_size = (ids.shape[1], ids.shape[0])
    expected = (narrative.width, narrative.height)
    if png_size != image_size or (narrative.width and png_size != expected):
        report.add(
            "png_size_mismatch",
            split,
            f"panoptic PNG is {png_size[0]}x{png_size[1]}, image file is {image_size[0]}x{image_size[1]}, "
            f"panoptic json says {expected[0]}x{expected[1]} (W x H)",
            image_id=image_id,
            file=str(png_path),
        )
    present = set(np.unique(ids).tolist()) - {0}
    listed = {info["id"] for info in narrative.segments_info}
    if listed - present:
        report.add(
            "segment_not_in_png",
            split,
            f"segments_info ids {sorted(listed - present)} have no pixel in the PNG",
            image_id=image_id,
            file=str(png_path),
        )
    if present - listed:
        report.add(
            "unlabelled_png_segment",
            split,
            f"PNG ids {sorted(present - listed)} are not listed in segments_info",
            image_id=image_id,
            file=str(png_path),
        )
    return True


def validate_png_directory(
    data_dir: str | os.PathLike,
    splits: Sequence[str] | None = None,
    *,
    check_pixels: bool = True,
    progress: bool = False,
) -> PngDataReport:
    """Report every problem of a PNG data directory (official layout) without preparing it.

    Checks the annotation files parse and have the COCO panoptic / PNG structure, no id is listed twice,
    each narrative's utterances rebuild its caption, each phrase's segment ids exist in the image's panoptic
    annotation (with a known category), image and PNG files exist, each split keeps at least one narrative,
    and (``check_pixels``) that each image and panoptic PNG decodes fully, and that the PNG has the image's
    size and holds exactly the ids its segments_info lists.

    Args:
        data_dir: the root holding ``images/`` and ``annotations/``.
        splits: "train" and/or "validation"; default: both.
        check_pixels: also decode every image and panoptic PNG (slower: two decodes per image).
        progress: show a tqdm bar per split.
    Returns:
        A :class:`PngDataReport`; ``report.ok`` is True when nothing is wrong.
    """
    report = PngDataReport(data_dir=str(data_dir))
    for split in splits or list(SPLIT_DIRS):
        paths = split_paths(data_dir, split)
        missing = [str(path) for path in paths.annotation_files() if not path.is_file()]
        if missing:
            report.add("missing_annotation_file", split, f"not found: {', '.join(missing)}")
            continue
        try:
            paths.check_panoptic_dir()
        except PngDataError as error:
            report.add("missing_annotation_file", split, str(error))
            continue
        try:
            narratives = read_split(paths, report)
            if progress:
                from tqdm.auto import tqdm

                narratives = tqdm(narratives, desc=f"Validating {split}", unit=" narratives")
            decodes: dict[int, bool] = {}  # image id -> both files decode (checked once per image)
            counts = report.split_counts(split)
            for narrative in narratives:
                if not check_pixels:
                    continue
                if narrative.image_id not in decodes:
                    decodes[narrative.image_id] = _check_pixels(narrative, paths, report)
                if not decodes[narrative.image_id]:  # the builder leaves it out: count it the same way
                    counts.narratives_kept -= 1
                    counts.phrases_kept -= len(narrative.phrases)
        except PngDataError as error:
            report.add("invalid_json", split, str(error), file=error.file)
            continue
        if counts.narratives_kept == 0:
            report.add(
                "empty_split",
                split,
                f"none of its {counts.narratives_read} narrative(s) can be used; the split cannot be prepared",
                file=str(paths.narratives_json),
            )
    return report
