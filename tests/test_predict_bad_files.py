"""`narrative-grounding predict` over a folder with unreadable files: each is reported, the rest predicted."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoTokenizer

from narrative_grounding import create_model
from narrative_grounding.cli import main
from narrative_grounding.commands.predict import RecordsSkippedError, register, run
from narrative_grounding.factory import variant_path
from narrative_grounding.modeling.image_processing_png import PngImageProcessor
from narrative_grounding.modeling.processing_png import PngProcessor

TOKENIZER_DIR = variant_path("epng-tiny")  # the tiny tokenizer ships in the tiny variants' folders
SIDECAR = {"narrative": "A black bear on this tree, and the sky.", "phrases": ["A black bear", "the sky"]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    create_model("epng-tiny", lpa_implementation="direct").save_pretrained(folder)
    PngProcessor(
        PngImageProcessor(size={"height": 64, "width": 64}), AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    ).save_pretrained(folder)
    return folder


def _predict(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return run(parser.parse_args(["predict", *argv]))


def _picture(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path, quality=95)


def test_folder_goes_on_past_unreadable_files(model_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for stem, seed in (("a", 0), ("b", 1), ("c", 2), ("d", 3), ("e", 4)):
        _picture(images / f"{stem}.jpg", seed)
        (images / f"{stem}.json").write_text(json.dumps(SIDECAR))
    truncated = (images / "b.jpg").read_bytes()
    (images / "b.jpg").write_bytes(truncated[: len(truncated) // 2])  # a broken download
    (images / "d.json").write_text('{"narrative": "cut short')  # a sidecar that is not JSON
    (images / "e.json").unlink()  # an image without its sidecar
    out = tmp_path / "out"
    argv = ["--model", str(model_dir), "--input", str(images), "--output", str(out), "--no_overlay"]

    with pytest.raises(RecordsSkippedError) as raised:
        _predict(argv)
    # Everything readable was predicted, in order, past the unreadable files.
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == ["a", "c"] and raised.value.written == ["a", "c"]
    assert all(len(line["masks"]) == 2 for line in lines)
    # Each skipped file is named with its reason, in the error, on stderr and in skipped.jsonl.
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [item["id"] for item in skipped] == ["b", "d", "e"] == [i["id"] for i in raised.value.skipped]
    message = str(raised.value)
    assert message.startswith(
        "3 of 5 record(s) could not be read and were skipped; the other 2 prediction(s)"
    )
    assert "b.jpg" in message and "truncated" in message
    assert "d.json: not valid JSON" in message and "e.png" not in message and "has no e.json" in message
    assert "predict: skipped record b" in capsys.readouterr().err

    # Once the files are repaired, the same command writes every prediction and no stale skipped list.
    (images / "b.jpg").write_bytes(truncated)
    (images / "d.json").write_text(json.dumps(SIDECAR))
    (images / "e.json").write_text(json.dumps(SIDECAR))
    assert _predict(argv) == 0
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b", "c", "d", "e"]
    assert not (out / "skipped.jsonl").exists()


def test_cli_reports_skipped_records_in_one_line(model_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for stem, seed in (("a", 0), ("b", 1)):
        _picture(images / f"{stem}.jpg", seed)
    (images / "a.json").write_text(json.dumps(SIDECAR))
    (images / "b.json").write_text(json.dumps({**SIDECAR, "phrases": ["a purple cow"]}))
    out = tmp_path / "out"
    argv = ["predict", "--model", str(model_dir), "--input", str(images), "--output", str(out)]
    assert main([*argv, "--no_overlay"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    # The skipped record and the summary, as one line, like every other bad input of the CLI.
    assert len(errors) == 1 and errors[0].startswith(
        "narrative-grounding predict: error: 1 of 2 record(s) could not be read and were skipped"
    )
    assert "a purple cow" in errors[0] and str(out / "skipped.jsonl") in errors[0]
    assert [json.loads(line)["id"] for line in (out / "predictions.jsonl").read_text().splitlines()] == ["a"]
