"""`optimize_for_inference`: the fast path computes what the eager model computes.

Tolerance (also the one docs/benchmarks.md states for paper sizes): mask logits within
atol 1e-4 + rtol 1e-4 of eager on these tiny float32 models; the fast path only reorders float operations.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import make_inputs, tiny_model

from narrative_grounding import PngForPanopticNarrativeGrounding
from narrative_grounding.inference_optimization import optimize_for_inference

TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}


def _eager_and_fast(model, inputs, **options):
    with torch.no_grad():
        eager = model(**inputs)
    fast_model = optimize_for_inference(copy.deepcopy(model), **options)
    with torch.inference_mode():
        fast = fast_model(**inputs)
    return eager, fast, fast_model


def test_channels_last_alone_matches_eager_and_keeps_the_checkpoint_format(tmp_path):
    model = tiny_model()
    inputs = make_inputs([3, 1], height=64, width=96)
    eager, fast, fast_model = _eager_and_fast(model, inputs, compile=False)
    torch.testing.assert_close(fast.pred_masks, eager.pred_masks, **TOLERANCE)
    conv = fast_model.visual_encoder.neck.output[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not any(parameter.requires_grad for parameter in fast_model.parameters())
    assert not fast_model.training
    # Same parameter names and values: an optimised model saves a normal checkpoint.
    fast_model.save_pretrained(tmp_path)
    reloaded = PngForPanopticNarrativeGrounding.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).pred_masks, eager.pred_masks, **TOLERANCE)


def test_compile_head_switch():
    model = optimize_for_inference(tiny_model(grounding_head="drmn", drmn_hidden_dim=32, drmn_top_k=8))
    assert model._inference_optimization["compile_head"] is True
    assert model.head._compiled_call_impl is not None
    eager_head = optimize_for_inference(tiny_model(), compile_head=False)
    assert eager_head._inference_optimization["compile_head"] is False
    assert eager_head.head._compiled_call_impl is None
    assert eager_head.visual_encoder._compiled_call_impl is not None


def test_rejects_a_second_optimisation_and_other_models():
    model = optimize_for_inference(tiny_model(), compile=False)
    with pytest.raises(RuntimeError, match="already optimised"):
        optimize_for_inference(model, compile=False)
    with pytest.raises(TypeError, match="no submodule"):
        optimize_for_inference(torch.nn.Linear(2, 2))


@pytest.mark.slow
@pytest.mark.parametrize("head", ["epng", "drmn"])
def test_compiled_fast_path_matches_eager(head):
    # one encoder layer and two rounds: every kind of compiled block, at a fraction of the compile time
    overrides = (
        {}
        if head == "epng"
        else {
            "grounding_head": "drmn",
            "drmn_hidden_dim": 32,
            "drmn_top_k": 8,
            "drmn_encoder_layers": 1,
            "drmn_refinement_rounds": 2,
        }
    )
    model = tiny_model(**overrides)
    inputs = make_inputs([3, 1], height=64, width=96)
    # DRMN's compiled head samples by fused gathers, its eager head by grid_sample: both must agree.
    eager, fast, fast_model = _eager_and_fast(model, inputs)
    torch.testing.assert_close(fast.pred_masks, eager.pred_masks, **TOLERANCE)
    for eager_aux, fast_aux in zip(eager.auxiliary_masks, fast.auxiliary_masks, strict=True):
        torch.testing.assert_close(fast_aux, eager_aux, **TOLERANCE)
    # A second batch of the same shapes reuses the compiled graphs and is still exact.
    other = make_inputs([3, 1], height=64, width=96, seed=1)
    with torch.no_grad():
        expected = model(**other).pred_masks
    with torch.inference_mode():
        torch.testing.assert_close(fast_model(**other).pred_masks, expected, **TOLERANCE)
