"""The inference fast path: switchable optimisations that make a model faster on CPU without changing what
it computes beyond floating-point reassociation.

    from narrative_grounding.inference_optimization import optimize_for_inference
    model = optimize_for_inference(model)              # in place; returns the model
    with torch.inference_mode():
        outputs = model(**inputs)

What each switch does, and why it is safe:

- `freeze` (always on): `eval()` and `requires_grad_(False)` on every parameter. With no parameter asking
  for a gradient, EPNG's LPA takes its fused flex-attention path ("auto") even outside `no_grad`, and
  inductor's freezing below may treat the weights as constants.
- `channels_last`: the visual encoder's weights and its input images in NHWC layout, which oneDNN
  convolutions on CPU run without reordering every activation.
- `compile`: `torch.compile` of the visual encoder, the text encoder and the head (`compile_head`), each in
  place (`Module.compile`: parameter names and `save_pretrained` are unchanged). In a compiled inference
  graph DRMN's deformable attention samples by explicit gathers that inductor fuses with the weighting
  (`multi_scale_deformable_sampling_by_gathering`) instead of `grid_sample`, whose lowering ran slower
  than eager. The model's own input checks stay
  eager (they read tensor values to write error messages, which would break a graph). With
  `inductor_freezing`, inductor folds the frozen batch norms into the convolutions and pre-packs the weights
  for oneDNN; it needs `torch.inference_mode()` / `torch.no_grad()` at call time, as above.

Attention already uses fused kernels where it helps: the EPNG LPA uses flex attention (compiled) for
inference, the cross-attentions and BERT use `scaled_dot_product_attention`.

The compiled graphs are specialised to input shapes: the first call with a new image size or phrase count
compiles (seconds to minutes); later calls with the same shapes are fast. Outputs match the eager model
within float32 reassociation error (see tests/test_inference_optimization.py and docs/benchmarks.md for
the measured differences).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

COMPILED_PARTS = ("visual_encoder", "text_encoder", "head")


def _images_to_channels_last(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    pixel_values, *rest = args
    return (pixel_values.contiguous(memory_format=torch.channels_last), *rest)


def optimize_for_inference(
    model: nn.Module,
    *,
    compile: bool = True,
    channels_last: bool = True,
    inductor_freezing: bool = True,
    compile_head: bool = True,
    dynamic: bool | None = None,
) -> nn.Module:
    """Prepare a `PngForPanopticNarrativeGrounding` for fast inference, in place, and return it.

    Args:
        model: the model; it is put in eval mode and its parameters stop requiring gradients (call
            `requires_grad_(True)` and `train()` to fine-tune it again; a compiled model then recompiles).
        compile: `torch.compile` the visual encoder, text encoder and head (inductor).
        channels_last: NHWC weights and inputs for the visual encoder's convolutions.
        inductor_freezing: let inductor treat the frozen weights as constants (batch-norm folding, oneDNN
            weight pre-packing). Only with `compile`; takes effect under `torch.inference_mode()`/`no_grad()`.
        compile_head: compile the grounding head too (off: the head runs eager, e.g. to avoid its
            compilation time, about a minute for the paper-size DRMN head on 2 CPU cores).
        dynamic: forwarded to `torch.compile` (None: specialise first, go dynamic on a shape change).

    Returns the same model object.
    """
    missing = [name for name in COMPILED_PARTS if not isinstance(getattr(model, name, None), nn.Module)]
    if missing:
        raise TypeError(
            f"optimize_for_inference expects a PngForPanopticNarrativeGrounding; {type(model).__name__} has "
            f"no submodule(s) {missing}"
        )
    if getattr(model, "_inference_optimization", None) is not None:
        raise RuntimeError(
            f"this model was already optimised ({model._inference_optimization}); optimise a fresh copy instead"
        )
    model.eval()
    model.requires_grad_(False)
    if channels_last:
        model.visual_encoder.to(memory_format=torch.channels_last)
        model.visual_encoder.register_forward_pre_hook(_images_to_channels_last)
    if compile:
        options = {"freezing": True} if inductor_freezing else None
        for name in COMPILED_PARTS:
            if name != "head" or compile_head:
                getattr(model, name).compile(dynamic=dynamic, options=options)
    # Recorded so that a second call fails clearly instead of stacking hooks and compilations.
    model._inference_optimization = {
        "compile": compile,
        "compile_head": bool(compile and compile_head),
        "channels_last": channels_last,
        "inductor_freezing": inductor_freezing and compile,
    }
    return model


__all__ = ["optimize_for_inference"]
