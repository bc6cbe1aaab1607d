"""PngConfig: the one configuration of a Panoptic Narrative Grounding model.

A model is a visual encoder (a timm ResNet through transformers' `TimmBackboneConfig`, plus an FPN
neck), a text encoder (BERT, `BertConfig`) and a grounding head (a name in `heads.GROUNDING_HEADS`:
`"epng"` or `"drmn"`) with its hyper-parameters. Named variants live as folders (saved configs) in `hub_configs/`.

The task's pipeline travels with the configuration: `save_pretrained` copies `pipeline_png.py` (and the
processor modules it imports) beside config.json and names it under `custom_pipelines`, which is what
transformers' `pipeline(..., trust_remote_code=True)` reads.

This file is copied into Hub repositories for `trust_remote_code`: it imports only third-party
packages and sibling modules of this folder.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from typing import TYPE_CHECKING, Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import BertConfig, PreTrainedConfig, TimmBackboneConfig
from transformers.configuration_utils import SubConfigSpec

if TYPE_CHECKING:
    # Never executed, but read: transformers finds the files a module needs by the pattern of its relative
    # imports (dynamic_module_utils.get_relative_imports), so this line makes the pipeline module, and the
    # processor modules it imports, travel with this file: copied by save_pretrained beside config.json and
    # fetched with it by a trust_remote_code load, whose copy of this class then saves them again.
    from .pipeline_png import PanopticNarrativeGroundingPipeline  # noqa: F401


LPA_DISTANCE_FORMS = ("squared", "euclidean")
LPA_IMPLEMENTATIONS = ("auto", "flex", "direct")
# Switches with a fixed set of values, the default first: the EPNG Table 2 ablation with our "lpa_absolute",
# our own switches, then the released-code switches (whose default is our earlier choice).
SWITCH_CHOICES = {
    "epng_position_encoding": ("lpa", "none", "absolute", "lpa_absolute"),
    "epng_communicator_stride": (16, 8),
    "epng_mask_stride": (4, 2),
    "phrase_pooling": ("mean", "attention"),
    "epng_phrase_activation": ("none", "relu6"),
    "epng_residual_norm": ("single", "double"),
    "mask_loss_resolution": ("stride4", "input"),
    "mask_loss_reduction": ("phrases", "samples"),
    "sal_similarity": ("cosine", "dot"),
    "sal_positives": ("majority", "any"),
    "sal_aggregation": ("mean_log", "log_sum"),
    "sal_directions": ("both", "phrase_to_pixel"),
    "drmn_level_projection": ("linear", "conv_gn_relu"),
    "drmn_initial_matching": ("kernel", "semantic_fpn"),
    "drmn_queries": ("phrase", "noun_token"),
    "drmn_context_query": ("phrase", "pixel"),
}
DRMN_GROUP_NORM_GROUPS = 32  # the reference's GroupNorm(32, C)
# The smallest value of each BertConfig size: zero or negative ones failed deep inside torch (an IndexError from
# a 0-row embedding, a negative tensor dimension). No encoder layer at all is allowed: the phrase features are
# then the token embeddings alone.
TEXT_MIN_SIZES = {
    "vocab_size": 1,
    "hidden_size": 1,
    "num_attention_heads": 1,
    "intermediate_size": 1,
    "max_position_embeddings": 1,
    "type_vocab_size": 1,
    "num_hidden_layers": 0,
}
TEXT_DROPOUTS = ("hidden_dropout_prob", "attention_probs_dropout_prob")
# timm ResNet arguments the tiny variants set, one value per stage: a stage of 0 blocks (or a negative count)
# built without error and silently skipped its downsampling.
BACKBONE_STAGE_ARGS = ("layers", "channels")
NUM_BACKBONE_STAGES = 4

# The pipeline saved with every model, as transformers' `pipeline()` reads it from config.json: the class as
# "module.Class" of the repository, the model classes as names in `transformers` (AutoModel follows the
# config's auto_map to the repository's modeling code). The module is this folder's pipeline_png.py.
PIPELINE_TASK = "panoptic-narrative-grounding"
CUSTOM_PIPELINE = {
    "impl": "pipeline_png.PanopticNarrativeGroundingPipeline",
    "pt": ["AutoModel"],
    "type": "multimodal",
}

# ResNet-101 stages 1-4 (strides 4, 8, 16, 32): the FPN neck reads all four.
DEFAULT_BACKBONE = {"backbone": "resnet101", "out_indices": [1, 2, 3, 4], "freeze_batch_norm_2d": True}
# bert-base-uncased sizes.
DEFAULT_TEXT = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
}


@strict
class PngConfig(PreTrainedConfig):
    r"""
    Configuration of [`PngForPanopticNarrativeGrounding`]. Defaults reproduce EPNG (AAAI 2023) with a
    ResNet-101 + FPN visual encoder and a BERT-base text encoder.

    backbone_config (`TimmBackboneConfig` or `dict`, *optional*):
        The timm backbone. Defaults to ResNet-101 returning stages 1-4 (strides 4/8/16/32). Extra
        keyword arguments for `timm.create_model` (e.g. a narrower ResNet for tiny models) go in its
        `timm_model_args` attribute.
    text_config (`BertConfig` or `dict`, *optional*):
        The BERT text encoder. Defaults to bert-base-uncased sizes.
    fpn_channels (`int`, defaults to 256):
        Channels of every FPN level (EPNG: 256, so strides 8/16/32 at 640x640 are 80x80/40x40/20x20 x 256).
    grounding_head (`str`, defaults to `"epng"`):
        `"epng"` (Locality-Perceptive Attention + SAL) or `"drmn"` (deformable encoder + multi-round
        top-k matching).
    phrase_pooling (`str`, defaults to `"mean"`):
        How a phrase's feature is made from its tokens' features: `"mean"` (every paper) or `"attention"`
        (ours, not in the papers: a learned softmax weighting over the phrase's tokens, which starts as the
        mean).
    text_layers_to_average (`int`, defaults to 1):
        Token features are the mean of BERT's last `text_layers_to_average` hidden states. EPNG's released code
        precomputes the mean of the last 4 (of a frozen BERT); PNG and PPMN use the last layer alone (1) and
        fine-tune BERT. Must not exceed the number of hidden states (`num_hidden_layers + 1`, the embeddings
        included).
    freeze_text_encoder (`bool`, defaults to `True`):
        Keep BERT frozen (and in eval mode) as in the papers.
    backbone_stride_in_1x1 (`bool`, defaults to `False`):
        Put the stride of the first bottleneck of each ResNet stage in its 1x1 convolution (detectron2's
        `MODEL.RESNETS.STRIDE_IN_1X1`, true for its MSRA-initialised models such as the COCO Panoptic FPN that
        PNG, PPMN and EPNG* start from) instead of the 3x3 one (timm and torchvision). Same weights, different features:
        set it for weights converted from detectron2 (`narrative-grounding convert panoptic-fpn` does).
        Needs a bottleneck ResNet (ResNet-50/101/152).
    backbone_trainable_stages (`int`, defaults to 2):
        How many of the last ResNet stages train (EPNG: the last two). 0 freezes the whole backbone; 4 or
        more trains every stage and the stem.
    d_model (`int`, defaults to 768):
        EPNG communicator width. Equal to 3 * fpn_channels, the concatenation of EPNG eq. 2; otherwise a
        1x1 projection maps the concatenation to d_model.
    num_communicator_layers (`int`, defaults to 3): EPNG's S.
    num_attention_heads (`int`, defaults to 8): heads of LPA and of the cross-attention.
    ffn_dim (`int`, defaults to 2048): hidden size of the communicator FFN.
    dropout (`float`, defaults to 0.1): dropout in the communicator.
    lpa_distance_clamp (`float`, defaults to 2.0): upper bound of the LPA grid distance (EPNG eq. 3).
    lpa_distance (`str`, defaults to `"squared"`):
        `"squared"` (the released code, which produced the published numbers) or `"euclidean"` (the paper's
        eq. 3). Default is the released code's form so that published checkpoints behave as published.
    lpa_implementation (`str`, defaults to `"auto"`):
        `"flex"` (fused `flex_attention`, compiled; no backward on CPU), `"direct"` (materialises the attention
        matrix) or `"auto"` (flex when no gradient is needed or on CUDA, direct otherwise).
    use_stride4_skip (`bool`, defaults to `False`):
        Add the projected stride-4 FPN level to the upsampled communicator output before dense prediction.
        Not in EPNG (which upsamples the stride-16 map alone); sharpens small masks. Used by the tiny configs.
    epng_position_encoding (`str`, defaults to `"lpa"`):
        How the communicator's self-attention knows where pixels are (EPNG Table 2): `"lpa"` (the paper),
        `"none"` (plain self-attention: LPA with the prior disabled), `"absolute"` (plain self-attention
        over pixel tokens plus a 2D sine position embedding) or `"lpa_absolute"` (ours, not in the paper:
        LPA over pixel tokens that also carry the sine position embedding, so that phrases that pick
        instances by where they are in the image can see it; LPA alone is relative).
    epng_communicator_stride (`int`, defaults to 16):
        Stride of the communicator's pixel tokens: 16 (EPNG eq. 2: the stride-8 level pooled, the stride-32
        level upsampled) or 8 (ours, not in the paper: the stride-16 and stride-32 levels upsampled to the
        stride-8 grid; four times the tokens, for small inputs whose stride-16 grid is only 8 x 8).
    epng_phrase_decoder_layers (`int`, defaults to 0):
        Ours, not in the paper (0 = EPNG, whose phrase kernels never see the image). Each layer lets every
        phrase attend to the other phrases of its narrative and then to the stride-4 pixel map pooled to stride
        8 (with a 2D sine position code), followed by an FFN, before the phrase . pixel mask product; the
        stride-4 pixel map then carries the same position code. Phrases that pick one instance among look-alikes by where it is, its size or
        what is next to it can then gather that instance's features and location into their kernel.
    epng_phrase_decoder_reads_tokens (`bool`, defaults to `False`):
        Ours, not in the paper. Each phrase-decoder layer also lets every phrase attend to its own tokens
        (after the self-attention among phrases), so that a kernel is not bound to the mean of its tokens:
        "the ring beside the pink cross" can look for the cross and then for the ring. Needs
        `epng_phrase_decoder_layers` >= 1.
    epng_mask_refinement_kernels (`int`, defaults to 0):
        Ours, not in the paper (0 = EPNG). K > 0: each phrase makes K more kernels whose maps, with its mask
        logits, pass at stride 8 through a CNN of four dilated 3 x 3 convolutions (dilations 1, 2, 4, 8) whose
        zero-initialised 1 x 1 output is added to the logits, so that a mask can depend on how regions lie
        relative to each other ("the ring beside the pink cross", "the biggest hexagon"). The unrefined logits
        are supervised too.
    epng_mask_refinement_channels (`int`, defaults to 16): width of that CNN.
    epng_mask_stride (`int`, defaults to 4):
        Stride of the mask logits: 4 (EPNG) or 2 (ours, not in the paper: the stride-4 pixel map is upsampled
        to stride 2 and gains a 1 x 1 projection of the backbone stem's stride-2 output before the phrase .
        pixel product, so that mask outlines follow the image at twice the resolution; the losses are then
        computed at stride 2). Needs a timm ResNet backbone (its stem's `act1`).
    bce_loss_weight, dice_loss_weight, sal_loss_weight (`float`, defaults 2.0, 2.0, 1.0): EPNG eq. 15.
    sal_temperature (`float`, defaults to 0.1): tau of EPNG eqs. 13-14: similarities are divided by it. With
        our cosine similarity 0.1 bounds the logits to [-10, 10]. The released code multiplies raw dot
        products by 0.1, i.e. tau = 10 (the `*-released` variant); the paper gives no value.
    Released-code switches (docs/models.md has the table: paper, release, ours, which matter). Each default is
    our earlier choice:
    epng_phrase_activation (`"none"` | `"relu6"`): activation after the phrase projection (release: ReLU6).
    epng_residual_norm (`"single"` | `"double"`): one Add & LN per attention block (eqs. 8-9), or the release's
        LN(x + LN(x + attention(x))).
    epng_attention_dropout (`float`, 0.0): dropout on LPA's and the cross-attention's weights (release: 0.1).
    epng_scale_mask_logits (`bool`, True): scale EPNG's mask logits by d_model^-1/2; False is eq. 10's (and the
        release's) plain dot product.
    epng_upsample_align_corners (`bool`, False): `align_corners` of EPNG's bilinear upsamplings: the stride-32
        FPN level to stride 16 in the eq. 2 fusion, the communicator's stride-16 map to stride 4, and with
        `mask_loss_resolution="input"` the probabilities to the input size for the loss. The release uses `True`.
    mask_loss_resolution (`"stride4"` | `"input"`): BCE with logits and Dice at stride 4 against area-averaged
        labels, or BCE and Dice on the sigmoid probabilities upsampled to the input size (eqs. 10-12, release).
    mask_loss_reduction (`"phrases"` | `"samples"`): average every loss term over the batch's items, or per
        sample and then over the samples (release).
    dice_eps (`float`, 1.0): added to Dice's denominator (release: 1e-3 on each of two sums, i.e. 2e-3).
    sal_similarity (`"cosine"` | `"dot"`), sal_positives (`"majority"` | `"any"`), sal_aggregation
        (`"mean_log"` | `"log_sum"`), sal_directions (`"both"` | `"phrase_to_pixel"`): SAL on normalised or
        raw features; a pixel positive when at least half / any part of it is covered; the mean of -log over
        the positives (eqs. 13-14) or -log of their summed probability (release); both directions (paper) or
        phrase -> pixels only (release).
    drmn_level_projection (`"linear"` | `"conv_gn_relu"`), drmn_top_k_stride (8 | 16), drmn_kernel_mlp_layers
        (0 | 3), drmn_round_pixel_projection (False | True), drmn_initial_matching (`"kernel"` |
        `"semantic_fpn"`), drmn_phrase_ffn_dim (None = `drmn_ffn_dim` | 2048), drmn_queries (`"phrase"` |
        `"noun_token"`: one query per token of each phrase through every round, the loss on each token against
        its phrase's mask, `pred_masks` the mean of the phrase's token probabilities), drmn_context_query
        (`"phrase"`: a round's deformable query is the phrase state at the selected pixel's 2-D position, its
        residual the pixel's feature | `"pixel"`: the query is the selected pixel's feature plus the 1-D sine
        position of the query's slot among `drmn_query_slots` (64), the residual the phrase state),
        drmn_scale_mask_logits (True | False: unscaled kernel . pixel products), drmn_phrase_update_dropout
        (None = `drmn_dropout` | 0.0): DRMN's reference reconstruction (see heads_drmn.py).
    drmn_* : the DRMN head's hyper-parameters (see `heads_drmn.py`): width `drmn_hidden_dim` (256),
        `drmn_encoder_layers` deformable encoder layers (2) with `drmn_num_heads` heads (8), `drmn_num_levels`
        FPN levels (4; fewer keep stride 8 and drop stride 4 first: 1 -> {8}, 2 -> {8, 16}, 3 -> {8, 16, 32})
        and `drmn_num_points` sampling points per head and level (4), FFN width `drmn_ffn_dim` (1024),
        `drmn_refinement_rounds` top-k rounds (3, 0 keeps the initial matching) over the `drmn_top_k` (100)
        best pixels of each phrase, `drmn_dropout` (0.1) and `drmn_text_conditioning` (True: the encoder's
        sampling weights depend on the phrases; False: a purely visual deformable encoder, for ablation).
    """

    model_type = "panoptic_narrative_grounding"
    # Set by the installed package when it registers PIPELINE_TASK with transformers in this process
    # (`narrative_grounding.pipeline`). See `__post_init__`.
    pipeline_registered_in_process: ClassVar[bool] = False
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=TimmBackboneConfig, model_type="timm_backbone", init_kwargs=DEFAULT_BACKBONE
        ),
        "text_config": SubConfigSpec(config_class=BertConfig, init_kwargs=DEFAULT_TEXT),
    }

    backbone_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None

    # Visual encoder
    fpn_channels: int = 256
    backbone_trainable_stages: int = 2
    # --- Visual encoder conventions of converted weights (detectron2 / torchvision) ---
    # True for MSRA-initialised ResNets (detectron2's STRIDE_IN_1X1, e.g. its COCO Panoptic FPN): the first
    # bottleneck of each stage strides in its 1x1 convolution instead of timm's 3x3.
    backbone_stride_in_1x1: bool = False
    # --- end visual encoder conventions ---

    # Text encoder
    text_layers_to_average: int = 1
    phrase_pooling: str = "mean"
    freeze_text_encoder: bool = True

    # Head choice
    grounding_head: str = "epng"

    # EPNG head
    d_model: int = 768
    num_communicator_layers: int = 3
    num_attention_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1
    lpa_distance_clamp: float = 2.0
    lpa_distance: str = "squared"
    lpa_implementation: str = "auto"
    use_stride4_skip: bool = False
    # --- EPNG position encoding (the EPNG Table 2 ablation) ---
    # "lpa": Locality-Perceptive Attention (the paper). "none": plain multi-head self-attention over the
    # pixels, i.e. LPA with its prior disabled (a multiplier of 1 on every score). "absolute": plain
    # self-attention with a 2D sine position embedding added to the pixel tokens before the communicator.
    # "lpa_absolute" (ours): LPA over tokens that carry the sine embedding too.
    epng_position_encoding: str = "lpa"
    epng_communicator_stride: int = 16
    # --- end EPNG position encoding ---
    # Ours: decoder layers that let each phrase read the image before it becomes a mask kernel (0: EPNG).
    epng_phrase_decoder_layers: int = 0
    # Ours: the phrase decoder's layers also read each phrase's own tokens (needs decoder layers).
    epng_phrase_decoder_reads_tokens: bool = False
    # Ours: a CNN over each phrase's mask logits and K more phrase maps that corrects them (0: EPNG).
    epng_mask_refinement_kernels: int = 0
    epng_mask_refinement_channels: int = 16
    # Ours: mask logits at stride 2 with the backbone stem's stride-2 map projected in (4: EPNG).
    epng_mask_stride: int = 4

    # DRMN head
    drmn_hidden_dim: int = 256
    drmn_encoder_layers: int = 2
    drmn_num_heads: int = 8
    drmn_num_levels: int = 4
    drmn_num_points: int = 4
    drmn_ffn_dim: int = 1024
    drmn_refinement_rounds: int = 3
    drmn_top_k: int = 100
    # --- DRMN head: extra fields ---
    drmn_dropout: float = 0.1
    drmn_text_conditioning: bool = True
    # --- end DRMN extra fields ---

    # Losses (EPNG eq. 15; DRMN uses BCE + Dice on every round)
    bce_loss_weight: float = 2.0
    dice_loss_weight: float = 2.0
    sal_loss_weight: float = 1.0
    sal_temperature: float = 0.1

    # --- Released-code switches (EPNG's release, DRMN's reference; docs/models.md has the table) ---
    # Each field's default is our earlier choice; the `*-released` / `*-reference` variants set the other.
    epng_phrase_activation: str = "none"  # "relu6": the release's ReLU6 after the phrase projection
    epng_residual_norm: str = "single"  # "double": the release's LN(x + LN(x + sublayer(x))), 5 LNs a layer
    epng_attention_dropout: float = 0.0  # dropout on LPA's and the cross-attention's weights (release: 0.1)
    epng_scale_mask_logits: bool = True  # False: plain phrase . pixel dot product (EPNG eq. 10, release)
    epng_upsample_align_corners: bool = False  # True: the release's nn.Upsample(align_corners=True)
    mask_loss_resolution: str = "stride4"  # "input": BCE + Dice on upsampled probabilities (eqs. 10-12)
    mask_loss_reduction: str = "phrases"  # "samples": mean over each sample's phrases, then over samples
    dice_eps: float = 1.0  # added to Dice's denominator (release: 1e-3 on each of its two sums, i.e. 2e-3)
    sal_similarity: str = "cosine"  # "dot": raw dot product / sal_temperature (eqs. 13-14, release)
    sal_positives: str = "majority"  # "any": a pixel is positive if any part of it is covered (release)
    sal_aggregation: str = "mean_log"  # "log_sum": -log of the summed positive probability (release)
    sal_directions: str = "both"  # "phrase_to_pixel": eq. 13 only (release)
    drmn_level_projection: str = (
        "linear"  # "conv_gn_relu": conv + GroupNorm + ReLU, stride 4 -> 8 (reference)
    )
    drmn_top_k_stride: int = 8  # 16: top-k pixels from the stride-16 mask and encoder level (reference)
    drmn_kernel_mlp_layers: int = (
        0  # 3: Linear + LN + ReLU layers, then a Linear, phrase -> kernel (reference)
    )
    drmn_round_pixel_projection: bool = False  # True: each round's own conv + GN + ReLU pixel map (reference)
    drmn_initial_matching: str = "kernel"  # "semantic_fpn": a K-Net style semantic FPN map (reference)
    drmn_phrase_ffn_dim: int | None = None  # rounds' phrase FFN width; None: drmn_ffn_dim (reference: 2048)
    drmn_queries: str = "phrase"  # "noun_token": a query per token, averaged per phrase (reference)
    drmn_context_query: str = "phrase"  # "pixel": pixel + 1-D slot position asks, phrase residual (reference)
    drmn_query_slots: int = 64  # slots of that 1-D slot position (reference: 64)
    drmn_scale_mask_logits: bool = True  # False: plain kernel . pixel products (reference)
    drmn_phrase_update_dropout: float | None = None  # None: drmn_dropout (reference: 0.0)
    # --- end released-code switches ---

    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5

    def __post_init__(self, **kwargs):
        # transformers' pipeline() sends any task that config.custom_pipelines names to the repository's copy
        # of the pipeline, and refuses it without trust_remote_code, even where the task is registered
        # in-process. Where the installed package registered the task, this (installed) class leaves the
        # entry out so that the installed pipeline and model serve, as AutoModel prefers installed code
        # unless trust_remote_code=True (which loads the repository's copy of this class, which keeps it).
        # save_pretrained writes the entry again.
        custom_pipelines = kwargs.pop("custom_pipelines", None) or {}
        if type(self).pipeline_registered_in_process:
            custom_pipelines = {
                task: entry for task, entry in custom_pipelines.items() if task != PIPELINE_TASK
            }
        if custom_pipelines:
            kwargs["custom_pipelines"] = custom_pipelines
        # A plain dict names a timm model: complete it so that `{"backbone": "resnet50"}` is enough.
        if isinstance(self.backbone_config, dict):
            self.backbone_config = {
                "model_type": "timm_backbone",
                "out_indices": [1, 2, 3, 4],
                **self.backbone_config,
            }
        super().__post_init__(**kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """`PreTrainedConfig.save_pretrained`, with `custom_pipelines` naming the pipeline that travels with
        the configuration, so that every saved or pushed model (a model's save_pretrained and push_to_hub
        save its config here) runs with `pipeline(..., trust_remote_code=True)`.

        The module files themselves are copied by transformers with this file's own (for a class registered
        for the Auto classes, as the package's is and a copy loaded with trust_remote_code is): they are its
        relative imports, see the `TYPE_CHECKING` block at the top.
        """
        previous = getattr(self, "custom_pipelines", None)
        if self._auto_class is not None:
            # A copy: transformers' pipeline() rewrites the entry it reads in place (class names -> classes).
            self.custom_pipelines = {**(previous or {}), PIPELINE_TASK: copy.deepcopy(CUSTOM_PIPELINE)}
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            if previous is not None:
                self.custom_pipelines = previous
            elif hasattr(self, "custom_pipelines"):
                del self.custom_pipelines

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """transformers returns an empty dict for a folder or repo without config.json, which would build the
        default ResNet-101 / BERT-base model and fail later on mismatched weights: say what is missing."""
        config_dict, unused_kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if not config_dict:
            location = str(pretrained_model_name_or_path)
            if kwargs.get("subfolder"):
                location += f"/{kwargs['subfolder']}"
            raise OSError(
                f"{location} has no config.json (or an empty one): it is not a model saved with save_pretrained "
                "(give the folder or repo that holds config.json beside the weights)"
            )
        return config_dict, unused_kwargs

    def validate_architecture(self) -> None:
        """Called by `@strict` after init: reject inconsistent settings with a message naming the field."""
        self._check_field_types_and_ranges()
        # imported here, not at the top: the head modules import this module's constants
        from .heads import GROUNDING_HEADS

        if self.grounding_head not in GROUNDING_HEADS:
            raise ValueError(
                f"grounding_head must be one of {tuple(GROUNDING_HEADS)}, got {self.grounding_head!r}"
            )
        if self.lpa_distance not in LPA_DISTANCE_FORMS:
            raise ValueError(f"lpa_distance must be one of {LPA_DISTANCE_FORMS}, got {self.lpa_distance!r}")
        if self.lpa_implementation not in LPA_IMPLEMENTATIONS:
            raise ValueError(
                f"lpa_implementation must be one of {LPA_IMPLEMENTATIONS}, got {self.lpa_implementation!r}"
            )
        if self.d_model % self.num_attention_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.drmn_hidden_dim % self.drmn_num_heads:
            raise ValueError(
                f"drmn_hidden_dim ({self.drmn_hidden_dim}) must be divisible by drmn_num_heads ({self.drmn_num_heads})"
            )
        if not 1 <= self.drmn_num_levels <= 4:
            raise ValueError(
                f"drmn_num_levels must be in 1..4 (FPN strides 4-32), got {self.drmn_num_levels}"
            )
        if self.epng_phrase_decoder_reads_tokens and self.epng_phrase_decoder_layers < 1:
            raise ValueError(
                "epng_phrase_decoder_reads_tokens needs epng_phrase_decoder_layers >= 1 (the decoder's layers "
                "read the tokens), got 0"
            )
        # --- DRMN head validation ---
        for name in ("drmn_hidden_dim", "drmn_num_heads", "drmn_num_points", "drmn_ffn_dim", "drmn_top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("drmn_encoder_layers", "drmn_refinement_rounds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.drmn_phrase_ffn_dim is not None and self.drmn_phrase_ffn_dim < 1:
            raise ValueError(f"drmn_phrase_ffn_dim must be >= 1 or None, got {self.drmn_phrase_ffn_dim}")
        if not 0.0 <= self.drmn_dropout < 1.0:
            raise ValueError(f"drmn_dropout must be in [0, 1), got {self.drmn_dropout}")
        if self.drmn_phrase_update_dropout is not None and not 0.0 <= self.drmn_phrase_update_dropout < 1.0:
            raise ValueError(
                f"drmn_phrase_update_dropout must be in [0, 1) or None, got {self.drmn_phrase_update_dropout}"
            )
        if self.drmn_query_slots < 1:
            raise ValueError(f"drmn_query_slots must be >= 1, got {self.drmn_query_slots}")
        # --- end DRMN head validation ---
        # --- switch validation ---
        for name, allowed in SWITCH_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0.0 <= self.epng_attention_dropout < 1.0:
            raise ValueError(f"epng_attention_dropout must be in [0, 1), got {self.epng_attention_dropout}")
        if self.dice_eps <= 0:
            raise ValueError(
                f"dice_eps must be > 0 (it keeps Dice finite on empty masks), got {self.dice_eps}"
            )
        if self.drmn_kernel_mlp_layers < 0:
            raise ValueError(f"drmn_kernel_mlp_layers must be >= 0, got {self.drmn_kernel_mlp_layers}")
        if self.grounding_head == "drmn" and self.drmn_top_k_stride not in (8, 16):
            raise ValueError(f"drmn_top_k_stride must be 8 or 16, got {self.drmn_top_k_stride}")
        if self.grounding_head == "drmn" and self.drmn_top_k_stride == 16 and self.drmn_num_levels < 2:
            raise ValueError("drmn_top_k_stride=16 needs the stride-16 level: drmn_num_levels >= 2")
        if (
            self.grounding_head == "drmn"
            and self.drmn_initial_matching == "semantic_fpn"
            and self.drmn_num_levels == 4
            and self.drmn_level_projection != "conv_gn_relu"
        ):
            raise ValueError(
                "drmn_initial_matching='semantic_fpn' merges levels of stride 8 and coarser: with drmn_num_levels=4 "
                "it needs drmn_level_projection='conv_gn_relu' (which reduces stride 4 to 8)"
            )
        uses_group_norm = (
            self.drmn_level_projection == "conv_gn_relu"
            or self.drmn_round_pixel_projection
            or self.drmn_initial_matching == "semantic_fpn"
        )
        if (
            self.grounding_head == "drmn"
            and uses_group_norm
            and self.drmn_hidden_dim % DRMN_GROUP_NORM_GROUPS
        ):
            raise ValueError(
                f"drmn_hidden_dim ({self.drmn_hidden_dim}) must be divisible by {DRMN_GROUP_NORM_GROUPS} "
                "for the GroupNorm of drmn_level_projection='conv_gn_relu' / drmn_round_pixel_projection"
            )
        # --- end switch validation ---
        self._check_text_config()
        self._check_backbone_model_args()
        if self.text_layers_to_average < 1:
            raise ValueError(f"text_layers_to_average must be >= 1, got {self.text_layers_to_average}")
        # --- text layer averaging bound ---
        hidden_states = getattr(self.text_config, "num_hidden_layers", None)
        if hidden_states is not None and self.text_layers_to_average > hidden_states + 1:
            raise ValueError(
                f"text_layers_to_average ({self.text_layers_to_average}) exceeds BERT's {hidden_states + 1} hidden "
                f"states (text_config.num_hidden_layers={hidden_states} layers plus the embeddings)"
            )
        # --- end text layer averaging bound ---
        if self.backbone_trainable_stages < 0:
            raise ValueError(f"backbone_trainable_stages must be >= 0, got {self.backbone_trainable_stages}")
        out_indices = list(getattr(self.backbone_config, "out_indices", None) or [])
        if len(out_indices) != 4:
            raise ValueError(
                "backbone_config.out_indices must name the four ResNet stages at strides 4, 8, 16, 32 "
                f"(e.g. [1, 2, 3, 4]), got {out_indices}"
            )

    def _check_text_config(self) -> None:
        """BERT's sizes, dropouts and padding id lie in their ranges (transformers' BertConfig accepts any)."""
        text = self.text_config
        if text is None:
            return
        for name, smallest in TEXT_MIN_SIZES.items():
            value = getattr(text, name, None)
            if not _is_integer(value) or value < smallest:
                raise ValueError(f"text_config.{name} must be an integer >= {smallest}, got {value!r}")
        if text.hidden_size % text.num_attention_heads:
            raise ValueError(
                f"text_config.hidden_size ({text.hidden_size}) must be divisible by text_config.num_attention_heads "
                f"({text.num_attention_heads})"
            )
        for name in TEXT_DROPOUTS:
            value = getattr(text, name, 0.0)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"text_config.{name} must be in [0, 1), got {value!r}")
        if not _is_number(text.layer_norm_eps) or text.layer_norm_eps <= 0:
            raise ValueError(f"text_config.layer_norm_eps must be > 0, got {text.layer_norm_eps!r}")
        pad_token_id = getattr(text, "pad_token_id", None)
        if pad_token_id is not None and not (
            _is_integer(pad_token_id) and 0 <= pad_token_id < text.vocab_size
        ):
            raise ValueError(
                f"text_config.pad_token_id must be a token id below text_config.vocab_size ({text.vocab_size}) "
                f"or None, got {pad_token_id!r}"
            )

    def _check_backbone_model_args(self) -> None:
        """The timm ResNet arguments of `backbone_config.timm_model_args` that give one value per stage hold
        four positive integers, and `stem_width` is a positive integer (whether the backbone's stem honours it
        is checked where the backbone is built, `visual_encoder.check_stem_width`)."""
        model_args = getattr(self.backbone_config, "timm_model_args", None) or {}
        for name in BACKBONE_STAGE_ARGS:
            if name not in model_args:
                continue
            values = model_args[name]
            if (
                not isinstance(values, (list, tuple))
                or len(values) != NUM_BACKBONE_STAGES
                or not all(_is_integer(value) and value >= 1 for value in values)
            ):
                raise ValueError(
                    f"backbone_config.timm_model_args.{name} must be {NUM_BACKBONE_STAGES} integers >= 1 (one per "
                    f"ResNet stage), got {values!r}"
                )
        stem_width = model_args.get("stem_width")
        if stem_width is not None and not (_is_integer(stem_width) and stem_width >= 1):
            raise ValueError(
                f"backbone_config.timm_model_args.stem_width must be an integer >= 1, got {stem_width!r}"
            )

    def _check_field_types_and_ranges(self) -> None:
        """Each int / float / bool field holds a value of its type (floats finite), and the sizes, rates and
        weights that no other check covers lie in their range: a wrong one failed deep inside torch or
        trained silently wrong (dropout 2, a zero SAL temperature, NaN loss weights)."""
        for spec in dataclasses.fields(self):
            value, kind = getattr(self, spec.name), spec.type
            if kind == "bool" and not isinstance(value, bool):
                raise ValueError(f"{spec.name} must be True or False, got {value!r}")
            if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{spec.name} must be an integer, got {value!r}")
            if kind == "float" and (
                not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            ):
                raise ValueError(f"{spec.name} must be a finite number, got {value!r}")
        for name in (
            "fpn_channels",
            "d_model",
            "num_attention_heads",
            "ffn_dim",
            "epng_mask_refinement_channels",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_communicator_layers", "epng_phrase_decoder_layers", "lpa_distance_clamp",
                     "epng_mask_refinement_kernels",
                     "initializer_range", "bce_loss_weight", "dice_loss_weight", "sal_loss_weight"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("sal_temperature", "layer_norm_eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["PngConfig"]
