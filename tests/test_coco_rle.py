"""Our COCO RLE encoder and decoder (processing_png.mask_to_rle / rle_to_mask) against pycocotools, the
reference implementation (a dev dependency): the same compressed strings, and each decodes the other's."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from narrative_grounding.modeling.processing_png import mask_to_rle, rle_to_mask

# pycocotools 2.0 decodes through an __array__ that predates numpy 2 copy semantics: its warning, not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _coco_encode(mask: np.ndarray) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _edge_masks() -> dict[str, np.ndarray]:
    masks = {
        "empty": np.zeros((7, 5), bool),
        "full": np.ones((7, 5), bool),
        "one pixel": np.ones((1, 1), bool),
        "one empty pixel": np.zeros((1, 1), bool),
        "first pixel": np.zeros((6, 4), bool),
        "last pixel": np.zeros((6, 4), bool),
        "one row": np.array([[0, 1, 1, 0, 1, 0, 0, 1]], bool),
        "one column": np.array([[1], [1], [0], [1], [0]], bool),
        "checkerboard": (np.indices((9, 11)).sum(axis=0) % 2).astype(bool),
        "left half": np.zeros((10, 10), bool),
        "bottom row": np.zeros((10, 10), bool),
        # runs long enough to need several 5-bit chunks, and deltas of both signs against run i-2
        "long runs": np.zeros((300, 700), bool),
        "growing runs": np.zeros((1, 4096), bool),
    }
    masks["first pixel"][0, 0] = True
    masks["last pixel"][-1, -1] = True
    masks["left half"][:, :5] = True
    masks["bottom row"][-1] = True
    masks["long runs"][40:260, 100:650] = True
    masks["long runs"][150, :] = False
    start = 0
    for length in (1, 3, 17, 2, 64, 5, 400, 33, 1000, 7):  # alternating zero and one runs
        start += length
        masks["growing runs"][0, start : start + length] = True
        start += length
    return masks


EDGE_MASKS = _edge_masks()


@pytest.mark.parametrize("name", list(EDGE_MASKS))
def test_edge_masks_match_pycocotools(name: str) -> None:
    mask = EDGE_MASKS[name]
    ours = mask_to_rle(mask)
    assert ours == _coco_encode(mask)
    assert np.array_equal(rle_to_mask(ours), mask)
    assert np.array_equal(coco_mask.decode({"size": ours["size"], "counts": ours["counts"].encode()}), mask)


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_match_pycocotools(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(20):
        height, width = (int(side) for side in rng.integers(1, 90, size=2))
        density = rng.choice([0.01, 0.3, 0.5, 0.9, 0.995])
        if rng.random() < 0.5:  # blobs: long runs
            mask = np.zeros((height, width), bool)
            for _ in range(int(rng.integers(1, 5))):
                top, left = rng.integers(0, height), rng.integers(0, width)
                mask[top : top + int(rng.integers(1, 40)), left : left + int(rng.integers(1, 40))] = True
        else:  # noise: short runs
            mask = rng.random((height, width)) < density
        ours = mask_to_rle(mask)
        theirs = _coco_encode(mask)
        assert ours == theirs, (height, width)
        assert np.array_equal(rle_to_mask(theirs), mask)
        assert np.array_equal(
            coco_mask.decode({"size": theirs["size"], "counts": theirs["counts"].encode()}), mask
        )


def test_uncompressed_counts_and_tensor_input() -> None:
    mask = EDGE_MASKS["long runs"]
    uncompressed = coco_mask.frPyObjects({"size": list(mask.shape), "counts": _runs(mask)}, *mask.shape)
    assert uncompressed["counts"].decode() == mask_to_rle(mask)["counts"]
    assert np.array_equal(rle_to_mask({"size": list(mask.shape), "counts": _runs(mask)}), mask)
    assert mask_to_rle(torch.from_numpy(mask)) == mask_to_rle(mask)
    with pytest.raises(ValueError, match="sum to"):
        rle_to_mask({"size": [3, 3], "counts": [2, 2]})


def _runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO counts, written independently of the encoder: column-major run lengths, starting
    with a (possibly empty) run of zeros."""
    runs = [len(list(group)) for _, group in itertools.groupby(mask.ravel(order="F").tolist())]
    return [0, *runs] if mask.ravel(order="F")[0] else runs


def test_zero_area_masks() -> None:
    for shape in ((0, 5), (4, 0)):
        mask = np.zeros(shape, bool)
        assert mask_to_rle(mask) == _coco_encode(mask)
        assert rle_to_mask(mask_to_rle(mask)).shape == shape
