"""Named model variants (open_clip style): one JSON file per variant in `hub_configs/`, one factory.

A variant file holds the `PngConfig` keyword arguments under "config", the tokenizer (a Hub id such as
"bert-base-uncased", or a folder name inside hub_configs/) and the input image size.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import BertConfig, TimmBackboneConfig

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
    )


def _config_keys(config_class: type) -> set[str]:
    """The keyword arguments a config dataclass stores as fields (private names left out)."""
    return {field.name for field in dataclasses.fields(config_class) if not field.name.startswith("_")}


# Keys a dict override of a sub-config may hold: its fields, plus TimmBackboneConfig's properties and the
# timm keyword arguments our visual encoder reads.
SUB_CONFIG_KEYS = {
    "text_config": _config_keys(BertConfig) | {"model_type"},
    "backbone_config": _config_keys(TimmBackboneConfig)
    | {"model_type", "out_indices", "out_features", "timm_model_args"},
}


def check_config_keys(kwargs: dict[str, Any], where: str) -> None:
    """Raise ValueError naming every key of `kwargs` (and of its text_config / backbone_config dicts) that
    `PngConfig` does not know, with the closest known key: `PngConfig` itself would store a typo such as
    `grounding_haed` in config.json and keep the default it was meant to change."""
    problems = []
    top_keys = _config_keys(PngConfig)
    for key, value in kwargs.items():
        if key not in top_keys:
            problems.append((key, key, top_keys))
        elif key in SUB_CONFIG_KEYS and isinstance(value, dict):
            known = SUB_CONFIG_KEYS[key]
            problems.extend((f"{key}.{sub}", sub, known) for sub in value if sub not in known)
    if problems:
        described = []
        for name, key, candidates in problems:
            close = difflib.get_close_matches(key, sorted(candidates), n=1)
            described.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"{where}: unknown PngConfig key(s) {', '.join(described)}")


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
    check_config_keys(variant.config_kwargs, f"variant {variant.name}")
    check_config_keys(overrides, "config override")
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
