"""`epng_position_encoding`: the EPNG Table 2 switch ("lpa" / "none" / "absolute", and our "lpa_absolute"),
and `epng_communicator_stride` (the paper's 16, our 8)."""

from __future__ import annotations

import math

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from tiny_models import make_inputs, reloaded, tiny_config, tiny_model

from narrative_grounding import PngConfig
from narrative_grounding.modeling.attention import LocalityPerceptiveAttention
from narrative_grounding.modeling.heads_epng import CommunicatorLayer, PixelSelfAttention
from narrative_grounding.modeling.position_encoding import sine_position_embedding


def test_default_is_lpa_and_unknown_value_is_rejected_by_name():
    assert PngConfig().epng_position_encoding == "lpa"
    # @strict wraps the ValueError of validate_architecture; the message still names the field.
    with pytest.raises(
        (ValueError, StrictDataclassClassValidationError), match="epng_position_encoding must be one of"
    ):
        tiny_config(epng_position_encoding="relative")


@pytest.mark.parametrize("encoding", ["none", "absolute"])
def test_plain_attention_replaces_lpa_and_has_no_prior(encoding):
    model = tiny_model(epng_position_encoding=encoding)
    for layer in model.head.layers:
        assert layer.lpa is None and isinstance(layer.self_attention, PixelSelfAttention)
    assert not any("prior_scale" in name for name, _ in model.named_parameters())
    lpa_model = tiny_model()
    assert all(isinstance(layer.lpa, LocalityPerceptiveAttention) for layer in lpa_model.head.layers)
    # Same projections, same parameter count less the per-head prior scalars.
    difference = sum(p.numel() for p in lpa_model.parameters()) - sum(p.numel() for p in model.parameters())
    config = lpa_model.config
    assert difference == config.num_communicator_layers * config.num_attention_heads


def test_pixel_self_attention_is_lpa_equations_with_prior_one():
    torch.manual_seed(0)
    d_model, heads, batch, pixels = 32, 4, 2, 12
    attention = PixelSelfAttention(d_model=d_model, num_heads=heads)
    x = torch.randn(batch, pixels, d_model)
    # EPNG eqs. 5-7 written out with R = 1: softmax(Q K^T / sqrt(d) * 1) V, heads concatenated, W_O.
    q, k, v = attention.qkv(x).chunk(3, dim=-1)  # each B x N x D
    head_dim = d_model // heads
    outputs = []
    for head in range(heads):
        part = slice(head * head_dim, (head + 1) * head_dim)
        scores = q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(head_dim) * 1.0  # B x N x N
        outputs.append(scores.softmax(-1) @ v[..., part])
    expected = attention.out_proj(torch.cat(outputs, dim=-1))
    torch.testing.assert_close(attention(x), expected, atol=1e-5, rtol=1e-5)


def test_none_carries_no_position_and_lpa_does():
    """Plain self-attention + FFN is permutation-equivariant over pixels: it cannot know where a pixel is.
    LPA's prior depends on grid positions, so permuting the pixels changes its output."""
    torch.manual_seed(0)
    batch, height, width = 2, 4, 5
    phrases, phrase_mask = torch.randn(batch, 3, 96), torch.ones(batch, 3, dtype=torch.bool)
    pixels = torch.randn(batch, height * width, 96)
    permutation = torch.randperm(height * width)
    for encoding, equivariant in (("none", True), ("lpa", False)):
        config = tiny_config(epng_position_encoding=encoding, lpa_implementation="direct")
        layer = CommunicatorLayer(config).eval()
        with torch.no_grad():
            permuted_output = layer(pixels[:, permutation], height, width, phrases, phrase_mask)
            output_permuted = layer(pixels, height, width, phrases, phrase_mask)[:, permutation]
        assert torch.allclose(permuted_output, output_permuted, atol=1e-5) == equivariant, encoding


def _keep_input(seen: dict, name: str):
    def hook(module, args):
        seen[name] = args[0]

    return hook


@pytest.mark.parametrize(("plain", "with_codes"), [("none", "absolute"), ("lpa", "lpa_absolute")])
def test_absolute_adds_sine_codes_to_the_pixel_tokens(plain, with_codes):
    """An "absolute" ("lpa_absolute") model equals a "none" ("lpa") model with the same weights run on features
    whose fused pixel tokens carry the sine codes: checked by hooking the first communicator layer's input."""
    none_model = tiny_model(epng_position_encoding=plain)
    absolute_model = tiny_model(epng_position_encoding=with_codes)
    absolute_model.load_state_dict(none_model.state_dict())  # no extra parameters: strict load works
    inputs = make_inputs([3, 2], height=64, width=96)
    seen = {}
    none_model.head.layers[0].register_forward_pre_hook(_keep_input(seen, "none"))
    absolute_model.head.layers[0].register_forward_pre_hook(_keep_input(seen, "absolute"))
    with torch.no_grad():
        none_masks = none_model(**inputs).pred_masks
        absolute_masks = absolute_model(**inputs).pred_masks
    height, width = 64 // 16, 96 // 16
    codes = sine_position_embedding(height, width, 96, device=torch.device("cpu"), dtype=torch.float32)
    torch.testing.assert_close(seen["absolute"], seen["none"] + codes)
    assert not torch.allclose(none_masks, absolute_masks)


@pytest.mark.parametrize("encoding", ["none", "absolute", "lpa_absolute"])
def test_trains_and_round_trips(encoding, tmp_path):
    model = tiny_model(epng_position_encoding=encoding, epng_communicator_stride=8).train()
    inputs = make_inputs([2, 1], with_labels=True)
    loss = model(**inputs).loss
    loss.backward()
    attentions = [layer.lpa or layer.self_attention for layer in model.head.layers]
    grads = [attention.qkv.weight.grad for attention in attentions]
    assert all(grad is not None and grad.abs().sum() > 0 for grad in grads)
    loaded = reloaded(model, tmp_path, inputs)
    assert (loaded.config.epng_position_encoding, loaded.config.epng_communicator_stride) == (encoding, 8)


def test_stride8_communicator_fuses_every_level_on_the_stride8_grid():
    """epng_communicator_stride=8: the tokens are the stride-8 level with the stride-16 and stride-32 levels
    bilinearly upsampled to its grid (instead of the stride-8 level pooled to the stride-16 grid), same
    parameters as the paper's layout."""
    paper = tiny_model()
    ours = tiny_model(epng_communicator_stride=8)
    ours.load_state_dict(paper.state_dict())
    inputs = make_inputs([3, 2], height=64, width=96)
    seen, features = {}, {}
    ours.head.fuse_projection.register_forward_pre_hook(_keep_input(seen, "fused"))
    ours.head.layers[0].register_forward_pre_hook(_keep_input(seen, "tokens"))
    ours.head.register_forward_pre_hook(lambda module, args: features.update(args[0]))
    with torch.no_grad():
        masks = ours(**inputs).pred_masks
    assert seen["tokens"].shape[1] == (64 // 8) * (96 // 8)

    def up(level):
        return torch.nn.functional.interpolate(level, size=(8, 12), mode="bilinear", align_corners=False)

    expected = torch.cat([features[8], up(features[16]), up(features[32])], dim=1)
    torch.testing.assert_close(seen["fused"], expected)
    assert masks.shape == paper(**inputs).pred_masks.shape  # still stride 4
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="epng_communicator_stride"):
        tiny_config(epng_communicator_stride=4)
