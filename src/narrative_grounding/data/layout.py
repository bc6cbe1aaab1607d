"""The official PNG directory layout (COCO 2017 + PNG annotations), JSON loading, and the panoptic id code.

```
<data_dir>/images/{train2017,val2017}/{image_id:012d}.jpg
<data_dir>/annotations/panoptic_{train2017,val2017}.json
<data_dir>/annotations/panoptic_segmentation/{train2017,val2017}/{image_id:012d}.png   # PNG README
<data_dir>/annotations/panoptic_{train2017,val2017}/{image_id:012d}.png               # COCO's zip
<data_dir>/annotations/png_coco_{train2017,val2017}.json
```
The panoptic PNGs may be in either folder: the PNG (and NICE, XPNG) READMEs put them in
``panoptic_segmentation/<split>/``, COCO's ``panoptic_annotations_trainval2017.zip`` unpacks them to
``panoptic_<split>/``. Each PNG is looked for in both, the PNG README's first, so that an empty or partly
filled folder of one layout beside the full other (a move between layouts left half done) loses nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
    def panoptic_dirs(self) -> tuple[Path, Path]:
        """Where the panoptic PNGs may be, in the order they are looked for: the PNG README's layout,
        then COCO's."""
        annotations = self.data_dir / "annotations"
        return (
            annotations / "panoptic_segmentation" / self.coco_name,
            annotations / f"panoptic_{self.coco_name}",
        )

    @property
    def panoptic_dir(self) -> Path:
        """The folder of panoptic PNGs that exists (COCO's layout when neither does yet, e.g. to write one)."""
        return next((path for path in self.panoptic_dirs if path.is_dir()), self.panoptic_dirs[1])

    def check_panoptic_dir(self) -> Path:
        """The existing folder of panoptic PNGs.

        Raises:
            PngDataError: neither layout's folder exists (the message names both).
        """
        found = next((path for path in self.panoptic_dirs if path.is_dir()), None)
        if found is None:
            png_layout, coco_layout = self.panoptic_dirs
            raise PngDataError(
                f"The panoptic PNGs of split {self.split!r} are missing: neither {png_layout} (the PNG README's "
                f"layout) nor {coco_layout} (where COCO's panoptic_annotations_trainval2017.zip unpacks them) "
                "is a directory."
            )
        return found

    @property
    def narratives_json(self) -> Path:
        return self.data_dir / "annotations" / f"png_coco_{self.coco_name}.json"

    def image_path(self, file_name: str) -> Path:
        return self.images_dir / file_name

    def panoptic_png_path(self, file_name: str) -> Path:
        """The panoptic PNG ``file_name``: in the PNG README's folder, else in COCO's; where it would go in
        :attr:`panoptic_dir` when it is in neither (the path to write it to, or to name as missing)."""
        for folder in self.panoptic_dirs:
            path = folder / file_name
            if path.is_file():
                return path
        return self.panoptic_dir / file_name

    def missing_panoptic_png(self, file_name: str) -> str:
        """Why the panoptic PNG ``file_name`` is missing, naming every existing layout folder it was looked for in."""
        looked = [folder / file_name for folder in self.panoptic_dirs if folder.is_dir()]
        if len(looked) == 2:
            return f"neither {looked[0]} nor {looked[1]} exists"
        return f"{looked[0] if looked else self.panoptic_png_path(file_name)} does not exist"

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
