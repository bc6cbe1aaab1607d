"""The data path at the scale of the real train split (133,103 narratives, 875,073 phrases).

    python benchmarks/data_scale.py                              # 500 and 3000 images, num_proc 1 and 2
    python benchmarks/data_scale.py --num-images 1000 --num-proc 1 4

Writes datasets in the official layout with records of realistic size (640x480 JPEGs, ~12 panoptic
segments and ~7 grounded phrases per narrative, lower-cased utterances, detached punctuation, split
contractions, string ids) and measures, for each size and ``num_proc``:

- preparing the Arrow files as ``narrative-grounding prepare-data --cache-dir`` does (the builder's
  ``download_and_prepare(num_proc=N)``, in a fresh process each time): wall time, narratives/s, the
  process's RSS after its imports and its peak while preparing, and the largest writing process's peak;
- the disk used by the prepared Arrow files per narrative, beside the input files per image;
- the per-example cost of the training input path on the prepared dataset: reading a row (JPEG + PNG
  decoded by ``datasets``), the phrase masks from the PNG, and ``PngCollator`` (masks + processor at
  640x640 + tokenizer) on one row;
- the annotation scan alone (every narrative read, aligned and joined to its panoptic annotation, as the
  builder does before writing) on annotation files of 10,000 and 133,103 narratives without image files:
  its time and peak memory at the real size;

then extrapolates them to the full train split. Peak memory must not grow with the number of images.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

TRAIN_NARRATIVES, TRAIN_PHRASES = 133_103, 875_073  # the PNG train split (png_coco_train2017.json)
# cocodataset.org's download page: "2017 Train images [118K/18GB]"; the benchmark's images are the same
# size (640x480) but not the same content, so the disk figures are also given at COCO's mean JPEG size.
COCO_TRAIN_IMAGES, COCO_TRAIN_JPEG_BYTES = 118_287, 18e9

THINGS = [(1, "person", "people"), (3, "car", "cars"), (18, "dog", "dogs"), (62, "chair", "chairs"),
          (44, "bottle", "bottles"), (64, "potted plant", "plants")]  # fmt: skip
STUFF = [(187, "sky"), (149, "road"), (193, "grass"), (199, "wall"), (184, "trees")]
OPENINGS = ["In this image we can see", "Here we can see", "In this picture there is", "We can see"]
LINKS = ["and", "beside", "near", "in front of", "behind", "on the left of", "and also"]
CATEGORIES = [{"id": i, "name": n, "isthing": 1, "supercategory": n} for i, n, _ in THINGS] + [
    {"id": i, "name": n, "isthing": 0, "supercategory": n} for i, n in STUFF
]


def _utterance(text: str, segment_ids: list[int] = (), plural: bool = False) -> dict:
    return {"utterance": text, "segment_ids": [str(s) for s in segment_ids], "plural": plural,
            "noun": bool(segment_ids)}  # fmt: skip


def _image(args: tuple[str, int, int, int, int]) -> tuple[dict, dict, dict]:
    """One image, its panoptic PNG, and its annotation / narrative records (seeded by the image index)."""
    root, index, height, width, num_things = args
    rng = np.random.default_rng(index)
    image_id = 1_000_000 + index
    ys, xs = np.mgrid[0:height, 0:width]
    ids = np.zeros((height, width), dtype=np.uint32)  # H x W
    segments, utterances = [], []
    # 4 stuff bands with wavy borders, then ellipses of things over them.
    stuff = rng.choice(len(STUFF), size=4, replace=False)
    borders = np.sort(rng.uniform(0.15, 0.85, size=3)) * height
    band = np.searchsorted(borders, ys + 12 * np.sin(xs / rng.uniform(20, 60)))  # H x W in 0..3
    used = set()
    for k, choice in enumerate(stuff):
        segment_id = int(rng.integers(1, 1 << 24))
        while segment_id in used:
            segment_id = int(rng.integers(1, 1 << 24))
        used.add(segment_id)
        ids[band == k] = segment_id
        segments.append({"id": segment_id, "category_id": STUFF[choice][0], "name": STUFF[choice][1]})
    for _ in range(num_things):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.05, 0.2) * height, rng.uniform(0.05, 0.2) * width
        category = THINGS[rng.integers(len(THINGS))]
        segment_id = int(rng.integers(1, 1 << 24))
        while segment_id in used:
            segment_id = int(rng.integers(1, 1 << 24))
        used.add(segment_id)
        ids[((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1] = segment_id
        segments.append(
            {"id": segment_id, "category_id": category[0], "name": category[1], "plural": category[2]}
        )
    present = set(np.unique(ids).tolist())
    segments = [s for s in segments if s["id"] in present]  # an ellipse may be hidden by later ones
    # Colour per segment plus texture noise: JPEG sizes near COCO's (~150 kB at quality 90).
    palette = {s["id"]: rng.integers(30, 225, size=3) for s in segments}
    rgb = np.zeros((height, width, 3), dtype=np.float32)
    for s in segments:
        rgb[ids == s["id"]] = palette[s["id"]]
    rgb += rng.normal(0, 14, size=rgb.shape)
    name = f"{image_id:012d}"
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(f"{root}/images/train2017/{name}.jpg", quality=90)
    rgb_ids = np.stack([(ids >> shift) & 0xFF for shift in (0, 8, 16)], -1).astype(np.uint8)  # H x W x 3
    Image.fromarray(rgb_ids).save(f"{root}/annotations/panoptic_segmentation/train2017/{name}.png")

    # ~7 phrases: each stuff segment, then things singly or two of a kind together (plural).
    things = [s for s in segments if "plural" in s]
    groups: list[list[dict]] = [[s] for s in segments if "plural" not in s]
    while things and len(groups) < 7:
        same = [t for t in things[1:] if t["category_id"] == things[0]["category_id"]][:1]
        groups.append([things[0], *same])
        things = [t for t in things if t not in groups[-1]]
    rng.shuffle(groups)
    caption_words, utterances = [], []
    for k, group in enumerate(groups):
        opening = OPENINGS[rng.integers(len(OPENINGS))] if k % 3 == 0 else LINKS[rng.integers(len(LINKS))]
        if k % 3 == 0 and k:
            caption_words[-1] += "."
            utterances.append(_utterance("."))
        if rng.random() < 0.15:  # a contraction, split as the official utterances split it
            caption_words += ["there", "isn't", "only", "one", "thing,", "there"]
            utterances += [_utterance("there is n't only one thing"), _utterance(","), _utterance("there")]
        text = f"two {group[0]['plural']}" if len(group) == 2 else f"the {group[0]['name']}"
        caption_words += opening.split() + text.split()
        utterances += [
            _utterance(opening.lower()),
            _utterance(text, [s["id"] for s in group], len(group) == 2),
        ]
    caption_words[-1] += "."
    utterances.append(_utterance("."))
    caption_words[0] = caption_words[0].capitalize()
    image = {"id": image_id, "file_name": f"{name}.jpg", "height": height, "width": width}
    annotation = {
        "image_id": image_id,
        "file_name": f"{name}.png",
        "segments_info": [
            {"id": s["id"], "category_id": s["category_id"], "iscrowd": 0, "bbox": [0, 0, 1, 1], "area": 1}
            for s in segments
        ],
    }
    narrative = {"image_id": str(image_id), "annotator_id": 1, "caption": " ".join(caption_words),
                 "segments": utterances}  # fmt: skip
    return image, annotation, narrative


def generate(root: Path, num_images: int, height: int, width: int, workers: int) -> dict:
    (root / "images" / "train2017").mkdir(parents=True)
    (root / "annotations" / "panoptic_segmentation" / "train2017").mkdir(parents=True)
    jobs = [(str(root), index, height, width, 8) for index in range(num_images)]
    with mp.Pool(workers) as pool:
        records = pool.map(_image, jobs, chunksize=16)
    panoptic = {"info": {}, "licenses": [], "images": [r[0] for r in records],
                "annotations": [r[1] for r in records], "categories": CATEGORIES}  # fmt: skip
    (root / "annotations" / "panoptic_train2017.json").write_text(json.dumps(panoptic))
    (root / "annotations" / "png_coco_train2017.json").write_text(json.dumps([r[2] for r in records]))
    phrases = sum(sum(1 for u in r[2]["segments"] if u["segment_ids"]) for r in records)
    segments = sum(len(r[1]["segments_info"]) for r in records)
    return {"phrases_per_narrative": phrases / num_images, "segments_per_image": segments / num_images,
            "jpeg_bytes": _size(root / "images"), "png_bytes": _size(root / "annotations" / "panoptic_segmentation"),
            "json_bytes": _size(root / "annotations") - _size(root / "annotations" / "panoptic_segmentation")}  # fmt: skip


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _rss_mib() -> float:
    # Current resident set size, from /proc (Linux).
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def prepare_child(data_dir: str, cache_dir: str, num_proc: int) -> None:
    """In a fresh process: prepare the dataset as ``prepare-data`` does, print the time and memory as JSON.

    ``base_rss_mib`` is the process after its imports (torch, transformers, datasets); ``peak_rss_mib`` its
    peak while preparing; ``worker_peak_rss_mib`` the largest writing process (num_proc > 1)."""
    from narrative_grounding.data import PanopticNarrativeGroundingBuilder

    base = _rss_mib()
    start = time.perf_counter()
    builder = PanopticNarrativeGroundingBuilder(data_dir=data_dir, cache_dir=cache_dir)
    builder.download_and_prepare(num_proc=num_proc)
    seconds = time.perf_counter() - start
    if not builder.report.ok:
        sys.exit(f"the benchmark data has problems:\n{builder.report}")
    print(json.dumps({
        "seconds": seconds,
        "base_rss_mib": base,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))  # fmt: skip


def scan_child(data_dir: str) -> None:
    """In a fresh process: read and check every narrative of the annotation files (what the builder does
    before writing), without the image files; print the time and memory as JSON."""
    from narrative_grounding.data.layout import split_paths
    from narrative_grounding.data.narratives import read_split
    from narrative_grounding.data.report import PngDataReport

    base = _rss_mib()
    report = PngDataReport(data_dir=data_dir)
    start = time.perf_counter()
    kept = sum(1 for _ in read_split(split_paths(data_dir, "train"), report, check_files=False))
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "kept": kept, "ok": report.ok, "base_rss_mib": base,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))  # fmt: skip


def write_annotations_only(source: Path, target: Path, num_narratives: int) -> int:
    """The annotation files of ``num_narratives`` images, cycling through the records of ``source`` under new
    image ids (no image files: for the scan at full scale). Written record by record."""
    panoptic = json.loads((source / "annotations" / "panoptic_train2017.json").read_text())
    narratives = json.loads((source / "annotations" / "png_coco_train2017.json").read_text())
    (target / "annotations").mkdir(parents=True)
    with open(target / "annotations" / "panoptic_train2017.json", "w") as handle:
        handle.write('{"info": {}, "licenses": [], "images": [')
        for index in range(num_narratives):
            image = dict(panoptic["images"][index % len(narratives)], id=5_000_000 + index)
            handle.write(("," if index else "") + json.dumps(image))
        handle.write('], "annotations": [')
        for index in range(num_narratives):
            annotation = dict(panoptic["annotations"][index % len(narratives)], image_id=5_000_000 + index)
            handle.write(("," if index else "") + json.dumps(annotation))
        handle.write('], "categories": ' + json.dumps(panoptic["categories"]) + "}")
    with open(target / "annotations" / "png_coco_train2017.json", "w") as handle:
        handle.write("[")
        for index in range(num_narratives):
            record = dict(narratives[index % len(narratives)], image_id=str(5_000_000 + index))
            handle.write(("," if index else "") + json.dumps(record))
        handle.write("]")
    return _size(target / "annotations")


def _child(*arguments: str) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, *arguments], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def prepare(data_dir: Path, cache_dir: Path, num_proc: int) -> dict:
    return _child("--prepare-child", str(data_dir), str(cache_dir), str(num_proc))


def decode_costs(data_dir: Path, cache_dir: Path, samples: int) -> dict:
    """Milliseconds per example of the training input path on the prepared dataset (one process)."""
    from transformers import AutoTokenizer

    from narrative_grounding.data import PanopticNarrativeGroundingBuilder
    from narrative_grounding.factory import variant_path  # the tiny tokenizer ships in the tiny variants
    from narrative_grounding.modeling.image_processing_png import PngImageProcessor
    from narrative_grounding.modeling.processing_png import PngProcessor
    from narrative_grounding.training.collate import PngCollator, row_phrase_masks

    builder = PanopticNarrativeGroundingBuilder(data_dir=str(data_dir), cache_dir=str(cache_dir))
    dataset = builder.as_dataset()["train"]
    indices = range(min(samples, dataset.num_rows))
    tokenizer = AutoTokenizer.from_pretrained(variant_path("epng-tiny"))
    collator = PngCollator(PngProcessor(PngImageProcessor(), tokenizer))
    collator([dataset[0]])  # warm-up

    def per_example(function) -> float:
        start = time.perf_counter()
        for index in indices:
            function(index)
        return (time.perf_counter() - start) / len(indices) * 1000

    rows = [dataset[index] for index in indices]
    return {
        "row_ms": per_example(lambda i: dataset[i]),
        "masks_ms": per_example(lambda i: row_phrase_masks(rows[i])),
        "collator_ms": per_example(lambda i: collator([rows[i]])),
    }


def _growth_mib(result: dict) -> float:
    return result["peak_rss_mib"] - result["base_rss_mib"]


def _growth(results: dict, sizes: list[int], num_proc: int) -> str:
    return ", ".join(f"+{_growth_mib(results[(n, num_proc)]):.0f} MiB at {n} images" for n in sizes)


def main() -> None:
    if sys.argv[1:2] == ["--prepare-child"]:
        prepare_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    if sys.argv[1:2] == ["--scan-child"]:
        scan_child(sys.argv[2])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-images", type=int, nargs="+", default=[500, 3000])
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--decode-samples", type=int, default=100)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="generator processes")
    parser.add_argument(
        "--scan-sizes",
        type=int,
        nargs="+",
        default=[10_000, TRAIN_NARRATIVES],
        help="numbers of narratives for the annotation scan without image files (0 to skip)",
    )
    parser.add_argument(
        "--data-root", help="keep the generated data sets here and reuse them (default: a temporary folder)"
    )
    args = parser.parse_args()

    import datasets
    import torch

    print(f"python {sys.version.split()[0]}, datasets {datasets.__version__}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load {os.getloadavg()}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(args.data_root or tmp)
        largest = None
        results: dict[tuple[int, int], dict] = {}
        for num_images in args.num_images:
            data_dir = data_root / f"data-{num_images}-{args.width}x{args.height}"
            start = time.perf_counter()
            if (data_dir / "stats.json").is_file():
                stats = json.loads((data_dir / "stats.json").read_text())
            else:
                stats = generate(data_dir, num_images, args.height, args.width, args.workers)
                (data_dir / "stats.json").write_text(json.dumps(stats))
            print(
                f"\n{num_images} images {args.width}x{args.height} ready in {time.perf_counter() - start:.0f} s: "
                f"{stats['phrases_per_narrative']:.1f} phrases and {stats['segments_per_image']:.1f} segments "
                f"per narrative; JPEG {stats['jpeg_bytes'] / num_images / 1024:.0f} KiB, PNG "
                f"{stats['png_bytes'] / num_images / 1024:.1f} KiB, JSON {stats['json_bytes'] / num_images:.0f} B "
                "per image"
            )
            for num_proc in args.num_proc:
                cache_dir = Path(tmp) / f"cache-{num_images}-{num_proc}"
                result = prepare(data_dir, cache_dir, num_proc)
                arrow = sum(f.stat().st_size for f in cache_dir.rglob("*.arrow"))
                print(
                    f"  prepare-data num_proc={num_proc}: {result['seconds']:.1f} s = "
                    f"{num_images / result['seconds']:.0f} narratives/s; RSS {result['base_rss_mib']:.0f} MiB after "
                    f"imports, peak {result['peak_rss_mib']:.0f} MiB (+{_growth_mib(result):.0f}), writing processes "
                    f"peak {result['worker_peak_rss_mib']:.0f} MiB; Arrow {arrow / num_images / 1024:.0f} KiB per narrative"
                )
                results[(num_images, num_proc)] = result
                largest = (num_images, arrow, stats, data_dir, cache_dir)
        num_images, arrow, stats, data_dir, cache_dir = largest
        scans = {}
        for size in [size for size in args.scan_sizes if size > 0]:
            scan_dir = Path(tmp) / f"scan-{size}"
            annotation_bytes = write_annotations_only(data_dir, scan_dir, size)
            scans[size] = _child("--scan-child", str(scan_dir))
            result = scans[size]
            assert result["ok"] and result["kept"] == size, result
            print(
                f"  annotation scan of {size:,} narratives ({annotation_bytes / 2**20:.0f} MiB of JSON, no image "
                f"files): {result['seconds']:.1f} s = {size / result['seconds']:.0f} narratives/s; RSS "
                f"{result['base_rss_mib']:.0f} MiB after imports, peak +{_growth_mib(result):.0f} MiB"
            )
            shutil.rmtree(scan_dir)
        costs = decode_costs(data_dir, cache_dir, args.decode_samples)
        print(
            f"\ntraining input path, per example ({num_images}-image set): read row + decode JPEG/PNG "
            f"{costs['row_ms']:.1f} ms, phrase masks {costs['masks_ms']:.1f} ms, PngCollator (masks + "
            f"640x640 processor + tokenizer) {costs['collator_ms']:.1f} ms"
        )
        print(
            f"\nextrapolation to the train split ({TRAIN_NARRATIVES:,} narratives, {TRAIN_PHRASES:,} phrases):"
        )
        for num_proc in args.num_proc:
            rate = num_images / results[(num_images, num_proc)]["seconds"]
            print(
                f"  prepare-data num_proc={num_proc}: {TRAIN_NARRATIVES / rate / 60:.0f} min at {rate:.0f} "
                f"narratives/s; memory while preparing: {_growth(results, args.num_images, num_proc)}"
            )
        per_narrative = arrow / num_images
        input_jpeg = stats["jpeg_bytes"] / num_images
        coco_jpeg = COCO_TRAIN_JPEG_BYTES / COCO_TRAIN_IMAGES
        print(
            f"  Arrow cache: {per_narrative * TRAIN_NARRATIVES / 1e9:.1f} GB with these images; "
            f"{(per_narrative - input_jpeg + coco_jpeg) * TRAIN_NARRATIVES / 1e9:.1f} GB at COCO's mean JPEG "
            f"size ({coco_jpeg / 1024:.0f} KiB; one copy of the image per narrative)"
        )
        print(
            f"  decoding in training: {costs['collator_ms'] * TRAIN_NARRATIVES / 1000 / 60:.0f} CPU-minutes per "
            f"epoch for the collator, {costs['row_ms'] * TRAIN_NARRATIVES / 1000 / 60:.0f} for reading rows"
        )


if __name__ == "__main__":
    main()
