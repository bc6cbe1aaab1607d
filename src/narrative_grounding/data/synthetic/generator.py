"""``generate_synthetic_dataset``: a synthetic PNG dataset in the official layout, in parallel, deterministic."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..layout import SPLIT_DIRS, id_to_rgb, image_file_name, panoptic_file_name, split_paths
from .captions import narrate
from .levels import SyntheticLevel, get_level
from .scene import render_scene
from .vocabulary import categories

# Image ids of the two splits never collide: validation ids start here.
VALIDATION_ID_OFFSET = 5_000_000
# Written first into every dataset the generator makes: only a folder holding it may be overwritten.
SYNTHETIC_MARKER = "narrative_grounding_synthetic.json"
_SPLIT_CODES = {"train": 0, "validation": 1}


@dataclass
class SyntheticStats:
    """What was written, per split. ``phrase_masks`` (``keep_masks=True``): image id -> the generator's own
    ``P x H x W`` bool masks of the grounded phrases, in caption order."""

    output_dir: str
    level: str
    image_size: tuple[int, int]
    seed: int
    seconds: float = 0.0
    num_workers: int = 1
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    phrase_masks: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_dir": self.output_dir,
            "level": self.level,
            "image_size": list(self.image_size),
            "seed": self.seed,
            "seconds": round(self.seconds, 3),
            "num_workers": self.num_workers,
            "splits": self.splits,
        }

    def format(self) -> str:
        height, width = self.image_size
        total = sum(s["images"] for s in self.splits.values())
        lines = [
            f"Synthetic PNG dataset ({self.level}, {width}x{height}, seed {self.seed}) in {self.output_dir}",
            f"{total} images in {self.seconds:.1f} s ({total / max(self.seconds, 1e-9):.0f} images/s, "
            f"{self.num_workers} worker(s))",
        ]
        for split, s in self.splits.items():
            phrases = max(s["phrases"], 1)
            lines += [
                f"  {split}: {s['images']} images, {s['phrases']} grounded phrases "
                f"({s['phrases_per_image']:.2f}/image), {s['instances']} thing instances "
                f"({s['instances_per_image']:.2f}/image, max {s['max_instances']}), "
                f"{s['caption_words']:.1f} words/caption",
                f"    things {s['things']} ({100 * s['things'] / phrases:.0f}%), stuff {s['stuff']} "
                f"({100 * s['stuff'] / phrases:.0f}%); singular {s['singular']} ({100 * s['singular'] / phrases:.0f}%), "
                f"plural {s['plural']} ({100 * s['plural'] / phrases:.0f}%); "
                f"ungrounded noun phrases {s['ungrounded_noun_phrases']}; images with split stuff {s['split_stuff_images']}",
                "    expressions: " + ", ".join(f"{k} {v}" for k, v in sorted(s["expressions"].items())),
            ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _normalise_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    sides = (image_size, image_size) if _is_int(image_size) else image_size
    if not (isinstance(sides, (tuple, list)) and len(sides) == 2 and all(_is_int(side) for side in sides)):
        raise ValueError(f"image_size must be an integer S or a pair (height, width), got {image_size!r}")
    if min(sides) < 32:
        raise ValueError(f"image_size must be at least 32 pixels a side, got {image_size}")
    return int(sides[0]), int(sides[1])


def _make_image(task: tuple) -> dict[str, Any]:
    """Render, narrate and write one image (runs in a worker)."""
    output_dir, split, index, image_id, seed, level, (height, width), keep_masks, jpeg_quality = task
    # One generator per image, seeded by (seed, split, index): independent of workers and chunking.
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
    scene = render_scene(rng, level, height, width)
    caption, records, mentions = narrate(scene, level, rng)
    paths = split_paths(output_dir, split)
    Image.fromarray(scene.image).save(paths.image_path(image_file_name(image_id)), quality=jpeg_quality)
    Image.fromarray(id_to_rgb(scene.id_map)).save(paths.panoptic_png_path(panoptic_file_name(image_id)))

    segments_info = []
    for region in scene.stuff:
        segments_info.append((region.segment_id, region.category["id"], region.visible))
    for instance in scene.instances:
        segments_info.append((instance.segment_id, _shape_id(instance.shape), instance.visible))
    result: dict[str, Any] = {
        "image": {"id": image_id, "file_name": image_file_name(image_id), "width": width, "height": height},
        "annotation": {
            "image_id": image_id,
            "file_name": panoptic_file_name(image_id),
            "segments_info": [_segment_info(sid, cid, mask) for sid, cid, mask in segments_info],
        },
        "narrative": {"image_id": str(image_id), "annotator_id": 0, "caption": caption, "segments": records},
        "mentions": [(m.kind, m.expression, len(m.segment_ids), m.plural) for m in mentions],
        "instances": len(scene.instances),
        "split_stuff": any(region.num_regions > 1 for region in scene.stuff),
        "words": len(caption.split()),
    }
    if keep_masks:
        drawn = {sid: mask for sid, _, mask in segments_info}
        grounded = [m for m in mentions if m.segment_ids]
        masks = np.zeros((len(grounded), height, width), dtype=bool)  # P x H x W
        for p, mention in enumerate(grounded):
            for sid in mention.segment_ids:
                masks[p] |= drawn[sid]
        result["phrase_masks"] = masks
    return result


def _shape_id(shape: str) -> int:
    from .scene import SHAPE_IDS

    return SHAPE_IDS[shape]


def _segment_info(segment_id: int, category_id: int, mask: np.ndarray) -> dict[str, Any]:
    rows, cols = np.nonzero(mask)
    bbox = [
        int(cols.min()),
        int(rows.min()),
        int(cols.max() - cols.min() + 1),
        int(rows.max() - rows.min() + 1),
    ]
    return {"id": segment_id, "category_id": category_id, "iscrowd": 0, "bbox": bbox, "area": int(mask.sum())}


def _make_chunk(tasks: list[tuple]) -> list[dict[str, Any]]:
    return [_make_image(task) for task in tasks]


def _split_stats(results: list[dict[str, Any]]) -> dict[str, Any]:
    grounded = [m for r in results for m in r["mentions"] if m[2] > 0]
    images = max(len(results), 1)
    return {
        "images": len(results),
        "phrases": len(grounded),
        "things": sum(kind == "thing" for kind, *_ in grounded),
        "stuff": sum(kind == "stuff" for kind, *_ in grounded),
        # As the metric splits them: by number of segments, not by the plural flag.
        "singular": sum(n == 1 for _, _, n, _ in grounded),
        "plural": sum(n > 1 for _, _, n, _ in grounded),
        "plural_flag": sum(bool(p) for *_, p in grounded),
        "ungrounded_noun_phrases": sum(m[0] == "ungrounded" for r in results for m in r["mentions"]),
        "instances": sum(r["instances"] for r in results),
        "max_instances": max((r["instances"] for r in results), default=0),
        "instances_per_image": sum(r["instances"] for r in results) / images,
        "phrases_per_image": len(grounded) / images,
        "caption_words": sum(r["words"] for r in results) / images,
        "split_stuff_images": sum(r["split_stuff"] for r in results),
        "expressions": dict(Counter(expression for _, expression, *_ in grounded)),
    }


def generate_synthetic_dataset(
    output_dir: str | os.PathLike,
    num_train: int = 1000,
    num_validation: int = 200,
    image_size: int | tuple[int, int] = 128,
    level: str | SyntheticLevel = "hard",
    seed: int = 0,
    *,
    num_workers: int | None = None,
    keep_masks: bool = False,
    jpeg_quality: int = 92,
    progress: bool = False,
    overwrite: bool = False,
) -> SyntheticStats:
    """Write a synthetic PNG dataset in the official layout (JPEG images, panoptic PNGs + json, png_coco json).

    Args:
        output_dir: root of the layout (``images/``, ``annotations/``); created if missing.
        num_train, num_validation: images per split (one narrative each); a split with 0 images is not written.
        image_size: ``S`` for S x S, or ``(height, width)``.
        level: "easy", "medium", "hard" (default) or a :class:`SyntheticLevel`.
        seed: the same seed, sizes and level give byte-identical annotation files and identical pixels.
        num_workers: processes (default: all CPU cores; 0 or 1 renders in this process).
        keep_masks: also return the generator's own phrase masks in ``stats.phrase_masks`` (for tests).
        jpeg_quality: of the images.
        progress: show a tqdm bar.
        overwrite: replace the synthetic dataset already in ``output_dir`` (its images, PNGs and annotation
            files of both splits). Only a folder this function wrote (it holds ``SYNTHETIC_MARKER``) is
            ever overwritten; without ``overwrite``, ``output_dir`` must be missing or empty.
    Returns:
        :class:`SyntheticStats` with per-split counts (things, stuff, singular, plural, expressions...).
    Raises:
        FileExistsError: ``output_dir`` is not empty (and ``overwrite`` is False, or it is not a synthetic
            dataset written here); nothing in it is touched.
    """
    level = get_level(level)
    height, width = _normalise_size(image_size)
    for name, value, low in (
        ("num_train", num_train, 0),
        ("num_validation", num_validation, 0),
        ("seed", seed, 0),
    ):
        if not _is_int(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if num_workers is not None and (not _is_int(num_workers) or num_workers < 0):
        raise ValueError(f"num_workers must be None (all CPU cores) or an integer >= 0, got {num_workers!r}")
    if not _is_int(jpeg_quality) or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be an integer from 1 to 100, got {jpeg_quality!r}")
    if num_workers is None:
        num_workers = os.cpu_count() or 1
    started = time.perf_counter()
    output_dir = Path(output_dir)
    _claim_output_dir(output_dir, overwrite)
    settings = {"level": level.name, "image_size": [height, width], "seed": seed}
    settings |= {"num_train": num_train, "num_validation": num_validation}
    (output_dir / SYNTHETIC_MARKER).write_text(
        json.dumps({"generator": "narrative-grounding generate_synthetic_dataset", **settings}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    stats = SyntheticStats(
        str(output_dir), level.name, (height, width), seed, num_workers=max(num_workers, 1)
    )
    for split, count in (("train", num_train), ("validation", num_validation)):
        if count == 0:
            continue
        paths = split_paths(output_dir, split)
        paths.images_dir.mkdir(parents=True, exist_ok=True)
        paths.panoptic_dir.mkdir(parents=True, exist_ok=True)
        offset = VALIDATION_ID_OFFSET if split == "validation" else 0
        tasks = [
            (
                str(output_dir),
                split,
                i,
                offset + i + 1,
                seed,
                level,
                (height, width),
                keep_masks,
                jpeg_quality,
            )
            for i in range(count)
        ]
        results = _run(tasks, num_workers, progress, f"Generating {split}")
        _write_split_json(paths, results)
        stats.splits[split] = _split_stats(results)
        if keep_masks:
            stats.phrase_masks.update({r["image"]["id"]: r["phrase_masks"] for r in results})
    stats.seconds = time.perf_counter() - started
    return stats


def _claim_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Make ``output_dir`` an empty folder to write into, refusing anything that could lose a user's files."""
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder")
    if not output_dir.exists() or not any(output_dir.iterdir()):
        output_dir.mkdir(parents=True, exist_ok=True)
        return
    if not overwrite:
        raise FileExistsError(
            f"{output_dir} is not empty; give a new or empty folder, or --overwrite (overwrite=True) to "
            "replace a synthetic dataset that make-synthetic wrote there before"
        )
    if not (output_dir / SYNTHETIC_MARKER).is_file():
        raise FileExistsError(
            f"{output_dir} is not a synthetic dataset written by narrative-grounding (it has no "
            f"{SYNTHETIC_MARKER}); it is left untouched: give a new or empty folder"
        )
    # Remove the whole previous dataset, both splits, so that no old image or annotation file stays
    # behind to be mixed with the new one; files of other kinds in the folder are left alone.
    for split in SPLIT_DIRS:
        paths = split_paths(output_dir, split)
        for folder in (paths.images_dir, *paths.panoptic_dirs):  # either panoptic layout
            shutil.rmtree(folder, ignore_errors=True)
        for file in paths.annotation_files():
            file.unlink(missing_ok=True)


def _run(tasks: list[tuple], num_workers: int, progress: bool, description: str) -> list[dict[str, Any]]:
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), desc=description, unit=" images")
    results: list[dict[str, Any]] = []
    if num_workers <= 1 or len(tasks) < 32:
        for task in tasks:
            results.append(_make_image(task))
            if bar is not None:
                bar.update(1)
    else:
        chunk = max(8, min(64, len(tasks) // (num_workers * 4)))
        chunks = [tasks[i : i + chunk] for i in range(0, len(tasks), chunk)]
        # fork: workers inherit the imported modules (importing transformers again would cost seconds).
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        with multiprocessing.get_context(method).Pool(num_workers) as pool:
            for part in pool.imap(_make_chunk, chunks):
                results.extend(part)
                if bar is not None:
                    bar.update(len(part))
    if bar is not None:
        bar.close()
    return results


def _write_split_json(paths, results: list[dict[str, Any]]) -> None:
    panoptic = {
        "info": {
            "description": "narrative-grounding synthetic PNG dataset (COCO panoptic format)",
            "version": "1.0",
        },
        "licenses": [],
        "images": [r["image"] for r in results],
        "annotations": [r["annotation"] for r in results],
        "categories": categories(),
    }
    with paths.panoptic_json.open("w", encoding="utf-8") as handle:
        json.dump(panoptic, handle)
    with paths.narratives_json.open("w", encoding="utf-8") as handle:
        json.dump([r["narrative"] for r in results], handle)


__all__ = [
    "SPLIT_DIRS",
    "SYNTHETIC_MARKER",
    "SyntheticStats",
    "VALIDATION_ID_OFFSET",
    "generate_synthetic_dataset",
]
