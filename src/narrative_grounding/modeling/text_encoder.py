"""The text encoder: BERT over the whole narrative, then one feature per phrase.

A phrase feature is the mean of the token features of its WordPiece tokens (EPNG: "average-pooling the
word embeddings in each phrase"); token features are the mean of BERT's last `text_layers_to_average`
hidden states. Long narratives may come as several overlapping windows (B x Nw x T): every window is
encoded separately and the token features are concatenated window-major, so a phrase's token mask
indexes B x P x (Nw * T).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertModel


class TextEncoder(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.bert = BertModel(config.text_config, add_pooling_layer=False)
        self.layers_to_average = config.text_layers_to_average
        # Checked here too: a text_config swapped in after validation (from_pretrained_encoders) would
        # otherwise let hidden_states[-k:] silently average fewer layers than asked.
        num_states = config.text_config.num_hidden_layers + 1  # the embeddings and every layer
        if self.layers_to_average > num_states:
            raise ValueError(
                f"text_layers_to_average ({self.layers_to_average}) exceeds the {num_states} hidden states of "
                f"the {config.text_config.num_hidden_layers}-layer BERT"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids: B x T or B x Nw x T. Returns token features B x T' x C with T' = T or Nw * T."""
        batch = input_ids.shape[0]
        windowed = input_ids.dim() == 3
        if windowed:  # B x Nw x T -> (B * Nw) x T
            input_ids = input_ids.flatten(0, 1)
            attention_mask = attention_mask.flatten(0, 1) if attention_mask is not None else None
            token_type_ids = token_type_ids.flatten(0, 1) if token_type_ids is not None else None
        outputs = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=self.layers_to_average > 1,
        )
        if self.layers_to_average > 1:
            tokens = torch.stack(outputs.hidden_states[-self.layers_to_average :]).mean(dim=0)
        else:
            tokens = outputs.last_hidden_state  # (B * Nw) x T x C
        if windowed:
            tokens = tokens.reshape(batch, -1, tokens.shape[-1])  # B x (Nw * T) x C
        return tokens


def pool_phrases(token_features: torch.Tensor, phrase_token_mask: torch.Tensor) -> torch.Tensor:
    """Mean of each phrase's token features.

    token_features: B x T x C; phrase_token_mask: B x P x T (0/1). Returns B x P x C; a phrase without
    tokens (padding) gets a zero feature.
    """
    weights = phrase_token_mask.to(token_features.dtype)  # B x P x T
    counts = weights.sum(dim=-1, keepdim=True).clamp(min=1.0)  # B x P x 1
    return torch.bmm(weights, token_features) / counts  # B x P x C


class PhrasePooling(nn.Module):
    """Each phrase's feature from its tokens' features.

    "mean" (every paper): the plain mean of the phrase's tokens. "attention" (ours, not in the papers): a
    weighted mean whose weights are a softmax, over the phrase's tokens, of a learned score per token, so that
    a phrase can lean on its head noun ("the square" in "the square next to the yellow star") instead of
    mixing it with its modifiers' nouns. The score starts at zero: the attention form starts as the mean.
    """

    def __init__(self, mode: str, hidden_size: int) -> None:
        super().__init__()
        # One learned direction: a token's score is its feature . score (a bias would cancel in the softmax).
        # Zero, so equal scores: set here and again by the model's weight initialisation.
        self.score = nn.Parameter(torch.zeros(hidden_size)) if mode == "attention" else None

    def forward(self, token_features: torch.Tensor, phrase_token_mask: torch.Tensor) -> torch.Tensor:
        """token_features: B x T x C; phrase_token_mask: B x P x T (0/1). Returns B x P x C (zeros for a
        phrase without tokens)."""
        if self.score is None:
            return pool_phrases(token_features, phrase_token_mask)
        member = phrase_token_mask.bool()  # B x P x T
        scores = (token_features @ self.score.to(token_features.dtype))[:, None, :]  # B x 1 x T
        scores = scores.masked_fill(~member, float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a phrase without tokens: all -inf -> 0
        return torch.bmm(weights.to(token_features.dtype), token_features)
