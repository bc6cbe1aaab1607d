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

COMMAND_MODULES = (
    "narrative_grounding.commands.data",  # prepare-data, validate, make-synthetic
    "narrative_grounding.commands.predict",  # predict
    "narrative_grounding.commands.evaluate",  # evaluate
    "narrative_grounding.commands.demo",  # demo: the Quickstart's main job
    "narrative_grounding.commands.convert",  # convert panoptic-fpn | epng
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="narrative-grounding",
        description="Panoptic Narrative Grounding: data preparation, prediction, evaluation, checkpoint "
        "conversion and the demo.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
