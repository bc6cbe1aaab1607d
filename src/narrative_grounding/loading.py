"""Model + processor from a variant name, a local folder or a Hub repo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .factory import available_variants, load_config, load_processor
from .modeling.modeling_png import PngForPanopticNarrativeGrounding


def is_variant_name(source: str) -> bool:
    return source in available_variants()


def check_model_source(source: str, flag: str = "--model", *, variants: bool = True) -> None:
    """Raises ValueError unless `source` is a variant name (when `variants`), a local folder or a Hub repo id
    (namespace/name).

    Cheap (no download, no model built), so commands call it before they prepare data: a mistyped name or
    a folder that does not exist fails at once, not after minutes of work, and a path such as
    `/runs/model` is named as a missing folder instead of reaching the Hub client as a malformed repo id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if (variants and is_variant_name(source)) or Path(source).is_dir():
        return
    try:
        validate_repo_id(source)
        is_repo_id = source.count("/") == 1
    except HFValidationError:
        is_repo_id = False
    if not is_repo_id:
        variant = f"a variant ({', '.join(available_variants())}), " if variants else ""
        raise ValueError(
            f"{flag} {source!r} is neither {variant}a local folder, nor a Hub repo id (namespace/name)"
        )


def load_model_and_processor(
    source: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    config_overrides: str | dict | None = None,
    text_model_name_or_path: str | None = None,
    backbone_pretrained: str | None = None,
) -> tuple[PngForPanopticNarrativeGrounding, Any, str | None]:
    """Returns (model, processor, base_model): a fresh model of a variant (optionally with pretrained
    encoders) or a trained one from a folder / Hub repo; `base_model` is the folder or repo it came from."""
    from .modeling.processing_png import PngProcessor

    if is_variant_name(source):
        overrides = (
            json.loads(config_overrides)
            if isinstance(config_overrides, str)
            else dict(config_overrides or {})
        )
        config = load_config(source, **overrides)
        if text_model_name_or_path or backbone_pretrained:
            pretrained = True if backbone_pretrained == "timm" else backbone_pretrained
            model = PngForPanopticNarrativeGrounding.from_pretrained_encoders(
                config,
                text_model_name_or_path=text_model_name_or_path,
                backbone_pretrained=pretrained or False,
            )
        else:
            model = PngForPanopticNarrativeGrounding(config)
        return model, load_processor(source), None
    if config_overrides or text_model_name_or_path or backbone_pretrained:
        raise ValueError(
            "--config_overrides, --text_model_name_or_path and --backbone_pretrained apply to a variant name; "
            f"{source!r} is a trained model (folder or Hub repo)"
        )
    check_model_source(source)
    model = PngForPanopticNarrativeGrounding.from_pretrained(source, revision=revision, token=token)
    processor = PngProcessor.from_pretrained(source, revision=revision, token=token)
    return model, processor, source
