"""LPA on flex attention (CPU): how the block size of the block mask changes speed, with exactness checked.

On CPU, inductor's flex-attention kernel tiles queries and keys by the block mask's BLOCK_SIZE
(q split x kv split; without a block mask the whole N x N of a head is one tile). Each tile is a small
GEMM followed by the score modifier and an online-softmax rescale, so larger kv tiles mean larger GEMMs
and fewer rescales, smaller ones stay in cache. This script runs the model's own LPA
attention core (modeling/attention.LocalityPerceptiveAttention: its flex path, with the block mask of
full tiles set to each `--block-sizes` setting, and its direct, materialised path), interleaving the
settings in every round so that load on the machine hits them alike, and compares every output with the
direct path. The flex path is the model's compiled kernel: the first grid size gets a kernel specialised
to it, later sizes share a dynamic-shape one, as in the model.

    python -m benchmarks.lpa_block_size                       # 40x40 and 80x80, d 768, 8 heads, batch 1
    python -m benchmarks.lpa_block_size --sides 20 --rounds 2 --block-sizes default 128x128 128xN
"""

from __future__ import annotations

import argparse
import time

import torch

from narrative_grounding.modeling.attention import LocalityPerceptiveAttention

from ._common import machine_description, print_machine, write_json


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
    # EPNG's settings: the released code's squared distance, clamped at 2 (see docs/architecture.md)
    lpa = LocalityPerceptiveAttention(
        d_model=args.d_model, num_heads=args.heads, distance_clamp=2.0, distance_form="squared"
    ).eval()
    results = []
    for side in args.sides:
        tokens = side * side
        torch.manual_seed(0)
        shape = (args.batch, args.heads, tokens, args.d_model // args.heads)  # B x Hd x N x Dh
        query, key, value = (torch.randn(shape) for _ in range(3))
        with torch.inference_mode():
            lpa.prior_scale.copy_(1.0 + 0.1 * torch.randn(args.heads))  # W_j of EPNG eq. 4, away from 1
            reference = lpa._direct(query, key, value, side, side)
            settings = {}
            for text in args.block_sizes:
                block = parse_block(text, tokens)
                start = time.perf_counter()
                output = lpa._flex(query, key, value, side, side, block_size=block)
                compile_s = time.perf_counter() - start
                settings[text] = {
                    "block": block,
                    "times": [],
                    "compile_s": compile_s,
                    "max_abs_diff": float((output - reference).abs().max()),
                }
            # the direct path (materialised N x N scores, matmul + softmax) for comparison
            settings["direct"] = {"block": None, "times": [], "compile_s": 0.0, "max_abs_diff": 0.0}
            for _ in range(args.rounds):  # interleaved: every setting sees the same load
                for text, setting in settings.items():
                    start = time.perf_counter()
                    if text == "direct":
                        lpa._direct(query, key, value, side, side)
                    else:
                        lpa._flex(query, key, value, side, side, block_size=setting["block"])
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
