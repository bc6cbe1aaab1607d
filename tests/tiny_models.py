"""Tiny models and inputs shared by the modeling tests (not a conftest: imported explicitly)."""

from __future__ import annotations

import torch

from narrative_grounding import PngConfig, PngForPanopticNarrativeGrounding, load_config

TEST_VOCAB_SIZE = 500  # random token ids: the modeling tests do not need the real tiny tokenizer


def tiny_config(**overrides) -> PngConfig:
    overrides.setdefault("text_config", {})
    overrides["text_config"] = {"vocab_size": TEST_VOCAB_SIZE, **overrides["text_config"]}
    return load_config("epng-tiny", **overrides)


def tiny_model(seed: int = 0, **overrides) -> PngForPanopticNarrativeGrounding:
    torch.manual_seed(seed)
    return PngForPanopticNarrativeGrounding(tiny_config(**overrides)).eval()


def reloaded(model: PngForPanopticNarrativeGrounding, folder, inputs: dict[str, torch.Tensor]):
    """`model` in eval mode, saved with `save_pretrained` into `folder` and loaded back; the loaded model must
    predict the same masks on `inputs`. Returns it for the caller's checks of its config."""
    model.eval().save_pretrained(folder)
    loaded = PngForPanopticNarrativeGrounding.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).pred_masks, model(**inputs).pred_masks)
    return loaded


def make_inputs(
    phrase_counts: list[int],
    *,
    height: int = 64,
    width: int = 64,
    num_tokens: int = 16,
    with_labels: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A batch with len(phrase_counts) samples; sample b has phrase_counts[b] real phrases (padded to the max),
    phrase p made of tokens 1 + 2p and 2 + 2p."""
    generator = torch.Generator().manual_seed(seed)
    batch, num_phrases = len(phrase_counts), max(phrase_counts)
    pixel_values = torch.randn(batch, 3, height, width, generator=generator)
    input_ids = torch.randint(5, TEST_VOCAB_SIZE, (batch, num_tokens), generator=generator)
    phrase_token_mask = torch.zeros(batch, num_phrases, num_tokens, dtype=torch.long)
    phrase_mask = torch.zeros(batch, num_phrases, dtype=torch.long)
    for sample, count in enumerate(phrase_counts):
        for phrase in range(count):
            phrase_token_mask[sample, phrase, 1 + 2 * phrase : 3 + 2 * phrase] = 1
        phrase_mask[sample, :count] = 1
    inputs = {
        "pixel_values": pixel_values,
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "phrase_token_mask": phrase_token_mask,
        "phrase_mask": phrase_mask,
    }
    if with_labels:
        labels = torch.zeros(batch, num_phrases, height, width)
        for sample, count in enumerate(phrase_counts):
            for phrase in range(count):
                top, left = torch.randint(0, height // 2, (2,), generator=generator).tolist()
                labels[sample, phrase, top : top + height // 2, left : left + width // 2] = 1
        inputs["labels"] = labels
    return inputs


def select_sample(inputs: dict[str, torch.Tensor], sample: int, num_phrases: int) -> dict[str, torch.Tensor]:
    """One sample of a batch, cut to its real phrases."""
    single = {key: value[sample : sample + 1] for key, value in inputs.items()}
    for key in ("phrase_token_mask", "phrase_mask", "labels"):
        if key in single:
            single[key] = single[key][:, :num_phrases]
    return single
