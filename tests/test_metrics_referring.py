"""Referring-segmentation metrics against a direct re-implementation of each definition."""

from __future__ import annotations

import evaluate
import numpy as np
import pytest
import torch

from narrative_grounding.metrics import (
    REFERRING_SEGMENTATION_PATH,
    ReferringSegmentation,
    mask_counts,
    referring_segmentation_from_counts,
)

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def reference_metrics(predictions: list[np.ndarray], references: list[np.ndarray]) -> dict:
    """Literal definitions: per-expression loops over pixel products."""
    ious, generalized, target_ious = [], [], []
    total_inter = total_union = 0
    n_correct = n_total = t_correct = t_total = 0
    for prediction, truth in zip(predictions, references, strict=True):
        p, g = prediction.astype(np.int64), truth.astype(np.int64)
        inter, union = int((p * g).sum()), int((p + g - p * g).sum())
        total_inter, total_union = total_inter + inter, total_union + union
        if g.sum() == 0:  # no-target expression
            n_total += 1
            n_correct += int(p.sum() == 0)
            generalized.append(1.0 if p.sum() == 0 else 0.0)
        else:
            t_total += 1
            t_correct += int(p.sum() > 0)
            target_ious.append(inter / union)
            generalized.append(inter / union)
        ious.append(inter / union if union else None)

    def mean(values):
        return sum(values) / len(values) if values else float("nan")

    out = {
        "miou": mean(target_ious),
        "ciou": total_inter / total_union if total_union else float("nan"),
        "giou": mean(generalized),
        "n_acc": n_correct / n_total if n_total else float("nan"),
        "t_acc": t_correct / t_total if t_total else float("nan"),
        "num_expressions": len(predictions),
        "num_target": t_total,
        "num_no_target": n_total,
    }
    for t in THRESHOLDS:
        out[f"precision_at_{t:g}"] = mean([float(i >= t) for i in target_ious])
    return out


def random_expressions(rng: np.random.Generator, count: int, no_target_rate: float = 0.3):
    predictions, references = [], []
    for _ in range(count):
        height, width = tuple(rng.integers(4, 30, size=2))
        truth = rng.random((height, width)) < rng.uniform(0.05, 0.8)
        if rng.random() < no_target_rate:
            truth[:] = False
        prediction = rng.random((height, width)) < rng.uniform(0.0, 0.8)
        if rng.random() < 0.25:
            prediction[:] = False  # "no target" answers, right or wrong
        predictions.append(prediction)
        references.append(truth)
    return predictions, references


def assert_matches(results: dict, expected: dict) -> None:
    assert set(results) == set(expected)
    for key, value in expected.items():
        if isinstance(value, float) and np.isnan(value):
            assert np.isnan(results[key]), key
        else:
            assert results[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_expressions_match_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    predictions, references = random_expressions(rng, 50)
    results = ReferringSegmentation().compute(predictions=predictions, references=references)
    assert_matches(results, reference_metrics(predictions, references))


def test_all_zero_predictions() -> None:
    rng = np.random.default_rng(4)
    _, references = random_expressions(rng, 30)
    zeros = [np.zeros_like(r) for r in references]
    results = ReferringSegmentation().compute(predictions=zeros, references=references)
    assert_matches(results, reference_metrics(zeros, references))
    assert results["n_acc"] == 1.0 and results["t_acc"] == 0.0 and results["miou"] == 0.0
    assert results["giou"] == pytest.approx(results["num_no_target"] / 30)


def test_full_predictions() -> None:
    rng = np.random.default_rng(5)
    _, references = random_expressions(rng, 30)
    full = [np.ones_like(r) for r in references]
    results = ReferringSegmentation().compute(predictions=full, references=references)
    assert_matches(results, reference_metrics(full, references))
    assert results["n_acc"] == 0.0 and results["t_acc"] == 1.0


def test_single_expression_and_classic_refcoco_without_no_target() -> None:
    truth = np.zeros((6, 6), dtype=bool)
    truth[:3] = True
    prediction = np.zeros((6, 6), dtype=bool)
    prediction[:2] = True  # IoU 2/3
    results = ReferringSegmentation().compute(predictions=[prediction], references=[truth])
    assert results["miou"] == results["ciou"] == results["giou"] == pytest.approx(2 / 3)
    assert results["precision_at_0.6"] == 1.0 and results["precision_at_0.7"] == 0.0
    assert np.isnan(results["n_acc"]) and results["num_no_target"] == 0


def test_giou_and_ciou_conventions_for_no_target() -> None:
    # one target (IoU 1/2) and two no-target expressions: one answered empty, one not
    results = referring_segmentation_from_counts(
        intersections=[5, 0, 0], unions=[10, 0, 7], reference_areas=[10, 0, 0]
    )
    assert results["giou"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert results["ciou"] == pytest.approx(5 / 17)  # the wrong answer's pixels join the union
    assert results["miou"] == pytest.approx(0.5)
    assert results["n_acc"] == 0.5 and results["t_acc"] == 1.0


def test_huge_counts() -> None:
    results = referring_segmentation_from_counts(
        intersections=[2**60, 0], unions=[2**61, 2**62], reference_areas=[2**61, 2**62]
    )
    assert results["miou"] == pytest.approx(0.25) and results["ciou"] == pytest.approx(
        2**60 / (2**61 + 2**62)
    )


def test_streaming_counts_and_one_shot_agree() -> None:
    rng = np.random.default_rng(6)
    predictions, references = random_expressions(rng, 40)
    one_shot = ReferringSegmentation().compute(predictions=predictions, references=references)
    metric = ReferringSegmentation()
    metric.add_batch(predictions=predictions[:13], references=references[:13])
    for index in range(13, 20):
        metric.add(prediction=torch.from_numpy(predictions[index]), reference=references[index])
    counts = mask_counts(predictions[20:], references[20:])
    metric.add_batch(
        intersections=torch.from_numpy(counts["intersections"]),
        unions=counts["unions"].tolist(),
        reference_areas=counts["reference_areas"],
    )
    assert metric.compute() == one_shot


def test_evaluate_load_and_custom_thresholds() -> None:
    rng = np.random.default_rng(7)
    predictions, references = random_expressions(rng, 20)
    loaded = evaluate.load(REFERRING_SEGMENTATION_PATH)
    assert type(loaded).__name__ == "ReferringSegmentation"
    results = loaded.compute(predictions=predictions, references=references, precision_thresholds=[0.5, 0.75])
    assert {k for k in results if k.startswith("precision_at_")} == {"precision_at_0.5", "precision_at_0.75"}
    direct = ReferringSegmentation().compute(predictions=predictions, references=references)
    assert results["precision_at_0.5"] == direct["precision_at_0.5"] and results["giou"] == direct["giou"]


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="reference_areas"):
        ReferringSegmentation().compute(intersections=[1], unions=[2])
    with pytest.raises(ValueError, match="ground-truth area larger than the union"):
        ReferringSegmentation().compute(intersections=[1], unions=[2], reference_areas=[3])
    with pytest.raises(ValueError, match="Phrase 1 of this batch"):
        ReferringSegmentation().compute(
            predictions=[np.ones((2, 2)), np.ones((2, 2))], references=[np.ones((2, 2)), np.full((2, 2), 0.5)]
        )
    with pytest.raises(ValueError, match="precision_thresholds"):
        referring_segmentation_from_counts([1], [2], [2], precision_thresholds=[50])
