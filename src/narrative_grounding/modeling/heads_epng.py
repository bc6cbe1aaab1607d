"""EPNG's grounding head (Wang et al., AAAI 2023): multi-modal communicator + phrase-kernel masks.

Data flow (shapes for a 640x640 input, paper sizes):
  FPN strides 8/16/32 (80x80, 40x40, 20x20 x 256) -> eq. 2 fusion at stride 16 (40x40 x 768)
  -> S communicator layers over the 1600 pixels: LPA (eqs. 3-8) -> cross-attention to phrases (eq. 9) -> FFN
  -> upsample to stride 4 (160x160) -> mask logits = phrase feature . pixel feature (eq. 10).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CrossAttention, LocalityPerceptiveAttention
from .channels_last import phrase_pixel_product, pointwise_convolution
from .head_output import GroundingHeadOutput, check_token_inputs
from .position_encoding import sine_position_embedding


class PixelSelfAttention(nn.Module):
    """Plain multi-head self-attention over a B x N x D pixel sequence: LPA (EPNG eqs. 5-7) with the locality
    prior disabled, i.e. a prior multiplier of 1 on every score. The "none" and "absolute" rows of EPNG
    Table 2. Same projections as `LocalityPerceptiveAttention` (fused qkv, out_proj), no prior parameter."""

    def __init__(self, *, d_model: int, num_heads: int, attention_dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: B x N x D. Returns B x N x D."""
        batch, num_pixels, d_model = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, num_pixels, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each B x Hd x N x Dh
        attended = F.scaled_dot_product_attention(
            query, key, value, dropout_p=self.attention_dropout if self.training else 0.0
        )  # B x Hd x N x Dh
        attended = attended.transpose(1, 2).reshape(batch, num_pixels, d_model)  # B x N x D
        return self.out_proj(attended)


def feed_forward(config) -> nn.Sequential:
    """The FFN of a communicator or phrase-decoder layer: Linear, ReLU, dropout, Linear (d_model -> ffn_dim ->
    d_model)."""
    return nn.Sequential(
        nn.Linear(config.d_model, config.ffn_dim),
        nn.ReLU(),
        nn.Dropout(config.dropout),
        nn.Linear(config.ffn_dim, config.d_model),
    )


class CommunicatorLayer(nn.Module):
    """One layer of the multi-modal communicator: LPA, cross-attention to phrases, FFN; each residual + LN.

    `epng_residual_norm="double"` reproduces EPNG's released code, whose attention modules already return
    LN(x + dropout(attention(x))) and whose layer adds x and normalises again around them:
    x' = LN(x + dropout(LN_inner(x + dropout(attention(x))))), for LPA and for the cross-attention (5 LayerNorms
    a layer with the FFN's). "single" is eqs. 8-9 as written: x' = LN(x + dropout(attention(x))).
    """

    def __init__(self, config) -> None:
        super().__init__()
        d_model = config.d_model
        attention_dropout = config.epng_attention_dropout
        # EPNG Table 2: LPA, or plain self-attention ("none" / "absolute"; the latter adds position codes
        # to the pixel tokens in EpngHead). Exactly one of the two attributes is set.
        self.lpa = self.self_attention = None
        if config.epng_position_encoding in ("lpa", "lpa_absolute"):
            self.lpa = LocalityPerceptiveAttention(
                d_model=d_model,
                num_heads=config.num_attention_heads,
                distance_clamp=config.lpa_distance_clamp,
                distance_form=config.lpa_distance,
                implementation=config.lpa_implementation,
                attention_dropout=attention_dropout,
            )
        else:
            self.self_attention = PixelSelfAttention(
                d_model=d_model, num_heads=config.num_attention_heads, attention_dropout=attention_dropout
            )
        self.lpa_norm = nn.LayerNorm(d_model, eps=config.layer_norm_eps)
        self.cross_attention = CrossAttention(
            d_model=d_model, num_heads=config.num_attention_heads, attention_dropout=attention_dropout
        )
        self.cross_norm = nn.LayerNorm(d_model, eps=config.layer_norm_eps)
        # The released code's inner Add & LN of each attention block (None: eqs. 8-9 as written).
        double = config.epng_residual_norm == "double"
        self.lpa_inner_norm = nn.LayerNorm(d_model, eps=config.layer_norm_eps) if double else None
        self.cross_inner_norm = nn.LayerNorm(d_model, eps=config.layer_norm_eps) if double else None
        self.ffn = feed_forward(config)
        self.ffn_norm = nn.LayerNorm(d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        pixels: torch.Tensor,
        height: int,
        width: int,
        phrases: torch.Tensor,
        phrase_mask: torch.Tensor,
    ) -> torch.Tensor:
        """pixels: B x N x D (N = height * width); phrases: B x P x D; phrase_mask: B x P bool."""
        attended = (
            self.lpa(pixels, height, width) if self.lpa is not None else self.self_attention(pixels)
        )  # B x N x D
        if self.lpa_inner_norm is not None:
            attended = self.lpa_inner_norm(pixels + self.dropout(attended))
        pixels = self.lpa_norm(pixels + self.dropout(attended))  # eq. 8
        attended = self.cross_attention(pixels, phrases, phrase_mask)  # B x N x D
        if self.cross_inner_norm is not None:
            attended = self.cross_inner_norm(pixels + self.dropout(attended))
        pixels = self.cross_norm(pixels + self.dropout(attended))  # eq. 9
        return self.ffn_norm(pixels + self.dropout(self.ffn(pixels)))


class PhraseDecoderLayer(nn.Module):
    """Ours, not in EPNG (`epng_phrase_decoder_layers`): the phrases read the image before they become mask
    kernels. Self-attention among the phrases of a narrative, cross-attention of each phrase to its own tokens
    (`epng_phrase_decoder_reads_tokens`), cross-attention of each phrase to the pixel map, FFN; each residual +
    LayerNorm, as in the communicator layers."""

    def __init__(self, config) -> None:
        super().__init__()
        d_model, heads = config.d_model, config.num_attention_heads
        dropout = config.epng_attention_dropout
        self.self_attention = CrossAttention(d_model=d_model, num_heads=heads, attention_dropout=dropout)
        self.self_norm = nn.LayerNorm(d_model, eps=config.layer_norm_eps)
        # A phrase's kernel starts as the mean of its tokens; reading them one by one lets it keep "ring" and
        # "pink cross" of "the ring beside the pink cross" apart, and weigh them by what the image holds.
        self.token_attention = self.token_norm = None
        if config.epng_phrase_decoder_reads_tokens:
            self.token_attention = CrossAttention(
                d_model=d_model,
                num_heads=heads,
                key_dim=config.text_config.hidden_size,
                attention_dropout=dropout,
            )
            self.token_norm = nn.LayerNorm(d_model, eps=config.layer_norm_eps)
        self.cross_attention = CrossAttention(d_model=d_model, num_heads=heads, attention_dropout=dropout)
        self.cross_norm = nn.LayerNorm(d_model, eps=config.layer_norm_eps)
        self.ffn = feed_forward(config)
        self.ffn_norm = nn.LayerNorm(d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        phrases: torch.Tensor,
        phrase_mask: torch.Tensor,
        pixels: torch.Tensor,
        pixel_mask: torch.Tensor,
        tokens: torch.Tensor | None = None,
        phrase_token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """phrases: B x P x D; phrase_mask: B x P bool; pixels: B x N x D; pixel_mask: B x N bool (all True);
        with `epng_phrase_decoder_reads_tokens` also tokens: B x T x C_text and phrase_token_mask: B x P x T
        (which tokens each phrase reads). Returns B x P x D."""
        attended = self.self_attention(phrases, phrases, phrase_mask)
        phrases = self.self_norm(phrases + self.dropout(attended))
        if self.token_attention is not None:
            attended = self.token_attention(phrases, tokens, phrase_token_mask)
            phrases = self.token_norm(phrases + self.dropout(attended))
        phrases = self.cross_norm(phrases + self.dropout(self.cross_attention(phrases, pixels, pixel_mask)))
        return self.ffn_norm(phrases + self.dropout(self.ffn(phrases)))


class PhraseMaskRefiner(nn.Module):
    """Ours, not in EPNG (`epng_mask_refinement_kernels` K > 0): a small CNN over each phrase's own maps that
    corrects its mask logits where the choice depends on the layout of the image.

    A phrase . pixel product scores every pixel on its own: it can say "orange ring" or "near this place",
    but "the ring beside the pink cross" or "the biggest hexagon" compares regions with each other. Each phrase
    here produces K more kernels (K maps against the same pixel map, e.g. the reference object of a relation);
    its mask logits and these maps, pooled to stride 8, pass through 3 x 3 convolutions with dilations 1, 2, 4
    and 8 (a receptive field of 31 cells: 248 input pixels) plus the image-wide maximum of the first layer's
    features, and a 1 x 1 convolution adds the result, upsampled to stride 4, to the logits. That convolution
    starts at zero, so a fresh refiner returns the logits unchanged. The CNN runs on the real phrases only.
    """

    DILATIONS = (1, 2, 4, 8)

    def __init__(self, config) -> None:
        super().__init__()
        d_model, channels = config.d_model, config.epng_mask_refinement_channels
        self.num_kernels = config.epng_mask_refinement_kernels
        self.kernels = nn.Linear(d_model, self.num_kernels * d_model)
        self.convs = nn.ModuleList(
            nn.Conv2d(self.num_kernels + 1 if i == 0 else channels, channels, 3, padding=d, dilation=d)
            for i, d in enumerate(self.DILATIONS)
        )
        self.global_context = nn.Linear(channels, channels)
        # The 1 x 1 output convolution, as parameters of this module so that it is zero-initialised here
        # (PngPreTrainedModel) rather than as a convolution.
        self.output_weight = nn.Parameter(torch.zeros(channels))
        self.output_bias = nn.Parameter(torch.zeros(()))

    def forward(
        self,
        mask_logits: torch.Tensor,
        phrases: torch.Tensor,
        pixel_map: torch.Tensor,
        phrase_mask: torch.Tensor,
        logit_scale: float,
    ) -> torch.Tensor:
        """mask_logits: B x P x h x w; phrases: B x P x D; pixel_map: B x D x h x w; phrase_mask: B x P bool.
        Returns the refined B x P x h x w logits (padded phrases unchanged)."""
        batch, num_phrases, height, width = mask_logits.shape
        if num_phrases == 0:  # pooling refuses an empty phrase axis; there is nothing to refine
            return mask_logits
        real = phrase_mask.bool()
        # At stride 8: pooling commutes with the kernel products, so the maps are made from the pooled map.
        pixel_map = F.avg_pool2d(pixel_map, kernel_size=2, ceil_mode=True)  # B x D x h' x w'
        kernels = self.kernels(phrases).view(
            batch, num_phrases * self.num_kernels, phrases.shape[-1]
        )  # B x PK x D
        maps = phrase_pixel_product(kernels, pixel_map).unflatten(1, (num_phrases, self.num_kernels))
        maps = maps * logit_scale  # B x P x K x h' x w'
        pooled_logits = F.avg_pool2d(mask_logits, kernel_size=2, ceil_mode=True)  # B x P x h' x w'
        hidden = torch.cat([pooled_logits[:, :, None], maps], dim=2)[real]  # R x (K + 1) x h' x w'
        if hidden.device.type == "cpu":  # oneDNN convolves these narrow maps ~1.5x faster NHWC on CPU
            hidden = hidden.contiguous(memory_format=torch.channels_last)
        hidden = F.gelu(self.convs[0](hidden))
        hidden = hidden + self.global_context(hidden.amax(dim=(-2, -1)))[:, :, None, None]
        for conv in self.convs[1:]:
            hidden = hidden + F.gelu(conv(hidden))
        correction = torch.einsum("rchw,c->rhw", hidden, self.output_weight) + self.output_bias
        correction = F.interpolate(
            correction[:, None], size=(height, width), mode="bilinear", align_corners=False
        )[:, 0]  # R x h x w
        return mask_logits.index_put(real.nonzero(as_tuple=True), mask_logits[real] + correction)


class EpngHead(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        d_model = config.d_model
        fused_channels = 3 * config.fpn_channels
        self.phrase_projection = nn.Linear(config.text_config.hidden_size, d_model)
        # EPNG's released code bounds the projected phrases with ReLU6; the paper names a linear layer only.
        self.phrase_activation = nn.ReLU6() if config.epng_phrase_activation == "relu6" else nn.Identity()
        # eq. 2 concatenates three FPN levels: 3 x 256 = 768 = d_model in the paper, so no projection there.
        self.fuse_projection = (
            nn.Identity() if fused_channels == d_model else nn.Conv2d(fused_channels, d_model, kernel_size=1)
        )
        self.layers = nn.ModuleList(CommunicatorLayer(config) for _ in range(config.num_communicator_layers))
        self.stride4_skip = (
            nn.Conv2d(config.fpn_channels, d_model, kernel_size=1) if config.use_stride4_skip else None
        )
        self.absolute_position = config.epng_position_encoding in ("absolute", "lpa_absolute")
        self.communicator_stride = config.epng_communicator_stride
        # Dot products of D-dim features grow like sqrt(D): our default scales them so initial logits are O(1).
        # EPNG eq. 10 and the released code use the plain dot product (epng_scale_mask_logits=False).
        self.logit_scale = d_model**-0.5 if config.epng_scale_mask_logits else 1.0
        # The release upsamples with nn.Upsample(mode="bilinear", align_corners=True) (MainModule.py 16-17, 35,
        # 49): corner pixels of the coarse and the fine map coincide instead of their outer edges.
        self.align_corners = config.epng_upsample_align_corners
        self.phrase_decoder = nn.ModuleList(
            PhraseDecoderLayer(config) for _ in range(config.epng_phrase_decoder_layers)
        )
        self.refiner = PhraseMaskRefiner(config) if config.epng_mask_refinement_kernels else None
        self.reads_token_features = config.epng_phrase_decoder_reads_tokens  # validated: needs decoder layers
        # Ours (`epng_mask_stride=2`): each phrase also weighs the stem's stride-2 map (the visual encoder's
        # features[2], fpn_channels wide), so that its mask can follow the image's edges at stride 2.
        self.stem_kernels = nn.Linear(d_model, config.fpn_channels) if config.epng_mask_stride == 2 else None

    def _resize(self, feature: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.interpolate(feature, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(
        self,
        features: dict[int, torch.Tensor],
        phrase_features: torch.Tensor,
        phrase_mask: torch.Tensor,
        *,
        token_features: torch.Tensor | None = None,
        phrase_token_mask: torch.Tensor | None = None,
    ) -> GroundingHeadOutput:
        """features: stride -> B x C x H/s x W/s; phrase_features: B x P x C_text; phrase_mask: B x P bool;
        with `epng_phrase_decoder_reads_tokens` also token_features: B x T x C_text and phrase_token_mask:
        B x P x T (0/1)."""
        if self.reads_token_features:
            check_token_inputs(
                token_features,
                phrase_token_mask,
                switch="epng_phrase_decoder_reads_tokens",
                why="the phrase decoder reads each phrase's tokens",
            )
        if self.communicator_stride == 16:
            grid = features[16].shape[-2:]
            levels = [F.avg_pool2d(features[8], kernel_size=2), features[16]]  # Down(F_v1), F_v2
        else:  # ours: every level on the stride-8 grid
            grid = features[8].shape[-2:]
            levels = [features[8], self._resize(features[16], grid)]
        fused = torch.cat(
            [*levels, self._resize(features[32], grid)], dim=1
        )  # B x 3C x h x w, eq. 2 (Up(F_v3))
        fused = self.fuse_projection(fused)  # B x D x h x w
        batch, d_model, height, width = fused.shape
        pixels = fused.flatten(2).transpose(1, 2)  # B x N x D
        if self.absolute_position:  # EPNG Table 2 "absolute positional embedding"
            pixels = pixels + sine_position_embedding(
                height, width, d_model, device=pixels.device, dtype=pixels.dtype
            )  # N x D, broadcast over B
        phrases = self.phrase_activation(self.phrase_projection(phrase_features))  # B x P x D
        for layer in self.layers:
            pixels = layer(pixels, height, width, phrases, phrase_mask)
        pixel_map = pixels.transpose(1, 2).reshape(batch, d_model, height, width)  # B x D x h x w
        stride4_size = features[4].shape[-2:]
        pixel_map = self._resize(pixel_map, stride4_size)  # B x D x H/4 x W/4
        if self.stride4_skip is not None:
            pixel_map = pixel_map + pointwise_convolution(self.stride4_skip, features[4])
        if len(self.phrase_decoder):
            phrases, pixel_map = self._decode_phrases(
                phrases, phrase_mask, pixel_map, token_features, phrase_token_mask
            )
        mask_logits = phrase_pixel_product(phrases, pixel_map) * self.logit_scale  # eq. 10
        auxiliary_masks = ()
        if self.refiner is not None:  # the unrefined logits stay supervised (deep supervision)
            auxiliary_masks = (mask_logits,)
            mask_logits = self.refiner(mask_logits, phrases, pixel_map, phrase_mask, self.logit_scale)
        if self.stem_kernels is not None:  # the unrefined logits stay supervised at stride 4
            if 2 not in features:
                raise ValueError(
                    "epng_mask_stride=2 needs the stem's stride-2 map in features[2] (the visual encoder of a "
                    "model built with epng_mask_stride=2 gives it)"
                )
            mask_logits = self._stride2_logits(mask_logits, phrases, features[2])
        return GroundingHeadOutput(
            pred_masks=mask_logits,
            auxiliary_masks=auxiliary_masks,
            phrase_embeddings=phrases,
            pixel_embeddings=pixel_map,
        )

    def _stride2_logits(
        self, mask_logits: torch.Tensor, phrases: torch.Tensor, stem_map: torch.Tensor
    ) -> torch.Tensor:
        """The stride-4 logits (B x P x H/4 x W/4) upsampled to stride 2, plus each phrase's kernel of the
        stem's stride-2 map (B x C x H/2 x W/2) applied to that map. Returns B x P x H/2 x W/2.

        The same as adding a projection of the stem's map to the upsampled pixel map before the phrase . pixel
        product (bilinear upsampling is linear), for a fraction of the work: P maps are upsampled instead of
        d_model, and the stride-2 products have C channels instead of d_model."""
        kernels = self.stem_kernels(phrases)  # B x P x C
        detail = phrase_pixel_product(kernels, stem_map)
        return self._resize(mask_logits, stem_map.shape[-2:]) + detail * stem_map.shape[1] ** -0.5

    def _decode_phrases(
        self,
        phrases: torch.Tensor,
        phrase_mask: torch.Tensor,
        pixel_map: torch.Tensor,
        token_features: torch.Tensor | None,
        phrase_token_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The phrase decoder (ours): the pixel map gains a sine position code, which the phrases read with
        the features, so that a kernel can select a place as well as an appearance. Returns the decoded
        phrases (B x P x D) and the position-coded pixel map (B x D x h x w) they are matched against."""
        batch, d_model, height, width = pixel_map.shape
        position = sine_position_embedding(
            height, width, d_model, device=pixel_map.device, dtype=pixel_map.dtype
        )
        pixel_map = pixel_map + position.transpose(0, 1).reshape(1, d_model, height, width)
        # The phrases read the map pooled to stride 8: a quarter of the key and value projections, and still
        # a cell per ~8 input pixels to tell instances apart by where they are.
        pixels = (
            F.avg_pool2d(pixel_map, kernel_size=2, ceil_mode=True).flatten(2).transpose(1, 2)
        )  # B x N x D
        pixel_mask = torch.ones(pixels.shape[:2], dtype=torch.bool, device=pixels.device)
        for layer in self.phrase_decoder:
            phrases = layer(phrases, phrase_mask, pixels, pixel_mask, token_features, phrase_token_mask)
        return phrases, pixel_map
