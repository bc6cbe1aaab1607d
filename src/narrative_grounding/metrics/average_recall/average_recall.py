"""Average Recall of Panoptic Narrative Grounding, as an `evaluate` module.

This file is the whole metric: `evaluate.load` copies it alone (from this folder or from a Hub
repository) into its module cache, so it imports only installed third-party packages (numpy,
torch, datasets, evaluate) and never `narrative_grounding`. The package re-exports its names
(`narrative_grounding.metrics.AverageRecall`, `mask_counts`, `average_recall_from_counts`, ...), and
the referring-segmentation module builds on its `CountingMetric`, so every path shares one
definition. The metric card (README.md beside this file) states it; the sections below are:

1. protocols: masks -> per-phrase pixel counts at the resolution a published protocol compares;
2. definitions: Average Recall from counts or IoUs;
3. the `evaluate.Metric` classes.

Protocols (the config name), each reproducing a published evaluation:

- "original" (EPNG): at the original image size; a prediction at another size is a probability
  map, resized bilinearly, then thresholded.
- "stride4": at ceil(input / 4) of the ~800-pixel detectron2 input, ground truth resized with
  nearest neighbour (a stride-4 comparison without the batch padding).
- "stride4_padded" (PPMN's `train_net.py`): the input padded to a multiple of 32 before the
  x0.25 downsampling; the ground truth goes bilinearly to the input size, is zero-padded,
  downsampled bilinearly and every pixel above 0 is foreground.
- "soft256" (the PNG baseline's `test_net.py`): prediction and ground truth resized to 256 x 256
  and back to the image size, and a soft IoU of the resulting maps.
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import numpy as np
import torch
import torch.nn.functional as F

# ============================================================================ 1. protocols
PROTOCOLS = ("original", "stride4", "stride4_padded", "soft256")
#: Protocols whose compared masks are binary (the soft one compares probability-like maps).
BINARY_PROTOCOLS = ("original", "stride4", "stride4_padded")
PREDICTION_TYPES = ("probabilities", "logits")
#: detectron2's test-time ResizeShortestEdge, used by the stride-4 family.
STRIDE4_SHORT_SIDE = 800
STRIDE4_MAX_SIZE = 1333
STRIDE4 = 4
#: detectron2's `size_divisibility` of an FPN backbone: PPMN pads every input to a multiple of it.
STRIDE4_SIZE_DIVISIBILITY = 32
#: The PNG baseline stores every mask at 256 x 256.
SOFT_SIZE = (256, 256)


def _to_tensor(mask: Any, name: str) -> torch.Tensor:
    if isinstance(mask, torch.Tensor):
        return mask.detach()
    array = np.asarray(mask)
    if array.dtype == object:
        raise ValueError(f"{name} is ragged or holds non-numbers; give an H x W array of 0/1 values.")
    return torch.from_numpy(np.ascontiguousarray(array))


def stride4_input_size(
    reference_size: tuple[int, int], *, short_side: int = STRIDE4_SHORT_SIDE, max_size: int = STRIDE4_MAX_SIZE
) -> tuple[int, int]:
    """The (height, width) of the network input of the stride-4 protocols (detectron2's test resize)."""
    height, width = int(reference_size[0]), int(reference_size[1])
    scale = short_side / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def evaluation_size(
    reference_size: tuple[int, int],
    protocol: str = "original",
    *,
    short_side: int = STRIDE4_SHORT_SIDE,
    max_size: int = STRIDE4_MAX_SIZE,
) -> tuple[int, int]:
    """The (height, width) at which a protocol compares masks of an image of `reference_size`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"`protocol` must be one of {PROTOCOLS}, got {protocol!r}.")
    if protocol in ("original", "soft256"):
        return int(reference_size[0]), int(reference_size[1])
    input_size = stride4_input_size(reference_size, short_side=short_side, max_size=max_size)
    if protocol == "stride4":
        return tuple(math.ceil(side / STRIDE4) for side in input_size)
    divisor = STRIDE4_SIZE_DIVISIBILITY
    return tuple(math.ceil(side / divisor) * divisor // STRIDE4 for side in input_size)


def _binary(mask: torch.Tensor, name: str) -> torch.Tensor:
    """A bool mask from a bool / 0-1 integer / 0-1 float tensor, or a ValueError naming `name`."""
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point() or mask.is_complex():
        valid = bool(((mask == 0) | (mask == 1)).all())
    else:
        valid = mask.numel() == 0 or (int(mask.min()) >= 0 and int(mask.max()) <= 1)
    if not valid:
        raise ValueError(f"{name} must hold only 0/1 values.")
    return mask != 0


def _probabilities(prediction: torch.Tensor, prediction_type: str, name: str) -> torch.Tensor:
    """Float probabilities of a prediction that is binary, probabilities or logits."""
    if prediction.dtype == torch.bool:
        return prediction.float()
    if not prediction.is_floating_point():
        if prediction.numel() and (int(prediction.min()) < 0 or int(prediction.max()) > 1):
            raise ValueError(
                f"{name} is an integer mask with values outside 0/1; give a binary mask, "
                "probabilities or logits (floats)."
            )
        return prediction.float()
    if prediction_type == "logits":
        return prediction.float().sigmoid()
    if prediction.numel() and not bool(((prediction >= 0) & (prediction <= 1)).all()):
        raise ValueError(
            f"{name} has values outside [0, 1] (or nan) but prediction_type is 'probabilities'; "
            "pass prediction_type='logits' for raw mask logits."
        )
    return prediction.float()


def _bilinear(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`N x h x w` float maps resized to `N x size` (bilinear, align_corners=False, no antialiasing,
    as `F.interpolate` and the torchvision `Resize` of 2021 on tensors)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _padded_stride4(maps: torch.Tensor, input_size: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """PPMN's path of a mask to the stride-4 grid: bilinear to the input size, zero padding at the
    bottom / right to a multiple of 32 (detectron2's ImageList), bilinear x0.25."""
    maps = _bilinear(maps, input_size)  # N x h_in x w_in
    padded_height, padded_width = size[0] * STRIDE4, size[1] * STRIDE4
    maps = F.pad(maps, (0, padded_width - input_size[1], 0, padded_height - input_size[0]))  # N x Hp x Wp
    return _bilinear(maps, size)  # N x Hp/4 x Wp/4


def _threshold(probabilities: torch.Tensor, threshold: float, inclusive: bool) -> torch.Tensor:
    # EPNG binarises with `>= 0.5`, PPMN and our default with `> 0.5`: they differ on ties only
    return probabilities >= threshold if inclusive else probabilities > threshold


def resize_for_protocol(
    prediction: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    protocol: str = "original",
    *,
    prediction_type: str = "probabilities",
    threshold: float = 0.5,
    inclusive_threshold: bool = False,
    short_side: int = STRIDE4_SHORT_SIDE,
    max_size: int = STRIDE4_MAX_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brings a prediction and its ground truth to the resolution a protocol compares them at.

    Args:
        prediction: `H' x W'` (or `P x H' x W'`) binary mask, probabilities or logits, at any size
            (e.g. a model's stride-4 output). Binary masks (bool / integer 0-1) at the evaluation
            size are used as they are; anything else is turned into probabilities (sigmoid for
            logits, 0/1 for masks), resized bilinearly and thresholded.
        reference: `H x W` (or `P x H x W`) binary ground-truth mask at the original image size.
        protocol: one of `PROTOCOLS` (see the module docstring and `evaluation_size`). Under
            "stride4_padded" a prediction at the padded stride-4 size covers the padded input (as
            a model's output on it does); at any other size it covers the image and takes the
            ground truth's path to the grid.
        prediction_type: how to read a floating-point prediction: "probabilities" in [0, 1]
            or "logits".
        threshold: the probability that separates foreground from background.
        inclusive_threshold: a probability equal to `threshold` is foreground (`>=`, as EPNG)
            instead of background (`>`, the default, as PPMN).
        short_side, max_size: the network input size of the stride-4 protocols.

    Returns:
        `(prediction_mask, reference_mask)` of the evaluation size (`h x w` or `P x h x w`), on the
        prediction's device: two bool tensors, or under "soft256" two float maps in [0, 1].
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"`prediction_type` must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
    prediction = _to_tensor(prediction, "the prediction")
    reference = _to_tensor(reference, "the reference").to(prediction.device)
    if reference.ndim not in (2, 3) or prediction.ndim != reference.ndim:
        raise ValueError(
            f"Expected an H x W (or P x H x W) prediction and reference, got shapes "
            f"{tuple(prediction.shape)} and {tuple(reference.shape)}."
        )
    if reference.ndim == 3 and prediction.shape[0] != reference.shape[0]:
        raise ValueError(
            f"The prediction stack has {prediction.shape[0]} masks but the reference stack {reference.shape[0]}."
        )
    if min(reference.shape[-2:]) == 0 or min(prediction.shape[-2:]) == 0:
        raise ValueError(
            f"Empty mask: prediction {tuple(prediction.shape)}, reference {tuple(reference.shape)}."
        )
    reference = _binary(reference, "the reference (a ground-truth mask)")
    original_size = tuple(reference.shape[-2:])
    size = evaluation_size(original_size, protocol, short_side=short_side, max_size=max_size)
    batched = prediction.ndim == 3
    if not batched:  # 1 x H x W: one code path for single masks and stacks
        prediction, reference = prediction[None], reference[None]

    if protocol == "stride4" and original_size != size:
        # nearest for a label mask: no pixel becomes a blend of foreground and background
        reference = F.interpolate(reference[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
    elif protocol == "stride4_padded":
        input_size = stride4_input_size(original_size, short_side=short_side, max_size=max_size)
        # PPMN: any ground-truth weight left after the two bilinear resizes is foreground
        reference = _padded_stride4(reference.float(), input_size, size) > 0
    is_binary = prediction.dtype == torch.bool or not prediction.is_floating_point()
    if is_binary and tuple(prediction.shape[-2:]) == size:
        prediction = _binary(prediction, "the prediction")
    else:
        probabilities = _probabilities(prediction, prediction_type, "the prediction")
        if protocol == "stride4_padded" and tuple(probabilities.shape[-2:]) != size:
            probabilities = _padded_stride4(probabilities, input_size, size)
        else:
            # EPNG: sigmoid first, then bilinear upsampling of the probabilities, then threshold
            probabilities = _bilinear(probabilities, size)
        prediction = _threshold(probabilities, threshold, inclusive_threshold)

    if protocol == "soft256":
        # The PNG baseline: its predicted masks are integer tensors, which torchvision's Resize
        # rounds back to 0/1 at 256 x 256 (torch.round: 0.5 goes to 0); its ground truth stays a
        # float map. Both go back to the image size bilinearly, and the IoU is taken on those maps.
        prediction = torch.round(_bilinear(prediction.float(), SOFT_SIZE))
        prediction = _bilinear(prediction, size)
        reference = _bilinear(_bilinear(reference.float(), SOFT_SIZE), size)
    if not batched:
        prediction, reference = prediction[0], reference[0]
    return prediction, reference


def _stack_counts(prediction: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """`P x 3` (intersection, union, reference area) of two `P x h x w` stacks: int64 for bool masks,
    float64 sums of `p * g`, `p + g - p * g` and `g` for soft maps (the published soft IoU)."""
    if prediction.dtype != torch.bool:
        prediction, reference = prediction.double(), reference.double()
        products = prediction * reference
        counts = [
            products.flatten(1).sum(1),  # P
            (prediction + reference - products).flatten(1).sum(1),  # P
            reference.flatten(1).sum(1),  # P
        ]
        return torch.stack(counts, dim=1).cpu().numpy()
    if prediction.device.type == "cpu":
        # numpy's count_nonzero on a contiguous bool mask is ~90x faster than torch's sum on CPU
        # (which widens every pixel to int64); per-mask calls beat count_nonzero(axis=...)
        counts = np.empty((len(prediction), 3), dtype=np.int64)
        for index, (pred, ref) in enumerate(zip(prediction.numpy(), reference.numpy(), strict=True)):
            intersection = np.count_nonzero(pred & ref)
            reference_area = np.count_nonzero(ref)
            counts[index] = (
                intersection,
                np.count_nonzero(pred) + reference_area - intersection,
                reference_area,
            )
        return counts
    return _stack_counts_torch(prediction, reference)


def _stack_counts_torch(prediction: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """The same counts reduced where the masks live (an accelerator): only `P x 3` ints move."""
    intersection = (prediction & reference).flatten(1).sum(1)  # P
    prediction_area = prediction.flatten(1).sum(1)  # P
    reference_area = reference.flatten(1).sum(1)  # P
    union = prediction_area + reference_area - intersection
    return torch.stack([intersection, union, reference_area], dim=1).cpu().numpy().astype(np.int64)


def mask_counts(
    predictions: Sequence[Any] | torch.Tensor | np.ndarray,
    references: Sequence[Any] | torch.Tensor | np.ndarray,
    protocol: str = "original",
    **options: Any,
) -> dict[str, np.ndarray]:
    """Per-phrase pixel counts of predicted vs ground-truth masks, at the protocol's resolution.

    Args:
        predictions: `P` masks, as a list of `H_i x W_i` arrays/tensors (sizes may differ between
            phrases) or one `P x H x W` stack; binary, probabilities or logits.
        references: `P` binary ground-truth masks at the original image size, same forms.
        protocol: one of `PROTOCOLS`.
        **options: `prediction_type`, `threshold`, `inclusive_threshold`, `short_side`,
            `max_size`, as in `resize_for_protocol`.

    Returns:
        `intersections`, `unions` and `reference_areas`: three arrays of `P` counts, int64 pixel
        counts (float64 soft counts under "soft256").
    """
    if isinstance(predictions, (str, bytes)) or isinstance(references, (str, bytes)):
        raise ValueError("`predictions` and `references` must be masks, not strings.")
    if len(predictions) != len(references):
        raise ValueError(
            f"Got {len(predictions)} predictions but {len(references)} references; give one mask of each per phrase."
        )
    dtype = np.int64 if protocol in BINARY_PROTOCOLS else np.float64
    stacked = all(
        isinstance(x, (torch.Tensor, np.ndarray)) and x.ndim == 3 for x in (predictions, references)
    )
    if stacked and len(predictions):
        try:
            prediction, reference = resize_for_protocol(predictions, references, protocol, **options)
        except ValueError as error:
            raise ValueError(f"In the stack of {len(predictions)} phrases: {error}") from None
        counts = _stack_counts(prediction, reference)
    else:
        counts = np.zeros((len(predictions), 3), dtype=dtype)
        for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
            try:
                shapes = (tuple(np.shape(prediction)), tuple(np.shape(reference)))
                if any(len(shape) != 2 for shape in shapes):
                    raise ValueError(f"expected one H x W mask each, got shapes {shapes[0]} and {shapes[1]}.")
                prediction, reference = resize_for_protocol(prediction, reference, protocol, **options)
            except ValueError as error:
                raise ValueError(f"Phrase {index} of this batch: {error}") from None
            counts[index] = _stack_counts(prediction[None], reference[None])[0]
    return {"intersections": counts[:, 0], "unions": counts[:, 1], "reference_areas": counts[:, 2]}


# ============================================================================ 2. definitions
# Average Recall (PNG, Gonzalez et al. ICCV 2021): recall(t) is the fraction of phrases whose mask
# IoU is >= t, and AR is the area under recall(t) for t in [0, 1]. Because
# integral_0^1 1[IoU >= t] dt = IoU, the exact area is the mean IoU. The published code instead sums
# recall(t_k) * (t_{k+1} - t_k) on t = arange(0, 1, 1e-5) (a left Riemann sum that also leaves out
# the last interval); it differs from the exact area by at most 1e-5.
INTEGRATIONS = ("exact", "official")
#: "miss" keeps a phrase with an empty ground truth as the published code does: its IoU 0/0 is
#: nan, and `nan >= t` is false at every threshold.
EMPTY_GROUND_TRUTH_POLICIES = ("raise", "skip", "miss")
#: The grid of the official PNG evaluation: `np.arange(0, 1, 1e-5)` (100,000 thresholds).
OFFICIAL_THRESHOLD_STEP = 1e-5
#: Thresholds of the returned recall curves (for plotting); the AR itself never uses this grid.
CURVE_THRESHOLDS = np.linspace(0.0, 1.0, 101)
AVERAGE_RECALL_SPLITS = ("things", "stuff", "singular", "plural")
#: The Average Recall result keys, overall first; each has a phrase count (`AVERAGE_RECALL_COUNT_KEYS`).
AVERAGE_RECALL_KEYS = ("average_recall", *(f"average_recall_{split}" for split in AVERAGE_RECALL_SPLITS))
AVERAGE_RECALL_COUNT_KEYS = ("num_phrases", *(f"num_{split}" for split in AVERAGE_RECALL_SPLITS))
#: Relative slack of the count checks: soft (float) counts carry rounding.
_COUNT_SLACK = 1e-9


def as_1d(values: Any, name: str, kind: type) -> np.ndarray:
    """One value per phrase as a 1-D numpy array of `kind` (bool, int or float), or a ValueError.

    Accepts lists, numpy arrays and (any-device) tensors; floats must be finite, ints whole.
    """
    if hasattr(values, "detach"):  # torch tensor, possibly on an accelerator
        values = values.detach().cpu().numpy()
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(
            f"`{name}` must hold one value per phrase (a list, array or tensor), got {values!r}."
        )
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"`{name}` must hold one value per phrase (1-D), got shape {array.shape}.")
    if array.dtype == object or not (array.dtype == bool or np.issubdtype(array.dtype, np.number)):
        raise ValueError(f"`{name}` holds missing or non-numeric values; give one number per phrase.")
    if kind is bool:
        if array.dtype != bool:
            wrong = np.flatnonzero(~np.isin(array, (0, 1)))
            if len(wrong):
                raise ValueError(
                    f"`{name}` must be booleans (or 0/1); phrase {wrong[0]} has {array[wrong[0]]!r}."
                )
            array = array.astype(bool)
        return array
    if array.dtype == bool:
        array = array.astype(np.int64)
    if kind is int and not np.issubdtype(array.dtype, np.integer):
        wrong = np.flatnonzero(~(np.isfinite(array) & (array == np.round(array))))
        if len(wrong):
            raise ValueError(f"`{name}` must be integers; phrase {wrong[0]} has {array[wrong[0]]!r}.")
        return array.astype(np.int64)
    if kind is float:
        wrong = np.flatnonzero(~np.isfinite(array))
        if len(wrong):
            raise ValueError(f"`{name}` must be finite numbers; phrase {wrong[0]} has {array[wrong[0]]!r}.")
        return array.astype(np.float64)
    return array.astype(np.int64)


def check_lengths(**arrays: np.ndarray) -> int:
    """The common length of per-phrase arrays, or a ValueError listing every length."""
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"Per-phrase inputs differ in length: {lengths}; give one entry per phrase in each.")
    return next(iter(lengths.values()))


def first_indices(indices: np.ndarray, limit: int = 5) -> str:
    """`indices` for an error message: the first few, and how many in all."""
    shown = ", ".join(str(int(i)) for i in indices[:limit])
    return shown + (f", ... ({len(indices)} in all)" if len(indices) > limit else "")


def validate_counts(
    intersections: np.ndarray, unions: np.ndarray, reference_areas: np.ndarray | None = None
) -> None:
    """Raises a ValueError naming the first phrases whose counts cannot come from two masks."""

    def above(larger: np.ndarray, smaller: np.ndarray) -> np.ndarray:
        return larger > smaller + _COUNT_SLACK * np.abs(smaller)

    checks = [
        (intersections < 0, "a negative intersection"),
        (above(intersections, unions), "an intersection larger than the union"),
    ]
    if reference_areas is not None:
        known = reference_areas >= 0  # -1 marks "not given"
        checks += [
            (
                known & above(intersections, reference_areas),
                "an intersection larger than the ground-truth area",
            ),
            (known & above(reference_areas, unions), "a ground-truth area larger than the union"),
        ]
    for bad, what in checks:
        where = np.flatnonzero(bad)
        if len(where):
            raise ValueError(
                f"Phrases {first_indices(where)} have {what}: these counts cannot come from two masks."
            )


def _check_policy(empty_ground_truth: str) -> None:
    if empty_ground_truth not in EMPTY_GROUND_TRUTH_POLICIES:
        raise ValueError(
            f"`empty_ground_truth` must be one of {EMPTY_GROUND_TRUTH_POLICIES}, got {empty_ground_truth!r}."
        )


def recall_at(ious: np.ndarray, thresholds: np.ndarray | Sequence[float]) -> np.ndarray:
    """Fraction of `ious` that are >= each threshold (nan IoUs never are; nan if there is no IoU)."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if len(ious) == 0:
        return np.full(thresholds.shape, np.nan)
    ious = np.asarray(ious, dtype=np.float64)
    ordered = np.sort(ious[~np.isnan(ious)])
    # number of IoUs strictly below t, for every t at once (O((P + K) log P), no P x K matrix)
    below = np.searchsorted(ordered, thresholds, side="left")
    return (len(ordered) - below) / len(ious)


def area_under_recall_curve(ious: np.ndarray, integration: str = "exact") -> float:
    """Area under recall(t) = mean(IoU >= t) for t in [0, 1].

    Args:
        ious: `P` IoUs in [0, 1]; a nan IoU (an empty ground truth kept as a miss) is never recalled.
        integration: "exact" (the mean IoU, nan counting 0: the area of the step function, to float64
            rounding) or "official" (the published left Riemann sum on `np.arange(0, 1, 1e-5)`).

    Returns:
        The area as a float in [0, 1], or nan when `ious` is empty (a split with no phrase).
    """
    if integration not in INTEGRATIONS:
        raise ValueError(f"`integration` must be one of {INTEGRATIONS}, got {integration!r}.")
    if len(ious) == 0:
        return float("nan")
    if integration == "exact":
        return float(np.nansum(ious, dtype=np.float64) / len(ious))
    thresholds = np.arange(0.0, 1.0, OFFICIAL_THRESHOLD_STEP)
    recall = recall_at(ious, thresholds)
    # left Riemann sum over consecutive thresholds: recall(t_k) * (t_{k+1} - t_k), k < K - 1
    return float(np.sum(recall[:-1] * np.abs(np.diff(thresholds))))


def average_recall_from_ious(
    ious: Sequence[float] | np.ndarray,
    is_thing: Sequence[bool] | np.ndarray,
    num_segments: Sequence[int] | np.ndarray,
    integration: str = "exact",
    *,
    empty_ground_truth: str = "raise",
    num_empty_ground_truth: int | None = None,
) -> dict[str, Any]:
    """Average Recall of PNG, overall and on the things / stuff / singular / plural splits.

    Args:
        ious: `P` mask IoUs in [0, 1], one per evaluated phrase. nan is the published code's IoU
            of an empty ground truth and an empty prediction (0 / 0).
        is_thing: `P` booleans: the phrase's segments are of a COCO "thing" category (else stuff).
        num_segments: `P` numbers of ground-truth segments: 1 is singular, more is plural.
        integration: "exact" (default) or "official"; see `area_under_recall_curve`.
        empty_ground_truth: what a nan IoU means: "raise" (default), "skip" (leave the phrase out,
            counted in `num_skipped_empty_ground_truth`) or "miss" (keep it, never recalled, as the
            published code does).
        num_empty_ground_truth: reported as is when given (by `average_recall_from_counts`, which
            knows the ground-truth areas); by default the number of nan IoUs.

    Returns:
        A dict with `average_recall`, `average_recall_{things,stuff,singular,plural}` (fractions;
        nan for a split without phrases), `recall_at_0.5` (fraction of phrases with IoU >= 0.5),
        the phrase counts `num_phrases`, `num_{things,stuff,singular,plural}`,
        `num_skipped_empty_ground_truth`, `num_empty_ground_truth`, and `recall_curve`: a dict with
        `iou_thresholds` (101 values in [0, 1]) and the recall of `overall` and of each split.
    """
    _check_policy(empty_ground_truth)
    ious = np.asarray(ious.detach().cpu() if hasattr(ious, "detach") else ious, dtype=np.float64)
    if ious.ndim != 1:
        raise ValueError(f"`ious` must hold one value per phrase (1-D), got shape {ious.shape}.")
    is_thing = as_1d(is_thing, "is_thing", bool)
    num_segments = as_1d(num_segments, "num_segments", int)
    check_lengths(ious=ious, is_thing=is_thing, num_segments=num_segments)
    undefined = np.isnan(ious)
    invalid = np.flatnonzero(~undefined & ~((ious >= 0.0) & (ious <= 1.0)))
    if len(invalid):
        raise ValueError(
            f"IoUs must lie in [0, 1]; phrases {first_indices(invalid)} have {ious[invalid[:5]].tolist()}."
        )
    if undefined.any() and empty_ground_truth == "raise":
        raise ValueError(
            f"IoUs must lie in [0, 1]; phrases {first_indices(np.flatnonzero(undefined))} have nan (0 / 0: an "
            "empty ground truth and prediction). Pass empty_ground_truth='miss' to count them as misses "
            "(the published code) or 'skip' to leave them out."
        )
    no_segment = np.flatnonzero(num_segments < 1)
    if len(no_segment):
        raise ValueError(
            f"Phrases {first_indices(no_segment)} have num_segments < 1; a phrase is evaluated only when it "
            "has at least one ground-truth segment."
        )
    skipped = int(undefined.sum()) if empty_ground_truth == "skip" else 0
    if skipped:
        kept = ~undefined
        ious, is_thing, num_segments = ious[kept], is_thing[kept], num_segments[kept]
    # The phrases of each split, in the order of AVERAGE_RECALL_SPLITS (things, stuff, singular, plural).
    selections = (is_thing, ~is_thing, num_segments == 1, num_segments > 1)
    splits = dict(zip(AVERAGE_RECALL_SPLITS, selections, strict=True))
    results: dict[str, Any] = {"average_recall": area_under_recall_curve(ious, integration)}
    for name, selected in splits.items():
        results[f"average_recall_{name}"] = area_under_recall_curve(ious[selected], integration)
    results["recall_at_0.5"] = float(recall_at(ious, [0.5])[0])
    results["num_phrases"] = len(ious)
    for name, selected in splits.items():
        results[f"num_{name}"] = int(selected.sum())
    results["num_skipped_empty_ground_truth"] = skipped
    results["num_empty_ground_truth"] = (
        int(undefined.sum()) if num_empty_ground_truth is None else int(num_empty_ground_truth)
    )
    curve = {
        "iou_thresholds": CURVE_THRESHOLDS.tolist(),
        "overall": recall_at(ious, CURVE_THRESHOLDS).tolist(),
    }
    for name, selected in splits.items():
        curve[name] = recall_at(ious[selected], CURVE_THRESHOLDS).tolist()
    results["recall_curve"] = curve
    return results


def average_recall_from_counts(
    intersections: Sequence[float] | np.ndarray,
    unions: Sequence[float] | np.ndarray,
    is_thing: Sequence[bool] | np.ndarray,
    num_segments: Sequence[int] | np.ndarray,
    reference_areas: Sequence[float | None] | np.ndarray | None = None,
    integration: str = "exact",
    empty_ground_truth: str = "raise",
) -> dict[str, Any]:
    """Average Recall from per-phrase pixel counts (what the evaluate module stores).

    Args:
        intersections: `P` counts |pred AND gt| (pixel counts, or soft sums under "soft256").
        unions: `P` counts |pred OR gt|.
        is_thing: `P` booleans, see `average_recall_from_ious`.
        num_segments: `P` ground-truth segment counts (0 marks a phrase without ground truth).
        reference_areas: optional `P` counts |gt| (None or -1 where unknown). Only needed to detect a
            ground truth that became empty (e.g. a tiny segment lost at stride 4) while the
            prediction is not: without it such a phrase looks like an ordinary miss (IoU 0).
        integration: "exact" or "official".
        empty_ground_truth: a phrase whose ground truth is empty (no segment, an empty mask or an
            empty union): "raise" (default, its IoU is undefined), "skip" (leave it out, counted in
            `num_skipped_empty_ground_truth`) or "miss" (the published code: IoU = intersection /
            union, which is 0 for a non-empty prediction and a nan never recalled for an empty one;
            phrases without any segment are never evaluated and still raise).

    Returns:
        The dict of `average_recall_from_ious`.
    """
    _check_policy(empty_ground_truth)
    intersections = as_1d(intersections, "intersections", float)
    unions = as_1d(unions, "unions", float)
    is_thing = as_1d(is_thing, "is_thing", bool)
    num_segments = as_1d(num_segments, "num_segments", int)
    if reference_areas is None:
        reference_areas = np.full(len(intersections), -1.0)
    else:
        reference_areas = as_1d([-1 if a is None else a for a in reference_areas], "reference_areas", float)
    check_lengths(
        intersections=intersections,
        unions=unions,
        is_thing=is_thing,
        num_segments=num_segments,
        reference_areas=reference_areas,
    )
    validate_counts(intersections, unions, reference_areas)
    inconsistent = np.flatnonzero((num_segments == 0) & (reference_areas > 0))
    if len(inconsistent):
        raise ValueError(
            f"Phrases {first_indices(inconsistent)} have num_segments == 0 but a non-empty ground-truth mask."
        )
    negative = np.flatnonzero(num_segments < 0)
    if len(negative):
        raise ValueError(f"Phrases {first_indices(negative)} have a negative num_segments.")
    empty = (unions == 0) | (reference_areas == 0) | (num_segments == 0)
    empty_indices = np.flatnonzero(empty)
    if len(empty_indices) and empty_ground_truth == "raise":
        raise ValueError(
            f"{len(empty_indices)} phrase(s) have an empty ground truth (phrases {first_indices(empty_indices)}, "
            "counted in the order they were added): their IoU is undefined (the published code divides "
            "by zero). PNG evaluates only phrases with at least one ground-truth segment; remove them, "
            "pass `empty_ground_truth='skip'` to leave them out and count them, or "
            "`empty_ground_truth='miss'` to count them as misses as the published code does."
        )
    if empty_ground_truth == "skip":
        kept = ~empty
        ious = intersections[kept] / unions[kept]
        is_thing, num_segments = is_thing[kept], num_segments[kept]
        policy = "raise"  # nothing undefined is left
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            ious = np.where(unions > 0, intersections / np.maximum(unions, 1e-300), np.nan)
        policy = empty_ground_truth
    results = average_recall_from_ious(
        ious,
        is_thing,
        num_segments,
        integration,
        empty_ground_truth=policy,
        num_empty_ground_truth=len(empty_indices),
    )
    if empty_ground_truth == "skip":
        results["num_skipped_empty_ground_truth"] = len(empty_indices)
    return results


# ============================================================================ 3. evaluate modules
#: Per-phrase inputs every counting metric takes (plural name -> the singular name of `add`):
#: masks, or the counts they reduce to.
MASK_AND_COUNT_INPUTS = {
    "predictions": "prediction",
    "references": "reference",
    "intersections": "intersection",
    "unions": "union",
    "reference_areas": "reference_area",
}


class CountingMetric(evaluate.Metric, metaclass=abc.ABCMeta):
    """An `evaluate.Metric` that stores pixel counts instead of masks.

    `evaluate.Metric.add_batch` encodes its inputs with the module's `Features` and appends them to an
    Arrow cache file, read back whole at `compute`. Declaring masks as features would write every
    mask of the validation set to disk (56,531 PNG phrases of ~480 x 640 pixels are ~17 GB as uint8).
    So the features here are per-phrase numbers only, and `add_batch` / `add` / `compute` turn masks
    into counts before handing them to evaluate; its Arrow machinery (cache files, `num_process` /
    `process_id` gathering, `keep_in_memory`) is untouched.

    A subclass declares its extra per-phrase inputs once, in `phrase_inputs`, and converts them in
    `_phrase_columns`; `add_batch`, `add` and `compute` accept exactly `MASK_AND_COUNT_INPUTS` plus
    those (and `compute` the keyword options of `_compute`).

    Args:
        config_name: the evaluation protocol, one of the class's `protocols` ("original", the
            default, also "default"; see the module docstring).
        prediction_type: how floating-point predictions are read: "probabilities" or "logits".
            Boolean / integer predictions are binary masks.
        threshold: the probability that separates foreground from background (default 0.5).
        inclusive_threshold: a probability equal to `threshold` is foreground (EPNG's `>= 0.5`);
            by default it is background (`> 0.5`).
        stride4_short_side, stride4_max_size: the network input size of the stride-4 protocols.
        **kwargs: `evaluate.Metric` arguments (`keep_in_memory`, `cache_dir`, `num_process`,
            `process_id`, `experiment_id`, ...).
    """

    #: Per-phrase inputs besides masks and counts: plural name -> singular name (for `add`).
    phrase_inputs: dict[str, str] = {}
    protocols: tuple[str, ...] = PROTOCOLS
    #: Whether counts given by the caller must be whole numbers (pixel counts).
    integer_counts: bool = False
    #: Whether counts given by the caller must include `reference_areas`.
    requires_reference_areas: bool = False

    # abstract so that `evaluate.load`, which takes the first concrete Metric subclass it finds in a
    # module, never picks this base class over the module's own metric
    @abc.abstractmethod
    def _info(self) -> evaluate.MetricInfo: ...

    @abc.abstractmethod
    def _compute(self, **kwargs: Any) -> dict[str, Any]: ...

    def _phrase_columns(self, inputs: dict[str, Any]) -> dict[str, list[Any]]:
        """The subclass's `phrase_inputs` (all given or None) as validated feature columns."""
        return {}

    def __init__(
        self,
        config_name: str | None = None,
        *,
        prediction_type: str = "probabilities",
        threshold: float = 0.5,
        inclusive_threshold: bool = False,
        stride4_short_side: int = STRIDE4_SHORT_SIDE,
        stride4_max_size: int = STRIDE4_MAX_SIZE,
        **kwargs: Any,
    ) -> None:
        protocol = "original" if config_name in (None, "default") else config_name
        if protocol not in self.protocols:
            raise ValueError(
                f"Unknown evaluation protocol (config name) {config_name!r} for {type(self).__name__}; "
                f"choose one of {self.protocols}."
            )
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"`prediction_type` must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"`threshold` must lie in [0, 1), got {threshold}.")
        self.protocol = protocol
        self.mask_options = {
            "prediction_type": prediction_type,
            "threshold": float(threshold),
            "inclusive_threshold": bool(inclusive_threshold),
            "short_side": int(stride4_short_side),
            "max_size": int(stride4_max_size),
        }
        super().__init__(config_name=protocol, **kwargs)

    def count_features(self) -> dict[str, datasets.Value]:
        """The per-phrase count columns of the Arrow cache: masks never reach it. float64 holds pixel
        counts exactly (below 2**53) and the soft counts of "soft256"."""
        dtype = "int64" if self.integer_counts else "float64"
        return {name: datasets.Value(dtype) for name in ("intersections", "unions", "reference_areas")}

    def _input_names(self) -> dict[str, str]:
        return {**MASK_AND_COUNT_INPUTS, **self.phrase_inputs}

    def add_batch(self, **inputs: Any) -> None:
        """Adds a batch of phrases (one list entry each), reducing masks to pixel counts at once.

        Takes masks (`predictions`, `references`) or counts (`intersections`, `unions`,
        `reference_areas`), and the metric's `phrase_inputs`; see the module's inputs description.
        """
        names = self._input_names()
        unknown = sorted(set(inputs) - set(names))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.add_batch() got unknown inputs {unknown}; it takes {list(names)}."
            )
        columns = self._counts(**{name: inputs.get(name) for name in MASK_AND_COUNT_INPUTS})
        columns.update(self._phrase_columns({name: inputs.get(name) for name in self.phrase_inputs}))
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"Per-phrase inputs differ in length: {lengths}; give one entry per phrase in each."
            )
        evaluate.Metric.add_batch(self, **columns)

    def add(self, **inputs: Any) -> None:
        """Adds one phrase: the singular form of `add_batch` (`prediction=`, `reference=`, ...)."""
        plural = {singular: name for name, singular in self._input_names().items()}
        unknown = sorted(set(inputs) - set(plural))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.add() got unknown inputs {unknown}; it takes {list(plural)}."
            )
        self.add_batch(**{plural[name]: None if value is None else [value] for name, value in inputs.items()})

    def compute(self, **kwargs: Any) -> dict[str, Any] | None:
        """Adds the given phrases (if any, as `add_batch` takes them), then computes the metric over
        every phrase added, with the remaining keyword arguments as options of `_compute`.

        Returns the results dict on process 0 and None on the others (evaluate's convention).
        """
        names = self._input_names()
        inputs = {name: kwargs.pop(name) for name in list(kwargs) if name in names}
        options = set(inspect.signature(self._compute).parameters) - set(self._feature_names())
        unknown = sorted(set(kwargs) - options)
        if unknown:  # checked before evaluate empties its cache
            raise TypeError(
                f"{type(self).__name__}.compute() got unknown arguments {unknown}; inputs are {list(names)} "
                f"and options {sorted(options)}."
            )
        if any(value is not None for value in inputs.values()):
            self.add_batch(**inputs)
        if self.writer is None and self.num_process == 1:
            raise ValueError(
                f"{type(self).__name__}.compute() has nothing to evaluate: add phrases with add_batch()/add() "
                "or pass them to compute()."
            )
        return super().compute(**kwargs)

    def _counts(
        self, predictions: Any, references: Any, intersections: Any, unions: Any, reference_areas: Any
    ) -> dict[str, list[Any]]:
        """Per-phrase (intersection, union, reference area) lists from masks or from counts."""
        gave_masks = predictions is not None or references is not None
        gave_counts = intersections is not None or unions is not None
        if gave_masks and gave_counts:
            raise ValueError(
                "Give either masks (`predictions` and `references`) or counts (`intersections` and "
                "`unions`), not both."
            )
        if gave_masks:
            if predictions is None or references is None:
                raise ValueError("Masks need both `predictions` and `references`.")
            if reference_areas is not None:
                raise ValueError(
                    "`reference_areas` is computed from `references`; do not pass it with masks."
                )
            counts = mask_counts(predictions, references, self.protocol, **self.mask_options)
            return {name: values.tolist() for name, values in counts.items()}
        if intersections is None or unions is None:
            raise ValueError(
                "Nothing to evaluate: give masks (`predictions` and `references`) or counts "
                "(`intersections` and `unions`)."
            )
        if reference_areas is None and self.requires_reference_areas:
            raise ValueError(
                "Counts need `reference_areas` too (the ground-truth pixel count of each phrase)."
            )
        kind = int if self.integer_counts else float
        columns = {
            "intersections": as_1d(intersections, "intersections", kind),
            "unions": as_1d(unions, "unions", kind),
        }
        if reference_areas is None:
            columns["reference_areas"] = np.full(len(columns["intersections"]), -1)  # -1: not known
        else:
            if isinstance(reference_areas, (list, tuple)):
                reference_areas = [-1 if area is None else area for area in reference_areas]
            columns["reference_areas"] = as_1d(reference_areas, "reference_areas", kind)
        return {name: values.tolist() for name, values in columns.items()}


_CITATION = """\
@inproceedings{gonzalez2021panoptic,
  title={Panoptic Narrative Grounding},
  author={Gonz{\\'a}lez, Cristina and Ayobi, Nicol{\\'a}s and Hern{\\'a}ndez, Isabela and Hern{\\'a}ndez, Jos{\\'e} and Pont-Tuset, Jordi and Arbel{\\'a}ez, Pablo},
  booktitle={ICCV},
  year={2021}
}
"""

_DESCRIPTION = """\
Average Recall (AR) of Panoptic Narrative Grounding: the area under the curve of recall (the
fraction of noun phrases whose predicted mask has IoU >= t with the ground truth) against the IoU
threshold t in [0, 1], overall and on the things / stuff / singular / plural splits. Computed
exactly (the mean IoU) by default; `integration="official"` reproduces the published left Riemann
sum on a 1e-5 grid. The config name is the evaluation protocol: "original" (default, compare at
the original image size as EPNG), "stride4" (at stride 4 of an ~800-pixel input), "stride4_padded"
(PPMN's stride-4 comparison of the input padded to a multiple of 32) or "soft256" (the PNG
baseline's soft IoU after a 256 x 256 round trip).
"""

_KWARGS_DESCRIPTION = """
Load options: config name (protocol), prediction_type ("probabilities" or "logits"), threshold
    (0.5), inclusive_threshold (False: `> threshold`; True: `>= threshold` as EPNG).
Args (per phrase, one list entry each; masks may differ in size between phrases):
    predictions: predicted masks, `H x W` 0/1 arrays or tensors (or a `P x H x W` stack);
        float maps are probabilities (or logits with `prediction_type="logits"` at load time),
        resized to the protocol's resolution and thresholded.
    references: ground-truth masks at the original image size, `H x W` 0/1.
    intersections, unions: instead of masks, precomputed counts |pred & gt|, |pred | gt|.
    reference_areas: with counts only, optional |gt| (catches a ground truth emptied by resizing).
    is_thing: whether the phrase's segments are of a "thing" category (else "stuff").
    num_segments: number of ground-truth segments of the phrase (1 singular, > 1 plural).
    `add` takes the singular names (prediction, reference, intersection, union, reference_area).
Compute options:
    integration: "exact" (default) or "official".
    empty_ground_truth: "raise" (default), "skip" (skipped phrases are counted) or "miss" (kept and
        never recalled, as the published code).
Returns:
    average_recall, average_recall_things, average_recall_stuff, average_recall_singular,
    average_recall_plural (fractions in [0, 1]; nan for an empty split), recall_at_0.5,
    num_phrases, num_things, num_stuff, num_singular, num_plural, num_skipped_empty_ground_truth,
    num_empty_ground_truth, recall_curve (dict: iou_thresholds and the recall of overall and of
    each split).
Examples:
    >>> import numpy as np
    >>> metric = AverageRecall()
    >>> gt = np.zeros((4, 4), dtype=np.uint8); gt[:2] = 1
    >>> pred = np.zeros((4, 4), dtype=np.uint8); pred[:1] = 1
    >>> metric.compute(predictions=[pred, gt], references=[gt, gt], is_thing=[True, False],
    ...                num_segments=[1, 2])["average_recall"]
    0.75
"""


class AverageRecall(CountingMetric):
    """PNG Average Recall; see the module docstring and the metric card for the definition.

    Construction arguments are those of `CountingMetric` (protocol as `config_name`,
    `prediction_type`, `threshold`, `inclusive_threshold`, and `evaluate.Metric`'s own).
    """

    phrase_inputs = {"is_thing": "is_thing", "num_segments": "num_segments"}

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    **self.count_features(),
                    "is_thing": datasets.Value("bool"),
                    "num_segments": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2109.04988", "https://arxiv.org/abs/2208.05647"],
        )

    def _phrase_columns(self, inputs: dict[str, Any]) -> dict[str, list[Any]]:
        if inputs["is_thing"] is None or inputs["num_segments"] is None:
            raise ValueError("Every phrase needs `is_thing` and `num_segments` (one entry per phrase).")
        return {
            "is_thing": as_1d(inputs["is_thing"], "is_thing", bool).tolist(),
            "num_segments": as_1d(inputs["num_segments"], "num_segments", int).tolist(),
        }

    def _compute(
        self,
        *,
        intersections: list[float],
        unions: list[float],
        reference_areas: list[float],
        is_thing: list[bool],
        num_segments: list[int],
        integration: str = "exact",
        empty_ground_truth: str = "raise",
    ) -> dict[str, Any]:
        return average_recall_from_counts(
            intersections,
            unions,
            is_thing,
            num_segments,
            reference_areas=reference_areas,
            integration=integration,
            empty_ground_truth=empty_ground_truth,
        )
