"""Average Recall against a direct re-implementation of its definition.

The reference functions below follow the definition literally (pixel products for IoU, the
recall step function integrated piece by piece, the official 1e-5 grid as a loop over
thresholds), independently of the vectorised code under test.
"""

from __future__ import annotations

import multiprocessing
import os

import evaluate
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from narrative_grounding.metrics import (
    AVERAGE_RECALL_PATH,
    AverageRecall,
    average_recall_from_counts,
    average_recall_from_ious,
    evaluation_size,
    mask_counts,
    resize_for_protocol,
)

SPLITS = ("things", "stuff", "singular", "plural")


# ---------------------------------------------------------------- reference definitions
def reference_iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    p, g = prediction.astype(np.int64), truth.astype(np.int64)
    return float((p * g).sum() / (p + g - p * g).sum())


def reference_exact_area(ious: list[float]) -> float:
    """Integral over [0, 1] of recall(t) = #{IoU >= t} / n, summed over the step function's pieces."""
    if not ious:
        return float("nan")
    breakpoints = sorted({0.0, 1.0, *ious})
    area = 0.0
    for left, right in zip(breakpoints[:-1], breakpoints[1:], strict=True):
        # recall is constant on (left, right]: the phrases with IoU >= right
        area += (right - left) * sum(iou >= right for iou in ious) / len(ious)
    return area


def reference_official_area(ious: list[float]) -> float:
    """The published loop: recall on arange(0, 1, 1e-5), left Riemann sum over consecutive pairs."""
    if not ious:
        return float("nan")
    values = np.asarray(ious)
    thresholds = np.arange(0, 1, 0.00001)
    recall = (values[None, :] >= thresholds[:, None]).sum(1) / len(values)
    return float(sum(abs(thresholds[i + 1] - thresholds[i]) * recall[i] for i in range(len(thresholds) - 1)))


def reference_results(ious: list[float], is_thing: list[bool], num_segments: list[int], area) -> dict:
    selections = {
        "things": [t for t in is_thing],
        "stuff": [not t for t in is_thing],
        "singular": [n == 1 for n in num_segments],
        "plural": [n > 1 for n in num_segments],
    }
    out = {"average_recall": area(ious), "num_phrases": len(ious)}
    for name, keep in selections.items():
        subset = [iou for iou, k in zip(ious, keep, strict=True) if k]
        out[f"average_recall_{name}"] = area(subset)
        out[f"num_{name}"] = len(subset)
    out["recall_at_0.5"] = sum(iou >= 0.5 for iou in ious) / len(ious)
    return out


def random_phrases(rng: np.random.Generator, count: int, *, same_size: bool = False):
    predictions, references, is_thing, num_segments = [], [], [], []
    for _ in range(count):
        height, width = (24, 32) if same_size else tuple(rng.integers(5, 40, size=2))
        truth = rng.random((height, width)) < rng.uniform(0.05, 0.9)
        truth[rng.integers(height), rng.integers(width)] = True  # never empty
        prediction = rng.random((height, width)) < rng.uniform(0.0, 0.9)
        if rng.random() < 0.2:
            prediction = truth.copy()  # exact hits: IoU exactly 1
        predictions.append(prediction.astype(np.uint8))
        references.append(truth.astype(np.uint8))
        is_thing.append(bool(rng.random() < 0.5))
        num_segments.append(int(rng.integers(1, 4)))
    return predictions, references, is_thing, num_segments


def assert_matches(results: dict, expected: dict, tolerance: float = 1e-12) -> None:
    for key, value in expected.items():
        if isinstance(value, float) and np.isnan(value):
            assert np.isnan(results[key]), key
        else:
            assert results[key] == pytest.approx(value, abs=tolerance), key


# ---------------------------------------------------------------- the definition
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_phrases_match_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    predictions, references, is_thing, num_segments = random_phrases(rng, 60)
    results = AverageRecall().compute(
        predictions=predictions, references=references, is_thing=is_thing, num_segments=num_segments
    )
    ious = [reference_iou(p, g) for p, g in zip(predictions, references, strict=True)]
    assert_matches(results, reference_results(ious, is_thing, num_segments, reference_exact_area))
    assert results["num_skipped_empty_ground_truth"] == 0
    for key in ("average_recall", *(f"average_recall_{s}" for s in SPLITS)):
        assert 0.0 <= results[key] <= 1.0


def test_official_integration_matches_published_loop_and_is_within_grid_step() -> None:
    rng = np.random.default_rng(3)
    predictions, references, is_thing, num_segments = random_phrases(rng, 40)
    ious = [reference_iou(p, g) for p, g in zip(predictions, references, strict=True)]
    official = AverageRecall().compute(
        predictions=predictions,
        references=references,
        is_thing=is_thing,
        num_segments=num_segments,
        integration="official",
    )
    assert_matches(official, reference_results(ious, is_thing, num_segments, reference_official_area), 1e-9)
    exact = average_recall_from_ious(ious, is_thing, num_segments)
    for key in ("average_recall", *(f"average_recall_{s}" for s in SPLITS)):
        assert abs(official[key] - exact[key]) <= 1e-5 + 1e-12


def test_split_assignment() -> None:
    # IoUs 1, 0.5, 0.25, 0 with known splits
    ious = [1.0, 0.5, 0.25, 0.0]
    results = average_recall_from_ious(ious, is_thing=[True, True, False, False], num_segments=[1, 3, 1, 2])
    assert results["average_recall_things"] == pytest.approx(0.75)
    assert results["average_recall_stuff"] == pytest.approx(0.125)
    assert results["average_recall_singular"] == pytest.approx(0.625)
    assert results["average_recall_plural"] == pytest.approx(0.25)
    assert (results["num_things"], results["num_stuff"]) == (2, 2)
    assert (results["num_singular"], results["num_plural"]) == (2, 2)
    assert results["recall_at_0.5"] == pytest.approx(0.5)  # IoU >= 0.5, the boundary included


def test_empty_split_is_nan_not_an_error() -> None:
    results = average_recall_from_ious([0.3, 0.6], is_thing=[True, True], num_segments=[1, 1])
    assert np.isnan(results["average_recall_stuff"]) and results["num_stuff"] == 0
    assert np.isnan(results["average_recall_plural"]) and results["num_plural"] == 0
    assert all(np.isnan(v) for v in results["recall_curve"]["stuff"])


def test_recall_curve_is_the_step_function() -> None:
    ious = [0.0, 0.2, 0.5, 0.5, 1.0]
    curve = average_recall_from_ious(ious, [True] * 5, [1] * 5)["recall_curve"]
    thresholds = np.asarray(curve["iou_thresholds"])
    assert thresholds[0] == 0.0 and thresholds[-1] == 1.0 and len(thresholds) == 101
    expected = [sum(i >= t for i in ious) / 5 for t in thresholds]
    assert curve["overall"] == pytest.approx(expected)
    assert np.all(np.diff(curve["overall"]) <= 0)
    assert curve["things"] == pytest.approx(expected) and curve["singular"] == pytest.approx(expected)


# ---------------------------------------------------------------- adversarial inputs
def test_all_zero_predictions() -> None:
    rng = np.random.default_rng(4)
    _, references, is_thing, num_segments = random_phrases(rng, 10)
    zeros = [np.zeros_like(r) for r in references]
    results = AverageRecall().compute(
        predictions=zeros, references=references, is_thing=is_thing, num_segments=num_segments
    )
    assert results["average_recall"] == 0.0 and results["recall_at_0.5"] == 0.0
    official = average_recall_from_ious([0.0] * 10, is_thing, num_segments, integration="official")
    # the left sum still counts recall(0) = 1 on the first 1e-5 interval
    assert official["average_recall"] == pytest.approx(1e-5)


def test_full_predictions() -> None:
    rng = np.random.default_rng(5)
    _, references, is_thing, num_segments = random_phrases(rng, 10)
    full = [np.ones_like(r) for r in references]
    results = AverageRecall().compute(
        predictions=full, references=references, is_thing=is_thing, num_segments=num_segments
    )
    expected = np.mean([r.sum() / r.size for r in references])
    assert results["average_recall"] == pytest.approx(expected, abs=1e-12)


def test_single_phrase_and_perfect_prediction() -> None:
    truth = np.zeros((3, 5), dtype=bool)
    truth[1, 1:4] = True
    results = AverageRecall().compute(
        predictions=[truth], references=[truth], is_thing=[False], num_segments=[2]
    )
    assert results["average_recall"] == 1.0 and results["average_recall_stuff"] == 1.0
    assert results["average_recall_plural"] == 1.0 and np.isnan(results["average_recall_things"])
    assert results["num_phrases"] == 1
    official = average_recall_from_ious([1.0], [False], [2], integration="official")
    assert official["average_recall"] == pytest.approx(0.99999, abs=1e-12)  # last interval left out


def test_huge_counts() -> None:
    # counts far beyond any image (sums of many images in a gathered setting), near int64 limits
    intersections = [2**52, 2**60, 0, 3 * 2**55]
    unions = [2**53, 2**61, 2**62, 4 * 2**55]
    results = AverageRecall().compute(
        intersections=intersections, unions=unions, is_thing=[1, 0, 1, 0], num_segments=[1, 1, 2, 2]
    )
    assert results["average_recall"] == pytest.approx((0.5 + 0.5 + 0.0 + 0.75) / 4, abs=1e-15)
    assert results["average_recall_stuff"] == pytest.approx(0.625, abs=1e-15)


# ---------------------------------------------------------------- input forms
def test_counts_masks_stack_and_ious_give_the_same_dict() -> None:
    rng = np.random.default_rng(6)
    predictions, references, is_thing, num_segments = random_phrases(rng, 25, same_size=True)
    from_masks = AverageRecall().compute(
        predictions=predictions, references=references, is_thing=is_thing, num_segments=num_segments
    )
    from_stack = AverageRecall().compute(
        predictions=torch.from_numpy(np.stack(predictions)).bool(),
        references=np.stack(references),
        is_thing=torch.tensor(is_thing),
        num_segments=np.asarray(num_segments),
    )
    counts = mask_counts(predictions, references)
    from_counts = AverageRecall().compute(
        intersections=counts["intersections"],
        unions=counts["unions"],
        is_thing=is_thing,
        num_segments=num_segments,
    )
    ious = counts["intersections"] / counts["unions"]
    from_ious = average_recall_from_ious(ious, is_thing, num_segments)
    assert from_masks == from_stack == from_counts == from_ious


def test_streaming_equals_one_shot() -> None:
    rng = np.random.default_rng(7)
    predictions, references, is_thing, num_segments = random_phrases(rng, 50)
    one_shot = AverageRecall().compute(
        predictions=predictions, references=references, is_thing=is_thing, num_segments=num_segments
    )
    metric = AverageRecall()
    bounds = [0, 1, 8, 20, 21, 44]
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        metric.add_batch(
            predictions=predictions[start:end],
            references=references[start:end],
            is_thing=is_thing[start:end],
            num_segments=num_segments[start:end],
        )
    for index in range(44, 49):
        metric.add(
            prediction=predictions[index],
            reference=references[index],
            is_thing=is_thing[index],
            num_segments=num_segments[index],
        )
    streamed = metric.compute(predictions=predictions[49:], references=references[49:], is_thing=is_thing[49:],
                              num_segments=num_segments[49:])  # fmt: skip
    assert streamed == one_shot
    # the Arrow cache holds counts only, never masks
    assert set(metric.features) == {"intersections", "unions", "reference_areas", "is_thing", "num_segments"}


def test_keep_in_memory_and_reuse_after_compute() -> None:
    rng = np.random.default_rng(8)
    predictions, references, is_thing, num_segments = random_phrases(rng, 12)
    metric = AverageRecall(keep_in_memory=True)
    first = metric.compute(
        predictions=predictions, references=references, is_thing=is_thing, num_segments=num_segments
    )
    second = metric.compute(
        predictions=predictions, references=references, is_thing=is_thing, num_segments=num_segments
    )
    assert first == second  # compute empties the cache: the second call sees only its own phrases


def _distributed_worker(rank: int, cache_dir: str, queue) -> None:
    rng = np.random.default_rng(9)
    predictions, references, is_thing, num_segments = random_phrases(rng, 30)
    half = slice(0, 15) if rank == 0 else slice(15, 30)
    metric = AverageRecall(num_process=2, process_id=rank, cache_dir=cache_dir, experiment_id="t", timeout=60)
    metric.add_batch(
        predictions=predictions[half],
        references=references[half],
        is_thing=is_thing[half],
        num_segments=num_segments[half],
    )
    queue.put((rank, metric.compute()))


@pytest.mark.slow  # two spawned interpreters importing torch: ~20 s on 2 cores
def test_two_processes_gather_through_the_evaluate_cache(tmp_path) -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_distributed_worker, args=(r, str(tmp_path), queue)) for r in (0, 1)]
    for worker in workers:
        worker.start()
    results = dict(queue.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    rng = np.random.default_rng(9)
    predictions, references, is_thing, num_segments = random_phrases(rng, 30)
    expected = AverageRecall().compute(
        predictions=predictions, references=references, is_thing=is_thing, num_segments=num_segments
    )
    assert results[1] is None and results[0] == expected


def test_evaluate_load_from_the_package_path(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert os.path.isfile(os.path.join(AVERAGE_RECALL_PATH, "average_recall.py"))
    assert os.path.isfile(os.path.join(AVERAGE_RECALL_PATH, "README.md"))
    rng = np.random.default_rng(10)
    predictions, references, is_thing, num_segments = random_phrases(rng, 15)
    for config_name in (None, "stride4"):
        loaded = evaluate.load(AVERAGE_RECALL_PATH, config_name)
        direct = AverageRecall(config_name=config_name)
        assert isinstance(loaded, evaluate.Metric) and type(loaded).__name__ == "AverageRecall"
        kwargs = {"predictions": predictions, "references": references, "is_thing": is_thing}
        assert loaded.compute(**kwargs, num_segments=num_segments) == direct.compute(
            **kwargs, num_segments=num_segments
        )


# ---------------------------------------------------------------- empty ground truth
def test_empty_ground_truth_raises_naming_the_phrase_or_is_skipped_and_counted() -> None:
    truth = np.ones((4, 4), dtype=np.uint8)
    empty = np.zeros((4, 4), dtype=np.uint8)
    kwargs = {
        "predictions": [truth, truth, empty],
        "references": [truth, empty, empty],
        "is_thing": [True, True, False],
        "num_segments": [1, 1, 1],
    }
    with pytest.raises(ValueError, match=r"2 phrase\(s\) have an empty ground truth \(phrases 1, 2"):
        AverageRecall().compute(**kwargs)
    results = AverageRecall().compute(**kwargs, empty_ground_truth="skip")
    assert results["num_skipped_empty_ground_truth"] == 2
    assert results["num_phrases"] == 1 and results["average_recall"] == 1.0
    # from counts: an empty union, or num_segments == 0, is an empty ground truth too
    with pytest.raises(ValueError, match="empty ground truth"):
        average_recall_from_counts([0, 1], [0, 2], [True, True], [1, 1])
    with pytest.raises(ValueError, match="empty ground truth"):
        average_recall_from_counts([0, 1], [5, 2], [True, True], [0, 1])


# ---------------------------------------------------------------- protocols
def test_original_protocol_resizes_probabilities_bilinearly_then_thresholds() -> None:
    rng = np.random.default_rng(11)
    low = torch.from_numpy(rng.random((12, 16))).float()  # a stride-4 probability map
    truth = torch.from_numpy(rng.random((48, 64)) < 0.4)
    prediction, reference = resize_for_protocol(low, truth, "original")
    expected = F.interpolate(low[None, None], size=(48, 64), mode="bilinear", align_corners=False)[0, 0] > 0.5
    assert torch.equal(prediction, expected) and torch.equal(reference, truth)
    # logits: sigmoid first (EPNG order), so the metric with prediction_type="logits" equals this
    logits = torch.logit(low.clamp(1e-4, 1 - 1e-4))
    from_logits, _ = resize_for_protocol(logits, truth, prediction_type="logits")
    assert (from_logits != expected).float().mean() < 1e-3
    metric = AverageRecall(prediction_type="logits")
    results = metric.compute(predictions=[logits], references=[truth], is_thing=[True], num_segments=[1])
    inter, union = (from_logits & truth).sum().item(), (from_logits | truth).sum().item()
    assert results["average_recall"] == pytest.approx(inter / union)


def test_stride4_protocol_sizes_and_ground_truth_downsampling() -> None:
    assert evaluation_size((480, 640), "original") == (480, 640)
    assert evaluation_size((480, 640), "stride4") == (200, 267)  # input 800 x 1067
    assert evaluation_size((400, 1200), "stride4") == (111, 334)  # input 444 x 1333: long side capped
    truth = np.zeros((480, 640), dtype=bool)
    truth[100:300, 200:400] = True
    prediction = np.zeros((200, 267), dtype=np.float32)
    prediction[42:125, 84:167] = 0.9
    pred_mask, ref_mask = resize_for_protocol(prediction, truth, "stride4")
    assert pred_mask.shape == ref_mask.shape == (200, 267)
    assert ref_mask.sum().item() == pytest.approx(truth.sum() / (2.4 * 2.4), rel=0.02)
    metric = evaluate.load(AVERAGE_RECALL_PATH, "stride4")
    results = metric.compute(predictions=[prediction], references=[truth], is_thing=[True], num_segments=[1])
    inter = (pred_mask & ref_mask).sum().item()
    assert results["average_recall"] == pytest.approx(inter / (pred_mask | ref_mask).sum().item())


def test_binary_mask_at_another_size_is_resized_under_original() -> None:
    truth = np.zeros((8, 8), dtype=bool)
    truth[:4] = True
    small = np.zeros((4, 4), dtype=np.uint8)
    small[:2] = 1
    results = AverageRecall().compute(
        predictions=[small], references=[truth], is_thing=[True], num_segments=[1]
    )
    assert results["average_recall"] == 1.0


def test_accelerator_reduction_equals_the_cpu_one() -> None:
    from narrative_grounding.metrics.average_recall.average_recall import _stack_counts, _stack_counts_torch

    generator = torch.Generator().manual_seed(12)
    prediction = torch.rand(5, 30, 40, generator=generator) < 0.4
    reference = torch.rand(5, 30, 40, generator=generator) < 0.3
    assert np.array_equal(_stack_counts(prediction, reference), _stack_counts_torch(prediction, reference))
    if torch.cuda.is_available():
        on_device = _stack_counts(prediction.cuda(), reference.cuda())
        assert np.array_equal(on_device, _stack_counts(prediction, reference))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"references": [np.full((4, 4), 2)]}, "must hold only 0/1"),
        ({"predictions": [np.full((4, 4), 1.5)]}, "prediction_type='logits'"),
        ({"predictions": [np.ones((4, 4))] * 2}, "2 predictions but 1 references"),
        ({"predictions": [np.ones((2, 4, 4))], "references": [np.ones((2, 4, 4))]}, "Phrase 0 of this batch"),
        ({"is_thing": [True, False]}, "differ in length"),
        ({"num_segments": [1.5]}, "must be integers"),
        ({"intersections": [1]}, "not both"),
    ],
)
def test_bad_inputs_are_named(kwargs: dict, message: str) -> None:
    inputs = {
        "predictions": [np.ones((4, 4))],
        "references": [np.ones((4, 4))],
        "is_thing": [True],
        "num_segments": [1],
    }
    inputs.update(kwargs)
    if "intersections" in kwargs:
        inputs["unions"] = [2]
    with pytest.raises(ValueError, match=message):
        AverageRecall().compute(**inputs)


def test_impossible_counts_and_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="intersection larger than the union"):
        AverageRecall().compute(intersections=[3], unions=[2], is_thing=[True], num_segments=[1])
    with pytest.raises(ValueError, match="integration"):
        average_recall_from_ious([0.5], [True], [1], integration="trapezoid")
    with pytest.raises(ValueError, match="IoUs must lie in"):
        average_recall_from_ious([float("nan")], [True], [1])
    with pytest.raises(ValueError, match="protocol"):
        AverageRecall(config_name="stride8")
    with pytest.raises(ValueError, match="nothing to evaluate"):
        AverageRecall().compute()


def test_unknown_names_are_type_errors_that_keep_what_was_added() -> None:
    truth = np.ones((4, 4), dtype=bool)
    metric = AverageRecall()
    metric.add(prediction=truth, reference=truth, is_thing=True, num_segments=1)
    with pytest.raises(TypeError, match=r"unknown inputs \['predictions'\].*'prediction'"):
        metric.add(predictions=truth, reference=truth, is_thing=True, num_segments=1)
    with pytest.raises(TypeError, match=r"unknown inputs \['is_things'\]"):
        metric.add_batch(predictions=[truth], references=[truth], is_things=[True], num_segments=[1])
    # a misspelt option is caught before evaluate reads (and empties) its cache
    with pytest.raises(TypeError, match=r"unknown arguments \['integraton'\].*'integration'"):
        metric.compute(integraton="official")
    assert metric.compute()["num_phrases"] == 1
