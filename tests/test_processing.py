"""PngProcessor: phrase-to-token alignment, truncation and windows, batching, post-processing, round trips."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import unicodedata
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoTokenizer

from narrative_grounding import create_model
from narrative_grounding.factory import variant_path
from narrative_grounding.modeling.image_processing_png import PngImageProcessor
from narrative_grounding.modeling.processing_png import PngProcessor, mask_to_rle, rle_to_mask

TOKENIZER_DIR = variant_path("epng-tiny")  # the tiny tokenizer ships in the tiny variants' folders
MODEL_KEYS = {
    "pixel_values",
    "pixel_mask",
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "phrase_token_mask",
}
MODEL_KEYS |= {"phrase_mask"}
LONG_NARRATIVE = " ".join(
    f"In part {i} of the picture we can see a red car near the tall tree, and a dog on the grass."
    for i in range(12)
)  # about 230 words


@pytest.fixture(scope="module")
def processor() -> PngProcessor:
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    return PngProcessor(PngImageProcessor(size={"height": 64, "width": 64}), tokenizer)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("epng-tiny", lpa_implementation="direct").eval()  # no compile per input shape


def normalise(text: str) -> str:
    """What the uncased tokenizer sees: lowercase, accents stripped, no spaces."""
    decomposed = unicodedata.normalize("NFD", text.lower())
    return "".join(char for char in decomposed if unicodedata.category(char) != "Mn" and not char.isspace())


def phrase_tokens(processor: PngProcessor, encoding, sample: int, phrase: int) -> list[str]:
    ids = encoding["input_ids"][sample].reshape(-1)
    columns = encoding["phrase_token_mask"][sample, phrase].nonzero()[:, 0]
    return processor.tokenizer.convert_ids_to_tokens(ids[columns].tolist())


def assert_aligned(processor: PngProcessor, encoding, sample: int = 0) -> None:
    """Every kept phrase's tokens spell exactly its text (modulo case, accents, spaces)."""
    meta = encoding.metadata[sample]
    for index, phrase in enumerate(meta["phrases"]):
        if not meta["phrase_kept"][index]:
            continue
        spelled = "".join(
            token.removeprefix("##") for token in phrase_tokens(processor, encoding, sample, index)
        )
        assert spelled == normalise(phrase), (index, phrase, spelled)


def image(height: int = 48, width: int = 80) -> PIL.Image.Image:
    rng = np.random.default_rng(height * width)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_outputs_hold_exactly_the_model_inputs(processor, model) -> None:
    text = "In this picture we can see a black bear on this tree."
    encoding = processor(images=image(), text=text, phrases=["a black bear", "this tree"])
    assert set(encoding.keys()) == MODEL_KEYS
    assert encoding["input_ids"].shape == encoding["attention_mask"].shape == (1, 15)
    assert encoding["phrase_token_mask"].shape == (1, 2, 15) and encoding["phrase_mask"].tolist() == [[1, 1]]
    assert processor.tokenizer.convert_ids_to_tokens(encoding["input_ids"][0, [0, -1]].tolist()) == [
        "[CLS]",
        "[SEP]",
    ]
    assert encoding.metadata[0]["spans"] == [(27, 39), (43, 52)]
    assert_aligned(processor, encoding)
    with torch.no_grad():
        outputs = model(**encoding)
    assert outputs.pred_masks.shape == (1, 2, 32, 32)  # epng-tiny: masks at stride 2 of the 64 x 64 input


def test_repeated_phrases_map_to_their_own_occurrence(processor) -> None:
    text = "A dog sits. The dog runs to the dog house; another dog barks at the dog."
    encoding = processor(text=text, phrases=["The dog", "the dog", "dog", "the dog."])
    first = text.index("The dog")
    second = text.index("the dog", first + 7)
    third = text.index("dog", second + 7)
    fourth = text.index("the dog.", third + 3)
    assert encoding.metadata[0]["spans"] == [
        (first, first + 7),
        (second, second + 7),
        (third, third + 3),
        (fourth, fourth + 8),
    ]
    assert len({span[0] for span in encoding.metadata[0]["spans"]}) == 4
    columns = [set(encoding["phrase_token_mask"][0, p].nonzero()[:, 0].tolist()) for p in range(4)]
    assert all(not (a & b) for i, a in enumerate(columns) for b in columns[i + 1 :])
    assert_aligned(processor, encoding)


def test_word_boundaries_punctuation_unicode_and_contractions(processor) -> None:
    text = "Here's a café (the tree), a man's hat, and a naïve Zürich street... Don't miss the sky!"
    phrases = ["café", "the tree", "a man's hat", "naïve Zürich street", "Don't", "the sky"]
    encoding = processor(text=text, phrases=phrases)
    meta = encoding.metadata[0]
    assert [text[start:end] for start, end in meta["spans"]] == phrases
    assert_aligned(processor, encoding)
    # punctuation glued to a phrase is not part of it
    assert phrase_tokens(processor, encoding, 0, 1) == ["the", "tree"]
    assert phrase_tokens(processor, encoding, 0, 4) == ["don", "'", "t"]
    # "a" is found as a word, not inside "Here's" or "café"
    assert processor(text=text, phrases=["a"]).metadata[0]["spans"] == [(7, 8)]
    # characters the vocabulary lacks do not shift the offsets of later phrases
    emoji = processor(text="🐻 bear 北京 next to the tree", phrases=["bear", "the tree"])
    assert emoji.metadata[0]["spans"] == [(2, 6), (18, 26)]
    assert_aligned(processor, emoji)


def test_phrases_as_spans_and_their_errors(processor) -> None:
    text = "A black bear on this tree."
    encoding = processor(text=text, phrases=[(2, 12), (16, 25)])
    assert encoding.metadata[0]["phrases"] == ["black bear", "this tree"]
    assert_aligned(processor, encoding)
    with pytest.raises(ValueError, match=r"phrases 0 'black bear' \(2, 12\) and 1 'bear' \(8, 12\) overlap"):
        processor(text=text, phrases=[(2, 12), (8, 12)])
    with pytest.raises(ValueError, match=r"phrase 1 span \(20, 40\) is empty or outside the narrative"):
        processor(text=text, phrases=[(2, 12), (20, 40)])
    with pytest.raises(ValueError, match=r"phrase 0 span \(5, 5\) is empty"):
        processor(text=text, phrases=[(5, 5)])
    with pytest.raises(ValueError, match="covers no token"):
        processor(text="a bear  on it", phrases=[(6, 8)])  # two spaces
    with pytest.raises(TypeError, match="must be a string or a"):
        processor(text=text, phrases=[3])


def test_phrase_not_found_names_it(processor) -> None:
    text = "A black bear on this tree."
    with pytest.raises(ValueError, match=r"narrative 0: phrase 1 'a panda' not found"):
        processor(text=text, phrases=["black bear", "a panda"])
    with pytest.raises(ValueError, match=r"phrase 1 'black bear' not found .* occurs earlier"):
        processor(text=text, phrases=["this tree", "black bear"])
    with pytest.raises(ValueError, match=r"narrative 1: phrase 0 'bears' not found"):
        processor(text=[text, text], phrases=[["bear"], ["bears"]])


def test_truncation_keeps_the_boundary_phrase_and_warns_by_name(processor) -> None:
    text = "a red car and a blue bus and a green tree"  # 11 tokens
    # max_length 8 keeps 6 tokens: "a red car and a blue"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = processor(text=text, phrases=["a red car", "a blue"], max_length=8)
    assert kept["phrase_mask"].tolist() == [[1, 1]] and kept["input_ids"].shape == (1, 8)
    assert phrase_tokens(processor, kept, 0, 1) == ["a", "blue"]  # ends on the last kept token
    with pytest.warns(UserWarning, match=r"phrase\(s\) 1 'a blue bus', 2 'a green tree' beyond max_length=8"):
        lost = processor(text=text, phrases=["a red car", "a blue bus", "a green tree"], max_length=8)
    assert lost["phrase_mask"].tolist() == [[1, 0, 0]]
    assert lost.metadata[0]["phrase_kept"] == [True, False, False]
    assert not lost["phrase_token_mask"][0, 1:].any()


def test_overlapping_windows_keep_every_phrase(processor, model) -> None:
    phrases = [phrase for _ in range(12) for phrase in ("a red car", "the tall tree", "a dog", "the grass")]
    with pytest.warns(UserWarning, match="beyond max_length"):
        truncated = processor(text=LONG_NARRATIVE, phrases=phrases, max_length=64)
    assert truncated["phrase_mask"].sum() < len(phrases)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoding = processor(text=LONG_NARRATIVE, phrases=phrases, max_length=64, overlapping_windows=True)
    num_windows = encoding["input_ids"].shape[1]
    assert encoding["input_ids"].shape == (1, num_windows, 64) and num_windows > 4
    assert encoding["phrase_token_mask"].shape == (1, len(phrases), num_windows * 64)
    assert encoding["phrase_mask"].all()
    assert_aligned(processor, encoding)
    # each window is [CLS] ... [SEP] and consecutive windows overlap by half
    ids = encoding["input_ids"][0]
    assert (ids[:, 0] == processor.tokenizer.cls_token_id).all()
    assert (ids[:-1, -1] == processor.tokenizer.sep_token_id).all()
    assert torch.equal(ids[0, 32:63], ids[1, 1:32])
    # a phrase takes its tokens from one window only, away from the edges when it can
    for p in range(len(phrases)):
        windows = encoding["phrase_token_mask"][0, p].reshape(num_windows, 64).any(-1)
        assert windows.sum() == 1
    with torch.no_grad():
        outputs = model(
            **processor(
                images=image(), text=LONG_NARRATIVE, phrases=phrases, overlapping_windows=True, max_length=64
            )
        )
    assert outputs.pred_masks.shape[1] == len(phrases)


def test_mixed_batch_equals_one_at_a_time(processor, model) -> None:
    samples = [
        (
            image(48, 80),
            "A man rides a horse on the beach under the blue sky.",
            ["A man", "a horse", "the beach", "the blue sky"],
        ),
        (image(80, 40), "Two cats sleep on a sofa.", ["Two cats", "a sofa"]),
        (image(64, 64), "We can see a lamp.", ["a lamp"]),
    ]
    # keep_aspect_ratio with a fixed pad_size: a batch pads every image as it is padded alone (the model's
    # convolutions and attention see padded pixels, so padding to the batch's largest image would change them)
    fixed_padding = {"keep_aspect_ratio": True, "pad_size": {"height": 64, "width": 64}}
    for options in ({}, fixed_padding, {"overlapping_windows": True, "max_length": 8}):
        batch = processor(
            images=[s[0] for s in samples],
            text=[s[1] for s in samples],
            phrases=[s[2] for s in samples],
            **options,
        )
        with torch.no_grad():
            batch_results = processor.post_process_panoptic_narrative_grounding(model(**batch), inputs=batch)
        for index, (img, text, phrases) in enumerate(samples):
            single = processor(images=img, text=text, phrases=phrases, **options)
            with torch.no_grad():
                single_result = processor.post_process_panoptic_narrative_grounding(
                    model(**single), inputs=single
                )[0]
            result = batch_results[index]
            assert result["phrases"] == single_result["phrases"] == phrases
            assert result["masks"].shape == (len(phrases), *np.asarray(img).shape[:2])
            assert torch.allclose(result["scores"], single_result["scores"], atol=1e-4), (options, index)
            disagreement = (result["masks"] != single_result["masks"]).float().mean()
            assert disagreement < 1e-3, (options, index, disagreement)


def test_labels_from_phrase_masks(processor) -> None:
    masks = np.zeros((2, 48, 80), dtype=bool)
    masks[0, :24] = True
    masks[1, 24:] = True
    encoding = processor(
        images=[image(), image()],
        text=["a dog and a cat", "a dog"],
        phrases=[["a dog", "a cat"], ["a dog"]],
        phrase_masks=[masks, masks[:1]],
    )
    assert encoding["labels"].shape == (2, 2, 64, 64)
    assert encoding["labels"][0, 0, :32].all() and not encoding["labels"][0, 0, 32:].any()
    assert not encoding["labels"][1, 1].any()
    with pytest.raises(ValueError, match="sample 1: 2 ground-truth masks for 1 phrases"):
        processor(
            images=[image(), image()],
            text=["a dog and a cat", "a dog"],
            phrases=[["a dog", "a cat"], ["a dog"]],
            phrase_masks=[masks, masks],
        )
    with pytest.raises(ValueError, match="2 image"):
        processor(images=[image(), image()], text="a dog", phrases=["a dog"])


def logits_from_labels(encoding) -> torch.Tensor:
    """Perfect mask logits at stride 4 (what a perfect model would say), B x P x H/4 x W/4."""
    labels = encoding["labels"]
    small = torch.nn.functional.interpolate(labels, scale_factor=0.25, mode="area")
    return (small - 0.5) * 40


def test_post_processing_undoes_resize_and_padding(processor) -> None:
    rng = np.random.default_rng(0)
    sizes = [(90, 200), (150, 60)]
    masks = []
    for height, width in sizes:
        plane = np.zeros((2, height, width), dtype=bool)
        plane[0, height // 5 : height // 2, width // 6 : width // 2] = True
        plane[1, height // 2 :, width // 3 :] = True
        masks.append(plane)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    # masks come back from stride 4 of the input: inputs large enough to resolve these shapes
    square = {"size": {"height": 256, "width": 256}}
    for options in (square, {**square, "keep_aspect_ratio": True}, {"size": {"height": 192, "width": 224}}):
        encoding = processor(
            images=images,
            text=["a box and the floor"] * 2,
            phrases=[["a box", "the floor"]] * 2,
            phrase_masks=masks,
            **options,
        )
        results = processor.post_process_panoptic_narrative_grounding(
            logits_from_labels(encoding), inputs=encoding
        )
        for result, truth, size in zip(results, masks, sizes, strict=True):
            assert result["masks"].shape == (2, *size) and result["masks"].dtype == torch.bool
            for predicted, expected in zip(result["masks"], truth, strict=True):
                expected = torch.from_numpy(expected)
                iou = (predicted & expected).sum() / (predicted | expected).sum()
                assert iou > 0.9, (options, size, float(iou))
            assert (result["scores"] > 0.9).all()
    # explicit target sizes win over the original sizes
    resized = processor.post_process_panoptic_narrative_grounding(
        logits_from_labels(encoding), target_sizes=[(30, 40), (50, 20)], inputs=encoding
    )
    assert [tuple(r["masks"].shape[-2:]) for r in resized] == [(30, 40), (50, 20)]


def test_empty_and_truncated_phrases_keep_their_entry(processor) -> None:
    text = "a red car and a blue bus and a green tree"
    with pytest.warns(UserWarning, match="a green tree"):
        encoding = processor(
            images=image(), text=text, phrases=["a red car", "a blue", "a green tree"], max_length=8
        )
    logits = torch.full((1, 3, 16, 16), -5.0)
    logits[0, 0, 4:8, 4:8] = 5.0
    result = processor.post_process_panoptic_narrative_grounding(logits, inputs=encoding)[0]
    assert result["phrases"] == ["a red car", "a blue", "a green tree"]
    assert result["masks"].shape == (3, 48, 80)
    assert result["masks"][0].any() and not result["masks"][1].any() and not result["masks"][2].any()
    assert result["scores"][0] > 0.5 and 0 < result["scores"][1] < 0.5 and math.isnan(result["scores"][2])
    assert result["spans"][2] == (29, 41)
    # without the processor's inputs: every slot, no texts, masks fill the input
    bare = processor.post_process_panoptic_narrative_grounding(logits, target_sizes=[(32, 32)])[0]
    assert bare["masks"].shape == (3, 32, 32) and bare["phrases"] == [None] * 3


def test_rle_round_trip_and_rle_output(processor) -> None:
    rng = np.random.default_rng(0)
    cases = [rng.random((37, 53)) > 0.5, np.zeros((5, 7), bool), np.ones((5, 7), bool), np.eye(6, dtype=bool)]
    big = np.zeros((300, 400), bool)
    big[10:290, 20:380] = True  # long runs: multi-character counts
    cases.append(big)
    for mask in cases:
        rle = mask_to_rle(mask)
        assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
        assert np.array_equal(rle_to_mask(rle), mask)
        json.dumps(rle)
    # the uncompressed COCO form decodes too: column-major runs starting with zeros
    assert np.array_equal(
        rle_to_mask({"size": [2, 2], "counts": [1, 2, 1]}), np.array([[False, True], [True, False]])
    )
    encoding = processor(images=image(), text="a red car", phrases=["a red car"])
    logits = torch.randn(1, 1, 16, 16)
    dense = processor.post_process_panoptic_narrative_grounding(logits, inputs=encoding)[0]
    rle = processor.post_process_panoptic_narrative_grounding(logits, inputs=encoding, return_rle=True)[0]
    assert np.array_equal(rle_to_mask(rle["masks"][0]), dense["masks"][0].numpy())
    assert torch.equal(rle["scores"], dense["scores"])


def test_panoptic_map_is_non_overlapping(processor) -> None:
    encoding = processor(
        images=image(), text="a red car and a dog and a tree", phrases=["a red car", "a dog", "a tree"]
    )
    logits = torch.full((1, 3, 16, 16), -5.0)
    logits[0, 0, :8] = 4.0  # top half, confident
    logits[0, 1, 4:12] = 2.0  # middle band, overlaps the car a lot: dropped
    logits[0, 2, 12:] = 3.0  # bottom
    result = processor.post_process_panoptic_map(logits, inputs=encoding)[0]
    segmentation = result["segmentation"]
    assert segmentation.shape == (48, 80)
    assert [segment["phrase"] for segment in result["segments_info"]] == ["a red car", "a tree"]
    assert set(segmentation.unique().tolist()) == {-1, 0, 2}
    assert sum(segment["area"] for segment in result["segments_info"]) == int((segmentation >= 0).sum())


def test_save_load_round_trip(processor, tmp_path) -> None:
    processor.max_length = 40
    try:
        processor.save_pretrained(tmp_path)
    finally:
        processor.max_length = 300
    loaded = PngProcessor.from_pretrained(tmp_path)
    assert loaded.max_length == 40 and type(loaded.image_processor) is PngImageProcessor
    args = {"images": image(), "text": "a dog on the grass", "phrases": ["a dog", "the grass"]}
    first, second = processor(**args, max_length=40), loaded(**args)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first.keys())
    assert first.metadata == second.metadata


def test_auto_processor_with_trust_remote_code_in_a_fresh_process(processor, tmp_path) -> None:
    processor.save_pretrained(tmp_path / "saved")
    assert {"processing_png.py", "image_processing_png.py"} <= {
        p.name for p in (tmp_path / "saved").iterdir()
    }
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, PIL.Image
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained({str(tmp_path / "saved")!r}, trust_remote_code=True)
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        assert type(processor.image_processor).__module__.startswith("transformers_modules")
        assert "narrative_grounding" not in sys.modules
        image = PIL.Image.fromarray(np.zeros((48, 80, 3), np.uint8))
        out = processor(images=image, text="a dog on the grass", phrases=["a dog", "the grass"])
        print(sorted(out.keys()), out.metadata[0]["spans"])
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "[(0, 5), (9, 18)]" in completed.stdout
