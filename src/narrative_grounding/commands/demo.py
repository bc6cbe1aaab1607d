"""`narrative-grounding demo`: the Quickstart's main job.

On the embedded default (the synthetic dataset at the "hard" level, the tiny EPNG model, the CPU) it
generates the data, trains within a wall-clock budget (10 minutes by default) with the same `train`
function as `training/train.py`, evaluates, prints the Average Recall table, saves the model and writes
overlay pictures of validation predictions and the curve of AR against training time (CSV and PNG).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..argument_types import non_negative_int, positive_float, positive_int, seed
from ..data.synthetic.levels import LEVELS
from ..metrics import AVERAGE_RECALL_KEYS, AVERAGE_RECALL_SPLITS

#: What the demo trains, unless told otherwise. Tuned on 2 CPU cores (see docs/quickstart.md).
DEFAULTS = {
    "model": "epng-tiny",
    "level": "hard",
    "time_budget": 600.0,
    # Data parallelism over the cores, one compute thread per process plus one data-loading worker each: the
    # tiny model gains little from intra-op threads, and OpenMP threads that share cores with any other busy
    # process slow down by an order of magnitude (measured: 0.23 s per batch-16 step with 1 thread vs 6.1 s
    # with 2 threads beside one busy process); separate processes of one thread do not. None: one process
    # per core, at most MAX_DEFAULT_PROCESSES (the batch is split between them).
    "processes": None,
    "threads": 1,
    "dataloader_workers": 1,
    "num_train": 4000,
    "num_validation": 200,
    "image_size": 128,
    "batch_size": 16,
    "learning_rate": 3e-3,
    "eval_every_seconds": 60.0,
    "num_overlays": 6,
    "seed": 0,
}
#: The most processes the demo starts by default: each trains on batch_size / processes images per step, and
#: the models' batch norm needs a few images per process.
MAX_DEFAULT_PROCESSES = 2
OVERLAY_MIN_WIDTH = 384
CURVE_CSV = "ar_vs_time.csv"
CURVE_PNG = "ar_vs_time.png"
CURVE_COLUMNS = ("train_seconds", "step", "epoch", *AVERAGE_RECALL_KEYS)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `demo` to the `narrative-grounding` parser."""
    parser = subparsers.add_parser(
        "demo",
        help="train the tiny EPNG model on synthetic data within a time budget, evaluate and draw predictions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output_dir", default="runs/demo", help="model, curve and pictures (default: %(default)s)"
    )
    parser.add_argument("--model", default=DEFAULTS["model"], help="variant name (default: %(default)s)")
    parser.add_argument(
        "--level", default=DEFAULTS["level"], choices=list(LEVELS), help="synthetic difficulty"
    )
    parser.add_argument(
        "--time_budget",
        type=positive_float,
        default=DEFAULTS["time_budget"],
        help="seconds of training (evaluation not counted; default: %(default)s)",
    )
    parser.add_argument(
        "--processes",
        type=positive_int,
        default=DEFAULTS["processes"],
        help="training processes on the CPU, data parallel; --batch_size is split between them (default: one "
        f"per core, at most {MAX_DEFAULT_PROCESSES}; with --gpu: 1)",
    )
    parser.add_argument(
        "--threads", type=positive_int, default=DEFAULTS["threads"], help="torch CPU threads per process"
    )
    parser.add_argument(
        "--dataloader_workers",
        type=non_negative_int,
        default=DEFAULTS["dataloader_workers"],
        help="data-loading worker processes (default: %(default)s)",
    )
    parser.add_argument(
        "--num_train", type=positive_int, default=DEFAULTS["num_train"], help="synthetic training images"
    )
    parser.add_argument("--num_validation", type=positive_int, default=DEFAULTS["num_validation"])
    parser.add_argument("--image_size", type=positive_int, default=DEFAULTS["image_size"])
    parser.add_argument("--batch_size", type=positive_int, default=DEFAULTS["batch_size"])
    parser.add_argument("--learning_rate", type=positive_float, default=DEFAULTS["learning_rate"])
    parser.add_argument(
        "--eval_every_seconds",
        type=positive_float,
        default=DEFAULTS["eval_every_seconds"],
        help="evaluate every N seconds of training, for the curve",
    )
    parser.add_argument("--num_overlays", type=non_negative_int, default=DEFAULTS["num_overlays"])
    parser.add_argument(
        "--data_dir", default=None, help="synthetic data cache (default: ~/.cache/narrative_grounding)"
    )
    parser.add_argument("--seed", type=seed, default=DEFAULTS["seed"])
    parser.add_argument(
        "--gpu", action="store_true", help="use a GPU when there is one (default: CPU, as documented)"
    )
    parser.set_defaults(func=run_demo)


def training_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """The `training/train.py` options the demo runs with (the same parser, so nothing is duplicated)."""
    from ..training import parse_args

    argv = [
        "--model", args.model,
        "--synthetic", args.level,
        "--synthetic_num_train", str(args.num_train),
        "--synthetic_num_validation", str(args.num_validation),
        "--synthetic_image_size", str(args.image_size),
        "--synthetic_seed", str(args.seed),
        "--output_dir", str(args.output_dir),
        "--per_device_train_batch_size", str(args.batch_size // (args.processes or 1)),
        "--per_device_eval_batch_size", "32",
        "--dataloader_num_workers", str(args.dataloader_workers),
        "--optimization", "fast",
        "--learning_rate", str(args.learning_rate),
        "--lr_scheduler_type", "cosine",
        "--num_train_epochs", "1000",  # the time budget decides; the cosine is fitted to it
        "--max_train_time", str(args.time_budget),
        "--fit_schedule_to_time",
        "--eval_every_seconds", str(args.eval_every_seconds),
        "--report_to", "none",
        "--logging_steps", "25",
        "--seed", str(args.seed),
    ]  # fmt: skip
    if args.data_dir:
        argv += ["--synthetic_dir", str(args.data_dir)]
    if not args.gpu:
        argv.append("--cpu")
    return parse_args(argv)


def write_curve(history: list[dict[str, Any]], output_dir: Path) -> tuple[Path, Path]:
    """AR against training time as CSV and as a PNG plot; returns (CSV path, PNG path)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed: the demo runs on servers and in CI
    import matplotlib.pyplot as plt

    path = output_dir / CURVE_CSV
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CURVE_COLUMNS)
        for entry in history:
            writer.writerow([entry.get(column, "") for column in CURVE_COLUMNS])
    figure, axis = plt.subplots(figsize=(6, 4))
    seconds = [entry["train_seconds"] for entry in history]
    # overall, things and stuff: the singular / plural lines crowd the small picture
    for key, label in zip(AVERAGE_RECALL_KEYS[:3], ("overall", *AVERAGE_RECALL_SPLITS[:2]), strict=True):
        axis.plot(seconds, [100 * entry.get(key, math.nan) for entry in history], marker="o", label=label)
    axis.set_xlabel("training time (s)")
    axis.set_ylabel("Average Recall (%)")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(output_dir / CURVE_PNG, dpi=120)
    plt.close(figure)
    return path, output_dir / CURVE_PNG


def format_curve(history: list[dict[str, Any]]) -> str:
    lines = [f"{'train s':>8} {'step':>6} {'AR %':>6}"]
    for entry in history:
        lines.append(
            f"{entry['train_seconds']:>8.0f} {entry['step']:>6} {100 * entry.get('average_recall', math.nan):>6.1f}"
        )
    return "\n".join(lines)


def write_overlays(model_dir: Path, dataset: Any, output_dir: Path, count: int) -> list[Path]:
    """Predictions of the saved model on the first `count` validation narratives, drawn next to the ground
    truth (left: ground truth, right: prediction; each phrase in its colour)."""
    import numpy as np
    import PIL.Image
    import torch

    from ..modeling.modeling_png import PngForPanopticNarrativeGrounding
    from ..modeling.processing_png import PngProcessor
    from ..training.collate import row_phrase_masks
    from ..visualization import draw_grounding

    model = PngForPanopticNarrativeGrounding.from_pretrained(str(model_dir)).eval()
    processor = PngProcessor.from_pretrained(str(model_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(min(count, len(dataset))):
        row = dataset[index]
        image = row["image"].convert("RGB")
        spans = [(phrase["start"], phrase["end"]) for phrase in row["phrases"]]
        inputs = processor(images=image, text=row["caption"], phrases=spans, return_tensors="pt")
        with torch.no_grad():
            outputs = model(**{key: value for key, value in inputs.items()})
        predicted = processor.post_process_panoptic_narrative_grounding(outputs, inputs=inputs)[0]
        truth = {
            "masks": row_phrase_masks(row).astype(bool),
            "phrases": [phrase["text"] for phrase in row["phrases"]],
            "spans": spans,
        }
        # small synthetic images are drawn enlarged (nearest for masks) so the narrative stays legible
        scale = max(1, math.ceil(OVERLAY_MIN_WIDTH / image.width))
        if scale > 1:
            image = image.resize((image.width * scale, image.height * scale), PIL.Image.Resampling.BICUBIC)
            for result in (truth, predicted):
                masks = torch.as_tensor(np.asarray(result["masks"]))
                result["masks"] = (
                    masks.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1).numpy()
                )
        left = draw_grounding(image, truth, row["caption"])
        right = draw_grounding(image, predicted, row["caption"])
        canvas = PIL.Image.new("RGB", (left.width + right.width + 8, max(left.height, right.height)), "white")
        canvas.paste(left, (0, 0))
        canvas.paste(right, (left.width + 8, 0))
        path = output_dir / f"validation_{row['image_id']}.png"
        canvas.save(path)
        written.append(path)
    return written


def available_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells it, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_processes(args: argparse.Namespace) -> int:
    """The number of training processes: `--processes`, or one per core up to MAX_DEFAULT_PROCESSES (1 with
    --gpu). Refuses a count that does not split `--batch_size` evenly."""
    if args.gpu:
        if args.processes not in (None, 1):
            raise ValueError(
                f"--processes {args.processes} with --gpu: the demo trains on one GPU; for several, run "
                "training/train.py with accelerate launch (docs/training.md)"
            )
        return 1
    processes = args.processes or min(MAX_DEFAULT_PROCESSES, available_cores())
    if args.batch_size % processes:
        raise ValueError(
            f"--batch_size {args.batch_size} does not split between {processes} processes; give a multiple of "
            f"{processes} or set --processes"
        )
    return processes


def _train_process(train_args: argparse.Namespace, threads: int | None) -> Any:
    """One training process of the demo: returns the `TrainingResult` on the main process, None on the
    others."""
    import torch

    from ..training import train
    from ..training.allocator import keep_freed_memory

    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()  # ~9% of a CPU step is page faults otherwise (training/allocator.py)
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    result = train(train_args)
    return result if int(os.environ.get("RANK", "0")) == 0 else None


def _with_start_method(start_method: str, function: Callable[..., Any], *args: Any) -> Any:
    import multiprocessing

    multiprocessing.set_start_method(start_method, force=True)
    return function(*args)


def launch_processes(function: Callable[..., Any], args: tuple, processes: int) -> Any:
    """Runs `function(*args)` in `processes` processes with torch's elastic launcher (what torchrun runs, here
    with a local rendezvous on a free port, as `torchrun --standalone`); returns the main process's result.
    `function` must be importable by a fresh interpreter (the processes are spawned)."""
    import multiprocessing
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # the launcher logs its configuration at INFO level; the training's own logs are enough
    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # port 0: the store picks a free one
        max_restarts=0,
        start_method="spawn",
    )
    # A spawned process makes "spawn" its own default start method, and its DataLoader workers would then
    # start a fresh interpreter each (measured: ~10 s per evaluation and per epoch on 2 cores, where a forked
    # worker starts at once): the processes get this process's default instead, as in one process.
    start_method = multiprocessing.get_start_method()
    return elastic_launch(config, _with_start_method)(start_method, function, *args)[0]


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from ..loading import check_model_source
    from ..training import format_average_recall_table
    from ..training.data import load_training_data

    check_model_source(args.model)  # before minutes of data generation, not after them
    args.processes = resolve_processes(args)
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
        # the data-loading workers and the training processes inherit it instead of torch's default
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    train_args = training_arguments(args)
    output_dir = Path(args.output_dir)
    started = time.perf_counter()
    print(
        f"[demo] data: synthetic '{args.level}' ({args.num_train} train / {args.num_validation} validation images)"
    )
    dataset, _ = load_training_data(train_args)
    where = f"{args.processes} processes" if args.processes > 1 else "1 process"
    print(
        f"[demo] data ready in {time.perf_counter() - started:.0f} s; training {args.model} for "
        f"{args.time_budget:.0f} s ({where})"
    )
    if args.processes == 1:
        result = _train_process(train_args, args.threads)
    else:
        result = launch_processes(_train_process, (train_args, args.threads), args.processes)
    print()
    print(
        format_average_recall_table(
            result.metrics, title=f"Average Recall, synthetic '{args.level}' validation"
        )
    )
    print(f"\n{result.completed_steps} steps in {result.train_seconds:.0f} s of training")
    curve_csv, curve_png = write_curve(result.history, output_dir)
    print(f"\nAR against training time ({curve_csv}, {curve_png}):\n{format_curve(result.history)}")
    overlays = write_overlays(
        output_dir, dataset[train_args.eval_split], output_dir / "overlays", args.num_overlays
    )
    print(f"\nmodel saved in {output_dir}; {len(overlays)} overlay picture(s) in {output_dir / 'overlays'}")
    print(f"[demo] total {time.perf_counter() - started:.0f} s")
    return 0
