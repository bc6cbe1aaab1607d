"""LPA on flex attention (CPU): how the block size of the block mask changes speed, with exactness checked.

On CPU, inductor's flex-attention kernel tiles queries and keys by the block mask's BLOCK_SIZE
(q split x kv split; without a block mask the whole N x N of a head is one tile). Each tile is a small
GEMM followed by the score modifier and an online-softmax rescale, so larger kv tiles mean larger GEMMs
and fewer rescales, smaller ones stay in cache. This script runs EPNG's LPA score modifier
(modeling/attention.locality_prior_score_mod) through the compiled flex attention with a block mask of
full tiles (modeling/attention.dense_block_mask) of each `--block-sizes` setting, interleaving the
settings (and the direct, materialised LPA) in every round so that load on the machine hits them alike,
and compares every output with the direct LPA.

    python -m benchmarks.lpa_block_size                       # 40x40 and 80x80, d 768, 8 heads, batch 1
    python -m benchmarks.lpa_block_size --sides 20 --rounds 2 --block-sizes default 128x128 128xN
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn.attention.flex_attention import flex_attention

from narrative_grounding.modeling.attention import (
    dense_block_mask,
    grid_distance,
    locality_prior_score_mod,
)

from ._common import machine_description, print_machine, write_json


def direct_lpa(query, key, value, prior_scale, side: int, clamp: float) -> torch.Tensor:
    distance = grid_distance(side, side, clamp=clamp, form="squared")  # N x N
    scores = query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5 * (prior_scale.view(-1, 1, 1) * distance)
    return scores.softmax(-1) @ value


def parse_block(text: str, tokens: int) -> tuple[int, int] | None:
    if text == "default":
        return None
    q, kv = text.lower().split("x")
    return (int(q), tokens if kv == "n" else int(kv))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sides", type=int, nargs="+", default=[40, 80])
    parser.add_argument(
        "--block-sizes",
        nargs="+",
        default=["default", "64x512", "128x128", "64xN", "128xN", "128x512", "64x256", "256x256"],
        help="QxKV block sizes of the full block mask; N = all keys; 'default' = no block mask",
    )
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    machine = machine_description()
    print_machine(machine)
    compiled = torch.compile(flex_attention, dynamic=False)
    clamp = 2.0
    results = []
    for side in args.sides:
        tokens = side * side
        torch.manual_seed(0)
        shape = (args.batch, args.heads, tokens, args.d_model // args.heads)
        query, key, value = (torch.randn(shape) for _ in range(3))
        prior_scale = 1.0 + 0.1 * torch.randn(args.heads)
        score_mod = locality_prior_score_mod(prior_scale, side, clamp=clamp, form="squared")
        with torch.inference_mode():
            reference = direct_lpa(query, key, value, prior_scale, side, clamp)
            settings = {}
            for text in args.block_sizes:
                block = parse_block(text, tokens)
                mask = None if block is None else dense_block_mask(tokens, "cpu", block)
                start = time.perf_counter()
                output = compiled(query, key, value, score_mod=score_mod, block_mask=mask)
                compile_s = time.perf_counter() - start
                settings[text] = {
                    "mask": mask,
                    "times": [],
                    "compile_s": compile_s,
                    "max_abs_diff": float((output - reference).abs().max()),
                }
            # the direct path (materialised N x N scores, matmul + softmax) for comparison
            settings["direct"] = {"mask": None, "times": [], "compile_s": 0.0, "max_abs_diff": 0.0}
            for _ in range(args.rounds):  # interleaved: every setting sees the same load
                for text, setting in settings.items():
                    start = time.perf_counter()
                    if text == "direct":
                        direct_lpa(query, key, value, prior_scale, side, clamp)
                    else:
                        compiled(query, key, value, score_mod=score_mod, block_mask=setting["mask"])
                    setting["times"].append(time.perf_counter() - start)
        default_time = None
        for text, setting in settings.items():
            seconds = sorted(setting["times"])[len(setting["times"]) // 2]
            default_time = default_time or seconds
            row = {
                "side": side,
                "block_size": text,
                "seconds": seconds,
                "speedup_vs_first": default_time / seconds,
                "max_abs_diff": setting["max_abs_diff"],
                "compile_s": setting["compile_s"],
            }
            results.append(row)
            print(
                f"{side}x{side} ({tokens} tokens), block {text:>8}: {seconds:.4f} s "
                f"({row['speedup_vs_first']:.2f}x of {args.block_sizes[0]}), max |diff| vs direct "
                f"{row['max_abs_diff']:.1e}",
                flush=True,
            )
    record = {"machine": machine, "rows": results, "d_model": args.d_model, "heads": args.heads}
    write_json(args.json, record)
    return record


if __name__ == "__main__":
    main()
