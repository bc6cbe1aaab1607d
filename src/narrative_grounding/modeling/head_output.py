"""What every grounding head returns to the model."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def check_token_inputs(
    token_features: torch.Tensor | None, phrase_token_mask: torch.Tensor | None, *, switch: str, why: str
) -> None:
    """A head that reads token features (`reads_token_features`) refuses to run without them; `switch` names
    the setting that made it read them and `why` what it reads them for."""
    if token_features is None or phrase_token_mask is None:
        raise ValueError(f"{switch} needs token_features and phrase_token_mask ({why})")


@dataclass
class GroundingHeadOutput:
    """
    pred_masks: B x P x H/4 x W/4 mask logits of the final prediction (EPNG with `epng_mask_stride=2`: H/2 x W/2).
    auxiliary_masks: earlier predictions (refinement rounds), each B x P x H/4 x W/4, supervised too.
    phrase_embeddings: B x P x D phrase kernels of the final prediction (SAL reads them), if the head has them.
    pixel_embeddings: B x D x H/4 x W/4 pixel features the kernels are applied to (SAL reads them).
    query_masks: for a head with several queries per phrase (DRMN's `drmn_queries="noun_token"`), every
        prediction per query, B x Q x H/4 x W/4 each, earliest first and the final one last: the mask losses
        are computed on these, each query against its phrase's mask, instead of on the phrase masks.
    query_phrases: B x Q x P float 0/1, 1 where query q belongs to phrase p (with `query_masks`).
    """

    pred_masks: torch.Tensor
    auxiliary_masks: tuple[torch.Tensor, ...] = ()
    phrase_embeddings: torch.Tensor | None = None
    pixel_embeddings: torch.Tensor | None = None
    query_masks: tuple[torch.Tensor, ...] | None = None
    query_phrases: torch.Tensor | None = None
