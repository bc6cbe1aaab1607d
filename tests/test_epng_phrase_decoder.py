"""`epng_phrase_decoder_layers` (ours, off in every config): phrase kernels that read the image."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from tiny_models import make_inputs, reloaded
from tiny_models import tiny_config as tiny_config_with_everything
from tiny_models import tiny_model as tiny_model_with_everything

from narrative_grounding import PngConfig, load_config
from narrative_grounding.modeling.heads_epng import PhraseDecoderLayer
from narrative_grounding.modeling.position_encoding import sine_position_embedding

ALONE = {"epng_phrase_decoder_reads_tokens": False, "epng_mask_refinement_kernels": 0, "epng_mask_stride": 4}


def tiny_config(**overrides):
    """epng-tiny's config with the phrase decoder alone (no token reading, no mask refinement)."""
    return tiny_config_with_everything(**{**ALONE, **overrides})


def tiny_model(**overrides):
    return tiny_model_with_everything(**{**ALONE, **overrides})


def test_off_in_the_paper_configs_on_in_the_tiny_one_and_a_negative_depth_is_refused_by_name():
    assert PngConfig().epng_phrase_decoder_layers == 0
    for variant in ("epng-r101-bert-base", "epng-r101-bert-base-paper", "epng-r101-bert-base-released"):
        assert load_config(variant).epng_phrase_decoder_layers == 0
    assert len(tiny_model(epng_phrase_decoder_layers=0).head.phrase_decoder) == 0
    assert len(tiny_model_with_everything().head.phrase_decoder) == 2  # epng-tiny, the demo's model
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="epng_phrase_decoder_layers"):
        tiny_config(epng_phrase_decoder_layers=-1)


def _head_inputs(model, batch=2, phrases=3, height=64, width=96):
    torch.manual_seed(1)
    channels = model.config.fpn_channels
    features = {
        stride: torch.randn(batch, channels, height // stride, width // stride) for stride in (4, 8, 16, 32)
    }
    phrase_features = torch.randn(batch, phrases, model.config.text_config.hidden_size)
    phrase_mask = torch.tensor([[True] * phrases, [True] * (phrases - 1) + [False]])
    return features, phrase_features, phrase_mask


def test_decoded_phrases_and_position_coded_pixels_make_the_masks():
    """Written out: the head without the decoder gives the phrase kernels and the stride-4 pixel map; the
    decoder adds the 2D sine code to the map, runs each layer on the phrases and the coded map pooled 2 x 2
    (stride 8; ceil mode, so an odd side keeps its last row), and the mask logits are the scaled dot products
    of the decoded phrases with the coded stride-4 map."""
    model = tiny_model(epng_phrase_decoder_layers=2).eval()
    head = model.head
    features, phrase_features, phrase_mask = _head_inputs(model)
    plain = copy.deepcopy(head)
    plain.phrase_decoder = torch.nn.ModuleList()
    with torch.no_grad():
        output = head(features, phrase_features, phrase_mask)
        reference = plain(features, phrase_features, phrase_mask)
        batch, d_model, height, width = reference.pixel_embeddings.shape
        code = sine_position_embedding(
            height, width, d_model, device=torch.device("cpu"), dtype=torch.float32
        )
        pixel_map = reference.pixel_embeddings + code.T.reshape(1, d_model, height, width)
        pixels = F.avg_pool2d(pixel_map, 2, ceil_mode=True).flatten(2).transpose(1, 2)  # read at stride 8
        phrases = reference.phrase_embeddings
        for layer in head.phrase_decoder:
            phrases = layer(phrases, phrase_mask, pixels, torch.ones(pixels.shape[:2], dtype=torch.bool))
        logits = torch.einsum("bpd,bdhw->bphw", phrases, pixel_map) * d_model**-0.5
    torch.testing.assert_close(output.pixel_embeddings, pixel_map)
    torch.testing.assert_close(output.phrase_embeddings, phrases)
    torch.testing.assert_close(output.pred_masks, logits)


def test_phrase_kernels_see_the_image_only_with_the_decoder():
    """EPNG's kernels are a function of the text alone; decoded kernels change with the image."""
    for layers, sees_image in ((0, False), (1, True)):
        model = tiny_model(epng_phrase_decoder_layers=layers).eval()
        features, phrase_features, phrase_mask = _head_inputs(model)
        other = {stride: level.flip(-1) for stride, level in features.items()}
        with torch.no_grad():
            first = model.head(features, phrase_features, phrase_mask).phrase_embeddings
            second = model.head(other, phrase_features, phrase_mask).phrase_embeddings
        assert torch.allclose(first, second) != sees_image


def test_a_padded_phrase_does_not_change_the_real_ones():
    torch.manual_seed(0)
    config = tiny_config(epng_phrase_decoder_layers=1, dropout=0.0)
    layer = PhraseDecoderLayer(config).eval()
    phrases = torch.randn(1, 3, config.d_model)
    mask = torch.tensor([[True, True, False]])
    pixels = torch.randn(1, 20, config.d_model)
    pixel_mask = torch.ones(1, 20, dtype=torch.bool)
    changed = phrases.clone()
    changed[0, 2] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(
            layer(phrases, mask, pixels, pixel_mask)[:, :2], layer(changed, mask, pixels, pixel_mask)[:, :2]
        )


def test_trains_and_round_trips(tmp_path):
    model = tiny_model(epng_phrase_decoder_layers=2).train()
    inputs = make_inputs([2, 1], with_labels=True)
    model(**inputs).loss.backward()
    for layer in model.head.phrase_decoder:
        assert layer.cross_attention.q_proj.weight.grad.abs().sum() > 0
        assert layer.self_attention.q_proj.weight.grad.abs().sum() > 0
    loaded = reloaded(model, tmp_path, inputs)
    assert loaded.config.epng_phrase_decoder_layers == 2
