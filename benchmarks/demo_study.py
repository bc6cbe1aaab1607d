"""What caps the main job on the hard synthetic level, and what lifts it: one change per row, same budget.

Every row is the recipe of `narrative-grounding demo` (`epng-tiny` on 4,000 hard-level images at 128 px,
batch 16, learning rate 3e-3 with the cosine fitted to the budget, 1 torch thread + 1 data-loading worker,
an evaluation every 60 s of training) with one change: a model configuration override, a recipe option, or
both. Each run is a fresh child process; the synthetic data are generated once per (size, count) into
`--data-root` and shared by every row and seed (the seed varies the training only). Reported per row:
final and best Average Recall on the 200 validation images (mean ± std over seeds, min-max), things /
stuff, AR per expression kind (attribute, group, position, size, relation, count_position, stuff: the
synthetic annotations record each phrase's kind), the optimizer steps the budget gave, and the seconds per
step. `--steps N` trains every run for N optimizer steps of the demo's batch instead of a time budget (the cosine
spans them; a row with another batch size trains on as many samples): rows then compare the same
optimisation whatever else loads the machine, and s/step says what each costs. Every run is one process;
the demo itself splits the batch between one process per core (`--processes`), the same optimisation but
for batch norm, whose statistics then come from each process's share of the batch.

With `--json FILE` each finished run is appended to FILE.runs.jsonl at once, and a rerun with the same
settings reuses the runs found there, so a sweep can be interrupted, extended with more seeds or rows, and
run as several processes side by side (`--rows`) that share the file; `--report` prints the table of
everything in the file without training.

`--ceiling` measures what the prediction stride alone allows: each validation phrase's ground-truth mask
area-averaged to stride 4 (2, 1), brought back with the bilinear upsampling post-processing uses and
thresholded at 0.5, scored by the same metric. A perfect model whose logits live at stride 4 reaches that
AR and no more.

    python -m benchmarks.demo_study --json study.json                                  # every row, 3 seeds
    python -m benchmarks.demo_study --json study.json --rows default "stride-8 tokens (ours)" --seeds 0
    python -m benchmarks.demo_study --json study.json --report
    python -m benchmarks.demo_study --json steps.json --steps 700 --rows default "no phrase decoder"  # load-immune
    python -m benchmarks.demo_study --ceiling
    python -m benchmarks.demo_study --budget 20 --num-train 64 --num-validation 16 --seeds 0 --rows default
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from narrative_grounding.commands.demo import DEFAULTS as DEMO_DEFAULTS
from narrative_grounding.data.synthetic import EXPRESSION_KINDS

from ._common import load_average, machine_description, print_machine, run_in_child, write_json
from .ablations import summarise

TEXT_DROPOUT_01 = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}  # BERT's own default
#: epng-tiny as the first two rounds of the study measured it (without the two additions of the third round).
BEFORE_THIRD_ROUND = {"epng_mask_refinement_kernels": 0, "epng_phrase_decoder_reads_tokens": False}
#: label -> (PngConfig overrides, demo recipe overrides). Rows marked "ours" change the architecture
#: beyond the paper: configuration switches that the paper configs leave off.
ROWS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}),
    # where things are: the communicator grid and absolute position
    "stride-8 tokens (ours)": ({"epng_communicator_stride": 8}, {}),
    "LPA + sine positions (ours)": ({"epng_position_encoding": "lpa_absolute"}, {}),
    "stride-8 tokens + sine positions (ours)": (
        {"epng_communicator_stride": 8, "epng_position_encoding": "lpa_absolute"},
        {},
    ),
    "192 px input": ({}, {"image_size": 192}),
    # capacity
    "wider: d_model 192": ({"d_model": 192, "ffn_dim": 384}, {}),
    "narrower: d_model 64": ({"d_model": 64, "ffn_dim": 128}, {}),
    "deeper: 4 communicator layers": ({"num_communicator_layers": 4}, {}),
    "backbone: channels 32-256": (
        {"backbone_config": {"timm_model_args": {"channels": [32, 64, 128, 256]}}},
        {},
    ),
    "backbone: 2 blocks per stage": ({"backbone_config": {"timm_model_args": {"layers": [2, 2, 2, 2]}}}, {}),
    # the stem: epng-tiny's is timm's deep stem (3 x 3 convolutions of 8, 8 and 16 channels)
    "7x7 stem of 64 channels (epng-tiny before 2026-12-07)": (
        {"backbone_config": {"timm_model_args": {"stem_type": "", "stem_width": 64}}},
        {},
    ),
    "deep stem of 16-32 channels": ({"backbone_config": {"timm_model_args": {"stem_width": 16}}}, {}),
    "the stem's max pool replaced by a strided convolution": (
        {"backbone_config": {"timm_model_args": {"replace_stem_pool": True}}},
        {},
    ),
    "text: 4 layers": ({"text_config": {"num_hidden_layers": 4}}, {}),
    "text: average last 2 layers": ({"text_layers_to_average": 2}, {}),
    "attention phrase pooling (ours)": ({"phrase_pooling": "attention"}, {}),
    # what epng-tiny adds to EPNG (ours): the phrase decoder, its token reading, the mask refinement; and the
    # text encoder's dropout
    "phrase decoder: 1 layer (ours)": ({"epng_phrase_decoder_layers": 1}, {}),
    "phrase decoder: 3 layers (ours)": ({"epng_phrase_decoder_layers": 3}, {}),
    "mask refinement: 8 kernels (ours)": ({"epng_mask_refinement_kernels": 8}, {}),
    "no phrase decoder": ({"epng_phrase_decoder_layers": 0, "epng_phrase_decoder_reads_tokens": False}, {}),
    "no mask refinement": ({"epng_mask_refinement_kernels": 0}, {}),
    "phrase decoder without token reading": ({"epng_phrase_decoder_reads_tokens": False}, {}),
    "no mask refinement, no token reading (epng-tiny before the third round)": (BEFORE_THIRD_ROUND, {}),
    "text dropout 0.1": ({"text_config": TEXT_DROPOUT_01}, {}),
    "no phrase decoder, text dropout 0.1 (epng-tiny before 2026-12-02)": (
        {**BEFORE_THIRD_ROUND, "epng_phrase_decoder_layers": 0, "text_config": TEXT_DROPOUT_01},
        {},
    ),
    # EPNG eq. 10's plain dot product (the release's too) instead of our d_model^-1/2 scaling
    "unscaled mask logits": ({"epng_scale_mask_logits": False}, {}),
    "mask loss at the input size (EPNG eqs. 10-11)": ({"mask_loss_resolution": "input"}, {}),
    "Dice loss weight 4 (demo: 2)": ({"dice_loss_weight": 4.0}, {}),
    # the losses: EPNG eq. 15's Semantic Alignment Loss off (BCE + Dice alone)
    "no SAL": ({"sal_loss_weight": 0.0}, {}),
    # data and recipe
    "12,000 images": ({}, {"num_train": 12000}),
    "learning rate 1e-3": ({}, {"learning_rate": 1e-3}),
    "learning rate 6e-3": ({}, {"learning_rate": 6e-3}),
    "batch 8": ({}, {"batch_size": 8}),
    # gradient clipping: the demo's "fast" recipe clips the global gradient norm at 1
    "no gradient clipping (demo: norm 1)": ({}, {"max_grad_norm": 0.0}),
    "gradient clipping at norm 0.5 (demo: 1)": ({}, {"max_grad_norm": 0.5}),
    "gradient clipping at norm 0.25 (demo: 1)": ({}, {"max_grad_norm": 0.25}),
    "learning rate 6e-3, clipping at norm 0.25": ({}, {"learning_rate": 6e-3, "max_grad_norm": 0.25}),
    "learning rate 4.5e-3, clipping at norm 0.25": ({}, {"learning_rate": 4.5e-3, "max_grad_norm": 0.25}),
    "batch 32": ({}, {"batch_size": 32}),
    "weight decay 0.05 (demo: 1e-4)": ({}, {"weight_decay": 0.05}),
    "linear learning-rate decay (demo: cosine)": ({}, {"lr_scheduler_type": "linear"}),
    # the optimizer: the demo's "fast" recipe gives the hidden layers' weight matrices to Muon (lr 0.01)
    "AdamW for every parameter (demo before 2026-12-07 20:00 UTC)": ({}, {"optimizer": "adamw"}),
    "Muon learning rate 0.005 (demo: 0.01)": ({}, {"muon_learning_rate": 0.005}),
    "Muon learning rate 0.02 (demo: 0.01)": ({}, {"muon_learning_rate": 0.02}),
    "Muon learning rate 0.04 (demo: 0.01)": ({}, {"muon_learning_rate": 0.04}),
    # where the masks are made: epng-tiny's are at stride 2 (ours), with the stem's stride-2 map
    "masks at stride 4 (epng-tiny before 2026-12-07 05:30 UTC)": ({"epng_mask_stride": 4}, {}),
    # the other head
    "DRMN head (drmn-tiny)": ({}, {"model": "drmn-tiny"}),
    "DRMN head (drmn-tiny), AdamW for every parameter": ({}, {"model": "drmn-tiny", "optimizer": "adamw"}),
}
# The demo's own defaults, so that the study trains what `narrative-grounding demo` trains.
RECIPE = {
    key: DEMO_DEFAULTS[key]
    for key in (
        "model",
        "num_train",
        "num_validation",
        "image_size",
        "batch_size",
        "learning_rate",
        "threads",
        "dataloader_workers",
        "eval_every_seconds",
    )
}
#: options of the training script (not the demo's) that a row may set in its recipe overrides
TRAINING_OVERRIDES = (
    "optimizer",
    "muon_learning_rate",
    "max_grad_norm",
    "weight_decay",
    "warmup_ratio",
    "lr_scheduler_type",
)
# stuff phrases are their own kind: their column would repeat "stuff"
THING_KINDS = [kind for kind in EXPRESSION_KINDS if kind != "stuff"]
KIND_KEYS = [f"average_recall_expression_{kind}" for kind in THING_KINDS]
SUMMARY_KEYS = ["average_recall", "average_recall_things", "average_recall_stuff", *KIND_KEYS]


def _train_one(recipe: dict[str, Any], overrides: dict[str, Any], seed: int, data_root: str) -> dict:
    """Runs in a child process: one demo-recipe training run; returns its final and best figures."""
    import logging

    import torch

    from narrative_grounding.commands.demo import training_arguments
    from narrative_grounding.training import train
    from narrative_grounding.training.allocator import keep_freed_memory

    torch.set_num_threads(recipe["threads"])
    keep_freed_memory()  # as the demo's training processes
    # as the demo does: the data-loading worker inherits the thread count instead of torch's default
    os.environ["OMP_NUM_THREADS"] = str(recipe["threads"])
    logging.getLogger("narrative_grounding").setLevel(logging.WARNING)
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="demo-study-") as output_dir:
        demo = argparse.Namespace(
            **{
                **DEMO_DEFAULTS,
                **recipe,
                "seed": 0,  # the same data for every run; the training seed is set below
                "level": "hard",
                "output_dir": output_dir,
                "data_dir": data_root,
                "gpu": False,
                "time_budget": recipe.get("time_budget") or 1.0,  # replaced below under a step budget
            }
        )
        args = training_arguments(demo)
        if recipe.get("max_steps"):  # a step budget: the same optimisation whatever the machine's load
            args.max_train_steps, args.max_train_time, args.fit_schedule_to_time = (
                recipe["max_steps"],
                None,
                False,
            )
        for key in TRAINING_OVERRIDES:  # the training script's own options, where a row sets them
            if key in recipe:
                setattr(args, key, recipe[key])
        args.seed = seed
        args.config_overrides = overrides or None
        args.no_progress_bar = True
        result = train(args)
    history = [
        {key: entry[key] for key in ("step", "train_seconds", *SUMMARY_KEYS) if key in entry}
        for entry in result.history
    ]
    best = max(history, key=lambda entry: entry["average_recall"])
    return {
        "final": {key: float(result.metrics[key]) for key in SUMMARY_KEYS if key in result.metrics},
        "best": best,
        "history": history,
        "steps": result.completed_steps,
        "train_seconds": result.train_seconds,
        "load_average_after": list(load_average()),
    }


def resolution_ceiling(data_root: str | None, num_train: int, num_validation: int) -> list[dict]:
    """AR (overall, things, stuff, per expression kind) of the ground truth seen through stride 4, 2 and 1."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from narrative_grounding.data import load_png_dataset
    from narrative_grounding.data.synthetic import ensure_synthetic_data
    from narrative_grounding.training.collate import row_phrase_masks
    from narrative_grounding.training.evaluation import average_recall_from_table

    folder = ensure_synthetic_data(
        "hard",
        num_train=num_train,
        num_validation=num_validation,
        image_size=RECIPE["image_size"],
        seed=0,
        root=data_root,
    )
    validation = load_png_dataset(folder, "validation")["validation"]
    rows = []
    for stride in (4, 2, 1):
        table = []
        for row in validation:
            reference = torch.from_numpy(row_phrase_masks(row).astype(np.float32))[None]  # 1 x P x H x W
            seen = F.avg_pool2d(reference, stride) if stride > 1 else reference
            seen = F.interpolate(seen, size=reference.shape[-2:], mode="bilinear", align_corners=False)
            prediction, truth = seen[0] > 0.5, reference[0] > 0.5
            kinds = [EXPRESSION_KINDS.index(p["expression"]) for p in row["phrases"]]
            for index, phrase in enumerate(row["phrases"]):
                table.append(
                    [
                        int((prediction[index] & truth[index]).sum()),
                        int((prediction[index] | truth[index]).sum()),
                        int(truth[index].sum()),
                        int(phrase["is_thing"]),
                        int(phrase["num_segments"]),
                        kinds[index],
                    ]
                )
        results = average_recall_from_table(np.array(table))
        rows.append({"stride": stride, **{key: results[key] for key in SUMMARY_KEYS if key in results}})
    return rows


def run_id(recipe: dict, overrides: dict, seed: int) -> str:
    return json.dumps({"recipe": recipe, "overrides": overrides, "seed": seed}, sort_keys=True)


def row_summary(label: str, runs: list[dict]) -> dict:
    summary: dict[str, Any] = {"label": label, "seeds": [run["seed"] for run in runs]}
    for key in SUMMARY_KEYS:
        values = [run["final"][key] for run in runs if key in run["final"]]
        if values:
            summary[key] = summarise(values)
    summary["best"] = summarise([run["best"]["average_recall"] for run in runs])
    summary["steps"] = summarise([run["steps"] for run in runs])
    summary["seconds_per_step"] = summarise([run["train_seconds"] / max(run["steps"], 1) for run in runs])
    return summary


def _mean(row: dict, key: str) -> str:
    return f"{100 * row[key]['mean']:.1f}" if key in row else "-"


def format_table(rows: list[dict], budget: str) -> str:
    kinds = [kind for kind in THING_KINDS if any(f"average_recall_expression_{kind}" in r for r in rows)]
    header = ["row", "seeds", "AR final", "AR best", "things", "stuff", *kinds, "steps", "s/step"]
    lines = [
        f"Demo recipe, {budget} of training per run; AR in %: mean ± std (min-max) over seeds; "
        "things, stuff and the expression kinds: means of the final evaluation.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        ar, best = row["average_recall"], row["best"]

        cells = [
            row["label"],
            str(len(row["seeds"])),
            f"{100 * ar['mean']:.1f} ± {100 * ar['std']:.1f} ({100 * ar['min']:.1f}-{100 * ar['max']:.1f})",
            f"{100 * best['mean']:.1f}",
            _mean(row, "average_recall_things"),
            _mean(row, "average_recall_stuff"),
            *(_mean(row, f"average_recall_expression_{kind}") for kind in kinds),
            f"{row['steps']['mean']:.0f}",
            f"{row['seconds_per_step']['mean']:.3f}" if "seconds_per_step" in row else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), metavar="LABEL")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=600.0, help="seconds of training per run")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train a fixed number of optimizer steps instead of --budget seconds (the cosine spans them): "
        "rows then compare the same optimisation whatever else loads the machine, and s/step gives each "
        "row's cost; counted in steps of the demo's batch, so that a row with another batch size trains on as "
        "many samples",
    )
    parser.add_argument("--num-train", type=int, default=RECIPE["num_train"])
    parser.add_argument("--num-validation", type=int, default=RECIPE["num_validation"])
    parser.add_argument(
        "--data-root", default=None, help="cache folder of the synthetic data (default: the package's cache)"
    )
    parser.add_argument("--json", default=None, help="write the record here; runs go to JSON.runs.jsonl")
    parser.add_argument("--report", action="store_true", help="only print the table of the runs in --json")
    parser.add_argument(
        "--ceiling", action="store_true", help="only measure the AR the prediction stride allows"
    )
    args = parser.parse_args(argv)
    if args.ceiling:
        ceiling = resolution_ceiling(args.data_root, args.num_train, args.num_validation)
        kinds = " | ".join(THING_KINDS)
        print(f"| prediction stride | AR | things | stuff | {kinds} |")
        print("|---" * (4 + len(THING_KINDS)) + "|")
        for row in ceiling:
            cells = [f"{100 * row.get(key, float('nan')):.1f}" for key in SUMMARY_KEYS]
            print(f"| {row['stride']} | " + " | ".join(cells) + " |")
        write_json(args.json, {"ceiling": ceiling})
        return {"ceiling": ceiling}

    log = Path(f"{args.json}.runs.jsonl") if args.json else None
    finished = {}
    if log is not None and log.is_file():
        for line in log.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                finished[entry["run_id"]] = entry

    machine = machine_description()
    print_machine(machine)
    start = time.perf_counter()
    rows = []
    for label in args.rows:
        overrides, recipe_changes = ROWS[label]
        recipe = {
            **RECIPE,
            "num_train": args.num_train,
            "num_validation": args.num_validation,
            **recipe_changes,
        }
        if args.steps:  # counted in batches of the demo's size: a row with another batch sees as many samples
            recipe["max_steps"] = args.steps * RECIPE["batch_size"] // recipe["batch_size"]
        else:
            recipe["time_budget"] = args.budget
        runs = []
        for seed in args.seeds:
            key = run_id(recipe, overrides, seed)
            entry = finished.get(key)
            if entry is None and not args.report:
                result, peak = run_in_child(_train_one, recipe, overrides, seed, args.data_root)
                entry = {"run_id": key, "label": label, "seed": seed, "peak_rss_mb": peak, **result}
                if log is not None:
                    with log.open("a") as file:
                        file.write(json.dumps(entry) + "\n")
                print(
                    f"{label} / seed {seed}: AR {100 * result['final']['average_recall']:.1f} "
                    f"(best {100 * result['best']['average_recall']:.1f}; {result['steps']} steps)",
                    flush=True,
                )
            if entry is not None:
                runs.append(entry)
        if runs:
            rows.append(row_summary(label, runs))
    budget = f"{args.steps} steps" if args.steps else f"{args.budget:.0f} s"
    record = {
        "machine": machine,
        "budget": budget,
        "recipe": {**RECIPE, "num_train": args.num_train, "num_validation": args.num_validation},
        "rows": rows,
        "wall_seconds": time.perf_counter() - start,
    }
    print()
    print(format_table(rows, budget))
    if not args.report:
        write_json(args.json, record)
    return record


if __name__ == "__main__":
    main()
