"""What each released-code switch does, measured on the hard synthetic level with the tiny models.

Every row trains `epng-tiny` or `drmn-tiny` from scratch with the project's training loop and one switch
(or one group of switches) set to the released code's / reference's value; the first row of each group is
our default. Same budget, same data and the same `--seeds` for every row; the table gives synthetic
validation Average Recall as mean ± sample std (min-max) over the seeds and the difference to the group's
default, with a verdict: "matters" when the difference exceeds the larger of the two seed spreads,
"not resolved" otherwise.

Notes on the rows:
- "all reference" sets every DRMN switch but `drmn_initial_matching` (its own row), with the tiny model's
  width as FFN (the reference's FFN equals its width) and top-8 of the 16 stride-16 pixels at 128 px.
- No row for `drmn_phrase_update_dropout=0.0`: `drmn-tiny` trains without dropout (`drmn_dropout=0`), so the
  reference's value is already what its default does. No row for the post-processing fields of the image
  processor (`post_process_align_corners`, `post_process_upsampled`): every row here is a training run of a
  config, and these change only how a trained model's masks are resized for evaluation;
  `python -m benchmarks.post_processing` measures them on the same trained models.
- `sal_similarity=dot` is measured with the release's temperature 10 (raw dot products / 0.1 would be
  nobody's reading); the "all released" and "paper" rows set every switch of `epng-r101-bert-base-released`
  / `-paper` (the model sizes stay tiny).
- The training recipes (`--optimization epng-released`, `drmn-reference`) are not rows: their learning rates
  (1e-5, 1e-4) are meant for pretrained encoders over 60 / 20 epochs of PNG, not for tiny models from scratch
  in seconds; every row trains with the tiny models' `fast` recipe.

    python -m benchmarks.released_switches                                   # 3 seeds, 600 s per run
    python -m benchmarks.released_switches --budget-seconds 30 --seeds 0 1 2 --groups epng
    python -m benchmarks.released_switches --budget-steps 30     # equal steps: immune to machine load
    python -m benchmarks.released_switches --budget-seconds 20 --rows default "all released"  # a subset
"""

from __future__ import annotations

import argparse
import sys
import time

from ._common import machine_description, print_machine, write_json
from .ablations import RunCache, summarise

RELEASED_EPNG = "epng-r101-bert-base-released"
PAPER_EPNG = "epng-r101-bert-base-paper"
REFERENCE_DRMN = "drmn-r101-bert-base-reference"

EPNG_SWITCHES = (
    "lpa_distance", "epng_phrase_activation", "epng_residual_norm", "epng_attention_dropout",
    "epng_scale_mask_logits", "mask_loss_resolution", "mask_loss_reduction", "dice_eps", "sal_similarity",
    "sal_temperature", "sal_positives", "sal_aggregation", "sal_directions",
)  # fmt: skip
DRMN_SWITCHES = (
    "drmn_level_projection", "drmn_ffn_dim", "drmn_text_conditioning", "drmn_top_k_stride",
    "drmn_kernel_mlp_layers", "drmn_round_pixel_projection",
)  # fmt: skip


def preset_switches(variant: str, names: tuple[str, ...]) -> dict:
    """The values a named preset gives the switches `names` (read from its hub_configs file)."""
    from narrative_grounding import load_config

    config = load_config(variant)
    return {name: getattr(config, name) for name in names}


def build_groups() -> dict[str, list[tuple[str, str, dict]]]:
    """group -> rows (label, tiny variant, config overrides); the first row is the default."""
    released = preset_switches(RELEASED_EPNG, EPNG_SWITCHES)
    paper = preset_switches(PAPER_EPNG, EPNG_SWITCHES)
    epng = [
        ("default", "epng-tiny", {}),
        ("LPA distance euclidean (paper)", "epng-tiny", {"lpa_distance": "euclidean"}),
        ("phrase ReLU6", "epng-tiny", {"epng_phrase_activation": "relu6"}),
        ("double Add & LN", "epng-tiny", {"epng_residual_norm": "double"}),
        ("attention dropout 0.1", "epng-tiny", {"epng_attention_dropout": 0.1}),
        ("unscaled mask logits", "epng-tiny", {"epng_scale_mask_logits": False}),
        ("BCE + Dice at input size", "epng-tiny", {"mask_loss_resolution": "input"}),
        ("per-sample loss mean", "epng-tiny", {"mask_loss_reduction": "samples"}),
        ("Dice eps 2e-3", "epng-tiny", {"dice_eps": released["dice_eps"]}),
        ("SAL raw dot / 10", "epng-tiny", {"sal_similarity": "dot", "sal_temperature": 10.0}),
        ("SAL any-coverage positives", "epng-tiny", {"sal_positives": "any"}),
        ("SAL -log positive mass", "epng-tiny", {"sal_aggregation": "log_sum"}),
        ("SAL phrase -> pixel only", "epng-tiny", {"sal_directions": "phrase_to_pixel"}),
        ("all released", "epng-tiny", released),
        ("paper reading", "epng-tiny", paper),
    ]
    reference = preset_switches(REFERENCE_DRMN, DRMN_SWITCHES)
    drmn = [
        ("default", "drmn-tiny", {}),
        ("conv + GN + ReLU levels", "drmn-tiny", {"drmn_level_projection": "conv_gn_relu"}),
        ("FFN = width", "drmn-tiny", {"drmn_ffn_dim": 64}),  # the reference's FFN equals its width (256)
        ("no text conditioning", "drmn-tiny", {"drmn_text_conditioning": False}),
        ("top-k on stride 16", "drmn-tiny", {"drmn_top_k_stride": 16, "drmn_top_k": 8}),
        ("3-layer kernel MLP", "drmn-tiny", {"drmn_kernel_mlp_layers": 3}),
        ("per-round pixel map", "drmn-tiny", {"drmn_round_pixel_projection": True}),
        (
            "semantic-FPN initial matching",
            "drmn-tiny",
            {"drmn_level_projection": "conv_gn_relu", "drmn_initial_matching": "semantic_fpn"},
        ),
        # every switch above but the initial matching (measured before the semantic FPN was a switch)
        ("all reference", "drmn-tiny", {**reference, "drmn_ffn_dim": 64, "drmn_top_k": 8}),
        ("one query per noun token", "drmn-tiny", {"drmn_queries": "noun_token"}),
        ("pixel + slot context query", "drmn-tiny", {"drmn_context_query": "pixel"}),
        ("unscaled mask logits", "drmn-tiny", {"drmn_scale_mask_logits": False}),
    ]
    return {"epng": epng, "drmn": drmn}


def verdict(row: dict, default: dict) -> str:
    difference = row["ar"]["mean"] - default["ar"]["mean"]
    spread = max(row["ar"]["std"], default["ar"]["std"])
    if len(row["runs"]) < 2:
        return "1 seed: no spread"
    return "matters" if abs(difference) > spread else "not resolved"


def format_table(record: dict) -> str:
    lines = [
        f"Hard synthetic level, {record['num_train']} train / {record['num_validation']} validation images, "
        f"{record['budget']}, seeds {record['seeds']}. AR in %: mean ± std (min-max); Δ to the group's default.",
        "",
        "| head | row | AR | Δ AR | AR things | AR stuff | steps | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for group, rows in record["groups"].items():
        default = rows[0]
        for row in rows:
            ar = row["ar"]
            delta = 100 * (ar["mean"] - default["ar"]["mean"])
            lines.append(
                f"| {group} | {row['label']} | {100 * ar['mean']:.1f} ± {100 * ar['std']:.1f} "
                f"({100 * ar['min']:.1f}-{100 * ar['max']:.1f}) | {delta:+.1f} | "
                f"{100 * row['ar_things']['mean']:.1f} | {100 * row['ar_stuff']['mean']:.1f} | "
                f"{row['steps']['mean']:.0f} | {'-' if row is default else verdict(row, default)} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--groups", nargs="+", choices=("epng", "drmn"), default=["epng", "drmn"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget-seconds", type=float, default=None, help="training seconds per run (default 600)"
    )
    budget.add_argument(
        "--budget-steps",
        type=int,
        default=None,
        help="optimizer steps per run instead: immune to other load on the machine",
    )
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-validation", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    parser.add_argument("--data-root", default=None, help="cache folder of the synthetic data")
    parser.add_argument("--rows", nargs="+", default=None, metavar="LABEL", help="train only these rows")
    parser.add_argument("--json", default=None, help="write the record here (and FILE.runs.jsonl per run)")
    args = parser.parse_args(argv)

    if args.budget_steps is not None:
        budget_args = ["--max_train_steps", str(args.budget_steps)]
        budget_text = f"{args.budget_steps} optimizer steps per run (batch {args.batch_size})"
    else:
        seconds = 600.0 if args.budget_seconds is None else args.budget_seconds
        budget_args = ["--max_train_time", str(seconds), "--fit_schedule_to_time"]
        budget_text = f"{seconds:.0f} s of training per run (batch {args.batch_size})"
    data = {
        "num_train": args.num_train,
        "num_validation": args.num_validation,
        "root": args.data_root,
        "batch_size": args.batch_size,
    }
    machine = machine_description()
    print_machine(machine)
    print(f"budget: {budget_text}; seeds {args.seeds}", flush=True)
    cache = RunCache(args.json, budget_args, data, args.threads)
    all_groups = build_groups()
    groups: dict[str, list[dict]] = {}
    start = time.perf_counter()
    for group in args.groups:
        rows = []
        for index, (label, variant, overrides) in enumerate(all_groups[group]):
            # the default row is always trained: every Δ is relative to it
            if args.rows is not None and index > 0 and label not in args.rows:
                continue
            runs = [cache.run(variant, overrides, seed, f"{group} / {label}") for seed in args.seeds]
            rows.append(
                {
                    "label": label,
                    "variant": variant,
                    "overrides": overrides,
                    "runs": runs,
                    "ar": summarise([run["average_recall"] for run in runs]),
                    "ar_things": summarise([run["average_recall_things"] for run in runs]),
                    "ar_stuff": summarise([run["average_recall_stuff"] for run in runs]),
                    "steps": summarise([run["steps"] for run in runs]),
                }
            )
        groups[group] = rows
    record = {
        "machine": machine,
        "budget": budget_text,
        "seeds": args.seeds,
        "num_train": args.num_train,
        "num_validation": args.num_validation,
        "wall_seconds": time.perf_counter() - start,
        "command": "python -m benchmarks.released_switches "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "groups": groups,
    }
    print()
    print(format_table(record))
    write_json(args.json, record)
    return record


if __name__ == "__main__":
    main()
