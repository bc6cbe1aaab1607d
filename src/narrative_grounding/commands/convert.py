"""``narrative-grounding convert panoptic-fpn | epng | drmn``: foreign checkpoints -> model folders."""

from __future__ import annotations

import argparse
import sys

from ..argument_types import json_object
from ..cli import USER_ERRORS, one_line


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` sub-command (with one sub-command per source format)."""
    # The converter functions' defaults, so that the CLI and Python build the same variant.
    from ..conversion.converters import DRMN_VARIANT, EPNG_VARIANT, PANOPTIC_FPN_VARIANT

    convert = subparsers.add_parser(
        "convert",
        help="convert detectron2's Panoptic FPN, an EPNG or a DRMN reference checkpoint into a from_pretrained "
        "model folder",
        description="Turn a foreign checkpoint into a model folder (config, safetensors weights, processor) "
        "that PngForPanopticNarrativeGrounding.from_pretrained, training/train.py --model and the Hub take.",
    )
    formats = convert.add_subparsers(dest="source_format", required=True, metavar="FORMAT")

    panoptic = formats.add_parser(
        "panoptic-fpn",
        help="detectron2's COCO Panoptic FPN (model_final_cafdb1.pkl) as the visual encoder",
        description="Map backbone.bottom_up.* and backbone.fpn_* of a detectron2 model zoo pickle into the "
        "ResNet + FPN visual encoder; RPN, ROI and semantic heads are dropped. The config gets detectron2's "
        "stride-in-1x1 and frozen norms, the processor its BGR 0..255 normalisation.",
    )
    panoptic.add_argument("checkpoint", help="detectron2 .pkl file, e.g. model_final_cafdb1.pkl")
    panoptic.add_argument("output_dir")
    panoptic.add_argument(
        "--variant", default=PANOPTIC_FPN_VARIANT, help="model variant to build (default: %(default)s)"
    )
    _common_arguments(panoptic)
    panoptic.set_defaults(func=_convert)

    epng = formats.add_parser(
        "epng",
        help="a checkpoint of the EPNG authors' code (Mr-Neko/EPNG) as an epng model",
        description="Map an EPNG MainModule state dict (or train_net.py checkpoint) onto the epng head and "
        "the visual encoder; BERT comes from --text_model.",
    )
    epng.add_argument("checkpoint", help="EPNG checkpoint (.pth) saved by the authors' train_net.py")
    epng.add_argument("output_dir")
    epng.add_argument("--variant", default=EPNG_VARIANT, help="model variant to build (default: %(default)s)")
    _allow_unrepresented_argument(epng, "the released code's extra LayerNorms")
    _common_arguments(epng)
    epng.set_defaults(func=_convert)

    drmn = formats.add_parser(
        "drmn",
        help="a checkpoint of the DRMN reference reconstruction (JaMesLiMers/DRMN) as a drmn model",
        description="Map the reference's model_state onto the drmn head and its fpn_model_state (detectron2's "
        "Panoptic FPN) onto the visual encoder; BERT comes from --text_model.",
    )
    drmn.add_argument(
        "checkpoint", help="the reference's training checkpoint (model_state, fpn_model_state, ...)"
    )
    drmn.add_argument("output_dir")
    drmn.add_argument("--variant", default=DRMN_VARIANT, help="model variant to build (default: %(default)s)")
    _allow_unrepresented_argument(drmn, "the LXMERT text encoder, the detector's fpn_wrapper")
    _common_arguments(drmn)
    drmn.set_defaults(func=_convert)


def _allow_unrepresented_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--allow_unrepresented",
        action="store_true",
        help=f"convert even though some tensors ({what}) have no counterpart; the model then differs from "
        "the authors'",
    )


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--text_model",
        help="BERT weights for the text encoder (Hub id or folder, e.g. bert-base-uncased); "
        "without it the text encoder is randomly initialised",
    )
    parser.add_argument("--tokenizer", help="tokenizer (default: --text_model, then the variant's)")
    parser.add_argument(
        "--config_overrides", type=json_object, default={}, help="JSON object of PngConfig fields to override"
    )


def _convert(args: argparse.Namespace) -> int:
    from ..conversion import converters

    # The option the authors' formats have: their checkpoints hold tensors we have no place for.
    extra = {} if args.source_format == "panoptic-fpn" else {"allow_unrepresented": args.allow_unrepresented}
    convert = {
        "panoptic-fpn": converters.convert_panoptic_fpn,
        "epng": converters.convert_epng,
        "drmn": converters.convert_drmn,
    }
    try:
        converted = convert[args.source_format](
            args.checkpoint,
            args.output_dir,
            variant=args.variant,
            text_model_name_or_path=args.text_model,
            tokenizer=args.tokenizer,
            config_overrides=args.config_overrides,
            **extra,
        )
    except USER_ERRORS as error:
        # a checkpoint this model cannot take (unreadable, tensors without a place) or a variant / config it
        # cannot be built into: status 1, like prepare-data's data problems; --debug shows where it was found
        if args.debug:
            raise
        print(f"narrative-grounding convert {args.source_format}: error: {one_line(error)}", file=sys.stderr)
        return 1
    print(converted.result.summary())
    if not args.text_model:
        print("note: no --text_model given: the text encoder is randomly initialised", file=sys.stderr)
    print(f"wrote {args.output_dir}")
    return 0
