"""A video chunk's frames through the model: batches in, overlay frames and label maps out.

``ChunkRenderer`` takes decoded RGB frames one by one (``add``), or decodes them ahead in a
thread of its own (``add_all``, ``workers.pipeline.Ahead``), and keeps the model busy:

- every ``batch_size`` frames it preprocesses the batch and submits it to the model stage
  (``workers.pipeline.ModelStage``, the worker's one thread for forward passes), and keeps one
  batch in the stage while it post-processes the one before (``ahead``);
- post-processing (per frame) runs in the task's thread; it keeps the label map and segment
  list of every frame for the chunk's label archive;
- rendering each overlay (with the inference FPS written on it if asked, as the article's script
  does) and handing it to the part encoder (``write``) run behind, on an encode thread of their
  own (``workers.pipeline.Behind``), in frame order.

With ``device_blend`` (default: on a CUDA device, ``workers.inference.blends_on_device``) the
overlays are blended on the device in the task's thread right after post-processing
(``workers.inference.render_on_device``: the label maps stay there until then, and only the uint8
overlays and the label maps come back), and the encode thread only writes the FPS on them and
encodes them. Without it (the CPU) the encode thread blends them (``workers.render.overlay``).
Both give the same bytes. The blend is not counted in the inference time (nor the FPS).

Errors of any stage are raised in the task's thread (``add``, ``archive``), so the task skeleton
maps them to the job; leaving the ``with`` block on an error stops the encode thread first.
"""

from __future__ import annotations

import collections
import io
import json
import time
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from workers import inference, render, video
from workers.models import LoadedModel
from workers.pipeline import Ahead, Behind, InlineStage, ModelStage


class ChunkRenderer:
    def __init__(self, model: LoadedModel, task: str, batch_size: int, write: Callable[[np.ndarray], None],
                 annotate_fps: bool = False, stage: ModelStage | InlineStage | None = None, ahead: int = 1,
                 check: Callable[[], None] | None = None, device_blend: bool | None = None):
        self.model, self.task, self.batch_size = model, task, batch_size
        self.device_blend = inference.blends_on_device(model) if device_blend is None else device_blend
        self.check = check  # called before each batch; raises to stop (a canceled job)
        self.write, self.annotate_fps = write, annotate_fps
        self.stage = stage if stage is not None else InlineStage()
        self.ahead = ahead
        self.dtype = render.label_map_dtype(model.max_label_value)
        self.labels: list[np.ndarray] = []
        self.segments: list[list[dict]] = []
        self.inference_s = 0.0  # preprocessing + forward passes + post-processing, no waiting
        self._batch: list[np.ndarray] = []
        self._pending: collections.deque = collections.deque()  # (frames, future, preprocess seconds)
        self._encode = Behind(self._render, maxsize=2 * batch_size, name="segq-encode")

    def add(self, rgb: np.ndarray) -> None:
        self._batch.append(rgb)
        if len(self._batch) == self.batch_size:
            self._submit()

    def add_all(self, frames: Iterable[np.ndarray]) -> None:
        """``add`` every frame of ``frames``, iterated ahead in a thread of its own (the decoder)
        up to two batches ahead; its errors are raised here."""
        with Ahead(frames, maxsize=2 * self.batch_size, name="segq-decode") as decoded:
            for rgb in decoded:
                self.add(rgb)

    def _submit(self) -> None:
        if self.check is not None:
            self.check()
        frames, self._batch = self._batch, []
        t0 = time.perf_counter()
        inputs = inference.preprocess(self.model, [Image.fromarray(f) for f in frames])
        pre = time.perf_counter() - t0
        self._pending.append((frames, self.stage.submit(self.model, inputs, items=len(frames)), pre))
        while len(self._pending) > self.ahead:
            self._finish(*self._pending.popleft())

    def _finish(self, frames: list[np.ndarray], future, pre: float) -> None:
        outputs = future.result()
        t0 = time.perf_counter()
        preds = inference.post_process_batch(self.model, outputs, [f.shape[:2] for f in frames], self.task,
                                             keep_on_device=self.device_blend)
        seconds = pre + future.seconds + time.perf_counter() - t0
        self.inference_s += seconds
        fps = len(frames) / seconds if seconds > 0 else 0.0
        if self.device_blend:
            inference.render_on_device(self.model, preds, frames)
        for rgb, pred in zip(frames, preds):
            self.labels.append(pred.label_map.astype(self.dtype))
            self.segments.append([render.segment_entry(s, pred.task, self.model.labels) for s in pred.segments])
            self._encode.put((rgb, pred, fps))

    def _render(self, item) -> None:
        rgb, pred, fps = item
        frame = pred.overlay if pred.overlay is not None else render.overlay(rgb, pred, self.model.labels)
        if self.annotate_fps:
            video.annotate_fps(frame, fps)
        self.write(frame)

    def flush(self) -> None:
        """Every frame added so far through the model (the encode thread may still be behind)."""
        if self._batch:
            self._submit()
        while self._pending:
            self._finish(*self._pending.popleft())

    def archive(self, start: int, end: int) -> bytes:
        """The chunk's label archive (``.npz``): ``labels`` (frames, H, W), ``frames``, ``segments``.
        Every overlay has been written when it returns."""
        self.flush()
        self._encode.close()
        buf = io.BytesIO()
        np.savez_compressed(buf, labels=np.stack(self.labels), frames=np.arange(start, end),
                            segments=np.array(json.dumps(self.segments)))
        return buf.getvalue()

    def abort(self) -> None:
        """Stop: drop the batches not yet in the model and the overlays not yet encoded."""
        for _, future, _ in self._pending:
            future.cancel()
        self._pending.clear()
        self._encode.abort()

    def __enter__(self) -> "ChunkRenderer":
        return self

    def __exit__(self, *_) -> None:
        self.abort()  # after archive() a no-op; on an error it stops the encode thread first
