"""The command line speaks one flag style: underscores (`--output_dir`), dashes accepted as a hidden alias."""

from __future__ import annotations

import argparse
import re

import pytest

from narrative_grounding.cli import build_parser
from narrative_grounding.training.arguments import build_parser as build_training_parser
from narrative_grounding.training.arguments import parse_args as parse_training_args


def _parsers(parser: argparse.ArgumentParser, name: str):
    """`parser` and every sub-parser below it, with the command path that reaches it."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, subparser in action.choices.items():
                yield from _parsers(subparser, f"{name} {command}")


def test_every_option_is_spelled_with_underscores():
    parsers = [
        *_parsers(build_parser(), "narrative-grounding"),
        ("training/train.py", build_training_parser()),
    ]
    commands = {name for name, _ in parsers}
    for expected in (
        "predict",
        "evaluate",
        "demo",
        "prepare-data",
        "validate",
        "make-synthetic",
        "convert epng",
    ):
        assert f"narrative-grounding {expected}" in commands
    dashed = [
        f"{name}: {option}"
        for name, parser in parsers
        for option in parser._option_string_actions
        if re.fullmatch(r"--\w+(-\w+)+", option)
    ]
    assert dashed == []


def test_dashed_spelling_is_a_hidden_alias():
    parser = build_parser()
    underscored = parser.parse_args(
        ["evaluate", "runs/model", "--synthetic", "easy", "--synthetic_num_validation", "7", "--batch_size=3"]
    )
    dashed = parser.parse_args(
        ["evaluate", "runs/model", "--synthetic", "easy", "--synthetic-num-validation", "7", "--batch-size=3"]
    )
    assert vars(dashed) == vars(underscored)
    assert (dashed.synthetic_num_validation, dashed.batch_size) == (7, 3)
    evaluate_help = parser._subparsers._group_actions[0].choices["evaluate"].format_help()
    assert "--synthetic_num_validation" in evaluate_help
    assert "--synthetic-num-validation" not in evaluate_help


def test_values_and_positionals_are_left_as_they_are():
    parser = build_parser()
    argv = ["predict", "--model", "m", "--output", "o", "--narrative=a well-lit room", "--no-overlay"]
    args = parser.parse_args(argv)
    assert args.no_overlay is True and args.narrative == "a well-lit room"
    # after a bare "--" everything is positional, dashes and all
    args = parser.parse_args(["evaluate", "--synthetic", "easy", "--", "--my-model"])
    assert args.model == "--my-model"


def test_unknown_dashed_option_is_still_an_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "runs/model", "--synthetic", "easy", "--batch-sise", "3"])
    assert "--batch-sise" in capsys.readouterr().err


def test_training_script_accepts_both_spellings():
    underscored = parse_training_args(
        ["--synthetic", "easy", "--output_dir", "out", "--learning_rate", "0.1"]
    )
    dashed = parse_training_args(["--synthetic", "easy", "--output-dir", "out", "--learning-rate", "0.1"])
    assert vars(dashed) == vars(underscored)
    assert dashed.output_dir == "out" and dashed.learning_rate == pytest.approx(0.1)


def test_published_scoring_options_of_evaluate():
    defaults = build_parser().parse_args(["evaluate", "m", "--synthetic", "easy"])
    assert (defaults.inclusive_threshold, defaults.empty_ground_truth, defaults.integration) == (
        False,
        "skip",
        "exact",
    )
    argv = ["evaluate", "m", "--synthetic", "easy", "--inclusive_threshold", "--empty_ground_truth", "miss"]
    args = build_parser().parse_args([*argv, "--integration", "official"])
    assert (args.inclusive_threshold, args.empty_ground_truth, args.integration) == (True, "miss", "official")
    with pytest.raises(SystemExit):  # a whole evaluation would stop at the first emptied ground truth
        build_parser().parse_args(["evaluate", "m", "--synthetic", "easy", "--empty_ground_truth", "raise"])
    assert defaults.mask_decision is None  # the model's processor decides
    args = build_parser().parse_args(["evaluate", "m", "--synthetic", "easy", "--mask_decision", "threshold"])
    assert args.mask_decision == "threshold"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "m", "--synthetic", "easy", "--mask_decision", "iou"])


@pytest.mark.parametrize("protocol", ["original", "stride4", "stride4_padded", "soft256"])
def test_every_average_recall_protocol_is_an_evaluation_option(protocol):
    args = build_parser().parse_args(["evaluate", "m", "--synthetic", "easy", "--protocol", protocol])
    assert args.protocol == protocol
    args = parse_training_args(["--synthetic", "--output_dir", "o", "--eval_protocol", protocol])
    assert args.eval_protocol == protocol
