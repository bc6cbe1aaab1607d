"""The "panoptic-narrative-grounding" transformers pipeline.

    from transformers import pipeline
    import narrative_grounding  # registers the task
    grounder = pipeline("panoptic-narrative-grounding", model="path/to/saved-model")   # or model=<model object>,
    result = grounder(image, narrative, phrases)                                       #    processor=<PngProcessor>
    result["masks"]  # bool P x H x W at the image's original size

The result is the schema of `PngProcessor.post_process_panoptic_narrative_grounding`: a dict with `masks`,
`scores`, `phrases`, `spans` (one per input record; a list of them for a list of records).
"""

from __future__ import annotations

from typing import Any

from transformers import Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .modeling.image_processing_png import PngBatchFeature
from .modeling.modeling_png import PngForPanopticNarrativeGrounding
from .modeling.processing_png import PngProcessor, check_post_processing_options

TASK = "panoptic-narrative-grounding"


class PanopticNarrativeGroundingPipeline(Pipeline):
    """image + narrative + phrases -> one mask per phrase.

    Call with `(image, narrative, phrases)`, with a record dict `{"image", "narrative", "phrases"}`, or with a
    list of such dicts. `image` is a PIL image, array, tensor or file path; phrases are strings (found in order
    in the narrative) or (start, end) character spans.

    Call options: `threshold` (0.5), `return_rle` (COCO RLE masks), `overlapping_windows` and `max_length`
    (see `PngProcessor`), `chunk_size` (phrases upsampled at once).
    """

    # The processor is loaded below from the model's folder, as one PngProcessor (not through the Auto
    # classes' tokenizer / image-processor guesses).
    _load_processor = False
    _load_image_processor = False
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.processor is None:
            source = getattr(self.model, "name_or_path", None)
            if not source:
                raise ValueError(
                    "no processor: pass processor=PngProcessor(...) with a model object, or a model folder that "
                    "holds the processor saved beside the weights"
                )
            try:
                self.processor = PngProcessor.from_pretrained(source)
            except OSError as error:
                raise ValueError(
                    f"no processor found with the model at {source!r} ({error}); pass processor=PngProcessor(...)"
                ) from error

    def __call__(self, image: Any, narrative: str | None = None, phrases: Any = None, **kwargs: Any) -> Any:
        if narrative is None:
            records = image  # a record dict or a list of them
            if isinstance(records, dict):
                self._check_record(records, 0)
            elif isinstance(records, (list, tuple)):
                for index, record in enumerate(records):
                    self._check_record(record, index)
            else:
                raise TypeError(
                    "call with (image, narrative, phrases), a record dict, or a list of record dicts"
                )
        else:
            if phrases is None:
                raise ValueError("phrases are required: the phrases of the narrative to ground")
            records = {"image": image, "narrative": narrative, "phrases": phrases}
        return super().__call__(records, **kwargs)

    @staticmethod
    def _check_record(record: Any, index: int) -> None:
        if not isinstance(record, dict):
            raise TypeError(f"record {index} must be a dict with image, narrative and phrases")
        missing = {"image", "narrative", "phrases"} - record.keys()
        if missing:
            raise ValueError(f"record {index} lacks the field(s) {sorted(missing)}")

    def _sanitize_parameters(
        self,
        threshold: float | None = None,
        return_rle: bool | None = None,
        overlapping_windows: bool | None = None,
        max_length: int | None = None,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if kwargs:
            raise TypeError(f"unknown option(s) for {TASK}: {sorted(kwargs)}")
        preprocess = {
            key: value
            for key, value in {"overlapping_windows": overlapping_windows, "max_length": max_length}.items()
            if value is not None
        }
        postprocess = {
            key: value
            for key, value in {
                "threshold": threshold,
                "return_rle": return_rle,
                "chunk_size": chunk_size,
            }.items()
            if value is not None
        }
        check_post_processing_options(**postprocess)  # before any image is read or the model runs
        return preprocess, {}, postprocess

    def preprocess(self, record: dict[str, Any], **options: Any) -> dict[str, Any]:
        encoding = self.processor(
            images=record["image"], text=record["narrative"], phrases=record["phrases"], **options
        )
        # The base class moves plain dicts between devices and would drop a BatchFeature subclass' metadata.
        return {"model_inputs": dict(encoding), "metadata": encoding.metadata}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        outputs = self.model(**model_inputs["model_inputs"])
        return {
            "pred_masks": outputs.pred_masks,
            "pixel_values": model_inputs["model_inputs"]["pixel_values"],
            "metadata": model_inputs["metadata"],
        }

    def postprocess(self, model_outputs: dict[str, Any], **options: Any) -> dict[str, Any]:
        inputs = PngBatchFeature(
            {"pixel_values": model_outputs["pixel_values"]}, metadata=model_outputs["metadata"]
        )
        return self.processor.post_process_panoptic_narrative_grounding(
            model_outputs["pred_masks"], inputs=inputs, **options
        )[0]


def register_pipeline() -> None:
    """Register the task with transformers (done on import of this module; idempotent)."""
    if TASK not in PIPELINE_REGISTRY.supported_tasks:
        PIPELINE_REGISTRY.register_pipeline(
            TASK,
            pipeline_class=PanopticNarrativeGroundingPipeline,
            pt_model=PngForPanopticNarrativeGrounding,
            type="multimodal",
        )


register_pipeline()

__all__ = ["TASK", "PanopticNarrativeGroundingPipeline", "register_pipeline"]
