"""Localized-Narratives-style captions for a synthetic scene, as PNG utterance records.

Each thing phrase is a referring expression whose meaning is computed from the scene (colour, shape,
position, size, nearness, count), so a phrase picks exactly the instances it names; expressions are only
emitted when the scene makes them unambiguous by a clear margin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .levels import SyntheticLevel
from .scene import Instance, Scene
from .vocabulary import (
    CLOSINGS,
    CONTINUATIONS,
    GENERIC_THING_NOUNS,
    NUMBER_WORDS,
    OPENINGS,
    PLURAL_DETERMINERS,
    POSITION_WORDS,
    RELATION_WORDS,
    SINGULAR_DETERMINERS,
    SIZE_WORDS,
    STUFF_DETERMINERS,
    THING_CATEGORIES,
    UNGROUNDED_NOUN_PHRASES,
)

PLURAL_OF = {c["name"]: c["plural"] for c in THING_CATEGORIES}


@dataclass
class Mention:
    """A noun phrase of the caption. ``segment_ids`` is empty for a phrase that grounds nothing."""

    text: str
    kind: str  # "thing", "stuff" or "ungrounded"
    expression: str  # attribute / group / position / size / relation / count_position / stuff / ungrounded
    plural: bool = False
    segment_ids: list[int] = field(default_factory=list)
    targets: frozenset[int] = frozenset()  # indices of the instances a thing phrase refers to


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _descriptors(instances: list[Instance], kinds: tuple[str, ...]) -> list[tuple[str, str, list[int]]]:
    """(singular noun, plural noun, member indices) for each colour+shape / shape / colour class."""
    out = []
    if "color_shape" in kinds:
        for key in sorted({(i.color, i.shape) for i in instances}):
            members = [n for n, i in enumerate(instances) if (i.color, i.shape) == key]
            out.append((f"{key[0]} {key[1]}", f"{key[0]} {PLURAL_OF[key[1]]}", members))
    if "shape" in kinds:
        for shape in sorted({i.shape for i in instances}):
            members = [n for n, i in enumerate(instances) if i.shape == shape]
            out.append((shape, PLURAL_OF[shape], members))
    if "color" in kinds:
        for color in sorted({i.color for i in instances}):
            members = [n for n, i in enumerate(instances) if i.color == color]
            if len({instances[m].shape for m in members}) > 1 or len(members) == 1:
                noun, nouns = GENERIC_THING_NOUNS[len(members) % len(GENERIC_THING_NOUNS)]
                out.append((f"{color} {noun}", f"{color} {nouns}", members))
    return out


def _axis_value(instance: Instance, axis: str) -> float:
    # Larger value = more extreme along the axis ("left" extreme = smallest x).
    return {"left": -instance.cx, "right": instance.cx, "top": -instance.cy, "bottom": instance.cy}[axis]


def thing_candidates(scene: Scene, level: SyntheticLevel, rng: np.random.Generator) -> list[Mention]:
    """Every unambiguous referring expression the level allows for this scene's instances."""
    instances = scene.instances
    size = float(min(scene.height, scene.width))
    weights = level.expression_weights
    kinds = ("color_shape",) if level.distinct_groups else ("color_shape", "shape", "color")
    candidates: list[Mention] = []

    def add(text: str, expression: str, members: list[int], plural: bool) -> None:
        if weights.get(expression, 0) > 0:
            candidates.append(
                Mention(
                    text=text,
                    kind="thing",
                    expression=expression,
                    plural=plural,
                    segment_ids=[instances[m].segment_id for m in sorted(members)],
                    targets=frozenset(members),
                )
            )

    unique_refs = []  # (noun, index) of instances a relation may point at
    for noun, nouns, members in _descriptors(instances, kinds):
        if len(members) == 1:
            add(f"{_pick(rng, SINGULAR_DETERMINERS)} {noun}", "attribute", members, False)
            unique_refs.append((noun, members[0]))
            continue
        count = NUMBER_WORDS[len(members)]
        add(f"{_pick(rng, PLURAL_DETERMINERS).replace('{n}', count)} {nouns}", "group", members, True)
        for axis, words in POSITION_WORDS.items():
            ranked = sorted(members, key=lambda m: -_axis_value(instances[m], axis))  # most extreme first
            values = [_axis_value(instances[m], axis) for m in ranked]
            if values[0] - values[1] >= level.position_margin * size:
                before = [
                    w
                    for w in words["before"]
                    if len(members) == 2 or w not in ("left", "right", "upper", "lower")
                ]
                text = (
                    f"the {_pick(rng, before)} {noun}"
                    if rng.random() < 0.5
                    else f"the {noun} {_pick(rng, words['after'])}"
                )
                add(text, "position", [ranked[0]], False)
            for k in range(2, len(members)):
                if values[k - 1] - values[k] >= level.position_margin * size:
                    add(
                        f"the {NUMBER_WORDS[k]} {nouns} {_pick(rng, words['after'])}",
                        "count_position",
                        ranked[:k],
                        True,
                    )
        by_radius = sorted(members, key=lambda m: -instances[m].radius)
        radii = [instances[m].radius for m in by_radius]
        if radii[0] >= level.size_ratio * radii[1]:
            add(
                f"the {_pick(rng, SIZE_WORDS['big'][:2] if len(members) == 2 else SIZE_WORDS['big'][1::2])} {noun}",
                "size",
                [by_radius[0]],
                False,
            )
        if radii[-2] >= level.size_ratio * radii[-1]:
            small = SIZE_WORDS["small"] if len(members) == 2 else SIZE_WORDS["small"][1:]
            add(f"the {_pick(rng, small)} {noun}", "size", [by_radius[-1]], False)

    # Relations: "the <noun> next to the <unique thing>", when one member is clearly the nearest.
    for noun, _, members in _descriptors(instances, kinds):
        if len(members) < 2:
            continue
        for ref_noun, ref in unique_refs:
            if ref in members:
                continue
            distances = sorted(
                (np.hypot(instances[m].cx - instances[ref].cx, instances[m].cy - instances[ref].cy), m)
                for m in members
            )
            if distances[0][0] <= level.relation_ratio * distances[1][0]:
                add(
                    f"the {noun} {_pick(rng, RELATION_WORDS)} the {ref_noun}",
                    "relation",
                    [distances[0][1]],
                    False,
                )
    # One text must mean one thing: drop later duplicates of a text.
    seen: set[str] = set()
    return [c for c in candidates if not (c.text in seen or seen.add(c.text))]


def choose_thing_mentions(
    candidates: list[Mention], num_instances: int, level: SyntheticLevel, rng: np.random.Generator
) -> list[Mention]:
    """Mention every instance at least once, preferring the level's favoured expression kinds."""
    if not candidates:
        return []
    weights = np.array([level.expression_weights[c.expression] for c in candidates])
    order = np.argsort(-(rng.random(len(candidates)) ** (1.0 / weights)))  # weighted random order
    chosen, covered, rest = [], set(), []
    for index in order:
        candidate = candidates[index]
        if candidate.targets - covered:
            chosen.append(candidate)
            covered |= candidate.targets
        else:
            rest.append(candidate)
        if len(covered) == num_instances:
            break
    rest += [candidates[i] for i in order if candidates[i] not in chosen and candidates[i] not in rest]
    extra = int(rng.integers(level.extra_phrases[0], level.extra_phrases[1] + 1))
    chosen += rest[:extra]
    return chosen


def stuff_mentions(scene: Scene, level: SyntheticLevel, rng: np.random.Generator) -> list[Mention]:
    mentions = []
    for region in scene.stuff:
        if rng.random() >= level.stuff_mention_probability:
            continue
        word = region.category["word"]
        text = (
            f"the {region.category['adjective']} {word}"
            if rng.random() < 0.3
            else f"{_pick(rng, STUFF_DETERMINERS)} {word}"
        )
        mentions.append(Mention(text=text, kind="stuff", expression="stuff", segment_ids=[region.segment_id]))
    if not mentions and scene.stuff:
        region = scene.stuff[int(rng.integers(len(scene.stuff)))]
        mentions.append(
            Mention(
                text=f"the {region.category['word']}",
                kind="stuff",
                expression="stuff",
                segment_ids=[region.segment_id],
            )
        )
    return mentions


def _fill(piece: str, mention: Mention) -> str:
    return piece.replace("{be}", "are" if mention.plural else "is")


def compose_caption(
    mentions: list[Mention], level: SyntheticLevel, rng: np.random.Generator
) -> tuple[str, list[dict[str, Any]], list[Mention]]:
    """Caption, its PNG utterance records, and all noun phrases in caption order (ungrounded ones included)."""
    num_ungrounded = int(rng.integers(level.num_ungrounded[0], level.num_ungrounded[1] + 1))
    utterances: list[tuple[str, Mention | None]] = []  # (text, mention or None for connecting words)

    def emit(frame: tuple[str, ...], mention: Mention) -> None:
        nonlocal num_ungrounded
        for piece in frame:
            if piece == "{P}":
                utterances.append((mention.text, mention))
            elif piece == "{U}":
                num_ungrounded -= 1
                text = _pick(rng, UNGROUNDED_NOUN_PHRASES)
                utterances.append((text, Mention(text=text, kind="ungrounded", expression="ungrounded")))
            elif utterances and utterances[-1][1] is None:
                glue = "" if piece[0] in ",." else " "
                utterances[-1] = (utterances[-1][0] + glue + _fill(piece, mention), None)
            else:
                utterances.append((_fill(piece, mention), None))

    for position, mention in enumerate(mentions):
        if position == 0:
            frames = [f for f in OPENINGS if ("{U}" in f) == (num_ungrounded > 0)]
            emit(_choice(frames, rng) + ("{P}",), mention)
        else:
            frames = [f for f in CONTINUATIONS if "{U}" not in f or num_ungrounded > 0]
            emit(_choice(frames, rng), mention)
    utterances.append((_pick(rng, CLOSINGS), None))

    caption = ""
    for text, _ in utterances:
        glued = not caption or text[0] in ",."
        caption += text if glued else " " + text
    records = [
        {
            "utterance": text,
            "segment_ids": [str(s) for s in mention.segment_ids] if mention else [],
            "plural": bool(mention.plural) if mention else False,
            "noun": mention is not None,
            # Not in the official files: which kind of referring expression the phrase is, so that results
            # can be broken down by it. The builder keeps it when present.
            **({"expression": mention.expression} if mention else {}),
        }
        for text, mention in utterances
    ]
    return caption, records, [mention for _, mention in utterances if mention is not None]


def _choice(frames: list[tuple[str, ...]], rng: np.random.Generator) -> tuple[str, ...]:
    return frames[int(rng.integers(len(frames)))]


def narrate(
    scene: Scene, level: SyntheticLevel, rng: np.random.Generator
) -> tuple[str, list[dict[str, Any]], list[Mention]]:
    """Choose the mentions of a scene, shuffle them, and compose the caption."""
    things = choose_thing_mentions(thing_candidates(scene, level, rng), len(scene.instances), level, rng)
    mentions = things + stuff_mentions(scene, level, rng)
    mentions = [mentions[i] for i in rng.permutation(len(mentions))][: level.max_phrases]
    return compose_caption(mentions, level, rng)
