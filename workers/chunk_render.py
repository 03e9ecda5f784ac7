"""A video chunk's frames through the model: batches in, overlay frames and label maps out.

``ChunkRenderer`` takes decoded RGB frames one by one, runs the model ``batch_size`` frames at a
time (forward on the batch, post-processing per frame), renders each overlay (with the inference
FPS written on it if asked, as the article's script does), hands it to the part encoder, and keeps
the label map and segment list of every frame for the chunk's label archive.
"""

from __future__ import annotations

import io
import json
from typing import Callable

import numpy as np
from PIL import Image

from workers import render, video
from workers.inference import predict
from workers.models import LoadedModel


class ChunkRenderer:
    def __init__(self, model: LoadedModel, task: str, batch_size: int, write: Callable[[np.ndarray], None],
                 annotate_fps: bool = False):
        self.model, self.task, self.batch_size = model, task, batch_size
        self.write, self.annotate_fps = write, annotate_fps
        self.dtype = render.label_map_dtype(model.max_label_value)
        self.labels: list[np.ndarray] = []
        self.segments: list[list[dict]] = []
        self.inference_s = 0.0
        self._batch: list[np.ndarray] = []

    def add(self, rgb: np.ndarray) -> None:
        self._batch.append(rgb)
        if len(self._batch) == self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._batch:
            return
        timed = predict(self.model, [Image.fromarray(f) for f in self._batch], self.task)
        self.inference_s += timed.seconds
        fps = len(self._batch) / timed.seconds if timed.seconds > 0 else 0.0
        for rgb, pred in zip(self._batch, timed.predictions):
            frame = render.overlay(rgb, pred, self.model.labels)
            if self.annotate_fps:
                video.annotate_fps(frame, fps)
            self.write(frame)
            self.labels.append(pred.label_map.astype(self.dtype))
            self.segments.append([render.segment_entry(s, pred.task, self.model.labels) for s in pred.segments])
        self._batch.clear()

    def archive(self, start: int, end: int) -> bytes:
        """The chunk's label archive (``.npz``): ``labels`` (frames, H, W), ``frames``, ``segments``."""
        self.flush()
        buf = io.BytesIO()
        np.savez_compressed(buf, labels=np.stack(self.labels), frames=np.arange(start, end),
                            segments=np.array(json.dumps(self.segments)))
        return buf.getvalue()
