"""The "panoptic-narrative-grounding" pipeline and `narrative-grounding predict` on real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoTokenizer, pipeline

import narrative_grounding.pipeline  # noqa: F401  (registers the task)
from narrative_grounding import create_model
from narrative_grounding.cli import main
from narrative_grounding.commands.predict import RecordsSkippedError
from narrative_grounding.factory import variant_path
from narrative_grounding.modeling.image_processing_png import PngImageProcessor
from narrative_grounding.modeling.processing_png import PngProcessor, rle_to_mask

TOKENIZER_DIR = variant_path("epng-tiny")  # the tiny tokenizer ships in the tiny variants' folders
NARRATIVE = "In this picture we can see a black bear on this tree, and the sky."
PHRASES = ["a black bear", "this tree", "the sky"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, object, PngProcessor]:
    """A tiny random model saved with its processor, as a trained one would be."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = create_model("epng-tiny", lpa_implementation="direct").eval()
    processor = PngProcessor(
        PngImageProcessor(size={"height": 64, "width": 64}), AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


def picture(height: int = 48, width: int = 80, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_pipeline_with_model_object_and_with_a_saved_folder(saved) -> None:
    folder, model, processor = saved
    image = picture()
    with_objects = pipeline("panoptic-narrative-grounding", model=model, processor=processor)
    result = with_objects(image, NARRATIVE, PHRASES)
    assert set(result) == {"masks", "scores", "phrases", "spans"}
    assert result["masks"].shape == (3, 48, 80) and result["masks"].dtype == torch.bool
    assert result["phrases"] == PHRASES and result["spans"][0] == (27, 39)
    # the same as the processor + model by hand
    inputs = processor(images=image, text=NARRATIVE, phrases=PHRASES)
    with torch.no_grad():
        expected = processor.post_process_panoptic_narrative_grounding(model(**inputs), inputs=inputs)[0]
    assert torch.equal(result["masks"], expected["masks"]) and torch.allclose(
        result["scores"], expected["scores"]
    )

    from_folder = pipeline("panoptic-narrative-grounding", model=str(folder))
    records = [
        {"image": image, "narrative": NARRATIVE, "phrases": PHRASES},
        {"image": picture(80, 40, seed=1), "narrative": "Two cats sleep.", "phrases": ["Two cats"]},
    ]
    results = from_folder(records, threshold=0.5, return_rle=True)
    assert len(results) == 2
    assert np.array_equal(rle_to_mask(results[0]["masks"][0]), expected["masks"][0].numpy())
    assert results[1]["phrases"] == ["Two cats"] and results[1]["masks"][0]["size"] == [80, 40]


def test_pipeline_errors(saved) -> None:
    _, model, processor = saved
    grounder = pipeline("panoptic-narrative-grounding", model=model, processor=processor)
    with pytest.raises(ValueError, match="phrase 0 'a panda' not found"):
        grounder(picture(), NARRATIVE, ["a panda"])
    with pytest.raises(ValueError, match="lacks the field"):
        grounder({"image": picture(), "narrative": NARRATIVE})
    with pytest.raises(ValueError, match="no processor"):
        pipeline("panoptic-narrative-grounding", model=create_model("epng-tiny"))


def test_pipeline_mask_decision_option(saved) -> None:
    _, model, processor = saved
    grounder = pipeline("panoptic-narrative-grounding", model=model, processor=processor)
    image = picture()
    inputs = processor(images=image, text=NARRATIVE, phrases=PHRASES)
    with torch.no_grad():
        outputs = model(**inputs)
    for decision in ("threshold", "expected_iou"):
        expected = processor.post_process_panoptic_narrative_grounding(
            outputs, inputs=inputs, mask_decision=decision
        )[0]
        result = grounder(image, NARRATIVE, PHRASES, mask_decision=decision)
        assert torch.equal(result["masks"], expected["masks"]), decision
    assert grounder(image, NARRATIVE, PHRASES, mask_decision="expected_iou")["masks"].flatten(1).any(-1).all()
    with pytest.raises(ValueError, match="mask_decision must be one of"):
        grounder(image, NARRATIVE, PHRASES, mask_decision="best")


def predict(argv: list[str]) -> int:
    return main(["predict", *argv])


def test_predict_one_image_png_masks_and_overlay(saved, tmp_path) -> None:
    folder, _, _ = saved
    picture().save(tmp_path / "bear.jpg")
    out = tmp_path / "out"
    argv = ["--model", str(folder), "--image", str(tmp_path / "bear.jpg"), "--output", str(out)]
    assert predict([*argv, "--narrative", NARRATIVE, "--phrases", *PHRASES]) == 0
    (line,) = (out / "predictions.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["id"] == "bear" and record["phrases"] == PHRASES and len(record["scores"]) == 3
    for name in record["masks"]:
        mask = PIL.Image.open(out / name)
        assert mask.size == (80, 48) and set(np.unique(np.asarray(mask))) <= {0, 255}
    overlay = PIL.Image.open(out / "overlays" / "bear.png")
    assert overlay.width == 80 and overlay.height > 48
    # the expected-IoU decision never leaves a phrase without a mask
    decided = tmp_path / "decided"
    argv = [*argv[:-1], str(decided), "--mask_decision", "expected_iou", "--no_overlay"]
    assert predict([*argv, "--narrative", NARRATIVE, "--phrases", *PHRASES]) == 0
    record = json.loads((decided / "predictions.jsonl").read_text())
    assert all(np.asarray(PIL.Image.open(decided / name)).any() for name in record["masks"])


@pytest.mark.slow
def test_predict_fast_gives_the_same_masks(saved, tmp_path) -> None:
    folder, _, _ = saved
    picture().save(tmp_path / "bear.jpg")
    argv = ["--model", str(folder), "--image", str(tmp_path / "bear.jpg"), "--format", "rle", "--no_overlay"]
    argv += ["--narrative", NARRATIVE, "--phrases", *PHRASES]
    assert predict([*argv, "--output", str(tmp_path / "eager")]) == 0
    assert predict([*argv, "--output", str(tmp_path / "fast"), "--fast"]) == 0
    eager, fast = (
        json.loads((tmp_path / name / "predictions.jsonl").read_text()) for name in ("eager", "fast")
    )
    assert fast["masks"] == eager["masks"]
    np.testing.assert_allclose(fast["scores"], eager["scores"], atol=1e-5)


def test_predict_jsonl_and_folder_with_rle(saved, tmp_path) -> None:
    folder, _, _ = saved
    images = tmp_path / "images"
    images.mkdir()
    picture().save(images / "a.png")
    picture(64, 40, seed=2).save(images / "b.jpg")
    (images / "a.json").write_text(json.dumps({"narrative": NARRATIVE, "phrases": PHRASES}))
    (images / "b.json").write_text(json.dumps({"narrative": "A cat on a mat.", "phrases": [[0, 5], "a mat"]}))
    lines = [
        {"id": "first", "image": "images/a.png", "narrative": NARRATIVE, "phrases": PHRASES},
        {"id": "second", "image": "images/b.jpg", "caption": "A cat on a mat.", "phrases": ["A cat"]},
    ]
    (tmp_path / "records.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    for source, ids in ((tmp_path / "records.jsonl", ["first", "second"]), (images, ["a", "b"])):
        out = tmp_path / f"out-{source.stem}"
        argv = ["--model", str(folder), "--input", str(source), "--output", str(out), "--format", "rle"]
        assert predict([*argv, "--no_overlay"]) == 0
        records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        assert [record["id"] for record in records] == ids
        assert rle_to_mask(records[1]["masks"][0]).shape == (64, 40)
        assert not (out / "overlays").exists()


def test_predict_reports_bad_records(saved, tmp_path, capsys) -> None:
    folder, _, _ = saved
    picture().save(tmp_path / "a.png")
    (tmp_path / "records.jsonl").write_text(
        json.dumps({"image": "a.png", "narrative": NARRATIVE, "phrases": PHRASES}) + "\n{broken\n"
    )
    argv = [
        "--model",
        str(folder),
        "--input",
        str(tmp_path / "records.jsonl"),
        "--output",
        str(tmp_path / "o"),
    ]
    # The CLI prints one line and exits 2; --debug raises the exception instead.
    assert predict(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert (
        line.startswith("narrative-grounding predict: error: ") and "records.jsonl:2: not valid JSON" in line
    )
    with pytest.raises(ValueError, match=r"records.jsonl:2: not valid JSON"):
        main(["--debug", "predict", *argv])
    (tmp_path / "records.jsonl").write_text(
        json.dumps({"image": "a.png", "narrative": NARRATIVE, "phrases": ["x y"]})
    )
    # A phrase not in its narrative is the record's own problem: skipped, listed, and the run fails.
    with pytest.raises(RecordsSkippedError, match=r"(?s)1 of 1 record.*record a .*phrase 0 'x y' not found"):
        main(["--debug", "predict", *argv])
    assert (tmp_path / "o" / "skipped.jsonl").is_file()
    (tmp_path / "records.jsonl").write_text(
        json.dumps({"image": "missing.png", "narrative": "a", "phrases": ["a"]})
    )
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        main(["--debug", "predict", *argv])
    with pytest.raises(ValueError, match="--image needs --narrative and --phrases"):
        main(
            [
                "--debug",
                "predict",
                "--model",
                str(folder),
                "--image",
                str(tmp_path / "a.png"),
                "--output",
                str(tmp_path / "o"),
            ]
        )
