"""Procedural street scenes with exact ground truth, for training and measuring the offline models.

numpy and Pillow only (no torch). ``scene(seed, size)`` draws one street photo-like image and its
ground truth; ``clip(seed, frames, size)`` the same street over several frames, cars and persons
moving (and the camera panning), for video jobs.

Eight classes (:data:`CLASSES`): sky, building, window, tree, road, sidewalk (stuff) and person,
car (things). Each maps by NAME to its id in the three label sets of ``workers.labels``
(:data:`LABEL_NAMES`): ADE20K (``windowpane``, ...), COCO panoptic (the merged stuff classes
``sky-other-merged``, ``building-other-merged``, ``window-other``, ``tree-merged``, ``road``,
``pavement-merged``, and the things), COCO instance (person and car only).

Geometry is a pinhole camera over a flat street, in metres: a random camera height, focal
length and horizon, and one of two layouts: ``across`` (the camera looks across the street at a
row of facades: road, far sidewalk, optional near sidewalk) or ``along`` (it looks down the
street: the road converges to a vanishing point between two facades in perspective, and
sometimes a cross street of facades at its end). Buildings (random widths, heights, roofs,
colours, brick/panel/plaster textures) carry grids of windows (dark, reflective or lit); trees
(random crowns, trunks), persons (skin, clothes, walking legs, sizes) and cars (side, rear or
front views, any colour, wheels, glass, lights) stand on the ground at random depths and are
drawn back to front, so they occlude each other as depth says; their pixel sizes follow the
perspective. Colours overlap between classes (grey sky, grey road, grey buildings, green cars),
and textures, gradients, lighting, colour casts, blur, sensor noise and JPEG-like quantisation
vary per scene, so a model has to learn shapes and context rather than one colour per class.

Ground truth (:class:`Scene`): ``classes`` (index into :data:`CLASSES` for every pixel),
``instances`` (a positive id for each person/car pixel, 0 on stuff, -1 on things too small to
count: visible area under ``MIN_INSTANCE_FRACTION`` of the image; those are void for instance and
panoptic evaluation and training, as COCO's crowd regions are, but keep their class in the
semantic map), and per label set the semantic map and panoptic segments.

Seeds: :data:`TRAIN_SEEDS` and :data:`HELDOUT_SEEDS` are disjoint ranges; the demo media use
:data:`DEMO_SEED`, a held-out seed.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("sky", "building", "window", "tree", "road", "sidewalk", "person", "car")
SKY, BUILDING, WINDOW, TREE, ROAD, SIDEWALK, PERSON, CAR = range(len(CLASSES))
THINGS = (PERSON, CAR)
#: Our class name -> the class's name in each label set (``workers/data/<label set>.json``).
LABEL_NAMES = {
    "ade20k": {
        "sky": "sky", "building": "building", "window": "windowpane", "tree": "tree",
        "road": "road", "sidewalk": "sidewalk", "person": "person", "car": "car",
    },
    "coco_panoptic": {
        "sky": "sky-other-merged", "building": "building-other-merged", "window": "window-other",
        "tree": "tree-merged", "road": "road", "sidewalk": "pavement-merged", "person": "person", "car": "car",
    },
    "coco_instance": {"person": "person", "car": "car"},
}
LABEL_SETS = tuple(LABEL_NAMES)
VOID = 255

#: Seeds of the training scenes (scripts/train_tiny.py draws from the start of this range).
TRAIN_SEEDS = range(0, 1_000_000)
#: Seeds of held-out scenes (bench.quality, the tests, the demo media): never trained on.
HELDOUT_SEEDS = range(1_000_000, 2_000_000)
#: The held-out seed of the demo image and clip (scripts/make_demo_media.py).
DEMO_SEED = 1_000_000
#: Things whose visible area is below this fraction of the image are void for instance GT.
MIN_INSTANCE_FRACTION = 1 / 800


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    classes: np.ndarray  # (H, W) uint8: index into CLASSES
    instances: np.ndarray  # (H, W) int32: >0 thing instance, 0 stuff, -1 void (too small a thing)
    instance_class: dict[int, int] = field(default_factory=dict)  # instance id -> PERSON or CAR
    layout: str = ""
    seed: int = 0

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]

    def present(self) -> list[int]:
        """Our class indexes present in the image."""
        return [int(c) for c in np.flatnonzero(np.bincount(self.classes.ravel(), minlength=len(CLASSES)))]

    def semantic(self, label_set: str) -> np.ndarray:
        """(H, W) uint8 label ids of ``label_set``; :data:`VOID` where a class is not in it."""
        return label_lut(label_set)[self.classes]

    def things(self) -> dict[int, tuple[int, np.ndarray]]:
        """Instance id -> (our class, mask) of every counted instance (visible, not void)."""
        out = {}
        for i, c in self.instance_class.items():
            m = self.instances == i
            if m.any():
                out[i] = (c, m)
        return out

    def panoptic(self, label_set: str) -> tuple[np.ndarray, list[dict]]:
        """Ground-truth panoptic segmentation in ``label_set``: an (H, W) int32 segment-id map
        (0 = void) and its segments ``{"id", "label_id", "isthing", "class"}``: one segment per
        stuff class present (not in ``coco_instance``) and one per counted thing instance."""
        lut = label_lut(label_set)
        ids = np.zeros(self.classes.shape, np.int32)
        segs = []
        next_id = 1
        for c in range(len(CLASSES)):
            if c in THINGS or lut[c] == VOID:
                continue
            m = (self.classes == c) & (self.instances == 0)
            if m.any():
                ids[m] = next_id
                segs.append({"id": next_id, "label_id": int(lut[c]), "isthing": False, "class": CLASSES[c]})
                next_id += 1
        for i, (c, m) in sorted(self.things().items()):
            if lut[c] == VOID:
                continue
            ids[m] = next_id
            segs.append({"id": next_id, "label_id": int(lut[c]), "isthing": True, "class": CLASSES[c]})
            next_id += 1
        return ids, segs


def label_lut(label_set: str) -> np.ndarray:
    """Our class index -> label id in ``label_set`` (uint8, :data:`VOID` if absent), by name."""
    from workers.media import labels

    names = labels.load(label_set).names
    lut = np.full(len(CLASSES), VOID, np.uint8)
    for c, ours in enumerate(CLASSES):
        theirs = LABEL_NAMES[label_set].get(ours)
        if theirs is not None:
            lut[c] = names.index(theirs)
    return lut


# ------------------------------------------------------------------------------------------
# colours and textures

def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1)), np.float32) * 255


def _smooth(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise, about unit amplitude, features about ``cell`` pixels wide."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    low = Image.fromarray(rng.standard_normal((gh, gw)).astype(np.float32), mode="F")
    return np.asarray(low.resize((w, h), Image.BILINEAR), dtype=np.float32)


def _texture(rng, h, w, base, *, low=12.0, cell=20.0, grain=4.0, grad=(0.0, 0.0), tint=0.15, stripes=None):
    """A (h, w, 3) float texture around colour ``base``: smooth blotches (``low`` in levels),
    per-pixel grain, a linear gradient (``grad``: levels over the height, the width), and
    optional ``stripes`` (period_y, period_x, depth, line width): brick rows, tiles, panels."""
    h, w = max(h, 1), max(w, 1)
    out = np.empty((h, w, 3), np.float32)
    out[:] = base
    if low:
        n = _smooth(rng, h, w, cell) * low
        colour = 1 + tint * rng.standard_normal(3).astype(np.float32)
        out += n[..., None] * colour
    if grain:
        out += rng.standard_normal((h, w, 1), dtype=np.float32) * grain
    if grad[0] or grad[1]:
        gy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None, None] * grad[0]
        gx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :, None] * grad[1]
        out += gy + gx
    if stripes is not None:
        py, px, depth, lw = stripes
        yy = np.arange(h)[:, None]
        xx = np.arange(w)[None, :]
        lines = np.zeros((h, w), bool)
        if py:
            lines |= (yy % max(int(py), 2)) < lw
            if px:  # bricks: vertical joints offset every other row
                row = yy // max(int(py), 2)
                lines |= ((xx + (row % 2) * (px // 2)) % max(int(px), 2)) < lw
        elif px:
            lines |= (xx % max(int(px), 2)) < lw
        out[lines] -= depth
    return out


class Canvas:
    """The image being drawn and its ground truth, painted back to front."""

    def __init__(self, w: int, h: int, rng: np.random.Generator):
        self.w, self.h, self.rng = w, h, rng
        self.rgb = np.zeros((h, w, 3), np.float32)
        self.cls = np.zeros((h, w), np.uint8)
        self.inst = np.zeros((h, w), np.int32)
        self.instance_class: dict[int, int] = {}

    def mask(self, draw_fn, bbox) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Rasterise ``draw_fn(draw, dx, dy)`` inside ``bbox`` (x0, y0, x1, y1, image pixels);
        returns the clipped slices and a uint8 map (the fill values drawn), or None if outside."""
        x0, y0 = max(0, int(math.floor(bbox[0]))), max(0, int(math.floor(bbox[1])))
        x1, y1 = min(self.w, int(math.ceil(bbox[2])) + 1), min(self.h, int(math.ceil(bbox[3])) + 1)
        if x1 <= x0 or y1 <= y0:
            return None
        img = Image.new("L", (x1 - x0, y1 - y0), 0)
        draw_fn(ImageDraw.Draw(img), -x0, -y0)
        m = np.asarray(img)
        if not m.any():
            return None
        return (slice(y0, y1), slice(x0, x1)), m

    def fill(self, sl, m, tex, cls: int, inst: int = 0) -> np.ndarray:
        sel = m > 0
        region = self.rgb[sl]
        region[sel] = tex[sel] if tex.ndim == 3 else tex
        self.cls[sl][sel] = cls
        self.inst[sl][sel] = inst
        return sel

    def poly(self, pts, tex_fn, cls: int, inst: int = 0):
        pts = [(float(x), float(y)) for x, y in pts]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        got = self.mask(lambda d, dx, dy: d.polygon([(x + dx, y + dy) for x, y in pts], fill=255),
                        (min(xs), min(ys), max(xs), max(ys)))
        if got is None:
            return None
        sl, m = got
        self.fill(sl, m, tex_fn(m.shape[0], m.shape[1]), cls, inst)
        return got

    def shade(self, draw_fn, bbox, factor: float):
        """Darken (or lighten) what is there, labels unchanged: shadows, highlights."""
        got = self.mask(draw_fn, bbox)
        if got is not None:
            sl, m = got
            self.rgb[sl][m > 0] *= factor


# ------------------------------------------------------------------------------------------
# the camera and the street

@dataclass
class Camera:
    f: float  # focal length, pixels
    cx: float  # principal point x (pans move it)
    horizon: float  # image y of the horizon
    height: float  # metres above the ground

    def project(self, x: float, y_up: float, z: float) -> tuple[float, float]:
        """World (lateral x, height above ground, depth z) in metres -> image (x, y)."""
        z = max(z, 0.05)
        return self.cx + self.f * x / z, self.horizon + self.f * (self.height - y_up) / z

    def ground_z(self, image_y: float) -> float:
        """Depth of the ground point seen at image row ``image_y`` (below the horizon)."""
        return self.f * self.height / max(image_y - self.horizon, 1e-3)

    def scale(self, z: float) -> float:
        return self.f / max(z, 0.05)


def _palette_building(rng) -> np.ndarray:
    kind = rng.random()
    if kind < 0.3:  # brick / terracotta
        return _hsv(rng.uniform(0.0, 0.08), rng.uniform(0.35, 0.7), rng.uniform(0.35, 0.75))
    if kind < 0.6:  # concrete / grey / white
        return _hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.12), rng.uniform(0.35, 0.95))
    if kind < 0.85:  # sand / plaster / pastel
        return _hsv(rng.uniform(0.05, 0.18), rng.uniform(0.15, 0.45), rng.uniform(0.55, 0.95))
    return _hsv(rng.uniform(0, 1), rng.uniform(0.2, 0.6), rng.uniform(0.3, 0.9))  # anything


def _palette_any(rng, vmin=0.1, vmax=0.95) -> np.ndarray:
    return _hsv(rng.uniform(0, 1), rng.uniform(0, 1) ** 1.5, rng.uniform(vmin, vmax))


@dataclass
class Thing:
    """A tree, person or car standing on the ground at (x, z), metres; drawn back to front."""
    kind: int  # TREE, PERSON or CAR
    x: float
    z: float
    vx: float = 0.0  # metres per frame
    vz: float = 0.0
    params: dict = field(default_factory=dict)
    seed: int = 0


@dataclass
class Layout:
    kind: str
    cam: Camera
    sky: dict
    ground: dict
    buildings: list
    things: list
    look: dict
    pan: float = 0.0  # pixels per frame
    seed: int = 0


def _sample_layout(seed: int, w: int, h: int, moving: bool = False) -> Layout:
    rng = np.random.default_rng([seed, 0x5EED])
    kind = "across" if rng.random() < 0.55 else "along"
    cam_h = float(rng.choice([rng.uniform(1.2, 2.2), rng.uniform(2.2, 6.0)], p=[0.7, 0.3]))
    f = float(rng.uniform(0.7, 1.5) * w)
    horizon = float(rng.uniform(0.28, 0.62) * h)
    cam = Camera(f=f, cx=float(rng.uniform(0.3, 0.7) * w), horizon=horizon, height=cam_h)
    z_bottom = cam.ground_z(h)  # the nearest ground the image shows

    tod = rng.random()
    if tod < 0.55:  # day, blue
        top, bottom = _hsv(rng.uniform(0.55, 0.64), rng.uniform(0.4, 0.85), rng.uniform(0.6, 0.95)), None
        bottom = _hsv(rng.uniform(0.52, 0.6), rng.uniform(0.1, 0.4), rng.uniform(0.8, 1.0))
    elif tod < 0.8:  # overcast grey
        v = rng.uniform(0.55, 0.9)
        top, bottom = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.08), v), _hsv(rng.uniform(0, 1), rng.uniform(0, 0.05), min(1, v + 0.1))
    else:  # dusk
        top = _hsv(rng.uniform(0.6, 0.75), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7))
        bottom = _hsv(rng.uniform(0.02, 0.12), rng.uniform(0.4, 0.8), rng.uniform(0.75, 1.0))
    sky = {"top": top, "bottom": bottom, "clouds": int(rng.integers(0, 7)), "cloud_seed": int(rng.integers(1 << 30))}

    road_col = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.12), rng.uniform(0.18, 0.6))
    side_col = (_hsv(rng.uniform(0.03, 0.12), rng.uniform(0.05, 0.45), rng.uniform(0.45, 0.85))
                if rng.random() < 0.5 else _hsv(rng.uniform(0, 1), rng.uniform(0, 0.1), rng.uniform(0.4, 0.9)))
    ground = {"road": road_col, "side": side_col, "marking": _hsv(rng.choice([0.0, 0.13]), rng.choice([0.0, 0.8]), rng.uniform(0.75, 1.0)),
              "tiles": rng.random() < 0.6, "tile": float(rng.uniform(0.4, 1.2)), "dashed": rng.random() < 0.7,
              "crosswalk": rng.random() < 0.25, "kerb": float(rng.uniform(0.9, 1.3))}
    buildings: list = []
    things: list[Thing] = []
    look = {
        "gain": float(rng.uniform(0.65, 1.25)), "cast": rng.normal(0, 10, 3).astype(np.float32),
        "grad": (float(rng.normal(0, 0.15)), float(rng.normal(0, 0.15))), "noise": float(rng.uniform(0, 9)),
        "blur": float(rng.choice([0.0, rng.uniform(0.3, 1.2)], p=[0.5, 0.5])), "vignette": float(rng.uniform(0, 0.35)),
        "contrast": float(rng.uniform(0.75, 1.2)), "levels": int(rng.choice([0, 0, 16, 24])),
    }

    def add_building_props(b: dict):
        b["color"] = _palette_building(rng)
        b["texture"] = str(rng.choice(["plain", "brick", "panels", "stripes"], p=[0.4, 0.25, 0.2, 0.15]))
        b["seed"] = int(rng.integers(1 << 30))
        floor = float(rng.uniform(2.8, 3.8))
        b["floor"] = floor
        b["windows"] = rng.random() < 0.9
        b["win_w"] = float(rng.uniform(0.7, 2.2))
        b["win_h"] = float(rng.uniform(0.45, 0.75) * floor)
        b["win_gap"] = float(rng.uniform(0.6, 2.5))
        b["win_style"] = str(rng.choice(["dark", "reflect", "lit", "mixed"], p=[0.35, 0.3, 0.1, 0.25]))
        b["win_color"] = _hsv(rng.uniform(0.5, 0.7), rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.45))
        b["frame"] = rng.random() < 0.5
        b["ground_floor"] = float(rng.uniform(0, 1.5))

    if kind == "across":
        cam.cx = float(rng.uniform(0.2, 0.8) * w)
        near_side = rng.random() < 0.45
        z_near_kerb = z_bottom + (rng.uniform(1.0, 4.0) if near_side else -1.0)
        lanes = int(rng.integers(1, 5))
        z_kerb = max(z_near_kerb, z_bottom) + lanes * float(rng.uniform(2.8, 3.6))
        z_facade = z_kerb + float(rng.uniform(1.8, 6.0))
        ground.update(z_near_kerb=z_near_kerb if near_side else None, z_kerb=z_kerb, z_facade=z_facade, lanes=lanes)
        # facades: a row at z_facade spanning the visible x (and the pan), with gaps
        half = (w * 1.3 + 200) / cam.f * z_facade
        x = -half - float(rng.uniform(0, 10))
        while x < half:
            width = float(rng.uniform(6, 30))
            if rng.random() < 0.15:
                x += float(rng.uniform(2, 12))  # a gap: sky down to the sidewalk
            b = {"x0": x, "x1": x + width, "z": z_facade + float(rng.choice([0.0, rng.uniform(0, 4)], p=[0.7, 0.3])),
                 "height": float(rng.uniform(6, 45)), "roof": str(rng.choice(["flat", "gable", "step", "flat"]))}
            add_building_props(b)
            buildings.append(b)
            x += width
        buildings.sort(key=lambda b: -b["z"])
        # trees on the far sidewalk
        for _ in range(int(rng.integers(0, 6))):
            things.append(Thing(TREE, float(rng.uniform(-half, half)), float(rng.uniform(z_kerb + 0.5, z_facade - 0.3)),
                                params=_tree_params(rng), seed=int(rng.integers(1 << 30))))
        # persons on the sidewalks, a few on the road
        for _ in range(int(rng.integers(1, 11))):
            where = rng.random()
            if where < 0.6:
                z = rng.uniform(z_kerb, z_facade - 0.3)
            elif where < 0.8 and near_side:
                z = rng.uniform(z_bottom - 0.5, z_near_kerb)
            else:
                z = rng.uniform(max(z_near_kerb, z_bottom + 0.5), z_kerb)
            x = rng.uniform(-1.1, 1.1) * (w / 2 + 40) / cam.f * z
            things.append(Thing(PERSON, float(x), float(z), vx=float(rng.choice([-1, 1]) * rng.uniform(0.03, 0.07)) * moving,
                                params=_person_params(rng), seed=int(rng.integers(1 << 30))))
        # cars in the lanes, side views
        lane_z = [max(z_near_kerb, z_bottom) + (i + 0.5) * (z_kerb - max(z_near_kerb, z_bottom)) / lanes for i in range(lanes)]
        for _ in range(int(rng.integers(1, 7))):
            lane = int(rng.integers(0, lanes))
            z = lane_z[lane] + float(rng.uniform(-0.5, 0.5))
            x = rng.uniform(-1.2, 1.2) * (w / 2 + 60) / cam.f * z
            direction = 1 if lane >= lanes / 2 else -1
            if rng.random() < 0.2:
                direction = -direction
            things.append(Thing(CAR, float(x), float(z), vx=float(direction * rng.uniform(0.15, 0.5)) * moving,
                                params={**_car_params(rng), "view": "side", "facing": direction}, seed=int(rng.integers(1 << 30))))
    else:
        road_half = float(rng.uniform(3.0, 9.0))
        offset = float(rng.uniform(-0.7, 0.7) * road_half)  # camera's lateral position
        side_l, side_r = float(rng.uniform(1.5, 5.0)), float(rng.uniform(1.5, 5.0))
        xl, xr = -road_half - offset, road_half - offset
        z_end = float(rng.uniform(60, 250))
        ground.update(xl=xl, xr=xr, fl=xl - side_l, fr=xr + side_r, z_end=z_end, lanes=int(rng.integers(1, 4)))
        for side, xf in (("left", xl - side_l), ("right", xr + side_r)):
            if rng.random() < 0.1:
                continue  # an open side: sky down to the sidewalk
            z = float(rng.uniform(0.5, 3.0))
            while z < z_end:
                length = float(rng.uniform(8, 35))
                if rng.random() < 0.12:
                    z += float(rng.uniform(3, 15))
                b = {"side": side, "x": xf - (float(rng.uniform(0, 2)) if side == "left" else -float(rng.uniform(0, 2))),
                     "z0": z, "z1": min(z + length, z_end), "height": float(rng.uniform(6, 45)),
                     "roof": "flat"}
                add_building_props(b)
                buildings.append(b)
                z += length
        if rng.random() < 0.7:  # a cross street of facades closing the view
            x = xl - side_l - 40
            while x < xr + side_r + 40:
                width = float(rng.uniform(8, 30))
                b = {"x0": x, "x1": x + width, "z": z_end, "height": float(rng.uniform(8, 50)),
                     "roof": str(rng.choice(["flat", "gable", "step"]))}
                add_building_props(b)
                buildings.append(b)
                x += width
        # facades drawn far to near
        buildings.sort(key=lambda b: -b.get("z", b.get("z1", 0)))
        for side, lo, hi in (("l", xl - side_l, xl), ("r", xr, xr + side_r)):
            if rng.random() < 0.65:
                spacing = float(rng.uniform(8, 25))
                z = float(rng.uniform(6, 14))
                tp = _tree_params(rng)
                while z < z_end * 0.7:
                    p = dict(tp)
                    p["height"] *= float(rng.uniform(0.85, 1.15))
                    things.append(Thing(TREE, float(lo + (hi - lo) * (0.3 if side == "r" else 0.7)), z, params=p,
                                        seed=int(rng.integers(1 << 30))))
                    z += spacing * float(rng.uniform(0.8, 1.2))
        for _ in range(int(rng.integers(1, 12))):
            if rng.random() < 0.8:
                lo, hi = ((xl - side_l, xl) if rng.random() < 0.5 else (xr, xr + side_r))
            else:
                lo, hi = xl, xr
            z = float(z_bottom * rng.uniform(0.8, 1.0) + rng.exponential(10))
            things.append(Thing(PERSON, float(rng.uniform(lo + 0.3, hi - 0.3)), z,
                                vz=float(rng.choice([-1, 1]) * rng.uniform(0.03, 0.07)) * moving,
                                params=_person_params(rng), seed=int(rng.integers(1 << 30))))
        lanes = ground["lanes"] * 2
        lane_w = (xr - xl) / lanes
        for _ in range(int(rng.integers(0, 8))):
            lane = int(rng.integers(0, lanes))
            x = xl + (lane + 0.5) * lane_w + float(rng.uniform(-0.3, 0.3))
            z = float(z_bottom + 2 + rng.exponential(12))
            oncoming = lane < lanes / 2
            things.append(Thing(CAR, x, z, vz=float((-1 if oncoming else 1) * rng.uniform(0.1, 0.4)) * moving,
                                params={**_car_params(rng), "view": "front" if oncoming else "rear"},
                                seed=int(rng.integers(1 << 30))))
    pan_speed, panning = float(rng.uniform(-2.5, 2.5)), rng.random() < 0.6
    pan = pan_speed if moving and panning else 0.0  # (the same draws either way: frame 0 of a clip is the scene)
    ground["pad"] = int(abs(pan_speed) * 200) + 2  # ground textures are drawn this much wider, still or not
    return Layout(kind, cam, sky, ground, buildings, things, look, pan=pan, seed=seed)


def _tree_params(rng) -> dict:
    autumn = rng.random() < 0.2
    return {
        "height": float(rng.uniform(3.5, 12)), "crown": float(rng.uniform(0.25, 0.5)), "width": float(rng.uniform(0.5, 1.1)),
        "color": (_hsv(rng.uniform(0.05, 0.14), rng.uniform(0.5, 0.9), rng.uniform(0.35, 0.8)) if autumn
                  else _hsv(rng.uniform(0.18, 0.4), rng.uniform(0.3, 0.85), rng.uniform(0.15, 0.6))),
        "trunk": _hsv(rng.uniform(0.03, 0.1), rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.45)),
        "blobs": int(rng.integers(1, 6)), "trunk_w": float(rng.uniform(0.15, 0.45)),
    }


SKIN = [(0.07, 0.35, 0.95), (0.06, 0.45, 0.8), (0.06, 0.55, 0.6), (0.05, 0.6, 0.4), (0.07, 0.3, 0.85)]


def _person_params(rng) -> dict:
    skin = SKIN[int(rng.integers(len(SKIN)))]
    return {
        "height": float(rng.uniform(1.45, 1.95)) * (0.65 if rng.random() < 0.1 else 1.0), "girth": float(rng.uniform(0.22, 0.34)),
        "skin": _hsv(skin[0], skin[1] + rng.uniform(-0.1, 0.1), skin[2] + rng.uniform(-0.1, 0.1)),
        "shirt": _palette_any(rng), "pants": _palette_any(rng, 0.05, 0.7), "hair": _palette_any(rng, 0.05, 0.5),
        "phase": float(rng.uniform(0, 2 * np.pi)), "stride": float(rng.uniform(0.0, 0.35)), "coat": rng.random() < 0.3,
        "bag": rng.random() < 0.25,
    }


def _car_params(rng) -> dict:
    body = rng.random()
    if body < 0.7:
        color = _palette_any(rng, 0.1, 0.95)
    else:  # the common car colours: white, black, silver, red
        color = [_hsv(0, 0, 0.92), _hsv(0, 0, 0.12), _hsv(0.6, 0.05, 0.65), _hsv(0.0, 0.8, 0.65)][int(rng.integers(4))]
    return {
        "length": float(rng.uniform(3.6, 5.2)), "height": float(rng.uniform(1.35, 1.95)), "width": float(rng.uniform(1.65, 2.0)),
        "color": color, "cabin": float(rng.uniform(0.35, 0.55)), "cabin_start": float(rng.uniform(0.15, 0.35)),
        "glass": _hsv(rng.uniform(0.5, 0.7), rng.uniform(0.05, 0.4), rng.uniform(0.1, 0.5)), "radius": float(rng.uniform(0.1, 0.3)),
    }


# ------------------------------------------------------------------------------------------
# drawing

def _draw_sky(cv: Canvas, lay: Layout, frame: int):
    h, w = cv.h, cv.w
    s = lay.sky
    t = np.clip(np.arange(h, dtype=np.float32) / max(lay.cam.horizon, 1), 0, 1) ** 0.8
    grad = s["top"][None, :] * (1 - t[:, None]) + s["bottom"][None, :] * t[:, None]
    cv.rgb[:] = grad[:, None, :]
    rng = np.random.default_rng(s["cloud_seed"])
    cv.rgb += _smooth(rng, h, w, 60)[..., None] * 4
    shift = lay.pan * frame
    for _ in range(s["clouds"]):
        cx = rng.uniform(-0.2, 1.2) * w - shift * 0.3
        cy = rng.uniform(0.0, 0.8) * lay.cam.horizon
        rx, ry = rng.uniform(0.05, 0.25) * w, rng.uniform(0.02, 0.08) * h
        shade = rng.uniform(0.85, 1.15)
        col = np.clip(s["bottom"] * 0.3 + _hsv(0, 0, rng.uniform(0.75, 1.0)) * 0.7 * shade, 0, 255)
        got = cv.mask(lambda d, dx, dy: [d.ellipse([cx + dx + ox - rx * k, cy + dy + oy - ry * k,
                                                    cx + dx + ox + rx * k, cy + dy + oy + ry * k], fill=255)
                                         for ox, oy, k in [(0, 0, 1.0), (rx * 0.6, -ry * 0.4, 0.7), (-rx * 0.5, -ry * 0.2, 0.6)]],
                      (cx - 2 * rx, cy - 2 * ry, cx + 2 * rx, cy + 2 * ry))
        if got is not None:
            sl, m = got
            soft = np.asarray(Image.fromarray(m).filter(ImageFilter.GaussianBlur(max(1.0, ry * 0.4))), np.float32)[..., None] / 255
            cv.rgb[sl] = cv.rgb[sl] * (1 - 0.8 * soft) + col * 0.8 * soft
    cv.cls[:] = SKY


def _ground_poly(cam: Camera, x0, x1, z0, z1):
    return [cam.project(x0, 0, z0), cam.project(x1, 0, z0), cam.project(x1, 0, z1), cam.project(x0, 0, z1)]


def _draw_ground(cv: Canvas, lay: Layout, frame: int):
    cam, g, h, w = lay.cam, lay.ground, cv.h, cv.w
    rng = np.random.default_rng([lay.seed, 17])
    hz = cam.horizon
    rows = np.arange(h, dtype=np.float32)
    pad = g["pad"]
    shift = int(np.clip(round(lay.pan * frame), -pad, pad))

    def ground_tex(base, low, cell, grain):
        # image-space texture that moves with the pan: drawn wider and cropped
        def make(hh, ww):
            t = _texture(np.random.default_rng([lay.seed, 23, int(base.sum())]), h, w + 2 * pad, base,
                         low=low, cell=cell, grain=grain, grad=(float(rng.normal(0, 25)), float(rng.normal(0, 15))))
            return t[:, pad - shift: pad - shift + w]
        return make

    road_full = ground_tex(g["road"], 10, 25, 6)(h, w)
    side_full = ground_tex(g["side"], 12, 30, 5)(h, w)
    if g["tiles"]:  # tile joints: rows at equal depth steps, columns at equal lateral steps
        z = cam.f * cam.height / np.maximum(rows - hz, 0.5)
        row_lines = (np.floor(z / g["tile"]) % 2).astype(np.int8)
        edges = np.zeros(h, bool)
        edges[1:] = row_lines[1:] != row_lines[:-1]
        side_full[edges] *= 0.8
    if lay.kind == "across":
        # far sidewalk between kerb and facade, road, near sidewalk
        zk, zf, zn = g["z_kerb"], g["z_facade"], g["z_near_kerb"]
        y_f, y_k = cam.project(0, 0, zf)[1], cam.project(0, 0, zk)[1]
        cv.rgb[int(y_f):] = side_full[int(y_f):]
        cv.cls[int(y_f):] = SIDEWALK
        y_road_end = h if zn is None else cam.project(0, 0, zn)[1]
        a, b = int(round(y_k)), int(round(min(y_road_end, h)))
        cv.rgb[a:b] = road_full[a:b]
        cv.cls[a:b] = ROAD
        kerb = max(1, int(round(cam.scale(zk) * 0.15)))
        cv.rgb[max(0, a - kerb):a] *= g["kerb"]
        if zn is not None and b < h:
            cv.rgb[b:b + max(1, int(cam.scale(zn) * 0.15))] *= g["kerb"]
        # lane markings: dashes along x at lane boundaries
        lanes = g["lanes"]
        z0 = zn if zn is not None else cam.ground_z(h)
        for i in range(1, lanes):
            zl = max(z0, cam.ground_z(h)) + i * (zk - max(z0, cam.ground_z(h))) / lanes
            y = cam.project(0, 0, zl)[1]
            th = max(1.0, cam.scale(zl) * 0.12)
            period = cam.scale(zl) * 6
            x = cam.cx % period - period - shift * 0
            while x < w:
                x1 = x + (period * 0.5 if g["dashed"] else period)
                cv.rgb[max(0, int(y - th / 2)):int(y + th / 2) + 1, max(0, int(x)):max(0, int(x1))] = g["marking"]
                x += period
    else:
        xl, xr, fl, fr = g["xl"], g["xr"], g["fl"], g["fr"]
        # everything below the horizon is sidewalk first, then the road wedge over it
        y0 = int(math.ceil(hz))
        cv.rgb[y0:] = side_full[y0:]
        cv.cls[y0:] = SIDEWALK
        zfar = g["z_end"]
        zn = cam.ground_z(h) * 0.5
        got = cv.mask(lambda d, dx, dy: d.polygon([(x + dx, y + dy) for x, y in _ground_poly(cam, xl, xr, zn, zfar)], fill=255),
                      (-10 * w, hz, 11 * w, h))
        if got is not None:
            sl, m = got
            cv.fill(sl, m, road_full[sl], ROAD)
        # kerb lines
        for xk in (xl, xr):
            p = [cam.project(xk - 0.12, 0, zn), cam.project(xk + 0.12, 0, zn), cam.project(xk + 0.12, 0, zfar), cam.project(xk - 0.12, 0, zfar)]
            cv.shade(lambda d, dx, dy: d.polygon([(x + dx, y + dy) for x, y in p], fill=255), (-10 * w, hz, 11 * w, h), g["kerb"])
        # lane markings converging to the vanishing point
        lanes = g["lanes"] * 2
        for i in range(1, lanes):
            xm = xl + i * (xr - xl) / lanes
            z = zn
            while z < zfar:
                z1 = z + (3.0 if g["dashed"] or i != lanes // 2 else 1e9)
                z1 = min(z1, zfar)
                p = [cam.project(xm - 0.08, 0, z), cam.project(xm + 0.08, 0, z), cam.project(xm + 0.08, 0, z1), cam.project(xm - 0.08, 0, z1)]
                got = cv.mask(lambda d, dx, dy: d.polygon([(x + dx, y + dy) for x, y in p], fill=255),
                              (min(q[0] for q in p), min(q[1] for q in p), max(q[0] for q in p), max(q[1] for q in p)))
                if got is not None:
                    sl, m = got
                    region = cv.rgb[sl]
                    sel = (m > 0) & (cv.cls[sl] == ROAD)
                    region[sel] = g["marking"]
                z = z1 + 4.0
                if i != lanes // 2 and not g["dashed"]:
                    break
        if g["crosswalk"]:
            zc = cam.ground_z(h) + float(rng.uniform(3, 15))
            x = xl
            while x < xr:
                p = _ground_poly(cam, x, x + 0.5, zc, zc + 3)
                got = cv.mask(lambda d, dx, dy: d.polygon([(a + dx, b + dy) for a, b in p], fill=255),
                              (min(q[0] for q in p), min(q[1] for q in p), max(q[0] for q in p), max(q[1] for q in p)))
                if got is not None:
                    sl, m = got
                    sel = (m > 0) & (cv.cls[sl] == ROAD)
                    cv.rgb[sl][sel] = g["marking"]
                x += 1.0


def _building_tex(b: dict, hh: int, ww: int, scale: float) -> np.ndarray:
    rng = np.random.default_rng(b["seed"])
    stripes = None
    if b["texture"] == "brick":
        stripes = (max(2, scale * 0.25), max(4, scale * 0.6), 18, 1)
    elif b["texture"] == "panels":
        stripes = (max(3, scale * b["floor"]), max(3, scale * 1.5), 14, 1)
    elif b["texture"] == "stripes":
        stripes = (max(3, scale * b["floor"]), 0, 20, max(1, int(scale * 0.3)))
    return _texture(rng, hh, ww, b["color"], low=float(rng.uniform(4, 18)), cell=float(rng.uniform(6, 40)),
                    grain=float(rng.uniform(1, 7)), grad=(float(rng.normal(0, 25)), float(rng.normal(0, 25))), stripes=stripes)


def _window_colours(b: dict, n: int, rng) -> np.ndarray:
    style = b["win_style"]
    base = np.asarray(b["win_color"], np.float32)
    cols = np.repeat(base[None], n, 0) + rng.normal(0, 12, (n, 3)).astype(np.float32)
    if style in ("reflect", "mixed"):
        k = rng.random(n) < (0.8 if style == "reflect" else 0.3)
        cols[k] = _hsv(rng.uniform(0.5, 0.62), rng.uniform(0.1, 0.5), rng.uniform(0.55, 0.9)) + rng.normal(0, 15, (int(k.sum()), 3))
    if style in ("lit", "mixed"):
        k = rng.random(n) < (0.6 if style == "lit" else 0.15)
        cols[k] = _hsv(rng.uniform(0.1, 0.16), rng.uniform(0.3, 0.7), rng.uniform(0.75, 1.0)) + rng.normal(0, 10, (int(k.sum()), 3))
    return cols


def _paint_windows(cv: Canvas, b: dict, quads: list, facade_sl, facade_m):
    """Windows (quads in image pixels) on a facade; only over that facade's own visible pixels."""
    if not quads:
        return
    rng = np.random.default_rng(b["seed"] + 1)
    (ys, xs) = facade_sl
    bx0, by0 = xs.start, ys.start
    ww, hh = xs.stop - xs.start, ys.stop - ys.start
    img = Image.new("L", (ww, hh), 0)
    d = ImageDraw.Draw(img)
    quads = quads[:254]
    for i, q in enumerate(quads):
        d.polygon([(x - bx0, y - by0) for x, y in q], fill=i + 1)
    idx = np.asarray(img)
    sel = (idx > 0) & (facade_m > 0)
    if not sel.any():
        return
    cols = _window_colours(b, len(quads), rng)
    lut = np.zeros((256, 3), np.float32)
    lut[1:len(quads) + 1] = cols
    tex = lut[idx]
    tex += _smooth(rng, hh, ww, 8)[..., None] * 8
    tex += (np.linspace(12, -12, hh, dtype=np.float32)[:, None, None])
    region = cv.rgb[facade_sl]
    region[sel] = tex[sel]
    cv.cls[facade_sl][sel] = WINDOW
    if b["frame"]:  # frames: a lighter outline, still window
        edge = np.asarray(Image.fromarray((idx > 0).astype(np.uint8) * 255).filter(ImageFilter.MinFilter(3))) == 0
        edge &= sel
        region[edge] = region[edge] * 0.4 + 150


def _draw_buildings(cv: Canvas, lay: Layout):
    cam = lay.cam
    for b in lay.buildings:
        if "x0" in b:  # frontal facade at depth z
            z = b["z"]
            s = cam.scale(z)
            xa, ya = cam.project(b["x0"], b["height"], z)
            xb, yb = cam.project(b["x1"], 0, z)
            if xb < 0 or xa > cv.w:
                continue
            pts = [(xa, yb), (xa, ya), (xb, ya), (xb, yb)]
            if b["roof"] == "gable":
                pts = [(xa, yb), (xa, ya), ((xa + xb) / 2, ya - (xb - xa) * 0.25), (xb, ya), (xb, yb)]
            elif b["roof"] == "step":
                st = (xb - xa) * 0.25
                pts = [(xa, yb), (xa, ya), (xa + st, ya), (xa + st, ya - s * 3), (xb - st, ya - s * 3), (xb - st, ya), (xb, ya), (xb, yb)]
            got = cv.poly(pts, lambda hh, ww: _building_tex(b, hh, ww, s), BUILDING)
            if got is None:
                continue
            quads = []
            if b["windows"] and b["win_w"] * s >= 2.0 and b["win_h"] * s >= 2.0:
                step = b["win_w"] + b["win_gap"]
                n = int((b["x1"] - b["x0"] - b["win_gap"]) / step)
                margin = (b["x1"] - b["x0"] - n * step + b["win_gap"]) / 2
                floors = int((b["height"] - b["ground_floor"] - 0.5) / b["floor"])
                for j in range(floors):
                    y_lo = b["ground_floor"] + j * b["floor"] + (b["floor"] - b["win_h"]) / 2
                    for i in range(n):
                        x0 = b["x0"] + margin + i * step
                        p0 = cam.project(x0, y_lo + b["win_h"], z)
                        p1 = cam.project(x0 + b["win_w"], y_lo, z)
                        quads.append([(p0[0], p0[1]), (p1[0], p0[1]), (p1[0], p1[1]), (p0[0], p1[1])])
            _paint_windows(cv, b, quads, *got)
        else:  # a side facade in perspective, at lateral x, from z0 to z1
            x, z0, z1, H = b["x"], b["z0"], b["z1"], b["height"]
            pts = [cam.project(x, 0, z0), cam.project(x, H, z0), cam.project(x, H, z1), cam.project(x, 0, z1)]
            s = cam.scale((z0 + z1) / 2)
            got = cv.poly(pts, lambda hh, ww: _building_tex(b, hh, ww, max(s, 2)), BUILDING)
            if got is None:
                continue
            quads = []
            if b["windows"]:
                step = b["win_w"] + b["win_gap"]
                zc = z0 + b["win_gap"] / 2
                floors = int((H - b["ground_floor"] - 0.5) / b["floor"])
                while zc + b["win_w"] < z1 and len(quads) < 250:
                    if cam.scale(zc) * b["win_w"] * abs(x) / max(zc, 1) < 0.8:
                        break  # too foreshortened to see
                    for j in range(floors):
                        y_lo = b["ground_floor"] + j * b["floor"] + (b["floor"] - b["win_h"]) / 2
                        quads.append([cam.project(x, y_lo, zc), cam.project(x, y_lo + b["win_h"], zc),
                                      cam.project(x, y_lo + b["win_h"], zc + b["win_w"]), cam.project(x, y_lo, zc + b["win_w"])])
                    zc += step
            _paint_windows(cv, b, quads, *got)


def _draw_tree(cv: Canvas, t: Thing, cam: Camera):
    p = t.params
    s = cam.scale(t.z)
    fx, fy = cam.project(t.x, 0, t.z)
    H = p["height"] * s
    if H < 4:
        return
    rng = np.random.default_rng(t.seed)
    tw = max(1.0, p["trunk_w"] * s)
    crown_h = H * p["crown"] * 1.6
    top = fy - H
    trunk_top = top + crown_h * 0.7
    cv.poly([(fx - tw / 2, fy), (fx - tw / 2, trunk_top), (fx + tw / 2, trunk_top), (fx + tw / 2, fy)],
            lambda hh, ww: _texture(rng, hh, ww, p["trunk"], low=8, cell=4, grain=6), TREE)
    R = crown_h / 2
    cw = R * p["width"] * 1.5
    blobs = [(fx, top + R, cw, R)]
    for _ in range(p["blobs"] - 1):
        blobs.append((fx + rng.uniform(-0.6, 0.6) * cw, top + R + rng.uniform(-0.5, 0.5) * R,
                      cw * rng.uniform(0.4, 0.8), R * rng.uniform(0.4, 0.8)))
    bbox = (min(b[0] - b[2] for b in blobs), min(b[1] - b[3] for b in blobs),
            max(b[0] + b[2] for b in blobs), max(b[1] + b[3] for b in blobs))
    got = cv.mask(lambda d, dx, dy: [d.ellipse([x - rx + dx, y - ry + dy, x + rx + dx, y + ry + dy], fill=255)
                                     for x, y, rx, ry in blobs], bbox)
    if got is None:
        return
    sl, m = got
    # ragged leafy edge: drop pixels where high-frequency noise is low near the boundary
    hh, ww = m.shape
    ragged = _smooth(rng, hh, ww, max(1.5, s * 0.25))
    inner = np.asarray(Image.fromarray(m).filter(ImageFilter.MinFilter(5)))
    m = np.where((inner > 0) | (ragged > -0.3), m, 0).astype(np.uint8)
    tex = _texture(rng, hh, ww, p["color"], low=22, cell=max(2.0, s * 0.4), grain=10, grad=(30, rng.normal(0, 20)))
    cv.fill(sl, m, tex, TREE)


def _draw_person(cv: Canvas, t: Thing, cam: Camera, frame: int, inst: int):
    p = t.params
    s = cam.scale(t.z)
    fx, fy = cam.project(t.x, 0, t.z)
    H = p["height"] * s
    if H < 5:
        return
    rng = np.random.default_rng(t.seed)
    g = p["girth"] * s
    head_r = H * 0.065
    phase = p["phase"] + frame * 0.35 * (1 if (t.vx or t.vz) else 0)
    stride = p["stride"] * H * math.sin(phase)
    y_head = fy - H + head_r
    y_sh, y_hip = fy - H * 0.82, fy - H * 0.5
    parts = []  # (polygon or ellipse, colour)
    leg = g * 0.42
    for sgn in (-1, 1):
        foot = fx + sgn * (g * 0.2) + sgn * stride * 0.5
        parts.append(("poly", [(fx + sgn * g * 0.3 - leg / 2, y_hip), (fx + sgn * g * 0.3 + leg / 2, y_hip),
                               (foot + leg / 2, fy - H * 0.03), (foot - leg / 2, fy - H * 0.03)], p["pants"]))
        parts.append(("poly", [(foot - leg * 0.6, fy - H * 0.035), (foot + leg * 0.8, fy - H * 0.035), (foot + leg * 0.8, fy),
                               (foot - leg * 0.6, fy)], p["pants"] * 0.4))
    body_bottom = y_hip + (H * 0.2 if p["coat"] else H * 0.02)
    parts.append(("poly", [(fx - g / 2, y_sh), (fx + g / 2, y_sh), (fx + g * 0.45, body_bottom), (fx - g * 0.45, body_bottom)], p["shirt"]))
    arm = g * 0.22
    for sgn in (-1, 1):
        swing = -sgn * stride * 0.35
        hand = (fx + sgn * (g / 2 + arm * 0.3) + swing, y_hip + H * 0.05)
        parts.append(("poly", [(fx + sgn * g / 2 - arm / 2, y_sh), (fx + sgn * g / 2 + arm / 2, y_sh),
                               (hand[0] + arm / 2, hand[1]), (hand[0] - arm / 2, hand[1])], p["shirt"] * 0.9))
        parts.append(("ellipse", (hand[0], hand[1], arm * 0.6, arm * 0.6), p["skin"]))
    parts.append(("poly", [(fx - head_r * 0.4, y_head + head_r * 0.8), (fx + head_r * 0.4, y_head + head_r * 0.8),
                           (fx + head_r * 0.4, y_sh + 1), (fx - head_r * 0.4, y_sh + 1)], p["skin"]))
    parts.append(("ellipse", (fx, y_head, head_r * 0.85, head_r), p["skin"]))
    parts.append(("ellipse", (fx, y_head - head_r * 0.3, head_r * 0.9, head_r * 0.75), p["hair"]))
    if p["bag"]:
        parts.append(("poly", [(fx + g * 0.4, y_hip - H * 0.12), (fx + g * 0.8, y_hip - H * 0.12), (fx + g * 0.8, y_hip + H * 0.08),
                               (fx + g * 0.4, y_hip + H * 0.08)], _palette_any(rng)))
    _paint_parts(cv, parts, rng, PERSON, inst, s)


def _paint_parts(cv: Canvas, parts, rng, cls: int, inst: int, s: float):
    """Several coloured parts of one thing, in one mask over their common box."""
    pts = [q for kind, geo, _ in parts for q in (geo if kind == "poly" else
                                                  [(geo[0] - geo[2], geo[1] - geo[3]), (geo[0] + geo[2], geo[1] + geo[3])])]
    bbox = (min(q[0] for q in pts), min(q[1] for q in pts), max(q[0] for q in pts), max(q[1] for q in pts))

    def draw(d, dx, dy):
        for i, (kind, geo, _) in enumerate(parts):
            if kind == "poly":
                d.polygon([(x + dx, y + dy) for x, y in geo], fill=i + 1)
            else:
                x, y, rx, ry = geo
                d.ellipse([x - rx + dx, y - ry + dy, x + rx + dx, y + ry + dy], fill=i + 1)

    got = cv.mask(draw, bbox)
    if got is None:
        return
    sl, m = got
    lut = np.zeros((256, 3), np.float32)
    for i, (_, _, col) in enumerate(parts):
        lut[i + 1] = col
    hh, ww = m.shape
    tex = lut[m] + _smooth(rng, hh, ww, max(2.0, s * 0.3))[..., None] * 10 + rng.standard_normal((hh, ww, 1), dtype=np.float32) * 4
    tex += np.linspace(18, -18, hh, dtype=np.float32)[:, None, None]
    cv.fill(sl, m, tex, cls, inst)


def _hull(points):
    """Convex hull of 2-D points (monotone chain), counter-clockwise."""
    pts = sorted(set((float(x), float(y)) for x, y in points))
    if len(pts) <= 2:
        return pts

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for q in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], q) <= 0:
            lower.pop()
        lower.append(q)
    for q in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], q) <= 0:
            upper.pop()
        upper.append(q)
    return lower[:-1] + upper[:-1]


def _draw_car(cv: Canvas, t: Thing, cam: Camera, inst: int):
    p = t.params
    rng = np.random.default_rng(t.seed)
    if p["view"] == "side":
        s = cam.scale(t.z)
        fx, fy = cam.project(t.x, 0, t.z)
        L, Hc = p["length"] * s, p["height"] * s
        if Hc < 4:
            return
        x0 = fx - L / 2
        face = p["facing"]
        wr = Hc * 0.2
        c0 = x0 + L * (p["cabin_start"] if face > 0 else 1 - p["cabin_start"] - p["cabin"])
        c1 = c0 + L * p["cabin"]
        yb, yt = fy - wr * 0.9, fy - Hc * 0.58
        parts = [
            ("poly", [(x0, yb), (x0, yt + Hc * 0.08), (x0 + L * 0.04, yt), (x0 + L * 0.96, yt), (x0 + L, yt + Hc * 0.08), (x0 + L, yb)], p["color"]),
            ("poly", [(c0 - L * 0.06, yt + 1), (c0 + L * 0.05, fy - Hc), (c1 - L * 0.03, fy - Hc), (c1 + L * 0.08, yt + 1)], p["color"] * 0.95),
            ("poly", [(c0 - L * 0.02, yt), (c0 + L * 0.07, fy - Hc * 0.93), (c1 - L * 0.04, fy - Hc * 0.93), (c1 + L * 0.04, yt)], p["glass"]),
        ]
        for wx in (x0 + L * 0.18, x0 + L * 0.82):
            parts.append(("ellipse", (wx, fy - wr, wr, wr), np.array([20, 20, 22], np.float32)))
            parts.append(("ellipse", (wx, fy - wr, wr * 0.5, wr * 0.5), np.array([140, 140, 145], np.float32)))
        lx = x0 + L - L * 0.03 if face > 0 else x0 + L * 0.03
        parts.append(("ellipse", (lx, yt + Hc * 0.1, L * 0.025, Hc * 0.05), np.array([240, 235, 200], np.float32)))
        tx = x0 + L * 0.015 if face > 0 else x0 + L - L * 0.015
        parts.append(("ellipse", (tx, yt + Hc * 0.1, L * 0.015, Hc * 0.05), np.array([200, 30, 30], np.float32)))
        cv.shade(lambda d, dx, dy: d.ellipse([x0 - L * 0.03 + dx, fy - wr * 0.4 + dy, x0 + L * 1.03 + dx, fy + wr * 0.4 + dy], fill=255),
                 (x0 - L * 0.05, fy - wr, x0 + L * 1.05, fy + wr), 0.55)
    else:  # rear or front view: boxes in perspective (silhouettes = hulls of their corners)
        W, Hc, Lc = p["width"], p["height"], p["length"]
        x, z = t.x, t.z
        if cam.scale(z) * Hc < 4:
            return
        P = cam.project
        a, b = x - W / 2, x + W / 2

        def box(x0, x1, y0, y1, z0, z1):
            return _hull([P(u, v, w_) for u in (x0, x1) for v in (y0, y1) for w_ in (z0, z1)])

        dark = np.array([20, 20, 22], np.float32)
        parts = [
            ("poly", box(a + 0.05, b - 0.05, 0.0, 0.32, z + 0.15, z + Lc - 0.15), dark),  # wheels and underbody
            ("poly", box(a, b, 0.25, Hc * 0.62, z, z + Lc), p["color"] * 0.8),  # body
            ("poly", box(a + W * 0.1, b - W * 0.1, Hc * 0.6, Hc, z + Lc * 0.15, z + Lc * 0.75), p["color"] * 0.9),  # cabin
            ("poly", [P(a, 0.25, z), P(a, Hc * 0.62, z), P(b, Hc * 0.62, z), P(b, 0.25, z)], p["color"]),  # end face
            ("poly", [P(a + W * 0.14, Hc * 0.64, z + Lc * 0.15), P(a + W * 0.18, Hc * 0.95, z + Lc * 0.2),
                      P(b - W * 0.18, Hc * 0.95, z + Lc * 0.2), P(b - W * 0.14, Hc * 0.64, z + Lc * 0.15)], p["glass"]),
        ]
        light = np.array([200, 30, 30], np.float32) if p["view"] == "rear" else np.array([240, 235, 200], np.float32)
        for u0, u1 in ((a + W * 0.03, a + W * 0.2), (b - W * 0.2, b - W * 0.03)):
            parts.append(("poly", [P(u0, Hc * 0.42, z), P(u0, Hc * 0.55, z), P(u1, Hc * 0.55, z), P(u1, Hc * 0.42, z)], light))
        parts.append(("poly", [P(x - W * 0.12, Hc * 0.3, z), P(x - W * 0.12, Hc * 0.38, z), P(x + W * 0.12, Hc * 0.38, z),
                               P(x + W * 0.12, Hc * 0.3, z)], np.array([230, 230, 220], np.float32)))
        sh = [P(a - 0.2, 0, z - 0.3), P(b + 0.2, 0, z - 0.3), P(b + 0.2, 0, z + Lc), P(a - 0.2, 0, z + Lc)]
        cv.shade(lambda d, dx, dy: d.polygon([(u + dx, v + dy) for u, v in sh], fill=255),
                 (min(q[0] for q in sh), min(q[1] for q in sh), max(q[0] for q in sh), max(q[1] for q in sh)), 0.6)
        s = cam.scale(z)
    _paint_parts(cv, parts, rng, CAR, inst, s)


def _finish(cv: Canvas, lay: Layout, frame: int) -> np.ndarray:
    look = lay.look
    h, w = cv.h, cv.w
    rgb = cv.rgb
    mean = rgb.mean()
    rgb = (rgb - mean) * look["contrast"] + mean
    gy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None] * look["grad"][0]
    gx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :] * look["grad"][1]
    light = look["gain"] * (1 + gy + gx)
    if look["vignette"]:
        yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
        xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
        light = light * (1 - look["vignette"] * (xx ** 2 + yy ** 2) / 2)
    rgb = rgb * light[..., None] + look["cast"]
    rng = np.random.default_rng([lay.seed, 99])  # fixed-pattern sensor noise: the same in every frame
    if look["noise"]:
        rgb = rgb + rng.standard_normal((h, w, 3), dtype=np.float32) * look["noise"]
    out = np.clip(rgb, 0, 255).astype(np.uint8)
    if look["blur"]:
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(look["blur"])))
    if look["levels"]:
        q = 256 // look["levels"]
        out = (out // q * q + q // 2).astype(np.uint8) if rng.random() < 0.3 else out
    return np.ascontiguousarray(out)


def render(lay: Layout, size: tuple[int, int], frame: int = 0) -> Scene:
    """Draw ``lay`` at ``size`` (width, height) at time ``frame`` (things moved, camera panned)."""
    w, h = size
    cam = lay.cam
    cam = Camera(cam.f, cam.cx + lay.pan * frame, cam.horizon, cam.height)
    lay_f = Layout(lay.kind, cam, lay.sky, lay.ground, lay.buildings, lay.things, lay.look, lay.pan, lay.seed)
    cv = Canvas(w, h, np.random.default_rng([lay.seed, 1, frame]))
    _draw_sky(cv, lay_f, frame)
    _draw_ground(cv, lay_f, frame)
    _draw_buildings(cv, lay_f)
    placed = [Thing(t.kind, t.x + t.vx * frame, t.z + t.vz * frame, t.vx, t.vz, t.params, t.seed) for t in lay.things]
    order = sorted(range(len(placed)), key=lambda i: -placed[i].z)
    inst_of = {}
    next_id = 1
    for i in order:
        t = placed[i]
        if t.z < 0.5:
            continue
        if t.kind == TREE:
            _draw_tree(cv, t, cam)
            continue
        inst_of[i] = next_id  # the same thing keeps its id over a clip's frames
        if t.kind == PERSON:
            _draw_person(cv, t, cam, frame, next_id)
        else:
            _draw_car(cv, t, cam, next_id)
        cv.instance_class[next_id] = t.kind
        next_id += 1
    image = _finish(cv, lay_f, frame)
    # instances too small to count become void; ids renumbered by thing index for clips
    inst = cv.inst
    counts = np.bincount(inst.ravel(), minlength=next_id)
    min_area = MIN_INSTANCE_FRACTION * w * h
    remap = np.zeros(next_id, np.int32)
    classes = {}
    for i, k in inst_of.items():
        if counts[k] == 0:
            continue
        if counts[k] < min_area:
            remap[k] = -1
        else:
            remap[k] = i + 1
            classes[i + 1] = cv.instance_class[k]
    inst = remap[inst]
    return Scene(image, cv.cls, inst, classes, lay.kind, lay.seed)


def scene(seed: int, size: tuple[int, int] = (384, 256)) -> Scene:
    """One street scene of ``size`` (width, height), drawn from ``seed``."""
    w, h = size
    return render(_sample_layout(seed, w, h), size)


def clip(seed: int, frames: int = 48, size: tuple[int, int] = (384, 256)) -> list[Scene]:
    """``frames`` frames of one street: cars drive, persons walk, the camera may pan. Instance ids
    are stable over the clip (each thing keeps its id while visible)."""
    w, h = size
    lay = _sample_layout(seed, w, h, moving=True)
    return [render(lay, size, i) for i in range(frames)]


def colorize(label_map: np.ndarray, label_set: str) -> np.ndarray:
    """RGB picture of a semantic map in ``label_set``'s palette (void black), for looking at."""
    from workers.media import labels

    pal = np.zeros((256, 3), np.uint8)
    colors = labels.load(label_set).colors
    pal[: len(colors)] = colors
    pal[VOID] = 0
    return pal[label_map]


if __name__ == "__main__":  # python -m bench.scenes OUT_DIR [N]: a contact sheet to look at
    import sys
    from pathlib import Path

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "scenes")
    out.mkdir(parents=True, exist_ok=True)
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    tiles = []
    for seed in range(HELDOUT_SEEDS.start, HELDOUT_SEEDS.start + n):
        sc = scene(seed, (384, 256))
        inst = sc.instances
        inst_rgb = np.zeros((*inst.shape, 3), np.uint8)
        for i in np.unique(inst[inst > 0]):
            inst_rgb[inst == i] = np.random.default_rng(int(i)).integers(60, 255, 3)
        inst_rgb[inst < 0] = 255
        tiles.append(np.concatenate([sc.image, colorize(sc.semantic("ade20k"), "ade20k"), inst_rgb], 1))
    Image.fromarray(np.concatenate(tiles, 0)).save(out / "contact.png")
    print(out / "contact.png")
