"""Forward pass and post-processing: images in, label maps and segments out.

Post-processing is transformers' own ``post_process_{semantic,instance,panoptic}_segmentation``;
segq only re-encodes their maps into one convention for all tasks:

- semantic: the class id of every pixel (transformers' map as is);
- instance: segment id = transformers' id + 1, so that 0 means "no segment" (transformers
  uses -1 for that and starts instance ids at 0);
- panoptic: transformers' segment id (they start at 1; 0 is unassigned), with its -1
  ("nothing found") mapped to 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from segq import defaults
from workers.models import LoadedModel


@dataclass(frozen=True)
class Thresholds:
    score: float = defaults.SCORE_THRESHOLD
    mask: float = defaults.MASK_THRESHOLD
    overlap: float = defaults.OVERLAP_MASK_AREA_THRESHOLD


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


@dataclass
class Timed:
    predictions: list[Prediction]
    seconds: float  # preprocessing + forward + post-processing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward(m: LoadedModel, images: list[Image.Image]):
    """Preprocess and run the model on a batch. Returns outputs with float32 logits."""
    inputs = m.processor(images=images, return_tensors="pt")
    pixel_values = inputs["pixel_values"].to(m.spec.device, dtype=m.spec.dtype, non_blocking=True)
    pixel_mask = inputs.get("pixel_mask")
    kwargs = {"pixel_values": pixel_values}
    if pixel_mask is not None:
        kwargs["pixel_mask"] = pixel_mask.to(m.spec.device, non_blocking=True)
    with torch.inference_mode():
        out = m.model(**kwargs)
    return SimpleNamespace(
        class_queries_logits=out.class_queries_logits.float(),
        masks_queries_logits=out.masks_queries_logits.float(),
    )


def post_process(m: LoadedModel, outputs, task: str, sizes: list[tuple[int, int]], th: Thresholds) -> list[Prediction]:
    """transformers' post-processing of ``outputs`` for ``task`` at ``sizes`` (height, width)."""
    proc = m.processor
    preds: list[Prediction] = []
    with torch.inference_mode():
        if task == "semantic":
            for seg in proc.post_process_semantic_segmentation(outputs, target_sizes=sizes):
                label_map = seg.to(torch.int32).cpu().numpy()
                preds.append(Prediction(task, label_map, _semantic_segments(label_map)))
        elif task == "instance":
            results = proc.post_process_instance_segmentation(
                outputs,
                threshold=th.score,
                mask_threshold=th.mask,
                overlap_mask_area_threshold=th.overlap,
                target_sizes=sizes,
            )
            for res in results:
                label_map = (res["segmentation"].to(torch.int32) + 1).cpu().numpy()
                segs = [Segment(s["id"] + 1, int(s["label_id"]), float(s["score"])) for s in res["segments_info"]]
                preds.append(Prediction(task, label_map, _with_stats(label_map, segs)))
        elif task == "panoptic":
            results = proc.post_process_panoptic_segmentation(
                outputs,
                threshold=th.score,
                mask_threshold=th.mask,
                overlap_mask_area_threshold=th.overlap,
                label_ids_to_fuse=m.labels.stuff_ids,
                target_sizes=sizes,
            )
            for res in results:
                label_map = res["segmentation"].to(torch.int32).clamp_(min=0).cpu().numpy()
                segs = _unique_ids(
                    Segment(int(s["id"]), int(s["label_id"]), float(s["score"]), was_fused=bool(s.get("was_fused")))
                    for s in res["segments_info"]
                )
                preds.append(Prediction(task, label_map, _with_stats(label_map, segs)))
        else:
            raise ValueError(f"unknown task {task!r}")
    return preds


def predict(m: LoadedModel, images: list[Image.Image], task: str, th: Thresholds = Thresholds()) -> Timed:
    """Segment a batch of images (all of one size when batched).

    The forward pass runs on the whole batch; post-processing runs image by image, since its
    intermediates (every class's probability map at full size) grow with the batch and, on a
    CPU, make a batched call slower than a loop.
    """
    _sync(m.spec.device)
    started = time.perf_counter()
    outputs = forward(m, images)
    preds = []
    for i, img in enumerate(images):
        one = SimpleNamespace(
            class_queries_logits=outputs.class_queries_logits[i : i + 1],
            masks_queries_logits=outputs.masks_queries_logits[i : i + 1],
        )
        preds += post_process(m, one, task, [(img.height, img.width)], th)
    _sync(m.spec.device)
    return Timed(preds, time.perf_counter() - started)


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


def _with_stats(label_map: np.ndarray, segments: list[Segment]) -> list[Segment]:
    """Area and bounding box of each segment; only segments present in the label map are kept
    (transformers lists instances whose pixels all went to other segments, with area 0)."""
    stats = _stats(label_map, [s.id for s in segments])
    for s in segments:
        s.area, s.bbox = stats[s.id]
    return [s for s in segments if s.area > 0]


def _unique_ids(segments) -> list[Segment]:
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


def _semantic_segments(label_map: np.ndarray) -> list[Segment]:
    present = [int(i) for i in np.flatnonzero(np.bincount(label_map.ravel()))]
    return _with_stats(label_map, [Segment(i, i, None) for i in present])
