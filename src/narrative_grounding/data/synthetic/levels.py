"""Difficulty levels of the synthetic dataset: all numbers that shape a scene and its caption, as data."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Every kind of referring expression the generator writes, in the order reports list them; a phrase's kind
#: is recorded in the annotations (``segments[i]["expression"]``) and kept by the dataset builder, so that
#: evaluation can report Average Recall per kind. Stuff phrases have their own kind.
EXPRESSION_KINDS = ("attribute", "group", "position", "size", "relation", "count_position", "stuff")


@dataclass(frozen=True)
class SyntheticLevel:
    """Everything a level decides. Sizes are fractions of ``min(H, W)`` so a level looks the same at any size.

    Expression kinds (``expression_weights``; a weight of 0 disables a kind):
    ``attribute`` (the phrase names colour and/or shape: "a red circle", "the star"),
    ``group`` (plural, a whole group: "the two blue squares", "all the triangles", "the red shapes"),
    ``position`` ("the circle on the left", "the topmost red square"),
    ``size`` ("the bigger square"), ``relation`` ("the square next to the yellow star"),
    ``count_position`` (a counted subset picked by position: "the two triangles on the left").
    """

    name: str
    num_stuff: tuple[int, int]  # stuff categories per image (top + ground bands + road/river strip)
    split_stuff_probability: float  # with 3 stuff categories: chance that a strip splits the ground
    distinct_groups: bool  # True: groups of a (colour, shape) no other group shares
    num_groups: tuple[int, int] = (1, 3)  # distinct_groups only
    group_size: tuple[int, int] = (1, 3)  # distinct_groups only
    num_instances: tuple[int, int] = (3, 8)  # palette mode only
    palette_shapes: tuple[int, int] = (2, 3)  # palette mode: shapes an image draws from
    palette_colors: tuple[int, int] = (2, 3)  # palette mode: colours an image draws from
    radius: tuple[float, float] = (0.09, 0.15)
    min_visible: float = 1.0  # fraction of each instance left visible; 1.0 = no overlap at all
    margin: float = 0.02  # gap between instances when they may not overlap
    min_pixels: int = 30
    placement_attempts: int = 30
    texture: float = 0.3
    pixel_noise: float = 0.0
    color_jitter: float = 0.05
    shading: float = 0.08
    boundary_wave: float = 0.04
    expression_weights: dict[str, float] = field(default_factory=lambda: {"attribute": 1.0, "group": 1.0})
    extra_phrases: tuple[int, int] = (0, 0)  # phrases beyond those needed to mention every instance
    stuff_mention_probability: float = 1.0
    num_ungrounded: tuple[int, int] = (1, 2)
    max_phrases: int = 12
    # Geometric margins (fractions of the image size / ratios) that make a position, size or relation
    # phrase unambiguous to a reader.
    position_margin: float = 0.12
    size_ratio: float = 1.3
    relation_ratio: float = 0.65


LEVELS: dict[str, SyntheticLevel] = {
    # Smoke tests: two stuff regions, 1-3 groups of one (colour, shape) each, no overlap, plain colours;
    # every phrase names colour + shape. A plain CNN + fusion baseline reaches AR ~0.94 on it in minutes.
    "easy": SyntheticLevel(
        name="easy",
        num_stuff=(2, 2),
        split_stuff_probability=0.0,
        distinct_groups=True,
        radius=(0.09, 0.15),
        texture=0.15,
        expression_weights={"attribute": 1.0, "group": 1.0},
        num_ungrounded=(1, 1),
    ),
    # Between the two: shared colours/shapes and position/size words, but no occlusion or relations.
    "medium": SyntheticLevel(
        name="medium",
        num_stuff=(2, 3),
        split_stuff_probability=0.5,
        distinct_groups=False,
        num_instances=(2, 5),
        radius=(0.08, 0.14),
        min_visible=1.0,
        texture=0.25,
        pixel_noise=3.0,
        expression_weights={"attribute": 1.5, "group": 1.0, "position": 2.0, "size": 1.5},
        extra_phrases=(0, 1),
        stuff_mention_probability=0.9,
    ),
    # The default: up to 8 instances from a small palette (distractors sharing colour or shape, exact
    # duplicates), occlusion, textures and noise, stuff split by a road or river, and phrases that need
    # position, size, relations or counting. Objects stay >= ~14 px wide at 128 x 128: the difficulty is
    # in the language, not in seeing.
    "hard": SyntheticLevel(
        name="hard",
        num_stuff=(2, 4),
        split_stuff_probability=0.5,
        distinct_groups=False,
        num_instances=(3, 8),
        radius=(0.06, 0.16),
        min_visible=0.55,
        texture=0.35,
        pixel_noise=6.0,
        color_jitter=0.08,
        expression_weights={
            "attribute": 1.5,
            "group": 1.2,
            "position": 2.5,
            "size": 1.5,
            "relation": 2.0,
            "count_position": 1.5,
        },
        extra_phrases=(0, 2),
        stuff_mention_probability=0.85,
        num_ungrounded=(1, 2),
    ),
}


def get_level(level: str | SyntheticLevel) -> SyntheticLevel:
    if isinstance(level, SyntheticLevel):
        return level
    if level not in LEVELS:
        raise ValueError(f"Unknown synthetic level {level!r}; choose one of {sorted(LEVELS)}")
    return LEVELS[level]
