"""What the image processor's post-processing fields do to the Average Recall of the same trained models.

`post_process_upsampled` ("logits": resize the stride-4 logits, then threshold, ours; "probabilities": take
the sigmoid at stride 4 and resize the probabilities, as EPNG's released evaluation does,
`models/val/MainModule.py` 46-47) and `post_process_align_corners` (False, ours; True: first to the input size
with `align_corners=True`, `MainModule.py` 17, then to the image size without, `val.py` 77) change only how a
trained model's masks are resized for evaluation, so no training run measures them. Here, per seed, one
`epng-tiny` is trained on the hard synthetic level with a step budget (in a child process; its saved folder is
kept for the run of the benchmark), then that one model is evaluated on the validation split four times, with
each combination of the two fields: ours first, each field alone, then both (the release's).

Every row scores the same models, so the differences to ours are paired: the table gives AR as mean ± sample
std (min-max) over the seeds, and the verdict is read from the per-seed differences, mean ± std: "matters"
when |mean| exceeds their std and every seed moves the same way, "not resolved" otherwise.

    python -m benchmarks.post_processing                         # 3 seeds, 300 steps each
    python -m benchmarks.post_processing --seeds 0 --budget-steps 30 --num-train 200 --num-validation 50
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ._common import invoking_command, machine_description, print_machine, run_in_child, write_json
from .ablations import summarise
from .convergence import run_training, training_argv

VARIANT = "epng-tiny"
LEVEL = "hard"
# (label, image-processor fields); the first row is ours, the last the release's (epng-r101-bert-base-released).
ROWS = (
    ("ours: logits, align_corners=False", {"post_process_upsampled": "logits", "post_process_align_corners": False}),
    ("probabilities, align_corners=False", {"post_process_upsampled": "probabilities", "post_process_align_corners": False}),
    ("logits, align_corners=True", {"post_process_upsampled": "logits", "post_process_align_corners": True}),
    ("released: probabilities, align_corners=True", {"post_process_upsampled": "probabilities", "post_process_align_corners": True}),
)  # fmt: skip
AR_KEYS = ("average_recall", "average_recall_things", "average_recall_stuff")


def _train_and_save(argv: list[str], threads: int | None) -> dict:
    """Runs in a child process: trains with the project's loop, which saves the model and its processor into
    the run's --output_dir; returns the training's own final evaluation and its step count."""
    if threads:
        torch.set_num_threads(threads)
    run = run_training(argv)
    return {**run["final"], "steps": run["completed_steps"], "train_seconds": run["train_seconds"]}


def with_post_processing(processor: Any, fields: dict[str, Any]) -> Any:
    """A copy of a `PngProcessor` whose image processor has these post-processing fields; built through the
    image processor's constructor, so that its checks of the values apply."""
    from narrative_grounding.modeling.image_processing_png import PngImageProcessor
    from narrative_grounding.modeling.processing_png import PngProcessor

    image_processor = PngImageProcessor.from_dict({**processor.image_processor.to_dict(), **fields})
    return PngProcessor(image_processor, processor.tokenizer)


def _evaluate_rows(argv: list[str], threads: int | None) -> list[dict]:
    """Runs in a child process: AR of the model that the training run `argv` saved, on its validation split
    (read from the synthetic cache that run filled), once per row of `ROWS`, with the evaluation of
    `narrative-grounding evaluate` on one CPU process and the training's evaluation batch size."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from narrative_grounding.modeling.modeling_png import PngForPanopticNarrativeGrounding
    from narrative_grounding.modeling.processing_png import PngProcessor
    from narrative_grounding.training import parse_args
    from narrative_grounding.training.collate import PngCollator
    from narrative_grounding.training.data import load_training_data, select_split
    from narrative_grounding.training.evaluation import evaluate_average_recall

    if threads:
        torch.set_num_threads(threads)
    options = parse_args(argv)
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(PngForPanopticNarrativeGrounding.from_pretrained(options.output_dir))
    saved = PngProcessor.from_pretrained(options.output_dir)
    dataset, _ = load_training_data(options)
    split = select_split(dataset, options.eval_split, None, "evaluation")
    results = []
    for label, fields in ROWS:
        processor = with_post_processing(saved, fields)
        dataloader = accelerator.prepare(
            DataLoader(
                split,
                batch_size=options.per_device_eval_batch_size,
                collate_fn=PngCollator(processor, with_references=True),
            )
        )
        metrics = evaluate_average_recall(
            model, dataloader, accelerator, processor, protocol=options.eval_protocol, progress=False
        )
        results.append({"label": label, **{key: float(metrics[key]) for key in AR_KEYS}})
    return results


def paired_verdict(deltas: list[float]) -> str:
    """'matters' when the mean per-seed difference exceeds its std and every seed agrees in sign."""
    if len(deltas) < 2:
        return "1 seed: no spread"
    mean, spread = statistics.fmean(deltas), statistics.stdev(deltas)
    same_sign = all(delta > 0 for delta in deltas) or all(delta < 0 for delta in deltas)
    return "matters" if abs(mean) > spread and same_sign else "not resolved"


def summarise_rows(runs: list[dict]) -> list[dict]:
    """Per row: AR figures over the seeds and the paired per-seed difference to ours (the first row)."""
    rows = []
    for index, (label, fields) in enumerate(ROWS):
        per_seed = [run["rows"][index] for run in runs]
        deltas = [
            row["average_recall"] - run["rows"][0]["average_recall"]
            for row, run in zip(per_seed, runs, strict=True)
        ]
        rows.append(
            {
                "label": label,
                "fields": fields,
                "per_seed": [row["average_recall"] for row in per_seed],
                "ar": summarise([row["average_recall"] for row in per_seed]),
                "ar_things": summarise([row["average_recall_things"] for row in per_seed]),
                "ar_stuff": summarise([row["average_recall_stuff"] for row in per_seed]),
                "delta": summarise(deltas),
                "verdict": "-" if index == 0 else paired_verdict(deltas),
            }
        )
    return rows


def format_table(record: dict) -> str:
    lines = [
        f"{VARIANT}, {LEVEL} synthetic level, {record['num_train']} train / {record['num_validation']} "
        f"validation images, {record['budget']}, seeds {record['seeds']}; every row evaluates the same trained "
        "models. AR in %: mean ± std (min-max) over the seeds; Δ AR: mean ± std of the per-seed differences "
        "to ours.",
        "",
        "| row | AR | Δ AR | AR things | AR stuff | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        ar, delta = row["ar"], row["delta"]
        lines.append(
            f"| {row['label']} | {100 * ar['mean']:.2f} ± {100 * ar['std']:.2f} "
            f"({100 * ar['min']:.2f}-{100 * ar['max']:.2f}) | "
            f"{100 * delta['mean']:+.2f} ± {100 * delta['std']:.2f} | "
            f"{100 * row['ar_things']['mean']:.2f} | {100 * row['ar_stuff']['mean']:.2f} | {row['verdict']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget-steps", type=int, default=300, help="optimizer steps per training run")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-validation", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    parser.add_argument("--data-root", default=None, help="cache folder of the synthetic data")
    parser.add_argument("--json", default=None, help="write the record here")
    args = parser.parse_args(argv)

    budget_args = ["--max_train_steps", str(args.budget_steps)]
    budget_text = f"{args.budget_steps} optimizer steps per run (batch {args.batch_size})"
    machine = machine_description()
    print_machine(machine)
    print(f"budget: {budget_text}; seeds {args.seeds}", flush=True)
    runs = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="post-processing-") as scratch:
        for seed in args.seeds:
            argv = training_argv(
                model=VARIANT,
                output_dir=str(Path(scratch) / f"seed{seed}"),
                budget=budget_args,
                level=LEVEL,
                num_train=args.num_train,
                num_validation=args.num_validation,
                seed=seed,
                data_root=args.data_root,
                batch_size=args.batch_size,
            )
            training, _ = run_in_child(_train_and_save, argv, args.threads)
            rows, _ = run_in_child(_evaluate_rows, argv, args.threads)
            runs.append({"seed": seed, "training": training, "rows": rows})
            figures = ", ".join(f"{100 * row['average_recall']:.2f}" for row in rows)
            print(
                f"seed {seed}: {training['steps']} steps, {training['train_seconds']:.0f} s; "
                f"training's own evaluation AR {100 * training['average_recall']:.2f}; rows AR {figures}",
                flush=True,
            )
    record = {
        "machine": machine,
        "variant": VARIANT,
        "level": LEVEL,
        "budget": budget_text,
        "seeds": args.seeds,
        "num_train": args.num_train,
        "num_validation": args.num_validation,
        "wall_seconds": time.perf_counter() - start,
        # the module's own command line also when main() is called with arguments (as the tests do)
        "command": invoking_command()
        if argv is None
        else shlex.join(["python", "-m", "benchmarks.post_processing", *argv]),
        "runs": runs,
        "rows": summarise_rows(runs),
    }
    print()
    print(format_table(record))
    write_json(args.json, record)
    return record


if __name__ == "__main__":
    main()
