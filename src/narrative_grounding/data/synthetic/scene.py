"""Synthetic scenes: a stuff layout with textures, thing instances drawn over it, and the exact segment masks.

All drawing is vectorised numpy over the full ``H x W`` grid (stuff) or the instance's bounding box
(things), so a 128 x 128 scene takes about a millisecond or two.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .levels import SyntheticLevel
from .vocabulary import STUFF_CATEGORIES, THING_CATEGORIES, THING_COLORS

SHAPES = tuple(c["name"] for c in THING_CATEGORIES)
SHAPE_IDS = {c["name"]: c["id"] for c in THING_CATEGORIES}
STUFF_BY_ROLE = {
    role: [c for c in STUFF_CATEGORIES if c["role"] == role] for role in ("top", "ground", "strip")
}


@dataclass
class Instance:
    """One drawn thing. ``visible`` is its ``H x W`` mask after occlusion by later instances."""

    shape: str
    color: str
    cx: float
    cy: float
    radius: float
    segment_id: int
    full: np.ndarray
    visible: np.ndarray = field(repr=False, default=None)
    full_area: int = 0
    visible_area: int = 0


@dataclass
class StuffRegion:
    """One stuff category: one segment (possibly several disconnected regions, as in COCO panoptic)."""

    category: dict
    segment_id: int
    visible: np.ndarray = field(repr=False, default=None)
    num_regions: int = 1


@dataclass
class Scene:
    height: int
    width: int
    stuff: list[StuffRegion]
    instances: list[Instance]
    image: np.ndarray  # H x W x 3 uint8
    id_map: np.ndarray  # H x W uint32


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of a shape of radius ``r`` on offsets ``dx``, ``dy`` from its centre (any same shape)."""
    adx, ady = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(adx, ady) <= 0.82 * r
    if shape == "triangle":  # apex up, base at 0.75 r below the centre
        return (dy >= -r) & (dy <= 0.75 * r) & (adx <= (dy + r) * 0.62)
    if shape == "diamond":
        return adx + ady <= 1.1 * r
    if shape == "cross":
        return ((adx <= 0.34 * r) & (ady <= r)) | ((ady <= 0.34 * r) & (adx <= r))
    if shape == "ring":
        rho2 = dx * dx + dy * dy
        return (rho2 <= r * r) & (rho2 >= (0.5 * r) ** 2)
    if shape == "hexagon":
        return (ady <= 0.866 * r) & (1.732 * adx + ady <= 1.732 * r)
    if shape == "star":
        rho = np.sqrt(dx * dx + dy * dy)
        theta = np.arctan2(dy, dx)
        return rho <= r * (0.62 + 0.38 * np.cos(5 * theta + np.pi / 2))
    raise ValueError(f"Unknown shape {shape!r}; known: {SHAPES}")


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid resized bilinearly to ``H x W``."""
    coarse = rng.uniform(-1, 1, size=(max(2, height // cell + 1), max(2, width // cell + 1))).astype(
        np.float32
    )
    return np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BILINEAR))


def _stuff_labels(
    rng: np.random.Generator, level: SyntheticLevel, height: int, width: int
) -> tuple[np.ndarray, list[dict], list[int]]:
    """``H x W`` index into the returned stuff categories; and the number of regions of each."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    num_stuff = int(rng.integers(level.num_stuff[0], level.num_stuff[1] + 1))
    # num_stuff = 1 top category + 1 or 2 ground bands + optionally a road/river strip.
    if num_stuff <= 2:
        bands, with_strip = 1, False
    elif num_stuff == 3:
        with_strip = rng.random() < level.split_stuff_probability
        bands = 1 if with_strip else 2
    else:
        bands, with_strip = 2, True
    top = STUFF_BY_ROLE["top"][rng.integers(len(STUFF_BY_ROLE["top"]))]
    grounds = rng.choice(len(STUFF_BY_ROLE["ground"]), size=bands, replace=False)
    chosen = [top] + [STUFF_BY_ROLE["ground"][i] for i in grounds]
    labels = np.zeros((height, width), dtype=np.int32)
    # Wavy horizontal boundaries: the top category above the first, each ground band below its own.
    edges = np.sort(rng.uniform(0.3, 0.7, size=bands)) * height
    if bands == 2 and edges[1] - edges[0] < 0.15 * height:
        edges[1] = min(edges[0] + 0.15 * height, 0.85 * height)
    for index, edge in enumerate(edges, start=1):
        wave = level.boundary_wave * height * np.sin(xx * rng.uniform(0.02, 0.08) + rng.uniform(0, 6.3))
        labels[yy >= edge + wave] = index
    regions = [1] * len(chosen)
    if with_strip:
        # A road or river crossing the lowest band splits its category into two disconnected regions.
        strip = STUFF_BY_ROLE["strip"][rng.integers(len(STUFF_BY_ROLE["strip"]))]
        x0 = rng.uniform(0.35, 0.65) * width
        slope = rng.uniform(-0.3, 0.3)
        half = rng.uniform(0.07, 0.12) * width
        lowest = len(chosen) - 1
        inside = (np.abs(xx - (x0 + slope * (yy - height))) <= half) & (labels == lowest)
        if inside.any():
            labels[inside] = len(chosen)
            chosen.append(strip)
            regions.append(1)
            regions[lowest] = 2
    return labels, chosen, regions


def _texture(
    category: dict, rng: np.random.Generator, level: SyntheticLevel, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    """Brightness modulation (around 0) of one stuff texture on the ``H x W`` grid."""
    height, width = yy.shape
    pattern = category["pattern"]
    if pattern == "gradient":
        value = 0.25 * (0.5 - yy / height) + 0.3 * _smooth_noise(rng, height, width, 32)
    elif pattern == "bricks":
        row = (yy // 8).astype(np.int32)
        mortar = ((yy % 8) < 1) | (((xx + 8 * (row % 2)) % 16) < 1)
        value = np.where(mortar, -0.8, 0.15 * _smooth_noise(rng, height, width, 16))
    elif pattern == "blades":
        value = 0.6 * np.sin(xx * 1.7 + 3 * _smooth_noise(rng, height, width, 8)) * 0.5
    elif pattern == "waves":
        value = 0.45 * np.sin(yy * 0.9 + 2.0 * np.sin(xx * 0.15 + rng.uniform(0, 6.3)))
    elif pattern == "lanes":
        value = np.where((np.abs(xx % 24 - 12) < 2) & ((yy % 16) < 8), 0.5, 0.0) + 0.1 * _smooth_noise(
            rng, height, width, 8
        )
    elif pattern == "clods":
        value = 0.5 * _smooth_noise(rng, height, width, 6)
    else:  # speckle
        value = 0.15 * rng.standard_normal((height, width)).astype(np.float32)
    return level.texture * value


def _unique_segment_ids(rng: np.random.Generator, count: int) -> list[int]:
    # Random ids over the full 24-bit range, like COCO's, so decoders must use all three PNG channels.
    ids: list[int] = []
    while len(ids) < count:
        for value in rng.integers(1, 1 << 24, size=count).tolist():
            if value not in ids and len(ids) < count:
                ids.append(int(value))
    return ids


def _sample_attributes(rng: np.random.Generator, level: SyntheticLevel) -> list[tuple[str, str]]:
    """(shape, colour) of each instance to draw."""
    colours = list(THING_COLORS)
    if level.distinct_groups:
        # Easy: a few groups, each of a (colour, shape) no other group has.
        num_groups = int(rng.integers(level.num_groups[0], level.num_groups[1] + 1))
        pairs: list[tuple[str, str]] = []
        while len(pairs) < num_groups:
            pair = (SHAPES[rng.integers(len(SHAPES))], colours[rng.integers(len(colours))])
            if pair not in pairs:
                pairs.append(pair)
        out = []
        for pair in pairs:
            out += [pair] * int(rng.integers(level.group_size[0], level.group_size[1] + 1))
        return out
    # Hard: a small palette, so that instances share colours and shapes (distractors) or repeat exactly.
    num = int(rng.integers(level.num_instances[0], level.num_instances[1] + 1))
    shapes = rng.choice(
        len(SHAPES),
        size=int(rng.integers(level.palette_shapes[0], level.palette_shapes[1] + 1)),
        replace=False,
    )
    palette = rng.choice(
        len(colours),
        size=int(rng.integers(level.palette_colors[0], level.palette_colors[1] + 1)),
        replace=False,
    )
    return [
        (SHAPES[shapes[rng.integers(len(shapes))]], colours[palette[rng.integers(len(palette))]])
        for _ in range(num)
    ]


def _place(
    rng: np.random.Generator,
    level: SyntheticLevel,
    shape: str,
    height: int,
    width: int,
    placed: list[Instance],
    yy,
    xx,
):
    """Try positions until the new instance leaves every earlier one visible enough; None if none fits.

    Masks are computed in the candidate's bounding box only, so the cost does not grow with the image.
    """
    scale = min(height, width)
    for _ in range(level.placement_attempts):
        r = float(rng.uniform(level.radius[0], level.radius[1]) * scale)
        cx = float(rng.uniform(r + 1, width - r - 1))
        cy = float(rng.uniform(r + 1, height - r - 1))
        reach = 1.1 * r + 2  # the diamond reaches 1.1 r from its centre; every other shape r
        y0, y1 = max(0, int(cy - reach)), min(height, int(cy + reach) + 1)
        x0, x1 = max(0, int(cx - reach)), min(width, int(cx + reach) + 1)
        box = (slice(y0, y1), slice(x0, x1))
        local = shape_mask(shape, xx[box] - cx, yy[box] - cy, r)
        area = int(local.sum())
        if area < level.min_pixels:
            continue
        occluded = False
        for other in placed:
            if level.min_visible >= 1.0:
                occluded = bool(
                    np.hypot(other.cx - cx, other.cy - cy) < other.radius + r + level.margin * scale
                )
            else:
                remaining = other.visible_area - int((other.visible[box] & local).sum())
                occluded = remaining < level.min_visible * other.full_area or remaining < level.min_pixels
            if occluded:
                break
        if not occluded:
            full = np.zeros((height, width), dtype=bool)
            full[box] = local
            return cx, cy, r, full, box, area
    return None


def _shade(
    colour: tuple[int, int, int], rng: np.random.Generator, level: SyntheticLevel, dy: np.ndarray
) -> np.ndarray:
    jitter = rng.uniform(-level.color_jitter, level.color_jitter, size=3)
    base = np.clip(np.asarray(colour, dtype=np.float32) * (1 + jitter), 0, 255)
    shading = 1.0 + level.shading * dy  # lit from above
    return base[None, None, :] * shading[..., None]


def render_scene(rng: np.random.Generator, level: SyntheticLevel, height: int, width: int) -> Scene:
    """Sample and draw one scene: stuff layout + textures, then instances in order (later ones on top)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    labels, stuff_categories, regions = _stuff_labels(rng, level, height, width)
    image = np.zeros((height, width, 3), dtype=np.float32)
    for index, category in enumerate(stuff_categories):
        region = labels == index
        colour = np.asarray(category["color"], dtype=np.float32) * (1 + rng.uniform(-0.08, 0.08, size=3))
        texture = _texture(category, rng, level, yy, xx)
        image[region] = colour[None, :] * (1 + texture[region][:, None])

    instances: list[Instance] = []
    for shape, colour in _sample_attributes(rng, level):
        placement = _place(rng, level, shape, height, width, instances, yy, xx)
        if placement is None:
            continue  # the canvas is full; fewer instances than sampled
        cx, cy, r, full, box, area = placement
        for other in instances:
            other.visible[box] &= ~full[box]
            other.visible_area = int(other.visible.sum())
        instance = Instance(shape, colour, cx, cy, r, segment_id=0, full=full, visible=full.copy())
        instance.full_area = instance.visible_area = area
        instances.append(instance)
        shaded = _shade(THING_COLORS[colour], rng, level, (yy[box] - cy) / max(r, 1.0))
        local = full[box]
        image[box][local] = shaded[local]

    if level.pixel_noise > 0:
        image += rng.normal(0, level.pixel_noise, size=image.shape).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)

    segment_ids = _unique_segment_ids(rng, len(stuff_categories) + len(instances))
    things_union = np.zeros((height, width), dtype=bool)
    for instance in instances:
        things_union |= instance.visible
    id_map = np.zeros((height, width), dtype=np.uint32)
    stuff = []
    for index, category in enumerate(stuff_categories):
        visible = (labels == index) & ~things_union
        region = StuffRegion(category, segment_ids[index], visible, num_regions=regions[index])
        id_map[visible] = region.segment_id
        stuff.append(region)
    for instance, segment_id in zip(instances, segment_ids[len(stuff_categories) :], strict=True):
        instance.segment_id = segment_id
        id_map[instance.visible] = segment_id
    # A stuff category hidden entirely behind things has no pixel left: it is not a segment.
    stuff = [region for region in stuff if region.visible.any()]
    return Scene(height, width, stuff, instances, image, id_map)
