"""narrative-grounding: Panoptic Narrative Grounding models, processor, data, metric and training,
the Hugging Face way."""

from transformers import AutoConfig, AutoModel

from .factory import available_variants, create_model, load_config, load_variant
from .modeling.configuration_png import PngConfig
from .modeling.modeling_png import PngForPanopticNarrativeGrounding, PngOutput, PngPreTrainedModel

__version__ = "0.1.0"

# In-process Auto classes, and auto_map entries in saved folders for `trust_remote_code` users.
AutoConfig.register(PngConfig.model_type, PngConfig, exist_ok=True)
AutoModel.register(PngConfig, PngForPanopticNarrativeGrounding, exist_ok=True)
PngConfig.register_for_auto_class()
PngForPanopticNarrativeGrounding.register_for_auto_class("AutoModel")

__all__ = [
    "PngConfig",
    "PngForPanopticNarrativeGrounding",
    "PngOutput",
    "PngPreTrainedModel",
    "available_variants",
    "create_model",
    "load_config",
    "load_variant",
]
