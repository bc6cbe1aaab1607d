"""PngProcessor: (image, narrative, phrases) -> model inputs; model outputs -> one mask per phrase.

Phrases are located by character offsets, never by word indices: the fast tokenizer's offset mapping says
which WordPiece tokens cover each phrase's characters, so punctuation glued to words, accents, contractions
and repeated phrases cannot drift out of alignment (the published loaders' word-vs-WordPiece pitfall). A
phrase that does not fit the token limit is masked out with a warning naming it, and still gets an entry in
the results; `overlapping_windows=True` encodes a long narrative as several overlapping windows so that no
phrase is lost.

The returned `PngBatchFeature` holds exactly the model's inputs as keys; texts, spans and image sizes travel
in its `metadata` attribute, which post-processing reads.

This file is copied into Hub repositories for `trust_remote_code`: relative and third-party imports only.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer
from transformers.processing_utils import ProcessorMixin

from .image_processing_png import MASK_DECISIONS, POST_PROCESSING_FIELDS, PngBatchFeature, PngImageProcessor

Span = tuple[int, int]
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "phrase_token_mask", "phrase_mask")


# ---------------------------------------------------------------------------------------------- arguments
def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def check_text_options(max_length: Any, overlapping_windows: Any, window_stride: Any) -> None:
    """Raise for tokenisation options a processor cannot use (checked at construction and on every call)."""
    if not _is_int(max_length) or max_length < 3:
        raise ValueError(
            f"max_length must be an integer >= 3 ([CLS], [SEP] and one token), got {max_length!r}"
        )
    if not isinstance(overlapping_windows, (bool, np.bool_)):
        raise TypeError(f"overlapping_windows must be True or False, got {overlapping_windows!r}")
    if window_stride is not None and (not _is_int(window_stride) or window_stride < 1):
        raise ValueError(f"window_stride must be a positive integer (tokens), got {window_stride!r}")


def check_post_processing_options(
    *, threshold: Any = 0.5, chunk_size: Any = 8, return_rle: Any = False, mask_decision: Any = None
) -> None:
    """Raise for post-processing options that would give wrong masks: a threshold outside [0, 1] (or NaN)
    makes every mask empty or full, a chunk_size below 1 decodes no phrase at all, and a mask decision is one
    of `MASK_DECISIONS` (None: the image processor's)."""
    # NaN fails both comparisons, so it is caught here too
    if not _is_number(threshold) or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}")
    if not _is_int(chunk_size) or chunk_size < 1:
        raise ValueError(
            f"chunk_size must be a positive integer (phrases upsampled at once), got {chunk_size!r}"
        )
    if not isinstance(return_rle, (bool, np.bool_)):
        raise TypeError(f"return_rle must be True or False, got {return_rle!r}")
    if mask_decision is not None and mask_decision not in MASK_DECISIONS:
        raise ValueError(f"mask_decision must be one of {MASK_DECISIONS} or None, got {mask_decision!r}")


def _target_size(size: Any, sample: int) -> tuple[int, int]:
    """One (height, width) of `target_sizes` as two positive ints."""
    values = size.tolist() if isinstance(size, (torch.Tensor, np.ndarray)) else size
    if (
        not isinstance(values, (list, tuple))
        or len(values) != 2
        or not all(_is_number(value) and float(value).is_integer() and value >= 1 for value in values)
    ):
        raise ValueError(
            f"target_sizes[{sample}] must be (height, width), two positive integers; got {size!r}"
        )
    return int(values[0]), int(values[1])


# ---------------------------------------------------------------------------------------------- alignment
def resolve_phrase_spans(text: str, phrases: Sequence[str | Sequence[int]], sample: int = 0) -> list[Span]:
    """Character spans (start, end) of the phrases of one narrative.

    A phrase is a string, found in order (the k-th after the end of the (k-1)-th, case-sensitive, at word
    boundaries where the phrase starts / ends with a word character), or a (start, end) span. Raises
    ValueError naming the phrase when a string is not found, a span falls outside the text or is empty, or
    two phrases overlap.
    """
    spans: list[Span] = []
    cursor = 0
    for index, phrase in enumerate(phrases):
        if isinstance(phrase, str):
            if not phrase.strip():
                raise ValueError(f"narrative {sample}: phrase {index} is empty")
            pattern = ("(?<!\\w)" if re.match(r"\w", phrase) else "") + re.escape(phrase)
            pattern += "(?!\\w)" if re.search(r"\w$", phrase) else ""
            match = re.compile(pattern).search(text, cursor)
            if match is None:
                before = (
                    " (it occurs earlier: phrases are matched in order)" if re.search(pattern, text) else ""
                )
                raise ValueError(
                    f"narrative {sample}: phrase {index} {phrase!r} not found in the narrative after character "
                    f"{cursor}{before}; give (start, end) character spans for phrases that are not verbatim, "
                    f"in-order substrings"
                )
            span = (match.start(), match.end())
        elif (
            isinstance(phrase, (tuple, list))
            and len(phrase) == 2
            and all(isinstance(value, (int, np.integer)) for value in phrase)
        ):
            span = (int(phrase[0]), int(phrase[1]))
            if not 0 <= span[0] < span[1] <= len(text):
                raise ValueError(
                    f"narrative {sample}: phrase {index} span {span} is empty or outside the narrative "
                    f"(length {len(text)} characters)"
                )
        else:
            raise TypeError(
                f"narrative {sample}: phrase {index} must be a string or a (start, end) pair of ints, got {phrase!r}"
            )
        spans.append(span)
        cursor = span[1]
    order = sorted(range(len(spans)), key=lambda i: spans[i])
    for first, second in zip(order, order[1:], strict=False):
        if spans[second][0] < spans[first][1]:
            raise ValueError(
                f"narrative {sample}: phrases {first} {text[slice(*spans[first])]!r} {spans[first]} and "
                f"{second} {text[slice(*spans[second])]!r} {spans[second]} overlap"
            )
    return spans


def phrase_token_ranges(offsets: np.ndarray, spans: list[Span], text: str, sample: int = 0) -> list[Span]:
    """For each phrase, the [first, last] indices of the tokens (offsets N x 2, special tokens excluded)
    whose characters overlap its span. Raises ValueError for a phrase that covers no token."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    ranges = []
    for index, (start, end) in enumerate(spans):
        inside = np.flatnonzero((starts < end) & (ends > start) & (ends > starts))
        if inside.size == 0:
            raise ValueError(
                f"narrative {sample}: phrase {index} {text[start:end]!r} {(start, end)} covers no token "
                "(only whitespace or characters the tokenizer drops)"
            )
        ranges.append((int(inside[0]), int(inside[-1])))
    return ranges


def window_starts(num_tokens: int, window: int, stride: int) -> list[int]:
    """First token of each window of `window` tokens, every `stride` tokens, the last one ending at the end."""
    if num_tokens <= window:
        return [0]
    starts = list(range(0, num_tokens - window, stride))
    return [*starts, num_tokens - window]


def best_window(first: int, last: int, starts: list[int], window: int) -> int | None:
    """The window holding tokens first..last furthest from its edges (None when none holds them all)."""
    best, best_margin = None, -1
    for index, start in enumerate(starts):
        if start <= first and last < start + window:
            margin = min(first - start, start + window - 1 - last)
            if margin > best_margin:
                best, best_margin = index, margin
    return best


# ---------------------------------------------------------------------------------------------- COCO RLE
def mask_to_rle(mask: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """H x W binary mask -> COCO compressed RLE {"size": [H, W], "counts": str} (column-major runs starting
    with zeros, counts written in COCO's 6-bit ASCII code, as pycocotools' `encode`)."""
    mask = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    height, width = mask.shape
    flat = mask.astype(bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    boundaries = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(boundaries).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    characters = []
    for index, count in enumerate(counts):
        value = count - counts[index - 2] if index > 2 else count  # delta-code against the run of same value
        more = True
        while more:
            chunk = value & 0x1F
            value >>= 5  # arithmetic shift: negative deltas end at -1
            more = value != -1 if chunk & 0x10 else value != 0
            characters.append(chr(chunk + (0x20 if more else 0) + 48))
    return {"size": [height, width], "counts": "".join(characters)}


def expected_iou_masks(probabilities: torch.Tensor) -> torch.Tensor:
    """The mask of highest expected IoU of each phrase: probabilities P x H x W -> bool P x H x W.

    If each pixel were in the ground truth with its probability p, a mask M has about the expected IoU
    sum(p in M) / (|M| + sum(p outside M)); over masks of k pixels the k most probable are best, so the mask
    is the k most probable pixels for the k that maximises that ratio (at least one pixel; ties at the cut
    are all in)."""
    if probabilities.numel() == 0:
        return probabilities.bool()
    flat = probabilities.flatten(1).double()  # P x N
    ranked = flat.sort(dim=-1, descending=True).values
    inside = ranked.cumsum(dim=-1)  # sum of p over the k most probable pixels, k = 1..N
    outside = inside[:, -1:] - inside
    sizes = torch.arange(1, flat.shape[-1] + 1, dtype=flat.dtype, device=flat.device)
    best = (inside / (sizes + outside)).argmax(dim=-1, keepdim=True)  # P x 1
    cut = ranked.gather(-1, best)
    return (flat >= cut).view_as(probabilities)


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (compressed string or uncompressed list counts) -> H x W bool mask."""
    height, width = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, (bytes, str)):
        data = counts.encode() if isinstance(counts, str) else counts
        decoded: list[int] = []
        position = 0
        while position < len(data):
            value, shift, more = 0, 0, True
            while more:
                chunk = data[position] - 48
                value |= (chunk & 0x1F) << shift
                more = bool(chunk & 0x20)
                position += 1
                shift += 5
                if not more and chunk & 0x10:
                    value |= -1 << shift
            if len(decoded) > 2:
                value += decoded[-2]
            decoded.append(value)
        counts = decoded
    if sum(counts) != height * width:
        raise ValueError(f"RLE counts sum to {sum(counts)}, not {height}x{width}")
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape((height, width), order="F")


# ---------------------------------------------------------------------------------------------- processor
class PngProcessor(ProcessorMixin):
    r"""Processor of `PngForPanopticNarrativeGrounding`: a `PngImageProcessor` and a fast BERT tokenizer.

    Args:
        image_processor (`PngImageProcessor`), tokenizer (a fast tokenizer: offsets are required).
        max_length (`int`, defaults to 300 as EPNG): WordPiece tokens per sequence, [CLS] and [SEP] included.
        overlapping_windows (`bool`, defaults to `False`): encode a narrative longer than `max_length` as
            overlapping windows (`input_ids` B x Nw x T) so that no phrase is lost to truncation.
        window_stride (`int`, *optional*): tokens between window starts; defaults to half a window.
    """

    model_input_names = ["pixel_values", "pixel_mask", *TEXT_KEYS]

    def __init__(
        self,
        image_processor: PngImageProcessor | None = None,
        tokenizer: Any = None,
        max_length: int = 300,
        overlapping_windows: bool = False,
        window_stride: int | None = None,
        **kwargs: Any,
    ) -> None:
        check_text_options(max_length, overlapping_windows, window_stride)
        self.max_length = max_length
        self.overlapping_windows = overlapping_windows
        self.window_stride = window_stride
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> PngProcessor:
        """As the base class. The image processor's post-processing fields given here (e.g.
        `post_process_upsampled="probabilities"`) are applied through its constructor, which checks them, and
        are kept away from the tokenizer, which would otherwise keep them in its init_kwargs and write them
        into its tokenizer_config.json."""
        fields = {name: kwargs.pop(name) for name in POST_PROCESSING_FIELDS if name in kwargs}
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if fields:
            processor.image_processor = PngImageProcessor.from_dict(
                {**processor.image_processor.to_dict(), **fields}
            )
        return processor

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # transformers < 5.25 loads the sub-processors here (later releases resolve them from the processor's
        # signature). Load them by class rather than through the Auto registries, so that a saved processor
        # loads offline whether the package is installed or this file came from a Hub repository.
        trust_remote_code = kwargs.pop("trust_remote_code", None)
        image_processor = PngImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        # AutoTokenizer reads the folder's config.json first; where a model is saved beside the processor, that
        # config names custom code, and without the caller's answer transformers would prompt for it.
        tokenizer = AutoTokenizer.from_pretrained(
            pretrained_model_name_or_path, trust_remote_code=trust_remote_code, **kwargs
        )
        return [image_processor, tokenizer]

    # ------------------------------------------------------------------------------------------ encoding
    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        phrases: Sequence[Any] | None = None,
        phrase_masks: Any = None,
        return_tensors: str | None = "pt",
        max_length: int | None = None,
        overlapping_windows: bool | None = None,
        window_stride: int | None = None,
        padding: str = "longest",
        **images_kwargs: Any,
    ) -> PngBatchFeature:
        r"""Encode images, narratives and their phrases.

        Args:
            images: one image or a list (PIL, numpy, torch or file paths; see `PngImageProcessor`).
            text: one narrative or a list, one per image (`narrative=` is accepted as an alias).
            phrases: for one narrative a list of phrases, for a list of narratives a list of such lists. A
                phrase is a string (matched in order through the narrative) or a (start, end) character span.
            phrase_masks: optional ground truth, per image the masks of its phrases (P_i x H x W, in the same
                order as its phrases) -> `labels`.
            max_length, overlapping_windows, window_stride: override the processor's settings for this call.
            padding: "longest" (pad tokens to the longest sequence of the batch) or "max_length".
            images_kwargs: passed to the image processor (size, keep_aspect_ratio, pad_size, ...).

        Returns a `PngBatchFeature` with `pixel_values` (B x 3 x H x W), `pixel_mask` (B x H x W),
        `input_ids` / `attention_mask` / `token_type_ids` (B x T, or B x Nw x T with windows),
        `phrase_token_mask` (B x P x T or B x P x (Nw * T), long 0/1), `phrase_mask` (B x P, long),
        `labels` (B x P x H x W, with `phrase_masks`), and `metadata` (per sample: text, phrases, spans,
        phrase_kept, original_size, resized_size).
        """
        if "narrative" in images_kwargs:  # the pipeline's name for the text, accepted as an alias
            if text is not None:
                raise TypeError("give the narrative once: as text= or as its alias narrative=, not both")
            text = images_kwargs.pop("narrative")
        if return_tensors not in (None, "pt"):
            raise ValueError(
                f"return_tensors must be 'pt' (or None, which also gives torch tensors), got {return_tensors!r}"
            )
        if images is None and text is None:
            raise ValueError("give images, text (with phrases), or both")
        data: dict[str, torch.Tensor] = {}
        metadata: list[dict[str, Any]] = []
        if text is not None:
            max_length = self.max_length if max_length is None else max_length
            windows = self.overlapping_windows if overlapping_windows is None else overlapping_windows
            stride = self.window_stride if window_stride is None else window_stride
            check_text_options(max_length, windows, stride)
            texts, phrase_lists = self._batch_text(text, phrases)
            data.update(
                self._encode_text(
                    texts,
                    phrase_lists,
                    metadata,
                    max_length=max_length,
                    windows=windows,
                    stride=stride,
                    padding=padding,
                )
            )
        elif phrase_masks is not None:
            raise ValueError("phrase_masks need the narratives and phrases they belong to (text=, phrases=)")
        if images is not None:
            image_features = self.image_processor(images, phrase_masks=phrase_masks, **images_kwargs)
            if metadata and len(image_features.metadata) != len(metadata):
                raise ValueError(
                    f"got {len(image_features.metadata)} image(s) for {len(metadata)} narrative(s): give one "
                    "narrative per image"
                )
            if not metadata:
                metadata = [{} for _ in image_features.metadata]
            for sample, (meta, image_meta) in enumerate(zip(metadata, image_features.metadata, strict=True)):
                meta.update(image_meta)
                if phrase_masks is not None and "phrases" in meta:
                    self._check_mask_count(sample, meta, image_features["labels"])
            data["pixel_values"] = image_features["pixel_values"]
            data["pixel_mask"] = image_features["pixel_mask"]
            if "labels" in image_features:
                data["labels"] = self._pad_labels(
                    image_features["labels"], data["phrase_mask"].shape[1], metadata
                )
        return PngBatchFeature(data, metadata=metadata)

    @staticmethod
    def _batch_text(text: str | list[str], phrases: Any) -> tuple[list[str], list[list[Any]]]:
        if phrases is None:
            raise ValueError("phrases are required with text: the phrases of each narrative to ground")
        if isinstance(phrases, str):  # list("a dog") would be the phrases "a", " ", "d", ...
            raise TypeError(
                f"phrases must be a list of phrases, got the string {phrases!r}; write [{phrases!r}]"
            )
        if isinstance(text, str):
            return [text], [list(phrases)]
        if not isinstance(text, (list, tuple)) or not all(isinstance(item, str) for item in text):
            raise TypeError("text must be a narrative string or a list of narrative strings")
        if len(phrases) != len(text) or not all(isinstance(item, (list, tuple)) for item in phrases):
            raise ValueError(
                f"for a list of {len(text)} narratives, phrases must be a list of {len(text)} lists of phrases"
            )
        return list(text), [list(item) for item in phrases]

    def _encode_text(
        self,
        texts: list[str],
        phrase_lists: list[list[Any]],
        metadata: list[dict[str, Any]],
        *,
        max_length: int,
        windows: bool,
        stride: int | None,
        padding: str,
    ) -> dict[str, torch.Tensor]:
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError("PngProcessor needs a fast tokenizer (character offsets); got a slow one")
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        window = max_length - 2  # content tokens per sequence, between [CLS] and [SEP]
        stride = stride if stride is not None else max(1, window // 2)
        if windows and not 0 < stride <= window:
            raise ValueError(f"window_stride must be in 1..{window} (max_length - 2), got {stride}")
        encodings = self.tokenizer(
            texts,
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # no "sequence longer than model_max_length" warning: we cut it ourselves
        )

        # Per sample: the windows (start token of each) and, per phrase, (window, first, last) or None if lost.
        plans = []
        for sample, (text, phrase_list) in enumerate(zip(texts, phrase_lists, strict=True)):
            spans = resolve_phrase_spans(text, phrase_list, sample)
            offsets = np.asarray(encodings["offset_mapping"][sample], dtype=np.int64).reshape(-1, 2)
            ranges = phrase_token_ranges(offsets, spans, text, sample)
            num_tokens = len(offsets)
            starts = window_starts(num_tokens, window, stride) if windows else [0]
            placements, lost = [], []
            for index, (first, last) in enumerate(ranges):
                chosen = best_window(first, last, starts, window)
                placements.append(
                    None if chosen is None else (chosen, first - starts[chosen], last - starts[chosen])
                )
                if chosen is None:
                    lost.append(f"{index} {text[slice(*spans[index])]!r}")
            if lost:
                reason = (
                    f"longer than a window of {window} tokens"
                    if windows
                    else f"beyond max_length={max_length} tokens (the narrative has {num_tokens + 2}); "
                    "pass overlapping_windows=True to keep every phrase"
                )
                warnings.warn(
                    f"narrative {sample}: phrase(s) {', '.join(lost)} {reason}: masked out (phrase_mask 0); they "
                    "keep an entry with an empty mask in post-processing",
                    UserWarning,
                    stacklevel=3,
                )
            lengths = [min(window, num_tokens - start) for start in starts]
            plans.append((starts, lengths, placements))
            metadata.append(
                {
                    "text": text,
                    "phrases": [text[start:end] for start, end in spans],
                    "spans": spans,
                    "phrase_kept": [placement is not None for placement in placements],
                }
            )

        batch = len(texts)
        num_windows = max(len(plan[0]) for plan in plans)
        seq_len = max_length if padding == "max_length" else max(max(plan[1]) for plan in plans) + 2
        num_phrases = max(len(plan[2]) for plan in plans)
        input_ids = torch.full((batch, num_windows, seq_len), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(batch, num_windows, seq_len, dtype=torch.long)
        phrase_token_mask = torch.zeros(batch, num_phrases, num_windows * seq_len, dtype=torch.long)
        phrase_mask = torch.zeros(batch, num_phrases, dtype=torch.long)
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        for sample, (starts, lengths, placements) in enumerate(plans):
            ids = encodings["input_ids"][sample]
            for w, (start, length) in enumerate(zip(starts, lengths, strict=True)):
                row = [cls_id, *ids[start : start + length], sep_id]
                input_ids[sample, w, : len(row)] = torch.tensor(row)
                attention_mask[sample, w, : len(row)] = 1
            for p, placement in enumerate(placements):
                if placement is None:
                    continue
                w, first, last = placement
                offset = w * seq_len + 1  # window-major, after [CLS]
                phrase_token_mask[sample, p, offset + first : offset + last + 1] = 1
                phrase_mask[sample, p] = 1
        if not windows:  # B x 1 x T -> B x T
            input_ids, attention_mask = input_ids[:, 0], attention_mask[:, 0]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": torch.zeros_like(input_ids),
            "phrase_token_mask": phrase_token_mask,
            "phrase_mask": phrase_mask,
        }

    @staticmethod
    def _check_mask_count(sample: int, meta: dict[str, Any], labels: torch.Tensor) -> None:
        count = meta.get("num_masks")
        if count is not None and count != len(meta["phrases"]):
            raise ValueError(
                f"sample {sample}: {count} ground-truth masks for {len(meta['phrases'])} phrases; give one mask per "
                "phrase, in the order of the phrases"
            )

    @staticmethod
    def _pad_labels(labels: torch.Tensor, num_phrases: int, metadata: list[dict[str, Any]]) -> torch.Tensor:
        """labels B x P_img x H x W -> B x P x H x W (P = phrase slots of the text side)."""
        if labels.shape[1] < num_phrases:
            labels = F.pad(labels, (0, 0, 0, 0, 0, num_phrases - labels.shape[1]))
        return labels[:, :num_phrases]

    # ------------------------------------------------------------------------------------------ decoding
    def post_process_panoptic_narrative_grounding(
        self,
        outputs: Any,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        threshold: float = 0.5,
        *,
        inputs: PngBatchFeature | None = None,
        return_rle: bool = False,
        chunk_size: int = 8,
        inclusive_threshold: bool = False,
        mask_decision: str | None = None,
    ) -> list[dict[str, Any]]:
        r"""Mask logits -> one binary mask per phrase at each image's original size.

        How the stride-4 logits are resized follows the image processor's `post_process_align_corners` and
        `post_process_upsampled` (defaults: logits, `align_corners=False`; EPNG's release: probabilities, first
        to the input size with `align_corners=True`).

        Args:
            outputs: the model output (`pred_masks` B x P x H/4 x W/4 logits) or that tensor.
            target_sizes: (height, width) per image; defaults to the original sizes in `inputs.metadata`.
            threshold: probability above which a pixel is in a phrase's mask (EPNG: 0.5), with the
                "threshold" decision.
            mask_decision: "threshold" or "expected_iou" (see the image processor's
                `post_process_mask_decision`); None: the image processor's setting.
            inclusive_threshold: a probability equal to `threshold` is in the mask too (`>=`, as EPNG's
                `val.py` binarises; the default `>` is the PPMN family's).
            inputs: the processor's output for this batch: its metadata undoes the padding / aspect-ratio
                resize exactly and gives the phrase texts and spans. Without it the masks are assumed to fill
                `pixel_values`, every phrase slot is returned, and `phrases` / `spans` hold None.
            return_rle: return COCO RLE dicts instead of dense masks (for many phrases on large images).
            chunk_size: phrases upsampled at once (bounds memory: chunk_size x H x W floats).

        Returns: per image a dict with
            - `masks`: bool tensor P x H x W (or a list of P COCO RLE dicts with `return_rle`),
            - `scores`: float tensor P: mean probability inside the predicted mask, or, for an empty mask, the
              highest probability of the image (so a score >= threshold iff the mask is non-empty); NaN for a
              phrase that was lost to truncation (never seen by the model, empty mask),
            - `phrases`: the P phrase texts, `spans`: their (start, end) character offsets in the narrative.
        """
        check_post_processing_options(
            threshold=threshold, chunk_size=chunk_size, return_rle=return_rle, mask_decision=mask_decision
        )
        if not isinstance(inclusive_threshold, bool):
            raise TypeError(f"inclusive_threshold must be True or False, got {inclusive_threshold!r}")
        if mask_decision is None:
            mask_decision = self.image_processor.post_process_mask_decision
        logits = outputs if isinstance(outputs, torch.Tensor) else getattr(outputs, "pred_masks", None)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
            raise ValueError(
                "outputs must be the model's output or its pred_masks tensor (batch, phrases, height, width), got "
                + (
                    f"shape {tuple(logits.shape)}"
                    if isinstance(logits, torch.Tensor)
                    else type(outputs).__name__
                )
            )
        batch = logits.shape[0]
        metadata = inputs.metadata if inputs is not None else [{} for _ in range(batch)]
        if len(metadata) != batch:
            raise ValueError(f"inputs describe {len(metadata)} samples but pred_masks has {batch}")
        for sample, meta in enumerate(metadata):
            if len(meta.get("phrases", ())) > logits.shape[1]:
                raise ValueError(
                    f"sample {sample} has {len(meta['phrases'])} phrases but pred_masks only {logits.shape[1]} "
                    "phrase slots: the outputs do not come from these inputs"
                )
        if target_sizes is None:
            if inputs is None or any("original_size" not in meta for meta in metadata):
                raise ValueError(
                    "give target_sizes, or the processor's inputs (which know the original sizes)"
                )
            target_sizes = [meta["original_size"] for meta in metadata]
        if len(target_sizes) != batch:
            raise ValueError(f"got {len(target_sizes)} target sizes for a batch of {batch}")
        target_sizes = [_target_size(size, sample) for sample, size in enumerate(target_sizes)]
        if inputs is not None and "pixel_values" in inputs:
            padded = tuple(inputs["pixel_values"].shape[-2:])
        else:
            # without the inputs, the input size is taken as that of a stride-4 head's logits
            padded = (logits.shape[-2] * 4, logits.shape[-1] * 4)

        # How the stride-4 predictions are resized: the image processor's saved settings.
        align_corners = self.image_processor.post_process_align_corners
        upsample_probabilities = self.image_processor.post_process_upsampled == "probabilities"
        results = []
        for sample in range(batch):
            meta = metadata[sample]
            target = target_sizes[sample]
            content = tuple(meta.get("resized_size", padded))
            num_phrases = len(meta["phrases"]) if "phrases" in meta else logits.shape[1]
            kept = meta.get("phrase_kept", [True] * num_phrases)
            masks, rles, scores = [], [], []
            for begin in range(0, num_phrases, chunk_size):
                end = min(begin + chunk_size, num_phrases)  # padded phrase slots are never decoded
                chunk = logits[sample, begin:end].float()[None]  # 1 x p x h x w
                not_finite = torch.isnan(chunk[0]).flatten(1).any(-1).tolist()
                for offset, bad in enumerate(not_finite):
                    if bad and kept[begin + offset]:  # NaN would silently become an empty mask
                        raise ValueError(
                            f"pred_masks of sample {sample} hold NaN for phrase {begin + offset}: the model's output "
                            "is not finite (check its inputs and dtype)"
                        )
                if upsample_probabilities:  # EPNG's release: sigmoid at stride 4, then the resizes
                    chunk = chunk.sigmoid()
                if content != padded or align_corners:  # undo the padding in input pixels, then the resize
                    chunk = F.interpolate(chunk, size=padded, mode="bilinear", align_corners=align_corners)
                    chunk = chunk[..., : content[0], : content[1]]
                chunk = F.interpolate(chunk, size=target, mode="bilinear", align_corners=False)[0]
                probs = chunk if upsample_probabilities else chunk.sigmoid()  # bilinear keeps [0, 1]
                if mask_decision == "expected_iou":
                    binary = expected_iou_masks(probs)  # p x H x W
                else:
                    binary = probs >= threshold if inclusive_threshold else probs > threshold  # p x H x W
                area = binary.flatten(1).sum(-1)
                inside = (probs * binary).flatten(1).sum(-1) / area.clamp(min=1)
                chunk_scores = torch.where(area > 0, inside, probs.flatten(1).amax(-1))
                for offset in range(binary.shape[0]):
                    if not kept[begin + offset]:
                        binary[offset] = False
                        chunk_scores[offset] = math.nan
                scores.append(chunk_scores.cpu())
                if return_rle:
                    rles.extend(mask_to_rle(plane) for plane in binary)
                else:
                    masks.append(binary.cpu())
            empty = torch.zeros(0, *target, dtype=torch.bool)
            results.append(
                {
                    "masks": rles if return_rle else (torch.cat(masks) if masks else empty),
                    "scores": torch.cat(scores) if scores else torch.zeros(0),
                    "phrases": meta.get("phrases", [None] * num_phrases),
                    "spans": meta.get("spans", [None] * num_phrases),
                }
            )
        return results

    def post_process_panoptic_map(
        self,
        outputs: Any,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        threshold: float = 0.5,
        *,
        inputs: PngBatchFeature | None = None,
        overlap_threshold: float = 0.8,
        chunk_size: int = 8,
    ) -> list[dict[str, Any]]:
        r"""One non-overlapping map per image, for display: mask-wise merging by confidence (Panoptic SegFormer):
        phrases in decreasing score order each take the pixels of their mask that no better phrase took; a
        phrase left with less than `overlap_threshold` of its mask is dropped.

        Returns per image `segmentation` (long H x W: phrase index, -1 where no phrase) and `segments_info`
        (list of dicts: `id` = phrase index, `phrase`, `span`, `score`, `area` in the map).
        """
        if not _is_number(overlap_threshold) or not 0.0 <= float(overlap_threshold) <= 1.0:
            raise ValueError(f"overlap_threshold must be a fraction in [0, 1], got {overlap_threshold!r}")
        grounded = self.post_process_panoptic_narrative_grounding(
            outputs, target_sizes, threshold, inputs=inputs, chunk_size=chunk_size
        )
        maps = []
        for result in grounded:
            masks, scores = result["masks"], result["scores"]
            segmentation = torch.full(masks.shape[-2:], -1, dtype=torch.long)
            segments = []
            order = sorted(
                (i for i in range(len(scores)) if not math.isnan(float(scores[i]))),
                key=lambda i: -float(scores[i]),
            )
            for index in order:
                area = int(masks[index].sum())
                if area == 0:
                    continue
                visible = masks[index] & (segmentation < 0)
                visible_area = int(visible.sum())
                if visible_area / area < overlap_threshold:
                    continue
                segmentation[visible] = index
                segments.append(
                    {
                        "id": index,
                        "phrase": result["phrases"][index],
                        "span": result["spans"][index],
                        "score": float(scores[index]),
                        "area": visible_area,
                    }
                )
            maps.append({"segmentation": segmentation, "segments_info": segments})
        return maps


PngProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "PngProcessor",
    "check_post_processing_options",
    "check_text_options",
    "expected_iou_masks",
    "mask_to_rle",
    "resolve_phrase_spans",
    "rle_to_mask",
]
