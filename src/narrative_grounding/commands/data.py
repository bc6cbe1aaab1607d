"""``narrative-grounding prepare-data | validate | make-synthetic``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..argument_types import non_negative_int, positive_int, seed
from ..data.layout import SPLIT_DIRS, PngDataError
from ..data.synthetic.levels import LEVELS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the data sub-commands to the ``narrative-grounding`` parser."""
    prepare = subparsers.add_parser(
        "prepare-data",
        help="prepare the PNG dataset of an official-layout directory (Arrow cache, Parquet, Hub)",
        description="Read a COCO 2017 + PNG directory (official layout), report what cannot be used, and write "
        "the prepared dataset as Parquet (and/or push it to the Hub).",
    )
    prepare.add_argument("data_dir", help="root holding images/ and annotations/")
    prepare.add_argument("--output_dir", help="write Parquet shards to OUTPUT_DIR/data/<split>-*.parquet")
    prepare.add_argument(
        "--splits", nargs="+", choices=sorted(SPLIT_DIRS), help="default: the splits present"
    )
    prepare.add_argument(
        "--cache_dir", help="datasets cache for the Arrow files (default: the datasets cache)"
    )
    prepare.add_argument(
        "--push_to_hub", metavar="REPO_ID", help="push the prepared DatasetDict to this Hub repo"
    )
    prepare.add_argument("--private", action="store_true", help="create the Hub repo private")
    prepare.add_argument("--token", help="Hub token (default: the logged-in one)")
    prepare.add_argument(
        "--strict", action="store_true", help="fail on the first problem instead of skipping"
    )
    prepare.add_argument(
        "--no_embed", action="store_true", help="store file paths, not bytes, in the Arrow cache"
    )
    prepare.add_argument("--report_json", help="also write the problem report as JSON to this file")
    prepare.add_argument(
        "--num_proc",
        type=positive_int,
        default=None,
        help="processes that read the image and PNG files and write the Arrow shards (default: one)",
    )
    prepare.add_argument(
        "--no_image_check",
        action="store_true",
        help="do not decode the images and panoptic PNGs while preparing (faster; a file that does not "
        "decode then fails later, in training)",
    )
    prepare.set_defaults(func=_prepare_data)

    validate = subparsers.add_parser(
        "validate",
        help="report the problems of a PNG data directory without preparing it (exit 1 when there are any)",
    )
    validate.add_argument("data_dir", help="root holding images/ and annotations/")
    validate.add_argument(
        "--splits", nargs="+", choices=sorted(SPLIT_DIRS), help="default: train and validation"
    )
    validate.add_argument(
        "--no_pixel_check", action="store_true", help="skip decoding the images and panoptic PNGs"
    )
    validate.add_argument("--json", action="store_true", help="print the full report as JSON")
    validate.add_argument(
        "--max_issues", type=non_negative_int, default=50, help="issues listed in the text report"
    )
    validate.set_defaults(func=_validate)

    synthetic = subparsers.add_parser(
        "make-synthetic",
        help="write a synthetic PNG dataset in the official layout and print its statistics",
    )
    synthetic.add_argument("output_dir")
    synthetic.add_argument("--num_train", type=non_negative_int, default=2000)
    synthetic.add_argument("--num_validation", type=non_negative_int, default=500)
    synthetic.add_argument(
        "--image_size", type=positive_int, nargs="+", default=[128], metavar="SIZE", help="S (square) or H W"
    )
    synthetic.add_argument("--level", default="hard", help=f"synthetic difficulty: {', '.join(LEVELS)}")
    synthetic.add_argument("--seed", type=seed, default=0)
    synthetic.add_argument("--num_workers", type=positive_int, default=None, help="default: all CPU cores")
    synthetic.add_argument("--json", action="store_true", help="print the statistics as JSON")
    synthetic.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the synthetic dataset already in OUTPUT_DIR (by default OUTPUT_DIR must be new or "
        "empty; a folder make-synthetic did not write is never touched)",
    )
    synthetic.set_defaults(func=_make_synthetic)


def _prepare_data(args: argparse.Namespace) -> int:
    import datasets

    from ..data.builder import PanopticNarrativeGroundingBuilder
    from ..data.export import export_parquet, push_png_dataset_to_hub

    if not args.output_dir and not args.push_to_hub and not args.cache_dir:
        print(
            "prepare-data: give --output_dir, --push_to_hub or --cache_dir (where the result goes)",
            file=sys.stderr,
        )
        return 2
    # Our own bar counts narratives with a known total; the datasets bars would only repeat it.
    bars_were_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        builder = PanopticNarrativeGroundingBuilder(
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
            splits=tuple(args.splits) if args.splits else None,
            embed_files=not args.no_embed,
            strict=args.strict,
            check_images=not args.no_image_check,
            progress=True,
        )
        builder.download_and_prepare(num_proc=args.num_proc)
        dataset = builder.as_dataset()
    except PngDataError as error:
        print(f"prepare-data: {error}", file=sys.stderr)
        return 1
    finally:
        if bars_were_enabled:
            datasets.enable_progress_bars()
    print(builder.report.format())
    if args.report_json:
        Path(args.report_json).write_text(builder.report.to_json(), encoding="utf-8")
    for split, split_dataset in dataset.items():
        print(f"{split}: {split_dataset.num_rows} examples")
    if args.output_dir:
        written = export_parquet(dataset, args.output_dir)
        for split, files in written.items():
            print(f"wrote {split}: {', '.join(files)}")
    if args.push_to_hub:
        push_png_dataset_to_hub(dataset, args.push_to_hub, token=args.token, private=args.private)
        print(f"pushed to {args.push_to_hub}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from ..data.validation import validate_png_directory

    report = validate_png_directory(
        args.data_dir, args.splits, check_pixels=not args.no_pixel_check, progress=not args.json
    )
    print(report.to_json() if args.json else report.format(max_issues=args.max_issues))
    return 0 if report.ok else 1


def _make_synthetic(args: argparse.Namespace) -> int:
    from ..data.synthetic import generate_synthetic_dataset

    if len(args.image_size) not in (1, 2):
        raise ValueError(f"--image_size takes S or H W, got {len(args.image_size)} values")
    size = args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size)
    # A bad setting (ValueError) or a folder that is not empty (FileExistsError): one line, exit 2 (cli.main).
    stats = generate_synthetic_dataset(
        args.output_dir,
        num_train=args.num_train,
        num_validation=args.num_validation,
        image_size=size,
        level=args.level,
        seed=args.seed,
        num_workers=args.num_workers,
        progress=not args.json,
        overwrite=args.overwrite,
    )
    print(json.dumps(stats.to_dict(), indent=2) if args.json else stats.format())
    return 0
