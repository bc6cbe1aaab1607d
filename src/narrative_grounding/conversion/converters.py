"""Foreign checkpoints -> model folders that `from_pretrained` (and the Hub) take: model, config, processor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..factory import load_config, load_variant, merge_config_dicts
from ..modeling.image_processing_png import PngImageProcessor
from ..modeling.modeling_png import PngForPanopticNarrativeGrounding
from ..modeling.processing_png import PngProcessor
from .drmn import convert_drmn_weights, read_drmn_checkpoint
from .epng import EPNG_IMAGE_PROCESSOR, convert_epng_weights, read_epng_checkpoint
from .key_map import ConversionResult
from .panoptic_fpn import (
    convert_visual_encoder,
    image_processor_settings,
    panoptic_fpn_overrides,
    read_detectron2_checkpoint,
)

PANOPTIC_FPN_VARIANT = "epng-r101-panoptic-fpn-bert-base"
EPNG_VARIANT = "epng-r101-bert-base-released"  # the variant that computes what the released code computes
DRMN_VARIANT = "drmn-r101-bert-base-reference"  # the drmn head with the reference reconstruction's switches


@dataclass
class ConvertedModel:
    model: PngForPanopticNarrativeGrounding
    processor: PngProcessor
    result: ConversionResult  # what became of every source tensor

    def save_pretrained(self, output_dir: str | Path) -> None:
        self.model.save_pretrained(output_dir)
        self.processor.save_pretrained(output_dir)


def _build(
    variant: str,
    overrides: dict[str, Any],
    image_processor: dict[str, Any],
    text_model_name_or_path: str | None,
    tokenizer: str | None,
) -> tuple[PngForPanopticNarrativeGrounding, PngProcessor]:
    from transformers import AutoTokenizer

    record = load_variant(variant)
    config = load_config(variant, **overrides)
    if text_model_name_or_path is not None:
        model = PngForPanopticNarrativeGrounding.from_pretrained_encoders(
            config, text_model_name_or_path=text_model_name_or_path
        )
    else:
        model = PngForPanopticNarrativeGrounding(config)
    # the variant folder's image processor (e.g. BGR, 0..255 for detectron2 weights), then the caller's settings
    processor = PngProcessor(
        image_processor=PngImageProcessor.from_pretrained(str(record.path), **image_processor),
        tokenizer=AutoTokenizer.from_pretrained(tokenizer or text_model_name_or_path or record.tokenizer),
    )
    return model, processor


def _finish(
    model: PngForPanopticNarrativeGrounding,
    processor: PngProcessor,
    result: ConversionResult,
    output_dir: str | Path | None,
) -> ConvertedModel:
    """Freeze what the config freezes, and write the converted model to `output_dir` when given."""
    model.apply_freezing()
    converted = ConvertedModel(model=model, processor=processor, result=result)
    if output_dir is not None:
        converted.save_pretrained(output_dir)
    return converted


def convert_panoptic_fpn(
    checkpoint: str | Path,
    output_dir: str | Path | None = None,
    *,
    variant: str = PANOPTIC_FPN_VARIANT,
    text_model_name_or_path: str | None = None,
    tokenizer: str | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> ConvertedModel:
    """A model of `variant` whose visual encoder holds detectron2's Panoptic FPN backbone + FPN weights.

    checkpoint: detectron2's `model_final_cafdb1.pkl` (or any ResNet-FPN model zoo pickle of the variant's
        depth). RPN, ROI and semantic heads are dropped; every other tensor must land in the visual encoder.
    text_model_name_or_path: BERT weights for the text encoder (e.g. "bert-base-uncased"); without it the text
        encoder and the head stay randomly initialised.
    tokenizer: defaults to `text_model_name_or_path`, then to the variant's tokenizer.
    The config gets detectron2's conventions (stride in the 1x1, frozen norms) and the processor its input
    normalisation (BGR, 0..255, its pixel mean and std). Written to `output_dir` when given.
    """
    tensors, _ = read_detectron2_checkpoint(checkpoint)
    overrides = merge_config_dicts(panoptic_fpn_overrides(), config_overrides or {})
    model, processor = _build(
        variant, overrides, image_processor_settings(tensors), text_model_name_or_path, tokenizer
    )
    result = convert_visual_encoder(model, tensors, source_name=Path(checkpoint).name)
    return _finish(model, processor, result, output_dir)


def convert_epng(
    checkpoint: str | Path,
    output_dir: str | Path | None = None,
    *,
    variant: str = EPNG_VARIANT,
    text_model_name_or_path: str | None = None,
    tokenizer: str | None = None,
    config_overrides: dict[str, Any] | None = None,
    allow_unrepresented: bool = False,
) -> ConvertedModel:
    """A `PngForPanopticNarrativeGrounding` (epng head) holding an EPNG checkpoint of the authors' code.

    The checkpoint fills the visual encoder and the head; BERT comes from `text_model_name_or_path` (EPNG's
    checkpoints have none: the released code computes BERT features offline). The processor reproduces the
    released input pipeline (RGB, bicubic 640x640, CLIP's mean and std). `allow_unrepresented`: see
    `convert_epng_weights`.
    """
    tensors = read_epng_checkpoint(checkpoint)
    model, processor = _build(
        variant, config_overrides or {}, EPNG_IMAGE_PROCESSOR, text_model_name_or_path, tokenizer
    )
    result = convert_epng_weights(
        model, tensors, allow_unrepresented=allow_unrepresented, source_name=Path(checkpoint).name
    )
    return _finish(model, processor, result, output_dir)


def convert_drmn(
    checkpoint: str | Path,
    output_dir: str | Path | None = None,
    *,
    variant: str = DRMN_VARIANT,
    text_model_name_or_path: str | None = None,
    tokenizer: str | None = None,
    config_overrides: dict[str, Any] | None = None,
    allow_unrepresented: bool = False,
) -> ConvertedModel:
    """A `PngForPanopticNarrativeGrounding` (drmn head) holding a checkpoint of the DRMN reference
    reconstruction (JaMesLiMers/DRMN).

    `model_state` fills the head, `fpn_model_state` (detectron2's Panoptic FPN) the visual encoder, which gets
    detectron2's conventions and the processor its input normalisation, as `convert_panoptic_fpn` does. The
    reference's LXMERT-style `bert_model_state` and the detector's `fpn_wrapper` have no counterpart: refused
    unless `allow_unrepresented` (see `convert_drmn_weights`); BERT comes from `text_model_name_or_path`.
    """
    tensors = read_drmn_checkpoint(checkpoint)
    detector = {
        key.split("/", 1)[1]: value for key, value in tensors.items() if key.startswith("fpn_model_state/")
    }
    overrides = (
        merge_config_dicts(panoptic_fpn_overrides(), config_overrides or {})
        if detector
        else config_overrides or {}
    )
    image_processor = image_processor_settings(detector) if detector else {}
    model, processor = _build(variant, overrides, image_processor, text_model_name_or_path, tokenizer)
    result = convert_drmn_weights(
        model, tensors, allow_unrepresented=allow_unrepresented, source_name=Path(checkpoint).name
    )
    return _finish(model, processor, result, output_dir)


__all__ = ["ConvertedModel", "convert_drmn", "convert_epng", "convert_panoptic_fpn"]
