"""Analytic FLOP counts of the grounding heads (forward, batch 1), the numerator of the heads' throughput
targets and the "implied" growth the head-scaling benchmark compares its measurements with.

A FLOP is one multiply or one add: a (m x k) @ (k x n) product is 2 m k n. Counted: every matrix product
(linear layers, attention scores and weighted sums, phrase . pixel products) and the deformable bilinear
sampling (4 taps and 1 weight per channel and sample: 10 FLOPs). Not counted: softmax, LayerNorm,
activations, interpolation, pooling, the LPA prior (a few FLOPs per score, fused into flex attention): they
are memory-bound and would flatter the throughput ratio.

Sizes for a square image of side 16 g: the EPNG communicator runs on the g x g stride-16 grid; the DRMN
encoder on all its levels (strides 4..32: 16 g^2 + 4 g^2 + g^2 + g^2 / 4 pixels for 4 levels), its
matching on the (2 g)^2 stride-8 grid; masks come out at stride 4 ((4 g)^2 pixels).

`python -m benchmarks.flops` checks these formulas against torch's FlopCounterMode on the real heads.
"""

from __future__ import annotations

from typing import Any

DEFORMABLE_SAMPLE_FLOPS = 10  # per channel and sample: 4 bilinear taps (multiply + add) + 1 weight


def epng_head_flops(config: Any, grid: int, phrases: int) -> dict[str, float]:
    """FLOPs of `EpngHead.forward` for one image of side 16 * grid with `phrases` phrases, by part."""
    n, p, d, f = grid * grid, phrases, config.d_model, config.ffn_dim
    text = config.text_config.hidden_size
    layers = config.num_communicator_layers
    fused = 3 * config.fpn_channels
    parts = {
        "fuse_projection": 0.0 if fused == d else 2.0 * n * fused * d,
        "phrase_projection": 2.0 * p * text * d,
        # LPA: qkv, Q K^T, A V, W_O (EPNG eqs. 5-7)
        "lpa_projections": layers * (2.0 * n * d * 3 * d + 2.0 * n * d * d),
        "lpa_attention": layers * (2.0 * n * n * d * 2),
        # cross-attention to phrases (eq. 9): q and out over pixels, k and v over phrases, scores and sum
        "cross_attention": layers * (2.0 * n * d * d * 2 + 2.0 * p * d * d * 2 + 2.0 * n * p * d * 2),
        "ffn": layers * (2.0 * n * d * f * 2),
        # eq. 10 at stride 4, plus the optional stride-4 skip projection
        "masks": 2.0 * p * d * (4 * grid) ** 2,
        "stride4_skip": 2.0 * (4 * grid) ** 2 * config.fpn_channels * d if config.use_stride4_skip else 0.0,
    }
    parts["total"] = sum(parts.values())
    return parts


def _drmn_level_pixels(config: Any, grid: int) -> list[int]:
    strides = sorted((8, 16, 32, 4)[: config.drmn_num_levels])
    return [(16 * grid // stride) ** 2 for stride in strides]


def _deformable_attention_flops(config: Any, queries: float, values: float) -> float:
    d, heads = config.drmn_hidden_dim, config.drmn_num_heads
    levels, points = config.drmn_num_levels, config.drmn_num_points
    samples = heads * levels * points
    return (
        2.0 * queries * d * samples * 2  # sampling offsets (x, y)
        + 2.0 * queries * d * samples  # attention weights
        + 2.0 * values * d * d  # per-level value projections over every pixel
        + queries * samples * (d // heads) * DEFORMABLE_SAMPLE_FLOPS  # bilinear sampling and weighting
        + 2.0 * queries * d * d  # output projection
    )


def drmn_head_flops(config: Any, grid: int, phrases: int) -> dict[str, float]:
    """FLOPs of `DrmnHead.forward` for one image of side 16 * grid with `phrases` phrases, by part."""
    d, f, p = config.drmn_hidden_dim, config.drmn_ffn_dim, phrases
    phrase_f = config.drmn_phrase_ffn_dim or f  # the reference's phrase FFN is wider
    text = config.text_config.hidden_size
    level_pixels = _drmn_level_pixels(config, grid)
    n = float(sum(level_pixels))
    n8 = (2 * grid) ** 2
    k = min(config.drmn_top_k, n8)
    rounds, layers = config.drmn_refinement_rounds, config.drmn_encoder_layers
    projection = 0.0 if config.fpn_channels == d else 2.0 * n * config.fpn_channels * d
    text_attention = (
        2.0 * n * d * d * 2 + 2.0 * p * d * d * 2 + 2.0 * n * p * d * 2
        if config.drmn_text_conditioning
        else 0.0
    )
    q = p * k  # refinement queries: K pixels per phrase
    parts = {
        "input_projections": projection,
        "phrase_projection": 2.0 * p * text * d,
        "encoder_deformable": layers * _deformable_attention_flops(config, n, n),
        "encoder_text_attention": layers * text_attention,
        "encoder_ffn": layers * 2.0 * n * d * f * 2,
        # per round: deformable context of the P x K top pixels (values re-projected over every level),
        # the context FFN, the phrase's attention over its K contexts, the phrase FFN
        "refinement": rounds
        * (
            _deformable_attention_flops(config, q, n)
            + 2.0 * q * d * f * 2
            + (2.0 * p * d * d * 2 + 2.0 * q * d * d * 2 + 2.0 * q * d * 2)
            + 2.0 * p * d * phrase_f * 2
        ),
        "matching": (rounds + 1) * 2.0 * p * n8 * d,
    }
    parts["total"] = sum(parts.values())
    return parts


def head_flops(config: Any, grid: int, phrases: int) -> dict[str, float]:
    """FLOPs by part of the config's head (see `epng_head_flops` / `drmn_head_flops`)."""
    if config.grounding_head == "epng":
        return epng_head_flops(config, grid, phrases)
    return drmn_head_flops(config, grid, phrases)


def _check_against_torch() -> None:
    """Compare the matmul part of the formulas with torch's FlopCounterMode on the paper-size heads (the
    LPA on its direct path, which FlopCounterMode sees; the deformable sampling is not a matmul)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from narrative_grounding import load_config
    from narrative_grounding.modeling.heads import GROUNDING_HEADS

    grid, phrases = 20, 7
    for variant in ("epng-r101-bert-base", "drmn-r101-bert-base"):
        config = load_config(variant, lpa_implementation="direct")
        head = GROUNDING_HEADS[config.grounding_head](config).eval()
        features = {
            s: torch.randn(1, config.fpn_channels, 16 * grid // s, 16 * grid // s) for s in (4, 8, 16, 32)
        }
        phrase_features = torch.randn(1, phrases, config.text_config.hidden_size)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            head(features, phrase_features, torch.ones(1, phrases, dtype=torch.bool))
        analytic = head_flops(config, grid, phrases)
        sampling = 0.0
        if config.grounding_head == "drmn":
            samples = config.drmn_num_heads * config.drmn_num_levels * config.drmn_num_points
            queries = sum(_drmn_level_pixels(config, grid)) * config.drmn_encoder_layers
            queries += config.drmn_refinement_rounds * phrases * min(config.drmn_top_k, (2 * grid) ** 2)
            sampling = (
                queries
                * samples
                * (config.drmn_hidden_dim // config.drmn_num_heads)
                * DEFORMABLE_SAMPLE_FLOPS
            )
        measured = counter.get_total_flops()
        print(
            f"{variant}: analytic matmul FLOPs {(analytic['total'] - sampling) / 1e9:.3f} G, "
            f"FlopCounterMode {measured / 1e9:.3f} G (ratio {(analytic['total'] - sampling) / measured:.4f}); "
            f"+ deformable sampling {sampling / 1e9:.3f} G"
        )


if __name__ == "__main__":
    _check_against_torch()
