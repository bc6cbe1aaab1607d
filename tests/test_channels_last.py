"""The channels-last products of the heads and the visual encoder: the plain forms' values and gradients,
with CPU feature maps and their gradients kept NHWC."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from narrative_grounding.modeling.channels_last import phrase_pixel_product, pointwise_convolution

CHANNELS_LAST = torch.channels_last


def _map(batch: int, channels: int, height: int, width: int, layout, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, channels, height, width, generator=generator, dtype=torch.float64)
    return values.contiguous(memory_format=layout).requires_grad_()


@pytest.mark.parametrize("layout", [CHANNELS_LAST, torch.contiguous_format])
def test_pointwise_convolution_is_the_convolution(layout):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, kernel_size=1).double()
    conv.weight.data = conv.weight.data.contiguous(memory_format=layout)
    feature_map = _map(3, 6, 7, 9, layout, seed=1)
    output = pointwise_convolution(conv, feature_map)
    reference_map = feature_map.detach().clone().requires_grad_()
    reference = conv(reference_map)
    torch.testing.assert_close(output, reference, atol=1e-12, rtol=1e-12)
    upstream = torch.randn_like(reference).contiguous(memory_format=layout)
    gradients = torch.autograd.grad(output, (feature_map, conv.weight, conv.bias), upstream)
    reference_gradients = torch.autograd.grad(reference, (reference_map, conv.weight, conv.bias), upstream)
    for gradient, expected in zip(gradients, reference_gradients, strict=True):
        torch.testing.assert_close(gradient, expected, atol=1e-12, rtol=1e-12)
    # the weight's gradient has the weight's exact strides (DistributedDataParallel compares them)
    assert gradients[1].stride() == conv.weight.stride()
    if layout is CHANNELS_LAST:  # no NHWC -> NCHW copies on the way, forward or backward
        assert output.is_contiguous(memory_format=CHANNELS_LAST)
        assert gradients[0].is_contiguous(memory_format=CHANNELS_LAST)


@pytest.mark.parametrize("layout", [CHANNELS_LAST, torch.contiguous_format])
def test_phrase_pixel_product_is_the_einsum(layout):
    pixel_map = _map(2, 8, 5, 6, layout, seed=2)
    phrases = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    phrases.requires_grad_()
    products = phrase_pixel_product(phrases, pixel_map)
    assert products.shape == (2, 4, 5, 6)
    reference = torch.einsum("bpd,bdhw->bphw", phrases, pixel_map)
    torch.testing.assert_close(products, reference, atol=1e-12, rtol=1e-12)
    upstream = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    gradients = torch.autograd.grad(products, (phrases, pixel_map), upstream)
    reference_gradients = torch.autograd.grad(reference, (phrases, pixel_map), upstream)
    for gradient, expected in zip(gradients, reference_gradients, strict=True):
        torch.testing.assert_close(gradient, expected, atol=1e-12, rtol=1e-12)
    if layout is CHANNELS_LAST:  # the map's gradient comes back NHWC: no transposing copy behind it
        assert gradients[1].is_contiguous(memory_format=CHANNELS_LAST)


def test_phrase_pixel_product_of_no_phrases():
    pixel_map = _map(2, 8, 5, 6, CHANNELS_LAST, seed=5)
    products = phrase_pixel_product(torch.zeros(2, 0, 8, dtype=torch.float64), pixel_map)
    assert products.shape == (2, 0, 5, 6)


def test_pointwise_convolution_of_another_convolution_is_that_convolution():
    conv = nn.Conv2d(6, 5, kernel_size=3, padding=1).double()
    feature_map = _map(2, 6, 7, 9, CHANNELS_LAST, seed=6)
    torch.testing.assert_close(pointwise_convolution(conv, feature_map), conv(feature_map))
