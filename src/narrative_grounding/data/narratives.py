"""Reading PNG narratives: character offsets rebuilt from the utterances, phrases joined to panoptic segments.

Every problem is recorded in a :class:`~narrative_grounding.data.report.PngDataReport` with the image id;
a bad narrative or phrase is left out and counted, and reading goes on with the next one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .layout import PngDataError, SplitPaths, load_json
from .panoptic_checks import IDENTIFYING_FIELD, PanopticChecker
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


class PanopticIndex:
    """The panoptic json of one split, indexed by image id; every entry checked by :class:`PanopticChecker`.

    :attr:`unusable` holds the image ids whose narratives are left out (a malformed entry, or an id listed
    twice with different content: reported once, by the checker); a category listed twice with different
    content is not indexed, so the phrases of its segments are reported as ``unknown_category``.
    """

    def __init__(self, panoptic: Any, path: str, report: PngDataReport, split: str):
        if not isinstance(panoptic, dict) or not all(
            isinstance(panoptic.get(key), list) for key in IDENTIFYING_FIELD
        ):
            raise PngDataError(
                f"{path}: a COCO panoptic json needs 'images', 'annotations' and 'categories' lists",
                file=path,
            )
        checker = PanopticChecker(path, report, split)
        indexes: dict[str, dict[int, dict[str, Any]]] = {}
        for name in IDENTIFYING_FIELD:
            index = indexes[name] = {}
            for position, entry in enumerate(panoptic[name]):
                value = checker.check(name, position, entry)
                if value is not None:
                    index.setdefault(value, entry)  # the first copy, as the checker's message says
        checker.finish()
        self.categories = {
            key: value
            for key, value in indexes["categories"].items()
            if key not in checker.dropped_categories
        }
        self.images = indexes["images"]
        self.annotations = indexes["annotations"]
        self.unusable = checker.unusable

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
