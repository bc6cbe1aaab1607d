"""DRMN's grounding head ("Context Does Matter", arXiv 2310.16616): a text-conditioned multi-scale
deformable encoder, then phrase-kernel matching refined over several rounds of top-k context gathering.

Data flow (shapes for a 640x640 input, paper sizes D = 256):
  FPN levels (strides 8/16/32 + 4: 80x80, 40x40, 20x20, 160x160 x C) -> 1x1 projection to D
  -> + level embedding + 2D sine position -> `drmn_encoder_layers` deformable encoder layers over the
     34,000 pixels of all levels (each pixel samples Hd x L x K points around itself on every level; the
     sampling weights are conditioned on the narrative's phrases)
  -> initial matching: kernel_0 = Linear(phrase feature) ; logits_0 = kernel_0 . stride-8 pixels -> x2 to stride 4
  -> round r = 1..R: per phrase, the K pixels with the highest logits_{r-1} at stride 8 are re-encoded by
     deformable attention around their own location across all levels (query = phrase state + position);
     the phrase attends to those K context features (MHA + residual + LN + FFN) -> kernel_r -> logits_r.
Every round's masks are returned (the model supervises all of them: BCE + Dice, deep supervision).

Choices the paper leaves open, and what this implementation does:
- Levels: stride 8 is always encoded (the matching map lives there); fewer than 4 levels drop stride 4 first
  (the costliest, with the least context): 1 -> {8}, 2 -> {8, 16}, 3 -> {8, 16, 32}, 4 -> {4, 8, 16, 32}.
- Text conditioning ("weighted by cross-modal attention with the text embeddings"): in every encoder layer
  each pixel query gathers a text context t_q by multi-head cross-attention over the narrative's real
  phrases, and the deformable attention weights are predicted from (query + t_q); the sampling offsets come
  from the visual query alone. So *where* a pixel looks is visual, *how much* each sampled multi-scale
  context counts depends on what the narrative talks about. `drmn_text_conditioning=False` removes it.
- Top-k runs on the stride-8 logits (the resolution of the kernel . pixel product; K is clamped to the
  number of stride-8 pixels). Selection is per phrase: no phrase's choice depends on another phrase.
- The re-encoded top-k features feed the phrase update only; the shared pixel map is the encoder output
  in every round (per-phrase pixel maps would cost P x the memory).
- Switches for the choices of the reference reconstruction (JaMesLiMers/DRMN, recovered from bytecode; see
  docs/models.md): `drmn_level_projection="conv_gn_relu"` (each level through conv + GroupNorm(32) + ReLU,
  the stride-4 level reduced to stride 8 by a 4x4 stride-2 conv, so the encoder reads {8, 8, 16, 32}),
  `drmn_top_k_stride=16` (top-k pixels picked on the stride-16 level), `drmn_kernel_mlp_layers=3` (the
  round's mask kernel is an MLP of the phrase state, which itself goes on to the next round) and
  `drmn_round_pixel_projection=True` (each round matches its kernel against its own conv + GN + ReLU of
  the stride-8 map), `drmn_initial_matching="semantic_fpn"` (the initial masks and every round's pixel map
  come from a K-Net style semantic FPN over the encoded levels, with a Linear to the initial kernels),
  `drmn_phrase_ffn_dim=2048` (the phrase update's FFN is wider than the encoder's),
  `drmn_queries="noun_token"` (one query per token of each phrase through every round, the phrase's prediction
  the mean of its tokens' probabilities; drmn_queries.py), `drmn_context_query="pixel"` (a round's deformable
  query is the selected pixel's feature plus the 1-D position of the query's slot, `slot_position_embedding`,
  and the attended context is added to the phrase state; ours asks from the phrase state at the pixel's 2-D
  position and adds the context to the pixel's feature), `drmn_scale_mask_logits=False` (plain kernel . pixel
  products) and `drmn_phrase_update_dropout=0.0` (the reference's phrase attention and FFN have no dropout).
- Padded phrases: the encoder's cross-attention never reads them and a round only reads its own phrase, so
  they cannot change a real phrase's output; their own logits are computed but meaningless (the loss and
  the metric ignore them through `phrase_mask`). A narrative without real phrases gets no text context.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CrossAttention
from .channels_last import phrase_pixel_product
from .configuration_png import DRMN_GROUP_NORM_GROUPS
from .deformable_attention import MultiScaleDeformableAttention
from .drmn_queries import noun_token_queries, phrase_mean_logits
from .head_output import GroundingHeadOutput, check_token_inputs
from .position_encoding import sine_position_embedding, slot_position_embedding
from .text_encoder import pool_phrases

# Encoded levels by priority: the matching level first, then coarser context, the costly stride 4 last.
LEVEL_PRIORITY = (8, 16, 32, 4)
MATCHING_STRIDE = 8


def drmn_level_strides(num_levels: int) -> tuple[int, ...]:
    """FPN strides the DRMN encoder reads for `drmn_num_levels`, fine to coarse (e.g. 2 -> (8, 16))."""
    return tuple(sorted(LEVEL_PRIORITY[:num_levels]))


def pixel_centres(height: int, width: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(H * W) x 2 normalised (x, y) centres of the pixels of an height x width map, row-major."""
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1)  # N x 2


def select_top_pixels(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the min(k, N) highest-scoring pixels of every phrase.

    scores: B x P x N mask logits (pixels row-major). Returns B x P x K long indices, best first. Each
    phrase's selection depends only on its own scores, so padded phrases never affect real ones.
    """
    return scores.topk(min(k, scores.shape[-1]), dim=-1, sorted=True).indices


def _feed_forward(d_model: int, hidden: int, dropout: float) -> nn.Sequential:
    # ReLU in place on the fresh hidden activations (the linear layer's backward does not read them): a new
    # N x hidden tensor per layer cost more in page faults than the ReLU itself on 34,000 pixels.
    return nn.Sequential(
        nn.Linear(d_model, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, d_model)
    )


def _conv_gn_relu(in_channels: int, out_channels: int, **conv_kwargs) -> nn.Sequential:
    """conv + GroupNorm(32) + ReLU, the reference's level and pixel-map projection."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, **conv_kwargs),
        nn.GroupNorm(DRMN_GROUP_NORM_GROUPS, out_channels),
        nn.ReLU(),
    )


def level_projection(config, stride: int) -> nn.Module:
    """The projection of FPN level `stride` to the DRMN width (`drmn_level_projection`)."""
    d_model, channels = config.drmn_hidden_dim, config.fpn_channels
    if config.drmn_level_projection == "conv_gn_relu":
        if stride == 4:  # the reference reduces P2 to stride 8: (H/4 + 2 - 4) / 2 + 1 = H/8
            return _conv_gn_relu(channels, d_model, kernel_size=4, stride=2, padding=1)
        return _conv_gn_relu(channels, d_model, kernel_size=1)
    return nn.Identity() if channels == d_model else nn.Conv2d(channels, d_model, 1)


def encoded_level_strides(config) -> tuple[int, ...]:
    """Strides of the levels the DRMN encoder reads, after the level projection (P2 reduced to stride 8 by
    `drmn_level_projection="conv_gn_relu"`)."""
    strides = drmn_level_strides(config.drmn_num_levels)
    if config.drmn_level_projection == "conv_gn_relu":
        return tuple(MATCHING_STRIDE if stride == 4 else stride for stride in strides)
    return strides


class SemanticFpn(nn.Module):
    """The reference's K-Net style semantic FPN for the initial matching (`drmn_initial_matching=
    "semantic_fpn"`): each encoded level (strides 8-32) through 3x3 conv + GroupNorm + ReLU blocks with a
    x2 nearest upsampling between blocks until stride 8, sine positions added to the coarsest level first,
    the levels summed, then a 1x1 conv (no bias) + GN + ReLU. Returns the B x D x H/8 x W/8 map the initial
    kernels and every round's masks are matched against."""

    def __init__(self, d_model: int, strides: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList()
        for stride in strides:
            blocks = [_conv_gn_relu(d_model, d_model, kernel_size=3, padding=1)]
            for _ in range(int(math.log2(stride // MATCHING_STRIDE))):
                blocks += [
                    nn.Upsample(scale_factor=2.0),
                    _conv_gn_relu(d_model, d_model, kernel_size=3, padding=1),
                ]
            self.branches.append(nn.Sequential(*blocks))
        self.output = _conv_gn_relu(d_model, d_model, kernel_size=1, bias=False)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """levels: B x D x H_l x W_l encoded maps, fine to coarse."""
        coarsest = levels[-1]
        height, width = coarsest.shape[-2:]
        positions = sine_position_embedding(
            height, width, coarsest.shape[1], device=coarsest.device, dtype=coarsest.dtype
        )
        levels = [*levels[:-1], coarsest + positions.transpose(0, 1).reshape(1, -1, height, width)]
        summed = sum(branch(level) for branch, level in zip(self.branches, levels, strict=True))
        return self.output(summed)  # B x D x H/8 x W/8


def kernel_mlp(d_model: int, num_layers: int) -> nn.Module:
    """Phrase state -> mask kernel: `num_layers` x (Linear without bias + LN + ReLU), then a Linear (the
    reference's 3-layer mask MLP); the identity for 0 layers (the state is the kernel)."""
    if num_layers == 0:
        return nn.Identity()
    layers = []
    for _ in range(num_layers):
        layers += [nn.Linear(d_model, d_model, bias=False), nn.LayerNorm(d_model), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(d_model, d_model))


class DeformableEncoderLayer(nn.Module):
    """Text-conditioned deformable self-attention over all levels + FFN, each residual + LN."""

    def __init__(self, config) -> None:
        super().__init__()
        d_model = config.drmn_hidden_dim
        self.deformable_attention = MultiScaleDeformableAttention(
            d_model=d_model,
            num_heads=config.drmn_num_heads,
            num_levels=config.drmn_num_levels,
            num_points=config.drmn_num_points,
        )
        self.text_attention = (
            CrossAttention(d_model=d_model, num_heads=config.drmn_num_heads)
            if config.drmn_text_conditioning
            else None
        )
        self.attention_norm = nn.LayerNorm(d_model, eps=config.layer_norm_eps)
        self.ffn = _feed_forward(d_model, config.drmn_ffn_dim, config.drmn_dropout)
        self.ffn_norm = nn.LayerNorm(d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.drmn_dropout)

    def forward(
        self,
        pixels: torch.Tensor,
        positions: torch.Tensor,
        reference_points: torch.Tensor,
        level_shapes: list[tuple[int, int]],
        phrases: torch.Tensor,
        phrase_mask: torch.Tensor,
    ) -> torch.Tensor:
        """pixels: B x N x D (N = sum of H_l * W_l, levels concatenated fine to coarse); positions: N x D;
        reference_points: N x 2; phrases: B x P x D; phrase_mask: B x P bool. Returns B x N x D."""
        batch = pixels.shape[0]
        queries = pixels + positions  # B x N x D
        weight_queries = queries
        if self.text_attention is not None and phrases.shape[1] > 0:
            # Text context per pixel: the phrases it resembles decide how much each sample counts.
            weight_queries = self.text_attention(queries, phrases, phrase_mask).add_(queries)
        attended = self.deformable_attention(
            queries,
            reference_points.expand(batch, -1, -1),
            pixels,
            level_shapes,
            weight_queries=weight_queries,
        )
        # Residuals added in place into the fresh branch outputs (no backward reads them): every new B x N x D
        # tensor costs its page faults on CPU.
        pixels = self.attention_norm(self.dropout(attended).add_(pixels))
        return self.ffn_norm(self.dropout(self.ffn(pixels)).add_(pixels))


class RefinementRound(nn.Module):
    """One round of multi-round matching: re-encode each phrase's top-k pixels with multi-scale deformable
    attention around them, then update the phrase from those K context features."""

    def __init__(self, config) -> None:
        super().__init__()
        d_model = config.drmn_hidden_dim
        eps = config.layer_norm_eps
        self.context_attention = MultiScaleDeformableAttention(
            d_model=d_model,
            num_heads=config.drmn_num_heads,
            num_levels=config.drmn_num_levels,
            num_points=config.drmn_num_points,
        )
        self.context_norm = nn.LayerNorm(d_model, eps=eps)
        self.context_ffn = _feed_forward(d_model, config.drmn_ffn_dim, config.drmn_dropout)
        self.context_ffn_norm = nn.LayerNorm(d_model, eps=eps)
        self.phrase_attention = CrossAttention(d_model=d_model, num_heads=config.drmn_num_heads)
        self.phrase_norm = nn.LayerNorm(d_model, eps=eps)
        # The reference's phrase FFN is wider (2048) than its encoder FFNs (256), and its phrase update has no
        # dropout (`kernel_update_head.py`: dropout=0.0 for topk_attn, p=0.0 inside Ffn).
        phrase_ffn_dim = config.drmn_phrase_ffn_dim or config.drmn_ffn_dim
        update_dropout = config.drmn_phrase_update_dropout
        update_dropout = config.drmn_dropout if update_dropout is None else update_dropout
        self.phrase_ffn = _feed_forward(d_model, phrase_ffn_dim, update_dropout)
        self.phrase_ffn_norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = nn.Dropout(config.drmn_dropout)
        self.update_dropout = nn.Dropout(update_dropout)
        self.context_query = config.drmn_context_query
        self.kernel_mlp = kernel_mlp(d_model, config.drmn_kernel_mlp_layers)
        # The reference's per-round pixel map (1x1 conv without bias + GN + ReLU over the stride-8 map).
        self.pixel_projection = (
            _conv_gn_relu(d_model, d_model, kernel_size=1, bias=False)
            if config.drmn_round_pixel_projection
            else None
        )

    def forward(
        self,
        phrases: torch.Tensor,
        scores: torch.Tensor,
        matching_pixels: torch.Tensor,
        matching_positions: torch.Tensor,
        matching_centres: torch.Tensor,
        pixels: torch.Tensor,
        level_shapes: list[tuple[int, int]],
        top_k: int,
        slot_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        phrases: B x P x D phrase (or token query) states; scores: B x P x N current logits on the selection
        level. matching_pixels: B x N x D encoded pixels of the selection level (stride 8, or 16 with
        drmn_top_k_stride=16); matching_positions: N x D; matching_centres: N x 2.
        pixels: B x N x D all encoded levels (flattened, concatenated) of shapes level_shapes.
        slot_positions: P x D, each query slot's 1-D position (needed with drmn_context_query="pixel").
        Returns the new phrase states, B x P x D (this round's mask kernels are `kernel_mlp` of them).
        """
        batch, num_phrases, d_model = phrases.shape
        indices = select_top_pixels(scores, top_k)  # B x P x K
        k = indices.shape[-1]
        flat = indices.flatten(1)  # B x (P * K)
        selected = matching_pixels.gather(1, flat[..., None].expand(-1, -1, d_model))  # B x (P * K) x D
        positions = matching_positions[flat]  # B x (P * K) x D
        centres = matching_centres[flat]  # B x (P * K) x 2
        repeated = phrases.repeat_interleave(k, dim=1)  # B x (P * K) x D
        if self.context_query == "phrase":
            # The phrase asks each of its pixels for the multi-scale context relevant to it.
            queries, residual = repeated + positions, selected
        else:
            # The reference: each selected pixel, marked with its query's slot, gathers context for the
            # phrase (`deform_txt_decoder.py`: query = pixel feature + slot position, residual = the phrase).
            queries = selected + slot_positions.repeat_interleave(k, dim=0)  # B x (P * K) x D
            residual = repeated
        context = self.context_attention(queries, centres, pixels, level_shapes)
        context = self.context_norm(residual + self.dropout(context))
        context = self.context_ffn_norm(context + self.dropout(self.context_ffn(context)))
        # Each phrase attends to its own K context features only.
        context = context.view(batch * num_phrases, k, d_model)  # (B * P) x K x D
        states = phrases.reshape(batch * num_phrases, 1, d_model)  # (B * P) x 1 x D
        every_key = torch.ones(batch * num_phrases, k, dtype=torch.bool, device=phrases.device)
        attended = self.phrase_attention(states, context, every_key)
        states = self.phrase_norm(states + self.update_dropout(attended))
        states = self.phrase_ffn_norm(states + self.update_dropout(self.phrase_ffn(states)))
        return states.view(batch, num_phrases, d_model)


class DrmnHead(nn.Module):
    """DRMN's head. forward(features, phrase_features, phrase_mask) -> GroundingHeadOutput with
    pred_masks = the last round's logits and auxiliary_masks = (initial matching, rounds 1..R-1).

    With `drmn_queries="noun_token"` (`reads_token_features`) it also takes token_features and
    phrase_token_mask, runs one query per token of each phrase, returns every prediction per token in
    `query_masks` (what the loss reads) and, in pred_masks / auxiliary_masks, each phrase's mean token
    probability as a logit."""

    def __init__(self, config) -> None:
        super().__init__()
        d_model = config.drmn_hidden_dim
        self.reads_token_features = config.drmn_queries == "noun_token"
        self.context_query = config.drmn_context_query
        self.query_slots = config.drmn_query_slots
        self.strides = drmn_level_strides(config.drmn_num_levels)  # the FPN levels read (P2 may be reduced)
        self.matching_level = self.strides.index(MATCHING_STRIDE)
        self.selection_level = self.strides.index(config.drmn_top_k_stride)  # where top-k pixels are picked
        self.top_k = config.drmn_top_k
        self.input_projections = nn.ModuleList(level_projection(config, stride) for stride in self.strides)
        self.level_embedding = nn.Embedding(len(self.strides), d_model)
        self.phrase_projection = nn.Linear(config.text_config.hidden_size, d_model)  # the phrase kernels
        self.encoder_layers = nn.ModuleList(
            DeformableEncoderLayer(config) for _ in range(config.drmn_encoder_layers)
        )
        self.rounds = nn.ModuleList(RefinementRound(config) for _ in range(config.drmn_refinement_rounds))
        # The reference's initial matching: a semantic FPN map and a Linear from phrase features to kernels.
        self.semantic_fpn = self.initial_kernels = None
        if config.drmn_initial_matching == "semantic_fpn":
            self.semantic_fpn = SemanticFpn(d_model, encoded_level_strides(config))
            self.initial_kernels = nn.Linear(d_model, d_model)
        # Kernel . pixel products of D-dim LayerNormed features grow like sqrt(D): keep logits O(1). The
        # reference multiplies plainly (`kernel_head_new.py`, `kernel_update_head.py` einsums).
        self.logit_scale = d_model**-0.5 if config.drmn_scale_mask_logits else 1.0

    def forward(
        self,
        features: dict[int, torch.Tensor],
        phrase_features: torch.Tensor,
        phrase_mask: torch.Tensor,
        *,
        token_features: torch.Tensor | None = None,
        phrase_token_mask: torch.Tensor | None = None,
    ) -> GroundingHeadOutput:
        """features: stride -> B x C x H/s x W/s (strides 4..32); phrase_features: B x P x C_text;
        phrase_mask: B x P bool (True = real phrase); with drmn_queries="noun_token" also token_features:
        B x T x C_text and phrase_token_mask: B x P x T (0/1)."""
        missing = [stride for stride in (*self.strides, 4) if stride not in features]
        if missing:
            raise ValueError(f"the DRMN head needs FPN strides {self.strides} and 4; missing {missing}")
        phrase_mask = phrase_mask.bool()
        token_queries = None
        if self.reads_token_features:
            check_token_inputs(
                token_features,
                phrase_token_mask,
                switch="drmn_queries='noun_token'",
                why="one query per token",
            )
            token_queries = noun_token_queries(token_features, phrase_token_mask, phrase_mask)
            phrase_features, phrase_mask = token_queries.features, token_queries.mask  # B x Q x C_text, B x Q
        maps = [
            projection(features[s])
            for projection, s in zip(self.input_projections, self.strides, strict=True)
        ]
        batch, d_model = maps[0].shape[:2]
        device, dtype = maps[0].device, maps[0].dtype
        level_shapes = [tuple(level.shape[-2:]) for level in maps]
        positions, centres = [], []
        for level, (height, width) in enumerate(level_shapes):
            positions.append(
                sine_position_embedding(height, width, d_model, device=device, dtype=dtype)
                + self.level_embedding.weight[level]
            )  # N_l x D
            centres.append(pixel_centres(height, width, device=device, dtype=dtype))  # N_l x 2
        sizes = [height * width for height, width in level_shapes]
        pixels = torch.cat([level.flatten(2).transpose(1, 2) for level in maps], dim=1)  # B x N x D
        all_positions, all_centres = torch.cat(positions), torch.cat(centres)  # N x D, N x 2

        phrases = self.phrase_projection(phrase_features)  # B x P x D, the initial kernels
        slot_positions = None
        if self.context_query == "pixel":
            if phrases.shape[1] > self.query_slots:
                raise ValueError(
                    f"{phrases.shape[1]} queries (phrases, or noun tokens with drmn_queries='noun_token') exceed "
                    f"the drmn_query_slots={self.query_slots} slot positions of drmn_context_query='pixel'"
                )
            slot_positions = slot_position_embedding(self.query_slots, d_model, device=device, dtype=dtype)
            slot_positions = slot_positions[: phrases.shape[1]]  # P x D
        for layer in self.encoder_layers:
            pixels = layer(pixels, all_positions, all_centres, level_shapes, phrases, phrase_mask)

        matching_pixels = pixels.split(sizes, dim=1)[self.matching_level]  # B x N8 x D
        stride4_size = features[4].shape[-2:]

        matching_shape = level_shapes[self.matching_level]
        matching_map = matching_pixels.transpose(1, 2).reshape(
            batch, d_model, *matching_shape
        )  # B x D x H/8 x W/8
        selection_pixels = pixels.split(sizes, dim=1)[self.selection_level]  # B x Ns x D
        selection_shape = level_shapes[self.selection_level]

        def match(kernels: torch.Tensor, pixel_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """kernels B x P x D against the B x D x H/8 x W/8 pixel_map: logits on the selection level
            (B x P x Ns, for top-k) and stride-4 logits (B x P x H/4 x W/4)."""
            logits = phrase_pixel_product(kernels, pixel_map) * self.logit_scale  # B x P x H/8 x W/8
            num_phrases = logits.shape[1]
            if num_phrases == 0:  # no phrase in the whole batch: empty masks (interpolate rejects them)
                return logits.flatten(2), logits.new_zeros(batch, 0, *stride4_size)
            upsampled = F.interpolate(
                logits, size=stride4_size, mode="bilinear", align_corners=False
            )  # B x P x H/4 x W/4
            selection = logits
            if selection_shape != matching_shape:  # drmn_top_k_stride=16: the mask brought to stride 16
                selection = F.interpolate(logits, size=selection_shape, mode="bilinear", align_corners=False)
            return selection.flatten(2), upsampled  # B x P x Ns, B x P x H/4 x W/4

        if self.semantic_fpn is not None:
            matching_map = self.semantic_fpn(
                [
                    level.transpose(1, 2).reshape(batch, d_model, *shape)
                    for level, shape in zip(pixels.split(sizes, dim=1), level_shapes, strict=True)
                ]
            )  # B x D x H/8 x W/8
            phrases = self.initial_kernels(phrases)  # B x P x D: the initial kernels and phrase states
        pixel_map = matching_map
        scores, masks = match(phrases, pixel_map)
        all_masks = [masks]
        kernels = phrases
        for refinement in self.rounds:
            if phrases.shape[1] == 0:  # nothing to refine; every round still reports its (empty) masks
                all_masks.append(masks)
                continue
            phrases = refinement(
                phrases,
                scores,
                selection_pixels,
                positions[self.selection_level],
                centres[self.selection_level],
                pixels,
                level_shapes,
                self.top_k,
                slot_positions,
            )
            kernels = refinement.kernel_mlp(phrases)  # B x P x D (the states themselves without an MLP)
            if refinement.pixel_projection is not None:
                pixel_map = refinement.pixel_projection(matching_map)  # B x D x H/8 x W/8
            scores, masks = match(kernels, pixel_map)
            all_masks.append(masks)
        pixel_embeddings = F.interpolate(
            pixel_map, size=stride4_size, mode="bilinear", align_corners=False
        )  # B x D x H/4 x W/4: the last kernels' logits are exactly kernels . these * logit_scale
        if token_queries is None:
            return GroundingHeadOutput(
                pred_masks=all_masks[-1],
                auxiliary_masks=tuple(all_masks[:-1]),
                phrase_embeddings=kernels,
                pixel_embeddings=pixel_embeddings,
            )
        # Per phrase: the mean of its tokens' probabilities (the reference's evaluation), as a logit.
        assignment = token_queries.phrases  # B x Q x P
        phrase_masks = [phrase_mean_logits(masks, assignment) for masks in all_masks]  # each B x P x h x w
        return GroundingHeadOutput(
            pred_masks=phrase_masks[-1],
            auxiliary_masks=tuple(phrase_masks[:-1]),
            phrase_embeddings=pool_phrases(kernels, assignment.transpose(1, 2)),  # B x P x D: mean per phrase
            pixel_embeddings=pixel_embeddings,
            query_masks=tuple(all_masks),
            query_phrases=assignment,
        )


__all__ = ["DrmnHead", "drmn_level_strides", "select_top_pixels"]
