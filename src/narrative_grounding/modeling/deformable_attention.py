"""Multi-scale deformable attention (Zhu et al., Deformable DETR, ICLR 2021) in pure PyTorch.

Every query has a reference point; for each head h, feature level l and sampling point k it predicts an
offset dp_hlk and a weight A_hlk (softmax over the L x K samples of a head) and returns

    out_q = W_out [ sum_{l,k} A_hlk * V_l^h(p_q + dp_hlk) ]_h          (Deformable DETR eq. 3)

where V_l^h(p) bilinearly samples head h of level l's projected values at p. Sampling uses
`torch.nn.functional.grid_sample` (no custom op), so it runs wherever PyTorch runs and has exact gradients;
compiled inference graphs use the same function written as explicit gathers, which inductor fuses.

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
    # Slices are taken with unbind, not indexing: the backward of `tensor[:, :, i]` writes its gradient into a
    # fresh zero tensor of the whole input for every i (L x K zero-fills and additions of the sample tensor),
    # the backward of unbind stacks the slices' gradients once (12% of a drmn-tiny training step's CPU time).
    grids = (2.0 * sampling_locations - 1.0).permute(3, 0, 2, 4, 1, 5)  # L x B x Hd x K x Q x 2
    weights = attention_weights.permute(3, 0, 2, 4, 1)  # L x B x Hd x K x Q
    output = None
    for value, grid, level_weights in zip(value_levels, grids.unbind(0), weights.unbind(0), strict=True):
        # (B * Hd) x Dh x H_l x W_l. At B = 1 flatten returns a channels-last view instead of a copy, and CPU
        # grid_sample on a channels-last bfloat16 / float16 input returns NaN at some sizes (torch 2.14: 16 x 16
        # with 32 channels, 32 x 32 with 16): contiguous() makes the one copy at every batch size.
        value = value.flatten(0, 1).contiguous()
        sampled = F.grid_sample(
            value, grid.flatten(0, 1), mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (B * Hd) x Dh x K x Q
        point_weights = level_weights.flatten(0, 1).unsqueeze(1).unbind(2)  # K x [(B * Hd) x 1 x Q]
        for point_samples, point_weight in zip(sampled.unbind(2), point_weights, strict=True):
            if output is None:
                output = point_samples * point_weight  # (B * Hd) x Dh x Q
            else:
                output = output.addcmul_(point_samples, point_weight)
    return output.view(batch, num_heads, head_dim, num_queries).permute(0, 3, 1, 2)  # B x Q x Hd x Dh


def _check_level_counts(value_levels: list, level_shapes: list, num_levels: int) -> None:
    """The channels-last sampling forms take one value tensor and one (H, W) per level of the locations."""
    if len(value_levels) != num_levels or len(level_shapes) != num_levels:
        raise ValueError(
            f"{len(value_levels)} value levels and {len(level_shapes)} level shapes for sampling locations over "
            f"{num_levels} levels"
        )


def multi_scale_deformable_sampling_by_gathering(
    value_levels: list[torch.Tensor],
    level_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """`multi_scale_deformable_sampling` written as explicit bilinear gathers over channels-last values.

    value_levels: L tensors, level l of shape B x (H_l * W_l) x Hd x Dh (row-major pixels, heads split: the
    layout a value projection produces, no transposition needed).
    level_shapes: the L (H_l, W_l). sampling_locations, attention_weights: as `multi_scale_deformable_sampling`.
    Returns B x Q x Hd x Dh, the same function (grid_sample's align_corners=False bilinear, zeros outside).

    For compiled inference graphs: inductor fuses the index arithmetic, the gathers of Dh-contiguous value
    rows, the weighting and the sum over levels x points x corners into one loop that never materialises the
    samples (2.7x faster than the grid_sample form for a 640 x 640 DRMN encoder layer on CPU). Run eagerly
    it materialises B x Q x Hd x K x Dh per corner, and its backward would keep those for every layer, so
    eager code and training use `multi_scale_deformable_sampling`.
    """
    batch, num_queries, num_heads, num_levels, num_points, _ = sampling_locations.shape
    _check_level_counts(value_levels, level_shapes, num_levels)
    batch_index = torch.arange(batch, device=sampling_locations.device).view(batch, 1, 1, 1)
    head_index = torch.arange(num_heads, device=sampling_locations.device).view(1, 1, num_heads, 1)
    output = None
    for level, (value, (height, width)) in enumerate(zip(value_levels, level_shapes, strict=True)):
        # Pixel coordinates of the samples (pixel centres at integers), B x Q x Hd x K each.
        x = sampling_locations[:, :, :, level, :, 0] * width - 0.5
        y = sampling_locations[:, :, :, level, :, 1] * height - 0.5
        left, top = x.floor(), y.floor()
        fx, fy = x - left, y - top
        level_weights = attention_weights[:, :, :, level]  # B x Q x Hd x K
        corners = (
            (left, top, (1 - fx) * (1 - fy)),
            (left + 1, top, fx * (1 - fy)),
            (left, top + 1, (1 - fx) * fy),
            (left + 1, top + 1, fx * fy),
        )
        for column, row, bilinear in corners:
            inside = (column >= 0) & (column <= width - 1) & (row >= 0) & (row <= height - 1)
            pixel = (row.clamp(0, height - 1) * width + column.clamp(0, width - 1)).long()  # B x Q x Hd x K
            weight = torch.where(inside, bilinear * level_weights, torch.zeros_like(bilinear))
            gathered = value[batch_index, pixel, head_index]  # B x Q x Hd x K x Dh
            contribution = (gathered * weight[..., None]).sum(dim=3)  # B x Q x Hd x Dh
            output = contribution if output is None else output + contribution
    return output


def multi_scale_deformable_sampling_by_bags(
    value_levels: list[torch.Tensor],
    level_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """`multi_scale_deformable_sampling` as one weighted `embedding_bag`: for the eager path without gradients.

    value_levels: L tensors, level l of shape B x (H_l * W_l) x Hd x Dh (the value projection's layout).
    level_shapes: the L (H_l, W_l). sampling_locations, attention_weights: as `multi_scale_deformable_sampling`.
    Returns B x Q x Hd x Dh, the same function (grid_sample's align_corners=False bilinear, zeros outside).

    Every (batch, query, head) is one bag of 4 corners x L x K rows of Dh values, each weighted by its bilinear
    weight times its attention weight, summed by one `embedding_bag`: no B x Hd x Dh x K x Q sample tensor is
    written, and no weighting pass over it follows (the grid_sample form spent more time adding its samples
    into the output than sampling them; 2.3x slower for a 640 x 640 DRMN encoder layer on one CPU thread).
    Each level gets a one-pixel zero border, so every corner is a valid row: a coordinate is clamped to the
    border (-1 or W_l), where a point outside the map reads zeros with the whole of its weight, as grid_sample's
    zero padding does. Coordinates are computed in float32 at least (bfloat16 cannot hold a pixel coordinate
    such as 159.5). `embedding_bag` has a backward, but a slower one than grid_sample's
    with these shapes, so training keeps `multi_scale_deformable_sampling`.
    """
    batch, num_queries, num_heads, num_levels, num_points, _ = sampling_locations.shape
    _check_level_counts(value_levels, level_shapes, num_levels)
    head_dim = value_levels[0].shape[-1]
    device = sampling_locations.device
    # One table for all levels, rows (level, b, padded y, padded x, head): each level is copied once into its
    # block and only the border is zeroed (padding each level, then concatenating, copied every value twice).
    level_rows = [batch * (height + 2) * (width + 2) * num_heads for height, width in level_shapes]
    table = value_levels[0].new_empty(sum(level_rows), head_dim)
    for value, (height, width), block in zip(
        value_levels, level_shapes, table.split(level_rows), strict=True
    ):
        block = block.view(batch, height + 2, width + 2, num_heads, head_dim)
        for border in (block[:, 0], block[:, -1], block[:, 1:-1, 0], block[:, 1:-1, -1]):
            border.zero_()
        block[:, 1:-1, 1:-1].copy_(value.unflatten(1, (height, width)))  # B x H_l x W_l x Hd x Dh
    index_dtype = torch.int32 if table.shape[0] < 2**31 else torch.int64
    exact = (torch.float32, torch.float64)
    coordinate_dtype = sampling_locations.dtype if sampling_locations.dtype in exact else torch.float32

    def per_level(values: list, dtype: torch.dtype) -> torch.Tensor:
        """Per-level constants (L or L x 2) expanded to Hd x L x K [x 2] and made contiguous: an operation whose
        broadcast operand repeats every 2 or 4 elements runs ~3x slower than one over contiguous runs."""
        constant = torch.tensor(values, dtype=dtype, device=device)
        constant = constant.view(1, num_levels, 1, *constant.shape[1:])
        return constant.expand(num_heads, num_levels, num_points, *constant.shape[3:]).contiguous()

    sizes = per_level([(width, height) for height, width in level_shapes], coordinate_dtype)  # Hd x L x K x 2
    # Pixel coordinates (centres at integers) on the border-padded maps, B x Q x Hd x L x K x 2 (x, y).
    pixel = torch.addcmul(sizes.new_tensor(-0.5), sampling_locations.to(coordinate_dtype), sizes)
    pixel = torch.clamp(pixel, min=sizes.new_tensor(-1.0), max=sizes, out=pixel)
    corner = pixel.floor()
    corner = torch.minimum(corner, sizes - 1, out=corner)  # upper-left corners, -1 to W_l - 1 (H_l - 1)
    fx, fy = pixel.sub_(corner).unbind(-1)  # B x Q x Hd x L x K each
    point_weights = attention_weights.to(coordinate_dtype)  # B x Q x Hd x L x K
    lower = point_weights * fy  # the attention weight of the lower row, then of the upper one
    upper = point_weights - lower
    # The corner's pixel in its padded level, counted from padded pixel (1, 1), in integers (exact at any size).
    column, row = corner.to(index_dtype).unbind(-1)
    padded_widths = per_level([width + 2 for _, width in level_shapes], index_dtype)  # Hd x L x K
    pixel_in_level = torch.addcmul(column, row, padded_widths)  # B x Q x Hd x L x K
    level_starts = torch.tensor([0, *level_rows[:-1]], device=device).cumsum(0)
    first_rows = torch.tensor(  # row of padded pixel (1, 1), where upper-left corner (0, 0) lands
        [num_heads * (width + 3) for _, width in level_shapes], device=device
    )
    batch_rows = torch.tensor([rows // batch for rows in level_rows], device=device)
    base = (  # B x 1 x Hd x L x 1: the table row of (b, level, head)'s padded pixel (1, 1)
        torch.arange(batch, device=device).view(batch, 1, 1, 1, 1) * batch_rows.view(1, 1, 1, -1, 1)
        + (level_starts + first_rows).view(1, 1, 1, -1, 1)
        + torch.arange(num_heads, device=device).view(1, 1, -1, 1, 1)
    ).to(index_dtype)
    row_steps = [num_heads * (width + 2) for _, width in level_shapes]
    # Bags laid out corner by corner (B x Q x Hd x 4 x L x K): each corner is written as runs of L x K
    # contiguous entries per (query, head), not as every fourth entry.
    indices = torch.empty(
        batch, num_queries, num_heads, 4, num_levels, num_points, dtype=index_dtype, device=device
    )
    weights = torch.empty(indices.shape, dtype=table.dtype, device=device)
    # Corners (upper left, upper right, lower left, lower right), each written in one pass.
    for corner_index, (column_step, row_step) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
        steps = [column_step * num_heads + row_step * step for step in row_steps]
        corner_base = base + per_level(steps, index_dtype)[None, None]  # B x 1 x Hd x L x K
        torch.add(corner_base, pixel_in_level, alpha=num_heads, out=indices[:, :, :, corner_index])
        row_weight = lower if row_step else upper
        if column_step:
            torch.mul(row_weight, fx, out=weights[:, :, :, corner_index])
        else:
            torch.addcmul(row_weight, row_weight, fx, value=-1, out=weights[:, :, :, corner_index])
    bags = batch * num_queries * num_heads
    sampled = F.embedding_bag(
        indices.view(bags, -1), table, per_sample_weights=weights.view(bags, -1), mode="sum"
    )  # bags x Dh
    return sampled.view(batch, num_queries, num_heads, head_dim)


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
        pattern = initial_sampling_pattern(self.num_heads, self.num_levels, self.num_points).to(offsets)
        sizes = torch.tensor([[w, h] for h, w in level_shapes], dtype=offsets.dtype, device=offsets.device)
        # Level sizes expanded to Hd x L x K x 2 like the pattern: dividing by a broadcast L x 1 x 2 tensor, whose
        # (w, h) pair repeats every 2 elements, ran 3x slower. In place on the fresh projection: neither the
        # linear layer's backward nor the pattern's addition or the division's needs the tensor they change.
        offsets = offsets.add_(pattern).div_(sizes[None, :, None, :].expand_as(pattern).contiguous())
        return offsets.add_(reference_points[:, :, None, None, None, :])

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
        levels = [
            projection(level).view(batch, height * width, self.num_heads, self.head_dim)  # B x HW x Hd x Dh
            for projection, level, (height, width) in zip(
                self.value_projections, values.split(sizes, dim=1), level_shapes, strict=True
            )
        ]
        if torch.compiler.is_compiling() and not torch.is_grad_enabled():
            # inference graphs (optimize_for_inference): the fused gather form, see its docstring
            sampled = multi_scale_deformable_sampling_by_gathering(levels, level_shapes, locations, weights)
        elif not torch.is_grad_enabled() and values.device.type == "cpu":
            # eager inference on CPU: one weighted embedding_bag, see its docstring. CUDA keeps grid_sample,
            # whose kernel there was never the bottleneck.
            sampled = multi_scale_deformable_sampling_by_bags(levels, level_shapes, locations, weights)
        else:
            heads = [  # B x Hd x Dh x H_l x W_l (views)
                level.view(batch, height, width, self.num_heads, self.head_dim).permute(0, 3, 4, 1, 2)
                for level, (height, width) in zip(levels, level_shapes, strict=True)
            ]
            sampled = multi_scale_deformable_sampling(heads, locations, weights)  # B x Q x Hd x Dh
        return self.output_projection(sampled.reshape(batch, num_queries, d_model))


__all__ = [
    "MultiScaleDeformableAttention",
    "initial_sampling_pattern",
    "multi_scale_deformable_sampling",
    "multi_scale_deformable_sampling_by_bags",
    "multi_scale_deformable_sampling_by_gathering",
]
