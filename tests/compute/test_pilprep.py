"""The ``pil`` processor's preprocessing without its round trips (workers.model.pilprep) gives the
processor's outputs to the bit, or is not used."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from workers.model import pilprep
from workers.model.checkpoints import tiny_processor


def hub_ade_processor():
    from transformers import Mask2FormerImageProcessorPil

    # the hub ADE checkpoints' preprocessor_config.json: a fixed 384x384 input
    return Mask2FormerImageProcessorPil(size={"height": 384, "width": 384}, size_divisor=32, do_reduce_labels=False,
                                        ignore_index=255)


def tiny_pil_processor():
    from transformers import Mask2FormerImageProcessorPil

    return Mask2FormerImageProcessorPil(**tiny_processor("ade20k").to_dict())


def images(h: int, w: int, n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        # smooth regions and noise: a resize's rounding shows on both
        base = rng.integers(0, 255, (max(2, h // 16), max(2, w // 16), 3), np.uint8)
        img = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC)).astype(np.int16)
        img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(img))
    return out


@pytest.mark.parametrize("make", [hub_ade_processor, tiny_pil_processor], ids=["hub-ade", "tiny"])
@pytest.mark.parametrize("size", [(1080, 1920), (480, 640), (333, 500), (720, 405), (97, 1003)])
def test_the_fast_path_gives_the_processors_outputs_to_the_bit(make, size):
    processor = make()
    assert type(processor).__name__ == "Mask2FormerImageProcessorPil"
    plan = pilprep.plan(processor)
    assert plan is not None
    batch = images(*size, n=2, seed=size[0])
    assert pilprep.applies(batch)
    want = processor(images=batch, return_tensors="pt")
    got = plan(batch)
    assert got["pixel_values"].dtype == want["pixel_values"].dtype == torch.float32
    assert got["pixel_values"].shape == want["pixel_values"].shape
    assert torch.equal(got["pixel_values"], want["pixel_values"])  # bit for bit, no tolerance
    assert torch.equal(got["pixel_mask"], want["pixel_mask"])
    # arrays (a video's frames) as PIL images
    arrays = [np.asarray(i) for i in batch]
    assert torch.equal(plan(arrays)["pixel_values"], want["pixel_values"])


def test_what_it_does_not_know_goes_to_the_processor():
    plan = pilprep.plan(tiny_pil_processor())
    assert not pilprep.applies([Image.new("L", (64, 48))])  # not RGB
    assert not pilprep.applies([Image.new("RGB", (64, 48)), Image.new("RGB", (48, 64))])  # two sizes
    assert not pilprep.applies([np.zeros((48, 64, 3), np.float32)])
    assert plan is not None and pilprep.plan(object()) is None
    p = tiny_pil_processor()
    p.do_normalize = False
    assert pilprep.plan(p) is None
