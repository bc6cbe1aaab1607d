"""The PNG dataset as a ``datasets.GeneratorBasedBuilder`` over the official layout, and ``load_png_dataset``.

datasets 5 no longer runs loading scripts, so the builder is used as a class::

    builder = PanopticNarrativeGroundingBuilder(data_dir="/data/png", cache_dir="/tmp/cache")
    builder.download_and_prepare()
    dataset = builder.as_dataset()          # DatasetDict: "train", "validation"
    print(builder.report)                   # every narrative / phrase left out, with its image id

or in one call: ``load_png_dataset("/data/png", splits=["validation"])``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets.fingerprint import Hasher

from .layout import SPLIT_DIRS, PngDataError, SplitPaths, available_splits, split_paths
from .narratives import Narrative, read_split
from .report import PngDataReport
from .validation import DECODE_ERRORS, decode_image

REPORT_FILE = "png_data_report.json"


class _Undecodable(Exception):
    """A file that was read but does not decode (its PIL error is the cause)."""


def png_features() -> datasets.Features:
    """The schema of one example (one narrative of one image).

    ``phrases`` holds the noun phrases to ground, in caption order; ``caption[start:end] == text``.
    ``segment_ids`` index ``segments_info[].id`` and the ids of ``panoptic_png`` (id = R + 256 G + 256^2 B).
    ``expression`` is the kind of referring expression where the annotation records one (the synthetic
    generator does; the official files do not: None).
    """
    segment = {
        "id": datasets.Value("int64"),
        "category_id": datasets.Value("int64"),
        "iscrowd": datasets.Value("int8"),
        "bbox": datasets.List(datasets.Value("float32"), length=4),
        "area": datasets.Value("int64"),
        "is_thing": datasets.Value("bool"),
    }
    phrase = {
        "text": datasets.Value("string"),
        "start": datasets.Value("int32"),
        "end": datasets.Value("int32"),
        "segment_ids": datasets.List(datasets.Value("int64")),
        "category_ids": datasets.List(datasets.Value("int64")),
        "is_thing": datasets.Value("bool"),
        "segment_is_thing": datasets.List(datasets.Value("bool")),
        "plural": datasets.Value("bool"),
        "num_segments": datasets.Value("int32"),
        "expression": datasets.Value("string"),
    }
    return datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "annotator_id": datasets.Value("int64"),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "caption": datasets.Value("string"),
            "phrases": datasets.List(phrase),
            "panoptic_png": datasets.Image(),
            "segments_info": datasets.List(segment),
        }
    )


@dataclass
class PngBuilderConfig(datasets.BuilderConfig):
    """Options of the PNG builder.

    Args:
        splits: which of "train" / "validation" to prepare; default: those whose annotation files exist.
        embed_files: store the image and PNG bytes in the Arrow files (self-contained, shareable as Parquet)
            rather than paths into ``data_dir``.
        strict: raise :class:`PngDataError` listing the problems instead of leaving bad records out.
        check_images: decode every image and panoptic PNG while preparing, so that one that does not decode
            (a truncated download, say) is reported and left out here rather than failing training
            mid-epoch; False skips the decoding (faster on data already checked with ``validate``).
    """

    splits: tuple[str, ...] | None = None
    embed_files: bool = True
    strict: bool = False
    check_images: bool = True


def _listing(folder: Path) -> str:
    # "name size mtime" of every file in one folder, one string (hashed far faster than a list of tuples).
    if not folder.is_dir():
        return ""
    with os.scandir(folder) as entries:
        return "\n".join(
            sorted(
                f"{entry.name} {stat.st_size} {stat.st_mtime_ns}"
                for entry in entries
                if entry.is_file() and (stat := entry.stat())
            )
        )


def _data_fingerprint(data_dir: str | None) -> str | None:
    # Part of the cache path: replacing an annotation file, an image or a panoptic PNG in place (a repaired
    # download, say) must not reuse a stale Arrow cache that still holds the old bytes.
    if data_dir is None:
        return None
    stats = []
    for split in SPLIT_DIRS:
        paths = split_paths(data_dir, split)
        for path in paths.annotation_files():
            if path.is_file():
                stat = path.stat()
                stats.append((path.name, stat.st_size, stat.st_mtime_ns))
        # Both panoptic layouts' folders: moving the PNGs from one layout to the other is a change too.
        for folder in (paths.images_dir, *paths.panoptic_dirs):
            stats.append(_listing(folder))
    return Hasher.hash(stats)


class PanopticNarrativeGroundingBuilder(datasets.GeneratorBasedBuilder):
    """Builds the PNG dataset (one example per narrative) from the official directory layout.

    Narratives, phrases or files that cannot be used are left out and recorded in :attr:`report`
    (also saved next to the prepared Arrow files and reloaded from there on a cache hit).

    Args:
        data_dir: root of the official layout (``images/``, ``annotations/``).
        cache_dir: where the Arrow files go (default: the datasets cache).
        progress: show a tqdm bar over the narratives while preparing.
        **kwargs: ``splits``, ``embed_files``, ``strict``, ``check_images`` (see :class:`PngBuilderConfig`)
            and the usual ``datasets.DatasetBuilder`` arguments.
    """

    BUILDER_CONFIG_CLASS = PngBuilderConfig
    VERSION = datasets.Version("1.0.0")
    DEFAULT_WRITER_BATCH_SIZE = 100  # rows carry image bytes; keep Arrow record batches small

    def __init__(self, *args: Any, progress: bool = False, **kwargs: Any):
        if kwargs.get("data_dir") is not None:
            kwargs["data_dir"] = str(Path(kwargs["data_dir"]).resolve())
        if isinstance(kwargs.get("splits"), (list, str)):
            splits = [kwargs["splits"]] if isinstance(kwargs["splits"], str) else kwargs["splits"]
            kwargs["splits"] = tuple(splits)
        kwargs.setdefault("dataset_name", "panoptic_narrative_grounding")
        kwargs.setdefault("hash", _data_fingerprint(kwargs.get("data_dir")))
        self.progress = progress
        self._work_dir: str | None = None  # the narratives kept, between scanning and writing
        super().__init__(*args, **kwargs)
        self.report = PngDataReport(data_dir=str(self.config.data_dir))

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=(
                "Panoptic Narrative Grounding: COCO 2017 images with Localized Narratives whose noun phrases "
                "are linked to COCO panoptic segments (things and stuff, singular and plural)."
            ),
            features=png_features(),
            homepage="https://bcv-uniandes.github.io/panoptic-narrative-grounding/",
        )

    def _splits_to_prepare(self) -> list[str]:
        data_dir = self.config.data_dir
        if data_dir is None:
            raise ValueError(
                "PanopticNarrativeGroundingBuilder needs data_dir= (the root of the official layout)."
            )
        if not Path(data_dir).is_dir():
            raise PngDataError(f"data_dir {data_dir} is not a directory")
        if self.config.splits is None:
            splits = available_splits(data_dir)
            if not splits:
                expected = [str(p) for s in SPLIT_DIRS for p in split_paths(data_dir, s).annotation_files()]
                raise PngDataError(f"No PNG split found under {data_dir}; expected the files {expected}")
            return splits
        for split in self.config.splits:
            paths = split_paths(data_dir, split)
            missing = [str(path) for path in paths.annotation_files() if not path.is_file()]
            if missing:
                raise PngDataError(f"Split {split!r} cannot be prepared: missing {', '.join(missing)}")
        return list(self.config.splits)

    def _make_split_generators_kwargs(self, prepare_split_kwargs: dict[str, Any]) -> dict[str, Any]:
        # _split_generators cuts each split into as many shards as there are processes.
        return {"num_proc": prepare_split_kwargs.get("num_proc")}

    def _split_generators(
        self, dl_manager: Any, num_proc: int | None = None
    ) -> list[datasets.SplitGenerator]:
        # Read and check every narrative before writing anything: a bad record is reported here, and an
        # unreadable annotation file stops the build before a split is written (datasets only moves a
        # split into the cache once every split is complete). The narratives kept go to a JSON-lines file,
        # not a list, so memory does not grow with the number of images; each writing process then reads
        # its own contiguous part of that file.
        self._prepared_now = True  # download_and_prepare saves the report only when it is fresh
        self.report = PngDataReport(data_dir=str(self.config.data_dir))
        work_dir = self._make_work_dir()
        splits = self._splits_to_prepare()
        for split in splits:
            split_paths(self.config.data_dir, split).check_panoptic_dir()  # names both layouts' folders
        generators = []
        for split in splits:
            paths = split_paths(self.config.data_dir, split)
            narratives_file = os.path.join(work_dir, f"{split}.jsonl")
            count = 0
            with open(narratives_file, "w", encoding="utf-8") as handle:
                for narrative in read_split(paths, self.report, temp_dir=work_dir):
                    handle.write(narrative.to_json() + "\n")
                    count += 1
            shards = _line_ranges(narratives_file, count, max(1, num_proc or 1))
            generators.append(
                datasets.SplitGenerator(name=split, gen_kwargs={"paths": paths, "shards": shards})
            )
        if self.config.strict and not self.report.ok:
            raise PngDataError(f"strict=True and the data has problems:\n{self.report}")
        return generators

    def _make_work_dir(self) -> str:
        if self._work_dir is None:
            # Beside the cache rather than in /tmp: the narratives file of train2017 is some hundred MB.
            os.makedirs(self._cache_dir_root, exist_ok=True)
            self._work_dir = tempfile.mkdtemp(prefix="png_prepare_", dir=self._cache_dir_root)
            # download_and_prepare removes it when done; as_streaming_dataset reads from it for as long as
            # the builder lives, so it goes with the builder.
            weakref.finalize(self, shutil.rmtree, self._work_dir, True)
        return self._work_dir

    def _file_feature(self, path: Path) -> dict[str, Any]:
        """The Image feature value of one file; with ``check_images``, only once it has decoded fully.

        Raises:
            OSError: the file cannot be read (``missing_*``).
            _Undecodable: it is read but does not decode (``corrupt_*``).
        """
        data = path.read_bytes() if self.config.embed_files or self.config.check_images else None
        if self.config.check_images:
            try:
                decode_image(data)
            except DECODE_ERRORS as error:
                raise _Undecodable(error) from error
        if self.config.embed_files:
            return {"path": path.name, "bytes": data}
        return {"path": str(path), "bytes": None}

    def _generate_examples(self, paths: SplitPaths, shards: list[Shard]) -> Iterator[tuple[str, dict]]:
        # May run in a worker process (num_proc > 1): what is left out here goes to a report file per shard,
        # merged into self.report by download_and_prepare.
        for shard in shards:
            self._shard_report = PngDataReport(data_dir=str(self.config.data_dir))
            try:
                yield from self._generate_shard_examples(paths, shard)
            except PngDataError as error:
                # strict=True: raised in a worker process, the error reaches download_and_prepare without its
                # cause (datasets re-raises a DatasetGenerationError), so it also goes to a file.
                with open(_shard_error_path(shard), "w", encoding="utf-8") as handle:
                    json.dump({"message": str(error), "file": error.file}, handle)
                raise
            with open(_shard_report_path(shard), "w", encoding="utf-8") as handle:
                handle.write(self._shard_report.to_json())

    def _generate_shard_examples(self, paths: SplitPaths, shard: Shard) -> Iterator[tuple[str, dict]]:
        narratives = _read_narratives(*shard)
        if self.progress:
            from tqdm.auto import tqdm

            narratives = tqdm(narratives, desc=f"Preparing {paths.split}", unit=" narratives", total=shard[3])
        for narrative in narratives:
            files = self._narrative_files(paths, narrative)
            if files is None:
                continue
            image, png = files
            yield (
                narrative.key,
                {
                    "image": image,
                    "image_id": narrative.image_id,
                    "annotator_id": narrative.annotator_id,
                    "width": narrative.width,
                    "height": narrative.height,
                    "caption": narrative.caption,
                    "phrases": [phrase.to_dict() for phrase in narrative.phrases],
                    "panoptic_png": png,
                    "segments_info": narrative.segments_info,
                },
            )

    def _narrative_files(self, paths: SplitPaths, narrative: Narrative) -> tuple[dict, dict] | None:
        """The image and panoptic PNG feature values, or None when one is left out (and reported)."""
        files = []
        for path, missing, corrupt in (
            (paths.image_path(narrative.image_file), "missing_image_file", "corrupt_image_file"),
            (
                paths.panoptic_png_path(narrative.panoptic_file),
                "missing_panoptic_png",
                "corrupt_panoptic_png",
            ),
        ):
            try:
                files.append(self._file_feature(path))
            except _Undecodable as error:
                self._left_out(paths, narrative, corrupt, path, f"cannot be decoded: {error.__cause__}")
                return None
            except OSError as error:
                self._left_out(paths, narrative, missing, path, f"cannot be read: {error}")
                return None
        return files[0], files[1]

    def _left_out(self, paths: SplitPaths, narrative: Narrative, kind: str, path: Path, message: str) -> None:
        # A file that does not decode, or vanished after the scan: counted like any other problem (in the
        # shard's report: this may run in a worker process).
        report = self._shard_report
        report.add(kind, paths.split, message, image_id=narrative.image_id, file=str(path))
        counts = report.split_counts(paths.split)
        counts.narratives_kept -= 1
        counts.phrases_kept -= len(narrative.phrases)
        if self.config.strict:
            raise PngDataError(
                f"strict=True: image {narrative.image_id}: {kind}: {path}: {message}", file=path
            )

    def download_and_prepare(self, *args: Any, **kwargs: Any) -> None:
        """Prepare the Arrow files (or reuse the cache), and keep :attr:`report` with them.

        ``num_proc=N`` reads the image and PNG files and writes the Arrow shards of each split in N processes
        (the annotation files are read once, in this process).
        """
        self._prepared_now = False
        self._work_dir = None
        try:
            super().download_and_prepare(*args, **kwargs)
            if self._prepared_now:
                for path in sorted(Path(self._work_dir).glob("*.report.json")):
                    self.report.merge(PngDataReport.from_dict(json.loads(path.read_text(encoding="utf-8"))))
        except datasets.exceptions.DatasetGenerationError as error:
            # datasets wraps whatever _generate_examples raises; ours (strict=True) names the file: unwrap it.
            if isinstance(error.__cause__, PngDataError):
                raise error.__cause__ from None
            errors = sorted(Path(self._work_dir).glob("*.error.json")) if self._work_dir else []
            if errors:  # raised in a worker process (num_proc > 1)
                found = json.loads(errors[0].read_text(encoding="utf-8"))
                raise PngDataError(found["message"], file=found["file"]) from None
            raise
        finally:
            if self._work_dir is not None:
                shutil.rmtree(self._work_dir, ignore_errors=True)
        report_path = os.path.join(self.cache_dir, REPORT_FILE)
        if self._prepared_now:
            for split in self._empty_splits():
                self.report.add(
                    "empty_split",
                    split,
                    f"none of its {self.report.split_counts(split).narratives_read} narrative(s) can be used; "
                    "left out of the prepared dataset",
                    file=str(split_paths(self.config.data_dir, split).narratives_json),
                )
            with open(report_path, "w", encoding="utf-8") as handle:
                handle.write(self.report.to_json())
        elif os.path.isfile(report_path):
            with open(report_path, encoding="utf-8") as handle:
                self.report = PngDataReport.from_dict(json.load(handle))
        if self.info.splits and len(self._empty_splits()) == len(self.info.splits):
            raise PngDataError(self._no_data_message(list(self.info.splits)))

    def _empty_splits(self) -> list[str]:
        return [name for name, info in (self.info.splits or {}).items() if not info.num_examples]

    def _no_data_message(self, splits: list[str]) -> str:
        causes = [issue for issue in self.report.issues if issue.kind != "empty_split"]
        problems = "\n".join(f"  - {issue}" for issue in causes[:10])
        names = " and ".join(f"split {split!r}" for split in splits)
        return (
            f"{self.config.data_dir}: {names} {'has' if len(splits) == 1 else 'have'} no usable narrative"
            + (f"; the first problems:\n{problems}" if problems else " (its narratives file lists none)")
        )

    def as_dataset(self, split: Any = None, **kwargs: Any) -> datasets.Dataset | datasets.DatasetDict:
        """The prepared splits (by default every split that kept at least one narrative).

        Raises:
            PngDataError: the requested split kept no narrative (datasets itself cannot hold an empty split).
        """
        empty = self._empty_splits()
        if split is None:
            split = {name: name for name in self.info.splits if name not in empty}
            if not split:
                raise PngDataError(self._no_data_message(empty))
        elif isinstance(split, str) and split in empty:
            raise PngDataError(self._no_data_message([split]))
        return super().as_dataset(split=split, **kwargs)


# A shard of a split for one writing process: (JSON-lines file, first byte, end byte, number of narratives).
Shard = tuple[str, int, int, int]


def _line_ranges(path: str, count: int, num_shards: int) -> list[Shard]:
    """``num_shards`` contiguous byte ranges of whole lines of ``path`` (``count`` lines), as equal in lines as
    can be; fewer when there are fewer lines. Contiguous ranges keep the examples in file order."""
    num_shards = max(1, min(num_shards, count))
    bounds = [round(count * k / num_shards) for k in range(num_shards + 1)]
    inner = set(bounds[1:-1])
    offsets = [0]
    position = 0
    with open(path, "rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            position += len(line)
            if line_number in inner:
                offsets.append(position)
    offsets.append(position)
    return [(path, offsets[k], offsets[k + 1], bounds[k + 1] - bounds[k]) for k in range(num_shards)]


def _read_narratives(path: str, start: int, stop: int, count: int) -> Iterator[Narrative]:
    with open(path, "rb") as handle:
        handle.seek(start)
        while handle.tell() < stop:
            yield Narrative.from_json(handle.readline())


def _shard_error_path(shard: Shard) -> str:
    path, start, _, _ = shard
    return f"{path}.{start:015d}.error.json"


def _shard_report_path(shard: Shard) -> str:
    path, start, _, _ = shard
    return f"{path}.{start:015d}.report.json"  # zero-padded: sorting the names sorts the shards


def load_png_dataset(
    data_dir: str | os.PathLike,
    splits: Sequence[str] | str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    embed_files: bool = True,
    strict: bool = False,
    check_images: bool = True,
    progress: bool = False,
    return_report: bool = False,
    num_proc: int | None = None,
    **builder_kwargs: Any,
) -> datasets.DatasetDict | tuple[datasets.DatasetDict, PngDataReport]:
    """Prepare (or reuse from cache) the PNG dataset of an official-layout directory.

    Args:
        data_dir: root holding ``images/`` and ``annotations/`` (see docs/data.md).
        splits: "train", "validation" or both; default: the splits whose annotation files exist.
        cache_dir: where the Arrow files go (default: the datasets cache).
        embed_files: store image/PNG bytes in the dataset (needed for Parquet export / push_to_hub).
        strict: raise on the first problem instead of leaving bad records out and reporting them.
        check_images: decode every image and panoptic PNG while preparing; one that does not decode is
            reported (``corrupt_image_file`` / ``corrupt_panoptic_png``) and left out.
        progress: show a progress bar while preparing.
        return_report: also return the :class:`PngDataReport`.
        num_proc: processes that read the image / PNG files and write the Arrow shards (default: one).
        **builder_kwargs: passed to the builder (e.g. ``download_mode`` is not; use the builder for that).
    Returns:
        A ``DatasetDict`` keyed by split name (and the report when ``return_report``); a split that kept no
        narrative is left out and reported as ``empty_split``.
    Raises:
        PngDataError: an annotation file is missing or malformed, no split kept a narrative, or (``strict``)
            any problem; the message names the file.
    """
    if isinstance(splits, str):
        splits = [splits]
    builder = PanopticNarrativeGroundingBuilder(
        data_dir=str(data_dir),
        cache_dir=None if cache_dir is None else str(cache_dir),
        splits=None if splits is None else tuple(splits),
        embed_files=embed_files,
        strict=strict,
        check_images=check_images,
        progress=progress,
        **builder_kwargs,
    )
    builder.download_and_prepare(num_proc=num_proc)
    dataset = builder.as_dataset()
    return (dataset, builder.report) if return_report else dataset
