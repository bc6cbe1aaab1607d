"""Convergence: synthetic validation Average Recall against training wall-clock time, default tiny model.

Runs the project's training loop (`narrative_grounding.training.train`, the function behind
`training/train.py`) on the hard synthetic level with a wall-clock budget of training steps
(`--budget` seconds; evaluation time is not counted) and an evaluation every `--eval-every` seconds of
training, then prints AR (overall, things, stuff, singular, plural) at each evaluation against the
training seconds and optimizer steps it took. The learning-rate schedule is fitted to the budget
(`--fit_schedule_to_time`), so the curve is the one a user with that budget gets.

    python -m benchmarks.convergence --budget 600 --eval-every 60
    python -m benchmarks.convergence --budget 20 --eval-every 10 --num-train 64 --num-validation 16   # smoke
"""

from __future__ import annotations

import argparse
import tempfile
import time

from narrative_grounding.data.synthetic import LEVELS
from narrative_grounding.metrics import AVERAGE_RECALL_KEYS

from ._common import load_average, machine_description, print_machine, write_json

AR_KEYS = AVERAGE_RECALL_KEYS


def training_argv(
    *,
    model: str,
    output_dir: str,
    budget: list[str],
    level: str,
    num_train: int,
    num_validation: int,
    seed: int,
    data_root: str | None,
    batch_size: int,
    extra: list[str] | None = None,
) -> list[str]:
    """The training script's command line for a run on the synthetic set (also used by ablations.py).

    budget: the options that end the run, e.g. ["--max_train_time", "600", "--fit_schedule_to_time"] or
    ["--max_train_steps", "300"] (with a large epoch count, so that only the budget ends it).
    """
    argv = [
        "--model", model,
        "--synthetic", level,
        "--synthetic_num_train", str(num_train),
        "--synthetic_num_validation", str(num_validation),
        "--output_dir", output_dir,
        *budget,
        "--num_train_epochs", "1000",  # the budget ends the run
        "--per_device_train_batch_size", str(batch_size),
        "--seed", str(seed),
        "--report_to", "none",
        "--no_progress_bar",
    ]  # fmt: skip
    if data_root:
        argv += ["--synthetic_dir", data_root]
    return argv + list(extra or [])


def run_training(argv: list[str], eval_every: float | None = None) -> dict:
    """Train with the project's loop; returns the final metrics and the evaluation history."""
    import logging

    from narrative_grounding.training import parse_args, train

    logging.getLogger("narrative_grounding").setLevel(logging.WARNING)
    args = parse_args(argv)
    if eval_every:
        args.eval_every_seconds = eval_every
    start = time.perf_counter()
    result = train(args)
    history = [
        {key: entry[key] for key in ("step", "train_seconds", *AR_KEYS) if key in entry}
        for entry in result.history
    ]
    final = {key: float(result.metrics[key]) for key in AR_KEYS if result.metrics and key in result.metrics}
    return {
        "final": final,
        "history": history,
        "completed_steps": result.completed_steps,
        "train_seconds": result.train_seconds,
        "wall_seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="epng-tiny")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds of training steps")
    parser.add_argument(
        "--eval-every", type=float, default=60.0, help="seconds of training between evaluations"
    )
    parser.add_argument("--level", default="hard", choices=list(LEVELS))
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-validation", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="cache folder of the synthetic data")
    parser.add_argument("--output-dir", default=None, help="default: a temporary folder")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    machine = machine_description()
    print_machine(machine)
    with tempfile.TemporaryDirectory(prefix="convergence-") as scratch:
        output_dir = args.output_dir or scratch
        run = run_training(
            training_argv(
                model=args.model,
                output_dir=output_dir,
                budget=["--max_train_time", str(args.budget), "--fit_schedule_to_time"],
                level=args.level,
                num_train=args.num_train,
                num_validation=args.num_validation,
                seed=args.seed,
                data_root=args.data_root,
                batch_size=args.batch_size,
            ),
            eval_every=args.eval_every,
        )
    record = {
        "machine": machine,
        "load_average_after": list(load_average()),
        "model": args.model,
        "budget": args.budget,
        "level": args.level,
        "num_train": args.num_train,
        "num_validation": args.num_validation,
        "batch_size": args.batch_size,
        **run,
    }
    print(format_table(record))
    write_json(args.json, record)
    return record


def format_table(record: dict) -> str:
    lines = [
        f"{record['model']} on the {record['level']} synthetic level ({record['num_train']} train / "
        f"{record['num_validation']} validation images, batch {record['batch_size']}), budget "
        f"{record['budget']:.0f} s of training: {record['completed_steps']} steps",
        "",
        "| train s | step | AR | AR things | AR stuff | AR singular | AR plural |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in record["history"]:
        values = " | ".join(f"{100 * entry[key]:.1f}" if key in entry else "" for key in AR_KEYS)
        lines.append(f"| {entry['train_seconds']:.0f} | {entry['step']} | {values} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
