"""Bad command-line input: every numeric flag is range-checked at parse time, and expected user errors (a missing
file, invalid JSON, a folder that is not a saved model) print one line and exit non-zero, with the traceback
kept for --debug."""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from narrative_grounding.cli import main
from narrative_grounding.data import PngDataError
from narrative_grounding.training import HubPusher, parse_args

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


# ------------------------------------------------------------------------------------------ parse time
TRAIN_REQUIRED = ["--synthetic", "easy", "--output_dir", "unused"]


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--hub_retry_wait", "-1", "must be 0 or a positive number"),  # aborted training after an epoch
        ("--warmup_ratio", "1.5", "must be a number in \\[0, 1\\]"),
        ("--max_train_time", "-60", "must be a positive number"),
        ("--eval_every_seconds", "0", "must be a positive number"),
        ("--eval_steps", "0", "must be a positive integer"),
        ("--learning_rate", "nan", "must be a finite number"),
        ("--weight_decay", "-0.1", "must be 0 or a positive number"),
        ("--max_grad_norm", "inf", "must be a finite number"),
        ("--seed", "-1", "must be an integer in 0..4294967295"),
        ("--synthetic_seed", "2.5", "must be an integer"),
        ("--dataloader_num_workers", "-2", "must be 0 or a positive integer"),
        ("--per_device_train_batch_size", "0", "must be a positive integer"),
        ("--config_overrides", "{d_model: 1}", "is not valid JSON"),
        ("--config_overrides", "[1, 2]", "must be a JSON object"),
    ],
)
def test_training_flags_are_range_checked_at_parse_time(capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_info:
        parse_args([*TRAIN_REQUIRED, flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {flag}" in error and re.search(message, error), error


def test_training_flags_accept_their_limits():
    args = parse_args(
        [
            *TRAIN_REQUIRED,
            "--hub_retry_wait",
            "0",
            "--warmup_ratio",
            "1",
            "--max_grad_norm",
            "0",
            "--seed",
            "0",
        ]
        + ["--config_overrides", '{"d_model": 128}']
    )
    assert (
        args.hub_retry_wait == 0.0 and args.warmup_ratio == 1.0 and args.config_overrides == {"d_model": 128}
    )


def test_hub_pusher_refuses_a_negative_wait():
    # time.sleep(-1) raised out of a pusher documented never to raise
    with pytest.raises(ValueError, match="retry wait must be 0 or a positive number"):
        HubPusher("someone/model", retry_wait=-1)
    with pytest.raises(ValueError, match="retries must be at least 1"):
        HubPusher("someone/model", retries=0)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["predict", "--model", "m", "--output", "o", "--input", "x", "--threshold", "7"], "--threshold"),
        (["predict", "--model", "m", "--output", "o", "--input", "x", "--threshold", "nan"], "--threshold"),
        (["predict", "--model", "m", "--output", "o", "--input", "x", "--max_length", "2"], "--max_length"),
        (["predict", "--model", "m", "--output", "o", "--input", "x", "--device", "gpu"], "--device"),
        (["predict", "--model", "m", "--output", "o", "--input", "x", "--device", "cuda:99"], "--device"),
        (["evaluate", "m", "--synthetic", "easy", "--batch_size", "0"], "--batch_size"),
        (["evaluate", "m", "--synthetic", "easy", "--max_samples", "-1"], "--max_samples"),
        (["demo", "--time_budget", "-5"], "--time_budget"),
        (["demo", "--eval_every_seconds", "0"], "--eval_every_seconds"),
        (["demo", "--num_overlays", "-1"], "--num_overlays"),
        (["make-synthetic", "out", "--num_train", "-1"], "--num_train"),
        (["make-synthetic", "out", "--image_size", "0"], "--image_size"),
        (["validate", "data", "--max_issues", "-1"], "--max_issues"),
        (["convert", "epng", "c.pth", "out", "--config_overrides", "{d_model: 1}"], "--config_overrides"),
        (["convert", "drmn", "c.pth", "out", "--config_overrides", "[1]"], "--config_overrides"),
    ],
)
def test_command_flags_are_range_checked_at_parse_time(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ user errors
@pytest.fixture
def image_file(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    PIL.Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    return path


def _one_line_error(capsys, argv: list[str], command: str) -> str:
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "Traceback" not in error and error.startswith(f"narrative-grounding {command}: error: "), error
    assert len(error.splitlines()) == 1, error
    return error


def test_missing_model_folder_is_one_line(capsys, tmp_path, image_file):
    argv = ["predict", "--model", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")]
    argv += ["--image", str(image_file), "--narrative", "a box", "--phrases", "a box"]
    assert "is not a saved model folder (no config.json)" in _one_line_error(capsys, argv, "predict")
    with pytest.raises(FileNotFoundError):  # --debug keeps the traceback
        main(["--debug", *argv])


def test_bad_json_line_is_one_line_naming_the_line(capsys, tmp_path, image_file):
    records = tmp_path / "records.jsonl"
    good = {"image": image_file.name, "narrative": "a box", "phrases": ["a box"]}
    records.write_text(json.dumps(good) + "\n{not json\n")
    argv = ["predict", "--model", str(tmp_path), "--output", str(tmp_path / "out"), "--input", str(records)]
    assert f"{records}:2: not valid JSON" in _one_line_error(capsys, argv, "predict")


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_records_file_without_records_is_one_line(capsys, tmp_path, content):
    # it wrote "0 prediction(s)" and exited 0, where an image folder without images is an error
    records = tmp_path / "records.jsonl"
    records.write_text(content)
    argv = ["predict", "--model", str(tmp_path), "--output", str(tmp_path / "out"), "--input", str(records)]
    assert f"no records in {records}" in _one_line_error(capsys, argv, "predict")
    assert not (tmp_path / "out").exists()
    (tmp_path / "images").mkdir()
    argv[-1] = str(tmp_path / "images")
    assert "no image files in" in _one_line_error(capsys, argv, "predict")


def test_evaluate_on_a_folder_without_config_json_is_one_line(capsys, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    argv = ["evaluate", str(tmp_path), "--synthetic", "easy", "--synthetic-dir", str(tmp_path / "data")]
    assert "has no config.json" in _one_line_error(capsys, argv, "evaluate")
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # the command set up accelerate before failing


def test_evaluate_on_a_path_that_does_not_exist_names_it(capsys, tmp_path):
    # not a folder and not a valid repo id: reached the Hub client as a malformed repo id before
    missing = tmp_path / "runs" / "nowhere"
    argv = ["evaluate", str(missing), "--synthetic", "easy", "--synthetic_dir", str(tmp_path / "data")]
    error = _one_line_error(capsys, argv, "evaluate")
    assert f"model '{missing}' is neither a local folder, nor a Hub repo id" in error
    assert not (tmp_path / "data").exists()


def test_demo_refuses_an_unknown_model_before_generating_data(capsys, tmp_path):
    data, output = tmp_path / "data", tmp_path / "out"
    argv = ["demo", "--model", "epng-tinyy", "--data_dir", str(data), "--output_dir", str(output)]
    argv += ["--num_train", "2", "--num_validation", "1", "--image_size", "32", "--time_budget", "1"]
    error = _one_line_error(capsys, argv, "demo")
    assert "--model 'epng-tinyy' is neither a variant (" in error
    assert not data.exists() and not output.exists()  # refused before any data was generated


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--processes", "3"], "--batch_size 16 does not split between 3 processes"),
        (["--processes", "2", "--batch_size", "5"], "--batch_size 5 does not split between 2 processes"),
        (["--processes", "2", "--gpu"], "--processes 2 with --gpu: the demo trains on one GPU"),
    ],
)
def test_demo_refuses_processes_that_cannot_share_the_batch(capsys, tmp_path, extra, expected):
    data, output = tmp_path / "data", tmp_path / "out"
    argv = ["demo", "--data_dir", str(data), "--output_dir", str(output), *extra]
    assert expected in _one_line_error(capsys, argv, "demo")
    assert not data.exists() and not output.exists()  # refused before any data was generated


def test_console_entry_point_prints_no_traceback(tmp_path):
    argv = [sys.executable, "-m", "narrative_grounding.cli", "predict", "--model", str(tmp_path)]
    argv += ["--output", str(tmp_path / "out"), "--input", str(tmp_path / "missing.jsonl")]
    done = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert (
        "narrative-grounding predict: error: --input" in done.stderr
        and "neither a file nor a folder" in done.stderr
    )


# --------------------------------------------------------------------------------- training/train.py
TRAIN_SCRIPT = ROOT / "training" / "train.py"


@pytest.fixture
def training_script(monkeypatch, capsys):
    """Runs training/train.py's `main` in this process, as `python training/train.py ARGV` would (one real
    program run below checks the script's exit status): returns (exit status, stderr)."""
    from accelerate.state import AcceleratorState

    script_main = runpy.run_path(str(TRAIN_SCRIPT))["main"]

    def run(argv: list[str]) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", [str(TRAIN_SCRIPT), *argv])
        try:
            return script_main(), capsys.readouterr().err
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)  # a refused run may have set it up

    return run


def _bad_training_input(tmp_path: Path, case: str) -> list[str]:
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "not-a-checkpoint").mkdir()
    (tmp_path / "not-a-checkpoint" / "notes.txt").write_text("no accelerate state here")
    argv = ["--data_dir", str(tmp_path / "no-data"), "--output_dir", str(tmp_path / "out"), "--cpu"]
    return (
        argv
        + {
            "missing data dir": [],
            "unknown override key": ["--config_overrides", '{"hidden_size": 64}'],
            "bad override value": ["--config_overrides", '{"d_model": -1}'],
            "unknown variant": ["--model", "epng-tinyy"],
            "output dir is a file": ["--output_dir", str(tmp_path / "a-file")],
            "resume from a non-checkpoint": ["--resume_from_checkpoint", str(tmp_path / "not-a-checkpoint")],
        }[case]
    )


def _assert_one_line_training_error(returncode: int, stderr: str, message: str) -> None:
    assert returncode == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.strip() == stderr.strip().splitlines()[0], stderr
    assert stderr.startswith("train.py: error: "), stderr
    assert message in stderr, stderr


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing data dir", "data_dir {tmp}/no-data is not a directory"),
        ("unknown override key", "unknown PngConfig key(s) 'hidden_size'"),
        ("bad override value", "d_model must be >= 1, got -1"),
        ("unknown variant", "--model 'epng-tinyy' is neither a variant"),
        ("output dir is a file", "--output_dir {tmp}/a-file is a file"),
        (
            "resume from a non-checkpoint",
            "--resume_from_checkpoint {tmp}/not-a-checkpoint: not a checkpoint folder",
        ),
    ],
)
def test_training_script_reports_bad_input_in_one_line(tmp_path, training_script, case, message):
    returncode, stderr = training_script(_bad_training_input(tmp_path, case))
    _assert_one_line_training_error(returncode, stderr, message.format(tmp=tmp_path))
    assert not (tmp_path / "out").exists()  # a refused run leaves no empty output folder behind


def test_a_muon_rate_for_another_optimizer_is_refused_by_the_parser(tmp_path, capsys):
    from narrative_grounding.training import parse_args

    argv = [
        "--synthetic",
        "easy",
        "--output_dir",
        str(tmp_path),
        "--optimizer",
        "adamw",
        "--muon_learning_rate",
        "0.02",
    ]
    with pytest.raises(SystemExit) as refused:
        parse_args(argv)
    assert refused.value.code == 2
    assert (
        "error: --muon_learning_rate applies to --optimizer muon only, not adamw" in capsys.readouterr().err
    )
    assert (
        parse_args([*argv[:-4], "--optimizer", "muon", "--muon_learning_rate", "0.02"]).muon_learning_rate
        == 0.02
    )


def test_training_script_as_a_program_exits_2_with_one_line(tmp_path):
    argv = [sys.executable, str(TRAIN_SCRIPT), *_bad_training_input(tmp_path, "missing data dir")]
    done = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=300)
    _assert_one_line_training_error(
        done.returncode, done.stderr, f"data_dir {tmp_path}/no-data is not a directory"
    )


def test_training_script_debug_keeps_the_traceback(tmp_path, training_script):
    with pytest.raises(PngDataError, match="is not a directory"):  # the traceback is kept
        training_script(["--debug", "--data_dir", str(tmp_path / "no-data"), "--output_dir", str(tmp_path)])
