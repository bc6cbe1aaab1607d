"""narrative-grounding: Panoptic Narrative Grounding models, processor, data, metric and training,
the Hugging Face way."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor

from .factory import available_variants, create_model, load_config, load_processor, load_variant
from .inference_optimization import optimize_for_inference
from .modeling.configuration_png import PngConfig
from .modeling.image_processing_png import PngBatchFeature, PngImageProcessor
from .modeling.modeling_png import PngForPanopticNarrativeGrounding, PngOutput, PngPreTrainedModel
from .modeling.processing_png import PngProcessor
from .pipeline import PanopticNarrativeGroundingPipeline  # registers the "panoptic-narrative-grounding" task

__version__ = "0.1.0"

# In-process Auto classes. The auto_map entries of saved folders (for `trust_remote_code` users) come from
# the register_for_auto_class calls here and at the bottom of the processor modules.
AutoConfig.register(PngConfig.model_type, PngConfig, exist_ok=True)
AutoModel.register(PngConfig, PngForPanopticNarrativeGrounding, exist_ok=True)
AutoImageProcessor.register(
    PngConfig, image_processor_classes={"torchvision": PngImageProcessor}, exist_ok=True
)
AutoProcessor.register(PngConfig, PngProcessor, exist_ok=True)
PngConfig.register_for_auto_class()
PngForPanopticNarrativeGrounding.register_for_auto_class("AutoModel")

__all__ = [
    "PanopticNarrativeGroundingPipeline",
    "PngBatchFeature",
    "PngConfig",
    "PngForPanopticNarrativeGrounding",
    "PngImageProcessor",
    "PngOutput",
    "PngPreTrainedModel",
    "PngProcessor",
    "available_variants",
    "create_model",
    "load_config",
    "load_processor",
    "load_variant",
    "optimize_for_inference",
]
