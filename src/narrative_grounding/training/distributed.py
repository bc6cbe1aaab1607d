"""Data parallelism: loss normalisation across processes, and CPU (gloo) launches.

The model's loss terms are sums over phrases / pixels divided by counts of those items
(`narrative_grounding.modeling.losses`). Data-parallel training averages gradients over the K
processes, so if every process divides its local sums by (global count / K), the averaged gradient
is (sum of all sums) / (global count): exactly what one process would get on the K batches together.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ..modeling.losses import loss_counts

PREDICTION_STRIDE = 4  # the model counts its loss items (SAL's pixels) at stride 4 of pixel_values


def local_loss_counts(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The item counts of this process's batch, computed from the labels exactly as the model does.

    batch: model inputs with `pixel_values` (B x 3 x H x W), `labels` (B x P x H x W or stride-4),
    `phrase_mask` (B x P, optional: phrases with tokens) and `pixel_mask` (B x H x W, optional).
    Returns float scalars keyed like `modeling.losses.loss_counts`.
    """
    pixel_values, labels = batch["pixel_values"], batch["labels"]
    size = (pixel_values.shape[-2] // PREDICTION_STRIDE, pixel_values.shape[-1] // PREDICTION_STRIDE)
    targets = labels.float()
    if tuple(targets.shape[-2:]) != size:
        targets = F.interpolate(targets, size=size, mode="area")  # B x P x h x w, as the model's loss
    phrase_mask = batch.get("phrase_mask")
    if phrase_mask is None:
        phrase_mask = batch["phrase_token_mask"].bool().any(dim=-1)  # B x P
    pixel_mask = batch.get("pixel_mask")
    if pixel_mask is None:
        pixel_valid = torch.ones(targets.shape[0], *size, dtype=torch.bool, device=targets.device)
    else:
        pixel_valid = F.interpolate(pixel_mask[:, None].float(), size=size, mode="area")[:, 0] >= 0.5
    return loss_counts(targets, phrase_mask.bool(), pixel_valid, batch["phrase_token_mask"])


def global_loss_counts(batch: Mapping[str, torch.Tensor], accelerator) -> dict[str, torch.Tensor]:
    """Counts summed over every process and divided by the number of processes (see the module doc).

    With one process these are the batch's own counts, so the loss is unchanged.
    """
    counts = local_loss_counts(batch)
    if accelerator.num_processes == 1:
        return counts
    names = sorted(counts)
    stacked = torch.stack([counts[name] for name in names])  # one all-reduce for every count
    total = accelerator.reduce(stacked, reduction="sum")
    return {name: total[index] / accelerator.num_processes for index, name in enumerate(names)}


def cpu_multiprocess_launch() -> bool:
    """True when this process is one of several (torchrun / `accelerate launch --multi_gpu`) on a machine
    without a GPU. accelerate 1.15 then picks the gloo backend only when told to use the CPU (`cpu=True` or
    ACCELERATE_USE_CPU=1); without it every process trains alone, unaware of the others."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return world_size > 1 and not torch.cuda.is_available()
