"""The visual encoder shared by every head: a timm ResNet (through transformers) and an FPN neck.

Output: a dict stride -> B x C x H/stride x W/stride for strides 4, 8, 16, 32, C = config.fpn_channels
(EPNG: 256 channels; 80x80 / 40x40 / 20x20 at strides 8 / 16 / 32 for a 640x640 input). With
`epng_mask_stride=2` also stride 2: the stem's output projected to fpn_channels by a 1 x 1 convolution.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.timm_backbone import TimmBackbone

from .channels_last import pointwise_convolution

FPN_STRIDES = (4, 8, 16, 32)


def build_timm_backbone(backbone_config, *, pretrained: bool = False, **timm_kwargs) -> TimmBackbone:
    """A `TimmBackbone` for `backbone_config`, forwarding its `timm_model_args` to `timm.create_model`.

    `pretrained=True` fetches timm's ImageNet weights (needs the Hub or a local file given through
    `pretrained_cfg_overlay=dict(file=...)`).
    """
    if not timm.is_model(backbone_config.backbone):  # timm's own error is a RuntimeError deep in create_model
        raise ValueError(
            f"backbone_config.backbone {backbone_config.backbone!r} is not a timm model (e.g. 'resnet101'; "
            "timm.list_models() lists them)"
        )
    model_args = dict(getattr(backbone_config, "timm_model_args", None) or {})
    return TimmBackbone(backbone_config, pretrained=pretrained, **model_args, **timm_kwargs)


def check_stem_width(backbone: nn.Module, backbone_config) -> None:
    """Refuse a `timm_model_args.stem_width` that the built stem does not have.

    timm's ResNet reads `stem_width` only for its deep stems (`stem_type` "deep" / "deep_tiered"); its default
    stem is one 7x7 convolution of 64 channels whatever `stem_width` says (timm models/resnet.py,
    `ResNet.__init__`: `inplanes = stem_width * 2 if deep_stem else 64`), so the setting would be silently
    ignored.
    """
    stem_width = (getattr(backbone_config, "timm_model_args", None) or {}).get("stem_width")
    stem = getattr(backbone, "conv1", None)
    if stem_width is not None and isinstance(stem, nn.Conv2d) and stem.out_channels != stem_width:
        raise ValueError(
            f"backbone_config.timm_model_args.stem_width={stem_width} cannot be honoured: the stem of "
            f"{backbone_config.backbone!r} is one convolution of {stem.out_channels} channels (timm's ResNet reads "
            "stem_width only with stem_type 'deep' or 'deep_tiered'); remove stem_width or set such a stem_type"
        )


def move_stride_to_1x1(backbone: nn.Module, stage_names: list[str]) -> None:
    """Make the first bottleneck of each stage stride in its 1x1 convolution rather than its 3x3 one.

    detectron2's MSRA-initialised ResNets (`MODEL.RESNETS.STRIDE_IN_1X1 = True`, its default, used by the COCO
    Panoptic FPN) stride in `conv1` (1x1); timm and torchvision stride in `conv2` (3x3). The weights have the
    same shapes either way, so only the strides move. Output sizes are unchanged: a 1x1 stride-2 convolution
    without padding and a 3x3 stride-2 one with padding 1 both give ceil(H / 2).
    """
    for stage_name in stage_names:
        first_block = getattr(backbone, stage_name)[0]
        conv1, conv2 = getattr(first_block, "conv1", None), getattr(first_block, "conv2", None)
        if getattr(first_block, "conv3", None) is None or conv1 is None or conv1.kernel_size != (1, 1):
            raise ValueError(
                f"backbone_stride_in_1x1 needs bottleneck blocks (1x1, 3x3, 1x1; ResNet-50/101/152), but "
                f"{stage_name}.0 is a {type(first_block).__name__}"
            )
        if conv2.stride != (1, 1):
            conv1.stride, conv2.stride = conv2.stride, (1, 1)


class FeaturePyramidNeck(nn.Module):
    """FPN (Lin et al. 2017): 1x1 lateral convs, top-down nearest-neighbour sum, 3x3 output convs.

    The same computation as detectron2's FPN with `FPN.NORM = ""` and `FUSE_TYPE = "sum"` (biased convolutions,
    no norm); its extra max-pooled P6 level feeds only its RPN and is not built here.
    """

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """features: fine to coarse, B x C_i x H_i x W_i. Returns the same resolutions with out_channels."""
        laterals = [pointwise_convolution(conv, f) for conv, f in zip(self.lateral, features, strict=True)]
        for level in range(len(laterals) - 2, -1, -1):  # coarse to fine
            laterals[level] = laterals[level] + F.interpolate(
                laterals[level + 1], size=laterals[level].shape[-2:], mode="nearest"
            )
        return [conv(f) for conv, f in zip(self.output, laterals, strict=True)]


class VisualEncoder(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.backbone = build_timm_backbone(config.backbone_config)
        check_stem_width(self.backbone._backbone, config.backbone_config)
        channels = self.backbone._backbone.feature_info.channels()
        reductions = self.backbone._backbone.feature_info.reduction()
        if tuple(reductions) != FPN_STRIDES:
            raise ValueError(
                f"backbone {config.backbone_config.backbone!r} with out_indices {config.backbone_config.out_indices} "
                f"gives strides {reductions}; the FPN neck needs strides {FPN_STRIDES}"
            )
        if config.backbone_stride_in_1x1:
            move_stride_to_1x1(self.backbone._backbone, self.stage_names())
        self.neck = FeaturePyramidNeck(channels, config.fpn_channels)
        # Masks at stride 2 (ours): the stem's stride-2 map, kept by a forward hook on its last activation
        # (the backbone returns only the four stages), projected to fpn_channels like the FPN's levels.
        self.stem_projection = None
        self._stem_output: torch.Tensor | None = None
        if config.grounding_head == "epng" and config.epng_mask_stride == 2:
            stem_activation = getattr(self.backbone._backbone, "act1", None)
            stem_channels = getattr(getattr(self.backbone._backbone, "bn1", None), "num_features", None)
            if stem_activation is None or stem_channels is None:
                raise ValueError(
                    "epng_mask_stride=2 reads the stride-2 output of a timm ResNet stem (its bn1 and act1), which "
                    f"backbone {config.backbone_config.backbone!r} does not have; use epng_mask_stride=4"
                )
            stem_activation.register_forward_hook(self._keep_stem_output)
            self.stem_projection = nn.Conv2d(stem_channels, config.fpn_channels, kernel_size=1)
        self.match_weight_layout()

    def _keep_stem_output(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._stem_output = output

    def match_weight_layout(self) -> None:
        """Store the convolution weights in the memory format `forward` gives their inputs on this device:
        channels-last on CPU, the default elsewhere.

        With NHWC inputs and NCHW weights the CPU convolutions give some weight gradients (the strided 1x1
        downsampling convolutions') channels-last strides, which DistributedDataParallel, whose gradient
        buckets follow the parameters' strides, reports as "Grad strides do not match bucket view strides" and
        copies. Called on construction, after every device or dtype move (`_apply`) and after loading weights
        (which replaces the parameters), so the layout is settled before DDP wraps the model.
        """
        weights = [parameter for parameter in self.parameters() if parameter.dim() == 4]
        if not weights:
            return
        layout = torch.channels_last if weights[0].device.type == "cpu" else torch.contiguous_format
        for weight in weights:
            # compared by strides: a 1x1 kernel's weight counts as contiguous in both formats, but its gradient
            # takes the strides of one of them
            if weight.stride() != torch.empty_like(weight, device="meta", memory_format=layout).stride():
                weight.data = weight.data.clone(memory_format=layout)

    def _apply(self, fn, recurse: bool = True):  # .to(), .cuda(), .cpu(), .float(), ...
        module = super()._apply(fn, recurse)
        self.match_weight_layout()
        return module

    def stage_names(self) -> list[str]:
        """The timm module names of the four stages the FPN reads (e.g. layer1..layer4)."""
        return [info["module"] for info in self.backbone._backbone.feature_info.get_dicts()]

    def forward(self, pixel_values: torch.Tensor) -> dict[int, torch.Tensor]:
        """pixel_values: B x 3 x H x W (H, W multiples of 32). Returns stride -> B x C x H/s x W/s."""
        if pixel_values.device.type == "cpu":
            # NHWC on CPU: oneDNN convolutions keep it, and torch's NCHW max pooling is slow (the stem's
            # 3x3 pool of a 8 x 64 x 64 x 64 map: 39 ms NCHW, 2 ms NHWC on torch 2.14, one thread). The
            # maps come out NHWC too, which is the B x N x C layout the heads flatten them into. The weights
            # are channels-last on CPU as well (`match_weight_layout`).
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        feature_maps = self.backbone(pixel_values).feature_maps
        features = dict(zip(FPN_STRIDES, self.neck(list(feature_maps)), strict=True))
        if self.stem_projection is not None:
            features[2] = pointwise_convolution(self.stem_projection, self._stem_output)
            self._stem_output = None  # no reference kept past the forward pass
        return features

    def set_trainable_stages(self, num_stages: int) -> None:
        """Train only the last `num_stages` ResNet stages (EPNG: 2); the neck always trains."""
        stage_names = self.stage_names()  # layer1..4
        trainable = set(stage_names[len(stage_names) - num_stages :]) if num_stages > 0 else set()
        train_all = num_stages >= len(stage_names)
        for name, parameter in self.backbone._backbone.named_parameters():
            stage = name.split(".")[0]
            parameter.requires_grad_(train_all or stage in trainable)
