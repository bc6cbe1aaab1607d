"""`narrative-grounding demo` end to end: generate, train in several processes, evaluate, save, draw."""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from narrative_grounding.commands.demo import (
    CURVE_COLUMNS,
    CURVE_CSV,
    DEFAULTS,
    MAX_DEFAULT_PROCESSES,
    available_cores,
    launch_processes,
    resolve_processes,
    training_arguments,
)

ROOT = Path(__file__).resolve().parents[1]


def _demo_args(**changes) -> argparse.Namespace:
    return argparse.Namespace(
        **{**DEFAULTS, "output_dir": "out", "data_dir": None, "gpu": False, "num_overlays": 0, **changes}
    )


def test_the_batch_is_split_between_the_processes():
    args = _demo_args(processes=2, batch_size=16)
    assert resolve_processes(args) == 2
    assert training_arguments(args).per_device_train_batch_size == 8
    assert resolve_processes(_demo_args(processes=None)) == min(MAX_DEFAULT_PROCESSES, available_cores())
    assert resolve_processes(_demo_args(processes=None, gpu=True)) == 1


def _worker_report(offset: int) -> tuple[int, str, int]:
    import multiprocessing

    return int(os.environ["RANK"]), multiprocessing.get_start_method(), offset + int(os.environ["WORLD_SIZE"])


def test_launched_processes_return_the_main_result_and_keep_the_start_method():
    # spawned processes would otherwise make "spawn" the default of their DataLoader workers
    assert launch_processes(_worker_report, (40,), 2) == (0, multiprocessing.get_start_method(), 42)


@pytest.mark.slow
def test_demo_in_two_processes_trains_evaluates_saves_and_draws(tmp_path):
    output, data = tmp_path / "demo", tmp_path / "data"
    argv = [sys.executable, "-m", "narrative_grounding.cli", "demo", "--processes", "2", "--batch_size", "4"]
    argv += ["--time_budget", "3", "--num_train", "8", "--num_validation", "4", "--image_size", "64"]
    argv += ["--eval_every_seconds", "1000", "--num_overlays", "1", "--output_dir", str(output)]
    argv += ["--data_dir", str(data)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "training epng-tiny for 3 s (2 processes)" in log
    assert "batch 4 (2 per device x 2 processes x 1 accumulation)" in log  # one model, data parallel
    results = json.loads((output / "eval_results.json").read_text())
    assert 0.0 <= results["average_recall"] <= 1.0
    # the main process's result reached the demo: its table, curve and pictures
    assert "Average Recall, synthetic 'hard' validation" in done.stdout
    rows = list(csv.reader((output / CURVE_CSV).open()))
    assert tuple(rows[0]) == CURVE_COLUMNS and len(rows) >= 2
    assert float(rows[-1][CURVE_COLUMNS.index("average_recall")]) == pytest.approx(results["average_recall"])
    assert len(list((output / "overlays").glob("validation_*.png"))) == 1
    assert (output / "model.safetensors").is_file() and (output / "config.json").is_file()
