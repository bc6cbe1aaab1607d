"""The official PNG directory layout (COCO 2017 + PNG annotations), JSON loading, and the panoptic id code.

```
<data_dir>/images/{train2017,val2017}/{image_id:012d}.jpg
<data_dir>/annotations/panoptic_{train2017,val2017}.json
<data_dir>/annotations/panoptic_{train2017,val2017}/{image_id:012d}.png
<data_dir>/annotations/png_coco_{train2017,val2017}.json
```
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# datasets split name -> COCO 2017 folder/file suffix.
SPLIT_DIRS: dict[str, str] = {"train": "train2017", "validation": "val2017"}


class PngDataError(ValueError):
    """A data directory that cannot be read at all (a missing or malformed annotation file).

    ``file`` names the file at fault when there is one (``validate`` puts it in its report).
    """

    def __init__(self, message: str, *, file: str | os.PathLike | None = None):
        super().__init__(message)
        self.file = None if file is None else str(file)


@dataclass(frozen=True)
class SplitPaths:
    """Where every file of one split lives under ``data_dir``."""

    data_dir: Path
    split: str

    @property
    def coco_name(self) -> str:
        return SPLIT_DIRS[self.split]

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images" / self.coco_name

    @property
    def panoptic_json(self) -> Path:
        return self.data_dir / "annotations" / f"panoptic_{self.coco_name}.json"

    @property
    def panoptic_dir(self) -> Path:
        return self.data_dir / "annotations" / f"panoptic_{self.coco_name}"

    @property
    def narratives_json(self) -> Path:
        return self.data_dir / "annotations" / f"png_coco_{self.coco_name}.json"

    def image_path(self, file_name: str) -> Path:
        return self.images_dir / file_name

    def panoptic_png_path(self, file_name: str) -> Path:
        return self.panoptic_dir / file_name

    def annotation_files(self) -> tuple[Path, Path]:
        return self.panoptic_json, self.narratives_json

    def exists(self) -> bool:
        """True when both annotation files of the split are present."""
        return all(path.is_file() for path in self.annotation_files())


def split_paths(data_dir: str | os.PathLike, split: str) -> SplitPaths:
    if split not in SPLIT_DIRS:
        raise ValueError(f"Unknown split {split!r}; the PNG splits are {sorted(SPLIT_DIRS)}.")
    return SplitPaths(Path(data_dir), split)


def available_splits(data_dir: str | os.PathLike) -> list[str]:
    """The splits whose two annotation files exist under ``data_dir``, in the order train, validation."""
    return [split for split in SPLIT_DIRS if split_paths(data_dir, split).exists()]


def image_file_name(image_id: int) -> str:
    return f"{image_id:012d}.jpg"


def panoptic_file_name(image_id: int) -> str:
    return f"{image_id:012d}.png"


def load_json(path: str | os.PathLike) -> Any:
    """``json.load`` that names the file and the position of a syntax error (a truncated download, say)."""
    path = Path(path)
    if not path.is_file():
        raise PngDataError(f"Annotation file not found: {path}")
    try:
        with path.open("rb") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        size = path.stat().st_size
        truncated = " (the file ends there: it looks truncated)" if error.pos >= size - 1 else ""
        raise PngDataError(
            f"{path}: invalid JSON at line {error.lineno}, column {error.colno} "
            f"(character {error.pos} of {size}): {error.msg}{truncated}"
        ) from error
    except UnicodeDecodeError as error:
        raise PngDataError(f"{path}: not UTF-8 text at byte {error.start}: {error.reason}") from error


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Panoptic segment ids from a COCO panoptic PNG: id = R + 256 G + 256^2 B.

    Args:
        rgb: ``H x W x 3`` uint8 array.
    Returns:
        ``H x W`` uint32 array of segment ids (0 = unlabelled).
    """
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"A panoptic PNG must be H x W x 3 (RGB); got an array of shape {rgb.shape}.")
    rgb = rgb[..., :3].astype(np.uint32)
    return rgb[..., 0] | (rgb[..., 1] << 8) | (rgb[..., 2] << 16)  # H x W


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_id`: ``H x W`` ids (< 2^24) -> ``H x W x 3`` uint8 RGB."""
    ids = np.asarray(ids, dtype=np.uint32)
    if ids.size and int(ids.max()) >= 1 << 24:
        raise ValueError("Panoptic segment ids must be below 2^24 to fit in an RGB PNG.")
    return np.stack([(ids >> shift) & 0xFF for shift in (0, 8, 16)], axis=-1).astype(np.uint8)  # H x W x 3
