"""What segmenting one image gives: its label map and segments, with their area and box.

Plain numpy (no torch), so rendering and its tests need no model. The label-map encoding is the
same for all tasks: see ``workers.inference``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Segment:
    id: int
    label_id: int
    score: float | None
    area: int = 0
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # x, y, width, height
    was_fused: bool = False


@dataclass
class Prediction:
    task: str
    label_map: np.ndarray  # (H, W) int32 in segq's encoding (module docstring)
    segments: list[Segment] = field(default_factory=list)
    # Set on the device-blend path (``workers.inference.render_on_device``), not part of the value:
    # the label map still on the device of the logits (a torch tensor) until the overlay is
    # blended there, then the overlay itself (RGB uint8 (H, W, 3)); None otherwise.
    device_label_map: object = field(default=None, compare=False, repr=False)
    overlay: np.ndarray | None = field(default=None, compare=False, repr=False)


def _stats(label_map: np.ndarray, ids: list[int]) -> dict[int, tuple[int, tuple[int, int, int, int]]]:
    """Area and bounding box of each id, in two linear passes over the map."""
    if not ids:
        return {}
    h, w = label_map.shape
    k = int(label_map.max()) + 1
    flat = label_map.ravel().astype(np.int64)
    area = np.bincount(flat, minlength=k)
    rows = np.bincount((np.arange(h).repeat(w) * k + flat), minlength=h * k).reshape(h, k) > 0
    cols = np.bincount((np.tile(np.arange(w), h) * k + flat), minlength=w * k).reshape(w, k) > 0
    out = {}
    for i in ids:
        if i >= k or area[i] == 0:
            out[i] = (0, (0, 0, 0, 0))
            continue
        ys = np.flatnonzero(rows[:, i])
        xs = np.flatnonzero(cols[:, i])
        out[i] = (int(area[i]), (int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)))
    return out


def with_stats(label_map: np.ndarray, segments: list[Segment]) -> list[Segment]:
    """Area and bounding box of each segment; only segments present in the label map are kept
    (transformers lists instances whose pixels all went to other segments, with area 0)."""
    stats = _stats(label_map, [s.id for s in segments])
    for s in segments:
        s.area, s.bbox = stats[s.id]
    return [s for s in segments if s.area > 0]


def unique_ids(segments) -> list[Segment]:
    """One entry per segment id. transformers lists a fused stuff segment once per query that
    joined it; keep the first entry, with the best score."""
    by_id: dict[int, Segment] = {}
    for s in segments:
        if s.id in by_id:
            kept = by_id[s.id]
            kept.score = max(kept.score or 0.0, s.score or 0.0)
        else:
            by_id[s.id] = s
    return list(by_id.values())


def semantic_segments(label_map: np.ndarray) -> list[Segment]:
    present = [int(i) for i in np.flatnonzero(np.bincount(label_map.ravel()))]
    return with_stats(label_map, [Segment(i, i, None) for i in present])
