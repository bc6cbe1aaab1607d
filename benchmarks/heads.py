"""EPNG vs DRMN grounding heads: inference time and peak memory at paper sizes, and (``--train-ar``) the
Average Recall of the two tiny models on the synthetic validation split after the same training budget.

Speed: each head alone (the `epng-r101-bert-base` / `drmn-r101-bert-base` configs), on random FPN features
of a 640x640 input (strides 4/8/16/32: 160x160 ... 20x20 x 256) and 30 random BERT-base phrase features,
batch 1 and 2, forward under `torch.inference_mode` (EPNG's LPA then takes its fused flex-attention path,
compiled during the warm-up). Every measurement runs in a fresh child process:
- time: the median of `--repeats` forwards after one warm-up forward;
- peak memory: CPU, the largest growth of the resident set over its level just before a forward, sampled
  every 0.5 ms by a thread, with glibc's mmap threshold fixed at 64 KiB so that a freed tensor leaves the
  resident set at once (otherwise malloc keeps freed memory and the figure depends on what ran before);
  CUDA, `torch.cuda.max_memory_allocated` growth during one forward.

Run: python -m benchmarks.heads [--batch-sizes 1 2] [--repeats 5] [--device cpu|cuda]
     python -m benchmarks.heads --train-ar --skip-speed [--train-steps 300] [--synthetic-level hard]
         [--threads 1] [--output-dir DIR] [--train-args ...further training-script options]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import threading
import time
from pathlib import Path

import torch

from narrative_grounding.data.synthetic import LEVELS
from narrative_grounding.metrics import AVERAGE_RECALL_KEYS
from narrative_grounding.modeling.heads import GROUNDING_HEADS

from ._common import head_variant, print_versions

IMAGE_SIZE = 640
NUM_PHRASES = 30


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakResidentSampler:
    """Largest resident-set growth over the level at entry, sampled by a background thread (torch ops
    release the GIL, so the thread keeps sampling while a forward runs)."""

    def __init__(self, interval_s: float = 5e-4) -> None:
        self.interval_s = interval_s
        self.peak = 0

    def __enter__(self) -> PeakResidentSampler:
        self.baseline = _resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _resident_bytes() - self.baseline)
            time.sleep(self.interval_s)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _resident_bytes() - self.baseline)


def _measure_head(
    queue, head_name: str, batch: int, repeats: int, device: str, threads: int | None, overrides: dict
) -> None:
    if threads:
        torch.set_num_threads(threads)
    from narrative_grounding import load_config

    config = load_config(head_variant(head_name), **overrides)
    torch.manual_seed(0)
    head = GROUNDING_HEADS[head_name](config).to(device).eval()
    features = {
        stride: torch.randn(
            batch, config.fpn_channels, IMAGE_SIZE // stride, IMAGE_SIZE // stride, device=device
        )
        for stride in (4, 8, 16, 32)
    }
    phrases = torch.randn(batch, NUM_PHRASES, config.text_config.hidden_size, device=device)
    phrase_mask = torch.ones(batch, NUM_PHRASES, dtype=torch.bool, device=device)

    def forward():
        with torch.inference_mode():
            output = head(features, phrases, phrase_mask)
        if device == "cuda":
            torch.cuda.synchronize()
        return output

    output = forward()  # warm-up (compiles EPNG's flex attention)
    shapes = [tuple(output.pred_masks.shape), len(output.auxiliary_masks)]
    del output
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        forward()
        peak_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        with PeakResidentSampler() as sampler:
            forward()
        peak_mb = sampler.peak / 2**20
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward()
        seconds.append(time.perf_counter() - start)
    queue.put(
        {
            "head": head_name,
            "batch": batch,
            "ms": 1000 * statistics.median(seconds),
            "ms_min": 1000 * min(seconds),
            "peak_mb": peak_mb,
            "parameters_m": sum(p.numel() for p in head.parameters()) / 1e6,
            "pred_masks": shapes[0],
            "auxiliary_masks": shapes[1],
            "threads": torch.get_num_threads(),
        }
    )


def measure_head(
    head_name: str, batch: int, repeats: int, device: str, threads: int | None, overrides: dict | None = None
) -> dict:
    """One measurement in a fresh spawned process (no shared high-water mark, no shared compile cache)."""
    # glibc reads this at start-up: large blocks are mmapped and unmapped on free (see the docstring).
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(
        target=_measure_head, args=(queue, head_name, batch, repeats, device, threads, overrides or {})
    )
    process.start()
    result = queue.get()
    process.join()
    return result


def run_speed(args: argparse.Namespace) -> list[dict]:
    results = []
    print(
        f"Heads alone, {IMAGE_SIZE}x{IMAGE_SIZE} input, {NUM_PHRASES} phrases, forward in inference mode, "
        f"device {args.device}"
    )
    print(f"{'head':<6}{'batch':>6}{'params (M)':>12}{'median ms':>11}{'min ms':>9}{'peak MB':>9}  output")
    for batch in args.batch_sizes:
        for head_name in args.heads:
            overrides = args.drmn_overrides if head_name == "drmn" else args.epng_overrides
            result = measure_head(head_name, batch, args.repeats, args.device, args.threads, overrides)
            results.append(result)
            print(
                f"{head_name:<6}{batch:>6}{result['parameters_m']:>12.2f}{result['ms']:>11.1f}"
                f"{result['ms_min']:>9.1f}{result['peak_mb']:>9.0f}  {result['pred_masks']} + "
                f"{result['auxiliary_masks']} auxiliary (threads {result['threads']})"
            )
    return results


# ---------------------------------------------------------------- AR after the same training budget
def run_train_ar(args: argparse.Namespace) -> list[dict]:
    """Train epng-tiny and drmn-tiny with the project's training loop (`narrative_grounding.training.train`,
    the function behind training/train.py) on the same synthetic data, for the same number of optimizer
    steps with the same batch size, optimisation preset and seed, then report the loop's final Average
    Recall on the synthetic validation split."""
    from narrative_grounding.training import parse_args, train

    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for head_name in args.heads:
        argv = [
            "--model",
            head_variant(head_name, tiny=True),
            "--synthetic",
            args.synthetic_level,
            "--synthetic_dir",
            str(Path(args.output_dir) / "synthetic"),
            "--output_dir",
            str(Path(args.output_dir) / head_name),
            "--max_train_steps",
            str(args.train_steps),
            "--per_device_train_batch_size",
            str(args.train_batch_size),
            "--seed",
            str(args.seed),
            "--report_to",
            "none",
            "--no_progress_bar",
            *(["--learning_rate", str(args.learning_rate)] if args.learning_rate else []),
            *args.train_args,
        ]
        result = train(parse_args(argv))
        metrics = result.metrics or {}
        record = {
            "head": head_name,
            "variant": head_variant(head_name, tiny=True),
            "synthetic_level": args.synthetic_level,
            "steps": result.completed_steps,
            "batch_size": args.train_batch_size,
            "train_seconds": result.train_seconds,
            **{key: value for key, value in metrics.items() if isinstance(value, int | float)},
        }
        results.append(record)
        print(json.dumps(record), flush=True)
    print(f"{'head':<6}{'steps':>7}{'train s':>9}{'AR':>7}{'things':>8}{'stuff':>7}{'sing.':>7}{'plural':>8}")
    for record in results:
        print(
            f"{record['head']:<6}{record['steps']:>7}{record['train_seconds']:>9.0f}"
            + "".join(
                f"{100 * record.get(key, float('nan')):>{width}.1f}"
                for key, width in zip(AVERAGE_RECALL_KEYS, (7, 8, 7, 7, 8), strict=True)
            )
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--heads", nargs="+", default=list(GROUNDING_HEADS), choices=list(GROUNDING_HEADS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the child processes")
    parser.add_argument(
        "--drmn-overrides",
        type=json.loads,
        default={},
        help="PngConfig overrides, e.g. '{\"drmn_num_levels\": 3}'",
    )
    parser.add_argument(
        "--epng-overrides", type=json.loads, default={}, help="PngConfig overrides of the EPNG head"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--train-ar", action="store_true", help="also train both tiny models and compare AR")
    parser.add_argument("--skip-speed", action="store_true", help="with --train-ar: only the AR comparison")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--train-batch-size", type=int, default=8)
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="default: the training loop's preset for tiny models",
    )
    parser.add_argument(
        "--synthetic-level", default="hard", choices=list(LEVELS), help="synthetic dataset level"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="benchmark-heads-runs")
    parser.add_argument(
        "--train-args", nargs=argparse.REMAINDER, default=[], help="further arguments for the training script"
    )
    args = parser.parse_args()
    print_versions()
    report = {}
    if not args.skip_speed:
        report["speed"] = run_speed(args)
    if args.train_ar:
        report["train_ar"] = run_train_ar(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
