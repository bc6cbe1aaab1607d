"""The COCO panoptic json of one split, indexed by image id on disk.

Narratives are not stored in the order of the panoptic annotations, so reading them needs random access by
image id. A dict of the whole json costs memory in proportion to the number of images (about 1 GB of Python
objects for train2017); this index streams the json once into a temporary SQLite table and keeps only the
categories in memory, so reading a split takes the same memory for 1,000 images as for 118,000.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from typing import Any

from .json_stream import iter_json_members
from .layout import PngDataError

_BATCH = 5000  # rows per executemany: amortises the Python <-> SQLite round trips


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


class PanopticIndex:
    """``image(image_id)``, ``annotation(image_id)`` and ``segments(image_id)`` of one panoptic json.

    Use as a context manager (or call :meth:`close`): the index lives in a temporary directory.

    Raises:
        PngDataError: the file is missing or is not valid JSON, lacks the ``images`` / ``annotations`` /
            ``categories`` lists, or an entry has no integer id (the message names the list and index).
    """

    def __init__(self, path: str | os.PathLike, *, temp_dir: str | os.PathLike | None = None):
        self.path = str(path)
        self._dir = tempfile.mkdtemp(prefix="png_panoptic_index_", dir=temp_dir)
        try:
            self._db = sqlite3.connect(os.path.join(self._dir, "index.sqlite"))
            # A throw-away index: no journal, no fsync.
            self._db.executescript(
                "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                "CREATE TABLE entries (image_id INTEGER PRIMARY KEY, image TEXT, annotation TEXT);"
            )
            self.categories: dict[int, dict[str, Any]] = {}
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        seen = set()
        rows: dict[str, list[tuple[int, str]]] = {"images": [], "annotations": []}
        for key, index, value in iter_json_members(self.path, streamed=("images", "annotations")):
            seen.add(key)
            if key == "categories":
                if not isinstance(value, list):
                    raise PngDataError(f"{self.path}: 'categories' must be a list")
                for position, category in enumerate(value):
                    category_id = _integer(category.get("id")) if isinstance(category, dict) else None
                    if category_id is None:
                        raise PngDataError(f"{self.path}: categories[{position}] has no integer 'id'")
                    self.categories[category_id] = category
            elif key in rows:
                if index is None:
                    raise PngDataError(f"{self.path}: {key!r} must be a list, got {type(value).__name__}")
                rows[key].append(self._row(key, index, value))
                if len(rows[key]) >= _BATCH:
                    self._insert(key, rows[key])
            # "info", "licenses" and anything else are not needed.
        for key, batch in rows.items():
            self._insert(key, batch)
        missing = {"images", "annotations", "categories"} - seen
        if missing:
            raise PngDataError(
                f"{self.path}: a COCO panoptic json needs 'images', 'annotations' and 'categories' lists; "
                f"{sorted(missing)} missing"
            )

    def _row(self, key: str, index: int, entry: Any) -> tuple[int, str]:
        id_field = "id" if key == "images" else "image_id"
        image_id = _integer(entry.get(id_field)) if isinstance(entry, dict) else None
        if image_id is None:
            raise PngDataError(f"{self.path}: {key}[{index}] has no integer {id_field!r}")
        if key == "images":
            kept = {name: entry[name] for name in ("file_name", "width", "height") if name in entry}
        else:
            segments = entry.get("segments_info", [])
            if not isinstance(segments, list) or not all(
                isinstance(info, dict) and _integer(info.get("id")) is not None for info in segments
            ):
                raise PngDataError(
                    f"{self.path}: annotations[{index}] (image {image_id}): 'segments_info' must be a list of "
                    "objects with an integer 'id'"
                )
            kept = {"file_name": entry.get("file_name"), "segments_info": segments}
        return image_id, json.dumps(kept)

    def _insert(self, key: str, batch: list[tuple[int, str]]) -> None:
        column = "image" if key == "images" else "annotation"
        # A repeated image id: the later entry wins, as with a dict built from the list.
        self._db.executemany(
            f"INSERT INTO entries (image_id, {column}) VALUES (?, ?) "
            f"ON CONFLICT(image_id) DO UPDATE SET {column} = excluded.{column}",
            batch,
        )
        batch.clear()

    def _lookup(self, image_id: int) -> tuple[str | None, str | None]:
        row = self._db.execute(
            "SELECT image, annotation FROM entries WHERE image_id = ?", (image_id,)
        ).fetchone()
        return (None, None) if row is None else row

    def entry(self, image_id: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The image's ``images`` entry and its ``annotations`` entry (None where the json has none)."""
        image, annotation = self._lookup(image_id)
        return (
            None if image is None else json.loads(image),
            None if annotation is None else json.loads(annotation),
        )

    def segments(self, annotation: dict[str, Any]) -> dict[int, dict[str, Any]]:
        """segment id -> segments_info entry of one annotation, with ``is_thing`` (None for an unknown
        category) added."""
        segments = {}
        for info in annotation.get("segments_info", []):
            category_id = _integer(info.get("category_id"))
            category = self.categories.get(category_id) if category_id is not None else None
            segments[int(info["id"])] = {
                "id": int(info["id"]),
                "category_id": -1 if category_id is None else category_id,
                "iscrowd": int(info.get("iscrowd", 0)),
                "bbox": [float(v) for v in info.get("bbox", [0, 0, 0, 0])],
                "area": int(info.get("area", 0)),
                "is_thing": None if category is None else bool(category.get("isthing", 0)),
            }
        return segments

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
            self._db = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> PanopticIndex:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
