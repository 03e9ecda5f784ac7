"""The one inference path: a ``Segmenter`` per loaded model, for every caller.

A ``Segmenter`` owns a loaded model (``workers.model.models``), its image processor, the thresholds, how
post-processing runs (segq's exact fast path, or transformers' own functions with
``SEGQ_POSTPROCESS=reference``) and the model stage its forward passes run on (the worker's one
thread for them, ``workers.model.stage.ModelStage``; code outside a worker runs them inline). Every
caller uses the same two steps: the image task, a video chunk's pipeline, the tests and every
benchmark.

- :meth:`Segmenter.submit` preprocesses a batch of images (the caller's thread) and queues its
  forward pass on the stage: a :class:`Pending` batch;
- :meth:`Segmenter.finish` waits for that pass, post-processes each image (the caller's thread)
  and, when asked (on CUDA by default), blends each overlay on the device beside its label map;
  it returns the predictions and where the time went (:class:`Times`).

So while one batch is in the model, the caller post-processes the one before. ``predict`` is the
two at once.

segq re-encodes the label maps into one convention for all tasks:

- semantic: the class id of every pixel (transformers' map as is);
- instance: segment id = transformers' id + 1, so that 0 means "no segment" (transformers
  uses -1 for that and starts instance ids at 0);
- panoptic: transformers' segment id (they start at 1; 0 is unassigned), with its -1
  ("nothing found") mapped to 0.

On the device. Post-processing runs on the device of the logits; the label map comes back to the
host (on CUDA into pinned memory, one wait for the batch) for the label PNG or archive and the
segments' areas and boxes. With ``blend`` (default: on CUDA) the overlay is blended there too,
from the label map still on the device and the image uploaded from pinned memory
(``workers.media.render.overlay_tensor``, the same bytes as the CPU's ``workers.media.render.overlay``), and
only the uint8 overlay comes back, into ``Prediction.overlay``; on a CPU ``workers.media.render``
(numpy + OpenCV) is faster and blends later. With the torchvision image processor on CUDA the
resize and normalisation run on the GPU too; with the PIL one the batch is copied from pinned
memory.

Batching across callers: the stage may run the passes of several ``submit`` calls as one
(``SEGQ_MAX_BATCH``: same model, same input shape, never padded), through :meth:`batch_key`,
:meth:`concat` and :meth:`split`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from segq import defaults
from workers.model import pilprep
from workers.model.models import WARMUP_SIZE, LoadedModel
from workers.media.prediction import Prediction, Segment, semantic_segments, unique_ids, with_stats


@dataclass(frozen=True)
class Thresholds:
    score: float = defaults.SCORE_THRESHOLD
    mask: float = defaults.MASK_THRESHOLD
    overlap: float = defaults.OVERLAP_MASK_AREA_THRESHOLD


@dataclass
class Times:
    """Seconds of one batch, by stage: preprocessing, waiting for the model stage, the forward
    pass (the whole pass when batched with others), post-processing, the device blend."""

    preprocess_s: float = 0.0
    wait_s: float = 0.0
    forward_s: float = 0.0
    postprocess_s: float = 0.0
    blend_s: float = 0.0
    items_per_pass: int = 0
    # CPU seconds of the calling thread's steps (``time.thread_time``): what a task thread spends
    # around the device's work. On a CPU device the post-processing runs on the model stage's
    # thread (the model's own arithmetic), so it is not counted here.
    preprocess_cpu_s: float = 0.0
    postprocess_cpu_s: float = 0.0
    blend_cpu_s: float = 0.0

    @property
    def inference_s(self) -> float:
        """Preprocessing, the forward pass and post-processing: what FPS figures divide by."""
        return self.preprocess_s + self.forward_s + self.postprocess_s

    def add(self, other: "Times") -> None:
        for name in ("preprocess_s", "wait_s", "forward_s", "postprocess_s", "blend_s",
                     "preprocess_cpu_s", "postprocess_cpu_s", "blend_cpu_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.items_per_pass = max(self.items_per_pass, other.items_per_pass)


@dataclass
class Result:
    predictions: list[Prediction]
    times: Times

    @property
    def seconds(self) -> float:
        return self.times.inference_s


@dataclass
class Pending:
    """A batch submitted to the model stage: its images, their sizes, the pass's future."""

    images: list
    sizes: list[tuple[int, int]]
    future: object
    preprocess_s: float
    submitted: float = field(default_factory=time.perf_counter)
    preprocess_cpu_s: float = 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def _pil(image) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))


def _size(image) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.height, image.width
    return tuple(np.asarray(image).shape[:2])


class Segmenter:
    """One loaded model and everything needed to run it (module docstring)."""

    def __init__(self, model: LoadedModel, stage=None, thresholds: Thresholds = Thresholds(),
                 blend: bool | None = None):
        from workers.model.stage import InlineStage

        self.model = model
        self.stage = stage if stage is not None else InlineStage()
        self.thresholds = thresholds
        self.blends = model.spec.device.type == "cuda" if blend is None else blend

    # -- what callers read of the model ---------------------------------------------------
    @property
    def name(self) -> str:
        return self.model.name

    @property
    def labels(self):
        return self.model.labels

    @property
    def device(self) -> torch.device:
        return self.model.spec.device

    # -- the two steps -----------------------------------------------------------------------
    def preprocess(self, images: list) -> dict:
        """The image processor on a batch: the model's inputs (any thread may run it). With the
        torchvision processor on CUDA the resize and normalisation run on the GPU (only the uint8
        pixels cross the bus); the PIL processor runs on the CPU and its float output is copied
        from pinned memory."""
        m = self.model
        images = [_pil(i) for i in images]
        if m.spec.device.type == "cuda" and m.processor_backend == "torchvision":
            inputs = m.processor(images=images, return_tensors="pt", device=m.spec.device)
        else:
            plan = m.pil_plan
            if plan is not None and pilprep.applies(images):  # the same outputs, to the bit
                inputs = plan(images)
            else:
                inputs = m.processor(images=images, return_tensors="pt")
            if m.spec.device.type == "cuda":
                inputs = {k: v.pin_memory() for k, v in inputs.items() if v is not None}
        kwargs = {"pixel_values": inputs["pixel_values"]}
        if inputs.get("pixel_mask") is not None:
            kwargs["pixel_mask"] = inputs["pixel_mask"]
        return kwargs

    def submit(self, images: list) -> Pending:
        """Preprocess ``images`` (one size when more than one: a batch is never padded) and queue
        their forward pass on the model stage."""
        t0, c0 = time.perf_counter(), time.thread_time()
        inputs = self.preprocess(images)
        pre, pre_cpu = time.perf_counter() - t0, time.thread_time() - c0
        future = self.stage.submit(self, inputs, items=len(images))
        return Pending(list(images), [_size(i) for i in images], future, pre, preprocess_cpu_s=pre_cpu)

    def finish(self, pending: Pending, task: str, blend: bool | None = None) -> Result:
        """Wait for ``pending``'s pass, post-process each image for ``task``; with ``blend``
        (default: this segmenter's), blend each overlay on the device into ``pred.overlay``."""
        outputs = pending.future.result()
        times = Times(preprocess_s=pending.preprocess_s, wait_s=getattr(pending.future, "queued_s", 0.0),
                      forward_s=getattr(pending.future, "seconds", 0.0),
                      items_per_pass=getattr(pending.future, "batch_items", len(pending.images)),
                      preprocess_cpu_s=pending.preprocess_cpu_s)
        blend = self.blends if blend is None else blend
        if self.model.spec.device.type == "cpu":
            # on the stage's thread, the one with all the CPU threads (workers.model.stage)
            done = self.stage.call(self.post_process_batch, outputs, pending.sizes, task, keep_on_device=blend)
            preds = done.result()
            times.wait_s += done.queued_s
            times.postprocess_s = done.seconds
        else:
            t0, c0 = time.perf_counter(), time.thread_time()
            preds = self.post_process_batch(outputs, pending.sizes, task, keep_on_device=blend)
            times.postprocess_s, times.postprocess_cpu_s = time.perf_counter() - t0, time.thread_time() - c0
        if blend:
            t1, c1 = time.perf_counter(), time.thread_time()
            self.blend(preds, pending.images)
            times.blend_s, times.blend_cpu_s = time.perf_counter() - t1, time.thread_time() - c1
        return Result(preds, times)

    def predict(self, images: list, task: str, blend: bool | None = None) -> Result:
        """``submit`` then ``finish``."""
        return self.finish(self.submit(images), task, blend=blend)

    # -- the stage's side: one pass, and passes taken together -----------------------------------
    def forward(self, inputs: dict):
        """The model on preprocessed inputs, on its device (the stage's thread runs it): outputs
        with float32 logits, the device synchronised (the pass's time is the device's)."""
        m = self.model
        kwargs = {"pixel_values": inputs["pixel_values"].to(m.spec.device, dtype=m.spec.dtype, non_blocking=True)}
        if inputs.get("pixel_mask") is not None:
            kwargs["pixel_mask"] = inputs["pixel_mask"].to(m.spec.device, non_blocking=True)
        with torch.inference_mode():
            out = m.model(**kwargs)
        outputs = SimpleNamespace(class_queries_logits=out.class_queries_logits.float(),
                                  masks_queries_logits=out.masks_queries_logits.float())
        _sync(m.spec.device)
        return outputs

    def batch_key(self, inputs: dict) -> tuple:
        """Passes with equal keys may run as one: same input shape (never padded together:
        padding changes Mask2Former's results), same mask."""
        mask = inputs.get("pixel_mask")
        return (tuple(inputs["pixel_values"].shape[1:]), mask is not None and bool(mask.all()))

    @staticmethod
    def concat(inputs: list[dict]) -> dict:
        out = {"pixel_values": torch.cat([i["pixel_values"] for i in inputs])}
        if all(i.get("pixel_mask") is not None for i in inputs):
            out["pixel_mask"] = torch.cat([i["pixel_mask"] for i in inputs])
        return out

    @staticmethod
    def split(outputs, counts: list[int]) -> list:
        parts, start = [], 0
        for n in counts:
            parts.append(SimpleNamespace(class_queries_logits=outputs.class_queries_logits[start:start + n],
                                         masks_queries_logits=outputs.masks_queries_logits[start:start + n]))
            start += n
        return parts

    def warm_up(self, batch: int = 1, size: tuple[int, int] = WARMUP_SIZE) -> float:
        """One forward pass on ``batch`` plain images of ``size`` (width, height), on the stage:
        with ``SEGQ_COMPILE`` on, the compilation of that input shape (torch keeps CUDA graphs
        per thread, and every later pass runs on the stage's). Seconds."""
        images = [Image.new("RGB", size, (124, 116, 104)) for _ in range(batch)]
        started = time.perf_counter()
        self.stage.submit(self, self.preprocess(images), items=0).result()
        return time.perf_counter() - started

    # -- post-processing -----------------------------------------------------------------------
    def _raw(self, outputs, task: str, size: tuple[int, int]):
        """One image's post-processing in transformers' own encoding: a semantic class map, or the
        instance/panoptic ``{"segmentation", "segments_info"}``, by segq's exact fast path
        (``workers.model.postprocess``) or transformers' functions (``SEGQ_POSTPROCESS=reference``)."""
        m, th = self.model, self.thresholds
        if m.postprocess == "fast":
            from workers.model import postprocess

            cls, masks = outputs.class_queries_logits[0], outputs.masks_queries_logits[0]
            if task == "semantic":
                return postprocess.semantic(cls, masks, size, dtype=torch.int32)
            if task == "instance":
                return postprocess.instance(cls, masks, size, threshold=th.score, mask_threshold=th.mask,
                                            overlap_mask_area_threshold=th.overlap)
            return postprocess.panoptic(cls, masks, size, threshold=th.score, mask_threshold=th.mask,
                                        overlap_mask_area_threshold=th.overlap,
                                        label_ids_to_fuse=m.labels.stuff_ids)
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

    def post_process(self, outputs, task: str, size: tuple[int, int], keep_on_device: bool = False) -> Prediction:
        """Post-processing of one image's ``outputs`` for ``task`` at ``size`` (height, width), in
        segq's label-map encoding (module docstring). ``keep_on_device``: also keep the label map on
        the device of the logits (``Prediction.device_label_map``) for ``blend``."""
        if task not in ("semantic", "instance", "panoptic"):
            raise ValueError(f"unknown task {task!r}")
        with torch.inference_mode():
            res = self._raw(outputs, task, size)
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

    def post_process_batch(self, outputs, sizes: list[tuple[int, int]], task: str,
                           keep_on_device: bool = False) -> list[Prediction]:
        """``post_process`` of each image of a batch, image by image: its intermediates grow with
        the batch and, on a CPU, make a batched call slower than a loop."""
        return [self.post_process(part, task, size, keep_on_device=keep_on_device)
                for part, size in zip(self.split(outputs, [1] * len(sizes)), sizes)]

    def blend(self, preds: list[Prediction], images: list) -> None:
        """Each prediction's overlay, blended on the device where ``post_process(...,
        keep_on_device=True)`` left its label map: each image (RGB uint8, numpy (H, W, 3) or PIL)
        is uploaded, blended with ``workers.media.render.color_table``'s palette by
        ``workers.media.render.overlay_tensor``, and only the uint8 overlay is copied back (on CUDA into
        pinned memory, one wait for the whole batch). Sets ``pred.overlay`` (the same bytes as
        ``workers.media.render.overlay``) and drops ``pred.device_label_map``."""
        from workers.media import render

        if len(preds) != len(images):
            raise ValueError(f"blend: {len(preds)} predictions for {len(images)} images")
        blended = []
        with torch.inference_mode():
            for pred, image in zip(preds, images):
                label_map = pred.device_label_map
                if label_map is None:
                    raise ValueError("blend: no label map on the device (post_process(..., keep_on_device=True) first)")
                lut, zero_is_empty = render.color_table(pred, self.model.labels)
                if pred.label_map.size and int(pred.label_map.max()) >= len(lut):
                    # the CPU path raises IndexError here; on CUDA an out-of-range index would be a
                    # device-side assert that breaks the process's CUDA context, so check on the host
                    raise ValueError(f"blend: label {int(pred.label_map.max())} has no colour "
                                     f"({len(lut)} table entries)")
                device = label_map.device
                blended.append(render.overlay_tensor(_upload(image, device), label_map,
                                                     torch.from_numpy(lut).to(device), zero_is_empty))
                pred.device_label_map = None
            for pred, overlay in zip(preds, _to_host(blended)):
                pred.overlay = overlay
