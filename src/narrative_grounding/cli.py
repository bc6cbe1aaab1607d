"""The `narrative-grounding` command line: one entry point, one sub-command module per concern.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its
sub-commands and sets ``func`` (called with the parsed namespace) on each of them.
Modules are imported only when the CLI runs, so ``import narrative_grounding`` stays light.

One flag style for every command and for `training/train.py`: options are spelled with underscores
(``--output_dir``), the convention of transformers' `HfArgumentParser` and of `accelerate launch`;
the dashed spelling (``--output-dir``) is accepted as a hidden alias (see `ArgumentParser`).
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


class ArgumentParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose options are declared with underscores (``--output_dir``) and that
    also accepts them with dashes (``--output-dir``), without listing the second spelling in ``--help``.

    Sub-parsers made by `add_subparsers` are of this class too, so every command shares the rule.
    """

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        arguments = list(sys.argv[1:] if args is None else args)
        # Everything after a bare "--" is positional: left as it is.
        end = arguments.index("--") if "--" in arguments else len(arguments)
        arguments[:end] = [self._canonical(argument) for argument in arguments[:end]]
        return super().parse_known_args(arguments, namespace)

    def _canonical(self, argument: str) -> str:
        """``--some-option[=value]`` -> ``--some_option[=value]`` when only the underscore spelling is an
        option of this parser; anything else (values, positionals, options of a sub-command) as it is."""
        if not argument.startswith("--"):
            return argument
        name, equals, value = argument.partition("=")
        if name in self._option_string_actions:
            return argument
        underscored = "--" + name[2:].replace("-", "_")
        return underscored + equals + value if underscored in self._option_string_actions else argument


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
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
