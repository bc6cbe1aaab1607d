"""DRMN's queries per noun token (`drmn_queries="noun_token"`, the reference reconstruction).

The reference gives every token of a noun phrase its own query through the initial matching and the refinement
rounds (`head_net.py`: the token features at the nonzero entries of its noun vector), supervises each token's
masks against its phrase's mask (`runtime.py` `stage_loss`, the targets repeated per token by
`tools/encode_data.py`), and at evaluation averages the token probabilities of each phrase before the 0.5
threshold (`evaluation/metrics.py` `phrase_masks`). Ours builds one query per phrase from the mean of its token
features; these helpers turn phrases into token queries and the token predictions back into phrase logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NounTokenQueries:
    """
    features: B x Q x C token features, one per (phrase, token) pair of the real phrases; each sample's queries
        come first in phrase order then token order, padding after them.
    phrases: B x Q x P float 0/1, 1 where query q is a token of phrase p (all zero for padded queries).
    mask: B x Q bool, True for real queries.
    """

    features: torch.Tensor
    phrases: torch.Tensor
    mask: torch.Tensor


def noun_token_queries(
    token_features: torch.Tensor, phrase_token_mask: torch.Tensor, phrase_mask: torch.Tensor
) -> NounTokenQueries:
    """One query per token of every real phrase.

    token_features: B x T x C; phrase_token_mask: B x P x T (0/1); phrase_mask: B x P bool. A token in two
    phrases gives a query to each, so every query belongs to exactly one phrase.
    """
    batch, num_phrases, num_tokens = phrase_token_mask.shape
    pairs = (phrase_token_mask.bool() & phrase_mask.bool()[:, :, None]).flatten(1)  # B x (P * T)
    counts = pairs.sum(dim=1)  # B
    num_queries = int(counts.max()) if batch else 0
    # A stable sort of "not a pair" puts each sample's pairs first, in (phrase, token) order.
    order = (~pairs).to(torch.uint8).argsort(dim=1, stable=True)[:, :num_queries]  # B x Q
    mask = torch.arange(num_queries, device=pairs.device)[None, :] < counts[:, None]  # B x Q
    token_index = order % num_tokens  # B x Q
    phrase_index = order // num_tokens  # B x Q
    features = token_features.gather(1, token_index[..., None].expand(-1, -1, token_features.shape[-1]))
    features = features * mask[..., None].to(features.dtype)  # B x Q x C, padded queries zero
    phrases = torch.zeros(batch, num_queries, num_phrases, dtype=features.dtype, device=features.device)
    phrases.scatter_(2, phrase_index[..., None], mask[..., None].to(features.dtype))  # B x Q x P
    return NounTokenQueries(features=features, phrases=phrases, mask=mask)


def phrase_mean_logits(query_logits: torch.Tensor, phrases: torch.Tensor) -> torch.Tensor:
    """The logit of the mean probability of each phrase's token queries: thresholding it at 0 (probability 0.5)
    is the reference's evaluation, mean(sigmoid(token logits)) > 0.5.

    query_logits: B x Q x h x w; phrases: B x Q x P (`NounTokenQueries.phrases`). Returns B x P x h x w; a
    phrase without queries (padding) gets 0. log(mean sigmoid(x)) - log(mean sigmoid(-x)): both sums use
    sigmoid directly, so one token's phrase returns its own logit (to the float's precision) instead of the
    cancellation of log(1 - sigmoid(x)); each mean is floored at the smallest normal float so that a phrase
    certain either way stays finite.
    """
    logits = query_logits.float().flatten(2)  # B x Q x N
    weights = phrases.float().transpose(1, 2)  # B x P x Q
    tiny = torch.finfo(torch.float32).tiny
    inside = torch.bmm(weights, logits.sigmoid()).clamp(min=tiny)  # B x P x N, n_p * mean probability
    outside = torch.bmm(weights, (-logits).sigmoid()).clamp(min=tiny)  # n_p * mean (1 - probability)
    mean_logits = inside.log() - outside.log()  # the 1 / n_p of both means cancels
    return mean_logits.view(*weights.shape[:2], *query_logits.shape[-2:]).to(query_logits.dtype)


__all__ = ["NounTokenQueries", "noun_token_queries", "phrase_mean_logits"]
