"""`python -m benchmarks.post_processing`: one tiny training run evaluated with every combination of the image
processor's post-processing fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import post_processing
from narrative_grounding.factory import variant_path
from narrative_grounding.modeling.image_processing_png import PngImageProcessor
from narrative_grounding.modeling.processing_png import PngProcessor


def test_the_rows_are_ours_first_and_the_released_preset_last() -> None:
    released = PngImageProcessor.from_pretrained(variant_path("epng-r101-bert-base-released"))
    default = PngImageProcessor.from_pretrained(variant_path("epng-tiny"))
    (_, ours), *_, (_, last) = post_processing.ROWS
    assert all(getattr(default, name) == value for name, value in ours.items())
    assert all(getattr(released, name) == value for name, value in last.items())
    assert len({json.dumps(fields, sort_keys=True) for _, fields in post_processing.ROWS}) == 4


def test_a_changed_field_is_checked_by_the_image_processor() -> None:
    processor = PngProcessor.from_pretrained(variant_path("epng-tiny"))
    changed = post_processing.with_post_processing(processor, {"post_process_upsampled": "probabilities"})
    assert changed.image_processor.post_process_upsampled == "probabilities"
    assert processor.image_processor.post_process_upsampled == "logits"  # the original is left as it was
    with pytest.raises(ValueError, match="post_process_upsampled must be one of"):
        post_processing.with_post_processing(processor, {"post_process_upsampled": "probs"})


def test_paired_verdict() -> None:
    assert post_processing.paired_verdict([0.02, 0.03, 0.025]) == "matters"
    assert post_processing.paired_verdict([-0.02, -0.03, -0.025]) == "matters"
    # a large mean carried by one seed, or seeds that disagree in sign, resolve nothing
    assert post_processing.paired_verdict([0.001, 0.002, 0.09]) == "not resolved"
    assert post_processing.paired_verdict([0.05, 0.04, -0.001]) == "not resolved"
    assert post_processing.paired_verdict([0.05]) == "1 seed: no spread"


@pytest.mark.slow  # two child processes (training, evaluation), each a fresh interpreter: 24-84 s on 2 shared cores
def test_main_evaluates_one_trained_model_four_ways(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    record = post_processing.main(
        ["--seeds", "0", "--budget-steps", "2", "--num-train", "8", "--num-validation", "4", "--threads", "1",
         "--data-root", str(tmp_path / "data"), "--json", str(tmp_path / "record.json")]
    )  # fmt: skip
    table = capsys.readouterr().out
    labels = [label for label, _ in post_processing.ROWS]
    assert [row["label"] for row in record["rows"]] == labels
    for label in labels:
        assert f"| {label} |" in table
    ours = record["rows"][0]
    assert ours["delta"] == {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0}
    assert "| ours: logits, align_corners=False | " in table and "| +0.00 ± 0.00 |" in table
    # the ours row is the training's own final evaluation: the same model, data and post-processing
    (run,) = record["runs"]
    assert run["rows"][0]["average_recall"] == run["training"]["average_recall"]
    assert run["training"]["steps"] == 2
    stored = json.loads((tmp_path / "record.json").read_text())
    assert stored["machine"]["versions"]["torch"] and stored["command"].startswith(
        "python -m benchmarks.post_processing"
    )
    assert [row["verdict"] for row in stored["rows"]] == ["-"] + ["1 seed: no spread"] * 3
