"""`python -m benchmarks.run_all` never merges figures measured on different library versions without saying so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import run_all


def _store(directory: Path, name: str, torch_version: str, rows: list[dict]) -> None:
    record = {
        "machine": {
            "versions": {"torch": torch_version, "timm": "1.0"},
            "date_utc": name,
            "load_average": [0.1],
        },
        "rows": rows,
        "command": f"python -m benchmarks.inference  # {name}",
    }
    (directory / f"inference_{name}.json").write_text(json.dumps(record))


def test_partial_runs_on_different_versions_are_refused(tmp_path: Path) -> None:
    _store(tmp_path, "a", "2.14.1", [{"head": "epng"}])
    _store(tmp_path, "b", "2.15.0", [{"head": "drmn"}])
    with pytest.raises(ValueError, match=r"inference_a.json: torch 2.14.1.*inference_b.json: torch 2.15.0"):
        run_all.load_stored("inference", tmp_path)


def test_mixed_versions_merge_only_when_asked_and_each_row_keeps_its_versions(tmp_path: Path) -> None:
    _store(tmp_path, "a", "2.14.1", [{"head": "epng"}])
    _store(tmp_path, "b", "2.15.0", [{"head": "drmn"}])
    merged = run_all.load_stored("inference", tmp_path, allow_mixed_versions=True)
    assert [row["versions"]["torch"] for row in merged["rows"]] == ["2.14.1", "2.15.0"]
    assert merged["machine"]["versions_note"] == "torch 2.14.1, timm 1.0 and torch 2.15.0, timm 1.0"


def test_partial_runs_on_the_same_versions_merge(tmp_path: Path) -> None:
    _store(tmp_path, "a", "2.14.1", [{"head": "epng"}])
    _store(tmp_path, "b", "2.14.1", [{"head": "drmn"}])
    merged = run_all.load_stored("inference", tmp_path)
    assert [row["head"] for row in merged["rows"]] == ["epng", "drmn"]
    assert merged["machine"]["versions_note"] == "torch 2.14.1, timm 1.0"
