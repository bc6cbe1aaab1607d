"""PngForPanopticNarrativeGrounding: image + narrative phrases -> one mask per phrase.

pixel_values -> VisualEncoder (timm ResNet + FPN) -> strides 4..32 ┐
input_ids -> TextEncoder (BERT) -> phrase pooling -> phrase features ┴-> grounding head -> mask logits

This file and its sibling modules are copied into Hub repositories for `trust_remote_code`: they import
only third-party packages and each other (relative imports within this one flat folder).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import BertModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .attention import LocalityPerceptiveAttention
from .configuration_png import PngConfig
from .heads import GROUNDING_HEADS
from .heads_epng import PhraseMaskRefiner
from .losses import (
    PHRASES,
    QUERIES,
    SAMPLES,
    mask_loss_sums,
    sal_count_names,
    semantic_alignment_loss_sums,
)
from .losses import loss_counts as count_loss_items
from .text_encoder import PhrasePooling, TextEncoder
from .visual_encoder import VisualEncoder, build_timm_backbone

INPUT_STRIDE_MULTIPLE = 32  # the coarsest FPN level is stride 32
# transformers utilities may pass these; accepted only when they ask for nothing.
IGNORABLE_FLAGS = ("output_attentions", "output_hidden_states")


@dataclass
class PngOutput(ModelOutput):
    r"""
    loss (`torch.Tensor` of shape `()`, *optional*, returned when `labels` is given):
        Weighted total: bce_loss_weight * BCE + dice_loss_weight * Dice + sal_loss_weight * SAL (EPNG eq. 15).
    loss_dict (`dict[str, torch.Tensor]`, *optional*, returned when `labels` is given):
        The unweighted terms: `bce`, `dice` (summed over every supervised prediction for multi-round heads),
        `sal_phrase_to_pixel` and, with `sal_directions="both"`, `sal_pixel_to_phrase` (EPNG heads with SAL).
    pred_masks (`torch.Tensor` of shape `(batch_size, num_phrases, height / 4, width / 4)`):
        Mask logits per phrase at stride 4 of `pixel_values` (stride 2 with `epng_mask_stride=2`, ours). Padded
        phrases are present (ignore them with `phrase_mask`).
    auxiliary_masks (`tuple[torch.Tensor]`, *optional*):
        Earlier predictions, each like `pred_masks` (at stride 4) and supervised too: DRMN's initial matching
        and refinement rounds before the last; EPNG's logits before its mask refinement
        (`epng_mask_refinement_kernels`, ours). Empty for the paper's EPNG.
    phrase_embeddings (`torch.Tensor` of shape `(batch_size, num_phrases, hidden)`, *optional*):
        The phrase kernels of the final prediction.
    pixel_embeddings (`torch.Tensor` of shape `(batch_size, hidden, height / 4, width / 4)`, *optional*):
        The stride-4 pixel features the kernels are applied to (SAL reads them).
    """

    loss: torch.Tensor | None = None
    loss_dict: dict[str, torch.Tensor] | None = None
    pred_masks: torch.Tensor | None = None
    auxiliary_masks: tuple[torch.Tensor, ...] | None = None
    phrase_embeddings: torch.Tensor | None = None
    pixel_embeddings: torch.Tensor | None = None


class PngPreTrainedModel(PreTrainedModel):
    config_class = PngConfig
    config: PngConfig
    base_model_prefix = "png"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module) -> None:
        # The timm backbone and BERT are nested PreTrainedModels: transformers dispatches their own
        # _init_weights, and only for weights that were not loaded from a checkpoint.
        if isinstance(module, LocalityPerceptiveAttention):
            init.ones_(module.prior_scale)  # EPNG: W_j initialised to 1
        elif isinstance(module, PhrasePooling) and module.score is not None:
            init.zeros_(module.score)  # equal token scores: the attention pooling starts as the mean
        elif isinstance(module, PhraseMaskRefiner):
            init.zeros_(module.output_weight)  # a fresh refiner leaves the mask logits as they are
            init.zeros_(module.output_bias)
        elif isinstance(module, torch.nn.Conv2d):
            init.kaiming_uniform_(module.weight, a=1)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class PngForPanopticNarrativeGrounding(PngPreTrainedModel):
    def __init__(self, config: PngConfig) -> None:
        super().__init__(config)
        if config.grounding_head not in GROUNDING_HEADS:
            raise ValueError(
                f"grounding_head {config.grounding_head!r} is not available; available: {sorted(GROUNDING_HEADS)}"
            )
        self.visual_encoder = VisualEncoder(config)
        self.text_encoder = TextEncoder(config)
        self.phrase_pooling = PhrasePooling(config.phrase_pooling, config.text_config.hidden_size)
        self.head = GROUNDING_HEADS[config.grounding_head](config)
        self.post_init()
        self.apply_freezing()

    # ------------------------------------------------------------------ set-up
    def apply_freezing(self) -> None:
        """Freeze BERT (`freeze_text_encoder`) and the first ResNet stages (`backbone_trainable_stages`)."""
        self.text_encoder.requires_grad_(not self.config.freeze_text_encoder)
        self.visual_encoder.set_trainable_stages(self.config.backbone_trainable_stages)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_text_encoder:
            self.text_encoder.eval()  # a frozen BERT is a fixed feature extractor: no dropout
        return self

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, strict: bool = True, **kwargs):
        """`PreTrainedModel.from_pretrained`, plus two guarantees.

        strict: a checkpoint whose weights do not match the config (missing or unexpected keys) raises a
            ValueError naming the keys instead of running a half-random model; `strict=False` loads anyway
            (transformers then prints its load report naming them).
        Freezing (`freeze_text_encoder`, `backbone_trainable_stages`) and the visual encoder's weight layout
        (`VisualEncoder.match_weight_layout`) are re-applied to the loaded weights.
        """
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        if strict and (info["missing_keys"] or info["unexpected_keys"]):
            raise ValueError(
                f"checkpoint {pretrained_model_name_or_path} does not match its config: "
                f"missing keys {sorted(info['missing_keys'])}, unexpected keys {sorted(info['unexpected_keys'])}. "
                "Pass strict=False to load it anyway (the missing weights are then freshly initialised)."
            )
        model.apply_freezing()
        model.visual_encoder.match_weight_layout()
        return (model, info) if want_info else model

    @classmethod
    def from_pretrained_encoders(
        cls,
        config: PngConfig,
        *,
        text_model_name_or_path: str | None = None,
        backbone_pretrained: bool | str = False,
        **hub_kwargs,
    ) -> PngForPanopticNarrativeGrounding:
        """A new model whose encoders start from pretrained weights; the head starts from scratch.

        text_model_name_or_path: a BERT checkpoint (Hub id such as "bert-base-uncased" or a local directory);
            `config.text_config` is replaced by that checkpoint's config.
        backbone_pretrained: True for timm's ImageNet weights of `config.backbone_config.backbone` (from the
            Hub), or a path to a local timm weights file (.safetensors / .pth) of that architecture.
        hub_kwargs: forwarded to `BertModel.from_pretrained` (revision, cache_dir, token, ...).
        """
        bert = None
        if text_model_name_or_path is not None:
            bert = BertModel.from_pretrained(text_model_name_or_path, add_pooling_layer=False, **hub_kwargs)
            config.text_config = bert.config
        model = cls(config)
        if bert is not None:
            model.text_encoder.bert.load_state_dict(bert.state_dict())
        if backbone_pretrained:
            overlay = (
                {}
                if backbone_pretrained is True
                else {"pretrained_cfg_overlay": {"file": str(backbone_pretrained)}}
            )
            pretrained = build_timm_backbone(config.backbone_config, pretrained=True, **overlay)
            model.visual_encoder.backbone.load_state_dict(pretrained.state_dict())
        model.apply_freezing()
        return model

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        phrase_token_mask: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        phrase_mask: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        loss_counts: dict[str, torch.Tensor] | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PngOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Normalised images; height and width multiples of 32.
        input_ids (`torch.LongTensor` of shape `(batch_size, seq_len)` or `(batch_size, num_windows, seq_len)`):
            WordPiece ids of the narratives (several overlapping windows per narrative in the second form).
        phrase_token_mask (`torch.Tensor` of shape `(batch_size, num_phrases, num_tokens)`):
            1 where token t belongs to phrase p; num_tokens = seq_len (or num_windows * seq_len, window-major).
            A phrase's feature is the mean of its tokens' features.
        attention_mask, token_type_ids: as `input_ids`, passed to BERT.
        phrase_mask (`torch.Tensor` of shape `(batch_size, num_phrases)`, *optional*):
            1 for real phrases, 0 for padding. Defaults to every phrase that has tokens.
        pixel_mask (`torch.Tensor` of shape `(batch_size, height, width)`, *optional*):
            1 for real pixels, 0 for padding; padded pixels are left out of the loss.
        labels (`torch.Tensor` of shape `(batch_size, num_phrases, height, width)`, *optional*):
            Ground-truth 0/1 masks at the resolution of `pixel_values` (or already at stride 4).
        loss_counts (`dict[str, torch.Tensor]`, *optional*):
            The item counts the loss terms are normalised by (see `losses.loss_counts`), e.g. all-reduced over
            processes and divided by the number of processes. Defaults to this batch's counts.
        """
        # Outputs this model does not produce may be asked for only as "no"; any other keyword is a typo
        # (e.g. `phrase_masks=`) that would otherwise be silently ignored.
        unknown = sorted(k for k, v in kwargs.items() if k not in IGNORABLE_FLAGS or v)
        if unknown:
            raise TypeError(
                f"PngForPanopticNarrativeGrounding.forward() got unexpected or unsupported arguments {unknown}"
            )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        phrase_mask = self._check_inputs(pixel_values, input_ids, phrase_token_mask, phrase_mask, labels)

        features = self.visual_encoder(pixel_values)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_text_encoder):
            token_features = self.text_encoder(input_ids, attention_mask, token_type_ids)
        phrase_features = self.phrase_pooling(token_features, phrase_token_mask).to(
            features[4].dtype
        )  # B x P x C
        if getattr(self.head, "reads_token_features", False):  # e.g. DRMN's one query per noun token
            head_output = self.head(
                features,
                phrase_features,
                phrase_mask,
                token_features=token_features.to(features[4].dtype),
                phrase_token_mask=phrase_token_mask,
            )
        else:
            head_output = self.head(features, phrase_features, phrase_mask)

        loss = loss_dict = None
        if labels is not None:
            loss, loss_dict = self._compute_loss(
                head_output, labels, phrase_mask, pixel_mask, loss_counts, phrase_token_mask
            )

        output = PngOutput(
            loss=loss,
            loss_dict=loss_dict,
            pred_masks=head_output.pred_masks,
            auxiliary_masks=head_output.auxiliary_masks,
            phrase_embeddings=head_output.phrase_embeddings,
            pixel_embeddings=head_output.pixel_embeddings,
        )
        return output if return_dict else output.to_tuple()

    def _check_inputs(self, pixel_values, input_ids, phrase_token_mask, phrase_mask, labels) -> torch.Tensor:
        """Clear errors for inputs that would otherwise fail deep inside torch; returns the bool phrase mask."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values must be (batch, 3, height, width) RGB images, got shape {tuple(pixel_values.shape)}"
            )
        height, width = pixel_values.shape[-2:]
        if height % INPUT_STRIDE_MULTIPLE or width % INPUT_STRIDE_MULTIPLE:
            raise ValueError(
                f"pixel_values height and width must be multiples of {INPUT_STRIDE_MULTIPLE}, got {height}x{width}; "
                "resize or pad the images (PngImageProcessor does this)"
            )
        batch = pixel_values.shape[0]
        if input_ids.dim() not in (2, 3) or input_ids.shape[0] != batch:
            raise ValueError(
                f"input_ids must be (batch, seq_len) or (batch, windows, seq_len) with batch {batch}, "
                f"got shape {tuple(input_ids.shape)}"
            )
        num_tokens = input_ids.shape[-1] * (input_ids.shape[1] if input_ids.dim() == 3 else 1)
        if (
            phrase_token_mask.dim() != 3
            or phrase_token_mask.shape[0] != batch
            or phrase_token_mask.shape[2] != num_tokens
        ):
            raise ValueError(
                f"phrase_token_mask must be (batch={batch}, num_phrases, num_tokens={num_tokens}), "
                f"got shape {tuple(phrase_token_mask.shape)}"
            )
        num_phrases = phrase_token_mask.shape[1]
        has_tokens = phrase_token_mask.bool().any(dim=-1)  # B x P
        if phrase_mask is None:
            phrase_mask = has_tokens
        else:
            if tuple(phrase_mask.shape) != (batch, num_phrases):
                raise ValueError(
                    f"phrase_mask must be (batch={batch}, num_phrases={num_phrases}) like phrase_token_mask, "
                    f"got shape {tuple(phrase_mask.shape)}"
                )
            phrase_mask = phrase_mask.bool()
            empty = phrase_mask & ~has_tokens
            if empty.any():
                sample, phrase = (int(i) for i in empty.nonzero()[0])
                raise ValueError(
                    f"phrase {phrase} of sample {sample} is marked real in phrase_mask but has no token in "
                    "phrase_token_mask"
                )
        if labels is not None:
            stride4 = (height // 4, width // 4)
            if labels.dim() != 4 or labels.shape[:2] != (batch, num_phrases):
                raise ValueError(
                    f"labels must be (batch={batch}, num_phrases={num_phrases}, height, width), "
                    f"got shape {tuple(labels.shape)}: one mask per phrase of phrase_token_mask"
                )
            if tuple(labels.shape[-2:]) not in ((height, width), stride4):
                raise ValueError(
                    f"labels must have the size of pixel_values ({height}x{width}) or its stride-4 size "
                    f"({stride4[0]}x{stride4[1]}), got {labels.shape[-2]}x{labels.shape[-1]}"
                )
            # the visual encoder gives the stem's map exactly when the masks are at stride 2 (EPNG head only)
            if tuple(labels.shape[-2:]) == stride4 and self.visual_encoder.stem_projection is not None:
                raise ValueError(
                    f"labels are at stride 4 ({stride4[0]}x{stride4[1]}) but this model's masks are at stride 2 "
                    f"(epng_mask_stride=2): give labels at the size of pixel_values ({height}x{width})"
                )
        return phrase_mask

    def _compute_loss(
        self, head_output, labels, phrase_mask, pixel_mask, counts_override, phrase_token_mask=None
    ):
        config = self.config
        logits = head_output.pred_masks

        def at_size(size: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
            """The labels area-averaged to `size` (B x P x h x w) and the valid pixels there (B x h x w)."""
            targets = (
                F.interpolate(labels.float(), size=size, mode="area")
                if labels.shape[-2:] != size
                else labels.float()
            )
            if pixel_mask is None:
                valid = torch.ones(logits.shape[0], *size, dtype=torch.bool, device=logits.device)
            else:
                valid = F.interpolate(pixel_mask[:, None].float(), size=size, mode="area")[:, 0] >= 0.5
            return targets, valid

        # SAL and the counts live at stride 4 (where the trainer's global counts are computed); the mask
        # losses at the logits' stride (4, or 2 with `epng_mask_stride=2`).
        embeddings = head_output.pixel_embeddings
        stride4 = embeddings.shape[-2:] if embeddings is not None else logits.shape[-2:]
        targets, pixel_valid = at_size(stride4)  # B x P x H/4 x W/4, B x H/4 x W/4
        counts = count_loss_items(targets, phrase_mask, pixel_valid, phrase_token_mask)
        if counts_override is not None:
            counts.update(
                {
                    name: torch.as_tensor(value, device=logits.device)
                    for name, value in counts_override.items()
                }
            )

        per_sample = config.mask_loss_reduction == "samples"

        def normalised(total, name):
            return total / counts[SAMPLES if per_sample else name].clamp(min=1.0)

        # Mask losses at each prediction's stride (ours) or on probabilities upsampled to the input size (EPNG
        # eqs. 10-11).
        mask_targets, mask_valid = targets, pixel_valid
        if config.mask_loss_resolution == "input":
            if labels.shape[-2:] == stride4:
                raise ValueError(
                    "mask_loss_resolution='input' needs labels at the size of pixel_values, got stride-4 labels "
                    f"({stride4[0]}x{stride4[1]})"
                )
            mask_targets = labels.float()  # B x P x H x W
            mask_valid = (
                torch.ones(labels.shape[0], *labels.shape[-2:], dtype=torch.bool, device=labels.device)
                if pixel_mask is None
                else pixel_mask.bool()
            )
        # The released EPNG upsamples its probabilities with align_corners=True like its feature maps.
        align_corners = config.grounding_head == "epng" and config.epng_upsample_align_corners
        predictions, items, item_count = (*head_output.auxiliary_masks, logits), phrase_mask, PHRASES
        if head_output.query_masks is not None:
            # Several queries per phrase (DRMN's noun tokens): each query against its phrase's mask, every
            # query one item, as the reference's loss on its per-token targets.
            predictions, items, item_count = (
                head_output.query_masks,
                head_output.query_phrases.any(-1),
                QUERIES,
            )
            query_phrases = head_output.query_phrases.to(mask_targets.dtype)
            mask_targets = torch.einsum("bqp,bphw->bqhw", query_phrases, mask_targets)  # B x Q x h x w
        bce = dice = logits.new_zeros((), dtype=torch.float32)
        for prediction in predictions:  # deep supervision on every round
            prediction_targets, prediction_valid = mask_targets, mask_valid
            if config.mask_loss_resolution == "stride4" and prediction.shape[-2:] != mask_targets.shape[-2:]:
                # the labels at the prediction's own size: stride 2 with `epng_mask_stride=2`
                prediction_targets, prediction_valid = at_size(prediction.shape[-2:])
            bce_sum, dice_sum = mask_loss_sums(
                prediction,
                prediction_targets,
                items,
                prediction_valid,
                resolution=config.mask_loss_resolution,
                dice_eps=config.dice_eps,
                reduction=config.mask_loss_reduction,
                align_corners=align_corners,
            )
            bce = bce + normalised(bce_sum, item_count)
            dice = dice + normalised(dice_sum, item_count)
        loss_dict = {"bce": bce, "dice": dice}
        loss = config.bce_loss_weight * bce + config.dice_loss_weight * dice
        if config.sal_loss_weight > 0 and head_output.phrase_embeddings is not None:
            to_pixel, to_phrase = semantic_alignment_loss_sums(
                head_output.phrase_embeddings,
                head_output.pixel_embeddings,
                targets,
                phrase_mask,
                pixel_valid,
                config.sal_temperature,
                similarity=config.sal_similarity,
                positives=config.sal_positives,
                aggregation=config.sal_aggregation,
                reduction=config.mask_loss_reduction,
            )
            phrases_count, pixels_count = sal_count_names(config.sal_positives)
            loss_dict["sal_phrase_to_pixel"] = normalised(to_pixel, phrases_count)
            sal = loss_dict["sal_phrase_to_pixel"]
            if config.sal_directions == "both":
                loss_dict["sal_pixel_to_phrase"] = normalised(to_phrase, pixels_count)
                sal = sal + loss_dict["sal_pixel_to_phrase"]
            loss = loss + config.sal_loss_weight * sal
        return loss, loss_dict


__all__ = ["PngForPanopticNarrativeGrounding", "PngOutput", "PngPreTrainedModel"]
