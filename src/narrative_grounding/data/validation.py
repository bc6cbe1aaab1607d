"""``validate_png_directory``: every problem of a PNG data directory, without preparing a dataset."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from .layout import SPLIT_DIRS, PngDataError, rgb_to_id, split_paths
from .narratives import Narrative, read_split
from .report import PngDataReport


def _check_pixels(narrative: Narrative, paths, report: PngDataReport) -> None:
    """Compare the panoptic PNG with its segments_info and with the image's size."""
    split, image_id = paths.split, narrative.image_id
    png_path = paths.panoptic_png_path(narrative.panoptic_file)
    image_path = paths.image_path(narrative.image_file)
    try:
        with Image.open(png_path) as png:
            ids = rgb_to_id(np.asarray(png.convert("RGB")))  # H x W
    except (OSError, ValueError) as error:
        report.add(
            "missing_panoptic_png",
            split,
            f"cannot be decoded: {error}",
            image_id=image_id,
            file=str(png_path),
        )
        return
    try:
        with Image.open(image_path) as image:
            image_size = image.size  # (W, H); reading the header only
    except OSError as error:
        report.add(
            "missing_image_file",
            split,
            f"cannot be decoded: {error}",
            image_id=image_id,
            file=str(image_path),
        )
        return
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


def validate_png_directory(
    data_dir: str | os.PathLike,
    splits: Sequence[str] | None = None,
    *,
    check_pixels: bool = True,
    progress: bool = False,
) -> PngDataReport:
    """Report every problem of a PNG data directory (official layout) without preparing it.

    Checks the annotation files parse, each narrative's utterances rebuild its caption, each phrase's segment
    ids exist in the image's panoptic annotation (with a known category), image and PNG files exist, and
    (``check_pixels``) that each panoptic PNG decodes, has the image's size and holds exactly the ids its
    segments_info lists.

    Args:
        data_dir: the root holding ``images/`` and ``annotations/``.
        splits: "train" and/or "validation"; default: both.
        check_pixels: also decode every panoptic PNG (slower: one PNG read per image).
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
            checked: set[int] = set()
            for narrative in narratives:
                if check_pixels and narrative.image_id not in checked:
                    checked.add(narrative.image_id)
                    _check_pixels(narrative, paths, report)
        except (PngDataError, ValueError) as error:
            report.add("invalid_json", split, str(error))
    return report
