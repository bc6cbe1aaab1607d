"""The `narrative-grounding` command line: one entry point, one sub-command module per concern.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its
sub-commands and sets ``func`` (called with the parsed namespace) on each of them.
Modules are imported only when the CLI runs, so ``import narrative_grounding`` stays light.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from huggingface_hub.errors import StrictDataclassError

COMMAND_MODULES = (
    "narrative_grounding.data.cli",  # prepare-data, validate, make-synthetic
    "narrative_grounding.predict",  # predict
    "narrative_grounding.evaluation",  # evaluate
    "narrative_grounding.demo",  # demo: the Quickstart's main job
    "narrative_grounding.conversion.cli",  # convert panoptic-fpn | epng
    "narrative_grounding.variants_cli",  # variants, publish
)


# Errors that bad input raises (a missing file, invalid JSON, a value out of range, a folder that is not a saved
# model, a config.json with invalid values): shown as one line. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, StrictDataclassError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="narrative-grounding",
        description="Panoptic Narrative Grounding: data preparation, prediction, evaluation, checkpoint "
        "conversion, the demo and the model variants.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of errors caused by bad input too"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; bad input prints `narrative-grounding COMMAND: error: ...` and returns 2."""
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        # one line, also for library messages written over several
        message = (
            " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
        )
        print(f"narrative-grounding {args.command}: error: {message}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
