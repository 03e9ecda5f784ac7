"""Forward pass and post-processing: images in, label maps and segments out.

Post-processing is segq's exact fast path (``workers.postprocess``: the same label maps as
transformers' ``post_process_{semantic,instance,panoptic}_segmentation`` but for float near-ties,
without their full-resolution per-class tensors), or transformers' own functions with
``SEGQ_POSTPROCESS=reference``. segq re-encodes the maps into one convention for all tasks:

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


def preprocess(m: LoadedModel, images: list[Image.Image]) -> dict:
    """The image processor on a batch: the model's inputs (any thread may run it).

    With the torchvision processor (``SEGQ_IMAGE_PROCESSOR=torchvision``) on a CUDA worker the
    resize and normalisation run on the GPU (transformers' ``device`` argument), so only the
    uint8 pixels cross the bus; the PIL processor runs on the CPU and its float output is copied
    from pinned memory."""
    if m.spec.device.type == "cuda" and m.processor_backend == "torchvision":
        inputs = m.processor(images=images, return_tensors="pt", device=m.spec.device)
    else:
        inputs = m.processor(images=images, return_tensors="pt")
        if m.spec.device.type == "cuda":
            inputs = {k: v.pin_memory() for k, v in inputs.items() if v is not None}
    kwargs = {"pixel_values": inputs["pixel_values"]}
    if inputs.get("pixel_mask") is not None:
        kwargs["pixel_mask"] = inputs["pixel_mask"]
    return kwargs


def run_model(m: LoadedModel, inputs: dict):
    """The model on preprocessed inputs (``preprocess``), on its device. Returns outputs with
    float32 logits. In a worker only the model stage (``workers.pipeline``) calls it."""
    kwargs = {"pixel_values": inputs["pixel_values"].to(m.spec.device, dtype=m.spec.dtype, non_blocking=True)}
    if inputs.get("pixel_mask") is not None:
        kwargs["pixel_mask"] = inputs["pixel_mask"].to(m.spec.device, non_blocking=True)
    with torch.inference_mode():
        out = m.model(**kwargs)
    return SimpleNamespace(
        class_queries_logits=out.class_queries_logits.float(),
        masks_queries_logits=out.masks_queries_logits.float(),
    )


def forward(m: LoadedModel, images: list[Image.Image]):
    """Preprocess and run the model on a batch. Returns outputs with float32 logits."""
    return run_model(m, preprocess(m, images))


def _raw(m: LoadedModel, outputs, task: str, size: tuple[int, int], th: Thresholds, impl: str):
    """One image's post-processing in transformers' own encoding: a semantic class map, or the
    instance/panoptic ``{"segmentation", "segments_info"}``. ``impl``: ``fast`` (segq's exact fast
    path, ``workers.postprocess``) or ``reference`` (transformers' functions)."""
    if impl == "fast":
        from workers import postprocess

        cls, masks = outputs.class_queries_logits[0], outputs.masks_queries_logits[0]
        if task == "semantic":
            return postprocess.semantic(cls, masks, size)
        if task == "instance":
            return postprocess.instance(cls, masks, size, threshold=th.score, mask_threshold=th.mask,
                                        overlap_mask_area_threshold=th.overlap)
        return postprocess.panoptic(cls, masks, size, threshold=th.score, mask_threshold=th.mask,
                                    overlap_mask_area_threshold=th.overlap, label_ids_to_fuse=m.labels.stuff_ids)
    proc = m.processor
    if task == "semantic":
        return proc.post_process_semantic_segmentation(outputs, target_sizes=[size])[0]
    if task == "instance":
        return proc.post_process_instance_segmentation(
            outputs, threshold=th.score, mask_threshold=th.mask, overlap_mask_area_threshold=th.overlap,
            target_sizes=[size])[0]
    return proc.post_process_panoptic_segmentation(
        outputs, threshold=th.score, mask_threshold=th.mask, overlap_mask_area_threshold=th.overlap,
        label_ids_to_fuse=m.labels.stuff_ids, target_sizes=[size])[0]


def post_process(m: LoadedModel, outputs, task: str, size: tuple[int, int], th: Thresholds,
                 impl: str = "fast") -> Prediction:
    """Post-processing of one image's ``outputs`` for ``task`` at ``size`` (height, width), in
    segq's label-map encoding (module docstring)."""
    if task not in ("semantic", "instance", "panoptic"):
        raise ValueError(f"unknown task {task!r}")
    with torch.inference_mode():
        res = _raw(m, outputs, task, size, th, impl)
        if task == "semantic":
            label_map = res.to(torch.int32).cpu().numpy()
            return Prediction(task, label_map, semantic_segments(label_map))
        if task == "instance":
            label_map = (res["segmentation"].to(torch.int32) + 1).cpu().numpy()
            segs = [Segment(s["id"] + 1, int(s["label_id"]), float(s["score"])) for s in res["segments_info"]]
            return Prediction(task, label_map, with_stats(label_map, segs))
        label_map = res["segmentation"].to(torch.int32).clamp_(min=0).cpu().numpy()
        segs = unique_ids(
            Segment(int(s["id"]), int(s["label_id"]), float(s["score"]), was_fused=bool(s.get("was_fused")))
            for s in res["segments_info"]
        )
        return Prediction(task, label_map, with_stats(label_map, segs))


def predict(m: LoadedModel, images: list[Image.Image], task: str, th: Thresholds = Thresholds()) -> Timed:
    """Segment a batch of images (all of one size when batched).

    The forward pass runs on the whole batch; post-processing runs image by image, since its
    intermediates (every class's probability map at full size) grow with the batch and, on a
    CPU, make a batched call slower than a loop.
    """
    _sync(m.spec.device)
    started = time.perf_counter()
    outputs = forward(m, images)
    preds = post_process_batch(m, outputs, [(img.height, img.width) for img in images], task, th)
    _sync(m.spec.device)
    return Timed(preds, time.perf_counter() - started)


def post_process_batch(m: LoadedModel, outputs, sizes: list[tuple[int, int]], task: str,
                       th: Thresholds = Thresholds()) -> list[Prediction]:
    """``post_process`` of each image of a batch's ``outputs``, image by image (``predict``)."""
    preds = []
    for i, size in enumerate(sizes):
        one = SimpleNamespace(
            class_queries_logits=outputs.class_queries_logits[i : i + 1],
            masks_queries_logits=outputs.masks_queries_logits[i : i + 1],
        )
        preds.append(post_process(m, one, task, size, th, m.postprocess))
    return preds
