"""Products over channels that keep CPU feature maps channels-last (NHWC), forward and backward.

On CPU the visual encoder runs NHWC (see `VisualEncoder.forward`). Two kinds of op undo that layout if
written the obvious way, and then every backward pass pays for transposing copies of whole feature maps:

- 1 x 1 convolutions: on one thread with a batch below 16, torch hands them to its reference kernel, which
  copies NHWC inputs and gradients to NCHW and back; as a matrix product over the pixels' channel vectors
  an NHWC map needs no copy at all.
- phrase . pixel products (`einsum("bpd,bdhw->bphw")`): the gradient of the map comes back NCHW, so the
  bilinear upsampling and the convolutions behind it run their backward on the slow layout. Multiplying
  the B x HW x D view of the map instead gives a B x HW x D gradient, i.e. NHWC again.

Both functions compute exactly what the plain forms do (up to float rounding) for any layout; on other
layouts, or other devices, they are the plain forms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _is_channels_last(feature_map: torch.Tensor) -> bool:
    return feature_map.dim() == 4 and feature_map.is_contiguous(memory_format=torch.channels_last)


def pointwise_convolution(conv: nn.Conv2d, feature_map: torch.Tensor) -> torch.Tensor:
    """`conv(feature_map)`; for a 1 x 1, stride-1, unpadded, ungrouped `conv` on a CPU channels-last map, a
    matrix product over the channels (the output is channels-last too)."""
    pointwise = (
        conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and conv.groups == 1
    )
    if not pointwise or feature_map.device.type != "cpu" or not _is_channels_last(feature_map):
        return conv(feature_map)
    # A view whose gradient keeps the weight's own strides: a 1 x 1 kernel's channels-last and default strides
    # differ only on its size-1 axes, which DistributedDataParallel's gradient buckets compare too (a reshape's
    # gradient would take the default ones and make it warn and copy every step).
    weight = conv.weight.as_strided((conv.out_channels, conv.in_channels), conv.weight.stride()[:2])
    return F.linear(feature_map.permute(0, 2, 3, 1), weight, conv.bias).permute(0, 3, 1, 2)


def phrase_pixel_product(phrases: torch.Tensor, pixel_map: torch.Tensor) -> torch.Tensor:
    """B x P x D phrases . B x D x h x w map -> B x P x h x w (`einsum("bpd,bdhw->bphw")`). On a CPU
    channels-last map the result is channels-last (B x h x w x P in memory) and so is the map's gradient."""
    if pixel_map.device.type != "cpu" or not _is_channels_last(pixel_map):
        return torch.einsum("bpd,bdhw->bphw", phrases, pixel_map)
    batch, channels, height, width = pixel_map.shape
    pixels = pixel_map.permute(0, 2, 3, 1).reshape(batch, height * width, channels)  # a view: NHWC memory
    products = torch.bmm(pixels, phrases.transpose(1, 2))  # B x hw x P
    return products.view(batch, height, width, phrases.shape[1]).permute(0, 3, 1, 2)
