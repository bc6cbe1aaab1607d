"""Training losses: BCE + Dice on mask predictions (every supervised prediction) and EPNG's Semantic
Alignment Loss (eqs. 13-14), each in our form and in the form of EPNG's released code (config switches).

Every term is computed as a *sum* over the items it averages and a *count* of those items, and divided at
the end. The counts depend only on the labels (`loss_counts`), so a distributed trainer can all-reduce them
and pass the global counts back in: B samples on each of K processes then give the same loss and gradients
as K * B samples on one. Two reductions (`mask_loss_reduction`):
- "phrases" (ours): the mean over every real phrase (or SAL item) of the batch;
- "samples" (EPNG's released train_net.py): the mean over each sample's items, then over the samples.

Targets for the stride-4 forms are the labels brought to stride 4 by area averaging (soft targets in [0, 1]).
A pixel is a SAL positive of a phrase when its target is >= 0.5 (`sal_positives="majority"`, ours) or > 0
(`"any"`, the released code's average pooling followed by `> 0`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Count names: which items each loss term averages over.
PHRASES = "phrases"  # real phrases: BCE and Dice
QUERIES = "queries"  # (phrase, token) pairs of the real phrases: BCE and Dice of per-token queries
SAMPLES = "samples"  # samples with at least one real phrase: the "samples" reduction
SAL_PHRASES = "sal_phrases"  # real phrases with at least one (majority) positive pixel: SAL phrase -> pixels
SAL_PIXELS = "sal_pixels"  # valid pixels covered (majority) by at least one real phrase: SAL pixel -> phrases
SAL_PHRASES_ANY = "sal_phrases_any"  # the same two with the "any coverage" positives
SAL_PIXELS_ANY = "sal_pixels_any"

DICE_EPS = 1.0
# The released code's guard inside -log(sum positive / sum all) (loss.py constrative_loss).
RELEASED_SAL_EPS = 1e-6


def loss_counts(
    targets: torch.Tensor,
    phrase_mask: torch.Tensor,
    pixel_valid: torch.Tensor,
    phrase_token_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Number of items every loss term averages over, from B x P x h x w targets, B x P phrase mask and
    B x h x w valid-pixel mask (and the B x P x T phrase_token_mask for the QUERIES count, the tokens of the
    real phrases). Returns float scalars (all-reduce them for distributed training)."""
    counts = {
        PHRASES: phrase_mask.sum().float(),
        SAMPLES: phrase_mask.any(dim=1).sum().float(),
    }
    if phrase_token_mask is not None:
        counts[QUERIES] = (phrase_token_mask.bool() & phrase_mask.bool()[:, :, None]).sum().float()
    for rule, (phrases_key, pixels_key) in (
        ("majority", (SAL_PHRASES, SAL_PIXELS)),
        ("any", (SAL_PHRASES_ANY, SAL_PIXELS_ANY)),
    ):
        positives = sal_positives(targets, phrase_mask, pixel_valid, rule)  # B x P x h x w
        counts[phrases_key] = positives.flatten(2).any(dim=-1).sum().float()
        counts[pixels_key] = positives.any(dim=1).sum().float()
    return counts


def sal_count_names(rule: str) -> tuple[str, str]:
    """The (phrase -> pixels, pixel -> phrases) count names of a `sal_positives` rule."""
    return (SAL_PHRASES, SAL_PIXELS) if rule == "majority" else (SAL_PHRASES_ANY, SAL_PIXELS_ANY)


def sal_positives(targets, phrase_mask, pixel_valid, rule: str = "majority") -> torch.Tensor:
    """B x P x h x w bool: pixel n is a positive of real phrase p (see the module doc for the rules)."""
    covered = targets >= 0.5 if rule == "majority" else targets > 0
    return covered & phrase_mask[:, :, None, None] & pixel_valid[:, None]


def reduce_items(terms: torch.Tensor, items: torch.Tensor, reduction: str) -> torch.Tensor:
    """Sum of B x I per-item loss terms over the items marked in the B x I bool `items`, to be divided by
    the count of those items ("phrases") or of the samples that have any ("samples": each sample
    contributes the mean of its items)."""
    terms = terms.masked_fill(~items, 0.0)
    if reduction == "phrases":
        return terms.sum()
    per_sample = terms.sum(dim=1) / items.sum(dim=1).clamp(min=1)  # B
    return per_sample.sum()


def mask_loss_terms(
    logits: torch.Tensor,
    targets: torch.Tensor,
    pixel_valid: torch.Tensor,
    *,
    resolution: str = "stride4",
    dice_eps: float = DICE_EPS,
    align_corners: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-phrase BCE (mean over valid pixels, eq. 11) and Dice loss (eq. 12,
    1 - 2 sum(pt) / (sum(p^2) + sum(t^2) + dice_eps)), each B x P.

    logits: B x P x h x w mask logits at stride 4. resolution "stride4" (ours): BCE with logits against
    `targets` at the logits' size (soft, area-averaged). "input" (eqs. 10-11 and the released code): the
    sigmoid probabilities upsampled bilinearly to the size of `targets` (the input size), and BCE on those
    probabilities (log clamped at -100 as torch's BCELoss); `align_corners` of that upsampling (the released
    EPNG's: True). pixel_valid: B x H x W at the targets' size.
    """
    logits = logits.float()
    valid = pixel_valid[:, None].to(logits.dtype)  # B x 1 x H x W
    num_valid = valid.flatten(1).sum(dim=-1).clamp(min=1.0)[:, None]  # B x 1
    if resolution == "stride4":
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        probs = logits.sigmoid()
    else:
        # torch refuses BCE on probabilities under autocast (it is unsafe in half precision): float32 here.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            probs = F.interpolate(
                logits.sigmoid(), size=targets.shape[-2:], mode="bilinear", align_corners=align_corners
            ).clamp(0.0, 1.0)  # B x P x H x W, eq. 10: Up(Sigmoid(F_N * F))
            bce = F.binary_cross_entropy(probs, targets.float(), reduction="none")
    bce_per_phrase = (bce * valid).flatten(2).sum(dim=-1) / num_valid  # B x P
    probs = probs * valid
    targets = targets * valid
    intersection = (probs * targets).flatten(2).sum(dim=-1)
    denominator = (probs * probs).flatten(2).sum(dim=-1) + (targets * targets).flatten(2).sum(dim=-1)
    dice_per_phrase = 1.0 - 2.0 * intersection / (denominator + dice_eps)  # B x P
    return bce_per_phrase, dice_per_phrase


def mask_loss_sums(
    logits: torch.Tensor,
    targets: torch.Tensor,
    phrase_mask: torch.Tensor,
    pixel_valid: torch.Tensor,
    *,
    resolution: str = "stride4",
    dice_eps: float = DICE_EPS,
    reduction: str = "phrases",
    align_corners: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BCE and Dice of `mask_loss_terms` summed for `reduction` (divide by the PHRASES count for
    "phrases", by the SAMPLES count for "samples"). logits: B x P x h x w; targets: B x P x H x W."""
    bce, dice = mask_loss_terms(
        logits, targets, pixel_valid, resolution=resolution, dice_eps=dice_eps, align_corners=align_corners
    )
    real = phrase_mask.bool()
    return reduce_items(bce, real, reduction), reduce_items(dice, real, reduction)


def semantic_alignment_loss_sums(
    phrase_embeddings: torch.Tensor,
    pixel_embeddings: torch.Tensor,
    targets: torch.Tensor,
    phrase_mask: torch.Tensor,
    pixel_valid: torch.Tensor,
    temperature: float,
    *,
    similarity: str = "cosine",
    positives: str = "majority",
    aggregation: str = "mean_log",
    reduction: str = "phrases",
) -> tuple[torch.Tensor, torch.Tensor]:
    """EPNG's SAL as sums: (phrase -> pixels, eq. 13) and (pixel -> phrases, eq. 14); divide them by the
    counts named by `sal_count_names(positives)` ("phrases" reduction) or by the SAMPLES count ("samples").

    phrase_embeddings: B x P x D; pixel_embeddings: B x D x h x w; targets: B x P x h x w.
    similarity: "cosine" (ours: L2-normalised features, so 1 / temperature bounds the logits, as MDETR) or
        "dot" (eqs. 13-14 and the released code: the raw dot product; the release multiplies it by 0.1,
        i.e. temperature 10).
    aggregation: "mean_log" (eqs. 13-14): for each anchor, the mean over its positives of -log softmax;
        with several positives its minimum is log(#positives), not 0. "log_sum" (the released code):
        -log((sum over positives of exp(s) + 1e-6) / (sum over all of exp(s) + 1e-6)), i.e. -log of the
        probability mass on the positives (minimum 0), with the release's 1e-6 guards.
    Anchors without any positive contribute nothing. Padded phrases and pixels are never in a softmax.
    """
    phrases = phrase_embeddings.float()  # B x P x D
    # B x N x D: on CPU a view of the map's channels-last memory, whose norms are then over contiguous rows
    # and whose gradient comes back channels-last
    pixels = pixel_embeddings.float().flatten(2).transpose(1, 2)
    if similarity == "cosine":
        phrases, pixels = F.normalize(phrases, dim=-1), F.normalize(pixels, dim=-1)
    similarity_matrix = torch.bmm(pixels, phrases.transpose(1, 2)).transpose(1, 2) / temperature  # B x P x N
    positive = sal_positives(targets, phrase_mask, pixel_valid, positives).flatten(2)  # B x P x N
    valid = pixel_valid.flatten(1)  # B x N
    real = phrase_mask.bool()  # B x P

    # Phrase -> pixels (eq. 13): softmax over the valid pixels of the image.
    pixel_scores = similarity_matrix.masked_fill(~valid[:, None, :], float("-inf"))  # B x P x N
    phrase_terms = _anchor_terms(pixel_scores, positive, dim=-1, aggregation=aggregation)  # B x P
    phrase_to_pixel = reduce_items(phrase_terms, positive.any(dim=-1), reduction)

    # Pixel -> phrases (eq. 14): softmax over the real phrases of the narrative.
    phrase_scores = similarity_matrix.masked_fill(~real[:, :, None], float("-inf"))  # B x P x N
    pixel_terms = _anchor_terms(phrase_scores, positive, dim=1, aggregation=aggregation)  # B x N
    pixel_to_phrase = reduce_items(pixel_terms, positive.any(dim=1), reduction)
    return phrase_to_pixel, pixel_to_phrase


def _anchor_terms(
    scores: torch.Tensor, positive: torch.Tensor, *, dim: int, aggregation: str
) -> torch.Tensor:
    """-log terms of each anchor from B x P x N scores (-inf where an entry is not in the softmax) normalised
    along `dim` (the other axis holds the anchors) and the B x P x N positive mask. Anchors without
    positives get meaningless values: `reduce_items` leaves them out."""
    if aggregation == "mean_log":
        log_p = scores.log_softmax(dim=dim).masked_fill(~positive, 0.0)  # also clears padded entries
        return -log_p.sum(dim=dim) / positive.sum(dim=dim).clamp(min=1)
    # The release's -log((sum_pos exp(s) + 1e-6) / (sum_all exp(s) + 1e-6)), in log space so that large raw
    # dot products cannot overflow exp: log(exp(a) + eps) = logaddexp(a, log eps).
    log_eps = torch.tensor(math.log(RELEASED_SAL_EPS), dtype=scores.dtype, device=scores.device)
    log_all = scores.logsumexp(dim=dim)
    log_positive = scores.masked_fill(~positive, float("-inf")).logsumexp(dim=dim)
    return torch.logaddexp(log_all, log_eps) - torch.logaddexp(log_positive, log_eps)
