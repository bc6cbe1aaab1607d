"""The PNG builder on real files: schema, offsets, broken directories, the mask transform, Parquet and Hub."""

from __future__ import annotations

import functools
import json
import shutil
import uuid
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from narrative_grounding.data import (
    CaptionMismatchError,
    PanopticNarrativeGroundingBuilder,
    PngDataError,
    decode_phrase_masks,
    export_parquet,
    id_to_rgb,
    load_parquet_dataset,
    load_png_dataset,
    phrase_masks_from_id_map,
    push_png_dataset_to_hub,
    rgb_to_id,
    utterance_offsets,
    validate_png_directory,
)
from narrative_grounding.data.synthetic import generate_synthetic_dataset

NUM_TRAIN, NUM_VALIDATION = 8, 4


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("png_clean")
    generate_synthetic_dataset(root, NUM_TRAIN, NUM_VALIDATION, level="hard", seed=7, num_workers=1)
    return root


@pytest.fixture
def data_dir(clean_dir, tmp_path) -> Path:
    """A private copy to break."""
    return Path(shutil.copytree(clean_dir, tmp_path / "data"))


def _narratives(root: Path, coco: str = "train2017") -> tuple[Path, list]:
    path = root / "annotations" / f"png_coco_{coco}.json"
    return path, json.loads(path.read_text())


def _grounded(record: dict) -> list[dict]:
    return [u for u in record["segments"] if u["noun"] and u["segment_ids"]]


def test_features_and_rows(clean_dir, tmp_path):
    dataset = load_png_dataset(clean_dir, cache_dir=tmp_path)
    features = dataset["train"].features
    assert isinstance(features["phrases"], datasets.List) and isinstance(
        features["segments_info"], datasets.List
    )
    assert set(features["phrases"].feature) == {
        "text", "start", "end", "segment_ids", "category_ids", "is_thing", "segment_is_thing", "plural", "num_segments",
        "expression",
    }  # fmt: skip
    assert isinstance(features["image"], datasets.Image) and isinstance(
        features["panoptic_png"], datasets.Image
    )
    _, records = _narratives(clean_dir)
    by_id = {int(r["image_id"]): r for r in records}
    for example in dataset["train"]:
        record = by_id[example["image_id"]]
        assert example["caption"] == record["caption"]
        assert [p["text"] for p in example["phrases"]] == [u["utterance"] for u in _grounded(record)]
        # The synthetic generator records each phrase's kind of expression; the builder keeps it.
        assert [p["expression"] for p in example["phrases"]] == [u["expression"] for u in _grounded(record)]
        assert {p["expression"] for p in example["phrases"]} <= {
            "attribute", "group", "position", "size", "relation", "count_position", "stuff"
        }  # fmt: skip
        for phrase in example["phrases"]:
            assert example["caption"][phrase["start"] : phrase["end"]] == phrase["text"]
            assert phrase["num_segments"] == len(phrase["segment_ids"]) == len(phrase["category_ids"])
        assert example["image"].size == (example["width"], example["height"]) == example["panoptic_png"].size


def test_only_requested_splits(clean_dir, tmp_path):
    dataset = load_png_dataset(clean_dir, splits="validation", cache_dir=tmp_path)
    assert list(dataset) == ["validation"] and dataset["validation"].num_rows == NUM_VALIDATION


def test_mixed_phrase_keeps_official_rule_and_per_segment_flags(data_dir, tmp_path):
    """A phrase over a thing and a stuff segment: is_thing follows the last segment, as the official code."""
    path, records = _narratives(data_dir)
    panoptic = json.loads((data_dir / "annotations/panoptic_train2017.json").read_text())
    things = {c["id"] for c in panoptic["categories"] if c["isthing"]}
    segments = next(a for a in panoptic["annotations"] if a["image_id"] == int(records[0]["image_id"]))[
        "segments_info"
    ]
    thing = next(s["id"] for s in segments if s["category_id"] in things)
    stuff = next(s["id"] for s in segments if s["category_id"] not in things)
    _grounded(records[0])[0]["segment_ids"] = [str(thing), str(stuff)]
    _grounded(records[0])[1]["segment_ids"] = [str(stuff), str(thing)]
    path.write_text(json.dumps(records))
    example = load_png_dataset(data_dir, splits="train", cache_dir=tmp_path)["train"][0]
    first, second = example["phrases"][:2]
    assert first["segment_is_thing"] == [True, False] and first["is_thing"] is False
    assert second["segment_is_thing"] == [False, True] and second["is_thing"] is True


def test_missing_png_is_reported_and_counted(data_dir, tmp_path):
    _, records = _narratives(data_dir)
    victim = int(records[2]["image_id"])
    (data_dir / "annotations/panoptic_train2017" / f"{victim:012d}.png").unlink()
    dataset, report = load_png_dataset(data_dir, cache_dir=tmp_path, return_report=True)
    assert dataset["train"].num_rows == NUM_TRAIN - 1 and victim not in dataset["train"]["image_id"]
    assert dataset["validation"].num_rows == NUM_VALIDATION  # the rest of the directory is untouched
    [issue] = report.issues
    assert (issue.kind, issue.image_id, issue.split) == ("missing_panoptic_png", victim, "train")
    assert f"{victim:012d}.png" in issue.message
    assert report.counts() == {"missing_panoptic_png": 1}
    assert report.splits["train"].narratives_kept == NUM_TRAIN - 1
    assert f"image {victim}" in report.format()


def test_missing_image_is_reported(data_dir):
    _, records = _narratives(data_dir, "val2017")
    victim = int(records[1]["image_id"])
    (data_dir / "images/val2017" / f"{victim:012d}.jpg").unlink()
    report = validate_png_directory(data_dir)
    assert [(i.kind, i.image_id, i.split) for i in report.issues] == [
        ("missing_image_file", victim, "validation")
    ]


def test_unknown_segment_id_drops_only_that_phrase(data_dir, tmp_path):
    path, records = _narratives(data_dir)
    victim = int(records[0]["image_id"])
    bad_phrase = _grounded(records[0])[0]
    bad_phrase["segment_ids"] = bad_phrase["segment_ids"] + ["99999999"]
    path.write_text(json.dumps(records))
    dataset, report = load_png_dataset(data_dir, splits="train", cache_dir=tmp_path, return_report=True)
    [issue] = report.issues
    assert issue.kind == "unknown_segment_id" and issue.image_id == victim
    assert "99999999" in issue.message and bad_phrase["utterance"] in issue.message
    example = next(e for e in dataset["train"] if e["image_id"] == victim)
    assert len(example["phrases"]) == len(_grounded(records[0])) - 1
    counts = report.splits["train"]
    assert counts.phrases_read - counts.phrases_kept == 1 and counts.narratives_kept == NUM_TRAIN


def test_caption_mismatch_drops_the_narrative(data_dir, tmp_path):
    path, records = _narratives(data_dir)
    victim = int(records[3]["image_id"])
    records[3]["caption"] = records[3]["caption"].replace(
        _grounded(records[3])[0]["utterance"], "a purple elephant", 1
    )
    path.write_text(json.dumps(records))
    dataset, report = load_png_dataset(data_dir, splits="train", cache_dir=tmp_path, return_report=True)
    [issue] = report.issues
    assert issue.kind == "caption_mismatch" and issue.image_id == victim
    assert "differs from the caption at character" in issue.message
    assert (
        "where the utterance has 'the'" in issue.message and "the caption has the word 'a'" in issue.message
    )
    assert dataset["train"].num_rows == NUM_TRAIN - 1


def test_truncated_json_names_file_and_position(data_dir, tmp_path):
    path = data_dir / "annotations/panoptic_val2017.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(
        PngDataError, match=r"panoptic_val2017\.json: invalid JSON at line 1, column \d+"
    ) as error:
        load_png_dataset(data_dir, cache_dir=tmp_path)
    assert "truncated" in str(error.value)
    report = validate_png_directory(data_dir)
    assert [i.kind for i in report.issues] == ["invalid_json"] and report.issues[0].split == "validation"
    assert report.splits["train"].narratives_kept == NUM_TRAIN  # the other split is still checked


def test_strict_mode_and_missing_inputs(data_dir, tmp_path):
    _, records = _narratives(data_dir)
    (data_dir / "images/train2017" / f"{int(records[0]['image_id']):012d}.jpg").unlink()
    with pytest.raises(PngDataError, match="missing_image_file"):
        load_png_dataset(data_dir, cache_dir=tmp_path, strict=True)
    with pytest.raises(PngDataError, match="No PNG split found"):
        load_png_dataset(tmp_path, cache_dir=tmp_path / "cache")
    (data_dir / "annotations/png_coco_val2017.json").unlink()
    with pytest.raises(PngDataError, match="png_coco_val2017.json"):
        load_png_dataset(data_dir, splits=["validation"], cache_dir=tmp_path / "cache2")
    report = validate_png_directory(data_dir)
    assert {i.kind for i in report.issues} == {"missing_image_file", "missing_annotation_file"}


def test_pixel_checks_of_validate(data_dir):
    _, records = _narratives(data_dir)
    victim = int(records[0]["image_id"])
    png_path = data_dir / "annotations/panoptic_train2017" / f"{victim:012d}.png"
    ids = rgb_to_id(np.asarray(Image.open(png_path)))
    ids[:4, :4] = 424242  # an id segments_info does not list
    Image.fromarray(id_to_rgb(ids)).save(png_path)
    report = validate_png_directory(data_dir)
    assert [(i.kind, i.image_id) for i in report.issues] == [("unlabelled_png_segment", victim)]
    assert validate_png_directory(data_dir, check_pixels=False).ok


def test_report_survives_the_cache(data_dir, tmp_path):
    _, records = _narratives(data_dir)
    (data_dir / "annotations/panoptic_train2017" / f"{int(records[0]['image_id']):012d}.png").unlink()
    builder = PanopticNarrativeGroundingBuilder(data_dir=str(data_dir), cache_dir=str(tmp_path))
    builder.download_and_prepare()
    again = PanopticNarrativeGroundingBuilder(data_dir=str(data_dir), cache_dir=str(tmp_path))
    again.download_and_prepare()  # cache hit: nothing is re-read
    assert again.report.to_dict() == builder.report.to_dict() and again.report.counts() == {
        "missing_panoptic_png": 1
    }


def test_utterance_offsets():
    caption = "In this picture we can see a black bear on this tree. It is big"
    offsets = utterance_offsets(
        caption, ["In this", "picture", "we can see a", "black bear", "on", "this tree", ".", "It is big"]
    )
    assert caption[slice(*offsets[3])] == "black bear" and offsets[6] == (
        caption.index("."),
        caption.index(".") + 1,
    )  # glued
    with pytest.raises(
        CaptionMismatchError,
        match="utterance 1 'cat' differs from the caption at character 8: the caption has the word "
        "'picture' where the utterance has 'cat'",
    ):
        utterance_offsets(caption, ["In this", "cat"])
    with pytest.raises(CaptionMismatchError, match="caption goes on with 'we can see"):
        utterance_offsets(caption, ["In this picture"])
    with pytest.raises(CaptionMismatchError, match="goes past the end of the caption") as error:
        utterance_offsets("A dog.", ["a dog", ".", "and a cat"])
    assert (error.value.utterance_index, error.value.utterance_word) == (2, "and")


def test_utterance_offsets_as_the_official_files_spell_them():
    """The record PPMN's pre-processing prints (image 226461): lower-cased utterances, "." on its own."""
    caption = "In this picture we can able to see a black bear on this tree."
    utterances = ["in this", "picture", "we can able to see a", "black bear", "on this", "tree", "."]
    offsets = utterance_offsets(caption, utterances)
    assert offsets == [(0, 7), (8, 15), (16, 36), (37, 47), (48, 55), (56, 60), (60, 61)]
    assert [caption[start:end] for start, end in offsets] == [
        "In this", "picture", "we can able to see a", "black bear", "on this", "tree", "."
    ]  # fmt: skip
    # A contraction split by a word tokenizer, extra spaces, and the split falling inside one utterance
    # or between two.
    caption = "We  don't see the Sky, it's CLOUDY"
    offsets = utterance_offsets(caption, ["we do n't see", "the sky", ",", "it", "'s cloudy"])
    assert [caption[start:end] for start, end in offsets] == [
        "We  don't see",
        "the Sky",
        ",",
        "it",
        "'s CLOUDY",
    ]
    # An utterance with nothing visible gets an empty span where the previous one ended.
    assert utterance_offsets("A b.", ["a", "  ", "b", "."]) == [(0, 1), (1, 1), (2, 3), (3, 4)]


def test_utterance_offsets_ignore_unicode_normalisation():
    import unicodedata

    text = "Crème brûlée near the café's façade"
    utterances = ["crème brûlée", "near", "the café", "'s façade"]
    expected = ["Crème brûlée", "near", "the café", "'s façade"]
    for caption_form, utterance_form in [("NFC", "NFD"), ("NFD", "NFC"), ("NFD", "NFD")]:
        caption = unicodedata.normalize(caption_form, text)
        offsets = utterance_offsets(caption, [unicodedata.normalize(utterance_form, u) for u in utterances])
        spans = [unicodedata.normalize("NFC", caption[start:end]) for start, end in offsets]
        assert spans == expected, (caption_form, utterance_form)
        # A span never cuts a base letter from its accent.
        assert all(not unicodedata.combining(caption[end]) for _, end in offsets if end < len(caption))
    with pytest.raises(
        CaptionMismatchError, match="the caption has the word 'café' where the utterance has 'cafe'"
    ):
        utterance_offsets("the café", ["the cafe"])  # a missing accent is a different word


def test_mask_decoding_matches_a_direct_loop():
    rng = np.random.default_rng(0)
    palette = np.array([0, 5, 70_000, 16_000_000, 1234], dtype=np.uint32)
    id_map = palette[rng.integers(0, len(palette), size=(37, 53))]
    assert (rgb_to_id(id_to_rgb(id_map)) == id_map).all()
    phrases = [[5], [70_000, 1234], [999], [], [16_000_000, 5, 70_000]]
    masks = phrase_masks_from_id_map(id_map, phrases)
    assert masks.shape == (5, 37, 53) and masks.dtype == np.uint8
    for mask, ids in zip(masks, phrases, strict=True):
        expected = np.zeros(id_map.shape, dtype=bool)
        for segment_id in ids:
            expected |= id_map == segment_id
        np.testing.assert_array_equal(mask.astype(bool), expected)
    assert phrase_masks_from_id_map(id_map, []).shape == (0, 37, 53)


def test_transform_on_batches_and_single_examples(clean_dir, tmp_path):
    dataset = load_png_dataset(clean_dir, splits="validation", cache_dir=tmp_path)["validation"]
    batch = dataset.with_transform(
        functools.partial(decode_phrase_masks, dtype=bool, keep_panoptic_png=False)
    )[:3]
    assert "panoptic_png" not in batch and len(batch["phrase_masks"]) == 3
    single = decode_phrase_masks(dataset[1])
    np.testing.assert_array_equal(single["phrase_masks"].astype(bool), batch["phrase_masks"][1])
    assert single["phrase_masks"].shape == (len(dataset[1]["phrases"]), 128, 128)
    undecoded = dataset.cast_column("panoptic_png", datasets.Image(decode=False))
    np.testing.assert_array_equal(decode_phrase_masks(undecoded[1])["phrase_masks"], single["phrase_masks"])
    with pytest.raises(KeyError, match="needs the 'panoptic_png' column"):
        decode_phrase_masks({"phrases": []})


def _assert_same_rows(left: datasets.Dataset, right: datasets.Dataset) -> None:
    assert left.num_rows == right.num_rows and left.features == right.features
    for a, b in zip(left, right, strict=True):
        for column in ("image", "panoptic_png"):
            np.testing.assert_array_equal(np.asarray(a.pop(column)), np.asarray(b.pop(column)))
        assert a == b


def test_parquet_export_round_trip(clean_dir, tmp_path):
    dataset = load_png_dataset(clean_dir, cache_dir=tmp_path / "cache", embed_files=False)
    written = export_parquet(dataset, tmp_path / "export")
    assert [Path(p).name for p in written["validation"]] == ["validation-00000-of-00001.parquet"]
    shutil.rmtree(tmp_path / "cache")  # the Parquet files must stand alone (bytes embedded)
    reloaded = load_parquet_dataset(tmp_path / "export", cache_dir=str(tmp_path / "cache2"))
    fresh = load_png_dataset(clean_dir, cache_dir=tmp_path / "cache3")
    for split in ("train", "validation"):
        _assert_same_rows(fresh[split], reloaded[split])


def test_push_to_hub_and_load_back(local_hub, clean_dir, tmp_path):
    dataset = load_png_dataset(clean_dir, cache_dir=tmp_path / "cache")
    repo_id = f"{local_hub.namespace}/png-synthetic-{uuid.uuid4().hex[:8]}"
    push_png_dataset_to_hub(dataset, repo_id, token=local_hub.token)
    pulled = datasets.load_dataset(repo_id, cache_dir=str(tmp_path / "pulled"), token=local_hub.token)
    assert set(pulled) == {"train", "validation"}
    for split in ("train", "validation"):
        _assert_same_rows(dataset[split], pulled[split])
