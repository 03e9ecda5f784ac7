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


#: ``_stats`` counts by runs while a map has at most one run (of equal labels along a row) in this
#: many pixels: a model's maps (regions) have a few per row, noise-like ones nearly one per pixel.
RUN_PIXELS = 16


def _stats(label_map: np.ndarray, ids: list[int] | None) -> dict[int, tuple[int, tuple[int, int, int, int]]]:
    """Area and bounding box of each id (every id present, for None), in one banded pass over
    the map: by its runs (``_run_stats``) while it has few, else per band of rows, the areas and
    which rows and columns hold each id."""
    if ids is not None and not ids:
        return {}
    h, w = label_map.shape
    k = int(label_map.max()) + 1 if label_map.size else 1
    by_runs = _run_stats(label_map, k)
    if by_runs is not None:
        area, y0, y1, x0, x1 = by_runs
        present = ids if ids is not None else [int(i) for i in np.flatnonzero(area)]
        return {i: (int(area[i]), (int(x0[i]), int(y0[i]), int(x1[i] - x0[i] + 1), int(y1[i] - y0[i] + 1)))
                if i < k and area[i] else (0, (0, 0, 0, 0)) for i in present}
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


def _run_stats(label_map: np.ndarray, k: int):
    """Per id below ``k``: (area, first row, last row, first column, last column), from the map's
    runs (maximal stretches of one label along a row), band by band; None as soon as the map
    has more than one run in ``RUN_PIXELS`` pixels (the caller counts pixel by pixel then).
    Rows and columns of an absent id are meaningless; its area is 0."""
    h, w = label_map.shape
    area = np.zeros(k, np.int64)
    big = np.iinfo(np.int64).max
    y0, x0 = np.full(k, big), np.full(k, big)
    y1, x1 = np.full(k, -1), np.full(k, -1)
    band = max(1, STATS_BAND_PIXELS // max(w, 1))
    budget = label_map.size // RUN_PIXELS
    runs = 0
    for r0 in range(0, h, band):
        flat = label_map[r0:r0 + band].ravel()
        b = flat.size // w
        # a run starts where the label changes along the flat band, and at every row's start
        starts = np.union1d(np.flatnonzero(flat[1:] != flat[:-1]) + 1, np.arange(b) * w)
        runs += starts.size
        if runs > budget:
            return None
        ends = np.append(starts[1:], flat.size) - 1  # a row's last run ends where the next row starts
        lab = flat[starts].astype(np.intp)
        rows = starts // w + r0
        area += np.bincount(lab, weights=ends - starts + 1, minlength=k).astype(np.int64)
        np.minimum.at(y0, lab, rows)
        np.maximum.at(y1, lab, rows)
        np.minimum.at(x0, lab, starts % w)
        np.maximum.at(x1, lab, ends % w)
    return area, y0, y1, x0, x1


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
