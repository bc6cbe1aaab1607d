"""Bad data directories, on real files: duplicate ids, corrupt images, malformed annotation files, empty
splits, and `make-synthetic` into a folder that is not empty. Each is a reported problem, never a silent
wrong pairing, a stale cache, lost data or a traceback from inside a library."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from narrative_grounding.cli import main
from narrative_grounding.data import PngDataError, load_png_dataset, validate_png_directory
from narrative_grounding.data.synthetic import generate_synthetic_dataset

NUM_TRAIN, NUM_VALIDATION = 6, 3


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("png_bad_input")
    generate_synthetic_dataset(root, NUM_TRAIN, NUM_VALIDATION, level="medium", seed=3, num_workers=1)
    return root


@pytest.fixture
def data_dir(clean_dir, tmp_path) -> Path:
    """A private copy to break."""
    return Path(shutil.copytree(clean_dir, tmp_path / "data"))


def _load(path: Path):
    return json.loads(path.read_text())


def _panoptic(root: Path, coco: str = "train2017") -> tuple[Path, dict]:
    path = root / "annotations" / f"panoptic_{coco}.json"
    return path, _load(path)


def _first_narrative_image(root: Path, coco: str = "train2017") -> int:
    return int(_load(root / "annotations" / f"png_coco_{coco}.json")[0]["image_id"])


# Duplicate ids -------------------------------------------------------------------------------------------


def test_duplicate_image_entry_is_reported_and_its_narratives_left_out(data_dir, tmp_path):
    path, panoptic = _panoptic(data_dir)
    victim = _first_narrative_image(data_dir)
    other = next(image for image in panoptic["images"] if image["id"] != victim)
    # A second entry for the victim's id that points at another picture: which one is meant is unknowable.
    panoptic["images"].append({**other, "id": victim})
    path.write_text(json.dumps(panoptic))

    report = validate_png_directory(data_dir)
    assert not report.ok and "No problems found" not in report.format()
    [issue] = report.of_kind("duplicate_id")
    assert issue.image_id == victim and issue.split == "train"
    assert other["file_name"] in issue.message and f"{victim:012d}.jpg" in issue.message
    assert "panoptic_train2017.json" in issue.file

    dataset, report = load_png_dataset(data_dir, cache_dir=tmp_path, return_report=True)
    assert victim not in dataset["train"]["image_id"]
    assert dataset["train"].num_rows == NUM_TRAIN - 1 and dataset["validation"].num_rows == NUM_VALIDATION
    assert report.counts() == {"duplicate_id": 1}
    assert report.splits["train"].narratives_kept == NUM_TRAIN - 1


def test_duplicate_annotation_segment_and_category_ids_are_reported(data_dir, tmp_path):
    path, panoptic = _panoptic(data_dir)
    victim = _first_narrative_image(data_dir)
    annotation = next(a for a in panoptic["annotations"] if a["image_id"] == victim)
    # The same image annotated twice, differently.
    panoptic["annotations"].append({**annotation, "segments_info": annotation["segments_info"][:1]})
    second = next(a for a in panoptic["annotations"] if a["image_id"] != victim)
    # One segment id listed twice, with two categories.
    second["segments_info"].append({**second["segments_info"][0], "category_id": 2})
    category = next(c for c in panoptic["categories"] if c["isthing"])
    panoptic["categories"].append({**category, "isthing": 1 - category["isthing"]})  # and a category
    path.write_text(json.dumps(panoptic))

    report = validate_png_directory(data_dir, splits=["train"], check_pixels=False)
    messages = [issue.message for issue in report.of_kind("duplicate_id")]
    assert len(messages) == 3, report.format()
    assert any("annotations" in m and str(victim) in m for m in messages)
    assert any(f"segment id {second['segments_info'][0]['id']}" in m for m in messages)
    assert any(f"category id {category['id']}" in m for m in messages)

    dataset, report = load_png_dataset(data_dir, splits="train", cache_dir=tmp_path, return_report=True)
    kept = set(dataset["train"]["image_id"])
    assert victim not in kept and second["image_id"] not in kept
    for example in dataset["train"]:  # no phrase of the ambiguous category survives
        assert all(category["id"] not in phrase["category_ids"] for phrase in example["phrases"])


def test_segment_id_repeated_in_a_phrase_is_reported(data_dir, tmp_path):
    path = data_dir / "annotations/png_coco_train2017.json"
    records = _load(path)
    phrase = next(u for u in records[1]["segments"] if u["noun"] and len(u["segment_ids"]) == 1)
    phrase["segment_ids"] = phrase["segment_ids"] * 2  # one segment, but it would count as plural
    path.write_text(json.dumps(records))
    dataset, report = load_png_dataset(data_dir, splits="train", cache_dir=tmp_path, return_report=True)
    [issue] = report.issues
    assert issue.kind == "duplicate_id" and issue.image_id == int(records[1]["image_id"])
    assert phrase["utterance"] in issue.message and phrase["segment_ids"][0] in issue.message
    example = next(e for e in dataset["train"] if e["image_id"] == int(records[1]["image_id"]))
    assert all(len(set(p["segment_ids"])) == p["num_segments"] for p in example["phrases"])


def test_identical_copies_are_reported_but_lose_nothing(data_dir, tmp_path):
    path, panoptic = _panoptic(data_dir)
    victim = _first_narrative_image(data_dir)
    panoptic["images"].append(dict(next(i for i in panoptic["images"] if i["id"] == victim)))
    annotation = next(a for a in panoptic["annotations"] if a["image_id"] == victim)
    annotation["segments_info"].append(dict(annotation["segments_info"][0]))
    path.write_text(json.dumps(panoptic))
    dataset, report = load_png_dataset(data_dir, splits="train", cache_dir=tmp_path, return_report=True)
    assert [(i.kind, i.image_id) for i in report.issues] == [("duplicate_id", victim)] * 2
    assert all("identical copies" in issue.message for issue in report.issues)
    assert dataset["train"].num_rows == NUM_TRAIN
    example = next(e for e in dataset["train"] if e["image_id"] == victim)
    assert len(example["segments_info"]) == len(annotation["segments_info"]) - 1


# Corrupt images and the Arrow cache ----------------------------------------------------------------------


def _truncate(path: Path) -> bytes:
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])
    return original


def test_validate_decodes_images_fully(data_dir):
    victim = _first_narrative_image(data_dir, "val2017")
    image = data_dir / "images/val2017" / f"{victim:012d}.jpg"
    _truncate(image)
    report = validate_png_directory(data_dir)
    assert [(i.kind, i.image_id, i.split) for i in report.issues] == [
        ("corrupt_image_file", victim, "validation")
    ]
    assert report.issues[0].file == str(image) and "truncated" in report.issues[0].message


def test_builder_leaves_out_a_corrupt_image_and_notices_the_repair(data_dir, tmp_path):
    victim = _first_narrative_image(data_dir)
    image = data_dir / "images/train2017" / f"{victim:012d}.jpg"
    original = _truncate(image)
    dataset, report = load_png_dataset(data_dir, cache_dir=tmp_path, return_report=True)
    assert victim not in dataset["train"]["image_id"] and dataset["train"].num_rows == NUM_TRAIN - 1
    [issue] = report.issues
    assert (issue.kind, issue.image_id, issue.file) == ("corrupt_image_file", victim, str(image))
    assert report.splits["train"].narratives_kept == NUM_TRAIN - 1
    for example in dataset["train"]:  # what was kept decodes
        example["image"].load()
    with pytest.raises(PngDataError, match=f"{victim:012d}.jpg"):
        load_png_dataset(data_dir, cache_dir=tmp_path / "strict", strict=True)

    image.write_bytes(original)  # repaired in place: the same cache_dir must not serve the old result
    dataset, report = load_png_dataset(data_dir, cache_dir=tmp_path, return_report=True)
    assert report.ok and dataset["train"].num_rows == NUM_TRAIN and victim in dataset["train"]["image_id"]


def test_cache_serves_the_current_image_bytes(data_dir, tmp_path):
    victim = _first_narrative_image(data_dir)
    image = data_dir / "images/train2017" / f"{victim:012d}.jpg"
    before = load_png_dataset(data_dir, splits="train", cache_dir=tmp_path)["train"]
    row = before["image_id"].index(victim)
    # Another valid picture of the same size under the same name.
    donor = data_dir / "images/train2017" / f"{int(before[(row + 1) % NUM_TRAIN]['image_id']):012d}.jpg"
    shutil.copyfile(donor, image)
    after = load_png_dataset(data_dir, splits="train", cache_dir=tmp_path)["train"]
    with Image.open(donor) as expected:
        np.testing.assert_array_equal(np.asarray(after[row]["image"]), np.asarray(expected))


def test_corrupt_panoptic_png_is_reported_by_the_builder(data_dir, tmp_path):
    victim = _first_narrative_image(data_dir)
    png = data_dir / "annotations/panoptic_train2017" / f"{victim:012d}.png"
    _truncate(png)
    dataset, report = load_png_dataset(data_dir, splits="train", cache_dir=tmp_path, return_report=True)
    assert [(i.kind, i.image_id, i.file) for i in report.issues] == [
        ("corrupt_panoptic_png", victim, str(png))
    ]
    assert dataset["train"].num_rows == NUM_TRAIN - 1
    assert [i.kind for i in validate_png_directory(data_dir, splits=["train"]).issues] == [
        "corrupt_panoptic_png"
    ]


def test_problems_found_by_writing_processes_are_reported_once(data_dir, tmp_path):
    # num_proc=2: the duplicate is found while scanning, the corrupt image by one of the writing processes.
    path, panoptic = _panoptic(data_dir)
    victim = _first_narrative_image(data_dir)
    panoptic["images"].append(dict(next(i for i in panoptic["images"] if i["id"] == victim)))
    path.write_text(json.dumps(panoptic))
    records = _load(data_dir / "annotations/png_coco_train2017.json")
    corrupt = int(records[-1]["image_id"])
    image = data_dir / "images/train2017" / f"{corrupt:012d}.jpg"
    _truncate(image)
    dataset, report = load_png_dataset(
        data_dir, splits="train", cache_dir=tmp_path / "cache", num_proc=2, return_report=True
    )
    assert sorted((i.kind, i.image_id) for i in report.issues) == [
        ("corrupt_image_file", corrupt),
        ("duplicate_id", victim),
    ]
    assert dataset["train"].num_rows == report.splits["train"].narratives_kept == NUM_TRAIN - 1
    assert corrupt not in dataset["train"]["image_id"] and victim in dataset["train"]["image_id"]
    with pytest.raises(PngDataError, match="duplicate_id"):
        load_png_dataset(data_dir, splits="train", cache_dir=tmp_path / "strict", num_proc=2, strict=True)
    path.write_text(json.dumps({**panoptic, "images": panoptic["images"][:-1]}))
    # strict=True stopped in a writing process: the error still names the file, not "an error occurred".
    with pytest.raises(PngDataError, match=f"corrupt_image_file: {image}"):
        load_png_dataset(data_dir, splits="train", cache_dir=tmp_path / "strict", num_proc=2, strict=True)


# Malformed annotation files and empty splits ------------------------------------------------------------


def test_segment_without_category_id_is_a_reported_record(data_dir, tmp_path):
    path, panoptic = _panoptic(data_dir)
    victim = _first_narrative_image(data_dir)
    index, annotation = next((i, a) for i, a in enumerate(panoptic["annotations"]) if a["image_id"] == victim)
    del annotation["segments_info"][1]["category_id"]
    path.write_text(json.dumps(panoptic))
    expected = f"annotations[{index}].segments_info[1]"

    report = validate_png_directory(data_dir, splits=["train"], check_pixels=False)
    issue = report.of_kind("invalid_panoptic_record")[0]
    assert expected in issue.message and "category_id" in issue.message and issue.image_id == victim
    assert issue.file.endswith("panoptic_train2017.json")

    dataset, report = load_png_dataset(data_dir, splits="train", cache_dir=tmp_path, return_report=True)
    assert report.counts()["invalid_panoptic_record"] == 1
    assert victim not in dataset["train"]["image_id"]  # the image's annotation cannot be trusted
    assert dataset["train"].num_rows == NUM_TRAIN - 1


def test_annotation_without_image_id_is_a_reported_record(data_dir, tmp_path, capsys):
    path, panoptic = _panoptic(data_dir, "val2017")
    victim = panoptic["annotations"][2].pop("image_id")
    path.write_text(json.dumps(panoptic))

    report = validate_png_directory(data_dir, check_pixels=False)
    [malformed] = report.of_kind("invalid_panoptic_record")
    assert "annotations[2]" in malformed.message and "image_id" in malformed.message
    # The narrative of the image that lost its annotation is reported as such.
    assert [i.image_id for i in report.of_kind("missing_panoptic_annotation")] == [victim]

    cache = tmp_path / "cache"
    assert main(["prepare-data", str(data_dir), "--cache_dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "annotations[2]" in out and f"validation: {NUM_VALIDATION - 1} examples" in out


def test_narratives_file_that_is_not_a_list(data_dir, tmp_path, capsys):
    path = data_dir / "annotations/png_coco_val2017.json"
    path.write_text(json.dumps({"narratives": _load(path)}))
    report = validate_png_directory(data_dir, check_pixels=False)
    [issue] = report.issues
    assert (
        issue.kind == "invalid_json"
        and issue.split == "validation"
        and "expected a JSON list" in issue.message
    )
    assert issue.file == str(path)
    with pytest.raises(
        PngDataError, match=r"png_coco_val2017\.json: expected a JSON list of narratives, got a dict"
    ):
        load_png_dataset(data_dir, cache_dir=tmp_path)
    assert main(["prepare-data", str(data_dir), "--cache_dir", str(tmp_path / "c")]) == 1
    assert "png_coco_val2017.json: expected a JSON list" in capsys.readouterr().err


@pytest.mark.parametrize("content", [[], "every narrative is broken"])
def test_empty_split_is_a_problem_not_a_datasets_error(data_dir, tmp_path, capsys, content):
    path = data_dir / "annotations/png_coco_val2017.json"
    if content:  # narratives that exist but none survives
        records = _load(path)
        for record in records:
            record["caption"] = "nothing like the utterances"
        content = records
    path.write_text(json.dumps(content))

    report = validate_png_directory(data_dir, check_pixels=False)
    assert not report.ok and "No problems found" not in report.format()
    [empty] = report.of_kind("empty_split")
    assert empty.split == "validation" and str(path) == empty.file

    with pytest.raises(PngDataError, match="split 'validation' has no usable narrative"):
        load_png_dataset(data_dir, splits="validation", cache_dir=tmp_path / "one")
    # With both splits, the usable one is prepared and the empty one is reported and left out.
    dataset, report = load_png_dataset(data_dir, cache_dir=tmp_path / "both", return_report=True)
    assert list(dataset) == ["train"] and dataset["train"].num_rows == NUM_TRAIN
    assert [i.split for i in report.of_kind("empty_split")] == ["validation"]

    assert (
        main(["prepare-data", str(data_dir), "--splits", "validation", "--cache_dir", str(tmp_path / "c")])
        == 1
    )
    err = capsys.readouterr().err
    assert "split 'validation' has no usable narrative" in err and "corresponds to no data" not in err


# make-synthetic into an existing folder -----------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_make_synthetic_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    precious = tmp_path / "precious"
    (precious / "annotations").mkdir(parents=True)
    (precious / "annotations/panoptic_train2017.json").write_text('{"mine": true}')
    (precious / "notes.txt").write_text("do not delete")
    before = _files(precious)
    argv = [
        "make-synthetic",
        str(precious),
        "--num_train",
        "2",
        "--num_validation",
        "1",
        "--num_workers",
        "1",
    ]
    assert main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()  # one line, as every input error of the CLI
    assert line.startswith("narrative-grounding make-synthetic: error: ") and "not empty" in line
    assert "--overwrite" in line
    assert main([*argv, "--overwrite"]) == 2  # not a synthetic dataset of ours: never touched
    assert "not a synthetic dataset" in capsys.readouterr().err
    assert _files(precious) == before
    with pytest.raises(FileExistsError, match="not empty"):
        generate_synthetic_dataset(precious, 2, 1, num_workers=1)
    (precious / "empty").mkdir()
    generate_synthetic_dataset(precious / "empty", 2, 0, num_workers=1)  # an empty folder is fine


def test_make_synthetic_overwrite_replaces_the_whole_dataset(tmp_path, capsys):
    root = tmp_path / "synthetic"
    generate_synthetic_dataset(root, 5, 2, level="easy", seed=1, num_workers=1)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_synthetic_dataset(root, 3, 0, level="easy", seed=2, num_workers=1)
    argv = ["make-synthetic", str(root), "--num_train", "3", "--num_validation", "0", "--seed", "2"]
    assert main([*argv, "--num_workers", "1", "--overwrite"]) == 0
    capsys.readouterr()
    assert len(list((root / "images/train2017").iterdir())) == 3
    assert len(list((root / "annotations/panoptic_train2017").iterdir())) == 3
    # The old validation split is gone, not left behind to be mixed with the new training split.
    assert (
        not (root / "images/val2017").exists() and not (root / "annotations/png_coco_val2017.json").exists()
    )
    assert validate_png_directory(root, splits=["train"]).ok
    assert main(["validate", str(root), "--splits", "train"]) == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_train": -1}, "num_train must be an integer >= 0, got -1"),
        ({"seed": -3}, "seed must be an integer >= 0"),
        ({"num_workers": -2}, "num_workers must be None"),
        ({"jpeg_quality": 0}, "jpeg_quality must be an integer from 1 to 100"),
        ({"image_size": (64, 64, 3)}, "image_size must be an integer S or a pair"),
    ],
)
def test_make_synthetic_settings_are_checked_before_anything_is_written(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        generate_synthetic_dataset(tmp_path / "out", **{"num_train": 2, "num_validation": 0, **options})
    assert not (tmp_path / "out").exists()
