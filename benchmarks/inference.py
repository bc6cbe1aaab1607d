"""Inference speed of the paper configurations on CPU: eager vs the fast path, split by stage.

For EPNG and DRMN at paper sizes (`epng-r101-bert-base`, `drmn-r101-bert-base`: ResNet-101 + FPN, BERT-base,
640x640, random weights) and each batch size, one fresh child process per (head, batch, path) measures:
- latency split into backbone (ResNet + FPN) / text encoder (BERT + phrase pooling) / head /
  post-processing (`PngProcessor.post_process_panoptic_narrative_grounding` to a 480x640 original size),
  timed stage by stage in the order `model.forward` runs them;
- end to end: `model(**inputs)` + post-processing, the median of the repeats; images/s = batch / that;
- peak memory: the child's peak resident set (model + activations; each configuration has its own);
- the head's throughput: its analytic FLOPs (benchmarks/flops.py) per second, as a fraction of the dense
  float32 matmul throughput (a 4096^3 `torch.matmul`, measured right before each configuration), the
  target being >= 50%;
- for the fast path (`optimize_for_inference`: torch.compile with inductor freezing + channels-last), the
  compile time (first call), the speed-up over eager and the largest |difference| of the mask logits.
Three paths:
- plain: none of the fast-path techniques: `model.eval()` under `torch.no_grad()`, EPNG's LPA on its direct
  (materialised N x N) form, BERT on transformers' eager attention;
- eager: the model as a user gets it from `from_pretrained`: as plain, but LPA takes its flex-attention path
  (`lpa_implementation="auto"` without gradients) and BERT uses SDPA;
- fast: eager + `optimize_for_inference` (torch.compile with inductor freezing, channels-last) under
  `torch.inference_mode()`.
Speed-ups of the fast path are given against both plain (the target) and eager.

Inputs: `--tokens` WordPiece tokens (230, the PNG limit) and `--phrases` phrases (15) per narrative.

    python -m benchmarks.inference                        # batch 1 and 12, both heads, eager and fast
    python -m benchmarks.inference --batch-sizes 1 --heads epng --paths eager --repeats 1 --image-size 320
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from narrative_grounding.modeling.heads import GROUNDING_HEADS

from ._common import (
    head_variant,
    machine_description,
    matmul_gflops,
    print_machine,
    random_model_inputs,
    run_in_child,
    versions_line,
    write_json,
)
from .flops import head_flops

ORIGINAL_SIZE = (480, 640)  # a typical COCO image, which the 640x640 input was resized from
LOGIT_TOLERANCE = {"atol": 1e-3, "rtol": 1e-3}  # fast vs eager mask logits (float32 reassociation only)


def _measure(
    head: str, batch: int, path: str, image_size: int, tokens: int, phrases: int, repeats: int
) -> dict:
    """Runs in a child process: build the model, warm up, time the stages and end to end."""
    from narrative_grounding import create_model, load_processor
    from narrative_grounding.inference_optimization import optimize_for_inference
    from narrative_grounding.modeling.text_encoder import pool_phrases

    torch.manual_seed(0)
    if path == "plain":
        model = create_model(head_variant(head), lpa_implementation="direct").eval()
        model.text_encoder.bert.set_attn_implementation("eager")
    else:
        model = create_model(head_variant(head)).eval()
    processor = load_processor("epng-tiny")  # post-processing does not depend on the tokenizer
    inputs = random_model_inputs(
        batch, image_size, tokens=tokens, phrases=phrases, vocab_size=model.config.text_config.vocab_size
    )
    target_sizes = [ORIGINAL_SIZE] * batch
    context = torch.no_grad
    if path == "fast":
        optimize_for_inference(model)
        context = torch.inference_mode

    def end_to_end():
        outputs = model(**inputs)
        processor.post_process_panoptic_narrative_grounding(outputs, target_sizes=target_sizes)
        return outputs

    def staged() -> list[float]:
        """The stages of `model.forward` one after another, each timed."""
        marks = [time.perf_counter()]
        features = model.visual_encoder(inputs["pixel_values"])
        marks.append(time.perf_counter())
        token_features = model.text_encoder(inputs["input_ids"], inputs["attention_mask"], None)
        phrase_features = pool_phrases(token_features, inputs["phrase_token_mask"]).to(features[4].dtype)
        marks.append(time.perf_counter())
        head_output = model.head(features, phrase_features, inputs["phrase_mask"].bool())
        marks.append(time.perf_counter())
        processor.post_process_panoptic_narrative_grounding(head_output.pred_masks, target_sizes=target_sizes)
        marks.append(time.perf_counter())
        return [after - before for before, after in zip(marks, marks[1:], strict=False)]

    with context():
        start = time.perf_counter()
        outputs = end_to_end()  # warm-up; compiles the fast path
        first_call = time.perf_counter() - start
        staged()  # warm-up of the stage-by-stage pass (no new graphs: same submodules, same shapes)
        stage_times, totals = [], []
        for _ in range(repeats):
            stage_times.append(staged())
            start = time.perf_counter()
            outputs = end_to_end()
            totals.append(time.perf_counter() - start)
    stages = np.median(np.array(stage_times), axis=0).tolist()
    return {
        "head": head,
        "batch": batch,
        "path": path,
        "first_call_s": first_call,
        "backbone_s": stages[0],
        "text_s": stages[1],
        "head_s": stages[2],
        "post_s": stages[3],
        "latency_s": float(np.median(totals)),
        "pred_masks": outputs.pred_masks[:1].float().numpy() if batch == 1 else None,
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--heads", nargs="+", choices=list(GROUNDING_HEADS), default=list(GROUNDING_HEADS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 12])
    parser.add_argument(
        "--paths", nargs="+", choices=("plain", "eager", "fast"), default=["plain", "eager", "fast"]
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed passes after warm-up (default: 3 at batch <= 2, else 1)",
    )
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--tokens", type=int, default=230)
    parser.add_argument("--phrases", type=int, default=15)
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--json", default=None, help="also write the results here (for run_all.py)")
    args = parser.parse_args(argv)

    from narrative_grounding import load_config

    machine = machine_description()
    print_machine(machine)
    matmul = matmul_gflops(args.matmul_size, repeats=3)
    print(f"dense float32 matmul ({args.matmul_size}^3): {matmul:.1f} GFLOP/s")
    grid = args.image_size // 16
    rows, reference_masks = [], {}
    for head in args.heads:
        flops = head_flops(load_config(head_variant(head)), grid, args.phrases)["total"]
        for batch in args.batch_sizes:
            repeats = args.repeats or (3 if batch <= 2 else 1)
            for path in args.paths:
                # the limit, measured right before each configuration: both see the same machine state
                matmul = matmul_gflops(args.matmul_size, repeats=3)
                result, peak = run_in_child(
                    _measure, head, batch, path, args.image_size, args.tokens, args.phrases, repeats
                )
                masks = result.pop("pred_masks")
                result.update(
                    peak_rss_mb=peak,
                    images_per_s=batch / result["latency_s"],
                    head_gflops=batch * flops / result["head_s"] / 1e9,
                    head_flops_per_image=flops,
                    repeats=repeats,
                )
                result["matmul_gflops"] = matmul  # the limit of this run, beside each row for merged reports
                result["head_matmul_fraction"] = result["head_gflops"] / matmul
                if masks is not None and path == "plain":
                    reference_masks[head] = masks
                if masks is not None and path != "plain" and head in reference_masks:
                    reference = reference_masks[head]
                    result["max_abs_diff"] = float(np.abs(masks - reference).max())
                    result["max_abs_logit"] = float(np.abs(reference).max())
                    result["within_tolerance"] = bool(
                        np.allclose(
                            masks, reference, atol=LOGIT_TOLERANCE["atol"], rtol=LOGIT_TOLERANCE["rtol"]
                        )
                    )
                    result["mask_agreement"] = float(((masks > 0) == (reference > 0)).mean())
                rows.append(result)
                print(_format_row(result), flush=True)
    for row in rows:  # speed-ups of the fast path, same head and batch, same run
        if row["path"] != "fast":
            continue
        for baseline in ("plain", "eager"):
            base = [
                r
                for r in rows
                if r["path"] == baseline and r["head"] == row["head"] and r["batch"] == row["batch"]
            ]
            if base:
                row[f"speedup_vs_{baseline}"] = base[0]["latency_s"] / row["latency_s"]
                row[f"head_speedup_vs_{baseline}"] = base[0]["head_s"] / row["head_s"]
    record = {
        "machine": machine,
        "matmul_gflops": matmul,
        "matmul_size": args.matmul_size,
        "image_size": args.image_size,
        "tokens": args.tokens,
        "phrases": args.phrases,
        "tolerance": LOGIT_TOLERANCE,
        "rows": rows,
    }
    print()
    print(format_table(record))
    write_json(args.json, record)
    return record


def _format_row(row: dict) -> str:
    return (
        f"{row['head']} batch {row['batch']} {row['path']}: backbone {row['backbone_s']:.3f} s, text "
        f"{row['text_s']:.3f} s, head {row['head_s']:.3f} s, post {row['post_s']:.3f} s, end to end "
        f"{row['latency_s']:.3f} s ({row['images_per_s']:.2f} img/s), first call {row['first_call_s']:.1f} s, "
        f"peak RSS {row['peak_rss_mb']:.0f} MiB"
    )


def format_table(record: dict) -> str:
    """A markdown table of the rows, with the targets."""
    lines = [
        f"Inference at {record['image_size']}x{record['image_size']}, {record['tokens']} tokens, "
        f"{record['phrases']} phrases; % of matmul: of the dense matmul measured right before each row",
        "",
        "| head | batch | path | backbone s | text s | head s | post s | latency s | img/s | head GFLOP/s "
        "(% of matmul) | peak RSS MiB | first call s | speed-up vs plain / eager | max abs diff vs plain "
        "(max abs logit) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    mixed_versions = len({versions_line(row["versions"]) for row in record["rows"] if "versions" in row}) > 1
    for row in record["rows"]:
        diff = f"{row['max_abs_diff']:.1e} ({row['max_abs_logit']:.1f})" if "max_abs_diff" in row else ""
        path = f"{row['path']} ({versions_line(row['versions'])})" if mixed_versions else row["path"]
        speedup = " / ".join(
            f"{row[key]:.2f}x" for key in ("speedup_vs_plain", "speedup_vs_eager") if key in row
        )
        lines.append(
            f"| {row['head']} | {row['batch']} | {path} | {row['backbone_s']:.3f} | {row['text_s']:.3f} | "
            f"{row['head_s']:.3f} | {row['post_s']:.3f} | {row['latency_s']:.3f} | {row['images_per_s']:.2f} | "
            f"{row['head_gflops']:.1f} ({100 * row['head_matmul_fraction']:.0f}%) | {row['peak_rss_mb']:.0f} | "
            f"{row['first_call_s']:.1f} | {speedup} | {diff} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
