#!/usr/bin/env python
"""Train a Panoptic Narrative Grounding model with accelerate.

    accelerate launch --config_file training/accelerate_config.yaml training/train.py \
        --model epng-tiny --synthetic hard --output_dir runs/epng-tiny-synthetic

    python training/train.py ...            # one process works too

Every option: `python training/train.py --help`; commands for CPU, one or several GPUs, several machines,
resuming and pushing to the Hub: docs/training.md. The loop lives in `narrative_grounding.training` so the
`narrative-grounding demo` command shares it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from narrative_grounding.cli import run_reporting_user_errors
from narrative_grounding.training import parse_args, train
from narrative_grounding.training.allocator import keep_freed_memory


def main() -> int:
    args = parse_args()
    keep_freed_memory()  # glibc: reuse freed feature maps' pages (~9% of a CPU step otherwise)

    def run() -> int:
        result = train(args)
        if result.hub_failures:
            print(
                f"warning: {len(result.hub_failures)} Hub push(es) failed: {result.hub_failures}",
                file=sys.stderr,
            )
        return 0

    # bad input (a missing data folder, an invalid config override, ...): one line and exit 2, as a bad option
    return run_reporting_user_errors(run, prog=Path(sys.argv[0]).name, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
