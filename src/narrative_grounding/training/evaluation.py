"""Average Recall of a model over a dataloader, in one or several processes.

Each process reduces its predictions to per-phrase pixel counts (intersection, union, ground-truth area)
at the resolution of the chosen protocol, the counts are gathered with `accelerator.gather_for_metrics`
(which drops the samples accelerate repeats to even out the last batch) and the `AverageRecall` metric
is computed once, on the main process, then shared with every process.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.synthetic.levels import EXPRESSION_KINDS
from ..metrics import (
    AVERAGE_RECALL_COUNT_KEYS,
    AVERAGE_RECALL_KEYS,
    AVERAGE_RECALL_SPLITS,
    BINARY_PROTOCOLS,
    INTEGRATIONS,
    PROTOCOLS,
    AverageRecall,
    evaluation_size,
    mask_counts,
    stride4_input_size,
)
from .collate import NO_EXPRESSION_KIND, model_inputs

#: Columns of the per-phrase count table gathered across processes.
COUNT_COLUMNS = ("intersections", "unions", "reference_areas", "is_thing", "num_segments", "expression_kind")
PAD = -1  # marks padded phrases (a count is never negative)
#: What a model evaluation does with a ground truth left empty by the protocol's resize ("raise", the metric's
#: third choice, would stop a whole evaluation for one sliver of a segment).
EMPTY_GROUND_TRUTH_CHOICES = ("skip", "miss")
#: The protocols whose predicted masks are the processor's post-processing output at the original image size
#: (so its mask decision applies); the others threshold stride-4 logits themselves.
POST_PROCESSED_PROTOCOLS = ("original", "soft256")

#: (label, result key, phrase-count key) of each row of the Average Recall table.
AR_TABLE_ROWS = tuple(
    zip(("overall", *AVERAGE_RECALL_SPLITS), AVERAGE_RECALL_KEYS, AVERAGE_RECALL_COUNT_KEYS, strict=True)
)


def batch_phrase_counts(
    batch: Mapping[str, Any],
    pred_masks: torch.Tensor,
    processor: Any,
    protocol: str = "original",
    threshold: float = 0.5,
    inclusive_threshold: bool = False,
) -> torch.Tensor:
    """Per-phrase counts of one batch as a `B x P x 6` tensor (columns `COUNT_COLUMNS`, -1 = padding): int64
    pixel counts, float64 soft counts under "soft256". A probability equal to `threshold` is in a mask only
    with `inclusive_threshold` (EPNG's `>=`).

    batch: a `PngCollator(with_references=True)` batch; pred_masks: B x P' x h x w logits. Per protocol (see
    `narrative_grounding.metrics.resize_for_protocol`):

    - "original" and "soft256": the processor's post-processing undoes the resize and padding exactly and
      thresholds at the original image size (a phrase lost to truncation gets an empty mask: a miss); the
      metric compares those masks as they are ("original") or after its 256 x 256 round trip ("soft256").
    - "stride4": the logits of the image's part of the padded input, brought to the stride-4 size of an
      ~800-pixel input.
    - "stride4_padded": when the processor resized the image to the protocol's own ~800-pixel input, the
      logits of the image padded to a multiple of 32, padding included (they are the protocol's prediction,
      as in PPMN's evaluation); otherwise the logits of the image's part, which take the ground truth's path.
    """
    from ..modeling.image_processing_png import PngBatchFeature

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; choose one of {PROTOCOLS}")
    references = batch["reference_masks"]
    num_phrases = [len(reference) for reference in references]
    dtype = torch.int64 if protocol in BINARY_PROTOCOLS else torch.float64
    table = torch.full((len(references), max(num_phrases), len(COUNT_COLUMNS)), PAD, dtype=dtype)
    for index, reference in enumerate(references):
        count = num_phrases[index]
        if protocol in POST_PROCESSED_PROTOCOLS:
            # one sample at a time: its phrase slots beyond its own phrases are batch padding
            prediction = processor.post_process_panoptic_narrative_grounding(
                pred_masks[index : index + 1, :count].float(),
                inputs=PngBatchFeature(
                    {"pixel_values": batch["pixel_values"][index : index + 1]},
                    metadata=[batch["metadata"][index]],
                ),
                threshold=threshold,
                inclusive_threshold=inclusive_threshold,
            )[0]["masks"]
            prediction_type = "probabilities"  # binary masks at the evaluation size are used as they are
        else:
            prediction, prediction_type = _stride4_prediction(
                batch, index, pred_masks[index].float(), protocol
            )
            prediction = prediction[:count]
        if len(prediction) < count:
            raise ValueError(
                f"image {int(batch['image_ids'][index])}: {len(prediction)} predicted masks for {count} phrases"
            )
        counts = mask_counts(
            prediction,
            reference.to(prediction.device),
            protocol,
            prediction_type=prediction_type,
            threshold=threshold,
            inclusive_threshold=inclusive_threshold,
        )
        for column, name in enumerate(COUNT_COLUMNS[:3]):
            table[index, :count, column] = torch.from_numpy(counts[name]).to(dtype)
        table[index, :count, 3] = batch["is_thing"][index].to(dtype).cpu()
        table[index, :count, 4] = batch["num_segments"][index].to(dtype).cpu()
        if "expression_kinds" in batch:
            table[index, :count, 5] = batch["expression_kinds"][index].to(dtype).cpu()
        else:
            table[index, :count, 5] = NO_EXPRESSION_KIND
    return table


def _stride4_prediction(
    batch: Mapping[str, Any], index: int, logits: torch.Tensor, protocol: str
) -> tuple[torch.Tensor, str]:
    """What a stride-4 protocol reads of one sample's `P x h x w` logits, and how to read it ("logits" or
    "probabilities")."""
    original_size = tuple(batch["metadata"][index]["original_size"])
    stride = batch["pixel_values"].shape[-2] // logits.shape[-2]  # 4 (2 with `epng_mask_stride=2`)
    if protocol == "stride4_padded":
        grid = evaluation_size(original_size, protocol)
        protocol_input = tuple(batch["metadata"][index]["resized_size"]) == stride4_input_size(original_size)
        if protocol_input and stride == 4 and logits.shape[-2] >= grid[0] and logits.shape[-1] >= grid[1]:
            # The processor pads to a multiple of 32 (and to the batch's largest image): the image padded to a
            # multiple of 32 is the top-left `grid` of the logits, as PPMN's single-image input was.
            return logits[:, : grid[0], : grid[1]], "logits"  # P x grid
    height, width = _image_part(batch, index, tuple(logits.shape[-2:]), stride)
    prediction = logits[:, :height, :width]  # P x h x w: covers the image only
    if protocol == "stride4_padded" and tuple(prediction.shape[-2:]) == grid:
        # At the padded grid's size the metric reads a prediction as covering the padding too; at the input
        # size it takes the ground truth's path (bilinear to the input, pad, x0.25), which is what the image
        # part needs. Sigmoid first, as the metric does for logits.
        size = stride4_input_size(original_size)
        probabilities = F.interpolate(
            prediction.sigmoid()[None], size=size, mode="bilinear", align_corners=False
        )
        return probabilities[0], "probabilities"  # P x H_in x W_in
    return prediction, "logits"


def _image_part(
    batch: Mapping[str, Any], index: int, logits_size: tuple[int, int], stride: int
) -> tuple[int, int]:
    """The part of the logits (at `stride` of the input) that covers the image (the processor pads at the
    bottom / right)."""
    height, width = batch["metadata"][index]["resized_size"]
    return min(logits_size[0], math.ceil(height / stride)), min(logits_size[1], math.ceil(width / stride))


def average_recall_from_table(
    table: torch.Tensor | np.ndarray, *, empty_ground_truth: str = "skip", integration: str = "exact"
) -> dict[str, Any]:
    """AverageRecall over the real rows of a gathered `N x P x 6` (or `M x 6`) count table.

    `empty_ground_truth` ("skip" or "miss") and `integration` ("exact" or "official") are passed to
    `AverageRecall.compute`: "miss" and "official" score as the published evaluation code does.

    Where the phrases record their expression kind (the synthetic data), the results also hold the AR of
    each kind present, as `average_recall_expression_<kind>` with its phrase count in
    `num_phrases_expression_<kind>`.
    """
    rows = np.asarray(table.cpu() if isinstance(table, torch.Tensor) else table).reshape(
        -1, len(COUNT_COLUMNS)
    )
    rows = rows[rows[:, 1] != PAD]
    check_scoring_options(empty_ground_truth, integration)
    options = {"empty_ground_truth": empty_ground_truth, "integration": integration}
    results = _average_recall(rows, **options)
    for index, kind in enumerate(EXPRESSION_KINDS):
        of_kind = rows[rows[:, 5] == index]
        if len(of_kind):
            results[f"average_recall_expression_{kind}"] = _average_recall(of_kind, **options)[
                "average_recall"
            ]
            results[f"num_phrases_expression_{kind}"] = len(of_kind)
    return results


def expression_kind_results(metrics: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """(kind, AR, phrase count) of every expression kind in `metrics`, in `EXPRESSION_KINDS` order."""
    return [
        (kind, metrics[f"average_recall_expression_{kind}"], metrics[f"num_phrases_expression_{kind}"])
        for kind in EXPRESSION_KINDS
        if f"average_recall_expression_{kind}" in metrics
    ]


def check_scoring_options(empty_ground_truth: str, integration: str) -> None:
    """Raise for an unknown choice before a whole evaluation is run for nothing."""
    if empty_ground_truth not in EMPTY_GROUND_TRUTH_CHOICES:
        raise ValueError(
            f"empty_ground_truth must be one of {EMPTY_GROUND_TRUTH_CHOICES}, got {empty_ground_truth!r}"
        )
    if integration not in INTEGRATIONS:
        raise ValueError(f"integration must be one of {INTEGRATIONS}, got {integration!r}")


def _average_recall(rows: np.ndarray, *, empty_ground_truth: str, integration: str) -> dict[str, Any]:
    metric = AverageRecall()
    metric.add_batch(
        intersections=rows[:, 0].tolist(),
        unions=rows[:, 1].tolist(),
        reference_areas=rows[:, 2].tolist(),
        is_thing=rows[:, 3].astype(bool).tolist(),
        num_segments=rows[:, 4].tolist(),
    )
    # A ground truth can vanish when resized (a sliver of a segment): skipped and counted, or a miss as in the
    # published code, never an error that fails an epoch.
    return metric.compute(empty_ground_truth=empty_ground_truth, integration=integration)


@torch.no_grad()
def evaluate_average_recall(
    model: torch.nn.Module,
    dataloader: Iterable[Mapping[str, Any]],
    accelerator: Any,
    processor: Any,
    *,
    protocol: str = "original",
    threshold: float = 0.5,
    inclusive_threshold: bool = False,
    empty_ground_truth: str = "skip",
    integration: str = "exact",
    progress: bool = True,
    description: str = "Evaluating",
) -> dict[str, Any]:
    """Evaluates `model` on every batch of `dataloader` (prepared by `accelerator`, collated by
    `PngCollator(processor, with_references=True)`) and returns the
    AverageRecall results (plus `eval_loss`, the mean of the batch losses) on every process.

    `inclusive_threshold`, `empty_ground_truth` ("skip" / "miss") and `integration` ("exact" / "official")
    are the metric's options of the same names (docs/metric.md: which published evaluation each reproduces).
    """
    from accelerate.utils import broadcast_object_list

    check_scoring_options(empty_ground_truth, integration)
    was_training = model.training
    model.eval()
    tables, losses = [], []
    total = len(dataloader) if hasattr(dataloader, "__len__") else None
    for batch in tqdm(
        dataloader,
        desc=description,
        total=total,
        disable=not (progress and accelerator.is_local_main_process),
    ):
        outputs = model(**model_inputs(batch))
        if outputs.loss is not None:
            # plain gather: one loss per process, not per sample (gather_for_metrics would trim it)
            losses.append(accelerator.gather(outputs.loss.detach().float().reshape(1)).cpu())
        table = batch_phrase_counts(
            batch, outputs.pred_masks, processor, protocol, threshold, inclusive_threshold
        ).to(accelerator.device)
        table = accelerator.pad_across_processes(table, dim=1, pad_index=PAD)  # same P on every process
        tables.append(accelerator.gather_for_metrics(table).cpu())
    if was_training:
        model.train()
    results: list[Any] = [None]
    if accelerator.is_main_process:
        if not tables:
            raise ValueError("the evaluation dataloader is empty")
        width = max(table.shape[1] for table in tables)
        padded = [
            torch.nn.functional.pad(table, (0, 0, 0, width - table.shape[1]), value=PAD) for table in tables
        ]
        metrics = average_recall_from_table(
            torch.cat(padded), empty_ground_truth=empty_ground_truth, integration=integration
        )
        if losses:
            metrics["eval_loss"] = float(torch.cat(losses).mean())
        results[0] = metrics
    if accelerator.num_processes > 1:
        broadcast_object_list(results, from_process=0)
    return results[0]


def format_average_recall_table(metrics: Mapping[str, Any], title: str | None = None) -> str:
    """A plain-text table of overall / things / stuff / singular / plural AR (in %) with phrase counts, then
    one row per expression kind where the phrases record their kind."""
    lines = [title] if title else []
    lines.append(f"{'split':<10} {'AR (%)':>8} {'phrases':>8}")
    for label, key, count_key in AR_TABLE_ROWS:
        value = metrics.get(key)
        shown = (
            "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"
        )
        lines.append(f"{label:<10} {shown:>8} {metrics.get(count_key, 0):>8}")
    kinds = expression_kind_results(metrics)
    if kinds:
        lines.append(f"{'expression':<14} {'AR (%)':>8} {'phrases':>8}")
        lines.extend(f"{kind:<14} {100 * value:>8.1f} {count:>8}" for kind, value, count in kinds)
    if metrics.get("num_skipped_empty_ground_truth"):
        lines.append(
            f"({metrics['num_skipped_empty_ground_truth']} phrase(s) with an empty ground truth skipped)"
        )
    return "\n".join(lines)


def scalar_metrics(metrics: Mapping[str, Any], prefix: str = "eval/") -> dict[str, float]:
    """The numeric entries of a results dict (for trackers): drops the recall curve and nan values."""
    scalars = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            scalars[f"{prefix}{key}"] = float(value)
    return scalars
