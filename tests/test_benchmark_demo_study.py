"""`python -m benchmarks.demo_study`: every row changes what it says (no silently ignored key), and the report
of recorded runs is the table docs/benchmarks.md quotes."""

from __future__ import annotations

import json

import pytest

from benchmarks import demo_study
from narrative_grounding import load_config
from narrative_grounding.commands.demo import DEFAULTS as DEMO_DEFAULTS


@pytest.mark.parametrize("label", list(demo_study.ROWS))
def test_every_row_is_a_valid_config_and_recipe(label):
    overrides, recipe_changes = demo_study.ROWS[label]
    # a recipe key the demo's arguments and the training options do not know would change nothing
    known = set(DEMO_DEFAULTS) | set(demo_study.TRAINING_OVERRIDES)
    assert set(recipe_changes) <= known, f"{label}: unknown recipe keys {set(recipe_changes) - known}"
    model = recipe_changes.get("model", demo_study.RECIPE["model"])
    config = load_config(model, **overrides)  # validates the overrides, nested sub-configs included
    for key, value in overrides.items():
        if not isinstance(value, dict):
            assert getattr(config, key) == value


def _run(seed: int, average_recall: float, steps: int) -> dict:
    final = {key: average_recall for key in demo_study.SUMMARY_KEYS}
    return {
        "final": final,
        "best": {"step": steps, "average_recall": average_recall + 0.01},
        "history": [],
        "steps": steps,
        "train_seconds": 0.5 * steps,
    }


def test_report_tabulates_recorded_runs_without_training(tmp_path, capsys):
    record = tmp_path / "study.json"
    recipe = {**demo_study.RECIPE, "max_steps": 700}
    label = "linear learning-rate decay (demo: cosine)"
    overrides, recipe_changes = demo_study.ROWS[label]
    recipe = {**recipe, **recipe_changes}
    lines = [
        {
            "run_id": demo_study.run_id(recipe, overrides, seed),
            "label": label,
            "seed": seed,
            "peak_rss_mb": 1.0,
            **_run(seed, ar, 700),
        }
        for seed, ar in ((0, 0.72), (1, 0.716))
    ]
    (tmp_path / "study.json.runs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = demo_study.main(
        ["--json", str(record), "--report", "--steps", "700", "--rows", label, "--seeds", "0", "1"]
    )
    (row,) = result["rows"]
    assert row["seeds"] == [0, 1]
    assert row["average_recall"]["mean"] == pytest.approx(0.718)
    assert row["seconds_per_step"]["mean"] == pytest.approx(0.5)
    table = capsys.readouterr().out
    assert f"| {label} | 2 | 71.8 ± 0.3 (71.6-72.0) | 72.8 |" in table  # the sample std, as summarise gives
    assert not record.exists()  # --report only reads
