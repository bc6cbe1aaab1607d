"""Named model variants (open_clip style, as Hub repositories): one folder per variant in `hub_configs/`,
one factory.

A variant folder is a Hub model repository without weights: `config.json` (a saved `PngConfig`), the
processor's configuration, the tokenizer files where the project ships the tokenizer (the tiny variants)
and a `README.md` model card. Variants whose tokenizer is not shipped name it in `config.json` as the text
encoder's checkpoint (`text_config._name_or_path`, e.g. "bert-base-uncased"), which `load_processor` then
loads from the Hub.

Where the folders are: in a wheel they are package data (`narrative_grounding/hub_configs/`, see
setup.py); in a source checkout or an editable install they are the repository's top-level `hub_configs/`.
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

#: Files whose presence means the folder ships its tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _hub_configs_dir() -> Path:
    package_data = Path(__file__).parent / "hub_configs"  # a wheel install
    if any(package_data.glob("*/config.json")):
        return package_data
    # src/narrative_grounding/factory.py -> the repository root (source checkout, editable install)
    return Path(__file__).resolve().parents[2] / "hub_configs"


HUB_CONFIGS_DIR = _hub_configs_dir()


@dataclass(frozen=True)
class ModelVariant:
    """What the factory knows of a variant folder besides its `PngConfig`."""

    name: str
    path: Path
    image_size: int  # side of the square input the variant's image processor resizes to
    tokenizer: str  # the folder itself when it ships the tokenizer, else a Hub id (or local checkpoint)


def available_variants() -> list[str]:
    """Names of the variants shipped in hub_configs/ (e.g. "epng-tiny", "epng-r101-bert-base")."""
    if not HUB_CONFIGS_DIR.is_dir():
        return []
    return sorted(path.parent.name for path in HUB_CONFIGS_DIR.glob("*/config.json"))


def variant_path(name_or_path: str | Path) -> Path:
    """The folder of a variant: a name from `available_variants()`, or the path of any folder holding a
    saved `PngConfig` (config.json) laid out like the shipped ones."""
    if str(name_or_path) in available_variants():  # a name wins over a same-named folder in the cwd
        return HUB_CONFIGS_DIR / str(name_or_path)
    path = Path(name_or_path)
    if (path / "config.json").is_file():
        return path
    raise ValueError(
        f"unknown model variant {str(name_or_path)!r} (neither a name in {HUB_CONFIGS_DIR} nor a folder with a "
        f"config.json); available: {', '.join(available_variants()) or 'none'}"
    )


def ships_tokenizer(folder: str | Path) -> bool:
    return all((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def load_variant(name_or_path: str | Path) -> ModelVariant:
    """The folder, input size and tokenizer source of a variant."""
    from .modeling.image_processing_png import PngImageProcessor

    path = variant_path(name_or_path)
    size = PngImageProcessor.from_pretrained(str(path)).size
    if not (size.height and size.width) or size.height != size.width:
        raise ValueError(
            f"variant {path}: the image processor's size must be a square height/width, got {dict(size)}"
        )
    if ships_tokenizer(path):
        tokenizer = str(path)
    else:
        tokenizer = load_config(path).text_config.name_or_path
        if not tokenizer:
            raise ValueError(
                f"variant {path} ships no tokenizer ({' + '.join(TOKENIZER_FILES)}) and its config.json names no "
                "text checkpoint to take it from (text_config._name_or_path, e.g. 'bert-base-uncased')"
            )
    return ModelVariant(name=path.name, path=path, image_size=int(size.height), tokenizer=tokenizer)


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


def _saved_keys() -> tuple[set[str], dict[str, set[str]]]:
    """The keys `save_pretrained` writes into config.json besides the fields (model_type, _name_or_path,
    transformers_version, ...), at the top level and in each sub-config."""
    saved = PngConfig().to_dict()
    sub_keys = {name: set(saved[name]) for name in SUB_CONFIG_KEYS}
    sub_keys["backbone_config"].add("stage_names")  # written once a model has built the timm backbone
    return set(saved), sub_keys


def check_config_keys(kwargs: dict[str, Any], where: str, *, saved: bool = False) -> None:
    """Raise ValueError naming every key of `kwargs` (and of its text_config / backbone_config dicts) that
    `PngConfig` does not know, with the closest known key: `PngConfig` itself would store a typo such as
    `grounding_haed` in config.json and keep the default it was meant to change. `saved=True` checks a
    config.json as `save_pretrained` writes it (its bookkeeping keys allowed too)."""
    problems = []
    top_keys, sub_keys = _config_keys(PngConfig), dict(SUB_CONFIG_KEYS)
    if saved:
        saved_top, saved_sub = _saved_keys()
        top_keys |= saved_top | {"architectures", "auto_map", "custom_pipelines"}
        sub_keys = {name: keys | saved_sub[name] for name, keys in sub_keys.items()}
    for key, value in kwargs.items():
        if key not in top_keys:
            problems.append((key, key, top_keys))
        elif key in sub_keys and isinstance(value, dict):
            known = sub_keys[key]
            problems.extend((f"{key}.{sub}", sub, known) for sub in value if sub not in known)
    if problems:
        described = []
        for name, key, candidates in problems:
            close = difflib.get_close_matches(key, sorted(candidates), n=1)
            described.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"{where}: unknown PngConfig key(s) {', '.join(described)}")


def merge_config_dicts(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` updated by `overrides`, recursing into the sub-config dicts both have (`text_config`, ...)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(name_or_path: str | Path, **overrides: Any) -> PngConfig:
    """The `PngConfig` of a variant (its config.json, read as `PngConfig.from_pretrained` reads it) with
    keyword overrides (e.g. `grounding_head="drmn"`); a dict override of a sub-config updates it
    (`text_config={"num_hidden_layers": 1}` keeps the other fields)."""
    path = variant_path(name_or_path)
    check_config_keys(overrides, "config override")
    try:
        config_dict, _ = PngConfig.get_config_dict(str(path))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"variant {path}: config.json cannot be read: {error}") from error
    check_config_keys(config_dict, f"variant {path.name} ({path / 'config.json'})", saved=True)
    return PngConfig.from_dict(merge_config_dicts(config_dict, overrides))


def load_processor(name_or_path: str | Path) -> Any:
    """The `PngProcessor` of a variant: saved in the folder for the variants that ship their tokenizer;
    otherwise the folder's image processor with the tokenizer of the text checkpoint that config.json names
    (from the Hub, e.g. bert-base-uncased)."""
    from transformers import AutoTokenizer

    from .modeling.image_processing_png import PngImageProcessor
    from .modeling.processing_png import PngProcessor

    variant = load_variant(name_or_path)
    if variant.tokenizer == str(variant.path):
        return PngProcessor.from_pretrained(str(variant.path))
    image_processor = PngImageProcessor.from_pretrained(str(variant.path))
    return PngProcessor(
        image_processor=image_processor, tokenizer=AutoTokenizer.from_pretrained(variant.tokenizer)
    )


def create_model(name_or_path: str | Path, **overrides: Any) -> PngForPanopticNarrativeGrounding:
    """A randomly initialised model of a named variant (see `PngForPanopticNarrativeGrounding.from_pretrained`
    for trained weights and `from_pretrained_encoders` for pretrained BERT / timm encoders)."""
    return PngForPanopticNarrativeGrounding(load_config(name_or_path, **overrides))
