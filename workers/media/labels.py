"""Class names and colour palettes: ADE20K (150), COCO panoptic (133), COCO instance (80).

The data files in ``workers/media/data`` hold the real label sets (names, colours, COCO ids). A model
is matched to a label set by its ``id2label``; a model with other classes gets its own names
and a deterministic generated palette.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

KNOWN = ("ade20k", "coco_panoptic", "coco_instance")


@dataclass(frozen=True)
class LabelSet:
    name: str
    names: tuple[str, ...]
    colors: np.ndarray  # (N, 3) uint8, RGB
    coco_ids: tuple[int, ...] | None = None
    isthing: tuple[bool, ...] | None = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def stuff_ids(self) -> set[int]:
        """Label ids whose segments are fused into one per image in panoptic output."""
        if self.isthing is None:
            return set()
        return {i for i, thing in enumerate(self.isthing) if not thing}

    def name_of(self, label_id: int) -> str:
        return self.names[label_id] if 0 <= label_id < len(self.names) else f"class_{label_id}"

    def category_id(self, label_id: int) -> int:
        """The dataset's own category id (COCO ids are not contiguous); else the label id."""
        return self.coco_ids[label_id] if self.coco_ids else label_id


@lru_cache(maxsize=None)
def load(name: str) -> LabelSet:
    raw = json.loads(resources.files("workers.media").joinpath(f"data/{name}.json").read_text())
    classes = sorted(raw["classes"], key=lambda c: c["id"])
    return LabelSet(
        name=name,
        names=tuple(c["name"] for c in classes),
        colors=np.array([c["color"] for c in classes], dtype=np.uint8),
        coco_ids=tuple(c["coco_id"] for c in classes) if "coco_id" in classes[0] else None,
        isthing=tuple(bool(c["isthing"]) for c in classes) if "isthing" in classes[0] else None,
    )


def generated_palette(n: int) -> np.ndarray:
    """Distinct, deterministic colours: golden-ratio hues, alternating brightness."""
    colors = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        s = 0.65 + 0.35 * ((i // 3) % 2)
        v = 0.95 - 0.25 * (i % 2)
        colors.append([round(c * 255) for c in colorsys.hsv_to_rgb(h, s, v)])
    return np.array(colors, dtype=np.uint8).reshape(n, 3)


def _norm(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def for_id2label(id2label: dict) -> LabelSet:
    """The label set of a model, from its config's ``id2label``."""
    names = [str(id2label.get(i, id2label.get(str(i), f"class_{i}"))) for i in range(len(id2label))]
    wanted = [_norm(n) for n in names]
    for known in KNOWN:
        ls = load(known)
        if len(ls) == len(names) and [_norm(n) for n in ls.names] == wanted:
            return ls
    return LabelSet(name="custom", names=tuple(n.strip() for n in names), colors=generated_palette(len(names)))
