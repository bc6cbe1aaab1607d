"""Helpers shared by the benchmark scripts: timing, peak memory, child processes, the machine description,
synthetic model inputs and measured growth exponents."""

from __future__ import annotations

import datetime
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import shlex
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from narrative_grounding.modeling.heads import GROUNDING_HEADS


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_call(fn: Callable[[], object], *, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall-clock seconds of `fn()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def head_variant(head: str, *, tiny: bool = False) -> str:
    """The shipped variant a benchmark builds for a grounding head: the paper's R101 + BERT-base sizes, or the
    tiny one (`<head>-r101-bert-base` / `<head>-tiny` in hub_configs)."""
    if head not in GROUNDING_HEADS:
        raise ValueError(f"unknown grounding head {head!r}; the registry has {list(GROUNDING_HEADS)}")
    return f"{head}-tiny" if tiny else f"{head}-r101-bert-base"


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """The machine's dense float32 matmul throughput (GFLOP/s): the ceiling the head targets are measured against."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = time_call(lambda: a @ b, repeats=repeats)
    return 2 * size**3 / seconds / 1e9


# ------------------------------------------------------------------------------------------------ suite
# Shared by the suite of benchmarks/run_all.py: child processes, the machine, inputs, growth exponents.


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages: other work on the machine inflates every timing."""
    return os.getloadavg()


def library_versions() -> dict[str, str]:
    """The versions a figure depends on: the same code ran 2x slower on one torch release than on the next, so
    every row carries them and figures measured on different versions are never merged silently."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "torchvision", "timm", "transformers"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def versions_line(versions: dict[str, str]) -> str:
    return ", ".join(f"{package} {number}" for package, number in versions.items())


def print_versions() -> None:
    """One line naming the library versions and the thread count, printed before a benchmark's figures."""
    print(f"{versions_line(library_versions())}, {torch.get_num_threads()} torch threads", flush=True)


def machine_description() -> dict[str, Any]:
    """CPU model, cores, threads, memory, library versions, date and load: printed with every table."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": memory_gib,
        "torch": torch.__version__,
        "versions": library_versions(),
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": [round(value, 2) for value in load_average()],
    }


def _child(queue, function, args, kwargs) -> None:
    try:
        result = function(*args, **kwargs)
        queue.put(("ok", result, peak_rss_mb()))
    except BaseException as error:  # report any failure to the parent instead of hanging it
        queue.put(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}", peak_rss_mb()))


def run_in_child(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """Run `function(*args, **kwargs)` in a fresh spawned process; returns (its result, the child's peak RSS
    in MiB). Each configuration then has its own high-water mark and its own compiled-graph caches. The result
    must pickle (numbers, lists, dicts, numpy arrays; not tensors, which would cross as shared memory)."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, function, args, kwargs))
    process.start()
    status, result, peak = queue.get()
    process.join()
    if status != "ok":
        raise RuntimeError(f"benchmark child process failed:\n{result}")
    return result, peak


def training_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer `training/train.py` builds for `model` by default (`--optimization auto`: Muon + AdamW for
    the tiny variants, Adam for the paper configurations), at its preset's learning rates."""
    from narrative_grounding.training.optimization import build_optimizer, resolve_preset

    preset = resolve_preset("auto", sum(p.numel() for p in model.parameters()), model.config.grounding_head)
    return build_optimizer(
        model,
        optimizer=preset.optimizer,
        learning_rate=preset.learning_rate,
        weight_decay=preset.weight_decay,
        decay_all_parameters=preset.decay_all_parameters,
        muon_learning_rate=preset.muon_learning_rate,
    )


def random_model_inputs(
    batch: int, image_size: int, *, tokens: int, phrases: int, vocab_size: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Model inputs of the shapes a processor gives: B x 3 x S x S images, B x T token ids, and P phrases of
    2-3 consecutive tokens each (spread over the narrative) per sample."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, vocab_size, (batch, tokens), generator=generator)
    phrase_token_mask = torch.zeros(batch, phrases, tokens, dtype=torch.long)
    spacing = max((tokens - 2) // max(phrases, 1), 1)
    for phrase in range(phrases):
        start = 1 + (phrase * spacing) % max(tokens - 4, 1)
        phrase_token_mask[:, phrase, start : start + 2 + phrase % 2] = 1
    return {
        "pixel_values": torch.randn(batch, 3, image_size, image_size, generator=generator),
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "phrase_token_mask": phrase_token_mask,
        "phrase_mask": torch.ones(batch, phrases, dtype=torch.long),
    }


def growth_exponent(sizes: list[float], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(size): the measured exponent of value ~ size^k."""
    xs, ys = [math.log(s) for s in sizes], [math.log(v) for v in values]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    variance = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / variance


def invoking_command() -> str:
    """This script's command line, without the --json option (the report names each figure's command)."""
    import sys

    arguments, skip = [], False
    for argument in sys.argv[1:]:
        if skip:
            skip = False
        elif argument == "--json":
            skip = True
        elif not argument.startswith("--json="):
            arguments.append(argument)
    # Run as `python -m benchmarks.<name>`, sys.argv[0] is the module's file path.
    script = Path(sys.argv[0])
    program = ["-m", f"benchmarks.{script.stem}"] if script.parent.name == "benchmarks" else [str(script)]
    return shlex.join(["python", *program, *arguments])


def write_json(path: str | Path | None, record: dict[str, Any]) -> None:
    """Save a benchmark's results, with the command that produced them, for benchmarks/run_all.py (no-op
    without a path)."""
    if path:
        record.setdefault("command", invoking_command())
        Path(path).write_text(json.dumps(record, indent=2, default=str))


def print_machine(machine: dict[str, Any]) -> None:
    print(
        f"{machine['cpu']}, {machine['cores']} cores ({machine['torch_threads']} torch threads), "
        f"{machine['memory_gib']} GiB, {versions_line(machine['versions'])}, {machine['date_utc']}, "
        f"load average {machine['load_average']}"
    )


def resident_bytes() -> int:
    """The current resident set of this process (not the high-water mark)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def return_freed_memory_at_once() -> None:
    """Make glibc serve every allocation above 64 KiB with its own mmap, unmapped on free. By default the
    threshold adapts upwards and freed tensors stay in the heap, so the resident set after a forward would
    depend on what ran before it; with this, a peak measured during one call is that call's own."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: the sampler still works, only less precisely
        pass


class ResidentPeak:
    """Context manager: the largest growth of the resident set over its size at entry, in MiB, sampled by
    a thread every `interval_s` (torch kernels release the GIL, so sampling goes on during them)."""

    def __init__(self, interval_s: float = 1e-3) -> None:
        self.interval_s = interval_s
        self.peak_mb = 0.0

    def __enter__(self) -> ResidentPeak:
        import threading

        self._baseline = resident_bytes()
        self._peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._done.is_set():
            self._peak = max(self._peak, resident_bytes() - self._baseline)
            self._done.wait(self.interval_s)

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
        self._peak = max(self._peak, resident_bytes() - self._baseline)
        self.peak_mb = self._peak / 2**20
