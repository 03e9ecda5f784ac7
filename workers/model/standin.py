"""The stand-in model: a fixed prediction after a wait, for measuring everything but the model.

What a GPU does for a worker is, from the CPU's side, a wait that releases the GIL, after which a
label map comes back. A worker whose model is the stand-in runs its real code around that
(fetching, decoding, the model stage, rendering, encoding, uploading, the queue, the records, the
scheduling) with the model replaced by exactly that: on the model stage's thread, as every pass,
it sleeps ``wait_ms`` per image (``time.sleep`` releases the GIL, as a GPU's kernels do) and
returns a label map fixed per image size (bands of a few classes, made once per size, with its
segments). As on a CUDA worker the overlay comes back from the device already blended
(``Segmenter.blends``): the stand-in hands back the frame itself, which costs the CPU what the
device's copy would, nothing (``blend=cpu``: blended on the CPU, as on a CPU worker). With
``processor=<checkpoint folder>`` each pass's images first go through that checkpoint's real image
processor (the backend of ``SEGQ_IMAGE_PROCESSOR``) in the submitting thread, as
``Segmenter.preprocess`` does on a GPU worker. So ``bench.control`` measures the control plane at
100,000 images on a small machine, and ``bench.cpuside`` the CPU side of a GPU worker.

**Not for production**: its outputs are not segmentations. A model is the stand-in when its
checkpoint is ``standin:[wait_ms=N:][labels=ade20k|coco-panoptic|coco-instance:][blend=device|cpu:]
[processor=FOLDER]`` in ``SEGQ_MODELS`` (options separated by colons, since commas separate the
models there; the folder last: it may hold colons), and a worker loads
one only when ``SEGQ_ALLOW_STANDIN=1`` says so (it refuses to start otherwise, naming the setting).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from segq.errors import ConfigError
from workers.media import labels as labels_mod
from workers.media.prediction import Prediction, Segment, semantic_segments, with_stats

PREFIX = "standin:"
#: The label sets a stand-in may pretend to have, by name.
LABEL_SETS = {"ade20k": "ade20k", "coco-panoptic": "coco_panoptic", "coco-instance": "coco_instance"}


def is_standin(checkpoint: str) -> bool:
    return checkpoint.startswith(PREFIX)


@dataclass(frozen=True)
class Options:
    wait_ms: float = 10.0
    labels: str = "ade20k"
    blend: str = "device"
    processor: str = ""

    @classmethod
    def parse(cls, checkpoint: str) -> "Options":
        values = {}
        body, _, folder = checkpoint[len(PREFIX):].partition("processor=")
        if folder:
            values["processor"] = folder
        for item in filter(None, body.split(":")):
            name, _, value = item.partition("=")
            if name == "wait_ms":
                try:
                    values["wait_ms"] = float(value)
                except ValueError:
                    raise ConfigError(f"stand-in model {checkpoint!r}: wait_ms must be a number") from None
                if not 0 <= values["wait_ms"] <= 60_000:
                    raise ConfigError(f"stand-in model {checkpoint!r}: wait_ms must be from 0 to 60000")
            elif name == "labels":
                if value not in LABEL_SETS:
                    raise ConfigError(f"stand-in model {checkpoint!r}: labels must be one of {', '.join(LABEL_SETS)}")
                values["labels"] = value
            elif name == "blend":
                if value not in ("device", "cpu"):
                    raise ConfigError(f"stand-in model {checkpoint!r}: blend must be device or cpu")
                values["blend"] = value
            else:
                raise ConfigError(f"stand-in model {checkpoint!r}: unknown option {name!r} "
                                  f"(wait_ms, labels, blend, processor)")
        return cls(**values)


@dataclass
class StandInModel:
    """What readers of ``Segmenter.model`` use (``workers.model.models.LoadedModel``'s fields)."""

    name: str
    checkpoint: str
    labels: labels_mod.LabelSet
    load_seconds: float = 0.0
    postprocess: str = "standin"
    compile: str = "off"
    processor_name: str = "StandIn"

    @property
    def max_label_value(self) -> int:
        return max(len(self.labels), 8)


@lru_cache(maxsize=32)
def _fixed(size: tuple[int, int], task: str, classes: tuple[int, ...]) -> tuple[np.ndarray, list[Segment]]:
    width, height = size
    bands = _bands(width, height, classes)
    if task == "semantic":
        return bands, semantic_segments(bands)
    ids = np.searchsorted(np.asarray(sorted(set(classes))), bands).astype(np.int32) + 1
    segments = [Segment(i + 1, int(c), 0.99) for i, c in enumerate(sorted(set(classes)))]
    return ids, with_stats(ids, segments)


@lru_cache(maxsize=32)
def _bands(width: int, height: int, classes: tuple[int, ...]) -> np.ndarray:
    """A label map of horizontal bands, one per class: made once per image size."""
    rows = np.minimum(np.arange(height) * len(classes) // max(height, 1), len(classes) - 1)
    return np.broadcast_to(np.asarray(classes, np.int32)[rows][:, None], (height, width)).copy()


class StandIn:
    """A ``Segmenter`` with the stand-in model (module docstring)."""

    def __init__(self, name: str, checkpoint: str, stage=None, backend: str = "pil"):
        from workers.model.stage import InlineStage

        self.options = Options.parse(checkpoint)
        self.model = StandInModel(name, checkpoint, labels_mod.load(LABEL_SETS[self.options.labels]))
        self.stage = stage if stage is not None else InlineStage()
        self.classes = tuple(range(min(4, len(self.model.labels))))  # the label set's first classes
        self.blends = self.options.blend == "device"
        self.processor = None
        self._plan = None
        if self.options.processor:
            from workers.model import pilprep
            from workers.model.models import load_processor

            self.processor = load_processor(self.options.processor, backend)
            self.model.processor_name = type(self.processor).__name__
            self._plan = pilprep.plan(self.processor)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def labels(self):
        return self.model.labels

    def _label_map(self, size: tuple[int, int], task: str) -> Prediction:
        """The fixed prediction of a size and task: made once (what a device computes), a fresh
        ``Prediction`` each time over the same arrays (the worker never writes to a label map)."""
        label_map, segments = _fixed(size, task, self.classes)
        return Prediction(task, label_map, [dataclasses.replace(s) for s in segments])

    def submit(self, images: list):
        """Preprocess ``images`` (with ``processor=``) and queue the wait of their pass on the
        model stage (as ``Segmenter.submit``)."""
        from workers.model.segmenter import Pending

        t0, c0 = time.perf_counter(), time.thread_time()
        if self.processor is not None:  # as Segmenter.preprocess does it on the CPU
            from PIL import Image

            from workers.model import pilprep

            pils = [i if isinstance(i, Image.Image) else Image.fromarray(np.asarray(i)) for i in images]
            if self._plan is not None and pilprep.applies(pils):
                self._plan(pils)
            else:
                self.processor(images=pils, return_tensors="pt")
        pre, pre_cpu = time.perf_counter() - t0, time.thread_time() - c0
        sizes = [(i.width, i.height) if hasattr(i, "width") else (i.shape[1], i.shape[0]) for i in images]
        # the model stage's thread waits, the GIL released, as a GPU's pass
        future = self.stage.call(time.sleep, self.options.wait_ms / 1000.0 * len(images))
        return Pending(list(images), sizes, future, pre, preprocess_cpu_s=pre_cpu)

    def finish(self, pending, task: str, blend: bool | None = None):
        """The fixed predictions of a pass, once its wait is over (as ``Segmenter.finish``); with
        ``blend`` (default: ``blend=device``) each overlay is the frame itself, as a device's blend
        comes back: no work for the CPU."""
        from workers.model.segmenter import Result, Times

        pending.future.result()
        preds = [self._label_map(size, task) for size in pending.sizes]
        if self.blends if blend is None else blend:
            for pred, image in zip(preds, pending.images):
                pred.overlay = np.asarray(image)
        times = Times(preprocess_s=pending.preprocess_s, wait_s=getattr(pending.future, "queued_s", 0.0),
                      forward_s=getattr(pending.future, "seconds", 0.0), items_per_pass=len(pending.sizes),
                      preprocess_cpu_s=pending.preprocess_cpu_s)
        return Result(preds, times)

    def predict(self, images: list, task: str, blend: bool | None = None):
        return self.finish(self.submit(images), task)
