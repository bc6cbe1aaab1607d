"""Variant folders as Hub model repositories: writing them, their model cards, publishing them.

- `save_model_folder` writes a repository without weights with the library's own `save_pretrained`
  (model on the meta device with an empty state dict, processor, card), so whatever `save_pretrained`
  writes (config.json, the `trust_remote_code` modules and their `auto_map`) lands there too.
- The folders kept in `hub_configs/` are that repository minus the code: the modules are copied from the
  package when a variant is published, so the folders never hold a stale copy of them
  (`with_code=False` strips the module files and the config entries that point at them).
- `publish_variant` writes the full repository of a variant and uploads it (`narrative-grounding publish`).
- `convert_legacy_variant` turns a variant of the former single-file format (a JSON file with "config",
  "tokenizer", "image_size", "_description") into a folder; `scripts/convert_legacy_variant.py` runs it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .factory import HUB_CONFIGS_DIR, load_config, ships_tokenizer, variant_path
from .modeling.configuration_png import PngConfig

#: Tokenizer folders of the former layout, now shipped inside a variant's folder.
FORMER_TOKENIZER_FOLDERS = {"tokenizer-tiny": "epng-tiny"}
#: What a shipped tokenizer consists of (copied as the tokenizer build writes them).
SHIPPED_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
#: config entries that name module files of the repository (transformers' auto classes, custom pipelines).
CODE_ENTRIES = ("auto_map", "custom_pipelines")
LICENSE = "apache-2.0"


@dataclass(frozen=True)
class HeadPaper:
    """The paper a grounding head comes from, and what it reports on PNG val2017 (Average Recall, %)."""

    title: str
    venue: str
    url: str
    published_results: str


#: Keyed by `PngConfig.grounding_head`.
HEAD_PAPERS = {
    "epng": HeadPaper(
        title="Towards Real-Time Panoptic Narrative Grounding by an End-to-End Grounding Network",
        venue="AAAI 2023",
        url="https://arxiv.org/abs/2301.03160",
        published_results="| overall | things | stuff | singular | plural |\n|---|---|---|---|---|\n"
        "| 49.7 | 45.6 | 55.5 | 50.2 | 45.1 |\n\n(EPNG, paper Table 1; 58.0 overall when trained on the same "
        "data as the two-stage PNG baseline.)",
    ),
    "drmn": HeadPaper(
        title="Context Does Matter: End-to-end Panoptic Narrative Grounding with Deformable Attention "
        "Refined Matching Network",
        venue="ICDM 2023",
        url="https://arxiv.org/abs/2310.16616",
        published_results="| overall |\n|---|\n| 62.9 |\n\n(DRMN as reported in its paper; the paper resizes "
        "to about 800 px on the short side and compares masks at stride 4 of the input.)",
    ),
}


# ------------------------------------------------------------------------------------------- folders
def _strip_code(folder: Path) -> None:
    for module in folder.glob("*.py"):
        module.unlink()
    for path in folder.glob("*.json"):
        record = json.loads(path.read_text(encoding="utf-8"))
        nested = [record] + [value for value in record.values() if isinstance(value, dict)]
        if not any(key in part for part in nested for key in CODE_ENTRIES):
            continue
        for part in nested:  # e.g. processor_config.json nests the image processor's own auto_map
            for key in CODE_ENTRIES:
                part.pop(key, None)
        # the layout transformers writes, so that a regenerated folder diffs cleanly
        path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_model_folder(
    folder: str | Path,
    config: PngConfig,
    processor: Any,
    *,
    card: Any = None,
    with_code: bool = True,
) -> Path:
    """Writes a Hub model repository without weights into `folder`.

    Args:
        config: the model's configuration.
        processor: a `PngProcessor`, or only a `PngImageProcessor` when the tokenizer is not shipped.
        card: a `huggingface_hub.ModelCard` saved as README.md.
        with_code: keep the modules `save_pretrained` copies for `trust_remote_code` (and their `auto_map`);
            False for the folders kept in hub_configs/.
    """
    import torch

    from .modeling.modeling_png import PngForPanopticNarrativeGrounding

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # The model's save_pretrained writes config.json and the modules; on the meta device and with an empty
    # state dict it allocates and writes no weights (a paper-size model builds in about a second).
    with torch.device("meta"):
        model = PngForPanopticNarrativeGrounding(config)
    model.save_pretrained(folder, state_dict={})
    processor.save_pretrained(folder)
    if card is not None:
        card.save(folder / "README.md")
    if not with_code:
        _strip_code(folder)
    return folder


def _processor_in(folder: Path) -> Any:
    """What a folder ships of the processor: the whole `PngProcessor`, or its image processor only."""
    from .modeling.image_processing_png import PngImageProcessor
    from .modeling.processing_png import PngProcessor

    if ships_tokenizer(folder):
        return PngProcessor.from_pretrained(str(folder))
    return PngImageProcessor.from_pretrained(str(folder))


def refresh_variant_folder(folder: str | Path) -> Path:
    """Re-writes a variant folder's config and processor files with the installed package's `save_pretrained`
    (after a configuration field was added, say), keeping its model card and its tokenizer files as shipped."""
    folder = Path(folder)
    kept = {
        path.name: path.read_bytes()
        for path in folder.iterdir()
        if path.name == "README.md" or path.name in SHIPPED_TOKENIZER_FILES
    }
    save_model_folder(folder, PngConfig.from_pretrained(str(folder)), _processor_in(folder), with_code=False)
    for name, data in kept.items():
        (folder / name).write_bytes(data)
    return folder


# ------------------------------------------------------------------------------------------- model card
def parameter_counts(config: PngConfig) -> dict[str, tuple[int, int]]:
    """(parameters, trainable parameters) per top-level module and in total, counted on the meta device."""
    import torch

    from .modeling.modeling_png import PngForPanopticNarrativeGrounding

    with torch.device("meta"):
        model = PngForPanopticNarrativeGrounding(config)
    counts = {
        name: (
            sum(p.numel() for p in module.parameters()),
            sum(p.numel() for p in module.parameters() if p.requires_grad),
        )
        for name, module in model.named_children()
    }
    counts["total"] = (sum(total for total, _ in counts.values()), sum(t for _, t in counts.values()))
    return counts


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M"


def build_variant_card(
    name: str,
    config: PngConfig,
    *,
    description: str,
    image_size: int,
    tokenizer: str | None,
    expected_results: str | None = None,
    training: str | None = None,
) -> Any:
    """The README.md of a variant folder: what it is, parameters, paper, expected results, how to train
    it, license.

    tokenizer: None when the folder ships it, else the Hub id it comes from.
    expected_results / training: Markdown; default to the head paper's published results and the training
        command for the official data (tiny variants pass their measured synthetic results and command).
    """
    from huggingface_hub import ModelCard, ModelCardData

    paper = HEAD_PAPERS.get(config.grounding_head)
    counts = parameter_counts(config)
    card_data = ModelCardData(
        model_name=name,
        library_name="transformers",
        license=LICENSE,
        tags=["panoptic-narrative-grounding", "narrative-grounding", "image-segmentation", "custom_code"],
    )
    rows = ["| module | parameters | trainable |", "|---|---|---|"]
    rows += [
        f"| {module} | {_millions(total)} | {_millions(trainable)} |"
        for module, (total, trainable) in counts.items()
    ]
    tokenizer_line = (
        "the project's tiny WordPiece tokenizer, shipped in this folder"
        if tokenizer is None
        else f"`{tokenizer}` (not shipped here: `narrative_grounding.load_processor` fetches it from the Hub)"
    )
    if training is None:
        encoders = f" --text_model_name_or_path {tokenizer} --backbone_pretrained timm" if tokenizer else ""
        training = (
            "On the official layout (COCO 2017 + PNG annotations, see the project's data documentation), "
            "starting from ImageNet ResNet and pretrained BERT weights:\n\n```bash\n"
            f"accelerate launch training/train.py --model {name}{encoders} --data_dir /path/to/png "
            f"--optimization paper --output_dir runs/{name}\n```"
        )
    lines = [
        "---",
        card_data.to_yaml(),
        "---",
        "",
        f"# {name}",
        "",
        "A named variant of narrative-grounding's `PngForPanopticNarrativeGrounding` for Panoptic Narrative "
        "Grounding: given an image and a narrative caption, one segmentation mask per noun phrase. This "
        "repository holds the configuration, the processor and (once published) the modeling code; it holds no "
        "trained weights.",
        "",
        description,
        "",
        f"- grounding head: `{config.grounding_head}`; input {image_size}x{image_size}; tokenizer: {tokenizer_line}.",
        "",
        "## Parameters",
        "",
        *rows,
        "",
        "## Paper",
        "",
        f"{paper.title} ({paper.venue}), {paper.url}" if paper else "No paper: a head of this project.",
        "",
        "## Expected results",
        "",
        expected_results
        or (
            "Trained as the paper describes, on PNG val2017 (Average Recall, %), as published:\n\n"
            + paper.published_results
            if paper
            else "Not measured."
        ),
        "",
        "## How to train it",
        "",
        training,
        "",
        "## How to use",
        "",
        "```python",
        "import narrative_grounding",
        f'model = narrative_grounding.create_model("{name}")        # random initialisation',
        f'processor = narrative_grounding.load_processor("{name}")',
        "```",
        "",
        "From a published copy, without the package: `AutoConfig.from_pretrained(repo, trust_remote_code=True)`, "
        "`AutoModel.from_config(config, trust_remote_code=True)`"
        + (", `AutoProcessor.from_pretrained(repo, trust_remote_code=True)`." if tokenizer is None else "."),
        "",
        "## License",
        "",
        "Apache-2.0 (the configuration and code of narrative-grounding). Pretrained encoders and datasets keep "
        "their own licenses.",
        "",
    ]
    return ModelCard("\n".join(lines))


# ------------------------------------------------------------------------------------------- conversion
def convert_legacy_variant(
    json_path: str | Path,
    output_dir: str | Path = HUB_CONFIGS_DIR,
    *,
    overwrite: bool = False,
) -> Path:
    """Converts a variant file of the former format into `output_dir/<file stem>/`.

    The former format: {"config": PngConfig keyword arguments, "tokenizer": a Hub id or a tokenizer folder
    next to the file, "image_size": int, "_description": text}, optionally "_expected_results" and
    "_training" (Markdown for the card), and "image_processor" (further `PngImageProcessor` settings, e.g. the
    BGR, 0..255 input of detectron2 weights). Without `text_config.vocab_size` the shipped tokenizer's size is
    used; a Hub tokenizer is recorded as the text checkpoint (`text_config._name_or_path`).
    """
    from transformers import AutoTokenizer

    from .modeling.image_processing_png import PngImageProcessor
    from .modeling.processing_png import PngProcessor

    json_path = Path(json_path)
    try:
        record = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"variant file {json_path} cannot be read as JSON: {error}") from error
    missing = {"config", "tokenizer", "image_size"} - record.keys()
    if missing:
        raise ValueError(f"variant file {json_path} lacks the field(s) {sorted(missing)}")
    name = json_path.stem
    target = Path(output_dir) / name
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")

    kwargs = json.loads(json.dumps(record["config"]))  # deep copy
    text = kwargs.setdefault("text_config", {})
    tokenizer_folder = json_path.parent / record["tokenizer"]
    if not tokenizer_folder.is_dir() and record["tokenizer"] in FORMER_TOKENIZER_FOLDERS:
        tokenizer_folder = variant_path(FORMER_TOKENIZER_FOLDERS[record["tokenizer"]])
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder)) if tokenizer_folder.is_dir() else None
    if "vocab_size" not in text:
        if tokenizer is None:
            raise ValueError(
                f"variant file {json_path}: text_config.vocab_size is required with a Hub tokenizer "
                f"({record['tokenizer']!r})"
            )
        text["vocab_size"] = len(tokenizer)
    config = PngConfig(**kwargs)
    if tokenizer is None:
        config.text_config.name_or_path = record["tokenizer"]

    image_size = int(record["image_size"])
    image_processor = PngImageProcessor(
        **{"size": {"height": image_size, "width": image_size}, **record.get("image_processor", {})}
    )
    processor = image_processor if tokenizer is None else PngProcessor(image_processor, tokenizer)
    card = build_variant_card(
        name,
        config,
        description=record.get("_description", ""),
        image_size=image_size,
        tokenizer=None if tokenizer is not None else record["tokenizer"],
        expected_results=record.get("_expected_results"),
        training=record.get("_training"),
    )
    if target.exists():
        shutil.rmtree(target)
    save_model_folder(target, config, processor, card=card, with_code=False)
    if tokenizer is not None:
        # the tokenizer files exactly as shipped (vocab.txt included), not as re-serialised by the processor
        for name in SHIPPED_TOKENIZER_FILES:
            if (tokenizer_folder / name).is_file():
                shutil.copy2(tokenizer_folder / name, target / name)
    return target


# ------------------------------------------------------------------------------------------- publishing
def write_hub_repository(name_or_path: str | Path, folder: str | Path) -> Path:
    """The full Hub repository of a variant in `folder`: its files plus the modules for trust_remote_code."""
    source = variant_path(name_or_path)
    folder = Path(folder)
    save_model_folder(folder, load_config(source), _processor_in(source), with_code=True)
    card = source / "README.md"
    if not card.is_file():
        raise ValueError(f"variant {source} has no README.md model card")
    shutil.copy2(card, folder / "README.md")
    # tokenizer files the processor does not re-serialise (vocab.txt, special_tokens_map.json)
    for path in source.iterdir():
        if path.is_file() and not (folder / path.name).exists():
            shutil.copy2(path, folder / path.name)
    return folder


def publish_variant(
    name_or_path: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
) -> str:
    """Creates (if needed) the model repository `repo_id` and uploads the variant's repository to it;
    returns the commit URL."""
    from huggingface_hub import HfApi

    source = variant_path(name_or_path)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="png-publish-") as staging:
        write_hub_repository(source, staging)
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo.repo_id,
            folder_path=staging,
            commit_message=commit_message or f"Publish the {source.name} variant of narrative-grounding",
        )
    return str(getattr(info, "commit_url", info))
