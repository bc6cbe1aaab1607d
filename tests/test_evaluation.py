"""Batched evaluation (`narrative_grounding.training.evaluation`) under every Average Recall protocol equals the
metric computed on each image's own prediction, taken as the protocol defines it, for a saved tiny model."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
import torch

from narrative_grounding import PngForPanopticNarrativeGrounding, PngProcessor, create_model, load_processor
from narrative_grounding.metrics import PROTOCOLS, AverageRecall, evaluation_size
from narrative_grounding.modeling.image_processing_png import PngBatchFeature
from narrative_grounding.training.collate import PngCollator, model_inputs
from narrative_grounding.training.evaluation import evaluate_average_recall

CAPTION = "a red box lies on the floor next to two squares"
#: (start, end) of each phrase in CAPTION, its segment ids, is_thing.
PHRASES = ((0, 9, (1,), True), (17, 26, (2,), False), (35, 46, (3, 4), True))


def _row(image_id: int, height: int, width: int) -> dict:
    """A dataset row (the PNG schema) of an image of `height` x `width`: a box, two squares, the floor."""
    generator = np.random.default_rng(image_id)
    ids = np.full((height, width), 2, dtype=np.uint32)  # the floor
    ids[height // 4 : 3 * height // 4, : width // 2] = 1  # the box
    ids[: height // 3, 2 * width // 3 :] = 3  # the squares
    ids[2 * height // 3 :, 2 * width // 3 :] = 4
    panoptic = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    image = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return {
        "image_id": image_id,
        "image": PIL.Image.fromarray(image),
        "caption": CAPTION,
        "panoptic_png": PIL.Image.fromarray(panoptic),
        "phrases": [
            {
                "start": start,
                "end": end,
                "segment_ids": list(segments),
                "is_thing": is_thing,
                "num_segments": len(segments),
            }
            for start, end, segments, is_thing in PHRASES
        ],
    }


def _save_tiny_model(folder, **overrides) -> str:
    torch.manual_seed(0)
    create_model("epng-tiny", **overrides).save_pretrained(folder)
    load_processor("epng-tiny").save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> str:
    """epng-tiny: masks at stride 2 (ours)."""
    return _save_tiny_model(tmp_path_factory.mktemp("epng-tiny"))


@pytest.fixture(scope="module")
def saved_stride4_model(tmp_path_factory) -> str:
    """epng-tiny with the papers' stride-4 masks."""
    return _save_tiny_model(tmp_path_factory.mktemp("epng-tiny-stride4"), epng_mask_stride=4)


def _expected(
    logits: torch.Tensor,
    processor,
    batch,
    protocol: str,
    protocol_input: bool,
    inclusive_threshold: bool = False,
    **compute_options,
) -> dict:
    """The metric on each image's own prediction: the post-processed masks at the original size ("original",
    "soft256"), the logits of the image ("stride4", "stride4_padded" for another input size), the logits of the
    image padded to a multiple of 32 ("stride4_padded" for the protocol's own ~800-pixel input, from a model whose
    logits are at stride 4)."""
    metric = AverageRecall(protocol, prediction_type="logits", inclusive_threshold=inclusive_threshold)
    stride = batch["pixel_values"].shape[-2] // logits.shape[-2]  # 4, or 2 for epng-tiny's masks (ours)
    for index, (reference, meta) in enumerate(zip(batch["reference_masks"], batch["metadata"], strict=True)):
        count = len(reference)
        if protocol in ("original", "soft256"):
            one = PngBatchFeature({"pixel_values": batch["pixel_values"][index : index + 1]}, metadata=[meta])
            prediction = processor.post_process_panoptic_narrative_grounding(
                logits[index : index + 1, :count], inputs=one, inclusive_threshold=inclusive_threshold
            )[0]["masks"]
        elif protocol == "stride4_padded" and protocol_input and stride == 4:
            height, width = evaluation_size(meta["original_size"], protocol)
            prediction = logits[index, :count, :height, :width]
        else:  # the image's part of the logits, at their stride
            height, width = (math.ceil(side / stride) for side in meta["resized_size"])
            prediction = logits[index, :count, :height, :width]
        metric.add_batch(
            predictions=prediction,
            references=reference,
            is_thing=batch["is_thing"][index],
            num_segments=batch["num_segments"][index],
        )
    return metric.compute(**{"empty_ground_truth": "skip", **compute_options})


def _scalars(results: dict) -> dict:
    return {key: value for key, value in results.items() if isinstance(value, (int, float))}


# Image sizes of one batch (different shapes, so the batch pads each image differently) and the processor's
# size: the protocol's own ~800-pixel input (60 x 80 -> 800 x 1067, padded grid 200 x 272 of the 256 x 272
# logits of a 1024 x 1088 batch) or a small one (48 x 64 -> 96 x 128 and 64 x 40 -> 128 x 80: multiples of
# 4, so the image's stride-4 logits are exact).
CASES = {
    "protocol_input": ([(60, 80), (80, 64)], {"shortest_edge": 800, "longest_edge": 1333}),
    "small_input": ([(48, 64), (64, 40)], {"shortest_edge": 96, "longest_edge": 128}),
}


# The protocol's own ~800-pixel input matters for stride-4 logits only ("stride4_padded" reads their padded grid);
# the stride-2 model is checked on the small input.
@pytest.mark.parametrize(
    ("model_fixture", "case"),
    [("saved_stride4_model", case) for case in sorted(CASES)] + [("saved_model", "small_input")],
)
def test_batched_evaluation_equals_metric_on_per_image_predictions(request, model_fixture, case):
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    sizes, size = CASES[case]
    saved_model = request.getfixturevalue(model_fixture)
    model = PngForPanopticNarrativeGrounding.from_pretrained(saved_model).eval()
    processor = PngProcessor.from_pretrained(saved_model)
    processor.image_processor.size = size
    rows = [_row(index, *shape) for index, shape in enumerate(sizes)]
    collator = PngCollator(processor, with_references=True)
    batch = collator(rows)
    if case == "protocol_input":
        assert batch["metadata"][0]["resized_size"] == (800, 1067)
        assert evaluation_size((60, 80), "stride4_padded") == (200, 272)
        assert tuple(batch["pixel_values"].shape[-2:]) == (1024, 1088)
    with torch.no_grad():
        logits = model(**model_inputs(batch)).pred_masks
    accelerator = Accelerator(cpu=True)
    for protocol in PROTOCOLS:
        dataloader = DataLoader(rows, batch_size=len(rows), collate_fn=collator)
        batched = evaluate_average_recall(
            model, dataloader, accelerator, processor, protocol=protocol, progress=False
        )
        expected = _expected(logits, processor, batch, protocol, case == "protocol_input")
        assert expected["num_phrases"] == 6
        got = _scalars(batched)
        got.pop("eval_loss")
        assert got == pytest.approx(_scalars(expected), abs=1e-12, nan_ok=True), protocol


def test_stride4_padded_reads_the_padding_only_when_the_model_saw_the_protocol_input(saved_model):
    """A model whose input is not the protocol's but whose image logits happen to have the padded grid's size
    (800 x 1088 -> 200 x 272) covers the image only: its logits take the ground truth's path, not the padded
    grid's."""
    from narrative_grounding.training.evaluation import average_recall_from_table, batch_phrase_counts

    model = PngForPanopticNarrativeGrounding.from_pretrained(saved_model).eval()
    processor = PngProcessor.from_pretrained(saved_model)
    processor.image_processor.size = {"height": 800, "width": 1088}
    batch = PngCollator(processor, with_references=True)([_row(0, 60, 80)])
    with torch.no_grad():
        logits = model(**model_inputs(batch)).pred_masks
    table = batch_phrase_counts(batch, logits, processor, "stride4_padded")
    # the image's probabilities at the protocol's input size (800 x 1067): the metric pads and downsamples them
    probabilities = torch.nn.functional.interpolate(
        logits[:, :3].sigmoid(), size=(800, 1067), mode="bilinear", align_corners=False
    )[0]
    metric = AverageRecall("stride4_padded")
    metric.add_batch(
        predictions=probabilities,
        references=batch["reference_masks"][0],
        is_thing=batch["is_thing"][0],
        num_segments=batch["num_segments"][0],
    )
    expected = metric.compute()
    assert average_recall_from_table(table)["average_recall"] == pytest.approx(
        expected["average_recall"], abs=1e-12
    )


def test_soft256_counts_keep_their_fractions(saved_model):
    from narrative_grounding.training.evaluation import batch_phrase_counts

    model = PngForPanopticNarrativeGrounding.from_pretrained(saved_model).eval()
    processor = PngProcessor.from_pretrained(saved_model)
    batch = PngCollator(processor, with_references=True)([_row(0, 60, 80)])
    with torch.no_grad():
        logits = model(**model_inputs(batch)).pred_masks
    table = batch_phrase_counts(batch, logits, processor, "soft256")
    assert table.dtype == torch.float64
    assert bool((table[0, :, :3] != table[0, :, :3].round()).any())  # soft sums, not truncated to pixels


def test_batched_evaluation_refuses_an_unknown_protocol(saved_model):
    from narrative_grounding.training.evaluation import batch_phrase_counts

    processor = PngProcessor.from_pretrained(saved_model)
    batch = PngCollator(processor, with_references=True)([_row(0, 60, 80)])
    with pytest.raises(ValueError, match="unknown evaluation protocol 'stride8'"):
        batch_phrase_counts(batch, torch.zeros(1, 3, 32, 32), processor, "stride8")


def test_published_scoring_options_reach_the_metric(saved_model):
    """The options that score as the published code does (EPNG's ">= 0.5", an emptied ground truth as a miss,
    the 1e-5 Riemann sum) give the metric's own result on each image's prediction."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    model = PngForPanopticNarrativeGrounding.from_pretrained(saved_model).eval()
    processor = PngProcessor.from_pretrained(saved_model)
    processor.image_processor.size = CASES["small_input"][1]
    rows = [_row(index, *shape) for index, shape in enumerate(CASES["small_input"][0])]
    collator = PngCollator(processor, with_references=True)
    batch = collator(rows)
    with torch.no_grad():
        logits = model(**model_inputs(batch)).pred_masks
    options = {"empty_ground_truth": "miss", "integration": "official"}
    for protocol in PROTOCOLS:
        batched = evaluate_average_recall(
            model,
            DataLoader(rows, batch_size=len(rows), collate_fn=collator),
            Accelerator(cpu=True),
            processor,
            protocol=protocol,
            inclusive_threshold=True,
            progress=False,
            **options,
        )
        expected = _expected(logits, processor, batch, protocol, False, inclusive_threshold=True, **options)
        got = _scalars(batched)
        got.pop("eval_loss")
        assert got == pytest.approx(_scalars(expected), abs=1e-12, nan_ok=True), protocol
    with pytest.raises(
        ValueError, match="empty_ground_truth must be one of \\('skip', 'miss'\\), got 'raise'"
    ):
        evaluate_average_recall(model, [], Accelerator(cpu=True), processor, empty_ground_truth="raise")


def test_inclusive_threshold_counts_by_hand(saved_model):
    """Logits of 0 are probabilities of exactly 0.5 everywhere: no pixel is above the threshold, every pixel is
    at it. Ground-truth areas of `_row(0, 60, 80)`: the box 30 x 40 = 1200, the squares 2 x 20 x 27 = 1080, the
    floor the other 4800 - 2280 = 2520 pixels."""
    from narrative_grounding.training.evaluation import batch_phrase_counts

    processor = PngProcessor.from_pretrained(saved_model, post_process_mask_decision="threshold")
    batch = PngCollator(processor, with_references=True)([_row(0, 60, 80)])
    height, width = batch["pixel_values"].shape[-2:]
    logits = torch.zeros(1, 3, height // 4, width // 4)
    areas = [1200, 2520, 1080]
    for protocol in ("original", "stride4"):
        strict = batch_phrase_counts(batch, logits, processor, protocol)
        inclusive = batch_phrase_counts(batch, logits, processor, protocol, inclusive_threshold=True)
        if protocol == "original":
            assert strict[0, :, :3].tolist() == [[0, area, area] for area in areas]
            assert inclusive[0, :, :3].tolist() == [[area, 4800, area] for area in areas]
        else:  # at stride 4 the ground truth is resized too: every reference pixel is predicted, or none is
            assert (strict[0, :, 0] == 0).all() and (inclusive[0, :, 0] == inclusive[0, :, 2]).all()
            assert len(set(inclusive[0, :, 1].tolist())) == 1  # the union is the whole stride-4 grid


def test_empty_ground_truth_and_integration_from_the_gathered_table():
    from narrative_grounding.training.evaluation import PAD, average_recall_from_table

    # IoU 1, an emptied ground truth with an empty prediction (the published IoU 0 / 0 = nan) and one with
    # 2 predicted pixels (0 / 2 = 0); columns as COUNT_COLUMNS, kind -1 = not recorded
    rows = np.array([[4, 4, 4, 1, 1, -1], [0, 0, 0, 0, 2, -1], [0, 2, 0, 1, 1, -1], [PAD] * 6])[None]
    skipped = average_recall_from_table(rows)
    assert (skipped["average_recall"], skipped["num_phrases"], skipped["num_skipped_empty_ground_truth"]) == (
        1.0,
        1,
        2,
    )
    missed = average_recall_from_table(rows, empty_ground_truth="miss")
    assert missed["num_phrases"] == 3 and missed["average_recall"] == pytest.approx(1 / 3, abs=1e-15)
    assert missed["average_recall_things"] == pytest.approx(1 / 2, abs=1e-15)
    assert missed["average_recall_stuff"] == 0.0
    # the published sum: 1e-5 * (recall(0) + 99,998 * recall(t > 0)) = 1e-5 * (2/3 + 99,998 / 3) = 1/3
    official = average_recall_from_table(rows, empty_ground_truth="miss", integration="official")
    assert official["average_recall"] == pytest.approx(1 / 3, abs=1e-12)
    exact_skip = average_recall_from_table(rows, integration="official")
    # one phrase of IoU 1: recall 1 on [0, 0.99999), the last interval left out
    assert exact_skip["average_recall"] == pytest.approx(0.99999, abs=1e-9)
    with pytest.raises(ValueError, match="integration must be one of"):
        average_recall_from_table(rows, integration="trapezoid")


def test_evaluate_command_scores_as_asked(saved_model, tmp_path, capsys):
    import json

    from accelerate.state import AcceleratorState

    from narrative_grounding.cli import main

    argv = ["evaluate", saved_model, "--synthetic", "easy", "--synthetic_num_validation", "3",
            "--synthetic_image_size", "64", "--synthetic_dir", str(tmp_path / "data"), "--json",
            str(tmp_path / "results.json"), "--inclusive_threshold", "--empty_ground_truth", "miss",
            "--integration", "official"]  # fmt: skip
    try:
        # the tiny model decides its masks by expected IoU, where the 0.5 threshold's tie rule has no meaning
        assert main(argv) == 2
        assert "add --mask_decision threshold" in capsys.readouterr().err
        assert main([*argv, "--mask_decision", "threshold"]) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert (
        "(validation, original, >= 0.5, empty ground truth: miss, official integration)"
        in capsys.readouterr().out
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["num_phrases"] > 0 and results["num_skipped_empty_ground_truth"] == 0
