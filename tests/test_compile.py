"""torch.compile(model) for inference: same masks as eager (tokenisation stays outside the graph)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_inputs, tiny_model


@pytest.mark.slow
def test_compiled_model_matches_eager_for_inference():
    model = tiny_model()
    inputs = make_inputs([3, 1], height=64, width=96)
    compiled = torch.compile(model)
    with torch.inference_mode():
        eager = model(**inputs).pred_masks
        fast = compiled(**inputs).pred_masks
    torch.testing.assert_close(fast, eager, atol=1e-4, rtol=1e-4)
