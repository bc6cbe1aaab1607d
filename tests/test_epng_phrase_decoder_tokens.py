"""`epng_phrase_decoder_reads_tokens` (ours, off in every config): decoder layers that read each phrase's tokens,
and the per-query key mask of `CrossAttention` they use."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from tiny_models import make_inputs, reloaded, tiny_config, tiny_model

from narrative_grounding import PngConfig, load_config
from narrative_grounding.modeling.attention import CrossAttention


def test_off_in_every_paper_config_and_refused_without_decoder_layers():
    assert PngConfig().epng_phrase_decoder_reads_tokens is False
    for variant in ("epng-r101-bert-base", "epng-r101-bert-base-paper", "epng-r101-bert-base-released"):
        assert load_config(variant).epng_phrase_decoder_reads_tokens is False
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="epng_phrase_decoder_layers"):
        tiny_config(epng_phrase_decoder_reads_tokens=True, epng_phrase_decoder_layers=0)
    assert tiny_model(epng_phrase_decoder_reads_tokens=True).head.reads_token_features


def test_a_per_query_key_mask_is_each_query_with_its_own_padding_mask():
    torch.manual_seed(0)
    attention = CrossAttention(d_model=8, num_heads=2, key_dim=6).eval()
    queries, keys = torch.randn(2, 3, 8), torch.randn(2, 5, 6)
    per_query = torch.rand(2, 3, 5) > 0.4
    per_query[1, 2] = False  # a query without any key to read
    with torch.no_grad():
        together = attention(queries, keys, per_query)
        for b in range(2):
            for n in range(3):
                alone = attention(queries[b : b + 1, n : n + 1], keys[b : b + 1], per_query[b : b + 1, n])
                torch.testing.assert_close(together[b, n], alone[0, 0])
    # attends to nothing: zero values through the output projection, not NaN
    torch.testing.assert_close(together[1, 2], attention.out_proj.bias.detach())
    # the B x P form is the B x N x P form with every query's row the same
    padding = torch.tensor([[True, True, True, False, False], [True] * 5])
    with torch.no_grad():
        torch.testing.assert_close(
            attention(queries, keys, padding), attention(queries, keys, padding[:, None].expand(2, 3, 5))
        )


def _head_inputs(model, phrases=2, tokens=7):
    torch.manual_seed(1)
    channels = model.config.fpn_channels
    features = {stride: torch.randn(1, channels, 64 // stride, 64 // stride) for stride in (4, 8, 16, 32)}
    hidden = model.config.text_config.hidden_size
    phrase_features, token_features = torch.randn(1, phrases, hidden), torch.randn(1, tokens, hidden)
    phrase_token_mask = torch.zeros(1, phrases, tokens)
    phrase_token_mask[0, 0, 1:3] = 1  # phrase 0: tokens 1-2
    phrase_token_mask[0, 1, 4:6] = 1  # phrase 1: tokens 4-5
    return features, phrase_features, torch.tensor([[True, True]]), token_features, phrase_token_mask


@pytest.mark.parametrize("reads_tokens", [False, True])
def test_a_kernel_reads_its_own_tokens_only(reads_tokens):
    """With one decoder layer and the phrases' self-attention seeing only pooled features, a phrase's kernel
    changes with its own tokens' features (only when it reads tokens) and never with tokens outside every
    phrase."""
    # the head alone, on the FPN strides (its stride-2 masks, ours, would need the stem's map too)
    model = tiny_model(
        epng_phrase_decoder_layers=1, epng_phrase_decoder_reads_tokens=reads_tokens, epng_mask_stride=4
    ).eval()
    features, phrase_features, phrase_mask, tokens, phrase_token_mask = _head_inputs(model)

    def kernels(token_features):
        with torch.no_grad():
            return model.head(
                features,
                phrase_features,
                phrase_mask,
                token_features=token_features,
                phrase_token_mask=phrase_token_mask,
            ).phrase_embeddings

    reference = kernels(tokens)
    outside = tokens.clone()
    outside[0, [0, 3, 6]] += 5.0  # tokens of no phrase
    torch.testing.assert_close(kernels(outside), reference)
    own = tokens.clone()
    own[0, 1] += 5.0  # a token of phrase 0
    changed = kernels(own)
    assert (not torch.allclose(changed[0, 0], reference[0, 0])) == reads_tokens
    torch.testing.assert_close(changed[0, 1], reference[0, 1])  # one layer: phrase 1 read its tokens only


def test_the_head_refuses_to_run_without_tokens():
    model = tiny_model(epng_phrase_decoder_reads_tokens=True).eval()
    features, phrase_features, phrase_mask, _, _ = _head_inputs(model)
    with pytest.raises(ValueError, match="phrase_token_mask"):
        model.head(features, phrase_features, phrase_mask)


def test_trains_and_round_trips(tmp_path):
    model = tiny_model(epng_phrase_decoder_reads_tokens=True).train()
    inputs = make_inputs([2, 1], with_labels=True)
    model(**inputs).loss.backward()
    for layer in model.head.phrase_decoder:
        assert layer.token_attention.k_proj.weight.grad.abs().sum() > 0
    loaded = reloaded(model, tmp_path, inputs)
    assert loaded.config.epng_phrase_decoder_reads_tokens is True
