"""The ``pil`` image processor's preprocessing, without its round trips through numpy.

transformers' ``Mask2FormerImageProcessorPil`` turns each PIL image into a channels-first numpy
array, back into a PIL image to resize it, into an array again, then rescales (float64, then
float32) and normalises (float32) it. On a 1920x1080 frame the conversions of the full-size
image cost about as much as the resize itself (``bench.cpuside``: the processor took 18 core-ms
of a GPU worker's 59 per image; its resize 8). This does the same steps in the same arithmetic
on the image as it comes: PIL's resize of the PIL image itself (the same pixels PIL gives for the
array's round trip), then the same float64 rescale and float32 normalisation per pixel, on the
small resized image. The outputs are the processor's to the bit (``tests/compute/test_pilprep.py``
compares them over sizes, aspect ratios and both kinds of size setting).

It applies only where it is known to be equal: the ``pil`` Mask2Former processor with resize,
rescale and normalisation on, no fixed padding size, RGB PIL images (or uint8 RGB arrays) all of
one size (a batch is never padded: ``Segmenter.submit``). ``plan`` returns None otherwise and the
caller runs the processor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Plan:
    """What the processor does, read once from it."""

    size: dict
    size_divisor: int
    resample: int
    scale: float
    mean: np.ndarray  # float32, per channel
    std: np.ndarray

    def target(self, height: int, width: int) -> tuple[int, int]:
        """The resized (height, width), as ``Mask2FormerImageProcessorPil.resize`` computes it."""
        from transformers.image_transforms import get_size_with_aspect_ratio

        s = self.size
        if s.get("shortest_edge") and s.get("longest_edge"):
            h, w = get_size_with_aspect_ratio((height, width), s["shortest_edge"], s["longest_edge"])
        else:
            h, w = s["height"], s["width"]
        if self.size_divisor > 0:
            h = int(math.ceil(h / self.size_divisor) * self.size_divisor)
            w = int(math.ceil(w / self.size_divisor) * self.size_divisor)
        return h, w

    def __call__(self, images: list) -> dict:
        """The model's inputs for ``images`` (one size): ``pixel_values`` (N, 3, H, W) float32 and
        ``pixel_mask`` (N, H, W) int64, as the processor returns them with ``return_tensors="pt"``."""
        import torch

        pils = [i if isinstance(i, Image.Image) else Image.fromarray(np.asarray(i)) for i in images]
        h, w = self.target(pils[0].height, pils[0].width)
        out = np.empty((len(pils), 3, h, w), np.float32)
        for k, image in enumerate(pils):
            resized = np.asarray(image.resize((w, h), resample=self.resample))  # (h, w, 3) uint8
            x = (resized.astype(np.float64) * self.scale).astype(np.float32)
            out[k] = ((x - self.mean) / self.std).transpose(2, 0, 1)
        return {"pixel_values": torch.from_numpy(out), "pixel_mask": torch.ones((len(pils), h, w), dtype=torch.int64)}


def plan(processor) -> Plan | None:
    """The fast path for ``processor``, or None where it is not known to equal it."""
    if type(processor).__name__ != "Mask2FormerImageProcessorPil":
        return None
    if not (processor.do_resize and processor.do_rescale and processor.do_normalize):
        return None
    if getattr(processor, "pad_size", None) or getattr(processor, "do_convert_rgb", None) is False:
        return None
    size = dict(processor.size or {})
    if not ((size.get("shortest_edge") and size.get("longest_edge")) or (size.get("height") and size.get("width"))):
        return None
    mean, std = np.asarray(processor.image_mean, np.float32), np.asarray(processor.image_std, np.float32)
    if mean.shape != (3,) or std.shape != (3,):
        return None
    resample = processor.resample if processor.resample is not None else Image.BILINEAR
    return Plan(size={k: v for k, v in size.items() if v}, size_divisor=int(processor.size_divisor or 0),
                resample=int(resample), scale=float(processor.rescale_factor), mean=mean, std=std)


def applies(images: list) -> bool:
    """Whether ``images`` are what the fast path takes: RGB, all of one size."""
    sizes = set()
    for i in images:
        if isinstance(i, Image.Image):
            if i.mode != "RGB":
                return False
            sizes.add((i.width, i.height))
        else:
            a = np.asarray(i)
            if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
                return False
            sizes.add((a.shape[1], a.shape[0]))
    return len(sizes) == 1
