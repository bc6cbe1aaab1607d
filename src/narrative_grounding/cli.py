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
from collections.abc import Callable, Sequence

from huggingface_hub.errors import StrictDataclassError

COMMAND_MODULES = (
    "narrative_grounding.commands.data",  # prepare-data, validate, make-synthetic
    "narrative_grounding.commands.predict",  # predict
    "narrative_grounding.commands.evaluate",  # evaluate
    "narrative_grounding.commands.demo",  # demo: the Quickstart's main job
    "narrative_grounding.commands.convert",  # convert panoptic-fpn | epng
    "narrative_grounding.commands.variants",  # variants, publish
)


# Errors that bad input raises (a missing file, invalid JSON, a value out of range, a folder that is not a saved
# model, a config.json with invalid values): shown as one line. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, StrictDataclassError)


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
        "conversion, the demo and the model variants.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of errors caused by bad input too"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def one_line(error: BaseException) -> str:
    """An error's message on one line (library messages are often written over several)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def run_reporting_user_errors(command: Callable[[], int | None], *, prog: str, debug: bool = False) -> int:
    """Runs `command` and returns its exit status; bad input (`USER_ERRORS`) prints `{prog}: error: ...` on one
    line and returns 2, as argparse does for bad options. `debug` re-raises it with its traceback instead."""
    try:
        result = command()
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return 2
    return int(result or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; bad input prints `narrative-grounding COMMAND: error: ...` and returns 2."""
    args = build_parser().parse_args(argv)
    return run_reporting_user_errors(
        lambda: args.func(args), prog=f"narrative-grounding {args.command}", debug=args.debug
    )


if __name__ == "__main__":
    sys.exit(main())
