"""Loading Mask2Former checkpoints with transformers' ``from_pretrained``.

A checkpoint is a Hugging Face hub id (``facebook/mask2former-swin-large-ade-semantic``) or a
local folder holding ``config.json``, the weights and ``preprocessor_config.json`` (for
example one written by ``segq models tiny``). Models load once per worker process and stay
in memory for every later job.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from segq.errors import SegqError
from workers import labels
from workers.device import DeviceSpec

log = logging.getLogger(__name__)


class ModelLoadError(SegqError):
    pass


@dataclass
class LoadedModel:
    name: str
    checkpoint: str
    model: torch.nn.Module
    processor: object  # transformers Mask2Former image processor
    spec: DeviceSpec
    labels: labels.LabelSet
    load_seconds: float
    postprocess: str = "fast"  # "fast" (workers.postprocess) or "reference" (transformers')

    @property
    def processor_backend(self) -> str:
        return processor_backend(self.processor)

    @property
    def processor_name(self) -> str:
        """The processor class, recorded with every output (``segments.json``, ``video.json``)."""
        return type(self.processor).__name__

    @property
    def num_queries(self) -> int:
        return int(self.model.config.num_queries)

    @property
    def max_label_value(self) -> int:
        """Largest value a label map of this model can hold (class ids or segment ids)."""
        return max(len(self.labels), self.num_queries + 1)


def load_processor(checkpoint: str, backend: str):
    """transformers' image processor of ``checkpoint`` with the ``backend`` the fleet pins
    (``pil`` or ``torchvision``: they resize differently). transformers would silently fall
    back to the other backend when the one asked for is not importable; this refuses instead."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(checkpoint, backend=backend)
    got = processor_backend(processor)
    if got != backend:
        raise ModelLoadError(
            f"SEGQ_IMAGE_PROCESSOR={backend}, but transformers gave the {got} processor "
            f"({type(processor).__name__})" + (": is torchvision installed?" if backend == "torchvision" else "")
        )
    return processor


def processor_backend(processor) -> str:
    """``pil`` or ``torchvision``: which of transformers' image-processor backends this is."""
    from transformers.image_processing_backends import PilBackend, TorchvisionBackend

    if isinstance(processor, PilBackend):
        return "pil"
    if isinstance(processor, TorchvisionBackend):
        return "torchvision"
    return type(processor).__name__


def load(name: str, checkpoint: str, spec: DeviceSpec, backend: str = "pil") -> LoadedModel:
    from transformers import Mask2FormerForUniversalSegmentation

    started = time.perf_counter()
    try:
        processor = load_processor(checkpoint, backend)
        model = Mask2FormerForUniversalSegmentation.from_pretrained(checkpoint, dtype=spec.dtype)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot load model {name!r} from {checkpoint!r}: {exc}. A hub id needs network access or "
            f"a filled Hugging Face cache (HF_HOME); offline, point SEGQ_MODELS at local folders "
            f"(see `segq models tiny --help`)."
        ) from exc
    model.to(spec.device).eval()
    seconds = time.perf_counter() - started
    label_set = labels.for_id2label(model.config.id2label)
    log.info("loaded model %s from %s on %s in %.2fs (%s labels)", name, checkpoint, spec.label, seconds, label_set.name)
    return LoadedModel(name, checkpoint, model, processor, spec, label_set, seconds)
