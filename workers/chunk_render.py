"""A video chunk's frames through the model: batches in, overlay frames and label maps out.

``ChunkRenderer`` takes decoded RGB frames one by one (``add``), or decodes them ahead in a
thread of its own (``add_all``, ``workers.pipeline.Ahead``), and keeps the model busy:

- every ``batch_size`` frames it preprocesses the batch and submits it to the model stage
  (``workers.pipeline.ModelStage``, the worker's one thread for forward passes), and keeps one
  batch in the stage while it post-processes the one before (``ahead``);
- post-processing (per frame) runs in the task's thread; each frame's label map goes straight
  to the chunk's label archive (:class:`LabelArchive`: spooled to a temporary file, so a chunk
  holds no more than a few frames in memory, however many it has), its segment list is kept;
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
import tempfile
import time
import zipfile
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from workers import inference, render, video
from workers.models import LoadedModel
from workers.pipeline import Ahead, Behind, InlineStage, ModelStage


class LabelArchive:
    """A chunk's label maps, written as they come, then packed into the ``.npz`` of the layout
    (``labels`` (frames, H, W), ``frames``, ``segments``): the maps are spooled, raw, to a
    temporary file (the ``.npy`` header needs the count, known only at the end), and copied into the
    compressed archive a block at a time, so memory holds one frame, never the chunk."""

    BLOCK = 8 * 1024 * 1024

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self.shape: tuple[int, int] | None = None
        self.count = 0
        self._spool = tempfile.TemporaryFile(prefix="segq-labels-")

    def add(self, label_map: np.ndarray) -> None:
        if self.shape is None:
            self.shape = tuple(label_map.shape)
        elif tuple(label_map.shape) != self.shape:
            raise ValueError(f"label maps of one chunk differ in size: {label_map.shape} after {self.shape}")
        self._spool.write(np.ascontiguousarray(label_map, dtype=self.dtype).tobytes())
        self.count += 1

    def write(self, target, frames: np.ndarray, segments: list) -> None:
        """Pack the archive into ``target`` (a path or a binary file)."""
        h, w = self.shape or (0, 0)
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            with zf.open("labels.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(
                    f, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                        "shape": (self.count, h, w)})
                self._spool.seek(0)
                while block := self._spool.read(self.BLOCK):
                    f.write(block)
            for name, array in (("frames", frames), ("segments", np.array(json.dumps(segments)))):
                with zf.open(f"{name}.npy", "w") as f:
                    np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)

    def close(self) -> None:
        self._spool.close()


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
        self.labels = LabelArchive(self.dtype)
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
            self.labels.add(pred.label_map)
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

    def archive(self, start: int, end: int, target=None) -> bytes | None:
        """The chunk's label archive (``.npz``): ``labels`` (frames, H, W), ``frames``, ``segments``,
        written to ``target`` (a path or binary file), or returned as bytes without one. Every
        overlay has been written when it returns."""
        self.flush()
        self._encode.close()
        if target is not None:
            self.labels.write(target, np.arange(start, end), self.segments)
            return None
        buf = io.BytesIO()
        self.labels.write(buf, np.arange(start, end), self.segments)
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
        self.labels.close()
