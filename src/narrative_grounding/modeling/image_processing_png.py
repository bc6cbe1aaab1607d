"""PngImageProcessor: images (and their phrases' ground-truth masks) -> `pixel_values`, `pixel_mask`, `labels`.

Torchvision backend of transformers' image processors: it was the fastest here (a 640x480 JPEG to a normalised
640x640 tensor, see benchmarks/processor.py), and this file converts every input itself (PIL, numpy, torch;
grayscale, alpha, palette, CMYK, 16-bit, EXIF orientation) into one tensor form before any resampling, so the
result does not depend on how the image arrived.

Geometry, shared by images and masks: resize (default 640x640 as EPNG; or keep the aspect ratio), then pad
bottom/right with zeros to a multiple of 32 (the coarsest FPN stride) and to the largest image of the batch.
`pixel_mask` marks the real pixels. Masks are resized nearest-neighbour ("nearest-exact": the same half-pixel
centres as the bilinear image resize, so masks stay aligned with the image).

This file is copied into Hub repositories for `trust_remote_code`: third-party imports only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs

SIZE_DIVISOR = 32  # pixel_values height and width must be multiples of the coarsest FPN stride
CHANNEL_ORDERS = ("RGB", "BGR")
# What post-processing resizes: the stride-4 logits (ours) or their sigmoid probabilities (EPNG's release).
POST_PROCESS_UPSAMPLED = ("logits", "probabilities")
# How post-processing decides each mask from its probabilities: a fixed threshold (the papers) or the mask of
# highest expected IoU under those probabilities (ours).
MASK_DECISIONS = ("threshold", "expected_iou")
# The image processor's fields read only by post-processing: constructor arguments, not per-call options.
POST_PROCESSING_FIELDS = (
    "post_process_align_corners",
    "post_process_upsampled",
    "post_process_mask_decision",
)


class PngImagesKwargs(ImagesKwargs, total=False):
    """keep_aspect_ratio: fit the image inside `size` (height/width) without distorting it, then pad.
    apply_exif_orientation: rotate/flip PIL images (and image files) as their EXIF Orientation tag says.
    channel_order: "RGB" or "BGR", the order of the channels in `pixel_values` (and of image_mean/std)."""

    keep_aspect_ratio: bool | None
    apply_exif_orientation: bool | None
    channel_order: str | None


class PngBatchFeature(BatchFeature):
    """A `BatchFeature` whose keys are exactly the model's inputs, plus `metadata`: one dict per sample with
    what post-processing needs but the model must not receive (kept out of the keys so that
    `model(**inputs)` works):

    - `original_size`: (height, width) of the input image (after EXIF orientation);
    - `resized_size`: (height, width) of the image content at the top-left corner of `pixel_values`;
    - from `PngProcessor` also `text` (the narrative), `phrases` (texts), `spans` ((start, end) character
      offsets) and `phrase_kept` (False for a phrase lost to truncation).

    `metadata` survives `.to(device)` and pickling (DataLoader workers).
    """

    def __init__(
        self,
        data: dict[str, Any] | None = None,
        tensor_type: str | None = None,
        metadata: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data, tensor_type=tensor_type, **kwargs)
        self.metadata = metadata if metadata is not None else []

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.data, "metadata": self.metadata}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.data = state["data"]
        self.metadata = state.get("metadata", [])


def _composite_on_white(color: torch.Tensor, alpha: torch.Tensor, scale: float) -> torch.Tensor:
    """C x H x W colour over a white background by its 1 x H x W alpha (both in [0, scale]); float result."""
    alpha = alpha.float() / scale
    return color.float() * alpha + scale * (1.0 - alpha)


def image_to_tensor(image: Any, *, apply_exif_orientation: bool = True, index: int = 0) -> torch.Tensor:
    """Any supported image -> 3 x H x W RGB tensor, uint8 (8-bit sources) or float32 on the 0..255 scale.

    PIL: EXIF orientation applied (optional); palette, 1-bit, CMYK, YCbCr, LAB, HSV converted to RGB; alpha
    composited over white; 16-bit modes ("I;16", "I") read as 0..65535.
    numpy / torch: H x W, or 3-D channels-last for numpy and channels-first for torch (the other layout is
    recognised when unambiguous), with 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) channels. uint8 is
    0..255, uint16 0..65535, bool 0/1, float must lie in [0, 1].
    """
    where = f"image {index}"
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{where}: no image file {path}")
        try:
            image = PIL.Image.open(path)
            image.load()
        except (OSError, PIL.UnidentifiedImageError) as error:
            raise ValueError(f"{where}: cannot read {path} as an image: {error}") from error
    if isinstance(image, PIL.Image.Image):
        if apply_exif_orientation:
            image = PIL.ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            array = np.array(image).astype(np.int64)
            if array.min() < 0 or array.max() > 65535:
                raise ValueError(f"{where}: PIL mode {image.mode} values outside 0..65535")
            array = array.astype(np.uint16)
        elif image.mode == "F":
            array = np.array(image, dtype=np.float32)
        elif image.mode in ("RGB", "RGBA", "L", "LA"):
            array = np.array(image)
        elif image.mode in ("P", "PA"):
            has_alpha = image.mode == "PA" or "transparency" in image.info
            array = np.array(image.convert("RGBA" if has_alpha else "RGB"))
        elif image.mode == "1":
            array = np.array(image.convert("L"))
        else:  # CMYK, YCbCr, LAB, HSV, RGBX, RGBa, La, ...
            array = np.array(image.convert("RGBA" if "A" in image.mode else "RGB"))
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        channels_last = tensor.dim() == 3
    elif isinstance(image, np.ndarray):
        array = np.ascontiguousarray(image)
        tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
        channels_last = tensor.dim() == 3 and not (image.shape[0] in (1, 2, 3, 4) and image.shape[-1] > 4)
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        channels_last = tensor.dim() == 3 and tensor.shape[-1] in (1, 2, 3, 4) and tensor.shape[0] > 4
    else:
        raise TypeError(
            f"{where}: unsupported type {type(image).__name__}; give a PIL image, a numpy array, a torch tensor "
            "or the path of an image file"
        )

    if tensor.dim() == 2:
        tensor = tensor[None]
    elif tensor.dim() != 3:
        raise ValueError(f"{where}: expected a 2-D or 3-D image, got shape {tuple(tensor.shape)}")
    elif channels_last:
        tensor = tensor.permute(2, 0, 1)
    if tensor.shape[0] not in (1, 2, 3, 4):
        raise ValueError(
            f"{where}: cannot find the channel axis of shape {tuple(tensor.shape)} "
            "(expected 1, 2, 3 or 4 channels first or last)"
        )
    if tensor.shape[1] == 0 or tensor.shape[2] == 0:
        raise ValueError(f"{where}: empty image of shape {tuple(tensor.shape)}")

    # One value scale for every source: 8-bit data becomes uint8 (fast resampling), everything else
    # float32 on the 0..255 scale, so rescale_factor = 1/255 applies to all.
    if tensor.dtype == torch.uint8:
        scale = 255.0
    elif tensor.dtype == torch.uint16:
        tensor, scale = tensor.to(torch.float32), 65535.0
    elif tensor.dtype == torch.bool:
        tensor, scale = tensor.to(torch.uint8) * 255, 255.0
    elif tensor.is_floating_point():
        tensor = tensor.to(torch.float32)
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):  # NaN passes any range test and turns every mask of the image empty
            first = tuple((~finite).nonzero()[0].tolist())
            raise ValueError(
                f"{where}: {int((~finite).sum())} non-finite value(s) (NaN or infinity), the first at "
                f"(channel, row, column) {first}; float images must have finite values in [0, 1]"
            )
        low, high = float(tensor.min()), float(tensor.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{where}: float images must have values in [0, 1], got [{low:.3g}, {high:.3g}]; "
                "pass uint8 arrays for 0..255 data"
            )
        scale = 1.0
    else:
        raise ValueError(
            f"{where}: unsupported dtype {tensor.dtype}; use uint8, uint16, bool or float in [0, 1]"
        )

    if scale != 255.0:
        # Data that is exactly 8-bit (a float image of k/255 values, a 16-bit one of k*257 values) takes the
        # uint8 path, so that it gives the same pixels as the 8-bit original: torchvision's uint8 resampling
        # rounds differently from its float resampling (by up to ~1 grey level).
        levels = tensor.to(torch.float64) * (255.0 / scale)
        rounded = levels.round()
        if bool(((levels - rounded).abs() < 1e-4).all()):  # float32 k/255 is off by ~1e-5 levels
            tensor, scale = rounded.to(torch.uint8), 255.0

    channels = tensor.shape[0]
    if channels in (2, 4):  # gray + alpha / RGBA
        tensor = _composite_on_white(tensor[:-1], tensor[-1:], scale)
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    if scale != 255.0 or (tensor.is_floating_point() and channels in (2, 4)):
        tensor = tensor.float() * (255.0 / scale)
        if scale == 255.0:  # 8-bit source with alpha: back to uint8 so that it resamples like any 8-bit image
            tensor = tensor.round().clamp(0, 255).to(torch.uint8)
    return tensor.contiguous()


def masks_to_tensor(masks: Any, *, index: int = 0) -> torch.Tensor:
    """Ground-truth masks of one image -> P x H x W bool. Accepts an array/tensor P x H x W (or H x W for one
    phrase), or a sequence of H x W arrays / tensors / PIL images (nonzero = inside)."""
    where = f"phrase_masks of image {index}"
    if isinstance(masks, (list, tuple)):
        if len(masks) == 0:
            raise ValueError(f"{where}: empty list; pass an array of shape (0, height, width) for no phrase")
        planes = [masks_to_tensor(mask, index=index) for mask in masks]
        shapes = {tuple(plane.shape[-2:]) for plane in planes}
        if len(shapes) != 1 or any(plane.shape[0] != 1 for plane in planes):
            raise ValueError(
                f"{where}: every mask must be one H x W plane of the same size, got {sorted(shapes)}"
            )
        return torch.cat(planes)
    if isinstance(masks, PIL.Image.Image):
        masks = np.asarray(masks.convert("L"))
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(np.ascontiguousarray(masks))
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"{where}: unsupported type {type(masks).__name__}")
    if masks.dim() == 2:
        masks = masks[None]
    if masks.dim() != 3:
        raise ValueError(f"{where}: expected (num_phrases, height, width), got shape {tuple(masks.shape)}")
    masks = masks.detach().cpu()
    if masks.is_floating_point() and not bool(torch.isfinite(masks).all()):  # NaN != 0 would read as inside
        phrase = int((~torch.isfinite(masks)).flatten(1).any(-1).nonzero()[0])
        raise ValueError(f"{where}: the mask of phrase {phrase} holds NaN or infinity")
    return masks != 0


class PngImageProcessor(TorchvisionBackend):
    r"""Image processor of `PngForPanopticNarrativeGrounding`.

    Args (all also accepted per call):
        size (`dict[str, int]`, defaults to `{"height": 640, "width": 640}`): output size; also
            `{"shortest_edge", "longest_edge"}` (DETR-style) or `{"longest_edge"}` (both keep the aspect ratio).
        keep_aspect_ratio (`bool`, defaults to `False`): with a height/width `size`, fit inside it without
            distortion and pad the rest (marked 0 in `pixel_mask`).
        resample (defaults to bilinear, antialiased as PIL), do_rescale / rescale_factor (1/255),
        do_normalize / image_mean / image_std (ImageNet, as timm's ResNets),
        pad_size (`dict`, optional): pad every image to this size (a multiple of 32) instead of the batch's
            largest, e.g. for fixed-shape training batches.
        apply_exif_orientation (`bool`, defaults to `True`).
        channel_order (`str`, defaults to `"RGB"`): channel order of `pixel_values`, and of `image_mean` /
            `image_std`. `"BGR"` for weights converted from detectron2, which expects BGR on the 0..255 scale:
            `do_rescale=False`, `image_mean=[103.53, 116.28, 123.675]`, `image_std=[1.0, 1.0, 1.0]`.

    Post-processing settings (read by `PngProcessor.post_process_panoptic_narrative_grounding`, saved with the
    rest; not per-call preprocessing options):
        post_process_align_corners (`bool`, defaults to `False`): `False` resizes the stride-4 predictions
            straight to each image's original size (through the padded input size only where padding or an
            aspect-ratio resize must be undone), all with `align_corners=False`. `True` is EPNG's released
            evaluation: the stride-4 predictions are first upsampled to the input size with
            `align_corners=True` (its `nn.Upsample`, `models/val/MainModule.py` 17 and 46-49), then resized to the
            original size with `align_corners=False` (`val.py` 77).
        post_process_upsampled (`str`, defaults to `"logits"`): what is resized, the logits (`"logits"`, the
            mask is where the resized logit > logit(threshold)) or their sigmoid probabilities
            (`"probabilities"`, the release: sigmoid at stride 4, then the resizes, then the threshold).
        post_process_mask_decision (`str`, defaults to `"threshold"`): how each phrase's mask is decided from
            its probabilities at the original size. `"threshold"` (the papers): the pixels above the threshold
            (0.5). `"expected_iou"` (ours): the pixels above the cut that maximises the mask's expected IoU
            with the ground truth if each pixel were in it with its predicted probability, i.e. the k most
            probable pixels for the k that maximises sum(p of the k) / (k + sum(p of the others)). Where
            a mask's outline is uncertain the expected IoU gains more from a pixel of probability p < 0.5 than
            it loses (the cut falls near IoU / (1 + IoU) of the mask, about 0.4 for a mask of IoU 0.7): the
            threshold's masks of small or blurred instances are too small for an overlap score. The mask is
            never empty (a phrase of PNG always names something).

    Returns a `PngBatchFeature` with
        pixel_values: float B x 3 x H x W (H, W multiples of 32), pixel_mask: long B x H x W (1 = real pixel),
        labels (when `phrase_masks` is given): float B x P x H x W 0/1 (P = most masks of an image; missing
        ones all zero), and `metadata` (original and resized sizes per image).
    """

    valid_kwargs = PngImagesKwargs
    model_input_names = ["pixel_values", "pixel_mask"]
    size = {"height": 640, "width": 640}
    default_to_square = True
    keep_aspect_ratio = False
    apply_exif_orientation = True
    channel_order = "RGB"
    resample = PILImageResampling.BILINEAR
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    do_pad = True
    do_convert_rgb = True

    def __init__(
        self,
        *,
        post_process_align_corners: bool = False,
        post_process_upsampled: str = "logits",
        post_process_mask_decision: str = "threshold",
        **kwargs: Any,
    ) -> None:
        if not isinstance(post_process_align_corners, bool):
            raise TypeError(
                f"post_process_align_corners must be True or False, got {post_process_align_corners!r}"
            )
        if post_process_upsampled not in POST_PROCESS_UPSAMPLED:
            raise ValueError(
                f"post_process_upsampled must be one of {POST_PROCESS_UPSAMPLED}, got {post_process_upsampled!r}"
            )
        if post_process_mask_decision not in MASK_DECISIONS:
            raise ValueError(
                f"post_process_mask_decision must be one of {MASK_DECISIONS}, got {post_process_mask_decision!r}"
            )
        super().__init__(**kwargs)
        # Instance attributes: to_dict saves them into preprocessor_config.json, from_pretrained passes them back.
        self.post_process_align_corners = post_process_align_corners
        self.post_process_upsampled = post_process_upsampled
        self.post_process_mask_decision = post_process_mask_decision

    @classmethod
    def from_dict(cls, image_processor_dict: dict[str, Any], **kwargs: Any) -> Any:
        """As the base class, but a post-processing field given to `from_pretrained` (e.g.
        `post_process_upsampled="probabilities"`) goes to the constructor, which checks it: the base class
        would set it on the built processor unchecked, since it is not a per-call option (`valid_kwargs`)."""
        overrides = {name: kwargs.pop(name) for name in POST_PROCESSING_FIELDS if name in kwargs}
        return super().from_dict({**image_processor_dict, **overrides}, **kwargs)

    def __call__(self, images: Any, phrase_masks: Any = None, **kwargs: Any) -> PngBatchFeature:
        """images: one image or a list (PIL, numpy, torch, or file paths). phrase_masks: per image the masks
        of its phrases (see `masks_to_tensor`), in the image's original geometry."""
        return self.preprocess(images, phrase_masks=phrase_masks, **kwargs)

    def preprocess(self, images: Any, phrase_masks: Any = None, **kwargs: Any) -> PngBatchFeature:
        return super().preprocess(images, image_like_kwargs={"phrase_masks": phrase_masks}, **kwargs)

    # The base class turns the images into a flat list and calls process_image on each; this processor
    # converts inputs itself (image_to_tensor), so it only needs to know what one image is.
    def _preprocess_image_like_inputs(
        self, images: Any, phrase_masks: Any = None, apply_exif_orientation: bool | None = None, **kwargs: Any
    ) -> PngBatchFeature:
        exif = self.apply_exif_orientation if apply_exif_orientation is None else apply_exif_orientation
        image_list = _as_image_list(images)
        tensors = [
            image_to_tensor(image, apply_exif_orientation=exif, index=i) for i, image in enumerate(image_list)
        ]
        mask_list = None
        if phrase_masks is not None:
            if not isinstance(phrase_masks, (list, tuple)) or len(phrase_masks) != len(tensors):
                if len(tensors) == 1 and not isinstance(phrase_masks, (list, tuple)):
                    phrase_masks = [phrase_masks]
                else:
                    count = len(phrase_masks) if isinstance(phrase_masks, (list, tuple)) else 1
                    raise ValueError(
                        f"phrase_masks must hold one entry (the masks of its phrases) per image: got {count} for "
                        f"{len(tensors)} image(s)"
                    )
            mask_list = [masks_to_tensor(masks, index=i) for i, masks in enumerate(phrase_masks)]
            for i, (image, masks) in enumerate(zip(tensors, mask_list, strict=True)):
                if tuple(masks.shape[-2:]) != tuple(image.shape[-2:]):
                    hint = (
                        " (the transposed size: were the masks drawn on the image before its EXIF rotation? "
                        "pass apply_exif_orientation=False)"
                        if tuple(masks.shape[-2:]) == tuple(image.shape[-2:])[::-1]
                        else ""
                    )
                    raise ValueError(
                        f"phrase_masks of image {i} have size {tuple(masks.shape[-2:])} but the image is "
                        f"{tuple(image.shape[-2:])} (height, width){hint}"
                    )
        return self._preprocess(tensors, masks=mask_list, **kwargs)

    def target_size(
        self, height: int, width: int, size: SizeDict | dict[str, int], keep_aspect_ratio: bool
    ) -> tuple[int, int]:
        """(height, width) an image of `height` x `width` is resized to."""
        size = SizeDict(**size) if isinstance(size, dict) else size
        if size.height and size.width:
            if not keep_aspect_ratio:
                return int(size.height), int(size.width)
            scale = min(size.height / height, size.width / width)
        elif size.shortest_edge:
            scale = size.shortest_edge / min(height, width)
            if size.longest_edge:
                scale = min(scale, size.longest_edge / max(height, width))
        elif size.longest_edge:
            scale = size.longest_edge / max(height, width)
        else:
            raise ValueError(
                f"size must have height and width, shortest_edge (and longest_edge), or longest_edge; got {dict(size)}"
            )
        return max(1, round(height * scale)), max(1, round(width * scale))

    def _preprocess(
        self,
        images: list[torch.Tensor],
        masks: list[torch.Tensor] | None = None,
        do_resize: bool = True,
        size: SizeDict | None = None,
        keep_aspect_ratio: bool | None = None,
        resample: Any = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        do_pad: bool | None = True,
        pad_size: SizeDict | None = None,
        channel_order: str | None = None,
        return_tensors: str | None = None,
        device: Any = None,
        **kwargs: Any,
    ) -> PngBatchFeature:
        keep_aspect_ratio = self.keep_aspect_ratio if keep_aspect_ratio is None else keep_aspect_ratio
        channel_order = self.channel_order if channel_order is None else channel_order
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
        _check_options(
            size, pad_size, keep_aspect_ratio, do_rescale, rescale_factor, do_normalize, image_mean, image_std
        )
        resized, resized_masks, metadata = [], [], []
        for i, image in enumerate(images):
            if device is not None:
                image = image.to(device)
            original = tuple(image.shape[-2:])
            target = self.target_size(*original, size, keep_aspect_ratio) if do_resize else original
            if target != original:
                # One image at a time: images of a batch have different sizes anyway, and the result of an
                # image never depends on its batch neighbours.
                image = self.resize(
                    image[None], SizeDict(height=target[0], width=target[1]), resample=resample
                )[0]
            if channel_order == "BGR":  # decoded images are RGB; image_mean / image_std are in BGR order then
                image = image.flip(0)
            resized.append(
                _rescale_and_normalize(image, do_rescale, rescale_factor, do_normalize, image_mean, image_std)
            )
            if masks is not None:
                plane = masks[i].to(image.device)
                if target != original and plane.shape[0] > 0:
                    plane = F.interpolate(plane[None].to(torch.uint8), size=target, mode="nearest-exact")[0]
                resized_masks.append(plane.to(torch.float32))
            metadata.append({"original_size": original, "resized_size": target})
            if masks is not None:
                metadata[-1]["num_masks"] = int(masks[i].shape[0])

        # Pad bottom/right: to pad_size, or to the batch's largest image; always to a multiple of 32.
        if pad_size is not None and pad_size.height and pad_size.width:
            height, width = int(pad_size.height), int(pad_size.width)
            too_big = [
                m["resized_size"]
                for m in metadata
                if m["resized_size"][0] > height or m["resized_size"][1] > width
            ]
            if too_big:
                raise ValueError(f"pad_size {height}x{width} is smaller than resized image(s) {too_big}")
        else:
            height = max(m["resized_size"][0] for m in metadata)
            width = max(m["resized_size"][1] for m in metadata)
        if not do_pad and any(m["resized_size"] != (height, width) for m in metadata):
            raise ValueError("do_pad=False needs images of one size after resizing; they differ")
        height = math.ceil(height / SIZE_DIVISOR) * SIZE_DIVISOR
        width = math.ceil(width / SIZE_DIVISOR) * SIZE_DIVISOR

        if all(image.shape[-2:] == (height, width) for image in resized):  # nothing to pad: no copy
            pixel_values = resized[0][None] if len(resized) == 1 else torch.stack(resized)
            pixel_mask = torch.ones(len(resized), height, width, dtype=torch.long, device=pixel_values.device)
        else:
            pixel_values = resized[0].new_zeros(len(resized), 3, height, width)
            pixel_mask = torch.zeros(
                len(resized), height, width, dtype=torch.long, device=pixel_values.device
            )
            for i, (image, meta) in enumerate(zip(resized, metadata, strict=True)):
                h, w = meta["resized_size"]
                pixel_values[i, :, :h, :w] = image
                pixel_mask[i, :h, :w] = 1
        data = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
        if masks is not None:
            num_phrases = max(plane.shape[0] for plane in resized_masks)
            labels = pixel_values.new_zeros(len(resized), num_phrases, height, width)
            for i, (plane, meta) in enumerate(zip(resized_masks, metadata, strict=True)):
                h, w = meta["resized_size"]
                labels[i, : plane.shape[0], :h, :w] = plane
            data["labels"] = labels
        if return_tensors not in (None, "pt"):
            data = {key: value.cpu().numpy() for key, value in data.items()}
        return PngBatchFeature(data, metadata=metadata)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_options(
    size: Any,
    pad_size: Any,
    keep_aspect_ratio: Any,
    do_rescale: bool,
    rescale_factor: Any,
    do_normalize: bool,
    image_mean: Any,
    image_std: Any,
) -> None:
    """Raise for options that would fail inside torch (a negative size, 2 means for 3 channels) or give
    non-finite pixel_values without a word (a zero std, a NaN rescale factor)."""
    for name, sizes in (("size", size), ("pad_size", pad_size)):
        for key in ("height", "width", "shortest_edge", "longest_edge"):
            value = getattr(sizes, key, None) if sizes is not None else None
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name}[{key!r}] must be a positive integer (pixels), got {value!r}")
    if not isinstance(keep_aspect_ratio, bool):
        raise TypeError(f"keep_aspect_ratio must be True or False, got {keep_aspect_ratio!r}")
    if do_rescale and (not _is_number(rescale_factor) or rescale_factor <= 0):
        raise ValueError(f"rescale_factor must be a positive finite number, got {rescale_factor!r}")
    if do_normalize:
        for name, values in (("image_mean", image_mean), ("image_std", image_std)):
            values = [values] if _is_number(values) else values
            if (
                not isinstance(values, (list, tuple))
                or len(values) not in (1, 3)
                or not all(map(_is_number, values))
            ):
                raise ValueError(f"{name} must be one finite number or three (R, G, B), got {values!r}")
            if name == "image_std" and min(values) <= 0:
                raise ValueError(f"image_std must be positive (it divides the pixels), got {values!r}")


def _rescale_and_normalize(
    image: torch.Tensor,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> torch.Tensor:
    """3 x H x W (uint8 or float on 0..255) -> float32 (x * rescale_factor - mean) / std, in place on one
    float copy: at 640x640 the time goes to memory traffic, so one allocation and two passes."""
    image = image.to(torch.float32, copy=True)
    scale = rescale_factor if do_rescale else 1.0
    if do_normalize:
        mean_t = torch.tensor(mean, dtype=torch.float32, device=image.device).view(-1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=image.device).view(-1, 1, 1)
        image.sub_(mean_t / scale).mul_(scale / std_t)  # (x - mean / s) * (s / std) = (x * s - mean) / std
    elif do_rescale:
        image.mul_(scale)
    return image


def _as_image_list(images: Any) -> list[Any]:
    """One image or a batch -> a list of single images (a 4-D array or tensor is a batch)."""
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("no image given (empty list)")
        return list(images)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


PngImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["PngBatchFeature", "PngImageProcessor", "image_to_tensor", "masks_to_tensor"]
