"""Reading PNG narratives: character offsets rebuilt from the utterances, phrases joined to panoptic segments.

Every problem is recorded in a :class:`~narrative_grounding.data.report.PngDataReport` with the image id;
a bad narrative or phrase is left out and counted, and reading goes on with the next one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .layout import PngDataError, SplitPaths, load_json
from .report import PngDataReport


@dataclass
class Phrase:
    """A noun phrase to ground.

    ``caption[start:end] == text`` (``end`` exclusive). ``is_thing`` follows the official evaluation code:
    when a phrase mixes thing and stuff segments, the *last* segment decides; ``segment_is_thing`` keeps the
    per-segment flags so that a metric can choose another rule.
    """

    text: str
    start: int
    end: int
    segment_ids: list[int]
    category_ids: list[int]
    segment_is_thing: list[bool]
    plural: bool

    @property
    def is_thing(self) -> bool:
        return self.segment_is_thing[-1]

    @property
    def num_segments(self) -> int:
        return len(self.segment_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "start": self.start,
            "end": self.end,
            "segment_ids": self.segment_ids,
            "category_ids": self.category_ids,
            "is_thing": self.is_thing,
            "segment_is_thing": self.segment_is_thing,
            "plural": self.plural,
            "num_segments": self.num_segments,
        }


@dataclass
class Narrative:
    """One narrative record joined to its image and panoptic annotation."""

    key: str
    image_id: int
    annotator_id: int
    caption: str
    phrases: list[Phrase]
    image_file: str
    panoptic_file: str
    width: int
    height: int
    segments_info: list[dict[str, Any]] = field(default_factory=list)


class RecordError(ValueError):
    """A narrative record that does not follow the PNG format (caught and reported, never raised to the user)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _as_int(value: Any, what: str) -> int:
    # The official files store ids as strings ("226461"); synthetic or re-exported files may use ints.
    if isinstance(value, bool):
        raise RecordError("invalid_record", f"{what} must be an integer id, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise RecordError("invalid_record", f"{what} must be an integer id, got {value!r}")


def utterance_offsets(caption: str, utterances: list[str]) -> list[tuple[int, int]]:
    """``(start, end)`` of each utterance in ``caption``, scanning left to right.

    Utterances are consecutive: only whitespace may separate one from the next (none before a glued
    punctuation mark), and only whitespace may follow the last one. Anything else is a mismatch.

    Raises:
        RecordError: ``caption_mismatch`` naming the first utterance that does not fit and where.
    """
    offsets = []
    cursor = 0
    for index, utterance in enumerate(utterances):
        while cursor < len(caption) and caption[cursor].isspace():
            cursor += 1
        if not caption.startswith(utterance, cursor):
            found = caption[cursor : cursor + len(utterance) + 10]
            raise RecordError(
                "caption_mismatch",
                f"utterance {index} {utterance!r} does not continue the caption at character {cursor} "
                f"(caption has {found!r} there)",
            )
        offsets.append((cursor, cursor + len(utterance)))
        cursor += len(utterance)
    rest = caption[cursor:]
    if rest.strip():
        raise RecordError(
            "caption_mismatch",
            f"the utterances end at character {cursor} but the caption goes on with {rest[:40]!r}",
        )
    return offsets


def parse_phrases(
    record: dict[str, Any],
    segments: dict[int, dict[str, Any]],
    *,
    report: PngDataReport,
    split: str,
    image_id: int,
) -> tuple[str, list[Phrase], int]:
    """Caption, grounded phrases (noun utterances with segment ids) and the number of grounded utterances read.

    A phrase naming a segment id that ``segments`` lacks is reported and left out.
    """
    caption = record.get("caption")
    utterances = record.get("segments")
    if not isinstance(caption, str):
        raise RecordError("invalid_record", f"'caption' must be a string, got {type(caption).__name__}")
    if not isinstance(utterances, list):
        raise RecordError("invalid_record", f"'segments' must be a list, got {type(utterances).__name__}")
    for index, utterance in enumerate(utterances):
        if not isinstance(utterance, dict) or not isinstance(utterance.get("utterance"), str):
            raise RecordError("invalid_record", f"segments[{index}] has no 'utterance' string")
        if not isinstance(utterance.get("segment_ids", []), list):
            raise RecordError("invalid_record", f"segments[{index}]['segment_ids'] must be a list")
    offsets = utterance_offsets(caption, [u["utterance"] for u in utterances])

    phrases = []
    grounded = 0
    for index, (utterance, (start, end)) in enumerate(zip(utterances, offsets, strict=True)):
        raw_ids = utterance.get("segment_ids") or []
        if not (utterance.get("noun", False) and raw_ids):
            continue
        grounded += 1
        segment_ids = [_as_int(value, f"segments[{index}].segment_ids") for value in raw_ids]
        repeated = sorted({sid for sid in segment_ids if segment_ids.count(sid) > 1})
        if repeated:
            # Kept, it would count as more segments than it has: a singular phrase scored as plural.
            report.add(
                "duplicate_id",
                split,
                f"phrase {utterance['utterance']!r} (characters {start}-{end}) lists segment id(s) {repeated} "
                "more than once; phrase left out",
                image_id=image_id,
            )
            continue
        missing = [sid for sid in segment_ids if sid not in segments]
        if missing:
            report.add(
                "unknown_segment_id",
                split,
                f"phrase {utterance['utterance']!r} (characters {start}-{end}) names segment id(s) {missing} "
                f"absent from the panoptic annotation (ids there: {sorted(segments)})",
                image_id=image_id,
            )
            continue
        unknown = [sid for sid in segment_ids if segments[sid].get("is_thing") is None]
        if unknown:
            report.add(
                "unknown_category",
                split,
                f"phrase {utterance['utterance']!r}: segment(s) {unknown} have a category id that is not in "
                f"the categories list ({[segments[s].get('category_id') for s in unknown]})",
                image_id=image_id,
            )
            continue
        phrases.append(
            Phrase(
                text=utterance["utterance"],
                start=start,
                end=end,
                segment_ids=segment_ids,
                category_ids=[int(segments[sid]["category_id"]) for sid in segment_ids],
                segment_is_thing=[bool(segments[sid]["is_thing"]) for sid in segment_ids],
                plural=bool(utterance.get("plural", False)),
            )
        )
    return caption, phrases, grounded


# What a panoptic json lists under each key, and the field that identifies an entry there.
_INDEXED_LISTS = {"categories": "id", "images": "id", "annotations": "image_id"}


def _describe(entry: dict[str, Any]) -> str:
    # What tells two entries with the same id apart in a message: their file or their name.
    for key in ("file_name", "name"):
        if isinstance(entry.get(key), str):
            return f"{key} {entry[key]!r}"
    return "no file_name"


class PanopticIndex:
    """The panoptic json of one split, indexed by image id, with every malformed or duplicated entry reported.

    Nothing ambiguous is guessed: an image id listed twice in ``images`` or ``annotations`` (two pictures
    or two annotations for one narrative), or whose ``segments_info`` has a malformed entry or a segment id
    listed twice, is put in :attr:`unusable`, and its narratives are left out (reported once, here). A
    category id listed twice is dropped, so the phrases of its segments are reported as ``unknown_category``.
    """

    def __init__(self, panoptic: Any, path: str, report: PngDataReport, split: str):
        if not isinstance(panoptic, dict) or not all(
            isinstance(panoptic.get(key), list) for key in _INDEXED_LISTS
        ):
            raise PngDataError(
                f"{path}: a COCO panoptic json needs 'images', 'annotations' and 'categories' lists",
                file=path,
            )
        self.path = path
        self._report = report
        self._split = split
        # image id -> the kind of problem that makes its annotation unusable (already reported).
        self.unusable: dict[int, str] = {}
        self.categories = self._index(panoptic, "categories")
        self.images = self._index(panoptic, "images")
        self.annotations = self._index(panoptic, "annotations")
        positions = {id(entry): index for index, entry in enumerate(panoptic["annotations"])}
        for image_id, annotation in self.annotations.items():
            if image_id not in self.unusable:
                self._check_segments(image_id, annotation, positions[id(annotation)])

    def _problem(self, kind: str, message: str, image_id: int | None = None) -> None:
        self._report.add(kind, self._split, message, image_id=image_id, file=self.path)
        if image_id is not None:
            self.unusable.setdefault(image_id, kind)

    def _index(self, panoptic: dict[str, Any], name: str) -> dict[int, dict[str, Any]]:
        key = _INDEXED_LISTS[name]
        index: dict[int, dict[str, Any]] = {}
        where: dict[int, list[int]] = {}
        for position, entry in enumerate(panoptic[name]):
            try:
                if not isinstance(entry, dict):
                    raise RecordError("invalid_panoptic_record", f"{name}[{position}] is not a JSON object")
                if key not in entry:
                    raise RecordError("invalid_panoptic_record", f"{name}[{position}] has no '{key}'")
                value = _as_int(entry[key], f"{name}[{position}].{key}")
                if name == "images":
                    _check_image_entry(entry, f"{name}[{position}]")
                elif name == "annotations" and not isinstance(entry.get("file_name", ""), str):
                    raise RecordError(
                        "invalid_panoptic_record", f"{name}[{position}].file_name must be a string"
                    )
            except RecordError as error:
                image_id = None if name == "categories" else _image_id_or_none(entry, key)
                self._problem("invalid_panoptic_record", str(error), image_id)
                continue
            where.setdefault(value, []).append(position)
            index.setdefault(value, entry)
        for value, places in where.items():
            if len(places) == 1:
                continue
            listed = ", ".join(f"{name}[{p}] ({_describe(panoptic[name][p])})" for p in places)
            label = "category id" if name == "categories" else "image id"
            message = f"{label} {value} is listed {len(places)} times in '{name}': {listed}"
            if all(panoptic[name][p] == index[value] for p in places):
                # Copies of one entry: nothing is ambiguous, so nothing is lost (but the file is still wrong).
                self._report.add(
                    "duplicate_id",
                    self._split,
                    f"{message}; identical copies, the first is used",
                    image_id=None if name == "categories" else value,
                    file=self.path,
                )
                continue
            if name == "categories":
                del index[value]
                self._problem(
                    "duplicate_id",
                    f"{message}; which one is meant cannot be told, so its segments' phrases are left out",
                )
            else:
                self._problem(
                    "duplicate_id",
                    f"{message}; which one is meant cannot be told, so its narratives are left out",
                    value,
                )
        return index

    def _check_segments(self, image_id: int, annotation: dict[str, Any], position: int) -> None:
        where = f"annotations[{position}].segments_info"
        infos = annotation.get("segments_info", [])
        if not isinstance(infos, list):
            self._problem("invalid_panoptic_record", f"{where} must be a list", image_id)
            return
        seen: dict[int, int] = {}  # segment id -> its first entry's number
        for number, info in enumerate(infos):
            try:
                if not isinstance(info, dict):
                    raise RecordError("invalid_panoptic_record", f"{where}[{number}] is not a JSON object")
                for field_name in ("id", "category_id"):
                    if field_name not in info:
                        raise RecordError(
                            "invalid_panoptic_record", f"{where}[{number}] has no '{field_name}'"
                        )
                segment_id = _as_int(info["id"], f"{where}[{number}].id")
                _as_int(info["category_id"], f"{where}[{number}].category_id")
                _check_segment_numbers(info, f"{where}[{number}]")
            except RecordError as error:
                self._problem(
                    "invalid_panoptic_record", f"{error}; the image's annotation is not used", image_id
                )
                return
            if segment_id in seen:
                message = f"segment id {segment_id} is listed twice in {where} (entries {seen[segment_id]} and {number})"
                if info == infos[seen[segment_id]]:
                    # segments() keeps one of two identical copies: nothing is ambiguous.
                    self._report.add(
                        "duplicate_id",
                        self._split,
                        f"{message}; identical copies, one is used",
                        image_id=image_id,
                        file=self.path,
                    )
                    continue
                self._problem("duplicate_id", f"{message}; the image's narratives are left out", image_id)
                return
            seen[segment_id] = number

    def segments(self, image_id: int) -> dict[int, dict[str, Any]]:
        """segment id -> segments_info entry, with ``is_thing`` (None for an unknown category) added."""
        segments = {}
        for info in self.annotations[image_id].get("segments_info", []):
            category = self.categories.get(int(info["category_id"]))
            segments[int(info["id"])] = {
                "id": int(info["id"]),
                "category_id": int(info["category_id"]),
                "iscrowd": int(info.get("iscrowd", 0)),
                "bbox": [float(v) for v in info.get("bbox", [0, 0, 0, 0])],
                "area": int(info.get("area", 0)),
                "is_thing": None if category is None else bool(category.get("isthing", 0)),
            }
        return segments


def _image_id_or_none(entry: Any, key: str) -> int | None:
    # The image a malformed entry belongs to, when that much can be read from it.
    try:
        return _as_int(entry.get(key), key) if isinstance(entry, dict) else None
    except RecordError:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_image_entry(entry: dict[str, Any], where: str) -> None:
    if not isinstance(entry.get("file_name", ""), str):
        raise RecordError("invalid_panoptic_record", f"{where}.file_name must be a string")
    for size in ("width", "height"):
        value = entry.get(size, 0)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise RecordError(
                "invalid_panoptic_record", f"{where}.{size} must be a non-negative integer, got {value!r}"
            )


def _check_segment_numbers(info: dict[str, Any], where: str) -> None:
    # The fields the prepared dataset stores as numbers (bbox as exactly 4 of them).
    bbox = info.get("bbox", [0, 0, 0, 0])
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        raise RecordError(
            "invalid_panoptic_record", f"{where}.bbox must be a list of 4 numbers, got {bbox!r}"
        )
    for name in ("area", "iscrowd"):
        if not _is_number(info.get(name, 0)):
            raise RecordError(
                "invalid_panoptic_record", f"{where}.{name} must be a number, got {info[name]!r}"
            )


def read_split(
    paths: SplitPaths,
    report: PngDataReport,
    *,
    check_files: bool = True,
) -> Iterator[Narrative]:
    """Yield the usable narratives of one split; everything left out is recorded in ``report``.

    Raises:
        PngDataError: an annotation file is missing, is not valid JSON (names the file and position) or
            does not have the structure of its kind (a narratives file that is not a list, say).
    """
    split = paths.split
    panoptic = PanopticIndex(load_json(paths.panoptic_json), str(paths.panoptic_json), report, split)
    records = load_json(paths.narratives_json)
    if not isinstance(records, list):
        raise PngDataError(
            f"{paths.narratives_json}: expected a JSON list of narratives, got a {type(records).__name__}",
            file=paths.narratives_json,
        )
    counts = report.split_counts(split)
    for index, record in enumerate(records):
        counts.narratives_read += 1
        image_id = None
        try:
            if not isinstance(record, dict):
                raise RecordError("invalid_record", f"narrative {index} is not a JSON object")
            image_id = _as_int(record.get("image_id"), f"narrative {index} image_id")
            if image_id in panoptic.unusable:
                continue  # the index reported why, once for all the image's narratives
            if image_id not in panoptic.annotations:
                raise RecordError(
                    "missing_panoptic_annotation", "no entry in the panoptic json's annotations"
                )
            if image_id not in panoptic.images:
                raise RecordError("missing_image_entry", "no entry in the panoptic json's images")
            segments = panoptic.segments(image_id)
            caption, phrases, grounded = parse_phrases(
                record, segments, report=report, split=split, image_id=image_id
            )
            counts.phrases_read += grounded
            image = panoptic.images[image_id]
            image_file = str(image.get("file_name") or f"{image_id:012d}.jpg")
            panoptic_file = str(panoptic.annotations[image_id].get("file_name") or f"{image_id:012d}.png")
            if check_files:
                if not paths.image_path(image_file).is_file():
                    raise RecordError("missing_image_file", f"{paths.image_path(image_file)} does not exist")
                if not paths.panoptic_png_path(panoptic_file).is_file():
                    raise RecordError(
                        "missing_panoptic_png", f"{paths.panoptic_png_path(panoptic_file)} does not exist"
                    )
            if grounded == 0:
                # The official loaders skip narratives that ground nothing; counted, not a data error.
                counts.narratives_without_phrases += 1
                continue
            if not phrases:
                raise RecordError(
                    "no_grounded_phrase", f"none of its {grounded} grounded utterances is usable"
                )
        except RecordError as error:
            report.add(error.kind, split, f"narrative {index}: {error}", image_id=image_id)
            continue
        counts.narratives_kept += 1
        counts.phrases_kept += len(phrases)
        annotator = record.get("annotator_id", 0)
        yield Narrative(
            key=f"{image_id}-{index}",
            image_id=image_id,
            annotator_id=int(annotator) if str(annotator).lstrip("-").isdigit() else -1,
            caption=caption,
            phrases=phrases,
            image_file=image_file,
            panoptic_file=panoptic_file,
            width=int(image.get("width", 0)),
            height=int(image.get("height", 0)),
            segments_info=[dict(info) for info in segments.values()],
        )
