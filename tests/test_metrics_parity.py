"""The options that reproduce each published evaluation, against values worked out by hand.

Every expected number below is derived in the comment above it from the definition of the
published protocol (PNG baseline `test_net.py`, EPNG `val.py`, PPMN / NICE / XPNG `train_net.py`),
not from the code under test.
"""

from __future__ import annotations

import evaluate
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from narrative_grounding.metrics import (
    AVERAGE_RECALL_PATH,
    PROTOCOLS,
    AverageRecall,
    ReferringSegmentation,
    average_recall_from_counts,
    average_recall_from_ious,
    evaluation_size,
    mask_counts,
    resize_for_protocol,
)


def published_official_area(ious: list[float]) -> float:
    """The published loop, literally: recall on arange(0, 1, 1e-5), summed over consecutive pairs."""
    values = np.asarray(ious, dtype=np.float64)
    thresholds = np.arange(0, 1, 0.00001)
    recall = (values[None, :] >= thresholds[:, None]).sum(1) / len(values)  # nan >= t is False
    return float(np.sum(np.abs(np.diff(thresholds)) * recall[:-1]))


def block(size: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[rows, cols] = True
    return mask


# ---------------------------------------------------------------- empty ground truth as a miss
def test_empty_ground_truth_kept_as_a_miss_like_the_published_nan() -> None:
    truth = block((4, 4), slice(0, 2), slice(0, 2))
    empty = np.zeros((4, 4), dtype=bool)
    corner = block((4, 4), slice(3, 4), slice(2, 4))
    # phrase 0: a hit, IoU 4/4 = 1; phrase 1: empty ground truth and empty prediction, IoU 0/0 = nan;
    # phrase 2: empty ground truth, 2 predicted pixels, IoU 0/2 = 0
    kwargs = {
        "predictions": [truth, empty, corner],
        "references": [truth, empty, empty],
        "is_thing": [True, False, True],
        "num_segments": [1, 2, 1],
    }
    with pytest.raises(ValueError, match="empty_ground_truth='miss'"):
        AverageRecall().compute(**kwargs)
    exact = AverageRecall().compute(**kwargs, empty_ground_truth="miss")
    # all three are counted: AR = (1 + 0 + 0) / 3; things = (1 + 0) / 2; stuff = the nan alone = 0
    assert exact["num_phrases"] == 3 and exact["num_empty_ground_truth"] == 2
    assert exact["num_skipped_empty_ground_truth"] == 0
    assert exact["average_recall"] == pytest.approx(1 / 3, abs=1e-15)
    assert exact["average_recall_things"] == pytest.approx(0.5, abs=1e-15)
    assert exact["average_recall_stuff"] == 0.0 and exact["average_recall_plural"] == 0.0
    assert exact["recall_at_0.5"] == pytest.approx(1 / 3)
    # at t = 0 the IoU 0 is recalled (0 >= 0) but the nan is not: recall(0) = 2/3, not 1
    assert exact["recall_curve"]["overall"][0] == pytest.approx(2 / 3)
    # official sum: 1e-5 * (recall(0) + 99,998 * 1/3) = 1e-5 * (2/3 + 99998/3) = 1/3 exactly, where an
    # IoU of 0 instead of nan would give 1/3 + 1e-5/3
    official = AverageRecall().compute(**kwargs, empty_ground_truth="miss", integration="official")
    assert official["average_recall"] == pytest.approx(1 / 3, abs=1e-12)
    assert official["average_recall"] == pytest.approx(published_official_area([1.0, np.nan, 0.0]), abs=1e-12)
    # "skip" leaves both out instead: one phrase, AR 1
    skipped = AverageRecall().compute(**kwargs, empty_ground_truth="skip")
    assert (skipped["num_phrases"], skipped["num_skipped_empty_ground_truth"], skipped["average_recall"]) == (
        1,
        2,
        1.0,
    )


def test_miss_from_counts_and_from_ious() -> None:
    # the same three phrases as counts: (4, 4, 4), (0, 0, 0), (0, 2, 0)
    counts = average_recall_from_counts(
        [4, 0, 0],
        [4, 0, 2],
        [True, False, True],
        [1, 2, 1],
        reference_areas=[4, 0, 0],
        empty_ground_truth="miss",
    )
    ious = average_recall_from_ious(
        [1.0, float("nan"), 0.0], [True, False, True], [1, 2, 1], empty_ground_truth="miss"
    )
    assert counts["average_recall"] == ious["average_recall"] == pytest.approx(1 / 3, abs=1e-15)
    assert counts["recall_curve"] == ious["recall_curve"]
    # a phrase without any segment is never evaluated by the published code, so it cannot be "missed"
    with pytest.raises(ValueError, match="num_segments < 1"):
        average_recall_from_counts([0], [0], [True], [0], empty_ground_truth="miss")
    with pytest.raises(ValueError, match="empty_ground_truth"):
        average_recall_from_ious([0.5], [True], [1], empty_ground_truth="ignore")


# ---------------------------------------------------------------- binarisation tie
def test_inclusive_threshold_reproduces_epng_ties() -> None:
    truth = np.array([[1, 1], [0, 0]], dtype=bool)
    probabilities = np.array([[1.0, 0.5], [0.5, 0.0]], dtype=np.float32)
    # "> 0.5": only (0, 0) is foreground -> IoU 1 / 2; ">= 0.5" (EPNG): (0, 0), (0, 1), (1, 0) -> 2 / 3
    strict = AverageRecall().compute(
        predictions=[probabilities], references=[truth], is_thing=[1], num_segments=[1]
    )
    inclusive = evaluate.load(AVERAGE_RECALL_PATH, inclusive_threshold=True).compute(
        predictions=[probabilities], references=[truth], is_thing=[1], num_segments=[1]
    )
    assert strict["average_recall"] == pytest.approx(1 / 2, abs=1e-15)
    assert inclusive["average_recall"] == pytest.approx(2 / 3, abs=1e-15)
    # sigmoid(0) is exactly 0.5: logits tie the same way
    logits = torch.tensor([[5.0, 0.0], [0.0, -5.0]])
    tied, _ = resize_for_protocol(logits, truth, prediction_type="logits", inclusive_threshold=True)
    assert tied.tolist() == [[True, True], [True, False]]
    untied, _ = resize_for_protocol(logits, truth, prediction_type="logits")
    assert untied.tolist() == [[True, False], [False, False]]


# ---------------------------------------------------------------- PPMN's padded stride 4
def test_stride4_padded_sizes() -> None:
    # 480 x 640 -> input 800 x 1067 (detectron2) -> padded 800 x 1088 -> compared at 200 x 272;
    # unpadded stride 4 would be ceil(800 / 4) x ceil(1067 / 4) = 200 x 267
    assert evaluation_size((480, 640), "stride4_padded") == (200, 272)
    assert evaluation_size((480, 640), "stride4") == (200, 267)
    # 400 x 1200 -> input 444 x 1333 (long side capped) -> padded 448 x 1344 -> 112 x 336
    assert evaluation_size((400, 1200), "stride4_padded") == (112, 336)


def test_stride4_padded_ground_truth_and_padding_by_hand() -> None:
    # an 8 x 12 image with short_side 8: the input is the image itself, padded to 32 x 32, compared
    # at 8 x 8. Bilinear x0.25 (align_corners=False) samples output (i, j) at source 4i + 1.5, the
    # mean of rows 4i+1, 4i+2 and columns 4j+1, 4j+2; PPMN keeps every pixel above 0.
    options = {"short_side": 8}
    assert evaluation_size((8, 12), "stride4_padded", **options) == (8, 8)
    truth = np.zeros((8, 12), dtype=bool)
    truth[5, 9] = True  # row 5 = 4*1 + 1, column 9 = 4*2 + 1 -> (1, 2), weight 1/4 > 0
    prediction = np.zeros((8, 8), dtype=np.float32)
    prediction[1, 2] = 0.9
    prediction[7, 7] = 0.9  # in the padding: PPMN's IoU counts it
    pred_mask, ref_mask = resize_for_protocol(prediction, truth, "stride4_padded", **options)
    assert torch.nonzero(ref_mask).tolist() == [[1, 2]]
    assert torch.nonzero(pred_mask).tolist() == [[1, 2], [7, 7]]
    counts = mask_counts([prediction], [truth], "stride4_padded", **options)
    assert (counts["intersections"][0], counts["unions"][0], counts["reference_areas"][0]) == (1, 2, 1)
    # a ground-truth pixel at (0, 0) lies between the samples: it vanishes, and the phrase is an
    # empty ground truth (the published code would score it 0/0 = nan)
    corner = np.zeros((8, 12), dtype=bool)
    corner[0, 0] = True
    metric = AverageRecall("stride4_padded", stride4_short_side=8)
    with pytest.raises(ValueError, match="empty ground truth"):
        metric.compute(predictions=[prediction], references=[corner], is_thing=[1], num_segments=[1])
    # a prediction at the image size takes the ground truth's path, then "> 0.5": a 2 x 2 block on
    # rows 5-6, columns 9-10 averages to 1 at (1, 2); a 2 x 1 one to 0.5, kept only with ">="
    full_block = block((8, 12), slice(5, 7), slice(9, 11))
    half_block = block((8, 12), slice(5, 7), slice(9, 10))
    assert torch.nonzero(resize_for_protocol(full_block, truth, "stride4_padded", **options)[0]).tolist() == [
        [1, 2]
    ]
    assert not resize_for_protocol(half_block, truth, "stride4_padded", **options)[0].any()
    inclusive = resize_for_protocol(half_block, truth, "stride4_padded", inclusive_threshold=True, **options)[
        0
    ]
    assert torch.nonzero(inclusive).tolist() == [[1, 2]]


def test_stride4_padded_equals_the_published_steps_at_full_size() -> None:
    # PPMN: F.interpolate(gt, input size, bilinear) -> ImageList.from_tensors(gt, 32) (zero padding at
    # the bottom / right) -> F.interpolate(scale_factor=0.25, bilinear) -> > 0; prediction > 0.5
    generator = torch.Generator().manual_seed(0)
    truth = torch.zeros(480, 640)
    truth[100:103, 200:330] = 1.0  # a thin structure: 3 pixels high
    truth[300:460, 17:21] = 1.0
    resized = F.interpolate(truth[None, None], size=(800, 1067), mode="bilinear")
    padded = F.pad(resized, (0, 1088 - 1067, 0, 0))
    published_truth = F.interpolate(padded, scale_factor=0.25, mode="bilinear")[0, 0] > 0
    prediction = torch.rand(200, 272, generator=generator)
    _, ref_mask = resize_for_protocol(prediction, truth.bool(), "stride4_padded")
    assert ref_mask.shape == (200, 272) and torch.equal(ref_mask, published_truth)
    counts = mask_counts([prediction], [truth.bool()], "stride4_padded")
    published_prediction = prediction > 0.5
    intersection = (published_prediction & published_truth).sum().item()
    union = (published_prediction | published_truth).sum().item()
    assert (counts["intersections"][0], counts["unions"][0]) == (intersection, union)


# ---------------------------------------------------------------- the PNG baseline's soft protocol
def test_soft256_round_trip_and_soft_iou_by_hand() -> None:
    # 512 x 512 -> 256 x 256 is a 2 x 2 mean; 256 -> 512 spreads pixel k over rows 2k-1 .. 2k+2 with
    # weights 1/4, 3/4, 3/4, 1/4. A 2 x 2 object on rows / columns 2-3 becomes pixel (1, 1) = 1 at
    # 256 and comes back as the outer product of a = (1/4, 3/4, 3/4, 1/4) on rows / columns 1-4.
    truth = block((512, 512), slice(2, 4), slice(2, 4))
    pred_map, ref_map = resize_for_protocol(truth, truth, "soft256")
    a = torch.tensor([0.25, 0.75, 0.75, 0.25])
    expected = torch.zeros(512, 512)
    expected[1:5, 1:5] = torch.outer(a, a)
    assert torch.allclose(ref_map, expected) and torch.allclose(pred_map, expected)
    # a perfect prediction: sum(g^2) = (sum a^2)^2 = 1.25^2 = 1.5625; sum(2g - g^2) = 2 * 4 - 1.5625;
    # soft IoU = 1.5625 / 6.4375 = 25 / 103
    counts = mask_counts([truth], [truth], "soft256")
    assert counts["intersections"].dtype == np.float64
    assert counts["intersections"][0] == pytest.approx(1.5625)
    assert counts["unions"][0] == pytest.approx(6.4375) and counts["reference_areas"][0] == pytest.approx(4.0)
    # shifted by one pixel the prediction averages to 1/4 in four 256-pixels, which the baseline's
    # integer masks round to 0: an empty prediction, IoU 0 / 4
    shifted = block((512, 512), slice(3, 5), slice(3, 5))
    # a 2 x 1 object averages to exactly 1/2, which torch.round sends to 0 (half to even)
    half = block((512, 512), slice(2, 4), slice(2, 3))
    metric = evaluate.load(AVERAGE_RECALL_PATH, "soft256")
    results = metric.compute(
        predictions=[truth, shifted, half], references=[truth] * 3, is_thing=[1, 1, 0], num_segments=[1, 1, 1]
    )
    assert results["average_recall"] == pytest.approx((25 / 103 + 0 + 0) / 3, abs=1e-12)
    assert results["average_recall_stuff"] == 0.0
    # at 256 x 256 the round trip is the identity: the soft protocol is the binary one
    small = block((256, 256), slice(10, 50), slice(30, 31))
    assert mask_counts([small], [small], "soft256")["unions"][0] == pytest.approx(40.0)


def test_soft256_matches_torchvision_resize_as_the_baseline_used_it() -> None:
    torchvision = pytest.importorskip("torchvision")
    resize_256 = torchvision.transforms.Resize((256, 256), antialias=False)
    generator = torch.Generator().manual_seed(1)
    truth = torch.rand(300, 420, generator=generator) < 0.3
    proposal = torch.rand(300, 420, generator=generator) < 0.5
    # the baseline: proposals as long tensors (torchvision rounds them back to integers), ground
    # truth as float; both resized back to the image size as floats; IoU of the soft maps
    pred_256 = resize_256(proposal.long()[None]).float()
    truth_256 = resize_256(truth.float()[None])
    back = torchvision.transforms.Resize((300, 420), antialias=False)
    p, t = back(pred_256)[0].double(), back(truth_256)[0].double()
    published = ((p * t).sum() / (p + t - p * t).sum()).item()
    counts = mask_counts([proposal], [truth], "soft256")
    assert counts["intersections"][0] / counts["unions"][0] == pytest.approx(published, rel=1e-6)


# ---------------------------------------------------------------- options are checked
def test_protocol_names_are_checked_per_metric() -> None:
    with pytest.raises(ValueError, match="soft256"):
        AverageRecall(config_name="soft")
    # N-acc asks whether a prediction is empty: the soft protocol does not apply to it
    with pytest.raises(ValueError, match="Unknown evaluation protocol"):
        ReferringSegmentation(config_name="soft256")
    assert ReferringSegmentation(config_name="stride4_padded").protocol == "stride4_padded"


# ---------------------------------------------------------------- whole published pipelines
def published_iou(prediction: torch.Tensor, truth: torch.Tensor) -> float:
    """The published IoU: sums of products in floating point, 0 / 0 left as nan."""
    prediction, truth = prediction.double(), truth.double()
    product = prediction * truth
    return (product.sum() / (prediction + truth - product).sum()).item()


def random_case(seed: int, count: int = 12):
    """Low-resolution probability maps quantised to 1/8 (so that resized values hit 0.5 exactly) and
    ground truths of differing image sizes, two of them empty."""
    generator = torch.Generator().manual_seed(seed)
    predictions, references = [], []
    for index in range(count):
        height, width = (int(v) for v in torch.randint(24, 72, (2,), generator=generator))
        low = torch.randint(0, 9, (max(2, height // 8), max(2, width // 8)), generator=generator) / 8.0
        truth = torch.rand(height, width, generator=generator) < 0.15
        truth[height // 4 : height // 2, width // 3 : width // 2] = True
        if index in (3, 7):
            truth[:] = False
            if index == 7:
                low = torch.zeros_like(low)  # and an empty prediction: the published 0 / 0
        predictions.append(low)
        references.append(truth)
    is_thing = [bool(i % 2) for i in range(count)]
    num_segments = [1 + i % 3 for i in range(count)]
    return predictions, references, is_thing, num_segments


@pytest.mark.parametrize("seed", [0, 1])
def test_epng_pipeline_end_to_end(seed: int) -> None:
    predictions, references, is_thing, num_segments = random_case(seed)
    # EPNG val.py: probabilities resized bilinearly to the image size, `>= 0.5`, IoU, official sum
    ious = []
    for low, truth in zip(predictions, references, strict=True):
        resized = F.interpolate(low[None, None], size=truth.shape, mode="bilinear")[0, 0]
        ious.append(published_iou((resized >= 0.5).float(), truth.float()))
    assert np.isnan(ious[7]) and ious[3] == 0.0
    metric = AverageRecall(inclusive_threshold=True)
    results = metric.compute(
        predictions=predictions,
        references=references,
        is_thing=is_thing,
        num_segments=num_segments,
        integration="official",
        empty_ground_truth="miss",
    )
    assert results["average_recall"] == pytest.approx(published_official_area(ious), abs=1e-12)
    things = [iou for iou, thing in zip(ious, is_thing, strict=True) if thing]
    assert results["average_recall_things"] == pytest.approx(published_official_area(things), abs=1e-12)
    # the case has ties, so the default `> 0.5` gives another number
    strict = AverageRecall().compute(
        predictions=predictions,
        references=references,
        is_thing=is_thing,
        num_segments=num_segments,
        integration="official",
        empty_ground_truth="miss",
    )
    assert abs(strict["average_recall"] - results["average_recall"]) > 1e-9


def test_ppmn_pipeline_end_to_end() -> None:
    predictions, references, is_thing, num_segments = random_case(2)
    short_side, max_size = 40, 64  # a small detectron2 resize so the test stays fast
    ious, padded_predictions = [], []
    for low, truth in zip(predictions, references, strict=True):
        height, width = truth.shape
        scale = short_side / min(height, width)
        if max(height, width) * scale > max_size:
            scale = max_size / max(height, width)
        input_size = (int(height * scale + 0.5), int(width * scale + 0.5))
        padded = tuple(-(-side // 32) * 32 for side in input_size)
        # the model's stride-4 output on the padded input, then > 0.5
        output = F.interpolate(low[None, None], size=(padded[0] // 4, padded[1] // 4), mode="bilinear")[0, 0]
        padded_predictions.append(output)
        gt = F.interpolate(truth.float()[None, None], size=input_size, mode="bilinear")
        gt = F.pad(gt, (0, padded[1] - input_size[1], 0, padded[0] - input_size[0]))
        gt = F.interpolate(gt, scale_factor=0.25, mode="bilinear")[0, 0] > 0
        ious.append(published_iou((output > 0.5).float(), gt.float()))
    metric = AverageRecall("stride4_padded", stride4_short_side=short_side, stride4_max_size=max_size)
    results = metric.compute(
        predictions=padded_predictions,
        references=references,
        is_thing=is_thing,
        num_segments=num_segments,
        integration="official",
        empty_ground_truth="miss",
    )
    assert results["average_recall"] == pytest.approx(published_official_area(ious), abs=1e-12)


def test_png_baseline_pipeline_end_to_end() -> None:
    predictions, references, is_thing, num_segments = random_case(3)
    ious, proposals = [], []
    for low, truth in zip(predictions, references, strict=True):
        # a binary proposal at the image size; rounded at 256 x 256, back to the image size as floats
        proposal = F.interpolate(low[None, None], size=truth.shape, mode="bilinear")[0, 0] > 0.5
        proposals.append(proposal)
        p = torch.round(F.interpolate(proposal.float()[None, None], size=(256, 256), mode="bilinear"))
        t = F.interpolate(truth.float()[None, None], size=(256, 256), mode="bilinear")
        p = F.interpolate(p, size=truth.shape, mode="bilinear")[0, 0]
        t = F.interpolate(t, size=truth.shape, mode="bilinear")[0, 0]
        ious.append(published_iou(p, t))
    metric = AverageRecall("soft256")
    results = metric.compute(
        predictions=proposals,
        references=references,
        is_thing=is_thing,
        num_segments=num_segments,
        integration="official",
        empty_ground_truth="miss",
    )
    assert results["average_recall"] == pytest.approx(published_official_area(ious), abs=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_counts_on_cuda_equal_the_cpu_ones(protocol: str) -> None:
    predictions, references, _, _ = random_case(4)
    options = {"short_side": 40, "max_size": 64, "inclusive_threshold": True}
    on_cpu = mask_counts(predictions, references, protocol, **options)
    on_cuda = mask_counts(
        [p.cuda() for p in predictions], [r.cuda() for r in references], protocol, **options
    )
    for name, values in on_cpu.items():
        np.testing.assert_allclose(on_cuda[name], values, rtol=1e-6, err_msg=name)
