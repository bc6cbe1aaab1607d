"""Everything the synthetic generator can say or draw: categories, colours, and the words of its captions.

All caption text is assembled from the lists in this module, so :data:`VOCABULARY` (every word the
generator can emit, lower-cased) is exact; a tokenizer built to cover it covers every synthetic caption.
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------- categories
# Stuff: real COCO panoptic stuff ids and names, with the word the captions use and how it is drawn.
# pattern: the texture drawn over the base colour (see scene.py); role: where the layout may put it.
STUFF_CATEGORIES: tuple[dict, ...] = (
    {
        "id": 187,
        "name": "sky-other-merged",
        "word": "sky",
        "adjective": "blue",
        "color": (135, 190, 235),
        "pattern": "gradient",
        "role": "top",
    },
    {
        "id": 199,
        "name": "wall-other-merged",
        "word": "wall",
        "adjective": "grey",
        "color": (170, 160, 150),
        "pattern": "bricks",
        "role": "top",
    },
    {
        "id": 193,
        "name": "grass-merged",
        "word": "grass",
        "adjective": "green",
        "color": (70, 150, 60),
        "pattern": "blades",
        "role": "ground",
    },
    {
        "id": 154,
        "name": "sand",
        "word": "sand",
        "adjective": "yellow",
        "color": (215, 190, 130),
        "pattern": "speckle",
        "role": "ground",
    },
    {
        "id": 159,
        "name": "snow",
        "word": "snow",
        "adjective": "white",
        "color": (235, 238, 242),
        "pattern": "speckle",
        "role": "ground",
    },
    {
        "id": 194,
        "name": "dirt-merged",
        "word": "dirt",
        "adjective": "brown",
        "color": (120, 85, 55),
        "pattern": "clods",
        "role": "ground",
    },
    {
        "id": 178,
        "name": "water-other",
        "word": "water",
        "adjective": "blue",
        "color": (45, 105, 160),
        "pattern": "waves",
        "role": "strip",
    },
    {
        "id": 149,
        "name": "road",
        "word": "road",
        "adjective": "grey",
        "color": (95, 95, 100),
        "pattern": "lanes",
        "role": "strip",
    },
)

# Things: invented shape categories on COCO-like thing ids (1-8), supercategory "shape".
THING_CATEGORIES: tuple[dict, ...] = (
    {"id": 1, "name": "circle", "plural": "circles"},
    {"id": 2, "name": "square", "plural": "squares"},
    {"id": 3, "name": "triangle", "plural": "triangles"},
    {"id": 4, "name": "star", "plural": "stars"},
    {"id": 5, "name": "diamond", "plural": "diamonds"},
    {"id": 6, "name": "cross", "plural": "crosses"},
    {"id": 7, "name": "ring", "plural": "rings"},
    {"id": 8, "name": "hexagon", "plural": "hexagons"},
)

# Thing colours, chosen away from the stuff colours (no green, white or grey shapes).
THING_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "blue": (35, 70, 215),
    "yellow": (245, 215, 30),
    "purple": (140, 50, 190),
    "orange": (250, 135, 20),
    "pink": (250, 120, 195),
    "black": (25, 25, 25),
}

# ---------------------------------------------------------------- phrase words
NUMBER_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
GENERIC_THING_NOUNS: tuple[tuple[str, str], ...] = (("shape", "shapes"), ("object", "objects"))
# Determiners of plural phrases naming a whole group; "{n}" is replaced by the number word.
PLURAL_DETERMINERS: tuple[str, ...] = ("the", "{n}", "the {n}", "all the", "all {n}")
SINGULAR_DETERMINERS: tuple[str, ...] = ("a", "the")
# Axis words: (singular after the noun, singular superlative before the noun, plural after the noun).
POSITION_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "left": {"after": ("on the left", "at the left"), "before": ("leftmost", "left")},
    "right": {"after": ("on the right", "at the right"), "before": ("rightmost", "right")},
    "top": {"after": ("at the top",), "before": ("top", "topmost", "upper")},
    "bottom": {"after": ("at the bottom",), "before": ("bottom", "lowest", "lower")},
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "big": ("bigger", "biggest", "larger", "largest"),
    "small": ("smaller", "smallest", "little"),
}
RELATION_WORDS: tuple[str, ...] = ("next to", "near", "beside", "close to")
STUFF_DETERMINERS: tuple[str, ...] = ("the", "some")

# ---------------------------------------------------------------- caption frames
# Noun phrases that ground nothing (noun utterances with no segment, as in Localized Narratives).
UNGROUNDED_NOUN_PHRASES: tuple[str, ...] = (
    "this image",
    "this picture",
    "the image",
    "the picture",
    "the scene",
)
# Opening of the caption; "{U}" is an ungrounded noun phrase; the first mention follows.
OPENINGS: tuple[tuple[str, ...], ...] = (
    ("In", "{U}", "we can see"),
    ("In", "{U}", "I can see"),
    ("In", "{U}", "there {be}"),
    ("Here in", "{U}", "we can see"),
    ("We can see",),
    ("I can see",),
    ("There {be}",),
)
# A further mention; "{P}" is the mention, "{U}" an ungrounded noun phrase, "{be}" is/are agreeing with {P}.
CONTINUATIONS: tuple[tuple[str, ...], ...] = (
    (", and there {be}", "{P}"),
    (". We can also see", "{P}"),
    (". There {be}", "{P}"),
    (", beside that there {be}", "{P}"),
    (". I can also see", "{P}"),
    (", and", "{P}", "{be} also visible"),
    (". In", "{U}", "we can also see", "{P}"),
    (". Also there {be}", "{P}"),
    (", and we can see", "{P}"),
)
CLOSINGS: tuple[str, ...] = (".",)


def _words(text: str) -> list[str]:
    text = re.sub(r"\{[a-zA-Z]+\}", " ", text)
    return re.findall(r"[a-z]+|[.,]", text.lower())


def _collect_vocabulary() -> tuple[str, ...]:
    texts: list[str] = []
    texts += [c["word"] + " " + c["adjective"] for c in STUFF_CATEGORIES]
    texts += [c["name"] + " " + c["plural"] for c in THING_CATEGORIES]
    texts += list(THING_COLORS) + list(NUMBER_WORDS.values())
    texts += [" ".join(pair) for pair in GENERIC_THING_NOUNS]
    texts += list(PLURAL_DETERMINERS) + list(SINGULAR_DETERMINERS) + list(STUFF_DETERMINERS)
    texts += [w for axis in POSITION_WORDS.values() for group in axis.values() for w in group]
    texts += [w for group in SIZE_WORDS.values() for w in group] + list(RELATION_WORDS)
    texts += list(UNGROUNDED_NOUN_PHRASES) + [" ".join(frame) for frame in OPENINGS + CONTINUATIONS]
    texts += list(CLOSINGS) + ["is are"]  # {be}
    return tuple(sorted({word for text in texts for word in _words(text)}))


# Every word (and the punctuation marks "," and ".") a synthetic caption can contain, lower-cased.
# Captions capitalise the first word of each sentence ("In", "We", "There", "Here", "Also", "I").
VOCABULARY: tuple[str, ...] = _collect_vocabulary()


def vocabulary() -> list[str]:
    """All words and punctuation marks the synthetic generator can emit (lower-cased, sorted)."""
    return list(VOCABULARY)


def categories() -> list[dict]:
    """The COCO-style ``categories`` list of the synthetic panoptic json (things first, then stuff)."""
    things = [
        {"id": c["id"], "name": c["name"], "supercategory": "shape", "isthing": 1, "color": [0, 0, 0]}
        for c in THING_CATEGORIES
    ]
    stuff = [
        {
            "id": c["id"],
            "name": c["name"],
            "supercategory": "synthetic-stuff",
            "isthing": 0,
            "color": list(c["color"]),
        }
        for c in STUFF_CATEGORIES
    ]
    return things + stuff
