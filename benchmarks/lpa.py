"""LPA: fused (flex_attention, compiled) vs direct (materialised N x N) time and peak memory.

Paper sizes: d_model 768, 8 heads, batch 2, at 40x40 (640x640 input) and 80x80 tokens. Forward for both
paths; forward + backward for the paths that support it here (flex has no CPU backward in torch 2.15).
Peak memory is the largest growth of the resident set during the timed calls, sampled by a thread
(benchmarks/_common.ResidentPeak), in a child process per measurement so that paths share nothing.
Run: python benchmarks/lpa.py [--sizes 40 80] [--repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import torch

from narrative_grounding.modeling.attention import LocalityPerceptiveAttention

sys.path.insert(0, str(Path(__file__).parent))
from _common import ResidentPeak, return_freed_memory_at_once  # noqa: E402


def measure(
    queue, implementation: str, side: int, backward: bool, repeats: int, d_model: int, heads: int, batch: int
):
    torch.manual_seed(0)
    module = LocalityPerceptiveAttention(
        d_model=d_model,
        num_heads=heads,
        distance_clamp=2.0,
        distance_form="squared",
        implementation="direct" if implementation == "projections" else implementation,
    )
    x = torch.randn(batch, side * side, d_model, requires_grad=backward)

    def step():
        if implementation == "projections":  # the qkv and output projections both paths share
            with torch.no_grad():
                return module.out_proj(module.qkv(x)[..., :d_model])
        if backward:
            module(x, side, side).sum().backward()
        else:
            with torch.no_grad():
                return module(x, side, side)

    return_freed_memory_at_once()
    step()  # warm-up (and compilation for flex)
    with ResidentPeak() as peak:
        start = time.perf_counter()
        for _ in range(repeats):
            output = step()
        seconds = (time.perf_counter() - start) / repeats
    peak_mb = peak.peak_mb
    # numpy, not a tensor: a tensor would cross the queue as a shared-memory handle of a dead process.
    queue.put((seconds, peak_mb, None if backward else output.numpy()))


def run(implementation, side, backward, repeats, d_model, heads, batch):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(
        target=measure, args=(queue, implementation, side, backward, repeats, d_model, heads, batch)
    )
    process.start()
    seconds, peak_mb, output = queue.get()
    process.join()
    return seconds, peak_mb, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 80])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, d_model {args.d_model}, "
        f"{args.heads} heads, batch {args.batch}"
    )
    print(
        f"{'tokens':>8} {'pass':>17} {'path':>7} {'time s':>9} {'peak MB':>9} {'speed-up':>9} {'max |diff|':>11}"
    )
    for side in args.sizes:
        common = (args.repeats, args.d_model, args.heads, args.batch)
        direct = run("direct", side, False, *common)
        flex = run("flex", side, False, *common)
        diff = float(abs(direct[2] - flex[2]).max())
        label = f"{side}x{side}"
        print(f"{label:>8} {'forward':>17} {'direct':>7} {direct[0]:9.3f} {direct[1]:9.0f} {'':>9} {'':>11}")
        print(
            f"{label:>8} {'forward':>17} {'flex':>7} {flex[0]:9.3f} {flex[1]:9.0f} {direct[0] / flex[0]:8.2f}x {diff:11.2e}"
        )
        shared = run("projections", side, False, *common)[0]
        core_ratio = (direct[0] - shared) / max(flex[0] - shared, 1e-9)
        print(
            f"{label:>8} {'forward':>17} {'qkv+out':>7} {shared:9.3f} {'':>9} "
            f"attention core (time minus the shared projections): {core_ratio:.2f}x"
        )
        backward = run("direct", side, True, *common)
        print(
            f"{label:>8} {'forward+backward':>17} {'direct':>7} {backward[0]:9.3f} {backward[1]:9.0f} "
            f"{'(flex: no CPU backward)' if not torch.cuda.is_available() else ''}"
        )


if __name__ == "__main__":
    main()
