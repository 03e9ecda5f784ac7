"""A video chunk's frames through the model: batches in, overlay frames and label maps out.

``ChunkPipeline`` takes decoded RGB frames one by one (``add``), or decodes them ahead in a
thread of its own (``add_all``, ``workers.tasks.threads.Ahead``), and keeps the model busy:

- every ``batch_size`` frames it submits the batch to its ``Segmenter`` (``workers.model.segmenter``:
  preprocessing here, the forward pass on the worker's model stage), and keeps one batch in the
  stage while it post-processes the one before (``ahead``);
- post-processing (per frame) runs in the task's thread; each frame's label map goes straight
  to the chunk's label archive (:class:`LabelArchive`: spooled to a temporary file, so a chunk
  holds no more than a few frames in memory, however many it has), its segment list is kept;
- rendering each overlay (with the inference FPS written on it if asked, as the article's script
  does) and handing it to the part encoder (``write``) run behind, on an encode thread of their
  own (``workers.tasks.threads.Behind``), in frame order.

With ``device_blend`` (default: the segmenter's, on a CUDA device) the overlays are blended on
the device in the task's thread right after post-processing (``Segmenter.finish``: the label maps
stay there until then, and only the uint8 overlays and the label maps come back), and the encode
thread only writes the FPS on them and encodes them. Without it (the CPU) the encode thread blends them (``workers.media.render.overlay``).
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

from workers.media import render
from workers.media import video
from workers.tasks.threads import Ahead, Behind
from workers.model.segmenter import Segmenter, Times


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


class ChunkPipeline:
    """A chunk's frames through ``segmenter`` (module docstring). ``times`` sums the seconds of
    every stage of the chunk's batches (``workers.model.segmenter.Times``); ``decode_s`` and
    ``render_s`` the decode thread's and the encode thread's own work."""

    def __init__(self, segmenter: Segmenter, task: str, batch_size: int, write: Callable[[np.ndarray], None],
                 annotate_fps: bool = False, ahead: int = 1, check: Callable[[], None] | None = None,
                 device_blend: bool | None = None):
        self.segmenter, self.task, self.batch_size = segmenter, task, batch_size
        self.labelset = segmenter.labels
        self.device_blend = segmenter.blends if device_blend is None else device_blend
        self.check = check  # called before each batch; raises to stop (a canceled job)
        self.write, self.annotate_fps = write, annotate_fps
        self.ahead = ahead
        self.dtype = render.label_map_dtype(segmenter.model.max_label_value)
        self.labels = LabelArchive(self.dtype)
        self.segments: list[list[dict]] = []
        self.times = Times()
        self.decode_s = 0.0
        self.render_s = 0.0
        self.decode_cpu_s = 0.0  # CPU seconds of the decode thread's and the encode thread's own work
        self.render_cpu_s = 0.0  # (time.thread_time; a codec's own threads are not in it)
        self._batch: list[np.ndarray] = []
        self._pending: collections.deque = collections.deque()  # Pending batches in the model stage
        self._encode = Behind(self._render, maxsize=2 * batch_size, name="segq-encode")

    @property
    def inference_s(self) -> float:
        """Preprocessing + forward passes + post-processing, no waiting: what FPS divides by."""
        return self.times.inference_s

    def add(self, rgb: np.ndarray) -> None:
        self._batch.append(rgb)
        if len(self._batch) == self.batch_size:
            self._submit()

    def add_all(self, frames: Iterable[np.ndarray]) -> None:
        """``add`` every frame of ``frames``, iterated ahead in a thread of its own (the decoder)
        up to two batches ahead; its errors are raised here."""
        with Ahead(self._timed(frames), maxsize=2 * self.batch_size, name="segq-decode") as decoded:
            for rgb in decoded:
                self.add(rgb)

    def _timed(self, frames: Iterable[np.ndarray]):
        """``frames``, its own time (the decoder's) counted in ``decode_s``."""
        it = iter(frames)
        while True:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                frame = next(it)
            except StopIteration:
                return
            finally:
                self.decode_s += time.perf_counter() - t0
                self.decode_cpu_s += time.thread_time() - c0
            yield frame

    def _submit(self) -> None:
        if self.check is not None:
            self.check()
        frames, self._batch = self._batch, []
        self._pending.append(self.segmenter.submit(frames))
        while len(self._pending) > self.ahead:
            self._finish(self._pending.popleft())

    def _finish(self, pending) -> None:
        result = self.segmenter.finish(pending, self.task, blend=self.device_blend)
        self.times.add(result.times)
        seconds = result.times.inference_s
        fps = len(pending.images) / seconds if seconds > 0 else 0.0
        for rgb, pred in zip(pending.images, result.predictions):
            self.labels.add(pred.label_map)
            self.segments.append([render.segment_entry(s, pred.task, self.labelset) for s in pred.segments])
            self._encode.put((rgb, pred, fps))

    def _render(self, item) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        rgb, pred, fps = item
        frame = pred.overlay if pred.overlay is not None else render.overlay(rgb, pred, self.labelset)
        if self.annotate_fps:
            video.annotate_fps(frame, fps)
        self.write(frame)
        self.render_s += time.perf_counter() - t0
        self.render_cpu_s += time.thread_time() - c0

    def flush(self) -> None:
        """Every frame added so far through the model (the encode thread may still be behind)."""
        if self._batch:
            self._submit()
        while self._pending:
            self._finish(self._pending.popleft())

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
        for pending in self._pending:
            pending.future.cancel()
        self._pending.clear()
        self._encode.abort()

    def __enter__(self) -> "ChunkPipeline":
        return self

    def __exit__(self, *_) -> None:
        self.abort()  # after archive() a no-op; on an error it stops the encode thread first
        self.labels.close()
