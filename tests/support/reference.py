"""The reference: transformers run directly on a checkpoint, and the strict, portable comparison.

Every equivalence test (images, video frames, batch vs single frame) goes through
:func:`assert_matches`: a label map must equal what running the same checkpoint through
transformers gives, except at pixels where the reference's own decision is a float near-tie
(``workers.equivalence``), and those must stay rare. Near-ties seen in the session are counted in
:data:`SEEN` and printed at the end of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from workers import equivalence


@dataclass
class Tally:
    maps: int = 0
    pixels: int = 0
    differing: int = 0
    near_ties: int = 0


#: What every comparison of the session saw.
SEEN = Tally()


class Reference:
    """A checkpoint run directly through transformers, with the fleet's image-processor backend."""

    def __init__(self, checkpoint: str, backend: str = "pil"):
        import torch
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        from workers.labels import for_id2label

        self.torch = torch
        self.processor = AutoImageProcessor.from_pretrained(checkpoint, backend=backend)
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(checkpoint).eval()
        self.stuff = for_id2label(self.model.config.id2label).stuff_ids

    def outputs(self, image: Image.Image):
        with self.torch.no_grad():
            return self.model(**self.processor(image, return_tensors="pt"))

    def label_map(self, outputs, size: tuple[int, int], task: str) -> np.ndarray:
        """transformers' post-processing, in segq's label-map encoding (``workers/inference.py``):
        semantic class ids as is; instance ids + 1; panoptic ids with -1 ("nothing found") as 0."""
        p = self.processor
        if task == "semantic":
            return p.post_process_semantic_segmentation(outputs, target_sizes=[size])[0].numpy().astype(np.int64)
        if task == "instance":
            seg = p.post_process_instance_segmentation(outputs, target_sizes=[size])[0]["segmentation"]
            return seg.numpy().astype(np.int64) + 1
        seg = p.post_process_panoptic_segmentation(outputs, target_sizes=[size], label_ids_to_fuse=self.stuff)[0]
        return np.clip(seg["segmentation"].numpy().astype(np.int64), 0, None)


@lru_cache(maxsize=None)
def reference(checkpoint: str, backend: str = "pil") -> Reference:
    return Reference(checkpoint, backend)


def to_transformers(task: str, label_map: np.ndarray) -> np.ndarray:
    """segq's encoding back to transformers' (instance: -1 is "no segment")."""
    return label_map.astype(np.int64) - 1 if task == "instance" else label_map.astype(np.int64)


def assert_matches(got: np.ndarray, checkpoint: str, image: Image.Image, task: str, what: str = "") -> int:
    """Assert that ``got`` (segq's encoding) is transformers' label map for ``image`` up to rare
    near-ties; returns how many pixels differed (all of them near-ties)."""
    ref = reference(checkpoint)
    outputs = ref.outputs(image)
    size = (image.height, image.width)
    expected = ref.label_map(outputs, size, task)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    torch = ref.torch
    result = equivalence.compare(
        task, outputs.class_queries_logits[0], outputs.masks_queries_logits[0], size,
        torch.from_numpy(to_transformers(task, expected)), torch.from_numpy(to_transformers(task, got)),
        label_ids_to_fuse=ref.stuff if task == "panoptic" else None,
    )
    SEEN.maps += 1
    SEEN.pixels += result.total_pixels
    SEEN.differing += result.differing
    SEEN.near_ties += result.near_ties + result.segment_ties
    assert result.ok, f"{what or task}: not equivalent to transformers: {result}"
    return result.differing
