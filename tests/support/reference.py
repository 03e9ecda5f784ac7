"""The reference: transformers run directly on a checkpoint, and the strict, portable comparison.

Every equivalence test (images, video frames, batch vs single frame) goes through
:func:`assert_matches`: a label map must equal what running the same checkpoint through
transformers gives, except at pixels where the reference's own decision is a float near-tie
(``workers.testing.equivalence``), and those must stay rare. Near-ties seen in the session are counted in
:data:`SEEN` and printed at the end of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from workers.testing import equivalence


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

        from workers.media.labels import for_id2label

        self.torch = torch
        self.processor = AutoImageProcessor.from_pretrained(checkpoint, backend=backend)
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(checkpoint).eval()
        self.stuff = for_id2label(self.model.config.id2label).stuff_ids

    def outputs(self, image: Image.Image | list[Image.Image], threads: int | None = None):
        """The model's outputs for one image, or for a batch of same-size images run as one pass;
        with ``threads``, on that many torch CPU threads (the worker's count: another count sums in
        another order)."""
        before = self.torch.get_num_threads()
        if threads:
            self.torch.set_num_threads(threads)
        try:
            with self.torch.no_grad():
                return self.model(**self.processor(image, return_tensors="pt"))
        finally:
            self.torch.set_num_threads(before)

    def label_map(self, outputs, size: tuple[int, int], task: str) -> np.ndarray:
        """transformers' post-processing, in segq's label-map encoding (``workers.model.segmenter``):
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


def assert_matches(got: np.ndarray, checkpoint: str, image: Image.Image, task: str, what: str = "",
                   threads: int | None = None) -> int:
    """Assert that ``got`` (segq's encoding) is transformers' label map for ``image`` up to rare
    near-ties; returns how many pixels differed (all of them near-ties). ``threads``: the torch
    threads the worker ran the forward pass on (default: this process's)."""
    return assert_batch_matches([got], checkpoint, [image], task, [what], threads=threads)


def assert_batch_matches(got: list[np.ndarray], checkpoint: str, images: list[Image.Image], task: str,
                         what: list[str] | None = None, threads: int | None = None) -> int:
    """``assert_matches`` for images the worker ran as ONE forward pass (a video chunk's batch):
    the reference runs them as one pass too. A batched pass does not give the bits of single
    passes (float sums in another order), nor does another thread count, so comparing it with
    single passes would blame post-processing for differences of the forward pass."""
    ref = reference(checkpoint)
    outputs = ref.outputs(images if len(images) > 1 else images[0], threads=threads)
    torch = ref.torch
    differing = 0
    for i, (mine, image) in enumerate(zip(got, images, strict=True)):
        label = (what or [""] * len(images))[i] or task
        one = type(outputs)(class_queries_logits=outputs.class_queries_logits[i:i + 1],
                            masks_queries_logits=outputs.masks_queries_logits[i:i + 1])
        size = (image.height, image.width)
        expected = ref.label_map(one, size, task)
        assert mine.shape == expected.shape, f"{label}: shape {mine.shape} != {expected.shape}"
        result = equivalence.compare(
            task, one.class_queries_logits[0], one.masks_queries_logits[0], size,
            torch.from_numpy(to_transformers(task, expected)), torch.from_numpy(to_transformers(task, mine)),
            label_ids_to_fuse=ref.stuff if task == "panoptic" else None,
        )
        SEEN.maps += 1
        SEEN.pixels += result.total_pixels
        SEEN.differing += result.differing
        SEEN.near_ties += result.near_ties + result.segment_ties
        assert result.ok, f"{label}: not equivalent to transformers: {result}"
        differing += result.differing
    return differing
