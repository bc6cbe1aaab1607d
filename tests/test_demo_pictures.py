"""The pictures the demo writes (and the README shows): the AR curve (CSV + PNG, matplotlib being a
dependency) and the overlays of a saved model's predictions on validation images."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import PIL.Image
from tiny_models import tiny_model

from narrative_grounding import load_processor
from narrative_grounding.commands.demo import CURVE_COLUMNS, OVERLAY_MIN_WIDTH, write_curve, write_overlays
from narrative_grounding.data import load_png_dataset
from narrative_grounding.data.synthetic import generate_synthetic_dataset
from narrative_grounding.modeling.image_processing_png import PngImageProcessor


def test_write_curve_writes_csv_and_png(tmp_path: Path) -> None:
    history = [
        {"train_seconds": 10.0 * step, "step": step, "epoch": 0, "average_recall": 0.1 * step,
         "average_recall_things": 0.05 * step, "average_recall_stuff": 0.15 * step}
        for step in range(1, 5)
    ]  # fmt: skip
    csv_path, png_path = write_curve(history, tmp_path)
    rows = list(csv.reader(csv_path.open()))
    assert tuple(rows[0]) == CURVE_COLUMNS and len(rows) == 5
    assert rows[2][:2] == ["20.0", "2"] and rows[2][-1] == ""  # absent splits stay empty
    picture = PIL.Image.open(png_path)
    assert picture.format == "PNG" and picture.size == (720, 480)  # 6 x 4 inches at 120 dpi
    assert len(np.unique(np.asarray(picture.convert("RGB")).reshape(-1, 3), axis=0)) > 10  # lines were drawn


def test_write_overlays_draws_truth_and_prediction(tmp_path: Path) -> None:
    generate_synthetic_dataset(tmp_path / "data", 1, 2, image_size=64, level="easy", seed=0, num_workers=1)
    validation = load_png_dataset(tmp_path / "data", cache_dir=tmp_path / "cache")["validation"]
    processor = load_processor("epng-tiny")
    processor.image_processor = PngImageProcessor(size={"height": 64, "width": 64})
    model = tiny_model(text_config={"vocab_size": len(processor.tokenizer)})
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")

    written = write_overlays(tmp_path / "model", validation, tmp_path / "overlays", count=5)
    assert [path.name for path in written] == [f"validation_{row['image_id']}.png" for row in validation]
    for path in written:
        picture = PIL.Image.open(path)
        # two panels (ground truth, prediction), each the 64 px image enlarged to at least OVERLAY_MIN_WIDTH
        assert picture.width == 2 * OVERLAY_MIN_WIDTH + 8 and picture.height > OVERLAY_MIN_WIDTH
