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

    @property
    def num_queries(self) -> int:
        return int(self.model.config.num_queries)

    @property
    def max_label_value(self) -> int:
        """Largest value a label map of this model can hold (class ids or segment ids)."""
        return max(len(self.labels), self.num_queries + 1)


def load(name: str, checkpoint: str, spec: DeviceSpec) -> LoadedModel:
    from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

    started = time.perf_counter()
    try:
        processor = AutoImageProcessor.from_pretrained(checkpoint)
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
