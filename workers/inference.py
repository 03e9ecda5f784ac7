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
from workers.prediction import Prediction, Segment, semantic_segments, unique_ids, with_stats


@dataclass(frozen=True)
class Thresholds:
    score: float = defaults.SCORE_THRESHOLD
    mask: float = defaults.MASK_THRESHOLD
    overlap: float = defaults.OVERLAP_MASK_AREA_THRESHOLD


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
                preds.append(Prediction(task, label_map, semantic_segments(label_map)))
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
                preds.append(Prediction(task, label_map, with_stats(label_map, segs)))
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
                segs = unique_ids(
                    Segment(int(s["id"]), int(s["label_id"]), float(s["score"]), was_fused=bool(s.get("was_fused")))
                    for s in res["segments_info"]
                )
                preds.append(Prediction(task, label_map, with_stats(label_map, segs)))
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
