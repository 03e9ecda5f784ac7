"""Compare a label map with transformers' reference, and classify every differing pixel.

A pixel may differ from the reference only where the reference's own decision is a float
near-tie (relative gap ``TOL`` = 1e-5):

- semantic: the two best class scores at the pixel (bilinear of the 384 x 384 class scores, as
  transformers computes them) are within TOL relative of the best, and the candidate's class is
  one of those within TOL of the best;
- instance: some kept entry's mask probability at the pixel's source point (nearest resize) is
  within TOL of 0.5 (its binarisation ``logit > 0`` is a near-tie);
- panoptic: the best two ``prob x score`` of the kept queries at the pixel are within TOL relative.

Pixels of segments whose keep/drop decision is itself a near-tie (instance: score vs threshold;
panoptic: class probability vs threshold, or the overlap-area ratio vs its threshold within
``RATIO_TOL``) are counted apart, as ``segment_ties``, together with the pixels whose ids are
renumbered by such a decision. Ids must match exactly, not up to relabelling.

The margins are computed only at the differing pixels (float64 bilinear at those points with
torch's indices and weights), from the same 384 x 384 intermediates transformers builds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from workers.model.postprocess.geometry import GRID, axis_weights, nearest_index

TOL = 1e-5
RATIO_TOL = 1e-4
MAX_NEAR_TIE_FRACTION = 1e-4


@dataclass
class Comparison:
    task: str
    total_pixels: int
    differing: int = 0
    near_ties: int = 0
    segment_ties: int = 0
    other: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.other == 0 and self.near_ties + self.segment_ties <= MAX_NEAR_TIE_FRACTION * self.total_pixels

    def __str__(self) -> str:
        s = (
            f"{self.task}: {self.differing} of {self.total_pixels} pixels differ: {self.near_ties} at near-ties, "
            f"{self.segment_ties} in near-tie segment decisions, {self.other} unexplained"
        )
        return s + "".join(f"\n  {n}" for n in self.notes)


def _one(cls, masks):
    if cls.dim() == 3:
        cls, masks = cls[0], masks[0]
    return cls.float(), masks.float()


def _points(grid: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Bilinear values (float64) of every channel of ``grid`` (n, gh, gw) at pixels (ys, xs) of
    an (H, W) resize: (n, P)."""
    gh, gw = grid.shape[1:]
    y0, y1, yl0, yl1 = axis_weights(gh, H, grid.device)
    x0, x1, xl0, xl1 = axis_weights(gw, W, grid.device)
    g = grid.double()
    a, b = g[:, y0[ys], x0[xs]], g[:, y0[ys], x1[xs]]
    c, d = g[:, y1[ys], x0[xs]], g[:, y1[ys], x1[xs]]
    wx0, wx1, wy0, wy1 = xl0[xs].double(), xl1[xs].double(), yl0[ys].double(), yl1[ys].double()
    return (a * wx0 + b * wx1) * wy0 + (c * wx0 + d * wx1) * wy1


def _mask384(masks: torch.Tensor) -> torch.Tensor:
    return F.interpolate(masks[None], size=(GRID, GRID), mode="bilinear", align_corners=False)[0]


def compare(
    task: str,
    class_queries_logits: torch.Tensor,
    masks_queries_logits: torch.Tensor,
    target_size: tuple[int, int],
    reference_map: torch.Tensor,
    candidate_map: torch.Tensor,
    *,
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    label_ids_to_fuse=None,
    reference_segments: list[dict] | None = None,
    candidate_segments: list[dict] | None = None,
) -> Comparison:
    """Classify the pixels where ``candidate_map`` differs from ``reference_map`` (both in
    transformers' encoding for ``task``)."""
    H, W = target_size
    ref = reference_map.to(candidate_map.device)
    if tuple(ref.shape) != (H, W) or tuple(candidate_map.shape) != (H, W):
        raise ValueError(f"maps must be {(H, W)}: {tuple(ref.shape)}, {tuple(candidate_map.shape)}")
    out = Comparison(task, H * W)
    diff = ref.long() != candidate_map.long()
    out.differing = int(diff.sum())
    if ref.dtype != candidate_map.dtype:
        out.notes.append(f"dtype differs: reference {ref.dtype}, candidate {candidate_map.dtype}")
    if out.differing == 0:
        return out
    ys, xs = diff.nonzero(as_tuple=True)
    cls, masks = _one(class_queries_logits, masks_queries_logits)
    with torch.inference_mode():
        if task == "semantic":
            near = _semantic_near(cls, masks, ys, xs, H, W, candidate_map[ys, xs].long())
            seg = torch.zeros_like(near)
        elif task == "instance":
            near, seg = _instance_near(
                cls, masks, ys, xs, H, W, ref, candidate_map, threshold, reference_segments, candidate_segments, out
            )
        elif task == "panoptic":
            near, seg = _panoptic_near(
                cls, masks, ys, xs, H, W, ref, candidate_map, threshold, mask_threshold,
                overlap_mask_area_threshold, reference_segments, candidate_segments, out,
            )
        else:
            raise ValueError(f"unknown task {task!r}")
    seg = seg & ~near
    out.near_ties = int(near.sum())
    out.segment_ties = int(seg.sum())
    out.other = out.differing - out.near_ties - out.segment_ties
    return out


def _semantic_near(cls, masks, ys, xs, H, W, cand) -> torch.Tensor:
    probs = cls.softmax(-1)[:, :-1]
    seg = torch.einsum("qc, qhw -> chw", probs, _mask384(masks).sigmoid())
    near = torch.zeros(ys.numel(), dtype=torch.bool, device=ys.device)
    for s in range(0, ys.numel(), 4096):
        v = _points(seg, ys[s : s + 4096], xs[s : s + 4096], H, W)  # (C, P)
        top = v.max(0).values
        tol = TOL * top.abs()
        close = (top[None] - v) <= tol[None]
        two = close.sum(0) >= 2
        mine = close.gather(0, cand[s : s + 4096][None].clamp(0, v.shape[0] - 1))[0]
        near[s : s + 4096] = two & mine
    return near


def _instance_near(cls, masks, ys, xs, H, W, ref, cand, threshold, ref_segs, cand_segs, out):
    C, Q = cls.shape[1] - 1, cls.shape[0]
    scores = cls.softmax(-1)[:, :-1]
    sp, topk = scores.flatten(0, 1).topk(Q, sorted=False)
    queries = torch.div(topk, C, rounding_mode="floor")
    m = _mask384(masks)
    ridx, cidx = nearest_index(GRID, H, ys.device), nearest_index(GRID, W, ys.device)
    # logits of the entries that could be kept (sp >= threshold) at the source points
    cand_entries = (sp >= threshold * (1 - TOL)).nonzero()[:, 0]
    vals = m[queries[cand_entries]][:, ridx[ys], cidx[xs]]  # (E, P)
    near = ((vals.sigmoid().double() - 0.5).abs() <= TOL).any(0)
    seg = torch.zeros_like(near)
    if ref_segs is not None and cand_segs is not None and _key(ref_segs) != _key(cand_segs):
        first = _first_mismatch(ref_segs, cand_segs)
        close = [abs(s["score"] - threshold) <= TOL * max(threshold, 1e-12) for s in _mismatched(ref_segs, cand_segs)]
        if close and all(close):
            # the ids from the first differing segment on are renumbered
            seg = (ref[ys, xs] >= first) | (cand[ys, xs] >= first)
            out.notes.append(f"segments differ from id {first} at a near-tie of the score threshold")
        else:
            out.notes.append(f"segments differ from id {first}, not at a near-tie")
    return near, seg


def _panoptic_near(cls, masks, ys, xs, H, W, ref, cand, threshold, mask_threshold, overlap, ref_segs, cand_segs, out):
    num_labels = cls.shape[-1] - 1
    ps, pl = cls.softmax(-1).max(-1)
    keep = pl.ne(num_labels) & (ps > threshold)
    kept = keep.nonzero()[:, 0]
    probs = _mask384(masks[kept]).sigmoid()
    seg = torch.zeros(ys.numel(), dtype=torch.bool, device=ys.device)
    near = torch.zeros_like(seg)
    if kept.numel():
        for s in range(0, ys.numel(), 4096):
            v = _points(probs, ys[s : s + 4096], xs[s : s + 4096], H, W) * ps[kept].double()[:, None]
            if v.shape[0] < 2:
                continue
            top2 = v.topk(2, dim=0).values
            near[s : s + 4096] = (top2[0] - top2[1]) <= TOL * top2[0].abs()
    if ref_segs is not None and cand_segs is not None and _key(ref_segs) != _key(cand_segs):
        first = _first_mismatch(ref_segs, cand_segs)
        ok = True
        for sgm in _mismatched(ref_segs, cand_segs):
            # the segment's query: kept queries of its label with its score
            qs = [i for i, q in enumerate(kept.tolist()) if int(pl[q]) == sgm["label_id"] and round(ps[q].item(), 6) == sgm["score"]]
            if abs(sgm["score"] - threshold) <= TOL:
                continue
            ratios = []
            for i in qs:
                owner = ref if any(s is sgm for s in ref_segs) else cand
                area = int((owner == sgm["id"]).sum())
                full = F.interpolate(probs[i][None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
                orig = int((full * ps[kept[i]] >= mask_threshold).sum())
                ratios.append(area / max(orig, 1))
            if not any(abs(r - overlap) <= RATIO_TOL * overlap for r in ratios):
                ok = False
        if ok:
            seg = (ref[ys, xs] >= first) | (cand[ys, xs] >= first)
            out.notes.append(f"segments differ from id {first} at a near-tie of a keep/drop decision")
        else:
            out.notes.append(f"segments differ from id {first}, not at a near-tie")
    return near, seg


def _key(segs):
    return [(s["id"], s["label_id"], bool(s.get("was_fused", False))) for s in segs]


def _first_mismatch(a, b) -> int:
    for x, y in zip(_key(a), _key(b)):
        if x != y:
            return min(x[0], y[0])
    longer = a if len(a) > len(b) else b
    return longer[min(len(a), len(b))]["id"]


def _mismatched(a, b) -> list[dict]:
    ka, kb = set(_key(a)), set(_key(b))
    return [s for s in a if _key([s])[0] not in kb] + [s for s in b if _key([s])[0] not in ka]


def assert_equivalent(task: str, *args, **kwargs) -> Comparison:
    """``compare`` and raise AssertionError unless every differing pixel is a near-tie and the
    near-ties are at most 1e-4 of the pixels."""
    c = compare(task, *args, **kwargs)
    if not c.ok:
        raise AssertionError(f"not equivalent to transformers: {c}")
    return c


def segments_match(reference: list[dict], candidate: list[dict], score_tol: float = 1e-6) -> None:
    """Raise AssertionError unless the segments_info lists agree: same order, ids, label ids,
    was_fused, and scores within ``score_tol``."""
    if _key(reference) != _key(candidate):
        raise AssertionError(f"segments differ:\nreference {reference}\ncandidate {candidate}")
    for r, c in zip(reference, candidate):
        if abs(r["score"] - c["score"]) > score_tol:
            raise AssertionError(f"score of segment {r['id']}: reference {r['score']}, candidate {c['score']}")
