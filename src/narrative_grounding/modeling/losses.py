"""Training losses: BCE + Dice on mask logits (every supervised prediction) and EPNG's bidirectional
Semantic Alignment Loss (eqs. 13-14).

Every term is computed as a *sum* over the items it averages (phrases or pixels) and a *count* of those
items, and divided at the end. The counts depend only on the labels (`loss_counts`), so a distributed
trainer can all-reduce them and pass the global counts back in: B samples on each of K processes then give
the same loss and gradients as K * B samples on one.

Targets are the labels brought to the prediction's resolution (stride 4) by area averaging: soft targets
in [0, 1] for BCE and Dice; a pixel is a positive of a phrase for SAL when its target is >= 0.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Count names: which items each loss term averages over.
PHRASES = "phrases"  # real phrases: BCE and Dice
SAL_PHRASES = "sal_phrases"  # real phrases with at least one positive pixel: SAL phrase -> pixels
SAL_PIXELS = "sal_pixels"  # valid pixels covered by at least one real phrase: SAL pixel -> phrases

DICE_EPS = 1.0


def loss_counts(
    targets: torch.Tensor, phrase_mask: torch.Tensor, pixel_valid: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Number of items every loss term averages over, from B x P x h x w targets, B x P phrase mask and
    B x h x w valid-pixel mask. Returns float scalars (all-reduce them for distributed training)."""
    positives = _positives(targets, phrase_mask, pixel_valid)  # B x P x h x w
    return {
        PHRASES: phrase_mask.sum().float(),
        SAL_PHRASES: positives.flatten(2).any(dim=-1).sum().float(),
        SAL_PIXELS: positives.any(dim=1).sum().float(),
    }


def _positives(targets, phrase_mask, pixel_valid) -> torch.Tensor:
    return (targets >= 0.5) & phrase_mask[:, :, None, None] & pixel_valid[:, None]


def mask_loss_sums(
    logits: torch.Tensor, targets: torch.Tensor, phrase_mask: torch.Tensor, pixel_valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over real phrases of the per-phrase BCE (mean over valid pixels, eq. 11) and Dice loss (eq. 12,
    1 - 2 sum(pt) / (sum(p^2) + sum(t^2) + eps)). logits, targets: B x P x h x w."""
    logits = logits.float()
    valid = pixel_valid[:, None].to(logits.dtype)  # B x 1 x h x w
    num_valid = valid.flatten(1).sum(dim=-1).clamp(min=1.0)[:, None]  # B x 1
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * valid
    bce_per_phrase = bce.flatten(2).sum(dim=-1) / num_valid  # B x P
    probs = logits.sigmoid() * valid
    targets = targets * valid
    intersection = (probs * targets).flatten(2).sum(dim=-1)
    denominator = (probs * probs).flatten(2).sum(dim=-1) + (targets * targets).flatten(2).sum(dim=-1)
    dice_per_phrase = 1.0 - 2.0 * intersection / (denominator + DICE_EPS)  # B x P
    real = phrase_mask.to(logits.dtype)
    return (bce_per_phrase * real).sum(), (dice_per_phrase * real).sum()


def semantic_alignment_loss_sums(
    phrase_embeddings: torch.Tensor,
    pixel_embeddings: torch.Tensor,
    targets: torch.Tensor,
    phrase_mask: torch.Tensor,
    pixel_valid: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EPNG's bidirectional SAL as sums: (phrase -> pixels, eq. 13) and (pixel -> phrases, eq. 14).

    phrase_embeddings: B x P x D; pixel_embeddings: B x D x h x w; targets: B x P x h x w.
    Features are L2-normalised so that 1 / temperature bounds the logits (InfoNCE as in MDETR, which the
    paper follows). eq. 13: for each phrase with positives, the mean over its positive pixels of
    -log softmax over all valid pixels. eq. 14: for each valid pixel covered by a phrase, the mean over its
    positive phrases of -log softmax over the real phrases. With several positives the minimum of a term is
    log(#positives), not 0: the phrase -> pixel term of a large mask stays well above zero when trained.
    """
    phrases = F.normalize(phrase_embeddings.float(), dim=-1)  # B x P x D
    pixels = F.normalize(pixel_embeddings.float().flatten(2), dim=1)  # B x D x N
    similarity = torch.bmm(phrases, pixels) / temperature  # B x P x N
    positives = _positives(targets, phrase_mask, pixel_valid).flatten(2).float()  # B x P x N
    valid = pixel_valid.flatten(1)  # B x N
    real = phrase_mask  # B x P

    # Phrase -> pixels: softmax over the valid pixels of the image.
    log_p_pixels = similarity.masked_fill(~valid[:, None, :], float("-inf")).log_softmax(dim=-1)
    log_p_pixels = log_p_pixels.masked_fill(~valid[:, None, :], 0.0)  # B x P x N
    positives_per_phrase = positives.sum(dim=-1)  # B x P
    phrase_terms = -(log_p_pixels * positives).sum(dim=-1) / positives_per_phrase.clamp(min=1.0)
    phrase_to_pixel = phrase_terms[positives_per_phrase > 0].sum()

    # Pixel -> phrases: softmax over the real phrases of the narrative.
    log_p_phrases = similarity.masked_fill(~real[:, :, None], float("-inf")).log_softmax(dim=1)
    log_p_phrases = log_p_phrases.masked_fill(~real[:, :, None], 0.0)  # B x P x N
    positives_per_pixel = positives.sum(dim=1)  # B x N
    pixel_terms = -(log_p_phrases * positives).sum(dim=1) / positives_per_pixel.clamp(min=1.0)
    pixel_to_phrase = pixel_terms[positives_per_pixel > 0].sum()
    return phrase_to_pixel, pixel_to_phrase
