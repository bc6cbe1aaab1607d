"""How the grounding heads' cost grows: time and peak memory against visual tokens and phrases.

The EPNG and DRMN heads alone at paper sizes (`epng-r101-bert-base`, `drmn-r101-bert-base`), random FPN
features, batch 1, forward under `torch.inference_mode` (EPNG's LPA on its flex-attention path at every
size, `--lpa-implementation`):
- tokens: square inputs of side 16 g for g in `--grids` (20, 40, 60, 80: the EPNG communicator's stride-16
  grid is g x g; DRMN encodes 21.25 g^2 pixels over strides 4..32) with `--fixed-phrases` phrases;
- phrases: `--phrase-counts` (1, 5, 15, 30, 60) at g = 40 (a 640x640 input).
Every point runs in a fresh child process; time is the median of `--repeats` forwards after one warm-up,
peak memory the largest growth of the resident set during one further (untimed) forward (glibc set to return freed memory
at once, see `_common.return_freed_memory_at_once`).

For each sweep the measured growth exponent (least-squares slope of log cost vs log size) is printed next
to the exponent the algorithm implies: the slope of the head's analytic FLOP count (benchmarks/flops.py)
over the same sizes, which mixes the asymptotic terms (EPNG LPA: N^2 in tokens, everything else linear;
cross-attention and masks linear in phrases; DRMN: linear in tokens, refinement linear in phrases x K) in
the proportions they have at these sizes. Memory is expected to grow at most linearly in both (flex
attention never materialises the N x N scores; DRMN's sampled values are N x Hd x L x K x Dh). A measured
exponent above the implied one by more than `--slack` is flagged WORSE.

    python -m benchmarks.head_scaling
    python -m benchmarks.head_scaling --heads epng --grids 10 20 --phrase-counts 1 5 --repeats 1   # smoke
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from narrative_grounding.modeling.heads import GROUNDING_HEADS

from ._common import (
    ResidentPeak,
    growth_exponent,
    head_variant,
    machine_description,
    print_machine,
    return_freed_memory_at_once,
    run_in_child,
    write_json,
)
from .flops import head_flops

MEMORY_IMPLIED = 1.0  # activations linear in tokens and in phrases for both heads (see the docstring)


def _config(head: str, lpa_implementation: str):
    from narrative_grounding import load_config

    overrides = {"lpa_implementation": lpa_implementation} if head == "epng" else {}
    return load_config(head_variant(head), **overrides)


def _measure(head: str, grid: int, phrases: int, repeats: int, lpa_implementation: str) -> dict:
    """Runs in a child process: one head, one size."""
    return_freed_memory_at_once()

    config = _config(head, lpa_implementation)
    torch.manual_seed(0)
    module = GROUNDING_HEADS[head](config).eval()
    side = 16 * grid
    features = {s: torch.randn(1, config.fpn_channels, side // s, side // s) for s in (4, 8, 16, 32)}
    phrase_features = torch.randn(1, phrases, config.text_config.hidden_size)
    phrase_mask = torch.ones(1, phrases, dtype=torch.bool)
    times = []
    with torch.inference_mode():
        module(features, phrase_features, phrase_mask)  # warm-up (compiles flex attention for this shape)
        with ResidentPeak() as peak:  # memory from its own forward: the sampling thread is not timed
            module(features, phrase_features, phrase_mask)
        for _ in range(repeats):
            start = time.perf_counter()
            module(features, phrase_features, phrase_mask)
            times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_mb": peak.peak_mb}


def sweep(
    head: str, axis: str, sizes: list[int], fixed: int, repeats: int, slack: float, lpa_implementation: str
) -> dict:
    config = _config(head, lpa_implementation)
    points = []
    for size in sizes:
        grid, phrases = (size, fixed) if axis == "tokens" else (fixed, size)
        result, _ = run_in_child(_measure, head, grid, phrases, repeats, lpa_implementation)
        flops = head_flops(config, grid, phrases)["total"]
        # the size the exponent is taken against: pixels the head attends over, or phrases
        x = grid * grid if axis == "tokens" else phrases
        points.append({"grid": grid, "phrases": phrases, "x": x, "flops": flops, **result})
        print(
            f"{head} {axis}: grid {grid}x{grid} ({16 * grid} px), {phrases} phrases: {result['seconds']:.3f} s, "
            f"peak +{result['peak_mb']:.0f} MiB, {flops / 1e9:.1f} GFLOP ({flops / result['seconds'] / 1e9:.1f} "
            "GFLOP/s)",
            flush=True,
        )
    xs = [p["x"] for p in points]
    time_exponent = growth_exponent(xs, [p["seconds"] for p in points])
    implied = growth_exponent(xs, [p["flops"] for p in points])
    memory_exponent = growth_exponent(xs, [max(p["peak_mb"], 1.0) for p in points])
    return {
        "head": head,
        "axis": axis,
        "points": points,
        "time_exponent": time_exponent,
        "implied_time_exponent": implied,
        "memory_exponent": memory_exponent,
        "implied_memory_exponent": MEMORY_IMPLIED,
        "time_flag": "WORSE" if time_exponent > implied + slack else "ok",
        "memory_flag": "WORSE" if memory_exponent > MEMORY_IMPLIED + slack else "ok",
    }


def format_table(record: dict) -> str:
    lines = [
        "Exponents k of cost ~ size^k (tokens: pixels of the stride-16 grid, g^2; phrases: P). Implied time "
        "exponent = slope of the analytic FLOPs over the same sizes. EPNG's LPA on its "
        f"{record.get('lpa_implementation', 'flex')} path.",
        "",
        "| head | axis | sizes | seconds | peak MiB | time k (implied) | memory k (implied) | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in record["sweeps"]:
        points = result["points"]
        sizes = (
            ", ".join(f"{p['grid']}x{p['grid']}" for p in points)
            if result["axis"] == "tokens"
            else ", ".join(str(p["phrases"]) for p in points)
        )
        seconds = ", ".join(f"{p['seconds']:.2f}" for p in points)
        memory = ", ".join(f"{p['peak_mb']:.0f}" for p in points)
        verdict = "ok" if result["time_flag"] == result["memory_flag"] == "ok" else "WORSE than implied"
        lines.append(
            f"| {result['head']} | {result['axis']} | {sizes} | "
            f"{seconds} | {memory} | "
            f"{result['time_exponent']:.2f} ({result['implied_time_exponent']:.2f}) | "
            f"{result['memory_exponent']:.2f} (<= {result['implied_memory_exponent']:.0f}) | {verdict} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--heads", nargs="+", choices=list(GROUNDING_HEADS), default=list(GROUNDING_HEADS))
    parser.add_argument("--grids", type=int, nargs="+", default=[20, 40, 60, 80])
    parser.add_argument("--phrase-counts", type=int, nargs="+", default=[1, 5, 15, 30, 60])
    parser.add_argument("--fixed-phrases", type=int, default=15, help="phrases during the token sweep")
    parser.add_argument(
        "--fixed-grid", type=int, default=40, help="grid during the phrase sweep (40: 640 px)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--slack", type=float, default=0.25, help="tolerated excess of a measured exponent")
    parser.add_argument(
        "--lpa-implementation",
        default="flex",
        choices=("flex", "direct", "auto"),
        help="EPNG's LPA path at every size (default flex: one algorithm across the sweep; 'auto' switches "
        "to direct below the library's token threshold)",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    machine = machine_description()
    print_machine(machine)
    sweeps = []
    for head in args.heads:
        common = (args.repeats, args.slack, args.lpa_implementation)
        sweeps.append(sweep(head, "tokens", args.grids, args.fixed_phrases, *common))
        sweeps.append(sweep(head, "phrases", args.phrase_counts, args.fixed_grid, *common))
    record = {"machine": machine, "sweeps": sweeps, "lpa_implementation": args.lpa_implementation}
    print()
    print(format_table(record))
    write_json(args.json, record)
    return record


if __name__ == "__main__":
    main()
