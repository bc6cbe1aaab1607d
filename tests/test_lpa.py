"""Locality-Perceptive Attention against the equations of the EPNG paper (eqs. 3-7)."""

from __future__ import annotations

import math

import pytest
import torch

from narrative_grounding.modeling.attention import (
    DENSE_BLOCK_SIZE,
    FLEX_MIN_TOKENS,
    LocalityPerceptiveAttention,
    grid_distance,
    locality_prior_score_mod,
)


def lpa_by_the_equations(module: LocalityPerceptiveAttention, x: torch.Tensor, height: int, width: int):
    """A literal, loop-based reading of eqs. 3-7 (one head and one pair of pixels at a time for D)."""
    batch, num_pixels, d_model = x.shape
    heads, head_dim = module.num_heads, module.head_dim
    coordinates = [(n // width, n % width) for n in range(num_pixels)]
    distance = torch.zeros(num_pixels, num_pixels, dtype=torch.float64)
    for m, (ym, xm) in enumerate(coordinates):
        for n, (yn, xn) in enumerate(coordinates):
            squared = (ym - yn) ** 2 + (xm - xn) ** 2
            value = squared if module.distance_form == "squared" else math.sqrt(squared)
            distance[m, n] = min(value, module.distance_clamp)  # eq. 3 with the upper bound
    w_qkv = module.qkv.weight.double()
    b_qkv = module.qkv.bias.double()
    outputs = []
    for j in range(heads):
        rows = slice(j * head_dim, (j + 1) * head_dim)
        w_q, w_k, w_v = (w_qkv[i * d_model : (i + 1) * d_model][rows] for i in range(3))
        b_q, b_k, b_v = (b_qkv[i * d_model : (i + 1) * d_model][rows] for i in range(3))
        q, k, v = (x.double() @ w.T + b for w, b in ((w_q, b_q), (w_k, b_k), (w_v, b_v)))
        coefficient = module.prior_scale[j].double() * distance  # eq. 4
        attention = ((q @ k.transpose(-1, -2)) / math.sqrt(head_dim) * coefficient).softmax(-1)  # eq. 5
        outputs.append(attention @ v)  # eq. 6
    concatenated = torch.cat(outputs, dim=-1)
    return concatenated @ module.out_proj.weight.double().T + module.out_proj.bias.double()  # eq. 7


def make_lpa(form: str, implementation: str, seed: int = 0) -> LocalityPerceptiveAttention:
    torch.manual_seed(seed)
    module = LocalityPerceptiveAttention(
        d_model=32, num_heads=4, distance_clamp=2.0, distance_form=form, implementation=implementation
    )
    with torch.no_grad():
        module.prior_scale.copy_(torch.tensor([1.0, 0.5, -0.7, 2.0]))  # distinct per-head priors
    return module


@pytest.mark.parametrize("form", ["squared", "euclidean"])
def test_direct_path_equals_the_equations(form):
    module = make_lpa(form, "direct")
    x = torch.randn(2, 5 * 3, 32)
    expected = lpa_by_the_equations(module, x, 5, 3)
    torch.testing.assert_close(module(x, 5, 3).double(), expected, atol=1e-5, rtol=1e-5)


def test_grid_distance_forms():
    squared = grid_distance(3, 3, clamp=2.0, form="squared")
    euclidean = grid_distance(3, 3, clamp=2.0, form="euclidean")
    centre = 4  # (1, 1)
    assert squared[centre, centre] == 0 and squared[centre, 1] == 1 and squared[centre, 0] == 2
    assert euclidean[centre, 0] == pytest.approx(math.sqrt(2)) and euclidean[0, 8] == 2  # clamped


def test_auto_path_choice():
    module = make_lpa("squared", "auto")
    x = torch.randn(1, FLEX_MIN_TOKENS, 32)
    assert module.resolve_implementation(x) == "direct"  # CPU backward: flex has none
    with torch.no_grad():
        assert module.resolve_implementation(x) == "flex"
        assert module.resolve_implementation(x[:, :64]) == "direct"  # small grid: not worth a compilation
    with torch.inference_mode():
        assert module.resolve_implementation(x) == "flex"


def test_prior_scale_receives_gradients():
    module = make_lpa("squared", "direct")
    module(torch.randn(1, 16, 32), 4, 4).square().sum().backward()
    assert module.prior_scale.grad is not None and module.prior_scale.grad.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("form", ["squared", "euclidean"])
def test_flex_path_equals_direct_path(form):
    direct = make_lpa(form, "direct")
    flex = make_lpa(form, "flex")
    # 8 x 6 fits one tile; 37 x 41 spans several tiles of DENSE_BLOCK_SIZE with ragged last ones.
    for height, width in [(8, 6), (37, 41)]:
        assert height * width < DENSE_BLOCK_SIZE[0] or height * width % DENSE_BLOCK_SIZE[1] != 0
        x = torch.randn(2, height * width, 32)
        with torch.no_grad():
            torch.testing.assert_close(flex(x, height, width), direct(x, height, width), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_flex_path_serves_many_grid_sizes_fused(recwarn):
    """More grid sizes than torch's recompile limit (8): still the fused kernel (torch warns when flex
    attention falls back to its unfused form) and still equal to the direct path. Grids below
    FLEX_CPU_MIN_TOKENS, where torch's CPU kernel is wrong on some CPUs, take the direct form."""
    direct = make_lpa("squared", "direct")
    flex = make_lpa("squared", "flex")
    for height in [1, 2, 3, 4, 5, 7, 8, 9]:  # 4 to 108 pixels: each computed as the direct path does
        width = height + 3
        x = torch.randn(1, height * width, 32)
        assert flex.resolve_implementation(x) == "direct"
        with torch.no_grad():
            torch.testing.assert_close(flex(x, height, width), direct(x, height, width), atol=1e-4, rtol=1e-4)
    for height in range(12, 22):  # 180 to 504 pixels, 10 sizes, all fused
        width = height + 3
        x = torch.randn(1, height * width, 32)
        assert flex.resolve_implementation(x) == "flex"
        with torch.no_grad():
            torch.testing.assert_close(flex(x, height, width), direct(x, height, width), atol=1e-4, rtol=1e-4)
    assert not [w for w in recwarn if "unfused implementation" in str(w.message)]


@pytest.mark.parametrize("form", ["squared", "euclidean"])
@pytest.mark.parametrize("height, width", [(3, 7), (40, 40), (97, 211), (1, 4099)])
def test_score_mod_grid_positions_are_exact(form, height, width):
    """The score modifier finds rows and columns in float arithmetic: it must equal integer div/mod exactly."""
    prior_scale = torch.tensor([1.0, 0.5])
    score_mod = locality_prior_score_mod(prior_scale, width, clamp=2.0, form=form)
    num_pixels = height * width
    generator = torch.Generator().manual_seed(0)
    q_idx = torch.randint(num_pixels, (5000,), generator=generator)
    kv_idx = torch.cat([torch.randint(num_pixels, (4000,), generator=generator), q_idx[:1000] + 1])
    kv_idx = kv_idx.clamp(max=num_pixels - 1)
    q_idx = q_idx.repeat(2)[: kv_idx.numel()]
    squared = ((q_idx // width - kv_idx // width) ** 2 + (q_idx % width - kv_idx % width) ** 2).float()
    expected = (squared if form == "squared" else squared.sqrt()).clamp(max=2.0)
    for head in (0, 1):
        got = score_mod(torch.ones(kv_idx.numel()), torch.tensor(0), torch.tensor(head), q_idx, kv_idx)
        torch.testing.assert_close(got, prior_scale[head] * expected, atol=0, rtol=0)
