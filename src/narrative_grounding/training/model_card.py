"""The model card (README.md) written next to a trained model: metadata with model-index results, how
the model was trained, its Average Recall table and how to load it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..metrics import AVERAGE_RECALL_KEYS, AVERAGE_RECALL_SPLITS

#: (results key, metric name shown in the card)
AR_ROWS = tuple(
    zip(
        AVERAGE_RECALL_KEYS,
        ("Average Recall", *(f"AR {split}" for split in AVERAGE_RECALL_SPLITS)),
        strict=True,
    )
)

TASK_TYPE = "panoptic-narrative-grounding"
TASK_NAME = "Panoptic Narrative Grounding"


def _valid(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(float(value))


def build_model_card(
    *,
    model_name: str,
    dataset_name: str,
    dataset_split: str = "validation",
    metrics: Mapping[str, Any] | None = None,
    base_model: str | None = None,
    repo_id: str | None = None,
    training_summary: Mapping[str, Any] | None = None,
    config_summary: Mapping[str, Any] | None = None,
) -> ModelCard:
    """A `huggingface_hub.ModelCard` whose metadata holds the results in model-index form.

    metrics: the output of `AverageRecall.compute` (fractions in [0, 1]); entries that are nan (a split
    without phrases) are left out of the metadata and shown as "-" in the table.
    """
    metrics = dict(metrics or {})
    eval_results = [
        EvalResult(
            task_type=TASK_TYPE,
            task_name=TASK_NAME,
            dataset_type=dataset_name,
            dataset_name=dataset_name,
            dataset_split=dataset_split,
            metric_type=key,
            metric_name=label,
            metric_value=round(float(metrics[key]), 6),
        )
        for key, label in AR_ROWS
        if _valid(metrics.get(key))
    ]
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        license="apache-2.0",
        tags=["panoptic-narrative-grounding", "narrative-grounding", "image-segmentation", "custom_code"],
        datasets=[dataset_name],
        metrics=["average_recall"],
        base_model=base_model,
        eval_results=eval_results or None,
    )
    load_from = repo_id or "path/to/this/folder"
    table = ["| metric | value |", "|---|---|"]
    for key, label in AR_ROWS:
        value = metrics.get(key)
        table.append(f"| {label} | {100 * float(value):.1f} |" if _valid(value) else f"| {label} | - |")
    if "num_phrases" in metrics:
        table.append(f"| phrases evaluated | {metrics['num_phrases']} |")
    lines = [
        "---",
        card_data.to_yaml(),
        "---",
        "",
        f"# {model_name}",
        "",
        f"A Panoptic Narrative Grounding model (`narrative_grounding.PngForPanopticNarrativeGrounding`) trained on "
        f"**{dataset_name}**: given an image and a narrative caption, it predicts one segmentation mask per noun "
        "phrase of the caption.",
        "",
        f"## Results ({dataset_name}, {dataset_split} split, Average Recall in %)",
        "",
        *table,
        "",
        "## How to use",
        "",
        "With transformers alone (the model, processor and pipeline code ship in this repository):",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'grounder = pipeline("panoptic-narrative-grounding", model="{load_from}", trust_remote_code=True)',
        'result = grounder(image, narrative, ["a black bear", "this tree"])',
        "result['masks']  # bool (num_phrases, H, W) at the image's size",
        "```",
        "",
        "`AutoModel.from_pretrained(repo, trust_remote_code=True)` and "
        "`AutoProcessor.from_pretrained(repo, trust_remote_code=True)` give the model and processor. "
        "With the `narrative_grounding` package installed:",
        "",
        "```python",
        "from narrative_grounding import PngForPanopticNarrativeGrounding, PngProcessor",
        "",
        f'processor = PngProcessor.from_pretrained("{load_from}")',
        f'model = PngForPanopticNarrativeGrounding.from_pretrained("{load_from}")',
        'inputs = processor(images=image, text=narrative, phrases=["a black bear", "this tree"], return_tensors="pt")',
        "outputs = model(**inputs)",
        "masks = processor.post_process_panoptic_narrative_grounding(outputs, target_sizes=[image.size[::-1]])[0]['masks']",
        "```",
    ]
    if config_summary:
        lines += ["", "## Model", ""]
        lines += [f"- {key}: `{value}`" for key, value in config_summary.items()]
    if training_summary:
        lines += ["", "## Training", ""]
        lines += [f"- {key}: `{value}`" for key, value in training_summary.items()]
    lines += ["", "Trained with `training/train.py` of narrative-grounding (accelerate).", ""]
    return ModelCard("\n".join(lines))


def write_model_card(output_dir: str | Path, **kwargs: Any) -> Path:
    """Builds the card (see `build_model_card`) and writes `output_dir/README.md`."""
    path = Path(output_dir) / "README.md"
    build_model_card(**kwargs).save(path)
    return path
