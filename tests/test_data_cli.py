"""``narrative-grounding make-synthetic | validate | prepare-data``, run in-process through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from narrative_grounding.cli import main


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_synthetic")
    argv = [
        "make-synthetic",
        str(root),
        "--num-train",
        "6",
        "--num-validation",
        "3",
        "--level",
        "easy",
        "--seed",
        "2",
    ]
    assert main(argv + ["--num-workers", "1"]) == 0
    return root


def test_make_synthetic_prints_statistics(tmp_path, capsys):
    argv = [
        "make-synthetic",
        str(tmp_path),
        "--num-train",
        "5",
        "--num-validation",
        "2",
        "--image-size",
        "64",
        "96",
    ]
    assert main(argv + ["--level", "hard", "--seed", "1", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["image_size"] == [64, 96] and stats["level"] == "hard"
    assert stats["splits"]["train"]["images"] == 5 and stats["splits"]["validation"]["images"] == 2
    for key in ("things", "stuff", "singular", "plural"):
        assert key in stats["splits"]["train"]
    assert len(list((tmp_path / "images/val2017").glob("*.jpg"))) == 2
    assert main(["make-synthetic", str(tmp_path / "bad"), "--level", "nonsense"]) == 2
    assert "Unknown synthetic level 'nonsense'" in capsys.readouterr().err


def test_make_synthetic_text_output(synthetic_dir, capsys):
    assert (
        main(["make-synthetic", str(synthetic_dir / "again"), "--num-train", "4", "--num-validation", "0"])
        == 0
    )
    out = capsys.readouterr().out
    assert "train: 4 images" in out and "things" in out and "plural" in out


def test_validate_clean_and_broken(synthetic_dir, tmp_path, capsys):
    assert main(["validate", str(synthetic_dir)]) == 0
    assert "No problems found." in capsys.readouterr().out
    records = json.loads((synthetic_dir / "annotations/png_coco_val2017.json").read_text())
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(synthetic_dir, broken)
    victim = int(records[0]["image_id"])
    (broken / "annotations/panoptic_val2017" / f"{victim:012d}.png").unlink()
    assert main(["validate", str(broken)]) == 1
    out = capsys.readouterr().out
    assert f"image {victim}" in out and "missing_panoptic_png" in out
    assert main(["validate", str(broken), "--json", "--no-pixel-check"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"missing_panoptic_png": 1} and report["issues"][0]["image_id"] == victim


def test_prepare_data_writes_parquet_and_report(synthetic_dir, tmp_path, capsys):
    output = tmp_path / "prepared"
    argv = [
        "prepare-data",
        str(synthetic_dir),
        "--output-dir",
        str(output),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main(argv + ["--report-json", str(tmp_path / "report.json")]) == 0
    out = capsys.readouterr().out
    assert "train: 6 examples" in out and "validation: 3 examples" in out and "No problems found." in out
    assert json.loads((tmp_path / "report.json").read_text())["ok"] is True
    reloaded = datasets.load_dataset(str(output), cache_dir=str(tmp_path / "reloaded"))
    assert reloaded["train"].num_rows == 6 and "phrases" in reloaded["train"].features


def test_prepare_data_num_proc(synthetic_dir, tmp_path, capsys):
    argv = ["prepare-data", str(synthetic_dir), "--cache-dir", str(tmp_path / "cache"), "--num-proc", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "train: 6 examples" in out and "validation: 3 examples" in out and "No problems found." in out
    assert len(list((tmp_path / "cache").rglob("*-train-*.arrow"))) == 2  # one Arrow file per process


def test_prepare_data_errors(tmp_path, capsys):
    assert main(["prepare-data", str(tmp_path)]) == 2  # nowhere to write
    assert "--output_dir" in capsys.readouterr().err
    assert main(["prepare-data", str(tmp_path), "--output-dir", str(tmp_path / "out")]) == 1
    assert "No PNG split found" in capsys.readouterr().err
