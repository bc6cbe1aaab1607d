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
    "narrative_grounding.data.cli",  # prepare-data, validate, make-synthetic
    "narrative_grounding.predict",  # predict
    "narrative_grounding.evaluation",  # evaluate
    "narrative_grounding.demo",  # demo: the Quickstart's main job
    "narrative_grounding.conversion.cli",  # convert panoptic-fpn | epng
    "narrative_grounding.variants_cli",  # variants, publish
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="narrative-grounding",
        description="Panoptic Narrative Grounding: data preparation, prediction, evaluation, checkpoint "
        "conversion, the demo and the model variants.",
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
