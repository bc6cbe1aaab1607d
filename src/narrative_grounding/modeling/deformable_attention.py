"""Multi-scale deformable attention (Zhu et al., Deformable DETR, ICLR 2021) in pure PyTorch.

Every query has a reference point; for each head h, feature level l and sampling point k it predicts an
offset dp_hlk and a weight A_hlk (softmax over the L x K samples of a head) and returns

    out_q = W_out [ sum_{l,k} A_hlk * V_l^h(p_q + dp_hlk) ]_h          (Deformable DETR eq. 3)

where V_l^h(p) bilinearly samples head h of level l's projected values at p. Sampling uses
`torch.nn.functional.grid_sample` (no custom op), so it runs wherever PyTorch runs and has exact gradients.

Coordinates: a location is (x, y) normalised to [0, 1] over the feature map *edges*, the convention of
`grid_sample(..., align_corners=False)`: pixel (i, j) of an h x w map has its centre at
((j + 0.5) / w, (i + 0.5) / h). The same normalised point addresses every level, so one reference point
serves all levels. Samples falling outside a map read zeros (padding_mode="zeros").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def multi_scale_deformable_sampling(
    value_levels: list[torch.Tensor],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The weighted sum of bilinear samples at the heart of deformable attention.

    value_levels: L tensors, level l of shape B x Hd x Dh x H_l x W_l (values already split into heads).
    sampling_locations: B x Q x Hd x L x K x 2, (x, y) in [0, 1] (see the module docstring).
    attention_weights: B x Q x Hd x L x K (normalised by the caller).
    Returns B x Q x Hd x Dh.
    """
    batch, num_queries, num_heads, num_levels, num_points, _ = sampling_locations.shape
    if len(value_levels) != num_levels:
        raise ValueError(f"{len(value_levels)} value levels for sampling locations over {num_levels} levels")
    head_dim = value_levels[0].shape[2]
    # grid_sample reads [-1, 1]. Points go first and queries last (B x Hd x L x K x Q x 2), so each point's
    # samples come out as one contiguous (B * Hd) x Dh x Q block that is weighted and added into the output in
    # place: multiplying the whole (B * Hd) x Dh x Q x K sample tensor by the weights and summing over K
    # wrote and read it twice more: 0.63 s instead of 0.33 s for one encoder layer of a 640 x 640 image (34,000
    # queries, 8 heads, 4 levels x 4 points, 2 CPU cores).
    grids = (2.0 * sampling_locations - 1.0).permute(0, 2, 3, 4, 1, 5)  # B x Hd x L x K x Q x 2
    weights = attention_weights.permute(0, 2, 3, 4, 1)  # B x Hd x L x K x Q
    output = None
    for level, value in enumerate(value_levels):
        value = value.flatten(0, 1)  # (B * Hd) x Dh x H_l x W_l (copies a strided view once)
        grid = grids[:, :, level].flatten(0, 1)  # (B * Hd) x K x Q x 2
        sampled = F.grid_sample(
            value, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (B * Hd) x Dh x K x Q
        level_weights = weights[:, :, level].flatten(0, 1)  # (B * Hd) x K x Q
        for point in range(num_points):
            point_weights = level_weights[:, None, point]  # (B * Hd) x 1 x Q
            if output is None:
                output = sampled[:, :, point] * point_weights  # (B * Hd) x Dh x Q
            else:
                output = output.addcmul_(sampled[:, :, point], point_weights)
    return output.view(batch, num_heads, head_dim, num_queries).permute(0, 3, 1, 2)  # B x Q x Hd x Dh


def initial_sampling_pattern(num_heads: int, num_levels: int, num_points: int) -> torch.Tensor:
    """Hd x L x K x 2 offsets (in pixels of each level) the sampling starts from before any learning.

    Head h looks in direction 2 pi h / Hd, point k at distance k + 1 (Deformable DETR's initialisation),
    so that a freshly initialised layer already gathers context from a ring around the reference point
    instead of sampling the reference point Hd x L x K times. The layer's offset predictor adds to it.
    """
    angles = torch.arange(num_heads, dtype=torch.float32) * (2.0 * math.pi / num_heads)
    directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # Hd x 2
    directions = directions / directions.abs().max(dim=-1, keepdim=True).values  # onto the unit square
    radii = torch.arange(1, num_points + 1, dtype=torch.float32)  # K
    pattern = directions[:, None, None, :] * radii[None, None, :, None]  # Hd x 1 x K x 2
    return pattern.expand(num_heads, num_levels, num_points, 2).contiguous()


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention of B x Q x D queries over L feature levels given flattened (B x N x D).

    Offsets are predicted from `offset_queries` and the attention weights from `weight_queries` (by default
    both are `queries`), so a caller can condition where to look and how much to trust each sample on
    different signals (DRMN conditions the weights on the text). Every level has its own value projection.
    """

    def __init__(self, *, d_model: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.head_dim = d_model // num_heads
        self.sampling_offsets = nn.Linear(d_model, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(d_model, num_heads * num_levels * num_points)
        self.value_projections = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(num_levels))
        self.output_projection = nn.Linear(d_model, d_model)

    def sampling_locations(self, offset_queries: torch.Tensor, reference_points: torch.Tensor, level_shapes):
        """B x Q x Hd x L x K x 2 normalised sampling locations.

        offset_queries: B x Q x D; reference_points: B x Q x 2 normalised (x, y); level_shapes: L (h, w).
        Offsets are in pixels of each level (so a fixed offset reaches further on coarser levels).
        """
        batch, num_queries, _ = offset_queries.shape
        offsets = self.sampling_offsets(offset_queries).view(
            batch, num_queries, self.num_heads, self.num_levels, self.num_points, 2
        )  # B x Q x Hd x L x K x 2, in pixels
        offsets = offsets + initial_sampling_pattern(self.num_heads, self.num_levels, self.num_points).to(
            offsets
        )
        sizes = torch.tensor([[w, h] for h, w in level_shapes], dtype=offsets.dtype, device=offsets.device)
        return reference_points[:, :, None, None, None, :] + offsets / sizes[None, None, None, :, None, :]

    def forward(
        self,
        queries: torch.Tensor,
        reference_points: torch.Tensor,
        values: torch.Tensor,
        level_shapes: list[tuple[int, int]],
        *,
        offset_queries: torch.Tensor | None = None,
        weight_queries: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        queries: B x Q x D (position embeddings already added by the caller).
        reference_points: B x Q x 2, normalised (x, y) in [0, 1].
        values: B x N x D, the L levels flattened row-major and concatenated (N = sum of H_l * W_l).
        level_shapes: the L (H_l, W_l).
        offset_queries, weight_queries: B x Q x D, default `queries`.
        Returns B x Q x D.
        """
        if len(level_shapes) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature levels, got {len(level_shapes)}")
        batch, num_queries, d_model = queries.shape
        offset_queries = queries if offset_queries is None else offset_queries
        weight_queries = queries if weight_queries is None else weight_queries
        locations = self.sampling_locations(offset_queries, reference_points, level_shapes)
        weights = self.attention_weights(weight_queries).view(
            batch, num_queries, self.num_heads, self.num_levels * self.num_points
        )
        weights = weights.softmax(dim=-1).view(
            batch, num_queries, self.num_heads, self.num_levels, self.num_points
        )  # B x Q x Hd x L x K
        sizes = [height * width for height, width in level_shapes]
        heads = []
        for projection, level, (height, width) in zip(
            self.value_projections, values.split(sizes, dim=1), level_shapes, strict=True
        ):
            projected = projection(level).view(batch, height, width, self.num_heads, self.head_dim)
            heads.append(projected.permute(0, 3, 4, 1, 2))  # B x Hd x Dh x H_l x W_l (a view)
        sampled = multi_scale_deformable_sampling(heads, locations, weights)  # B x Q x Hd x Dh
        return self.output_projection(sampled.reshape(batch, num_queries, d_model))


__all__ = ["MultiScaleDeformableAttention", "initial_sampling_pattern", "multi_scale_deformable_sampling"]
