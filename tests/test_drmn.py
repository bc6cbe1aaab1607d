"""The DRMN head: deformable attention against a hand-written loop, top-k selection and padding, shapes and
ablation switches, training, save/load and trust_remote_code."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_models import TEST_VOCAB_SIZE, make_inputs, select_sample
from transformers import AutoModel

from narrative_grounding import PngConfig, PngForPanopticNarrativeGrounding, create_model, load_config
from narrative_grounding.modeling.attention import CrossAttention
from narrative_grounding.modeling.deformable_attention import (
    MultiScaleDeformableAttention,
    initial_sampling_pattern,
    multi_scale_deformable_sampling,
    multi_scale_deformable_sampling_by_bags,
    multi_scale_deformable_sampling_by_gathering,
)
from narrative_grounding.modeling.head_output import GroundingHeadOutput
from narrative_grounding.modeling.heads_drmn import (
    DrmnHead,
    RefinementRound,
    drmn_level_strides,
    pixel_centres,
    select_top_pixels,
)
from narrative_grounding.modeling.position_encoding import sine_position_embedding


def drmn_config(**overrides) -> PngConfig:
    """The drmn-tiny variant (vocabulary size from the shipped tiny tokenizer) with overrides."""
    return load_config("drmn-tiny", **overrides)


def drmn_model(seed: int = 0, **overrides) -> PngForPanopticNarrativeGrounding:
    torch.manual_seed(seed)
    model = create_model("drmn-tiny", **overrides).eval()
    assert model.config.text_config.vocab_size > TEST_VOCAB_SIZE  # make_inputs draws ids below it
    return model


def random_features(config: PngConfig, batch: int, height: int, width: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        stride: torch.randn(
            batch, config.fpn_channels, height // stride, width // stride, generator=generator
        )
        for stride in (4, 8, 16, 32)
    }


# ---------------------------------------------------------------- a direct implementation, one sample at a time
def bilinear_zero_padded(value: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """value: C x H x W; (x, y) normalised to [0, 1] over the map edges (pixel j's centre at (j + 0.5) / W).
    Returns C: the bilinear interpolation of the four neighbouring pixel centres, zero outside the map."""
    _, height, width = value.shape
    px, py = x * width - 0.5, y * height - 0.5  # continuous pixel coordinates
    x0, y0 = math.floor(px.item()), math.floor(py.item())
    fx, fy = px - x0, py - y0
    total = value.new_zeros(value.shape[0])
    for row, col, weight in (
        (y0, x0, (1 - fx) * (1 - fy)),
        (y0, x0 + 1, fx * (1 - fy)),
        (y0 + 1, x0, (1 - fx) * fy),
        (y0 + 1, x0 + 1, fx * fy),
    ):
        if 0 <= row < height and 0 <= col < width:
            total = total + weight * value[:, row, col]
    return total


def loop_sampling(value_levels, locations, weights) -> torch.Tensor:
    """multi_scale_deformable_sampling written as the sum it is, one (sample, query, head) at a time."""
    batch, num_queries, num_heads, num_levels, num_points, _ = locations.shape
    rows = []
    for b in range(batch):
        for q in range(num_queries):
            for h in range(num_heads):
                total = 0.0
                for level in range(num_levels):
                    for k in range(num_points):
                        x, y = locations[b, q, h, level, k]
                        sample = bilinear_zero_padded(value_levels[level][b, h], x, y)
                        total = total + weights[b, q, h, level, k] * sample
                rows.append(total)
    head_dim = value_levels[0].shape[2]
    return torch.stack(rows).view(batch, num_queries, num_heads, head_dim)


def loop_deformable_attention(module: MultiScaleDeformableAttention, queries, reference_points, value_levels):
    """The module's equation computed per query from its own weights (Deformable DETR eq. 3)."""
    batch, num_queries, d_model = queries.shape
    heads, levels, points, head_dim = module.num_heads, module.num_levels, module.num_points, module.head_dim
    pattern = initial_sampling_pattern(heads, levels, points).to(queries)
    outputs = []
    for b in range(batch):
        projected = []
        for level, value in enumerate(value_levels):
            v = value[b]  # D x H x W
            v = torch.einsum("oc,chw->ohw", module.value_projections[level].weight, v)
            v = v + module.value_projections[level].bias[:, None, None]
            projected.append(v.view(heads, head_dim, *v.shape[-2:]))
        for q in range(num_queries):
            query = queries[b, q]
            offsets = (module.sampling_offsets.weight @ query + module.sampling_offsets.bias).view(
                heads, levels, points, 2
            ) + pattern
            logits = (module.attention_weights.weight @ query + module.attention_weights.bias).view(heads, -1)
            weights = logits.softmax(dim=-1).view(heads, levels, points)
            per_head = []
            for h in range(heads):
                total = queries.new_zeros(head_dim)
                for level in range(levels):
                    height, width = projected[level].shape[-2:]
                    for k in range(points):
                        x = reference_points[b, q, 0] + offsets[h, level, k, 0] / width
                        y = reference_points[b, q, 1] + offsets[h, level, k, 1] / height
                        total = total + weights[h, level, k] * bilinear_zero_padded(projected[level][h], x, y)
                per_head.append(total)
            attended = torch.cat(per_head)  # D
            outputs.append(module.output_projection.weight @ attended + module.output_projection.bias)
    return torch.stack(outputs).view(batch, num_queries, d_model)


LEVEL_SHAPES = [(6, 5), (3, 4), (2, 1)]  # non-square, and a level narrower than the sampling spread


def test_grid_sample_sampling_equals_the_direct_loop_values_and_gradients():
    generator = torch.Generator().manual_seed(0)
    batch, queries, heads, head_dim, points = 2, 3, 2, 3, 2
    values = [
        torch.randn(
            batch, heads, head_dim, h, w, generator=generator, dtype=torch.float64, requires_grad=True
        )
        for h, w in LEVEL_SHAPES
    ]
    # Locations from -0.2 to 1.2: inside, on the border band and outside every map (zero padding).
    locations = (
        torch.rand(
            batch, queries, heads, len(LEVEL_SHAPES), points, 2, generator=generator, dtype=torch.float64
        )
        * 1.4
        - 0.2
    ).requires_grad_()
    weights = torch.rand(
        batch, queries, heads, len(LEVEL_SHAPES), points, generator=generator, dtype=torch.float64
    ).requires_grad_()
    fast = multi_scale_deformable_sampling(values, locations, weights)
    slow = loop_sampling(values, locations, weights)
    torch.testing.assert_close(fast, slow, atol=1e-12, rtol=1e-10)
    upstream = torch.randn(fast.shape, generator=generator, dtype=torch.float64)
    inputs = [*values, locations, weights]
    fast_grads = torch.autograd.grad((fast * upstream).sum(), inputs)
    slow_grads = torch.autograd.grad((slow * upstream).sum(), inputs)
    for fast_grad, slow_grad in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(fast_grad, slow_grad, atol=1e-12, rtol=1e-10)
    assert locations.grad is None and all(g.abs().sum() > 0 for g in fast_grads)


def test_gather_sampling_equals_the_direct_loop():
    """The form compiled inference graphs use: same values, channels-last input, samples outside included."""
    generator = torch.Generator().manual_seed(1)
    batch, queries, heads, head_dim, points = 2, 5, 2, 3, 3
    values = [
        torch.randn(batch, heads, head_dim, h, w, generator=generator, dtype=torch.float64)
        for h, w in LEVEL_SHAPES
    ]
    locations = (
        torch.rand(
            batch, queries, heads, len(LEVEL_SHAPES), points, 2, generator=generator, dtype=torch.float64
        )
        * 1.4
        - 0.2
    )
    locations[0, 0, 0, 0, 0] = torch.tensor([0.0, 1.0], dtype=torch.float64)  # exactly on the map's edges
    weights = torch.rand(
        batch, queries, heads, len(LEVEL_SHAPES), points, generator=generator, dtype=torch.float64
    )
    channels_last = [  # B x (H * W) x Hd x Dh, as a value projection lays them out
        value.permute(0, 3, 4, 1, 2).reshape(batch, h * w, heads, head_dim)
        for value, (h, w) in zip(values, LEVEL_SHAPES, strict=True)
    ]
    expected = loop_sampling(values, locations, weights)
    for sampling in (multi_scale_deformable_sampling_by_gathering, multi_scale_deformable_sampling_by_bags):
        torch.testing.assert_close(
            sampling(channels_last, LEVEL_SHAPES, locations, weights), expected, atol=1e-12, rtol=1e-10
        )
        with pytest.raises(ValueError, match="2 value levels and 3 level shapes"):
            sampling(channels_last[:2], LEVEL_SHAPES, locations, weights)


def test_bag_sampling_reads_zeros_far_outside_and_on_every_border():
    """The embedding_bag form clamps coordinates onto a zero border: points far outside, exactly on the edges
    and in the half-pixel band of every side of a 1-pixel-wide level give grid_sample's values."""
    generator = torch.Generator().manual_seed(3)
    heads, head_dim = 2, 3
    values = [
        torch.randn(1, heads, head_dim, h, w, generator=generator, dtype=torch.float64)
        for h, w in LEVEL_SHAPES
    ]
    edges = torch.tensor([-5.0, -0.1, 0.0, 0.05, 0.5, 0.95, 1.0, 1.1, 7.0], dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(edges, edges, indexing="ij"), dim=-1).reshape(-1, 2)  # every pair
    queries = grid.shape[0]
    locations = grid.view(1, queries, 1, 1, 1, 2).expand(1, queries, heads, len(LEVEL_SHAPES), 1, 2)
    weights = torch.rand(1, queries, heads, len(LEVEL_SHAPES), 1, generator=generator, dtype=torch.float64)
    channels_last = [
        value.permute(0, 3, 4, 1, 2).reshape(1, h * w, heads, head_dim)
        for value, (h, w) in zip(values, LEVEL_SHAPES, strict=True)
    ]
    torch.testing.assert_close(
        multi_scale_deformable_sampling_by_bags(channels_last, LEVEL_SHAPES, locations, weights),
        multi_scale_deformable_sampling(values, locations, weights),
        atol=1e-12,
        rtol=1e-10,
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch", [1, 2])
def test_half_precision_sampling_of_head_views_is_finite(dtype, batch):
    """Values as the module passes them (heads split by a permuted view, a channels-last layout at batch 1):
    CPU grid_sample returned NaN for such bfloat16 / float16 inputs (here 16 x 16 with 32 channels)."""
    generator = torch.Generator().manual_seed(2)
    heads, head_dim, queries, points, size = 8, 32, 50, 4, 16
    pixels = torch.randn(batch, size, size, heads, head_dim, generator=generator)  # B x H x W x Hd x Dh
    locations = torch.rand(batch, queries, heads, 1, points, 2, generator=generator)
    weights = torch.rand(batch, queries, heads, 1, points, generator=generator).softmax(-1)
    reference = multi_scale_deformable_sampling([pixels.permute(0, 3, 4, 1, 2)], locations, weights)
    half = multi_scale_deformable_sampling(
        [pixels.to(dtype).permute(0, 3, 4, 1, 2)], locations.to(dtype), weights.to(dtype)
    )
    torch.testing.assert_close(half.float(), reference, atol=0.1, rtol=0.05)
    bags = multi_scale_deformable_sampling_by_bags(
        [pixels.to(dtype).reshape(batch, size * size, heads, head_dim)],
        [(size, size)],
        locations.to(dtype),
        weights.to(dtype),
    )
    assert bags.dtype == dtype
    torch.testing.assert_close(bags.float(), reference, atol=0.1, rtol=0.05)


def test_deformable_attention_module_equals_the_direct_loop_values_and_gradients():
    torch.manual_seed(0)
    d_model, heads, points = 8, 2, 3
    module = MultiScaleDeformableAttention(
        d_model=d_model, num_heads=heads, num_levels=len(LEVEL_SHAPES), num_points=points
    ).double()
    with torch.no_grad():  # offsets of a few pixels, so samples land inside, across and outside the maps
        module.sampling_offsets.weight.normal_(std=0.5)
        module.attention_weights.weight.normal_(std=0.5)
    queries = torch.randn(2, 4, d_model, dtype=torch.float64, requires_grad=True)
    reference_points = torch.rand(2, 4, 2, dtype=torch.float64)
    values = [torch.randn(2, d_model, h, w, dtype=torch.float64, requires_grad=True) for h, w in LEVEL_SHAPES]
    flattened = torch.cat([value.flatten(2).transpose(1, 2) for value in values], dim=1)  # B x N x D
    fast = module(queries, reference_points, flattened, LEVEL_SHAPES)
    slow = loop_deformable_attention(module, queries, reference_points, values)
    torch.testing.assert_close(fast, slow, atol=1e-12, rtol=1e-10)
    with torch.no_grad():  # the eager inference path: the embedding_bag form
        torch.testing.assert_close(module(queries, reference_points, flattened, LEVEL_SHAPES), slow.detach())
    upstream = torch.randn(fast.shape, dtype=torch.float64)
    inputs = [queries, *values, *module.parameters()]
    fast_grads = torch.autograd.grad((fast * upstream).sum(), inputs)
    slow_grads = torch.autograd.grad((slow * upstream).sum(), inputs)
    for fast_grad, slow_grad in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(fast_grad, slow_grad, atol=1e-11, rtol=1e-9)


def test_bag_sampling_and_the_module_leave_their_inputs_untouched():
    """The eager path works in place on its own intermediates only: float32 inputs (which the bag form does not
    convert) come back unchanged, and a second call gives the same result."""
    generator = torch.Generator().manual_seed(4)
    heads, head_dim, points = 2, 3, 2
    levels = [torch.randn(2, h * w, heads, head_dim, generator=generator) for h, w in LEVEL_SHAPES]
    locations = torch.rand(2, 5, heads, len(LEVEL_SHAPES), points, 2, generator=generator) * 1.4 - 0.2
    weights = torch.rand(2, 5, heads, len(LEVEL_SHAPES), points, generator=generator)
    given = [tensor.clone() for tensor in (*levels, locations, weights)]
    first = multi_scale_deformable_sampling_by_bags(levels, LEVEL_SHAPES, locations, weights)
    for tensor, copy in zip((*levels, locations, weights), given, strict=True):
        assert torch.equal(tensor, copy)
    assert torch.equal(
        multi_scale_deformable_sampling_by_bags(levels, LEVEL_SHAPES, locations, weights), first
    )

    torch.manual_seed(0)
    module = MultiScaleDeformableAttention(d_model=8, num_heads=2, num_levels=len(LEVEL_SHAPES), num_points=2)
    queries, reference_points = torch.randn(2, 4, 8), torch.rand(4, 2).expand(2, -1, -1)
    values = torch.randn(2, sum(h * w for h, w in LEVEL_SHAPES), 8)
    given = [tensor.clone() for tensor in (queries, reference_points, values)]
    with torch.no_grad():
        first = module(queries, reference_points, values, LEVEL_SHAPES)
        for tensor, copy in zip((queries, reference_points, values), given, strict=True):
            assert torch.equal(tensor, copy)
        assert torch.equal(module(queries, reference_points, values, LEVEL_SHAPES), first)


def test_cross_attention_without_keys_returns_exactly_the_output_bias():
    """A narrative without real phrases gets no text context (zeros before the output projection); the other
    sample of the batch attends to its real keys only, as softmax attention written out does."""
    torch.manual_seed(0)
    attention = CrossAttention(d_model=8, num_heads=2).double().eval()
    queries, keys = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 3, 8, dtype=torch.float64)
    key_mask = torch.tensor([[True, True, False], [False, False, False]])
    output = attention(queries, keys, key_mask)
    assert torch.equal(output[1], attention.out_proj.bias.expand(5, 8))
    q = attention.q_proj(queries[0]).view(5, 2, 4).transpose(0, 1)  # Hd x N x Dh
    k = attention.k_proj(keys[0, :2]).view(2, 2, 4).transpose(0, 1)
    v = attention.v_proj(keys[0, :2]).view(2, 2, 4).transpose(0, 1)
    attended = ((q @ k.transpose(1, 2)) / 2.0).softmax(-1) @ v  # Hd x N x Dh
    expected = attention.out_proj(attended.transpose(0, 1).reshape(5, 8))
    torch.testing.assert_close(output[0], expected, atol=1e-12, rtol=1e-10)


def test_initial_sampling_pattern_spreads_heads_and_points():
    pattern = initial_sampling_pattern(num_heads=8, num_levels=2, num_points=3)  # Hd x L x K x 2
    assert pattern.shape == (8, 2, 3, 2)
    assert len({tuple(p.tolist()) for p in pattern[:, 0, 0]}) == 8  # one direction per head
    torch.testing.assert_close(pattern[:, :, 2], 3 * pattern[:, :, 0])  # point k at radius k + 1
    torch.testing.assert_close(pattern[:, 0], pattern[:, 1])  # same pixel pattern on every level


# ---------------------------------------------------------------- positions and levels
def test_level_choice_keeps_the_matching_stride_and_drops_stride_4_first():
    assert [drmn_level_strides(n) for n in (1, 2, 3, 4)] == [(8,), (8, 16), (8, 16, 32), (4, 8, 16, 32)]


def test_positions_are_distinct_and_centres_normalised():
    embedding = sine_position_embedding(3, 5, 16, device=torch.device("cpu"), dtype=torch.float32)
    assert embedding.shape == (15, 16)
    assert torch.cdist(embedding, embedding).add(torch.eye(15)).min() > 1e-3  # every pixel its own code
    centres = pixel_centres(2, 4, device=torch.device("cpu"), dtype=torch.float32)
    torch.testing.assert_close(centres[0], torch.tensor([0.125, 0.25]))  # (x, y) of pixel (0, 0)
    torch.testing.assert_close(centres[-1], torch.tensor([0.875, 0.75]))


# ---------------------------------------------------------------- top-k and padded phrases
def test_top_k_picks_the_highest_scores_and_clamps_k():
    scores = torch.randn(2, 3, 50, generator=torch.Generator().manual_seed(0))
    indices = select_top_pixels(scores, 7)
    assert indices.shape == (2, 3, 7)
    picked = scores.gather(-1, indices)
    torch.testing.assert_close(picked, scores.sort(dim=-1, descending=True).values[..., :7])
    assert select_top_pixels(scores, 500).shape == (2, 3, 50)  # K clamped to the number of pixels


def test_a_refinement_round_reads_only_each_phrases_top_k_pixels():
    config = drmn_config(drmn_top_k=5)
    torch.manual_seed(0)
    refinement = RefinementRound(config).eval()
    d_model, height, width = config.drmn_hidden_dim, 4, 6
    phrases = torch.randn(1, 2, d_model)
    scores = torch.randn(1, 2, height * width)
    pixels = torch.randn(1, height * width, d_model)
    positions = sine_position_embedding(
        height, width, d_model, device=torch.device("cpu"), dtype=torch.float32
    )
    centres = pixel_centres(height, width, device=torch.device("cpu"), dtype=torch.float32)
    level_shapes = [(2 * height, 2 * width), (height, width), (height // 2, width // 2), (1, 2)]
    values = torch.randn(1, sum(h * w for h, w in level_shapes), d_model)
    with torch.no_grad():
        reference = refinement(phrases, scores, pixels, positions, centres, values, level_shapes, 5)
        unselected = torch.ones(height * width, dtype=torch.bool)
        unselected[select_top_pixels(scores, 5).flatten()] = False
        changed = pixels.clone()
        changed[:, unselected] = torch.randn_like(changed[:, unselected])
        torch.testing.assert_close(
            refinement(phrases, scores, changed, positions, centres, values, level_shapes, 5),
            reference,
            atol=0,
            rtol=0,
        )
        # Changing the second phrase's selection leaves the first phrase's update untouched.
        other = scores.clone()
        other[:, 1] = torch.randn(height * width)
        updated = refinement(phrases, other, pixels, positions, centres, values, level_shapes, 5)
        torch.testing.assert_close(updated[:, 0], reference[:, 0], atol=0, rtol=0)
        assert not torch.allclose(updated[:, 1], reference[:, 1])


def every_round(output) -> torch.Tensor:
    return torch.stack([*output.auxiliary_masks, output.pred_masks])  # R+1 x B x P x h x w


def test_padded_phrases_never_change_real_phrases():
    config = drmn_config()
    torch.manual_seed(0)
    head = DrmnHead(config).eval()
    features = random_features(config, 1, 64, 96)
    real = torch.randn(1, 2, config.text_config.hidden_size)
    garbage = 100 * torch.randn(1, 3, config.text_config.hidden_size)  # padding with arbitrary contents
    with torch.no_grad():
        alone = head(features, real, torch.ones(1, 2, dtype=torch.bool))
        padded = head(
            features, torch.cat([real, garbage], dim=1), torch.tensor([[True, True, False, False, False]])
        )
    torch.testing.assert_close(every_round(padded)[:, :, :2], every_round(alone), atol=1e-5, rtol=1e-5)
    assert every_round(padded).isfinite().all()


def test_batched_and_padded_inputs_give_each_sample_its_own_result():
    model = drmn_model()
    inputs = make_inputs([2, 3, 1], height=64, width=64)
    with torch.no_grad():
        batched = model(**inputs)
        for sample, count in enumerate([2, 3, 1]):
            single = model(**select_sample(inputs, sample, count))
            torch.testing.assert_close(
                every_round(batched)[:, sample, :count], every_round(single)[:, 0], atol=1e-4, rtol=1e-4
            )


def test_narratives_without_real_phrases_are_finite():
    model = drmn_model().train()
    inputs = make_inputs([2, 1], height=64, width=64, with_labels=True)
    inputs["phrase_token_mask"][1] = 0
    inputs["phrase_mask"][1] = 0
    output = model(**inputs)
    assert every_round(output).isfinite().all() and output.loss.isfinite()
    output.loss.backward()
    assert all(p.grad is None or p.grad.isfinite().all() for p in model.parameters())
    for key in ("phrase_token_mask", "phrase_mask", "labels"):  # a batch without any phrase slot at all
        inputs[key] = inputs[key][:, :0]
    output = model(**inputs)
    assert output.pred_masks.shape == (2, 0, 16, 16) and len(output.auxiliary_masks) == 3
    assert output.loss == 0


def test_text_conditioning_switch():
    """With conditioning, the narrative's other phrases shape the encoder and hence phrase 0's masks; without
    it, the pixel features are purely visual and phrase 0 depends only on itself."""
    for conditioned in (True, False):
        config = drmn_config(drmn_text_conditioning=conditioned)
        torch.manual_seed(0)
        head = DrmnHead(config).eval()
        assert all((layer.text_attention is not None) == conditioned for layer in head.encoder_layers)
        features = random_features(config, 1, 64, 64)
        phrases = torch.randn(1, 2, config.text_config.hidden_size)
        other = phrases.clone()
        other[:, 1] = torch.randn(config.text_config.hidden_size)
        mask = torch.ones(1, 2, dtype=torch.bool)
        with torch.no_grad():
            first = every_round(head(features, phrases, mask))[:, :, 0]
            second = every_round(head(features, other, mask))[:, :, 0]
        assert torch.allclose(first, second, atol=1e-6) != conditioned


# ---------------------------------------------------------------- shapes and ablation switches
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"drmn_refinement_rounds": 0},
        {"drmn_refinement_rounds": 1, "drmn_num_levels": 1},
        {"drmn_refinement_rounds": 2, "drmn_num_levels": 2, "drmn_num_points": 1},
        {"drmn_num_levels": 3, "drmn_num_points": 2, "drmn_top_k": 1},
        {"drmn_top_k": 10_000, "drmn_encoder_layers": 0},
        {"drmn_top_k": 3, "drmn_encoder_layers": 1, "drmn_text_conditioning": False, "fpn_channels": 64},
    ],
)
def test_shapes_on_non_square_inputs_and_ablations(overrides):
    model = drmn_model(**overrides).train()
    config = model.config
    assert len(model.head.rounds) == config.drmn_refinement_rounds
    assert len(model.head.strides) == config.drmn_num_levels
    inputs = make_inputs([3, 1], height=64, width=96, with_labels=True)
    output = model(**inputs)
    assert output.pred_masks.shape == (2, 3, 16, 24)
    assert len(output.auxiliary_masks) == config.drmn_refinement_rounds
    assert all(masks.shape == (2, 3, 16, 24) for masks in output.auxiliary_masks)
    assert output.phrase_embeddings.shape == (2, 3, config.drmn_hidden_dim)
    assert output.pixel_embeddings.shape == (2, config.drmn_hidden_dim, 16, 24)
    output.loss.backward()
    head_grads = [p.grad for p in model.head.parameters()]
    assert all(g is not None and g.isfinite().all() for g in head_grads)


def test_deep_supervision_sums_every_round():
    model = drmn_model()
    inputs = make_inputs([2], height=64, width=64, with_labels=True)
    with torch.no_grad():
        full = model(**inputs)
        single = PngForPanopticNarrativeGrounding._compute_loss(
            model,
            GroundingHeadOutput(pred_masks=full.pred_masks),
            inputs["labels"],
            inputs["phrase_mask"].bool(),
            None,
            None,
        )[1]
    assert full.loss_dict["bce"] > single["bce"] and full.loss_dict["dice"] > single["dice"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("drmn_refinement_rounds", -1),
        ("drmn_top_k", 0),
        ("drmn_num_levels", 5),
        ("drmn_num_points", 0),
        ("drmn_dropout", 1.0),
        ("drmn_encoder_layers", -2),
    ],
)
def test_invalid_drmn_settings_name_the_field(field, value):
    with pytest.raises(Exception, match=field):
        PngConfig(grounding_head="drmn", **{field: value})


def test_paper_sizes():
    config = load_config("drmn-r101-bert-base")
    assert (config.drmn_hidden_dim, config.drmn_encoder_layers, config.drmn_num_heads) == (256, 2, 8)
    assert (
        config.drmn_num_levels,
        config.drmn_num_points,
        config.drmn_refinement_rounds,
        config.drmn_top_k,
    ) == (
        4,
        4,
        3,
        100,
    )
    assert config.sal_loss_weight == 0
    with torch.device("meta"):
        head = DrmnHead(config)
    assert 3e6 < sum(p.numel() for p in head.parameters()) < 15e6


# ---------------------------------------------------------------- training and round trips
def test_tiny_drmn_overfits_one_batch():
    model = drmn_model(seed=0).train()
    inputs = make_inputs([3, 2], height=64, width=64, with_labels=True, seed=1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_loaded_in_bfloat16_a_batch_of_one_gives_finite_masks(tmp_path):
    """`from_pretrained(..., dtype=torch.bfloat16)` gave all-NaN mask logits for one image (two were fine)."""
    drmn_model(seed=0).save_pretrained(tmp_path)
    model = PngForPanopticNarrativeGrounding.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    inputs = make_inputs([2], height=128, width=128)  # the variant's input size
    with torch.no_grad():
        logits = model(**{**inputs, "pixel_values": inputs["pixel_values"].to(torch.bfloat16)}).pred_masks
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_save_and_load_are_exact(tmp_path):
    model = drmn_model(drmn_num_levels=3, drmn_top_k=7)
    model.save_pretrained(tmp_path)
    loaded = PngForPanopticNarrativeGrounding.from_pretrained(tmp_path).eval()
    head_fields = [name for name in model.config.to_dict() if name.startswith("drmn_")] + ["grounding_head"]
    assert all(getattr(loaded.config, name) == getattr(model.config, name) for name in head_fields)
    assert loaded.config.drmn_top_k == 7 and loaded.head.strides == (8, 16, 32)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    inputs = make_inputs([2, 1], height=64, width=96)
    with torch.no_grad():
        torch.testing.assert_close(
            every_round(loaded(**inputs)), every_round(model(**inputs)), atol=0, rtol=0
        )


def test_trust_remote_code_in_a_process_that_never_imports_the_package(tmp_path):
    model = drmn_model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"].endswith("PngForPanopticNarrativeGrounding")
    for module in ("modeling_png.py", "heads_drmn.py", "deformable_attention.py", "attention.py"):
        assert (tmp_path / module).is_file(), module
    inputs = make_inputs([2, 1], height=64, width=96)
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        torch.save(every_round(model(**inputs)), tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert "narrative_grounding" not in sys.modules, "the package was imported"
        assert type(model.head).__name__ == "DrmnHead"
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            output = model(**inputs)
        masks = torch.stack([*output.auxiliary_masks, output.pred_masks])
        torch.testing.assert_close(masks, torch.load({str(tmp_path / "expected.pt")!r}), atol=0, rtol=0)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    assert isinstance(AutoModel.from_pretrained(tmp_path), PngForPanopticNarrativeGrounding)
