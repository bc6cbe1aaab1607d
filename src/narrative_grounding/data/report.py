"""Problems found in a PNG data directory: each one names its split, image id, file and what is wrong."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

# The kinds of problem, and what each one costs (what is left out of the prepared dataset).
ISSUE_KINDS: dict[str, str] = {
    "missing_annotation_file": "a split's panoptic json or png_coco json is missing; the split cannot be read",
    "invalid_json": "an annotation file cannot be parsed; the split cannot be read",
    "invalid_record": "a narrative record lacks a field or has a field of the wrong type; narrative skipped",
    "invalid_panoptic_record": "a panoptic json entry lacks a field or has one of the wrong type; its image skipped",
    "duplicate_id": "an id is listed twice (images, annotations, segments_info, categories, a phrase's segment_ids); "
    "what uses it skipped, unless the copies are identical",
    "empty_split": "a split has no usable narrative; the split is left out of the prepared dataset",
    "caption_mismatch": "the utterances do not rebuild the caption; narrative skipped",
    "missing_panoptic_annotation": "no panoptic annotation for the narrative's image; narrative skipped",
    "missing_image_entry": "the image id is not in the panoptic json's images list; narrative skipped",
    "missing_image_file": "the image file does not exist or cannot be read; narrative skipped",
    "missing_panoptic_png": "the panoptic PNG does not exist or cannot be read; narrative skipped",
    "corrupt_image_file": "the image file does not decode (truncated or damaged); narrative skipped",
    "corrupt_panoptic_png": "the panoptic PNG does not decode (truncated or damaged); narrative skipped",
    "unknown_segment_id": "a phrase names a segment id absent from the image's segments_info; phrase skipped",
    "unknown_category": "a segment's category id is not in the categories list; segment's phrases skipped",
    "no_grounded_phrase": "a narrative has no phrase left to ground; narrative skipped",
    "png_size_mismatch": "the panoptic PNG's size differs from the image's size",
    "segment_not_in_png": "a segments_info id has no pixel in the panoptic PNG",
    "unlabelled_png_segment": "the panoptic PNG holds an id that segments_info does not list",
}


@dataclass
class DataIssue:
    """One problem: which split, image, file, and what is wrong."""

    kind: str
    split: str
    message: str
    image_id: int | None = None
    file: str | None = None

    def __str__(self) -> str:
        where = f"[{self.split}]"
        if self.image_id is not None:
            where += f" image {self.image_id}"
        if self.file:
            where += f" ({self.file})"
        return f"{where} {self.kind}: {self.message}"


@dataclass
class SplitCounts:
    """What a split held and what was kept of it."""

    narratives_read: int = 0
    narratives_kept: int = 0
    narratives_without_phrases: int = 0
    phrases_read: int = 0
    phrases_kept: int = 0


@dataclass
class PngDataReport:
    """All problems of a data directory, counted per kind, with per-split totals.

    ``ok`` is False as soon as one problem was found. ``str(report)`` is what the CLI prints.
    """

    data_dir: str
    issues: list[DataIssue] = field(default_factory=list)
    splits: dict[str, SplitCounts] = field(default_factory=dict)

    def add(
        self,
        kind: str,
        split: str,
        message: str,
        *,
        image_id: int | None = None,
        file: str | None = None,
    ) -> DataIssue:
        if kind not in ISSUE_KINDS:
            raise ValueError(f"Unknown issue kind {kind!r}; known kinds: {sorted(ISSUE_KINDS)}")
        issue = DataIssue(kind=kind, split=split, message=message, image_id=image_id, file=file)
        self.issues.append(issue)
        return issue

    def counts(self, split: str | None = None) -> dict[str, int]:
        """Number of issues per kind (of one split, or of all)."""
        return dict(Counter(i.kind for i in self.issues if split is None or i.split == split))

    def split_counts(self, split: str) -> SplitCounts:
        return self.splits.setdefault(split, SplitCounts())

    def of_kind(self, kind: str) -> list[DataIssue]:
        return [issue for issue in self.issues if issue.kind == kind]

    @property
    def ok(self) -> bool:
        return not self.issues

    def merge(self, other: PngDataReport) -> None:
        self.issues.extend(other.issues)
        for split, counts in other.splits.items():
            mine = self.split_counts(split)
            for name, value in asdict(counts).items():
                setattr(mine, name, getattr(mine, name) + value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "ok": self.ok,
            "counts": self.counts(),
            "splits": {name: asdict(counts) for name, counts in self.splits.items()},
            "issues": [asdict(issue) for issue in self.issues],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PngDataReport:
        return cls(
            data_dir=data["data_dir"],
            issues=[DataIssue(**issue) for issue in data.get("issues", [])],
            splits={name: SplitCounts(**counts) for name, counts in data.get("splits", {}).items()},
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format(self, max_issues: int = 50) -> str:
        """A human-readable summary: totals per split, counts per kind, then the first issues."""
        lines = [f"PNG data directory: {self.data_dir}"]
        for split, counts in self.splits.items():
            lines.append(
                f"  {split}: {counts.narratives_kept}/{counts.narratives_read} narratives kept, "
                f"{counts.phrases_kept}/{counts.phrases_read} grounded phrases kept"
                + (
                    f" ({counts.narratives_without_phrases} narratives ground no phrase; skipped as the official code does)"
                    if counts.narratives_without_phrases
                    else ""
                )
            )
        if self.ok:
            lines.append("No problems found.")
            return "\n".join(lines)
        lines.append(f"{len(self.issues)} problem(s):")
        for kind, count in sorted(self.counts().items()):
            lines.append(f"  {count:>7}  {kind}: {ISSUE_KINDS[kind]}")
        for issue in self.issues[:max_issues]:
            lines.append(f"  - {issue}")
        if len(self.issues) > max_issues:
            lines.append(f"  ... and {len(self.issues) - max_issues} more (use --json for all).")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()
