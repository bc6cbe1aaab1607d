"""Command-line options of the training script (shared by `training/train.py` and `narrative-grounding demo`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..argument_types import (
    json_object,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    seed,
    unit_interval,
)
from ..cli import ArgumentParser
from ..data.synthetic.levels import LEVELS
from ..metrics import PROTOCOLS
from .optimization import OPTIMIZERS, PRESETS, RECIPE_DEFAULTS, SCHEDULES


def checkpointing_steps_type(value: str) -> int | str:
    """`--checkpointing_steps`: a positive number of optimizer steps, or "epoch"."""
    if value == "epoch":
        return value
    try:
        steps = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'epoch', got {value!r}") from None
    if steps <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'epoch', got {value!r}")
    return steps


def add_training_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds every training option to `parser` (see docs/training.md)."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default="epng-tiny",
        help="a variant name from hub_configs (random init, e.g. epng-tiny, epng-r101-bert-base), a local "
        "folder saved with save_pretrained, or a Hub repo id (default: %(default)s)",
    )
    model.add_argument("--revision", default=None, help="Hub revision of --model")
    model.add_argument(
        "--text_model_name_or_path",
        default=None,
        help="with a variant name: start the text encoder from this BERT checkpoint (Hub id or folder)",
    )
    model.add_argument(
        "--backbone_pretrained",
        default=None,
        help="with a variant name: 'timm' for timm's ImageNet weights (needs the Hub) or a local timm weights file",
    )
    model.add_argument(
        "--config_overrides",
        type=json_object,
        default=None,
        help="with a variant name: JSON of PngConfig overrides, e.g. '{\"d_model\": 128}'",
    )

    data = parser.add_argument_group("data (give exactly one source)")
    source = data.add_mutually_exclusive_group()
    source.add_argument(
        "--data_dir", default=None, help="root of the official PNG layout (images/, annotations/)"
    )
    source.add_argument(
        "--dataset_name",
        default=None,
        help="a prepared dataset: a folder saved with DatasetDict.save_to_disk, a folder of Parquet files, "
        "or a Hub dataset repo (pushed with DatasetDict.push_to_hub)",
    )
    source.add_argument(
        "--synthetic",
        nargs="?",
        const="hard",
        default=None,
        choices=list(LEVELS),
        help="the synthetic dataset at this level (default level: hard), generated on first use",
    )
    data.add_argument("--synthetic_dir", default=None, help="cache folder of generated synthetic data")
    data.add_argument("--synthetic_num_train", type=positive_int, default=1000)
    data.add_argument("--synthetic_num_validation", type=positive_int, default=200)
    data.add_argument("--synthetic_image_size", type=positive_int, default=128)
    data.add_argument("--synthetic_seed", type=seed, default=0)
    data.add_argument("--dataset_cache_dir", default=None, help="where prepared Arrow files go")
    data.add_argument("--train_split", default="train")
    data.add_argument("--eval_split", default="validation")
    data.add_argument("--max_train_samples", type=positive_int, default=None)
    data.add_argument("--max_eval_samples", type=positive_int, default=None)
    data.add_argument("--dataloader_num_workers", type=non_negative_int, default=0)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument(
        "--optimization",
        default="auto",
        choices=("auto", *PRESETS),
        help="preset: 'paper' (Adam 1e-5, halved every 5 epochs, 5e-7 after 10), 'epng-released' (the recipe of "
        "EPNG's released code: Adam + L2 0.01, 1e-5/5e-6/2e-6/5e-7 from epochs 0/5/10/20, 60 epochs, 8 x 4 "
        "accumulation, per-epoch EMA, evaluation at 1216), 'drmn-reference' (Adam 1e-4, 20 epochs), 'fast' "
        "(Muon for the hidden matrices + AdamW, warm-up + cosine at higher lrs, for tiny models from "
        "scratch), 'auto' (fast below 10M parameters, else drmn-reference or paper by head); the options "
        "below override single fields "
        "(default: %(default)s)",
    )
    optim.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    optim.add_argument(
        "--learning_rate",
        type=positive_float,
        default=None,
        help="the optimizer's learning rate; with --optimizer muon, that of the parameters AdamW updates",
    )
    optim.add_argument(
        "--muon_learning_rate",
        type=positive_float,
        default=None,
        help="--optimizer muon: the learning rate of the hidden layers' weight matrices (default: the "
        "preset's; 0.01)",
    )
    optim.add_argument("--weight_decay", type=non_negative_float, default=None)
    optim.add_argument("--lr_scheduler_type", choices=SCHEDULES, default=None)
    optim.add_argument("--warmup_ratio", type=unit_interval, default=None)
    # --- training recipe options: default None = the --optimization preset's value, else RECIPE_DEFAULTS ---
    optim.add_argument(
        "--max_grad_norm",
        type=non_negative_float,
        default=None,
        help="gradient clipping (0 disables; default 1.0)",
    )
    optim.add_argument("--per_device_train_batch_size", type=positive_int, default=None, help="default 8")
    optim.add_argument("--gradient_accumulation_steps", type=positive_int, default=None, help="default 1")
    optim.add_argument("--num_train_epochs", type=positive_int, default=None, help="default 20")
    optim.add_argument(
        "--ema_decay",
        type=unit_interval,
        default=None,
        help="EPNG's released per-epoch EMA (see docs/training.md: after the first epoch the weights become "
        "decay x initial + (1 - decay) x trained, then nothing); 0 disables (default 0)",
    )
    optim.add_argument(
        "--eval_image_size",
        type=positive_int,
        default=None,
        help="evaluate at this square input size (a multiple of 32; EPNG's release: 1216) instead of the "
        "processor's size",
    )
    # --- end training recipe options ---
    optim.add_argument("--per_device_eval_batch_size", type=positive_int, default=16)
    optim.add_argument(
        "--max_train_steps", type=positive_int, default=None, help="overrides --num_train_epochs"
    )
    optim.add_argument(
        "--max_train_time",
        type=positive_float,
        default=None,
        help="wall-clock budget of the training steps in seconds (evaluation not counted); the run stops at "
        "the first optimizer step past it. The schedule still spans --num_train_epochs/--max_train_steps.",
    )
    optim.add_argument(
        "--fit_schedule_to_time",
        action="store_true",
        help="with --max_train_time and the cosine schedule: time the first --calibration_steps steps, then "
        "shorten the run (and its cosine) to the steps that fit in the budget, so the lr anneals before the end; "
        "re-fitted to the pace of the latest steps every tenth of the fitted run",
    )
    optim.add_argument("--calibration_steps", type=positive_int, default=20)
    optim.add_argument(
        "--mixed_precision",
        choices=("no", "fp16", "bf16"),
        default=None,
        help="default: the accelerate config / launch option",
    )
    optim.add_argument("--seed", type=seed, default=42)
    optim.add_argument(
        "--cpu",
        action="store_true",
        help="train on the CPU even if a GPU is present (several processes on a GPU-less machine use gloo anyway)",
    )

    run = parser.add_argument_group("evaluation, checkpoints, logging")
    run.add_argument("--output_dir", required=True, help="where the model, processor and card are saved")
    run.add_argument(
        "--eval_protocol",
        choices=PROTOCOLS,
        default="original",
        help="the Average Recall protocol: where masks are compared (docs/metric.md; default: %(default)s)",
    )
    run.add_argument(
        "--eval_steps", type=positive_int, default=None, help="also evaluate every N optimizer steps"
    )
    run.add_argument(
        "--eval_every_seconds",
        type=positive_float,
        default=None,
        help="also evaluate every N seconds of training time (for curves of AR against time)",
    )
    run.add_argument("--no_eval", action="store_true", help="skip evaluation (no eval split needed)")
    run.add_argument(
        "--checkpointing_steps",
        type=checkpointing_steps_type,
        default=None,
        help="save the accelerate state every N optimizer steps or every 'epoch' (under output_dir/checkpoints)",
    )
    run.add_argument("--checkpoints_total_limit", type=positive_int, default=None, help="keep the newest N")
    run.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="a checkpoint folder, or 'latest' (the newest complete one under output_dir/checkpoints)",
    )
    run.add_argument(
        "--report_to",
        default="all",
        help="trackers for accelerate: 'all' (every installed one), 'none', or a comma list (tensorboard, wandb, ...)",
    )
    run.add_argument("--logging_steps", type=positive_int, default=10)
    run.add_argument("--no_progress_bar", action="store_true")

    hub = parser.add_argument_group("Hub")
    hub.add_argument("--push_to_hub", action="store_true", help="push the model every epoch and at the end")
    hub.add_argument(
        "--hub_model_id", default=None, help="namespace/name (default: the output folder's name)"
    )
    hub.add_argument("--hub_token", default=None)
    hub.add_argument("--hub_private_repo", action="store_true")
    hub.add_argument("--hub_push_retries", type=positive_int, default=3)
    hub.add_argument(
        "--hub_retry_wait",
        type=non_negative_float,
        default=2.0,
        help="seconds before the first retry (doubles)",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    # The CLI's parser: the dashed spelling of every option (--output-dir) is a hidden alias here too.
    parser = ArgumentParser(
        description="Train a Panoptic Narrative Grounding model with accelerate (see docs/training.md)."
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of errors caused by bad input too"
    )
    return add_training_arguments(parser)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data_dir is None and args.dataset_name is None and args.synthetic is None:
        parser.error("give the data: --data_dir (official layout), --dataset_name or --synthetic [LEVEL]")
    if args.push_to_hub and args.hub_model_id is None:
        parser.error("--push_to_hub needs --hub_model_id (namespace/name)")
    if args.muon_learning_rate is not None and args.optimizer not in (None, "muon"):
        parser.error(f"--muon_learning_rate applies to --optimizer muon only, not {args.optimizer}")
    # --- training recipe resolution ---
    apply_recipe(args)
    if args.ema_decay and not 0.0 < args.ema_decay < 1.0:
        parser.error(f"--ema_decay must be in (0, 1) (or 0 to disable), got {args.ema_decay}")
    if args.eval_image_size is not None and args.eval_image_size % 32:
        parser.error(f"--eval_image_size must be a multiple of 32, got {args.eval_image_size}")
    # --- end training recipe resolution ---
    return args


def apply_recipe(args: argparse.Namespace) -> argparse.Namespace:
    """Fills the recipe options the user left out (None) from the --optimization preset, then from
    RECIPE_DEFAULTS ("auto" has no recipe of its own: it only picks optimizer and schedule)."""
    preset = PRESETS.get(args.optimization)
    for name, default in RECIPE_DEFAULTS.items():
        if getattr(args, name, None) is None:
            value = getattr(preset, name, None) if preset is not None else None
            setattr(args, name, default if value is None else value)
    return args
