"""PanopticNarrativeGroundingPipeline: the transformers pipeline of the "panoptic-narrative-grounding" task.

A saved model carries this file (and the processor files it imports) beside its weights, and its
config.json names it under `custom_pipelines`, so that transformers alone runs it:

    grounder = pipeline("panoptic-narrative-grounding", model=folder_or_repo, trust_remote_code=True)
    result = grounder(image, narrative, phrases)
    result["masks"]  # bool P x H x W at the image's original size

With the package installed, `import narrative_grounding` registers the task with transformers instead, and
`pipeline("panoptic-narrative-grounding", model=...)` needs no `trust_remote_code`.

The result is the schema of `PngProcessor.post_process_panoptic_narrative_grounding`: a dict with `masks`,
`scores`, `phrases`, `spans` (one per input record; a list of them for a list of records).

This file is copied into Hub repositories for `trust_remote_code`: relative and third-party imports only.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import Pipeline

from .configuration_png import PIPELINE_TASK
from .image_processing_png import PngBatchFeature
from .processing_png import PngProcessor, check_post_processing_options

RECORD_FIELDS = ("image", "narrative", "phrases")
# The processor's keyword names, accepted by the pipeline as aliases of its own (one documented name each).
FIELD_ALIASES = {"images": "image", "text": "narrative"}


class PanopticNarrativeGroundingPipeline(Pipeline):
    """image + narrative + phrases -> one mask per phrase.

    Call with `(image, narrative, phrases)`, with a record dict `{"image", "narrative", "phrases"}`, or with a
    list of such dicts. `image` is a PIL image, array, tensor or file path; phrases are strings (found in order
    in the narrative) or (start, end) character spans. The processor's names `images=` and `text=` are
    accepted as aliases of `image` and `narrative` (as keywords and as record keys).

    Call options: `threshold` (0.5), `mask_decision` ("threshold" or "expected_iou"; default: the model's
    processor's `post_process_mask_decision`), `return_rle` (COCO RLE masks), `overlapping_windows` and `max_length`
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
                # The processor sits with the model, whose code is already running (installed, or trusted from
                # this folder or repository); without the flag AutoTokenizer, which reads the same config.json,
                # would ask again whether to trust it.
                self.processor = PngProcessor.from_pretrained(source, trust_remote_code=True)
            except OSError as error:
                raise ValueError(
                    f"no processor found with the model at {source!r} ({error}); pass processor=PngProcessor(...)"
                ) from error

    def __call__(
        self, image: Any = None, narrative: str | None = None, phrases: Any = None, **kwargs: Any
    ) -> Any:
        given = {"image": image, "narrative": narrative}
        for alias, name in FIELD_ALIASES.items():
            if alias in kwargs:
                if given[name] is not None:
                    raise TypeError(f"give the {name} once: as {name}= or as its alias {alias}=, not both")
                given[name] = kwargs.pop(alias)
        image, narrative = given["image"], given["narrative"]
        if image is None:
            raise TypeError(
                "no input: call with (image, narrative, phrases), a record dict, or a list of record dicts"
            )
        if narrative is None:
            if phrases is not None:
                raise TypeError(
                    "phrases were given without a narrative: call with (image, narrative, phrases)"
                )
            if isinstance(image, dict):
                records: Any = self._check_record(image, 0)
            elif isinstance(image, (list, tuple)):
                records = [self._check_record(record, index) for index, record in enumerate(image)]
            else:
                raise TypeError(
                    "the narrative is missing: call with (image, narrative, phrases) (narrative= or text=), a "
                    "record dict, or a list of record dicts"
                )
        else:
            if phrases is None:
                raise ValueError("phrases are required: the phrases of the narrative to ground")
            records = {"image": image, "narrative": narrative, "phrases": phrases}
        return super().__call__(records, **kwargs)

    @staticmethod
    def _check_record(record: Any, index: int) -> dict[str, Any]:
        """The record with the aliases `images` / `text` renamed; a clear error for a malformed one."""
        if not isinstance(record, dict):
            raise TypeError(f"record {index} must be a dict with image, narrative and phrases")
        record = dict(record)
        for alias, name in FIELD_ALIASES.items():
            if alias in record:
                if name in record:
                    raise ValueError(f"record {index} has both {name!r} and its alias {alias!r}: keep one")
                record[name] = record.pop(alias)
        missing = [field for field in RECORD_FIELDS if field not in record]
        if missing:
            raise ValueError(f"record {index} lacks the field(s) {missing}")
        return record

    def _sanitize_parameters(
        self,
        threshold: float | None = None,
        return_rle: bool | None = None,
        overlapping_windows: bool | None = None,
        max_length: int | None = None,
        chunk_size: int | None = None,
        mask_decision: str | None = None,
        **kwargs: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if kwargs:
            raise TypeError(f"unknown option(s) for {PIPELINE_TASK}: {sorted(kwargs)}")
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
                "mask_decision": mask_decision,
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

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """The model (with this module and `custom_pipelines`, see `PngConfig.save_pretrained`) and the
        processor beside it: the base class saves a tokenizer or an image processor, not a processor."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory, **kwargs)


__all__ = ["PanopticNarrativeGroundingPipeline"]
