"""Character offsets of PNG utterances in their caption.

The official ``png_coco_*.json`` files do not spell the caption character for character in the utterances:
utterances are lower-cased ("in this" for "In this"), punctuation is its own utterance ("tree", "." for
"tree."), a word tokenizer split contractions ("do n't" for "don't") and whitespace differs. What the
utterances do keep is every non-space character of the caption, in order. So both sides are folded the same
way (compatibility decomposition, NFKD, then case folding, then whitespace removed) and the utterances are
matched against the folded caption left to right; each folded character remembers which caption characters
it came from, so offsets (and phrase texts) are taken from the caption itself. NFC and NFD spellings of
the same text fold to the same characters, whichever side uses which.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence


class CaptionMismatchError(ValueError):
    """The utterances of a narrative do not spell its caption.

    Attributes:
        utterance_index: the first utterance that does not fit (``len(utterances)`` when the caption goes on
            after the last one).
        caption_word / utterance_word: the first differing word on each side ("" where a side has ended).
        position: the character of the caption where they part.
    """

    def __init__(
        self, message: str, *, utterance_index: int, position: int, caption_word: str, utterance_word: str
    ):
        super().__init__(message)
        self.utterance_index = utterance_index
        self.position = position
        self.caption_word = caption_word
        self.utterance_word = utterance_word


def _fold_cluster(cluster: str) -> str:
    # Case folding may produce characters that are not in NFKD form, so decompose again after it;
    # whitespace never takes part in the comparison.
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", cluster).casefold())
    return "".join(char for char in folded if not char.isspace())


def fold(text: str) -> tuple[str, list[int], list[int]]:
    """``text`` folded for comparison, and for each folded character the caption span it comes from.

    Returns:
        ``(folded, starts, ends)``: ``text[starts[k]:ends[k]]`` is the source of ``folded[k]`` (one character,
        or a base character with its combining marks, which may fold to several characters).
    """
    if text.isascii():
        # The common case (nearly every COCO narrative), without per-character Unicode work.
        starts = [index for index, char in enumerate(text) if not char.isspace()]
        folded = "".join(text[index] for index in starts).lower()
        return folded, starts, [index + 1 for index in starts]
    chars: list[str] = []
    starts, ends = [], []
    index = 0
    while index < len(text):
        # A base character and the combining marks after it are folded together, so that canonical
        # reordering of the marks (NFD vs. a hand-written order) cannot split a match.
        stop = index + 1
        while stop < len(text) and unicodedata.combining(text[stop]):
            stop += 1
        for char in _fold_cluster(text[index:stop]):
            chars.append(char)
            starts.append(index)
            ends.append(stop)
        index = stop
    return "".join(chars), starts, ends


def _key(text: str) -> str:
    """``fold(text)[0]`` alone (what an utterance needs)."""
    if text.isascii():
        return "".join(text.split()).lower()
    return fold(text)[0]


def _word_at(text: str, index: int) -> str:
    """The whitespace-delimited word of ``text`` that holds character ``index``."""
    if index >= len(text):
        return ""
    start, end = index, index
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[start:end]


def utterance_offsets(caption: str, utterances: Sequence[str]) -> list[tuple[int, int]]:
    """``(start, end)`` of each utterance in ``caption`` (end exclusive), ignoring case, whitespace and
    Unicode normalisation.

    ``caption[start:end]`` is the caption's own spelling of the utterance ("Black bear" for "black bear",
    "don't" for "do n't"), from its first to its last non-space character. An utterance with no visible
    character gets an empty span where the previous one ended.

    Raises:
        CaptionMismatchError: the utterances differ from the caption; the message names the utterance, the
            caption character where they part and the first differing word on each side.
    """
    folded, starts, ends = fold(caption)
    offsets = []
    cursor = 0  # in folded characters
    previous_end = 0  # in caption characters
    for index, utterance in enumerate(utterances):
        key = _key(utterance)
        if not key:
            offsets.append((previous_end, previous_end))
            continue
        stop = cursor + len(key)
        # An utterance must also end where a caption character ends: "cafe" does not match the "café" of
        # a decomposed caption although its folded characters are a prefix of it.
        if not folded.startswith(key, cursor) or (stop < len(folded) and starts[stop] == starts[stop - 1]):
            raise _mismatch(caption, folded, starts, cursor, index, utterance, key)
        start, end = starts[cursor], ends[stop - 1]
        offsets.append((start, end))
        cursor += len(key)
        previous_end = end
    if cursor < len(folded):
        position = starts[cursor]
        raise CaptionMismatchError(
            f"the utterances end at character {position} but the caption goes on with "
            f"{caption[position : position + 40]!r}",
            utterance_index=len(utterances),
            position=position,
            caption_word=_word_at(caption, position),
            utterance_word="",
        )
    return offsets


def _mismatch(
    caption: str, folded: str, starts: list[int], cursor: int, index: int, utterance: str, key: str
) -> CaptionMismatchError:
    differ = next(
        (k for k, char in enumerate(key) if cursor + k >= len(folded) or folded[cursor + k] != char),
        len(key) - 1,  # all of it matches but ends inside a caption character
    )
    utterance_starts = fold(utterance)[1]
    utterance_word = _word_at(utterance, utterance_starts[differ])
    if cursor + differ >= len(folded):
        return CaptionMismatchError(
            f"utterance {index} {utterance!r} goes past the end of the caption "
            f"(the utterance has {utterance_word!r} after the caption's last word)",
            utterance_index=index,
            position=len(caption),
            caption_word="",
            utterance_word=utterance_word,
        )
    position = starts[cursor + differ]
    caption_word = _word_at(caption, position)
    return CaptionMismatchError(
        f"utterance {index} {utterance!r} differs from the caption at character {position}: "
        f"the caption has the word {caption_word!r} where the utterance has {utterance_word!r}",
        utterance_index=index,
        position=position,
        caption_word=caption_word,
        utterance_word=utterance_word,
    )
