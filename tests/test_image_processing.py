"""PngImageProcessor: every input form gives the same pixels, geometry shared with masks, clear errors."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from narrative_grounding.modeling.image_processing_png import PngImageProcessor, image_to_tensor

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def photo(height: int = 48, width: int = 80, seed: int = 0) -> np.ndarray:
    """A smooth RGB uint8 picture (gradients + a block), H x W x 3."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([ys * 255 // height, xs * 255 // width, (ys + xs) * 255 // (height + width)], -1)
    image[height // 4 : height // 2, width // 4 : width // 2] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)


def denormalise(pixel_values: torch.Tensor) -> torch.Tensor:
    return pixel_values * STD + MEAN


@pytest.fixture(scope="module")
def processor() -> PngImageProcessor:
    return PngImageProcessor(size={"height": 64, "width": 64})


def test_defaults_follow_epng_and_imagenet() -> None:
    processor = PngImageProcessor()
    assert dict(processor.size) == {"height": 640, "width": 640}
    assert tuple(processor.image_mean) == (0.485, 0.456, 0.406)
    assert tuple(processor.image_std) == (0.229, 0.224, 0.225)
    out = processor(PIL.Image.fromarray(photo(480, 640)))
    assert set(out.keys()) == {"pixel_values", "pixel_mask"}
    assert out["pixel_values"].shape == (1, 3, 640, 640) and out["pixel_values"].dtype == torch.float32
    assert out["pixel_mask"].dtype == torch.long and bool(out["pixel_mask"].all())
    assert out.metadata == [{"original_size": (480, 640), "resized_size": (640, 640)}]


def test_pil_numpy_torch_inputs_give_identical_pixels(processor: PngImageProcessor) -> None:
    array = photo()
    from_pil = processor(PIL.Image.fromarray(array))["pixel_values"]
    from_numpy = processor(array)["pixel_values"]
    from_torch = processor(torch.from_numpy(array).permute(2, 0, 1))["pixel_values"]
    from_chw_numpy = processor(np.ascontiguousarray(array.transpose(2, 0, 1)))["pixel_values"]
    assert torch.equal(from_pil, from_numpy) and torch.equal(from_pil, from_torch)
    assert torch.equal(from_pil, from_chw_numpy)
    # float [0, 1] data that is exactly 8-bit takes the same (uint8) resampling path
    from_float = processor(torch.from_numpy(array).permute(2, 0, 1).float() / 255)["pixel_values"]
    assert torch.equal(from_pil, from_float)
    # true float data resamples in float: equal up to torchvision's uint8 rounding (~1 grey level)
    noisy = torch.from_numpy(array).permute(2, 0, 1).float() / 255 + 1e-3
    from_noisy = processor(noisy.clamp(0, 1))["pixel_values"]
    assert torch.allclose(from_pil, from_noisy, atol=2 / 255 / 0.224)


def test_colour_modes_convert_to_rgb(processor: PngImageProcessor) -> None:
    rgb = PIL.Image.fromarray(photo())
    gray = rgb.convert("L")
    expected_gray = processor(np.repeat(np.asarray(gray)[..., None], 3, -1))["pixel_values"]
    assert torch.equal(processor(gray)["pixel_values"], expected_gray)
    assert torch.equal(processor(np.asarray(gray))["pixel_values"], expected_gray)  # H x W array
    assert torch.equal(
        processor(rgb.convert("P", palette=PIL.Image.Palette.ADAPTIVE).convert("RGB"))["pixel_values"],
        processor(rgb.convert("P", palette=PIL.Image.Palette.ADAPTIVE))["pixel_values"],
    )
    cmyk = rgb.convert("CMYK")
    assert torch.equal(processor(cmyk)["pixel_values"], processor(cmyk.convert("RGB"))["pixel_values"])
    one_bit = gray.convert("1")
    assert torch.equal(processor(one_bit)["pixel_values"], processor(one_bit.convert("L"))["pixel_values"])


def test_alpha_is_composited_over_white() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    tensor = image_to_tensor(PIL.Image.fromarray(rgba, "RGBA"))
    assert tensor.dtype == torch.uint8
    assert tensor[:, :2].tolist() == [[[200] * 4] * 2, [[0] * 4] * 2, [[0] * 4] * 2]
    assert bool((tensor[:, 2:] == 255).all())
    assert torch.equal(tensor, image_to_tensor(rgba))  # the same from a numpy RGBA array
    gray_alpha = PIL.Image.fromarray(rgba[..., [0, 3]], "LA")
    assert torch.equal(image_to_tensor(gray_alpha)[0], tensor[0])


def test_sixteen_bit_png_matches_its_eight_bit_version(tmp_path, processor: PngImageProcessor) -> None:
    gray8 = photo()[..., 0]
    gray16 = gray8.astype(np.uint16) * 257  # 255 -> 65535
    path = tmp_path / "deep.png"
    PIL.Image.fromarray(gray16).save(path)
    assert PIL.Image.open(path).mode.startswith("I")
    from_file = processor(str(path))["pixel_values"]
    assert torch.equal(from_file, processor(gray8)["pixel_values"])  # exactly 8-bit content
    assert torch.equal(processor(gray16)["pixel_values"], from_file)
    # real 16-bit content (between 8-bit levels) keeps its precision
    finer = gray16 + 100
    path_fine = tmp_path / "finer.png"
    PIL.Image.fromarray(finer).save(path_fine)
    expected = torch.from_numpy(finer.astype(np.float32) / 65535)
    out = processor(str(path_fine), do_resize=False)["pixel_values"][0, 0, :48, :80]
    assert torch.allclose(denormalise(out[None])[0], expected, atol=1e-5)


def test_exif_rotated_jpeg_is_turned_upright(tmp_path, processor: PngImageProcessor) -> None:
    upright = photo(40, 64)
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # the camera stored it turned: 64 x 40
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 clockwise to display
    path = tmp_path / "rotated.jpg"
    PIL.Image.fromarray(stored).save(path, exif=exif, quality=95)
    out = processor(str(path))
    assert out.metadata[0]["original_size"] == (40, 64)
    also_pil = processor(PIL.Image.open(path))
    assert torch.equal(out["pixel_values"], also_pil["pixel_values"])
    raw = processor(str(path), apply_exif_orientation=False)
    assert raw.metadata[0]["original_size"] == (64, 40)
    upright_pixels = processor(upright)["pixel_values"]
    assert (out["pixel_values"] - upright_pixels).abs().mean() < 0.1  # JPEG noise only
    assert (raw["pixel_values"] - upright_pixels).abs().mean() > 0.3


def test_keep_aspect_ratio_pads_and_masks(processor: PngImageProcessor) -> None:
    wide, tall = photo(48, 80), photo(80, 40, seed=1)
    out = processor([wide, tall], keep_aspect_ratio=True)
    assert out["pixel_values"].shape == (2, 3, 64, 64)
    assert [m["resized_size"] for m in out.metadata] == [(38, 64), (64, 32)]
    assert out["pixel_mask"][0, :38].all() and not out["pixel_mask"][0, 38:].any()
    assert out["pixel_mask"][1, :, :32].all() and not out["pixel_mask"][1, :, 32:].any()
    assert (out["pixel_values"][0, :, 38:] == 0).all()
    # each image alone: same content, only the padding differs
    alone = processor(wide, keep_aspect_ratio=True)
    assert alone["pixel_values"].shape == (1, 3, 64, 64)
    assert torch.equal(alone["pixel_values"][0, :, :38], out["pixel_values"][0, :, :38])
    alone_tall = processor(tall, keep_aspect_ratio=True)
    assert alone_tall["pixel_values"].shape == (1, 3, 64, 32)
    assert torch.equal(alone_tall["pixel_values"][0], out["pixel_values"][1, :, :, :32])


def test_sizes_are_padded_to_multiples_of_32() -> None:
    out = PngImageProcessor(size={"shortest_edge": 50, "longest_edge": 90})([photo(48, 80), photo(30, 30)])
    assert [m["resized_size"] for m in out.metadata] == [(50, 83), (50, 50)]
    assert out["pixel_values"].shape[-2:] == (64, 96)
    fixed = PngImageProcessor(size={"height": 64, "width": 64})(
        photo(),
        keep_aspect_ratio=True,
        pad_size={
            "height": 96,
            "width": 128,
        },
    )
    assert fixed["pixel_values"].shape[-2:] == (96, 128)
    with pytest.raises(ValueError, match="pad_size 32x32 is smaller"):
        PngImageProcessor()(photo(), pad_size={"height": 32, "width": 32})


def test_masks_follow_the_image_geometry(processor: PngImageProcessor) -> None:
    image = photo(48, 80)
    masks = np.zeros((2, 48, 80), dtype=bool)
    masks[0, :24] = True  # top half
    masks[1, :, 40:] = True  # right half
    out = processor(image, phrase_masks=[masks], keep_aspect_ratio=True)  # content 38 x 64
    labels = out["labels"]
    assert labels.shape == (1, 2, 64, 64) and labels.dtype == torch.float32
    assert set(labels.unique().tolist()) <= {0.0, 1.0}
    assert labels[0, 0, :19].all() and not labels[0, 0, 19:].any()
    assert labels[0, 1, :38, 32:].all() and not labels[0, 1, :, :32].any() and not labels[0, 1, 38:].any()
    # phrase counts differ between images: missing masks are all zero
    batch = processor([image, image], phrase_masks=[masks, masks[:1]])
    assert batch["labels"].shape == (2, 2, 64, 64) and not batch["labels"][1, 1].any()
    assert torch.equal(batch["labels"][0], processor(image, phrase_masks=[masks])["labels"][0])


def test_bad_inputs_raise_clear_errors(tmp_path, processor: PngImageProcessor) -> None:
    with pytest.raises(ValueError, match=r"image 0: float images must have values in \[0, 1\]"):
        processor(np.full((8, 8, 3), 3.0, dtype=np.float32))
    with pytest.raises(ValueError, match="unsupported dtype"):
        processor(np.zeros((8, 8, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="channel axis"):
        processor(np.zeros((8, 8, 7), dtype=np.uint8))
    with pytest.raises(FileNotFoundError, match="no image file"):
        processor(str(tmp_path / "missing.jpg"))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot read"):
        processor(str(tmp_path / "broken.jpg"))
    with pytest.raises(ValueError, match=r"phrase_masks of image 0 have size \(80, 48\).*EXIF"):
        processor(photo(48, 80), phrase_masks=[np.zeros((1, 80, 48))])
    with pytest.raises(ValueError, match="one entry .* per image"):
        processor([photo(), photo()], phrase_masks=[np.zeros((1, 48, 80))])
    with pytest.raises(TypeError, match="unsupported type"):
        processor(object())


def test_save_load_round_trip(tmp_path) -> None:
    processor = PngImageProcessor(size={"height": 96, "width": 64}, keep_aspect_ratio=True)
    processor.save_pretrained(tmp_path)
    loaded = PngImageProcessor.from_pretrained(tmp_path)
    assert loaded.keep_aspect_ratio and dict(loaded.size)["height"] == 96
    image = photo()
    assert torch.equal(loaded(image)["pixel_values"], processor(image)["pixel_values"])
