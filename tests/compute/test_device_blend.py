"""The overlay blended in torch (the CUDA worker's path) gives the bytes of the CPU path.

``workers.media.render.overlay_tensor`` against ``workers.media.render.overlay`` (numpy lookup table +
``cv2.addWeighted``): every (image value, colour value) pair, then whole frames of realistic label
maps (``workers.testing.synthetic.structured`` outputs through ``workers.model.postprocess``) for semantic,
instance and panoptic, through ``Segmenter.post_process(..., keep_on_device=True)`` and
``Segmenter.blend`` with the device forced to the CPU. The chunk renderer's forced device path
is checked in ``test_chunk_pipeline.py``.
"""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from segq import defaults, layout
from workers.media import labels
from workers.media import render
from workers.testing import synthetic
from workers.media.labels import LabelSet
from workers.media.prediction import Prediction, Segment
from workers.model.segmenter import Segmenter


def _grid():
    """Image value i and colour value j at (i, j), per channel a different bijection of j."""
    i = np.arange(256)
    image = np.repeat(np.repeat(i.astype(np.uint8)[:, None], 256, 1)[..., None], 3, 2)
    label_map = np.repeat(i.astype(np.int32)[None], 256, 0)
    lut = np.stack([i, 255 - i, (i * 7 + 3) % 256], axis=1).astype(np.uint8)
    return image, label_map, lut


def test_every_image_colour_pair_blends_to_opencvs_bytes():
    image, label_map, lut = _grid()
    palette = LabelSet("grid", tuple(str(k) for k in range(256)), lut)
    ref = render.overlay(image, Prediction("semantic", label_map), palette)
    assert np.array_equal(ref, cv2.addWeighted(image, defaults.OVERLAY_IMAGE_WEIGHT, lut[label_map],
                                               defaults.OVERLAY_SEGMENT_WEIGHT, 0))
    got = render.overlay_tensor(torch.from_numpy(image), torch.from_numpy(label_map), torch.from_numpy(lut), False)
    assert got.dtype == torch.uint8 and got.shape == (256, 256, 3)
    assert np.array_equal(got.numpy(), ref)
    # every (a, b) pair of each channel is there once
    for c in range(3):
        assert len(set(zip(image[..., c].ravel().tolist(), lut[label_map][..., c].ravel().tolist()))) == 256 * 256


def test_the_weights_leave_no_rounding_tie():
    """With segq's weights a float32 blend with or without FMA, and exact arithmetic, agree on
    every pair (a*0.2 + b is never within float error of a .5 tie), so the result does not depend
    on whether OpenCV's build or CPU fuses the multiply-add."""
    a = np.arange(256, dtype=np.float64)[:, None]
    b = np.arange(256, dtype=np.float64)[None]
    alpha, beta, gamma = render.blend_weights()
    fused = (a * alpha + (b * beta + gamma).astype(np.float32)).astype(np.float32)
    unfused = (a.astype(np.float32) * np.float32(alpha)) + (b.astype(np.float32) * np.float32(beta) + np.float32(gamma))
    exact = a * defaults.OVERLAY_IMAGE_WEIGHT + b * defaults.OVERLAY_SEGMENT_WEIGHT
    to_u8 = lambda v: np.clip(np.rint(v), 0, 255).astype(np.uint8)  # noqa: E731
    assert np.array_equal(to_u8(fused), to_u8(unfused)) and np.array_equal(to_u8(fused), to_u8(exact))
    assert np.abs(np.abs(np.asarray(fused, np.float64) % 1 - 0.5)).min() > 0.05


def test_zero_keeps_the_photo_and_odd_sizes():
    rng = np.random.default_rng(3)
    coco = labels.load("coco_instance")
    segs = [Segment(1, 0, 0.9, area=1), Segment(2, 0, 0.8, area=1), Segment(3, 5, 0.7, area=1)]
    for h, w in [(1, 1), (7, 13), (33, 65)]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        label_map = rng.integers(0, 4, (h, w)).astype(np.int32)
        pred = Prediction("instance", label_map, segs)
        lut, zero_is_empty = render.color_table(pred, coco)
        got = render.overlay_tensor(torch.from_numpy(image), torch.from_numpy(label_map).long(), torch.from_numpy(lut),
                                    zero_is_empty).numpy()
        assert np.array_equal(got, render.overlay(image, pred, coco))
        assert np.array_equal(got[label_map == 0], image[label_map == 0])


def _model(label_set: LabelSet):
    """What ``Segmenter.post_process`` and ``Segmenter.blend`` use of a ``LoadedModel``, on the CPU."""
    return SimpleNamespace(labels=label_set, spec=SimpleNamespace(device=torch.device("cpu")), postprocess="fast")


@pytest.mark.parametrize("task, label_set, seed", [
    ("semantic", "ade20k", 11), ("instance", "coco_instance", 21), ("panoptic", "coco_panoptic", 31),
])
@pytest.mark.parametrize("size", [(241, 321), (120, 97)])
def test_device_path_forced_on_cpu_gives_the_cpu_overlay(task, label_set, seed, size):
    ls = labels.load(label_set)
    m = _model(ls)
    cls, masks = synthetic.structured(seed, len(ls))
    outputs = SimpleNamespace(class_queries_logits=cls, masks_queries_logits=masks)
    segmenter = Segmenter(m)
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)

    ref = segmenter.post_process(outputs, task, size)
    assert ref.device_label_map is None and ref.overlay is None
    pred = segmenter.post_process(outputs, task, size, keep_on_device=True)
    assert isinstance(pred.device_label_map, torch.Tensor)
    assert np.array_equal(pred.label_map, ref.label_map) and pred.segments == ref.segments
    segmenter.blend([pred], [image])
    assert pred.device_label_map is None
    expected = render.overlay(image, ref, ls)
    assert pred.overlay.dtype == np.uint8 and np.array_equal(pred.overlay, expected)
    assert len(ref.segments) >= 5
    if task != "semantic":
        # instances of one class get distinct shades: several segments share a label here
        assert len({s.label_id for s in ref.segments}) < len(ref.segments)


def test_image_outputs_use_the_device_overlay():
    ls = labels.load("ade20k")
    image = np.full((4, 5, 3), 10, np.uint8)
    pred = Prediction("semantic", np.zeros((4, 5), np.int32))
    pred.segments = [Segment(0, 0, None, area=20, bbox=(0, 0, 5, 4))]
    pred.overlay = np.full((4, 5, 3), 200, np.uint8)
    files = render.image_outputs(image, pred, ls, job_id="j", model="m", checkpoint="c", max_value=149)
    jpeg = cv2.imdecode(np.frombuffer(files[layout.OVERLAY][0], np.uint8), cv2.IMREAD_COLOR)
    assert abs(int(jpeg.mean()) - 200) <= 2


def test_a_label_without_a_colour_is_refused_before_the_device():
    ls = labels.load("coco_instance")
    m = _model(ls)
    label_map = np.array([[0, 1], [2, 7]], np.int32)
    pred = Prediction("instance", label_map, [Segment(1, 0, 0.9, area=1), Segment(2, 3, 0.8, area=1)])
    pred.device_label_map = torch.from_numpy(label_map)
    with pytest.raises(ValueError, match="label 7 has no colour"):
        Segmenter(m).blend([pred], [np.zeros((2, 2, 3), np.uint8)])
