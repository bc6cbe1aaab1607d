"""The "panoptic-narrative-grounding" task, registered with transformers for users of the installed package.

    from transformers import pipeline
    import narrative_grounding  # registers the task
    grounder = pipeline("panoptic-narrative-grounding", model="path/to/saved-model")   # or model=<model object>,
    result = grounder(image, narrative, phrases)                                       #    processor=<PngProcessor>

The pipeline class lives in `modeling/pipeline_png.py`, the file every saved model carries for users without
the package (`pipeline(..., trust_remote_code=True)`); it is re-exported here.
"""

from __future__ import annotations

from transformers import AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from .modeling.configuration_png import PIPELINE_TASK, PngConfig
from .modeling.pipeline_png import PanopticNarrativeGroundingPipeline

TASK = PIPELINE_TASK


def register_pipeline() -> None:
    """Register the task with transformers (done on import of this module; idempotent).

    The model class is given as `AutoModel`, as in a saved config's `custom_pipelines`: `Pipeline.save_pretrained`
    writes the names of these classes, which transformers later looks up in the `transformers` namespace.
    """
    if TASK not in PIPELINE_REGISTRY.supported_tasks:
        PIPELINE_REGISTRY.register_pipeline(
            TASK, pipeline_class=PanopticNarrativeGroundingPipeline, pt_model=AutoModel, type="multimodal"
        )
    # Saved configs name the task in custom_pipelines; the installed PngConfig now leaves that entry to this
    # registration (see PngConfig.__post_init__).
    PngConfig.pipeline_registered_in_process = True


register_pipeline()

__all__ = ["TASK", "PanopticNarrativeGroundingPipeline", "register_pipeline"]
