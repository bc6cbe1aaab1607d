"""Throughput and memory of the Average Recall metric on a PNG-val-sized stream.

Streams synthetic phrases (random rectangles as predicted and ground-truth masks, 480 x 640 by
default, like a COCO image) through `AverageRecall.add_batch`, then `compute`, and prints
phrases/s and the peak resident memory. The masks of one batch are alive at a time: if the
metric kept masks, the peak would grow with the number of phrases (56,531 uint8 masks of
480 x 640 are ~17 GB); with counts it stays flat.

    python -m benchmarks.metric                       # the full PNG val2017 size: 56,531 phrases
    python -m benchmarks.metric --phrases 5000 --form list --device cuda
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from narrative_grounding.metrics import AverageRecall

from ._common import print_versions


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def rectangles(generator: torch.Generator, count: int, height: int, width: int, device: str) -> torch.Tensor:
    """`count x height x width` bool masks, one random axis-aligned rectangle each."""
    corners = torch.rand(count, 4, generator=generator)
    top, bottom = (corners[:, :2].sort(dim=1).values * height).long().unbind(1)
    left, right = (corners[:, 2:].sort(dim=1).values * width).long().unbind(1)
    rows = torch.arange(height)[None, :, None]  # 1 x H x 1
    cols = torch.arange(width)[None, None, :]  # 1 x 1 x W
    masks = (rows >= top[:, None, None]) & (rows <= bottom[:, None, None])
    masks = masks & (cols >= left[:, None, None]) & (cols <= right[:, None, None])  # count x H x W
    return masks.to(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phrases", type=int, default=56_531, help="number of phrases (PNG val2017: 56,531)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--form", choices=("stack", "list"), default="stack", help="P x H x W stack or list of H x W"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print_versions()

    generator = torch.Generator().manual_seed(0)
    metric = AverageRecall()
    rss_before = peak_rss_mib()
    generation_seconds = metric_seconds = 0.0
    for start in range(0, args.phrases, args.batch_size):
        count = min(args.batch_size, args.phrases - start)
        tic = time.perf_counter()
        predictions = rectangles(generator, count, args.height, args.width, args.device)
        references = rectangles(generator, count, args.height, args.width, args.device)
        is_thing = (torch.rand(count, generator=generator) < 0.6).tolist()
        num_segments = torch.randint(1, 4, (count,), generator=generator).tolist()
        if args.form == "list":
            predictions, references = list(predictions), list(references)
        toc = time.perf_counter()
        metric.add_batch(
            predictions=predictions, references=references, is_thing=is_thing, num_segments=num_segments
        )
        metric_seconds += time.perf_counter() - toc
        generation_seconds += toc - tic
    tic = time.perf_counter()
    results = metric.compute()
    compute_seconds = time.perf_counter() - tic

    print(
        f"phrases              {results['num_phrases']:,} ({args.height} x {args.width}, batches of {args.batch_size}, {args.form}, {args.device})"
    )
    print(f"add_batch            {metric_seconds:.1f} s = {args.phrases / metric_seconds:,.0f} phrases/s")
    print(f"compute              {compute_seconds:.2f} s")
    print(f"(mask generation     {generation_seconds:.1f} s, not counted)")
    print(f"peak RSS             {peak_rss_mib():,.0f} MiB (after imports: {rss_before:,.0f} MiB)")
    print(f"one batch of masks   {2 * args.batch_size * args.height * args.width / 2**20:,.0f} MiB as bool")
    print(f"average_recall       {results['average_recall']:.4f}")


if __name__ == "__main__":
    main()
