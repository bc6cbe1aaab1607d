"""`narrative-grounding evaluate`: Average Recall of a trained model on a PNG split.

The data is an official-layout directory, a prepared dataset (save_to_disk / Parquet folder / Hub repo) or
a synthetic level; evaluation runs through accelerate, so `accelerate launch` / torchrun spread it over
processes (counts are gathered, the metric is computed once).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..argument_types import positive_int, seed
from ..data.synthetic.levels import LEVELS
from ..metrics import INTEGRATIONS, PROTOCOLS
from ..modeling.image_processing_png import MASK_DECISIONS
from ..training.evaluation import EMPTY_GROUND_TRUTH_CHOICES, POST_PROCESSED_PROTOCOLS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `evaluate` to the `narrative-grounding` parser."""
    parser = subparsers.add_parser(
        "evaluate",
        help="Average Recall (overall / things / stuff / singular / plural) of a model on a PNG split",
        description=__doc__,
    )
    parser.add_argument("model", help="a folder saved with save_pretrained, or a Hub repo id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data_dir", help="root of the official PNG layout")
    source.add_argument("--dataset_name", help="prepared dataset: save_to_disk / Parquet folder / Hub repo")
    source.add_argument("--synthetic", choices=list(LEVELS), help="synthetic level")
    parser.add_argument("--split", default="validation")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="original",
        help="the Average Recall protocol: where masks are compared (docs/metric.md; default: %(default)s)",
    )
    parser.add_argument(
        "--inclusive_threshold",
        action="store_true",
        help="a probability of exactly 0.5 is in the mask (>=, as EPNG's val.py); default: > 0.5",
    )
    parser.add_argument(
        "--mask_decision",
        choices=MASK_DECISIONS,
        default=None,
        help="how each mask is decided from its probabilities: the 0.5 threshold (the papers) or the mask of "
        "highest expected IoU (default: the model's processor's post_process_mask_decision)",
    )
    parser.add_argument(
        "--empty_ground_truth",
        choices=EMPTY_GROUND_TRUTH_CHOICES,
        default="skip",
        help="a phrase whose ground truth the protocol's resize empties: left out and counted, or scored as a "
        "miss as the published code does (default: %(default)s)",
    )
    parser.add_argument(
        "--integration",
        choices=INTEGRATIONS,
        default="exact",
        help="area under the recall curve: exact (the mean IoU) or the published 1e-5 Riemann sum "
        "(default: %(default)s)",
    )
    parser.add_argument("--batch_size", type=positive_int, default=16)
    parser.add_argument("--max_samples", type=positive_int, default=None)
    parser.add_argument("--synthetic_num_validation", type=positive_int, default=200)
    parser.add_argument("--synthetic_image_size", type=positive_int, default=128)
    parser.add_argument("--synthetic_seed", type=seed, default=0)
    parser.add_argument("--synthetic_dir", default=None, help="synthetic data cache folder")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--token", default=None)
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results to this file")
    parser.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from ..loading import check_model_source
    from ..modeling.modeling_png import PngForPanopticNarrativeGrounding
    from ..modeling.processing_png import PngProcessor
    from ..training.collate import PngCollator
    from ..training.data import load_training_data, select_split
    from ..training.distributed import cpu_multiprocess_launch
    from ..training.evaluation import evaluate_average_recall, format_average_recall_table, scalar_metrics

    check_model_source(args.model, "model", variants=False)  # a trained model: a folder or a Hub repo
    accelerator = Accelerator(cpu=cpu_multiprocess_launch())
    model = PngForPanopticNarrativeGrounding.from_pretrained(
        args.model, revision=args.revision, token=args.token
    )
    processor = PngProcessor.from_pretrained(args.model, revision=args.revision, token=args.token)
    if args.mask_decision is not None:
        processor.image_processor.post_process_mask_decision = args.mask_decision
    decision = processor.image_processor.post_process_mask_decision
    decided_by_expected_iou = decision == "expected_iou" and args.protocol in POST_PROCESSED_PROTOCOLS
    if args.inclusive_threshold and decided_by_expected_iou:
        raise ValueError(
            "--inclusive_threshold is a rule of the 0.5 threshold, but this model's processor decides its masks "
            "by expected IoU (post_process_mask_decision); add --mask_decision threshold to score it as the papers do"
        )
    data_options = argparse.Namespace(
        synthetic=args.synthetic,
        data_dir=args.data_dir,
        dataset_name=args.dataset_name,
        # evaluation needs only the validation images: generate no training split
        synthetic_num_train=1,
        synthetic_num_validation=args.synthetic_num_validation,
        synthetic_image_size=args.synthetic_image_size,
        synthetic_seed=args.synthetic_seed,
        synthetic_dir=args.synthetic_dir,
        dataset_cache_dir=None,
    )
    dataset, name = load_training_data(data_options, main_process_first=accelerator.main_process_first)
    split = select_split(dataset, args.split, args.max_samples, "evaluation")
    dataloader = DataLoader(
        split,
        batch_size=args.batch_size,
        collate_fn=PngCollator(processor, with_references=True),
        generator=torch.Generator(),
    )
    model, dataloader = accelerator.prepare(model, dataloader)
    metrics = evaluate_average_recall(
        model,
        dataloader,
        accelerator,
        processor,
        protocol=args.protocol,
        inclusive_threshold=args.inclusive_threshold,
        empty_ground_truth=args.empty_ground_truth,
        integration=args.integration,
    )
    if accelerator.is_main_process:
        scoring = ", ".join(
            [
                args.protocol,
                "expected-IoU masks"
                if decided_by_expected_iou
                else (">= 0.5" if args.inclusive_threshold else "> 0.5"),
            ]
            + [f"empty ground truth: {args.empty_ground_truth}", f"{args.integration} integration"]
        )
        print(format_average_recall_table(metrics, title=f"{args.model} on {name} ({args.split}, {scoring})"))
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(scalar_metrics(metrics, prefix=""), indent=2))
    return 0
