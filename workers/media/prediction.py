"""What segmenting one image gives: its label map and segments, with their area and box.

Plain numpy (no torch), so rendering and its tests need no model. The label-map encoding is the
same for all tasks: see ``workers.model.segmenter``.
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
    # Set on the device-blend path (``workers.model.segmenter.Segmenter.blend``), not part of the value:
    # the label map still on the device of the logits (a torch tensor) until the overlay is
    # blended there, then the overlay itself (RGB uint8 (H, W, 3)); None otherwise.
    device_label_map: object = field(default=None, compare=False, repr=False)
    overlay: np.ndarray | None = field(default=None, compare=False, repr=False)


#: Pixels of a label map looked at in one step by ``_stats`` (its temporaries: a few times this,
#: in 8-byte integers; a 40 MP map in full would need gigabytes).
STATS_BAND_PIXELS = 1 << 20


def _stats(label_map: np.ndarray, ids: list[int] | None) -> dict[int, tuple[int, tuple[int, int, int, int]]]:
    """Area and bounding box of each id (every id present, for None), in one banded pass over
    the map: per band of rows, the areas and which rows and columns hold each id."""
    if ids is not None and not ids:
        return {}
    h, w = label_map.shape
    k = int(label_map.max()) + 1 if label_map.size else 1
    area = np.zeros(k, np.int64)
    rows = np.zeros((h, k), bool)
    cols = np.zeros((w, k), bool)
    col_offsets = np.arange(w, dtype=np.int64) * k
    band = max(1, STATS_BAND_PIXELS // max(w, 1))
    for r0 in range(0, h, band):
        block = label_map[r0:r0 + band].astype(np.int64)
        b = block.shape[0]
        area += np.bincount(block.ravel(), minlength=k)
        rows[r0:r0 + b] = np.bincount((np.arange(b, dtype=np.int64)[:, None] * k + block).ravel(),
                                      minlength=b * k).reshape(b, k) > 0
        cols |= np.bincount((col_offsets[None, :] + block).ravel(), minlength=w * k).reshape(w, k) > 0
    out = {}
    for i in (ids if ids is not None else [int(i) for i in np.flatnonzero(area)]):
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
    """One segment per class present, with its area and box (one pass over the map)."""
    segments = []
    for i, (area, bbox) in sorted(_stats(label_map, None).items()):
        segments.append(Segment(i, i, None, area=area, bbox=bbox))
    return segments
