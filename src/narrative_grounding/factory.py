"""Named model variants (open_clip style): one JSON file per variant in `hub_configs/`, one factory.

A variant file holds the `PngConfig` keyword arguments under "config", the tokenizer (a Hub id such as
"bert-base-uncased", or a folder name inside hub_configs/), the input image size and, optionally, further
`PngImageProcessor` settings under "image_processor" (e.g. the BGR, 0..255 input of detectron2 weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .modeling.configuration_png import PngConfig
from .modeling.modeling_png import PngForPanopticNarrativeGrounding

HUB_CONFIGS_DIR = Path(__file__).parent / "hub_configs"


@dataclass(frozen=True)
class ModelVariant:
    name: str
    config_kwargs: dict[str, Any]
    tokenizer: str  # Hub id or absolute path of a local tokenizer folder
    image_size: int
    description: str
    image_processor: dict[str, Any] = field(default_factory=dict)  # PngImageProcessor keyword arguments


def available_variants() -> list[str]:
    """Names of the variants shipped in hub_configs/ (e.g. "epng-tiny", "epng-r101-bert-base")."""
    return sorted(path.stem for path in HUB_CONFIGS_DIR.glob("*.json"))


def load_variant(name_or_path: str | Path) -> ModelVariant:
    """Read a variant by name (a file in hub_configs/) or from the path of a variant JSON file."""
    path = Path(name_or_path)
    if not path.suffix == ".json" or not path.is_file():
        path = HUB_CONFIGS_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ValueError(
            f"unknown model variant {str(name_or_path)!r}; available: {', '.join(available_variants())}"
        )
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"variant file {path} is not valid JSON: {error}") from error
    missing = {"config", "tokenizer", "image_size"} - record.keys()
    if missing:
        raise ValueError(f"variant file {path} lacks the field(s) {sorted(missing)}")
    tokenizer = record["tokenizer"]
    local_tokenizer = path.parent / tokenizer
    if local_tokenizer.is_dir():
        tokenizer = str(local_tokenizer)
    config_kwargs = json.loads(json.dumps(record["config"]))  # deep copy: callers may mutate
    return ModelVariant(
        name=path.stem,
        config_kwargs=config_kwargs,
        tokenizer=tokenizer,
        image_size=int(record["image_size"]),
        description=record.get("_description", ""),
        image_processor=dict(record.get("image_processor", {})),
    )


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(name_or_path: str | Path, **overrides: Any) -> PngConfig:
    """The `PngConfig` of a named variant with keyword overrides (e.g. `grounding_head="drmn"`); a dict
    override of a sub-config updates it (`text_config={"num_hidden_layers": 1}` keeps the other fields).

    Without an explicit `text_config.vocab_size`, the vocabulary size is read from the variant's local
    tokenizer folder, so the embedding table always matches the tokenizer that ships with it.
    """
    variant = load_variant(name_or_path)
    kwargs = _merge(variant.config_kwargs, overrides)
    text = kwargs.setdefault("text_config", {})
    if isinstance(text, dict) and "vocab_size" not in text:
        vocab_file = Path(variant.tokenizer) / "vocab.txt"
        if not vocab_file.is_file():
            raise ValueError(
                f"variant {variant.name}: text_config.vocab_size is not set and {vocab_file} does not exist"
            )
        text["vocab_size"] = sum(1 for _ in vocab_file.open(encoding="utf-8"))
    return PngConfig(**kwargs)


def create_model(name_or_path: str | Path, **overrides: Any) -> PngForPanopticNarrativeGrounding:
    """A randomly initialised model of a named variant (see `PngForPanopticNarrativeGrounding.from_pretrained`
    for trained weights and `from_pretrained_encoders` for pretrained BERT / timm encoders)."""
    return PngForPanopticNarrativeGrounding(load_config(name_or_path, **overrides))
