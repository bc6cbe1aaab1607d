"""The synthetic generator: official layout, masks that survive the PNG round trip, determinism, statistics."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from narrative_grounding.data import decode_phrase_masks, load_png_dataset, validate_png_directory
from narrative_grounding.data.synthetic import (
    LEVELS,
    THING_CATEGORIES,
    THING_COLORS,
    VOCABULARY,
    generate_synthetic_dataset,
    vocabulary,
)

SHAPE_WORDS = {c["name"]: c["id"] for c in THING_CATEGORIES} | {
    c["plural"]: c["id"] for c in THING_CATEGORIES
}


@pytest.fixture(scope="module")
def hard_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_hard")
    stats = generate_synthetic_dataset(
        root, num_train=40, num_validation=12, level="hard", seed=3, keep_masks=True
    )
    return root, stats


def test_layout_and_validation(hard_dataset):
    root, stats = hard_dataset
    for coco in ("train2017", "val2017"):
        assert (root / "annotations" / f"panoptic_{coco}.json").is_file()
        assert (root / "annotations" / f"png_coco_{coco}.json").is_file()
    assert len(list((root / "images" / "train2017").glob("*.jpg"))) == 40
    assert len(list((root / "annotations" / "panoptic_val2017").glob("*.png"))) == 12
    first = json.loads((root / "annotations" / "png_coco_train2017.json").read_text())[0]
    assert isinstance(first["image_id"], str)  # ids are strings, as in the official files
    assert (root / "images" / "train2017" / f"{int(first['image_id']):012d}.jpg").is_file()
    report = validate_png_directory(root)
    assert report.ok, report.format()
    assert report.splits["train"].narratives_kept == 40


def test_builder_masks_equal_generator_masks(hard_dataset, tmp_path):
    root, stats = hard_dataset
    dataset = load_png_dataset(root, cache_dir=tmp_path)
    assert dataset["train"].num_rows == 40 and dataset["validation"].num_rows == 12
    seen = 0
    for split in ("train", "validation"):
        for example in dataset[split].with_transform(decode_phrase_masks):
            drawn = stats.phrase_masks[example["image_id"]]  # P x H x W, from the generator's own layers
            decoded = example["phrase_masks"]
            assert decoded.shape == drawn.shape == (len(example["phrases"]), 128, 128)
            np.testing.assert_array_equal(decoded.astype(bool), drawn)
            assert all(mask.any() for mask in drawn)
            for phrase in example["phrases"]:
                assert example["caption"][phrase["start"] : phrase["end"]] == phrase["text"]
            seen += 1
    assert seen == 52


def test_segment_ids_use_all_three_png_channels(hard_dataset):
    root, _ = hard_dataset
    panoptic = json.loads((root / "annotations" / "panoptic_train2017.json").read_text())
    ids = [s["id"] for a in panoptic["annotations"] for s in a["segments_info"]]
    assert max(ids) >= 1 << 16 and len(ids) == len(set(ids))


def test_statistics_cover_things_stuff_singular_plural(hard_dataset):
    _, stats = hard_dataset
    for split in ("train", "validation"):
        s = stats.splits[split]
        for key in ("things", "stuff", "singular", "plural"):
            assert s[key] > 0, (split, key, s)
        assert s["things"] + s["stuff"] == s["phrases"] == s["singular"] + s["plural"]
        assert s["ungrounded_noun_phrases"] > 0
        assert s["max_instances"] <= 8
    expressions = stats.splits["train"]["expressions"]
    for kind in ("attribute", "position", "relation", "count_position", "group", "stuff"):
        assert expressions.get(kind, 0) > 0, expressions
    text = stats.format()
    assert "things" in text and "plural" in text and "expressions" in text


def test_deterministic_for_a_seed(tmp_path):
    first = generate_synthetic_dataset(tmp_path / "a", 6, 2, level="hard", seed=11, num_workers=1)
    second = generate_synthetic_dataset(tmp_path / "b", 6, 2, level="hard", seed=11, num_workers=1)
    other = generate_synthetic_dataset(tmp_path / "c", 6, 2, level="hard", seed=12, num_workers=1)
    for name in ("png_coco_train2017.json", "panoptic_train2017.json", "png_coco_val2017.json"):
        assert (tmp_path / "a/annotations" / name).read_bytes() == (
            tmp_path / "b/annotations" / name
        ).read_bytes()
    assert (tmp_path / "a/annotations/png_coco_train2017.json").read_bytes() != (
        tmp_path / "c/annotations/png_coco_train2017.json"
    ).read_bytes()
    for image in (tmp_path / "a/images/train2017").iterdir():
        twin = tmp_path / "b/images/train2017" / image.name
        np.testing.assert_array_equal(np.asarray(Image.open(image)), np.asarray(Image.open(twin)))
    assert first.splits == second.splits != other.splits


def test_parallel_workers_write_the_same_dataset(tmp_path):
    generate_synthetic_dataset(tmp_path / "serial", 40, 0, level="medium", seed=5, num_workers=1)
    generate_synthetic_dataset(tmp_path / "parallel", 40, 0, level="medium", seed=5, num_workers=2)
    for name in ("png_coco_train2017.json", "panoptic_train2017.json"):
        serial = (tmp_path / "serial/annotations" / name).read_bytes()
        assert serial == (tmp_path / "parallel/annotations" / name).read_bytes()
    assert not (tmp_path / "serial/annotations/png_coco_val2017.json").exists()  # 0 images: split not written


def test_vocabulary_covers_every_caption(hard_dataset, tmp_path):
    root, _ = hard_dataset
    easy = generate_synthetic_dataset(tmp_path, 10, 0, level="easy", seed=0, num_workers=1)
    assert easy.splits["train"]["images"] == 10
    captions = [r["caption"] for r in json.loads((root / "annotations/png_coco_train2017.json").read_text())]
    captions += [
        r["caption"] for r in json.loads((tmp_path / "annotations/png_coco_train2017.json").read_text())
    ]
    words = {w for caption in captions for w in re.findall(r"[a-z]+|[.,]", caption.lower())}
    assert words <= set(VOCABULARY), words - set(VOCABULARY)
    assert vocabulary() == list(VOCABULARY) and "circle" in VOCABULARY and "," in VOCABULARY


def test_easy_level_names_colour_and_shape(tmp_path):
    stats = generate_synthetic_dataset(tmp_path, 30, 0, level="easy", seed=1, num_workers=1)
    assert set(stats.splits["train"]["expressions"]) <= {"attribute", "group", "stuff"}
    panoptic = json.loads((tmp_path / "annotations/panoptic_train2017.json").read_text())
    stuff_ids = {c["id"] for c in panoptic["categories"] if not c["isthing"]}
    for annotation in panoptic["annotations"]:
        assert sum(s["category_id"] in stuff_ids for s in annotation["segments_info"]) <= 2
    for record in json.loads((tmp_path / "annotations/png_coco_train2017.json").read_text()):
        for utterance in record["segments"]:
            words = utterance["utterance"].split()
            if utterance["segment_ids"] and any(w in SHAPE_WORDS for w in words):
                assert any(w in THING_COLORS for w in words), utterance


def test_position_phrases_point_at_the_extreme_instance(hard_dataset):
    """'the circle on the left' (no colour word): its segment is the leftmost circle of the image."""
    root, _ = hard_dataset
    panoptic = json.loads((root / "annotations/panoptic_train2017.json").read_text())
    segments = {a["image_id"]: {s["id"]: s for s in a["segments_info"]} for a in panoptic["annotations"]}
    checked = 0
    for record in json.loads((root / "annotations/png_coco_train2017.json").read_text()):
        image_segments = segments[int(record["image_id"])]
        for utterance in record["segments"]:
            words = utterance["utterance"].split()
            axis = {"leftmost": "left", "rightmost": "right"}.get(words[1] if len(words) > 2 else "")
            if " on the left" in utterance["utterance"] or " on the right" in utterance["utterance"]:
                axis = "left" if "left" in words else "right"
            if axis is None or len(utterance["segment_ids"]) != 1 or any(w in THING_COLORS for w in words):
                continue
            shape = next((w for w in words if w in SHAPE_WORDS), None)
            if shape is None:
                continue
            same_shape = [s for s in image_segments.values() if s["category_id"] == SHAPE_WORDS[shape]]
            centre = {s["id"]: s["bbox"][0] + s["bbox"][2] / 2 for s in same_shape}
            target = int(utterance["segment_ids"][0])
            extreme = min(centre, key=centre.get) if axis == "left" else max(centre, key=centre.get)
            assert target == extreme, (record["caption"], utterance)
            checked += 1
    assert checked > 0


def test_rectangular_images_and_bad_arguments(tmp_path):
    generate_synthetic_dataset(tmp_path, 3, 1, image_size=(96, 160), level="medium", seed=0, num_workers=1)
    image = Image.open(next((tmp_path / "images/train2017").iterdir()))
    assert image.size == (160, 96)
    assert validate_png_directory(tmp_path).ok
    with pytest.raises(ValueError, match="Unknown synthetic level 'impossible'"):
        generate_synthetic_dataset(tmp_path / "x", 1, 1, level="impossible")
    with pytest.raises(ValueError, match="at least 32 pixels"):
        generate_synthetic_dataset(tmp_path / "y", 1, 1, image_size=8)
    assert set(LEVELS) == {"easy", "medium", "hard"}
