"""Dynamic batching across jobs (``SEGQ_MAX_BATCH``): image tasks of one size, submitted at once from
their own threads, run as one forward pass, and each gets transformers' label map for its own
image, but for counted near-ties; images of another size are never padded into that batch."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("transformers")

from support.reference import assert_matches  # noqa: E402
from workers.model import device  # noqa: E402
from workers.model import stage as pipeline  # noqa: E402
from workers.model.checkpoints import make_tiny  # noqa: E402
from workers.model.models import load  # noqa: E402
from workers.model.segmenter import Segmenter  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(make_tiny("ade20k", tmp_path_factory.mktemp("tiny") / "ade"))


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:] = rng.integers(0, 255, 3)
    for _ in range(4):
        x, y = rng.integers(0, w - 10), rng.integers(0, h - 10)
        arr[y:y + h // 3, x:x + w // 3] = rng.integers(0, 255, 3)
    return Image.fromarray(arr)


def _at_once(segmenter: Segmenter, images: list[Image.Image]) -> list:
    """Each image predicted from a thread of its own, all submitted while the stage is held."""
    results: list = [None] * len(images)
    ready = threading.Barrier(len(images))

    def one(i):
        ready.wait(10)
        results[i] = segmenter.predict([images[i]], "semantic")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_passes_of_one_size_run_together_and_match_transformers_one_by_one(checkpoint):
    model = load("ade-semantic", checkpoint, device.select("fp32"))
    # a stage that waits up to 2 s to fill a batch of 4 (SEGQ_BATCH_DELAY_MS): all four arrive
    stage = pipeline.ModelStage(max_batch=4, delay=2.0, maxsize=8)
    segmenter = Segmenter(model, stage)
    images = [_image(i, (160, 120)) for i in range(4)]
    results = _at_once(segmenter, images)
    stage.close()
    assert [r.times.items_per_pass for r in results] == [4, 4, 4, 4] and stage.stats().passes == 1
    for image, result in zip(images, results):
        assert_matches(result.predictions[0].label_map, checkpoint, image, "semantic", what="batched pass")


def test_images_of_other_sizes_are_never_padded_into_one_batch(checkpoint):
    model = load("ade-semantic", checkpoint, device.select("fp32"))
    gate = threading.Event()
    seen: list[tuple] = []

    def forward(runner, inputs):
        gate.wait(10)
        seen.append(tuple(inputs["pixel_values"].shape))
        return runner.forward(inputs)

    stage = pipeline.ModelStage(forward, max_batch=8, maxsize=8)
    segmenter = Segmenter(model, stage)
    images = [_image(i, (160, 120)) for i in range(2)] + [_image(9, (90, 160)), _image(8, (160, 120))]
    threading.Timer(1.0, gate.set).start()
    results = _at_once(segmenter, images)
    stage.close()
    assert sum(shape[0] for shape in seen) == 4  # every image ran, in passes of one input size each
    assert {shape[2:] for shape in seen} == {(256, 352), (480, 256)}  # the two sizes' inputs, apart
    assert max(shape[0] for shape in seen if shape[2:] == (480, 256)) == 1
    for image, result in zip(images, results):
        assert_matches(result.predictions[0].label_map, checkpoint, image, "semantic", what="mixed sizes")
