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

Post-processing runs on the device of the logits; the label map comes back to the host (on CUDA
into pinned memory) for the label PNG or archive and the segments' areas and boxes. On CUDA
(``blends_on_device``) the worker also blends the overlay there: ``post_process(...,
keep_on_device=True)`` keeps the label map on the device (``Prediction.device_label_map``), and
``render_on_device`` uploads the image (from pinned memory), blends it with the palette
(``workers.render.overlay_tensor``, the same bytes as ``workers.render.overlay``) and copies
only the uint8 overlay back (pinned, non-blocking, one wait per batch) into
``Prediction.overlay``. On a CPU ``workers.render.overlay`` (numpy + OpenCV) blends, which is
faster there; tests force the torch path on CPU to check that both give the same bytes.
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


def blends_on_device(m: LoadedModel) -> bool:
    """Whether the worker blends overlays on the model's device (``render_on_device``): on CUDA.
    Elsewhere ``workers.render.overlay`` (numpy + OpenCV) does, faster on a CPU."""
    return m.spec.device.type == "cuda"


def _to_host(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """The tensors as numpy arrays on the host. From a CUDA device: copied into pinned memory
    without blocking, then one wait for the copies (an event on the device's current stream, not
    a device-wide synchronize); on the CPU the tensors' own memory."""
    if not tensors or tensors[0].device.type != "cuda":
        return [t.cpu().numpy() for t in tensors]
    bufs = []
    for t in tensors:
        buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        buf.copy_(t, non_blocking=True)
        bufs.append(buf)
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(tensors[0].device))
    done.synchronize()
    return [b.numpy() for b in bufs]


def _upload(image, device: torch.device) -> torch.Tensor:
    """An RGB uint8 image (numpy (H, W, 3) or PIL) as a tensor on ``device``; to CUDA from pinned
    memory, without blocking (the pinned block is not reused before the copy is done)."""
    arr = np.asarray(image, dtype=np.uint8)
    if device.type == "cuda":
        staged = torch.empty(arr.shape, dtype=torch.uint8, pin_memory=True)
        staged.numpy()[...] = arr
        return staged.to(device, non_blocking=True)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy()).to(device)


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
            return postprocess.semantic(cls, masks, size, dtype=torch.int32)
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
                 impl: str = "fast", keep_on_device: bool = False) -> Prediction:
    """Post-processing of one image's ``outputs`` for ``task`` at ``size`` (height, width), in
    segq's label-map encoding (module docstring). ``keep_on_device``: also keep the label map on
    the device of the logits (``Prediction.device_label_map``) for ``render_on_device``."""
    if task not in ("semantic", "instance", "panoptic"):
        raise ValueError(f"unknown task {task!r}")
    with torch.inference_mode():
        res = _raw(m, outputs, task, size, th, impl)
        if task == "semantic":
            device_map = res.to(torch.int32)
        elif task == "instance":
            device_map = res["segmentation"].to(torch.int32) + 1
        else:
            device_map = res["segmentation"].to(torch.int32).clamp_(min=0)
        label_map = _to_host([device_map])[0]
        if task == "semantic":
            pred = Prediction(task, label_map, semantic_segments(label_map))
        elif task == "instance":
            segs = [Segment(s["id"] + 1, int(s["label_id"]), float(s["score"])) for s in res["segments_info"]]
            pred = Prediction(task, label_map, with_stats(label_map, segs))
        else:
            segs = unique_ids(
                Segment(int(s["id"]), int(s["label_id"]), float(s["score"]), was_fused=bool(s.get("was_fused")))
                for s in res["segments_info"]
            )
            pred = Prediction(task, label_map, with_stats(label_map, segs))
        if keep_on_device:
            pred.device_label_map = device_map
        return pred


def render_on_device(m: LoadedModel, preds: list[Prediction], images: list) -> None:
    """The overlay of each prediction, blended on the device where ``post_process(...,
    keep_on_device=True)`` left its label map: each image (RGB uint8, numpy (H, W, 3) or PIL) is
    uploaded, blended with ``workers.render.color_table``'s palette by
    ``workers.render.overlay_tensor``, and only the uint8 overlay is copied back (on CUDA into
    pinned memory, one wait for the whole batch). Sets ``pred.overlay`` (the same bytes as
    ``workers.render.overlay``) and drops ``pred.device_label_map``."""
    from workers import render

    if len(preds) != len(images):
        raise ValueError(f"render_on_device: {len(preds)} predictions for {len(images)} images")
    blended = []
    with torch.inference_mode():
        for pred, image in zip(preds, images):
            label_map = pred.device_label_map
            if label_map is None:
                raise ValueError("render_on_device: no label map on the device "
                                 "(post_process(..., keep_on_device=True) first)")
            lut, zero_is_empty = render.color_table(pred, m.labels)
            if pred.label_map.size and int(pred.label_map.max()) >= len(lut):
                # the CPU path raises IndexError here; on CUDA an out-of-range index would be a
                # device-side assert that breaks the process's CUDA context, so check on the host
                raise ValueError(f"render_on_device: label {int(pred.label_map.max())} has no colour "
                                 f"({len(lut)} table entries)")
            device = label_map.device
            blended.append(render.overlay_tensor(_upload(image, device), label_map,
                                                 torch.from_numpy(lut).to(device), zero_is_empty))
            pred.device_label_map = None
        for pred, overlay in zip(preds, _to_host(blended)):
            pred.overlay = overlay


def predict(m: LoadedModel, images: list[Image.Image], task: str, th: Thresholds = Thresholds(),
            keep_on_device: bool = False) -> Timed:
    """Segment a batch of images (all of one size when batched).

    The forward pass runs on the whole batch; post-processing runs image by image, since its
    intermediates (every class's probability map at full size) grow with the batch and, on a
    CPU, make a batched call slower than a loop. ``keep_on_device``: as ``post_process`` (then
    ``render_on_device``, which ``seconds`` does not include).
    """
    _sync(m.spec.device)
    started = time.perf_counter()
    outputs = forward(m, images)
    preds = post_process_batch(m, outputs, [(img.height, img.width) for img in images], task, th,
                               keep_on_device=keep_on_device)
    _sync(m.spec.device)
    return Timed(preds, time.perf_counter() - started)


def post_process_batch(m: LoadedModel, outputs, sizes: list[tuple[int, int]], task: str,
                       th: Thresholds = Thresholds(), keep_on_device: bool = False) -> list[Prediction]:
    """``post_process`` of each image of a batch's ``outputs``, image by image (``predict``)."""
    preds = []
    for i, size in enumerate(sizes):
        one = SimpleNamespace(
            class_queries_logits=outputs.class_queries_logits[i : i + 1],
            masks_queries_logits=outputs.masks_queries_logits[i : i + 1],
        )
        preds.append(post_process(m, one, task, size, th, m.postprocess, keep_on_device=keep_on_device))
    return preds
