"""The builder on files written the way the official PNG release writes them.

The records follow the official ``png_coco_*.json`` (ids as strings, lower-cased utterances, punctuation as
its own utterance, contractions split by a word tokenizer, ``noun``/``plural`` flags) and COCO's panoptic
json (``info``, ``licenses``, integer ids, ``isthing`` categories); the first record is the one PPMN's
pre-processing prints (image 226461). The panoptic PNGs go where the PNG README puts them
(``annotations/panoptic_segmentation/<split>/``) or where COCO's zip unpacks them
(``annotations/panoptic_<split>/``).
"""

from __future__ import annotations

import functools
import json
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from narrative_grounding import load_processor
from narrative_grounding.data import (
    PngDataError,
    decode_phrase_masks,
    id_to_rgb,
    load_png_dataset,
    validate_png_directory,
)
from narrative_grounding.data.json_stream import iter_json_list, iter_json_members
from narrative_grounding.training.collate import PngCollator

CATEGORIES = [
    {"supercategory": "person", "isthing": 1, "id": 1, "name": "person"},
    {"supercategory": "animal", "isthing": 1, "id": 23, "name": "bear"},
    {"supercategory": "building", "isthing": 0, "id": 128, "name": "house"},
    {"supercategory": "ground", "isthing": 0, "id": 149, "name": "road"},
    {"supercategory": "plant", "isthing": 0, "id": 184, "name": "tree-merged"},
    {"supercategory": "sky", "isthing": 0, "id": 187, "name": "sky-other-merged"},
    {"supercategory": "plant", "isthing": 0, "id": 193, "name": "grass-merged"},
]

# split -> image id -> (height, width, {segment id: (category id, (row0, row1, col0, col1))})
IMAGES = {
    "train2017": {
        226461: (32, 48, {1648163: (23, (4, 20, 6, 22)), 3165766: (184, (0, 32, 30, 48))}),
        139: (30, 40, {1001: (1, (10, 28, 2, 10)), 1002: (1, (12, 28, 12, 19)), 2001: (128, (0, 14, 20, 40)),
                       3001: (149, (28, 30, 0, 40))}),
    },
    "val2017": {
        5000: (24, 36, {7001: (187, (0, 10, 0, 36)), 7002: (193, (10, 24, 0, 36))}),
    },
}  # fmt: skip


def _utterance(text: str, *segment_ids: int, noun: bool | None = None, plural: bool = False) -> dict:
    return {
        "utterance": text,
        "segment_ids": [str(s) for s in segment_ids],  # strings, as in the official files
        "plural": plural,
        "noun": bool(segment_ids) if noun is None else noun,
    }


# The second narrative spells "café" decomposed (NFD) in the caption and composed (NFC) in the utterance.
NARRATIVES = {
    "train2017": [
        {
            "image_id": "226461",
            "annotator_id": 36,
            "caption": "In this picture we can able to see a black bear on this tree.",
            "segments": [
                _utterance("in this"),
                _utterance("picture", noun=True),
                _utterance("we can able to see a"),
                _utterance("black bear", 1648163),
                _utterance("on this"),
                _utterance("tree", 3165766),
                _utterance("."),
            ],
        },
        {
            "image_id": "139",
            "annotator_id": 7,
            "caption": unicodedata.normalize("NFD", "A man and a woman don't  stand near the café."),
            "segments": [
                _utterance("a man", 1001),
                _utterance("and"),
                _utterance("a woman", 1002),
                _utterance("do n't stand near"),
                _utterance("the café", 2001),
                _utterance("."),
            ],
        },
        {
            "image_id": "139",
            "annotator_id": 12,
            "caption": "In this image there are two persons, they are standing on the road.",
            "segments": [
                _utterance("in this"),
                _utterance("image", noun=True),
                _utterance("there are"),
                _utterance("two persons", 1001, 1002, plural=True),
                _utterance(","),
                _utterance("they are standing on"),
                _utterance("the road", 3001),
                _utterance("."),
            ],
        },
    ],
    "val2017": [
        {
            "image_id": "5000",
            "annotator_id": 3,
            "caption": "The sky is blue and the grass is green.",
            "segments": [
                _utterance("the sky", 7001),
                _utterance("is blue and"),
                _utterance("the grass", 7002),
                _utterance("is green"),
                _utterance("."),
            ],
        },
        {  # grounds nothing: skipped as by the official loaders, not a data problem
            "image_id": "5000",
            "annotator_id": 4,
            "caption": "We can't see any animal here.",
            "segments": [
                _utterance("we ca n't see"),
                _utterance("any animal", noun=True),
                _utterance("here ."),
            ],
        },
    ],
}

# What the builder must produce: (image id, caption phrase texts, their segment ids), in file order.
EXPECTED = {
    "train": [
        (226461, ["black bear", "tree"], [[1648163], [3165766]]),
        (139, ["A man", "a woman", unicodedata.normalize("NFD", "the café")], [[1001], [1002], [2001]]),
        (139, ["two persons", "the road"], [[1001, 1002], [3001]]),
    ],
    "validation": [(5000, ["The sky", "the grass"], [[7001], [7002]])],
}


def _id_map(height: int, width: int, segments: dict) -> np.ndarray:
    ids = np.zeros((height, width), dtype=np.uint32)  # H x W, 0 = unlabelled
    for segment_id, (_, (r0, r1, c0, c1)) in segments.items():
        ids[r0:r1, c0:c1] = segment_id
    return ids


def _write_official(root: Path) -> Path:
    annotations = root / "annotations"
    for coco, images in IMAGES.items():
        (root / "images" / coco).mkdir(parents=True)
        png_dir = annotations / "panoptic_segmentation" / coco
        png_dir.mkdir(parents=True)
        panoptic = {
            "info": {"description": "COCO 2018 Panoptic Dataset", "version": "1.0", "year": 2018},
            "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "BY-NC-SA"}],
            "images": [],
            "annotations": [],
            "categories": CATEGORIES,
        }  # fmt: skip
        for image_id, (height, width, segments) in images.items():
            name = f"{image_id:012d}"
            ids = _id_map(height, width, segments)
            Image.fromarray(id_to_rgb(ids)).save(png_dir / f"{name}.png")
            rgb = np.random.default_rng(image_id).integers(0, 255, (height, width, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(root / "images" / coco / f"{name}.jpg", quality=90)
            panoptic["images"].append(
                {"license": 1, "file_name": f"{name}.jpg", "coco_url": "", "height": height, "width": width,
                 "date_captured": "2013-11-14 16:28:13", "flickr_url": "", "id": image_id}
            )  # fmt: skip
            panoptic["annotations"].append(
                {
                    "segments_info": [
                        {"id": sid, "category_id": category, "iscrowd": 0, "bbox": [c0, r0, c1 - c0, r1 - r0],
                         "area": (r1 - r0) * (c1 - c0)}
                        for sid, (category, (r0, r1, c0, c1)) in segments.items()
                    ],
                    "file_name": f"{name}.png",
                    "image_id": image_id,
                }
            )  # fmt: skip
        (annotations / f"panoptic_{coco}.json").write_text(json.dumps(panoptic))
        # The official narratives file is one line of JSON with non-ASCII characters escaped.
        (annotations / f"png_coco_{coco}.json").write_text(json.dumps(NARRATIVES[coco]))
    return root


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory) -> Path:
    return _write_official(tmp_path_factory.mktemp("png_official"))


def _as_coco_layout(official_dir: Path, tmp_path: Path) -> Path:
    root = Path(shutil.copytree(official_dir, tmp_path / "coco_layout"))
    for coco in IMAGES:
        (root / "annotations" / "panoptic_segmentation" / coco).rename(
            root / "annotations" / f"panoptic_{coco}"
        )
    (root / "annotations" / "panoptic_segmentation").rmdir()
    return root


@pytest.mark.parametrize("layout", ["png_readme", "coco_zip"])
def test_no_well_formed_narrative_is_left_out(official_dir, tmp_path, layout):
    root = official_dir if layout == "png_readme" else _as_coco_layout(official_dir, tmp_path)
    dataset, report = load_png_dataset(root, cache_dir=tmp_path / "cache", return_report=True)
    assert report.ok, str(report)
    assert {split: vars(counts) for split, counts in report.splits.items()} == {
        "train": {"narratives_read": 3, "narratives_kept": 3, "narratives_without_phrases": 0,
                  "phrases_read": 7, "phrases_kept": 7},
        "validation": {"narratives_read": 2, "narratives_kept": 1, "narratives_without_phrases": 1,
                       "phrases_read": 2, "phrases_kept": 2},
    }  # fmt: skip
    for split, expected in EXPECTED.items():
        rows = dataset[split]
        assert [(row["image_id"], [p["text"] for p in row["phrases"]]) for row in rows] == [
            (image_id, texts) for image_id, texts, _ in expected
        ]
        for row, (_, _, segment_ids) in zip(rows, expected, strict=True):
            assert [p["segment_ids"] for p in row["phrases"]] == segment_ids
            for phrase in row["phrases"]:
                assert row["caption"][phrase["start"] : phrase["end"]] == phrase["text"]
    # The split contraction and the double space are the caption's own.
    assert dataset["train"][1]["caption"].startswith("A man and a woman don't  stand")
    assert [p["is_thing"] for p in dataset["train"][2]["phrases"]] == [True, False]
    assert [p["plural"] for p in dataset["train"][2]["phrases"]] == [True, False]
    # The official files record no kind of expression: the optional field is None.
    assert {p["expression"] for row in dataset["train"] for p in row["phrases"]} == {None}
    assert validate_png_directory(root).ok


@pytest.mark.parametrize("layout", ["png_readme", "coco_zip"])
def test_decoded_phrase_masks_equal_the_segments(official_dir, tmp_path, layout):
    root = official_dir if layout == "png_readme" else _as_coco_layout(official_dir, tmp_path)
    dataset = load_png_dataset(root, cache_dir=tmp_path / "cache")
    coco_of = {"train": "train2017", "validation": "val2017"}
    for split, rows in dataset.items():
        decoded = rows.with_transform(functools.partial(decode_phrase_masks, dtype=bool))
        for index, (image_id, _, phrase_segments) in enumerate(EXPECTED[split]):
            height, width, segments = IMAGES[coco_of[split]][image_id]
            expected = np.zeros((len(phrase_segments), height, width), dtype=bool)  # P x H x W
            for phrase, segment_ids in enumerate(phrase_segments):
                for segment_id in segment_ids:
                    r0, r1, c0, c1 = segments[segment_id][1]
                    expected[phrase, r0:r1, c0:c1] = True
            np.testing.assert_array_equal(decoded[index]["phrase_masks"], expected)


def test_collated_phrase_tokens_are_the_phrases(official_dir, tmp_path):
    # The caption offsets reach the model's inputs exactly: through the training collator, each phrase's
    # tokens are those of its caption text (the tiny tokenizer lower-cases and strips accents, so the NFD
    # "the café" reads "the cafe"), and its mask is the decoded ground truth.
    dataset = load_png_dataset(official_dir, splits="train", cache_dir=tmp_path / "cache")
    processor = load_processor("epng-tiny")
    batch = PngCollator(processor, with_references=True)(list(dataset["train"]))
    expected = [["black bear", "tree"], ["a man", "a woman", "the cafe"], ["two persons", "the road"]]
    for sample, phrases in enumerate(expected):
        tokens = [
            processor.tokenizer.decode(batch["input_ids"][sample][mask.bool()])
            for mask in batch["phrase_token_mask"][sample][: len(phrases)]
        ]
        assert tokens == phrases
        assert batch["phrase_mask"][sample].tolist() == [1] * len(phrases) + [0] * (3 - len(phrases))
    height, width, segments = IMAGES["train2017"][139]
    np.testing.assert_array_equal(
        batch["reference_masks"][2][0].numpy(),  # "two persons": the union of both people
        np.isin(_id_map(height, width, segments), [1001, 1002]),
    )


def test_neither_layout_names_both_folders(official_dir, tmp_path):
    root = Path(shutil.copytree(official_dir, tmp_path / "data"))
    shutil.rmtree(root / "annotations" / "panoptic_segmentation" / "val2017")
    with pytest.raises(PngDataError) as error:
        load_png_dataset(root, cache_dir=tmp_path / "cache")
    message = str(error.value)
    assert str(root / "annotations" / "panoptic_segmentation" / "val2017") in message
    assert str(root / "annotations" / "panoptic_val2017") in message
    report = validate_png_directory(root)
    [issue] = report.issues
    assert issue.split == "validation" and "panoptic_val2017" in issue.message
    assert report.splits["train"].narratives_kept == 3  # the other split is still checked


def test_both_layouts_at_once_lose_nothing(official_dir, tmp_path):
    # A move between layouts left half done: train's PNGs split over both folders, val2017's folder of the
    # PNG README's layout created but empty beside the full one of COCO's.
    root = _as_coco_layout(official_dir, tmp_path)
    annotations = root / "annotations"
    for coco in IMAGES:
        (annotations / "panoptic_segmentation" / coco).mkdir(parents=True)
    moved = annotations / "panoptic_segmentation" / "train2017" / "000000226461.png"
    (annotations / "panoptic_train2017" / moved.name).rename(moved)
    dataset, report = load_png_dataset(root, cache_dir=tmp_path / "cache", return_report=True)
    assert report.ok, str(report)
    assert {split: rows.num_rows for split, rows in dataset.items()} == {"train": 3, "validation": 1}
    decoded = dataset["train"].with_transform(functools.partial(decode_phrase_masks, dtype=bool))
    height, width, segments = IMAGES["train2017"][226461]
    np.testing.assert_array_equal(
        decoded[0]["phrase_masks"],
        np.stack([_id_map(height, width, segments) == segment_id for segment_id in (1648163, 3165766)]),
    )
    # A PNG in neither folder: the report names both places it was looked for.
    (annotations / "panoptic_val2017" / "000000005000.png").unlink()
    report = validate_png_directory(root)
    assert report.counts() == {"missing_panoptic_png": 2, "empty_split": 1}  # both of image 5000's narratives
    issue = report.issues[0]
    assert (issue.split, issue.image_id) == ("validation", 5000) and issue.message.endswith(
        f"neither {annotations / 'panoptic_segmentation' / 'val2017' / '000000005000.png'} nor "
        f"{annotations / 'panoptic_val2017' / '000000005000.png'} exists"
    )


def test_a_real_difference_names_the_first_differing_word(official_dir, tmp_path):
    root = Path(shutil.copytree(official_dir, tmp_path / "data"))
    path = root / "annotations" / "png_coco_train2017.json"
    records = json.loads(path.read_text())
    records[0]["segments"][3]["utterance"] = "brown bear"
    path.write_text(json.dumps(records))
    dataset, report = load_png_dataset(root, splits="train", cache_dir=tmp_path / "cache", return_report=True)
    [issue] = report.issues
    assert (issue.kind, issue.image_id) == ("caption_mismatch", 226461)
    assert "the caption has the word 'black' where the utterance has 'brown'" in issue.message
    assert dataset["train"]["image_id"] == [139, 139]


def test_num_proc_writes_the_same_rows_and_report(official_dir, tmp_path):
    root = Path(shutil.copytree(official_dir, tmp_path / "data"))
    path = root / "annotations" / "png_coco_val2017.json"
    records = json.loads(path.read_text())
    records[0]["segments"][2]["segment_ids"] = ["424242"]  # reported by the scan, the phrase left out
    path.write_text(json.dumps(records))
    one, report_one = load_png_dataset(root, cache_dir=tmp_path / "one", return_report=True)
    two, report_two = load_png_dataset(root, cache_dir=tmp_path / "two", return_report=True, num_proc=2)
    assert len(two["train"].cache_files) == 2  # two processes wrote one Arrow file each
    assert report_one.to_dict() == report_two.to_dict()
    assert report_one.counts() == {"unknown_segment_id": 1}
    for split in one:
        assert one[split].num_rows == two[split].num_rows
        for a, b in zip(one[split], two[split], strict=True):
            for column in ("image", "panoptic_png"):
                np.testing.assert_array_equal(np.asarray(a.pop(column)), np.asarray(b.pop(column)))
            assert a == b


def test_streamed_json_equals_json_load(tmp_path, monkeypatch):
    """Values cut by every possible chunk boundary (numbers included) parse as json.load parses them."""
    from narrative_grounding.data import json_stream

    records = NARRATIVES["train2017"] + [{"n": 12345678901234567890, "x": -1.5e-7, "ok": True, "none": None}]
    list_path = tmp_path / "list.json"
    list_path.write_text(json.dumps(records, indent=1, ensure_ascii=False))
    panoptic = {"info": {"a": [1, 2]}, "images": [{"id": i} for i in range(5)], "categories": CATEGORIES}
    object_path = tmp_path / "object.json"
    object_path.write_text(json.dumps(panoptic))
    for chunk in (1, 2, 3, 7, 64):
        monkeypatch.setattr(json_stream, "_CHUNK_CHARS", chunk)
        assert list(iter_json_list(list_path)) == records
        members = list(iter_json_members(object_path, streamed=("images",)))
        assert members[0] == ("info", None, {"a": [1, 2]})
        assert [m[2] for m in members if m[0] == "images"] == panoptic["images"]
        assert [m[1] for m in members if m[0] == "images"] == list(range(5))
        assert members[-1] == ("categories", None, CATEGORIES)


def test_streamed_json_errors_name_file_line_and_column(tmp_path, monkeypatch):
    from narrative_grounding.data import json_stream

    monkeypatch.setattr(json_stream, "_CHUNK_CHARS", 16)
    path = tmp_path / "png_coco_val2017.json"
    text = json.dumps(NARRATIVES["val2017"], indent=1)
    path.write_text(text[: len(text) // 2])
    with pytest.raises(PngDataError, match=r"png_coco_val2017\.json: invalid JSON at line \d+") as error:
        list(iter_json_list(path))
    assert "looks truncated" in str(error.value)
    broken = text.replace('"annotator_id": 4', '"annotator_id" 4')
    path.write_text(broken)
    line = broken[: broken.index('"annotator_id" 4')].count("\n") + 1
    column = broken.index('"annotator_id" 4') - broken.rfind("\n", 0, broken.index('"annotator_id" 4'))
    with pytest.raises(
        PngDataError, match=rf"invalid JSON at line {line}, column {column + 15} .*Expecting ':'"
    ):
        list(iter_json_list(path))
    path.write_text('{"images": []}')
    with pytest.raises(
        PngDataError, match=r"expected a JSON list of narratives, got a dict \(the file starts with '\{'\)"
    ):
        list(iter_json_list(path))


def test_panoptic_index_names_the_bad_entry(official_dir, tmp_path):
    root = Path(shutil.copytree(official_dir, tmp_path / "data"))
    path = root / "annotations" / "panoptic_val2017.json"
    panoptic = json.loads(path.read_text())
    del panoptic["images"][0]["id"]
    path.write_text(json.dumps(panoptic))
    # The streamed index reports the entry with its position and goes on: the split is read to its end.
    dataset, report = load_png_dataset(root, cache_dir=tmp_path / "cache", return_report=True)
    [malformed] = report.of_kind("invalid_panoptic_record")
    assert malformed.file == str(path) and malformed.message.startswith("images[0] has no 'id'")
    # Its narratives have no image entry left: validation keeps none and is left out, train is prepared.
    assert {issue.image_id for issue in report.of_kind("missing_image_entry")} == {5000}
    assert [issue.split for issue in report.of_kind("empty_split")] == ["validation"]
    assert list(dataset) == ["train"] and dataset["train"].num_rows == report.splits["train"].narratives_kept
    with pytest.raises(PngDataError, match="split 'validation' has no usable narrative"):
        load_png_dataset(root, splits="validation", cache_dir=tmp_path / "cache")
    del panoptic["categories"]
    panoptic["images"][0]["id"] = 5000
    path.write_text(json.dumps(panoptic))
    with pytest.raises(
        PngDataError, match=r"needs 'images', 'annotations' and 'categories' lists; \['categories'\]"
    ):
        load_png_dataset(root, splits="validation", cache_dir=tmp_path / "cache")
    report = validate_png_directory(root, ["validation"])
    assert [issue.kind for issue in report.issues] == ["invalid_json"]


def test_grounded_utterance_without_text_or_with_a_bad_expression(official_dir, tmp_path):
    root = Path(shutil.copytree(official_dir, tmp_path / "data"))
    path = root / "annotations" / "png_coco_train2017.json"
    records = json.loads(path.read_text())
    records[0]["segments"].insert(4, _utterance("  ", 1648163))  # grounded, but nothing to read
    records[1]["segments"][0]["expression"] = 3  # the optional field, with a wrong type
    path.write_text(json.dumps(records))
    dataset, report = load_png_dataset(root, splits="train", cache_dir=tmp_path / "cache", return_report=True)
    assert [(issue.kind, issue.image_id) for issue in report.issues] == [
        ("invalid_record", 226461),
        ("invalid_record", 139),
    ]
    assert "segments[4] is a grounded phrase with no text" in report.issues[0].message
    assert "segments[0]['expression'] must be a string" in report.issues[1].message
    assert dataset["train"].num_rows == 1
