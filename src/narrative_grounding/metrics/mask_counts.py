"""Masks -> per-phrase pixel counts, at the resolution an evaluation protocol prescribes.

Two published protocols decide where a predicted mask is compared with its ground truth:

- "original" (EPNG): at the original image size. A prediction at another size is treated as a
  probability map, resized bilinearly to the ground truth's size, then thresholded.
- "stride4" (PPMN / NICE / XPNG): at stride 4 of the network input. The input is the image
  resized so its short side is 800 and its long side at most 1333 (detectron2's test-time
  resize, which those repositories use), so the comparison size is ceil(input / 4). The ground
  truth is brought there with nearest-neighbour resizing (as label maps are resized) and the
  prediction bilinearly (then thresholded).

Counts are computed where the masks live (a CUDA tensor stays on its device); only three integers
per phrase come back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

PROTOCOLS = ("original", "stride4")
PREDICTION_TYPES = ("probabilities", "logits")
#: detectron2's test-time ResizeShortestEdge, used by the stride-4 family.
STRIDE4_SHORT_SIDE = 800
STRIDE4_MAX_SIZE = 1333
STRIDE4 = 4


def _to_tensor(mask: Any, name: str) -> torch.Tensor:
    if isinstance(mask, torch.Tensor):
        return mask.detach()
    array = np.asarray(mask)
    if array.dtype == object:
        raise ValueError(f"{name} is ragged or holds non-numbers; give an H x W array of 0/1 values.")
    return torch.from_numpy(np.ascontiguousarray(array))


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
    height, width = int(reference_size[0]), int(reference_size[1])
    if protocol == "original":
        return height, width
    scale = short_side / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    input_height, input_width = int(height * scale + 0.5), int(width * scale + 0.5)
    return math.ceil(input_height / STRIDE4), math.ceil(input_width / STRIDE4)


def _binary_reference(reference: torch.Tensor, name: str) -> torch.Tensor:
    if reference.dtype == torch.bool:
        return reference
    if reference.is_floating_point() or reference.is_complex():
        valid = bool(((reference == 0) | (reference == 1)).all())
    else:
        valid = reference.numel() == 0 or (int(reference.min()) >= 0 and int(reference.max()) <= 1)
    if not valid:
        raise ValueError(f"{name} (a ground-truth mask) must hold only 0/1 values.")
    return reference != 0


def _prediction_probabilities(prediction: torch.Tensor, prediction_type: str, name: str) -> torch.Tensor:
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


def resize_for_protocol(
    prediction: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    protocol: str = "original",
    *,
    prediction_type: str = "probabilities",
    threshold: float = 0.5,
    short_side: int = STRIDE4_SHORT_SIDE,
    max_size: int = STRIDE4_MAX_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brings a prediction and its ground truth to the resolution a protocol compares them at.

    Args:
        prediction: `H' x W'` (or `P x H' x W'`) binary mask, probabilities or logits, at any size
            (e.g. a model's stride-4 output). Binary masks (bool / integer 0-1) at the evaluation
            size are used as they are; anything else is turned into probabilities (sigmoid for
            logits, 0/1 for masks), resized bilinearly and thresholded (`> threshold`).
        reference: `H x W` (or `P x H x W`) binary ground-truth mask at the original image size.
        protocol: "original" (compare at `H x W`) or "stride4" (compare at stride 4 of the
            ~800-pixel network input, see `evaluation_size`).
        prediction_type: how to read a floating-point prediction: "probabilities" in [0, 1]
            or "logits".
        threshold: probability above which a resized pixel is foreground.
        short_side, max_size: the network input size of the stride-4 protocol.

    Returns:
        `(prediction_mask, reference_mask)`: two bool tensors of the evaluation size (`h x w` or
        `P x h x w`), on the prediction's device.
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
    reference = _binary_reference(reference, "the reference")
    size = evaluation_size(tuple(reference.shape[-2:]), protocol, short_side=short_side, max_size=max_size)

    batched = prediction.ndim == 3
    if not batched:  # 1 x H x W: one code path for single masks and stacks
        prediction, reference = prediction[None], reference[None]
    if tuple(reference.shape[-2:]) != size:
        # nearest for a label mask: no pixel becomes a blend of foreground and background
        reference = F.interpolate(reference[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
    is_binary = prediction.dtype == torch.bool or not prediction.is_floating_point()
    if is_binary and tuple(prediction.shape[-2:]) == size:
        prediction = _binary_reference(prediction, "the prediction")
    else:
        probabilities = _prediction_probabilities(prediction, prediction_type, "the prediction")
        if tuple(probabilities.shape[-2:]) != size:
            # EPNG: sigmoid first, then bilinear upsampling of the probabilities, then threshold
            probabilities = F.interpolate(
                probabilities[:, None], size=size, mode="bilinear", align_corners=False
            )[:, 0]
        prediction = probabilities > threshold
    if not batched:
        prediction, reference = prediction[0], reference[0]
    return prediction, reference


def _stack_counts(prediction: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """`P x 3` int64 (intersection, union, reference area) of two `P x h x w` bool stacks."""
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
    *,
    prediction_type: str = "probabilities",
    threshold: float = 0.5,
    short_side: int = STRIDE4_SHORT_SIDE,
    max_size: int = STRIDE4_MAX_SIZE,
) -> dict[str, np.ndarray]:
    """Per-phrase pixel counts of predicted vs ground-truth masks, at the protocol's resolution.

    Args:
        predictions: `P` masks, as a list of `H_i x W_i` arrays/tensors (sizes may differ between
            phrases) or one `P x H x W` stack; binary, probabilities or logits (see
            `resize_for_protocol`).
        references: `P` binary ground-truth masks at the original image size, same forms.
        protocol, prediction_type, threshold, short_side, max_size: see `resize_for_protocol`.

    Returns:
        `intersections`, `unions` and `reference_areas`: three int64 arrays of `P` counts.
    """
    if isinstance(predictions, (str, bytes)) or isinstance(references, (str, bytes)):
        raise ValueError("`predictions` and `references` must be masks, not strings.")
    if len(predictions) != len(references):
        raise ValueError(
            f"Got {len(predictions)} predictions but {len(references)} references; give one mask of each per phrase."
        )
    options = {
        "protocol": protocol,
        "prediction_type": prediction_type,
        "threshold": threshold,
        "short_side": short_side,
        "max_size": max_size,
    }
    stacked = all(
        isinstance(x, (torch.Tensor, np.ndarray)) and x.ndim == 3 for x in (predictions, references)
    )
    if stacked and len(predictions):
        try:
            prediction, reference = resize_for_protocol(predictions, references, **options)
        except ValueError as error:
            raise ValueError(f"In the stack of {len(predictions)} phrases: {error}") from None
        counts = _stack_counts(prediction, reference)
    else:
        counts = np.zeros((len(predictions), 3), dtype=np.int64)
        for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
            try:
                shapes = (tuple(np.shape(prediction)), tuple(np.shape(reference)))
                if any(len(shape) != 2 for shape in shapes):
                    raise ValueError(f"expected one H x W mask each, got shapes {shapes[0]} and {shapes[1]}.")
                prediction, reference = resize_for_protocol(prediction, reference, **options)
            except ValueError as error:
                raise ValueError(f"Phrase {index} of this batch: {error}") from None
            counts[index] = _stack_counts(prediction[None], reference[None])[0]
    return {"intersections": counts[:, 0], "unions": counts[:, 1], "reference_areas": counts[:, 2]}
