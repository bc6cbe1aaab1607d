"""The COCO panoptic json of one split, indexed by image id on disk.

Narratives are not stored in the order of the panoptic annotations, so reading them needs random access by
image id. A dict of the whole json costs memory in proportion to the number of images (about 1 GB of Python
objects for train2017); this index streams the json once into a temporary SQLite table and keeps in memory
only the categories and, to find ids listed twice, one integer per id and list (the first copy's position and
a hash): about 200 bytes an image for its image and annotation entries.
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
from .panoptic_checks import IDENTIFYING_FIELD, PanopticChecker
from .report import PngDataReport

_BATCH = 5000  # rows per executemany: amortises the Python <-> SQLite round trips


class PanopticIndex:
    """``entry(image_id)`` and ``segments(annotation)`` of one panoptic json, every entry checked on the way.

    Each entry is passed to a :class:`PanopticChecker` as it streams by: a malformed entry or an id listed
    twice is reported in ``report`` (with its position in the file) and left out of the index instead of
    stopping the split. After construction, :attr:`unusable` maps the image ids whose narratives must be left
    out to the kind of their (already reported) problem; a category listed twice with different content is
    not indexed, so the phrases of its segments are reported as ``unknown_category``. Of copies of one id,
    the first is indexed, as the checker's message says.

    Use as a context manager (or call :meth:`close`): the index lives in a temporary directory.

    Raises:
        PngDataError: the file is missing or is not valid JSON, is not a JSON object, or lacks the
            ``images`` / ``annotations`` / ``categories`` lists (the message names the file).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        report: PngDataReport,
        split: str,
        *,
        temp_dir: str | os.PathLike | None = None,
    ):
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
            checker = PanopticChecker(self.path, report, split)
            self._build(checker)
            checker.finish(first_entry=self._first_entry)
            for category_id in checker.dropped_categories:
                self.categories.pop(category_id, None)
            self.unusable: dict[int, str] = checker.unusable
        except BaseException:
            self.close()
            raise

    def _first_entry(self, name: str, entry_id: int) -> dict[str, Any] | None:
        # The copy that was indexed: the first (the checker names it in a duplicate_id message).
        if name == "categories":
            return self.categories.get(entry_id)
        image, annotation = self.entry(entry_id)
        return image if name == "images" else annotation

    def _structure_error(self, message: str) -> PngDataError:
        return PngDataError(
            f"{self.path}: a COCO panoptic json needs 'images', 'annotations' and 'categories' lists; {message}",
            file=self.path,
        )

    def _build(self, checker: PanopticChecker) -> None:
        seen = set()
        rows: dict[str, list[tuple[int, str]]] = {"images": [], "annotations": []}
        for key, index, value in iter_json_members(self.path, streamed=("images", "annotations")):
            if key not in IDENTIFYING_FIELD:
                continue  # "info", "licenses" and anything else are not needed
            seen.add(key)
            if key == "categories":
                if not isinstance(value, list):
                    raise self._structure_error(f"'categories' is a {type(value).__name__}")
                for position, category in enumerate(value):
                    category_id = checker.check(key, position, category)
                    if category_id is not None:
                        self.categories.setdefault(category_id, category)
                continue
            if index is None:
                raise self._structure_error(f"{key!r} is a {type(value).__name__}")
            image_id = checker.check(key, index, value)
            if image_id is None:
                continue  # reported by the checker
            rows[key].append((image_id, json.dumps(self._kept(key, value))))
            if len(rows[key]) >= _BATCH:
                self._insert(key, rows[key])
        for key, batch in rows.items():
            self._insert(key, batch)
        missing = set(IDENTIFYING_FIELD) - seen
        if missing:
            raise self._structure_error(f"{sorted(missing)} missing")

    @staticmethod
    def _kept(key: str, entry: dict[str, Any]) -> dict[str, Any]:
        # Only the fields the dataset uses go into the index.
        if key == "images":
            return {name: entry[name] for name in ("file_name", "width", "height") if name in entry}
        return {"file_name": entry.get("file_name"), "segments_info": entry.get("segments_info", [])}

    def _insert(self, key: str, batch: list[tuple[int, str]]) -> None:
        column = "image" if key == "images" else "annotation"
        # A repeated image id keeps its first entry (the checker reports the copies).
        self._db.executemany(
            f"INSERT INTO entries (image_id, {column}) VALUES (?, ?) "
            f"ON CONFLICT(image_id) DO UPDATE SET {column} = COALESCE(entries.{column}, excluded.{column})",
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
        # The checker has made sure that every id is an integer (or a digit string).
        for info in annotation.get("segments_info", []):
            category_id = int(info["category_id"])
            category = self.categories.get(category_id)
            segments[int(info["id"])] = {
                "id": int(info["id"]),
                "category_id": category_id,
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
