"""The papers' ablations, reproduced in direction on the hard synthetic level with the tiny models.

Each row trains a tiny model (`epng-tiny` / `drmn-tiny` with one config override) with the project's
training loop from scratch, with the same training budget for every row and `--seeds` seeds, and
reports synthetic validation Average Recall as mean and spread (sample standard deviation; min-max).
- EPNG Table 2: `epng_position_encoding` "none" (no position information), "absolute" (sine position
  embedding added to the pixel tokens; the paper's "PE"), "lpa" (the paper's LPA). Paper: 42.8 / 46.7 / 49.7.
  `epng_table2_16x16` repeats it with the stride-8 communicator (16 x 16 tokens at 128 px).
- EPNG Table 3: BCE + Dice with and without SAL (`sal_loss_weight` 0 vs 1). Paper: 43.7 / 49.7.
- DRMN: refinement rounds 0..3 (`drmn_refinement_rounds`) and the top-k pixels per phrase
  (`drmn_top_k`, K of 256 stride-8 pixels at 128 px). Paper: multi-round refinement and top-k context
  sampling improve AR (no per-K numbers in our notes).

Budget: `--budget-steps` optimizer steps (default; the papers compare at equal epochs, and a step count is
immune to other load on the machine) or `--budget-seconds` of training wall-clock (equal cost; then slower
variants get fewer steps). Each run is a fresh child process; with `--json FILE` every finished run is
also appended to FILE.runs.jsonl, and a rerun with the same settings skips the runs found there (an
interrupted sweep resumes; sweeps of different groups can run in parallel processes and be combined
with `--merge`). The verdict column says whether the
direction of each paper claim holds here: a difference smaller than the seed spread is "not resolved".

    python -m benchmarks.ablations                        # 3 seeds, 300 steps each
    python -m benchmarks.ablations --quick                # 1 seed, 30 steps, small sets: a smoke run
    python -m benchmarks.ablations --groups epng_table2 --seeds 0 1 2 --budget-seconds 120
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ._common import machine_description, print_machine, run_in_child, write_json
from .convergence import run_training, training_argv

# group -> rows: (label, variant, config overrides)
GROUPS = {
    "epng_table2": [
        ("no position prior", "epng-tiny", {"epng_position_encoding": "none"}),
        ("absolute sine PE", "epng-tiny", {"epng_position_encoding": "absolute"}),
        ("LPA", "epng-tiny", {"epng_position_encoding": "lpa"}),
    ],
    # The same rows on a 16 x 16 token grid (the stride-8 communicator at 128 px), where a locality prior
    # clamped at distance 2 covers a smaller part of the image than on the 8 x 8 grid.
    "epng_table2_16x16": [
        (f"{label} (16x16 tokens)", "epng-tiny", {**overrides, "epng_communicator_stride": 8})
        for label, overrides in [
            ("no position prior", {"epng_position_encoding": "none"}),
            ("absolute sine PE", {"epng_position_encoding": "absolute"}),
            ("LPA", {"epng_position_encoding": "lpa"}),
        ]
    ],
    "epng_table3": [
        ("BCE + Dice", "epng-tiny", {"sal_loss_weight": 0.0}),
        # the same overrides as Table 2's LPA row: trained once, reported in both tables
        ("BCE + Dice + SAL", "epng-tiny", {"epng_position_encoding": "lpa"}),
    ],
    "drmn_rounds": [
        (f"{rounds} rounds", "drmn-tiny", {"drmn_refinement_rounds": rounds}) for rounds in (0, 1, 2, 3)
    ],
    "drmn_top_k": [(f"K = {k}", "drmn-tiny", {"drmn_top_k": k}) for k in (8, 32, 128)],
}
# The paper's claim per group: rows expected in increasing AR order (labels), and the published figures.
CLAIMS = {
    "epng_table2": (["no position prior", "absolute sine PE", "LPA"], "EPNG Table 2: 42.8 < 46.7 < 49.7"),
    "epng_table2_16x16": (
        [f"{label} (16x16 tokens)" for label in ("no position prior", "absolute sine PE", "LPA")],
        "EPNG Table 2 on a 16 x 16 token grid: 42.8 < 46.7 < 49.7",
    ),
    "epng_table3": (["BCE + Dice", "BCE + Dice + SAL"], "EPNG Table 3: 43.7 < 49.7"),
    "drmn_rounds": (["0 rounds", "3 rounds"], "DRMN: multi-round refinement improves AR"),
    "drmn_top_k": (None, "DRMN: top-k context sampling (no per-K figures to compare)"),
}


def _train_one(
    variant: str, overrides: dict, seed: int, budget_args: list[str], data: dict, threads: int
) -> dict:
    """Runs in a child process: one training run; returns its final AR figures."""
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="ablation-") as output_dir:
        argv = training_argv(
            model=variant,
            output_dir=output_dir,
            budget=budget_args,
            level="hard",
            num_train=data["num_train"],
            num_validation=data["num_validation"],
            seed=seed,
            data_root=data["root"],
            batch_size=data["batch_size"],
            extra=["--config_overrides", json.dumps(overrides)],
        )
        run = run_training(argv)
    return {**run["final"], "steps": run["completed_steps"], "train_seconds": run["train_seconds"]}


def config_key(variant: str, overrides: dict) -> str:
    """The effective model configuration of a row: rows that train the same model (e.g. DRMN's "3 rounds"
    and "K = 32", both the default drmn-tiny) share their runs, within a process and across merged records."""
    from narrative_grounding import load_config

    config = load_config(variant, **overrides).to_dict()
    config.pop("transformers_version", None)
    return json.dumps(config, sort_keys=True, default=str)


def summarise(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def verdict(group: str, rows: list[dict]) -> str:
    order, claim = CLAIMS[group]
    by_label = {row["label"]: row for row in rows}
    if order is None or any(label not in by_label for label in order):
        best = max(rows, key=lambda row: row["ar"]["mean"])
        return f"{claim}; best here: {best['label']}"
    notes = []
    for lower, higher in zip(order, order[1:], strict=False):
        low, high = by_label[lower]["ar"], by_label[higher]["ar"]
        difference = high["mean"] - low["mean"]
        spread = max(low["std"], high["std"])
        if difference > spread:
            state = "holds"
        elif difference < -spread:
            state = "DOES NOT HOLD (reversed)"
        else:
            state = "not resolved (within the seed spread)"
        notes.append(f"{lower} < {higher}: {100 * difference:+.1f} AR, {state}")
    return f"{claim}. Here: " + "; ".join(notes)


class RunCache:
    """Trains one (variant, overrides, seed) run in a child process, or reuses its result: finished runs are
    appended to `<json>.runs.jsonl` at once, so an interrupted sweep resumes where it stopped."""

    def __init__(
        self, json_path: str | None, budget_args: list[str], data: dict, threads: int | None
    ) -> None:
        self.budget_args, self.data, self.threads = budget_args, data, threads
        self.log = Path(f"{json_path}.runs.jsonl") if json_path else None
        self.finished: dict[str, dict] = {}
        if self.log is not None and self.log.is_file():
            for line in self.log.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self.finished[entry["run_id"]] = entry["result"]

    def run(self, variant: str, overrides: dict, seed: int, label: str) -> dict:
        key = config_key(variant, overrides)
        run_id = json.dumps([key, seed, self.budget_args, self.data], sort_keys=True)
        result = self.finished.get(run_id)
        if result is None:
            result, _ = run_in_child(
                _train_one, variant, overrides, seed, self.budget_args, self.data, self.threads
            )
            if self.log is not None:
                with self.log.open("a") as log:
                    log.write(json.dumps({"run_id": run_id, "result": result}) + "\n")
        print(
            f"{label} / seed {seed}: AR {100 * result['average_recall']:.1f} "
            f"({result['steps']} steps, {result['train_seconds']:.0f} s)",
            flush=True,
        )
        return {**result, "seed": seed}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--groups", nargs="+", choices=list(GROUPS), default=list(GROUPS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget-steps", type=int, default=None, help="optimizer steps per run (default 300)"
    )
    budget.add_argument("--budget-seconds", type=float, default=None, help="training seconds per run")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-validation", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    parser.add_argument("--data-root", default=None, help="cache folder of the synthetic data")
    parser.add_argument(
        "--quick", action="store_true", help="1 seed, 30 steps, 200 train / 50 validation images"
    )
    parser.add_argument(
        "--rows", nargs="+", default=None, metavar="LABEL", help="train only these rows of the groups"
    )
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="combine the results of runs of different groups",
    )
    args = parser.parse_args(argv)
    if args.merge:
        record = merge_records([json.loads(Path(path).read_text()) for path in args.merge])
        print(format_table(record))
        write_json(args.json, record)
        return record
    if args.quick:
        args.seeds = args.seeds[:1]
        args.budget_steps = args.budget_steps or 30
        args.num_train, args.num_validation = min(args.num_train, 200), min(args.num_validation, 50)
    if args.budget_seconds is not None:
        budget_args = ["--max_train_time", str(args.budget_seconds), "--fit_schedule_to_time"]
        budget_text = f"{args.budget_seconds:.0f} s of training per run"
    else:
        steps = args.budget_steps or 300
        budget_args = ["--max_train_steps", str(steps)]
        budget_text = f"{steps} optimizer steps per run (batch {args.batch_size})"
    data = {
        "num_train": args.num_train,
        "num_validation": args.num_validation,
        "root": args.data_root,
        "batch_size": args.batch_size,
    }

    machine = machine_description()
    print_machine(machine)
    print(
        f"budget: {budget_text}; seeds {args.seeds}; hard level, {args.num_train} / {args.num_validation} images"
    )
    done: dict[str, dict] = {}  # effective config -> row, so rows of the same model train once
    cache = RunCache(args.json, budget_args, data, args.threads)
    groups = {}
    start = time.perf_counter()
    for group in args.groups:
        rows = []
        for label, variant, overrides in GROUPS[group]:
            if args.rows is not None and label not in args.rows:
                continue
            key = config_key(variant, overrides)
            if key not in done:
                runs = [cache.run(variant, overrides, seed, f"{group} / {label}") for seed in args.seeds]
                done[key] = {
                    "config_key": key,
                    "variant": variant,
                    "overrides": overrides,
                    "runs": runs,
                    "ar": summarise([run["average_recall"] for run in runs]),
                    "ar_things": summarise([run["average_recall_things"] for run in runs]),
                    "ar_stuff": summarise([run["average_recall_stuff"] for run in runs]),
                    "steps": summarise([run["steps"] for run in runs]),
                }
            rows.append({"label": label, **done[key]})
        groups[group] = {"rows": rows, "verdict": verdict(group, rows)}
    record = {
        "machine": machine,
        "budget": budget_text,
        "seeds": args.seeds,
        "num_train": args.num_train,
        "num_validation": args.num_validation,
        "wall_seconds": time.perf_counter() - start,
        "groups": groups,
    }
    print()
    print(format_table(record))
    write_json(args.json, record)
    return record


def merge_records(records: list[dict]) -> dict:
    """One record from runs of different groups (e.g. run in parallel processes) with the same budget."""
    budgets = {record["budget"] for record in records}
    if len(budgets) != 1:
        raise ValueError(f"cannot merge ablation runs with different budgets: {sorted(budgets)}")
    by_key = {}  # every trained model, to fill rows another record trained under another label
    for record in records:
        for result in record["groups"].values():
            for row in result["rows"]:
                key = row.get("config_key") or config_key(row["variant"], row["overrides"])
                by_key.setdefault(key, row)
    merged = dict(records[0])
    merged["groups"] = {}
    for group, rows_spec in GROUPS.items():
        present = {
            row["label"]: row for record in records for row in record["groups"].get(group, {}).get("rows", [])
        }
        if not present:
            continue
        rows = []
        for label, variant, overrides in rows_spec:
            row = present.get(label) or by_key.get(config_key(variant, overrides))
            if row is not None:
                rows.append({**row, "label": label})
        merged["groups"][group] = {"rows": rows, "verdict": verdict(group, rows)}
    merged["wall_seconds"] = max(record["wall_seconds"] for record in records)
    merged["command"] = " ; ".join(record["command"] for record in records if "command" in record)
    return merged


def format_table(record: dict) -> str:
    lines = [
        f"Hard synthetic level, {record['num_train']} train / {record['num_validation']} validation images, "
        f"{record['budget']}, seeds {record['seeds']}. AR in %: mean ± std (min-max).",
        "",
        "| ablation | row | AR | AR things | AR stuff | steps |",
        "|---|---|---|---|---|---|",
    ]
    for group, result in record["groups"].items():
        for row in result["rows"]:
            ar = row["ar"]
            lines.append(
                f"| {group} | {row['label']} | {100 * ar['mean']:.1f} ± {100 * ar['std']:.1f} "
                f"({100 * ar['min']:.1f}-{100 * ar['max']:.1f}) | {100 * row['ar_things']['mean']:.1f} | "
                f"{100 * row['ar_stuff']['mean']:.1f} | {row['steps']['mean']:.0f} |"
            )
    lines.append("")
    for group, result in record["groups"].items():
        lines.append(f"- {group}: {result['verdict']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
