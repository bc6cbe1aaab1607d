"""LPA: fused (flex_attention, compiled) vs direct (materialised N x N) time and peak memory.

Paper sizes: d_model 768, 8 heads, batch 2, at 40x40 (640x640 input) and 80x80 tokens. Forward for both
paths, as the whole module (qkv projection, attention, output projection) and as the attention core alone
(eqs. 3-6 on given q, k, v: the part the two paths compute differently); forward + backward for the paths
that support it here (flex has no CPU backward in torch 2.15).
Peak memory is the largest growth of the resident set during the timed calls, sampled by a thread
(benchmarks/_common.ResidentPeak), in a child process per measurement so that paths share nothing.
Times are medians over --rounds processes per path (direct and flex alternating) x --repeats calls each.
Run: python -m benchmarks.lpa [--sizes 40 80] [--repeats 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import torch

from narrative_grounding.modeling.attention import LocalityPerceptiveAttention

from ._common import ResidentPeak, library_versions, return_freed_memory_at_once, versions_line


def measure(
    queue,
    implementation: str,
    scope: str,
    side: int,
    backward: bool,
    repeats: int,
    d_model: int,
    heads: int,
    batch: int,
):
    torch.manual_seed(0)
    module = LocalityPerceptiveAttention(
        d_model=d_model,
        num_heads=heads,
        distance_clamp=2.0,
        distance_form="squared",
        implementation=implementation,
    )
    x = torch.randn(batch, side * side, d_model, requires_grad=backward)
    with torch.no_grad():
        query, key, value = module.project_heads(x)

    def step():
        if backward:
            module(x, side, side).sum().backward()
            return None
        with torch.no_grad():
            if scope == "module":
                return module(x, side, side)
            attend = module._flex if implementation == "flex" else module._direct
            return attend(query, key, value, side, side)

    return_freed_memory_at_once()
    step()  # warm-up (and compilation for flex)
    seconds = []
    with ResidentPeak() as peak:
        for _ in range(repeats):
            start = time.perf_counter()
            output = step()
            seconds.append(time.perf_counter() - start)
    peak_mb = peak.peak_mb
    # numpy, not a tensor: a tensor would cross the queue as a shared-memory handle of a dead process.
    queue.put((seconds, peak_mb, None if backward else output.numpy()))


def run(implementation, scope, side, backward, repeats, d_model, heads, batch):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(
        target=measure, args=(queue, implementation, scope, side, backward, repeats, d_model, heads, batch)
    )
    process.start()
    seconds, peak_mb, output = queue.get()
    process.join()
    return seconds, peak_mb, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 80])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per process")
    parser.add_argument(
        "--rounds", type=int, default=3, help="processes per path, direct and flex alternating"
    )
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    print(
        f"{versions_line(library_versions())}, {torch.get_num_threads()} threads, d_model {args.d_model}, "
        f"{args.heads} heads, batch {args.batch}"
    )
    print(
        f"{'tokens':>8} {'pass':>17} {'path':>7} {'median s':>9} {'peak MB':>9} {'speed-up':>9} {'max |diff|':>11} "
        "range s"
    )
    outputs = {}
    for side in args.sizes:
        common = (args.repeats, args.d_model, args.heads, args.batch)
        label = f"{side}x{side}"
        for scope in ("module", "core"):
            times = {"direct": [], "flex": []}
            peaks = {"direct": 0.0, "flex": 0.0}
            for _ in range(args.rounds):  # alternating processes: both paths see the same machine state
                for path in ("direct", "flex"):
                    seconds, peak_mb, output = run(path, scope, side, False, *common)
                    times[path] += seconds
                    peaks[path] = max(peaks[path], peak_mb)
                    outputs[path] = output
            diff = float(abs(outputs["direct"] - outputs["flex"]).max())
            direct, flex = statistics.median(times["direct"]), statistics.median(times["flex"])
            name = f"forward ({scope})"
            print(
                f"{label:>8} {name:>17} {'direct':>7} {direct:9.3f} {peaks['direct']:9.0f} {'':>9} {'':>11} "
                f"{min(times['direct']):.3f}-{max(times['direct']):.3f}"
            )
            print(
                f"{label:>8} {name:>17} {'flex':>7} {flex:9.3f} {peaks['flex']:9.0f} {direct / flex:8.2f}x "
                f"{diff:11.2e} {min(times['flex']):.3f}-{max(times['flex']):.3f}",
                flush=True,
            )
        seconds, peak_mb, _ = run("direct", "module", side, True, *common)
        print(
            f"{label:>8} {'forward+backward':>17} {'direct':>7} {statistics.median(seconds):9.3f} {peak_mb:9.0f} "
            f"{'(flex: no CPU backward)' if not torch.cuda.is_available() else ''}",
            flush=True,
        )


if __name__ == "__main__":
    main()
