"""Reading PNG narratives: character offsets rebuilt from the utterances, phrases joined to panoptic segments.

Every problem is recorded in a :class:`~narrative_grounding.data.report.PngDataReport` with the image id;
a bad narrative or phrase is left out and counted, and reading goes on with the next one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .alignment import CaptionMismatchError, utterance_offsets
from .json_stream import iter_json_list
from .layout import SplitPaths
from .panoptic_index import PanopticIndex
from .report import PngDataReport


@dataclass
class Phrase:
    """A noun phrase to ground.

    ``caption[start:end] == text`` (``end`` exclusive). ``is_thing`` follows the official evaluation code:
    when a phrase mixes thing and stuff segments, the *last* segment decides; ``segment_is_thing`` keeps the
    per-segment flags so that a metric can choose another rule. ``expression`` is the kind of referring
    expression (attribute, group, position, size, relation, count_position, stuff) where the annotation
    records one, as the synthetic generator does; the official files do not (None).
    """

    text: str
    start: int
    end: int
    segment_ids: list[int]
    category_ids: list[int]
    segment_is_thing: list[bool]
    plural: bool
    expression: str | None = None

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
            "expression": self.expression,
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

    def to_json(self) -> str:
        """One line of JSON (the builder hands narratives to its worker processes through files)."""
        # Shallow copies: dataclasses.asdict deep-copies every segments_info entry, several times slower.
        fields = dict(vars(self))
        fields["phrases"] = [vars(phrase) for phrase in self.phrases]
        return json.dumps(fields, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str | bytes) -> Narrative:
        fields = json.loads(line)
        fields["phrases"] = [Phrase(**phrase) for phrase in fields["phrases"]]
        return cls(**fields)


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
        if not isinstance(utterance.get("expression", ""), str):
            raise RecordError(
                "invalid_record", f"segments[{index}]['expression'] must be a string when present"
            )
    try:
        offsets = utterance_offsets(caption, [u["utterance"] for u in utterances])
    except CaptionMismatchError as error:
        raise RecordError("caption_mismatch", str(error)) from error

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
        if start == end:
            raise RecordError("invalid_record", f"segments[{index}] is a grounded phrase with no text")
        phrases.append(
            Phrase(
                # The caption's spelling, not the lower-cased utterance: processors locate phrases by it.
                text=caption[start:end],
                start=start,
                end=end,
                segment_ids=segment_ids,
                category_ids=[int(segments[sid]["category_id"]) for sid in segment_ids],
                segment_is_thing=[bool(segments[sid]["is_thing"]) for sid in segment_ids],
                plural=bool(utterance.get("plural", False)),
                expression=utterance.get("expression"),
            )
        )
    return caption, phrases, grounded


def read_split(
    paths: SplitPaths,
    report: PngDataReport,
    *,
    check_files: bool = True,
    temp_dir: str | None = None,
) -> Iterator[Narrative]:
    """Yield the usable narratives of one split; everything left out is recorded in ``report``.

    Args:
        check_files: check that each narrative's image and panoptic PNG exist.
        temp_dir: where the panoptic json's on-disk index goes (default: the system's temporary folder).
    Raises:
        PngDataError: an annotation file is missing, is not valid JSON (names the file and position) or
            does not have the structure of its kind (a narratives file that is not a list, say).
    """
    # Both files are streamed: memory does not grow with the number of images (see json_stream.py).
    with PanopticIndex(paths.panoptic_json, report, paths.split, temp_dir=temp_dir) as panoptic:
        report.split_counts(paths.split)  # a split with no narrative still shows in the report
        for index, record in enumerate(iter_json_list(paths.narratives_json)):
            narrative = _read_record(paths, panoptic, report, index, record, check_files=check_files)
            if narrative is not None:
                yield narrative


def _read_record(
    paths: SplitPaths,
    panoptic: PanopticIndex,
    report: PngDataReport,
    index: int,
    record: Any,
    *,
    check_files: bool,
) -> Narrative | None:
    """One narrative record checked and joined to its panoptic annotation; None when it is left out."""
    split = paths.split
    counts = report.split_counts(split)
    counts.narratives_read += 1
    image_id = None
    try:
        if not isinstance(record, dict):
            raise RecordError("invalid_record", f"narrative {index} is not a JSON object")
        image_id = _as_int(record.get("image_id"), f"narrative {index} image_id")
        if image_id in panoptic.unusable:
            return None  # the index reported why, once for all the image's narratives
        image, annotation = panoptic.entry(image_id)
        if annotation is None:
            raise RecordError("missing_panoptic_annotation", "no entry in the panoptic json's annotations")
        if image is None:
            raise RecordError("missing_image_entry", "no entry in the panoptic json's images")
        segments = panoptic.segments(annotation)
        caption, phrases, grounded = parse_phrases(
            record, segments, report=report, split=split, image_id=image_id
        )
        counts.phrases_read += grounded
        image_file = str(image.get("file_name") or f"{image_id:012d}.jpg")
        panoptic_file = str(annotation.get("file_name") or f"{image_id:012d}.png")
        if check_files:
            if not paths.image_path(image_file).is_file():
                raise RecordError("missing_image_file", f"{paths.image_path(image_file)} does not exist")
            if not paths.panoptic_png_path(panoptic_file).is_file():
                raise RecordError("missing_panoptic_png", paths.missing_panoptic_png(panoptic_file))
        if grounded == 0:
            # The official loaders skip narratives that ground nothing; counted, not a data error.
            counts.narratives_without_phrases += 1
            return None
        if not phrases:
            raise RecordError("no_grounded_phrase", f"none of its {grounded} grounded utterances is usable")
    except RecordError as error:
        report.add(error.kind, split, f"narrative {index}: {error}", image_id=image_id)
        return None
    counts.narratives_kept += 1
    counts.phrases_kept += len(phrases)
    annotator = record.get("annotator_id", 0)
    return Narrative(
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
