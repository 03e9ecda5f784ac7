"""The pipelined chunk path gives what the serial one gave: a tiny checkpoint (no servers).

``ChunkPipeline`` with the worker's model stage (frames decoded ahead, the forward pass on the
stage's thread, overlays rendered and encoded behind) against the serial loop it replaced
(``Segmenter.predict`` inline on each batch, then render and write in order): the same label maps,
segments and overlay frames, bit for bit, in the same order; and an image through the stage
equals one predicted inline. The CUDA worker's path (overlays blended in torch right after
post-processing) forced on the CPU writes the same frames. The errors of each thread surface in
the caller."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("transformers")

from workers.model import device  # noqa: E402
from workers.model import stage as pipeline  # noqa: E402
from workers.media import render  # noqa: E402
from workers.media import video  # noqa: E402
from workers.model.checkpoints import make_tiny  # noqa: E402
from workers.tasks.chunk import ChunkPipeline  # noqa: E402
from workers.model.models import load  # noqa: E402
from workers.model.segmenter import Segmenter  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = make_tiny("ade20k", tmp_path_factory.mktemp("tiny") / "ade")
    return load("ade-semantic", str(folder), device.select("fp32"))


@pytest.fixture(scope="module")
def stage():
    s = pipeline.ModelStage()
    yield s
    s.close()


def _frames(n: int, size=(96, 72)) -> list[np.ndarray]:
    w, h = size
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = rng.integers(0, 255, 3)
        x = (i * 9) % w
        img[h // 4: h // 2, max(0, x - 10): x + 10] = rng.integers(0, 255, 3)
        out.append(img)
    return out


def _serial(model, frames, batch):
    """The serial loop the pipeline replaced: predict per batch, then render and write in order."""
    written, labels, segments = [], [], []
    for k in range(0, len(frames), batch):
        part = frames[k:k + batch]
        timed = Segmenter(model).predict([Image.fromarray(f) for f in part], "semantic")
        for rgb, pred in zip(part, timed.predictions):
            written.append(render.overlay(rgb, pred, model.labels))
            labels.append(pred.label_map.astype(render.label_map_dtype(model.max_label_value)))
            segments.append([render.segment_entry(s, pred.task, model.labels) for s in pred.segments])
    return written, labels, segments


@pytest.mark.parametrize("n, batch", [(11, 4), (6, 1), (3, 5)])
def test_a_pipelined_chunk_equals_the_serial_loop(model, stage, n, batch):
    frames = _frames(n)
    written, threads = [], set()

    def write(frame):
        threads.add(threading.get_ident())
        written.append(frame.copy())

    with ChunkPipeline(Segmenter(model, stage), "semantic", batch, write) as renderer:
        renderer.add_all(iter(frames))
        archive = renderer.archive(100, 100 + n)
    ref_written, ref_labels, ref_segments = _serial(model, frames, batch)
    assert threading.get_ident() not in threads  # written on the encode thread
    assert len(written) == n
    for got, ref in zip(written, ref_written):
        assert np.array_equal(got, ref)
    npz = np.load(__import__("io").BytesIO(archive))
    assert np.array_equal(npz["labels"], np.stack(ref_labels))
    assert npz["frames"].tolist() == list(range(100, 100 + n))
    assert json.loads(str(npz["segments"])) == ref_segments
    assert renderer.inference_s > 0


@pytest.mark.parametrize("n, batch", [(7, 3), (2, 4)])
def test_the_device_blend_path_forced_on_cpu_writes_the_same_frames(model, stage, monkeypatch, n, batch):
    """The CUDA path (overlays blended in torch in the task thread, right after post-processing;
    the encode thread only writes them) forced on the CPU: the same frames and archive."""
    frames = _frames(n, (97, 61))
    runs = {}
    for device_blend in (False, True):
        written, threads = [], set()

        def write(frame):
            threads.add(threading.get_ident())
            written.append(frame.copy())

        if device_blend:  # the encode thread must not blend: the overlays come ready
            def no_cpu_blend(*_):
                raise AssertionError("render.overlay called on the device path")

            monkeypatch.setattr(render, "overlay", no_cpu_blend)
        with ChunkPipeline(Segmenter(model, stage), "semantic", batch, write, device_blend=device_blend) as renderer:
            assert renderer.device_blend is device_blend
            renderer.add_all(iter(frames))
            archive = renderer.archive(0, n)
        assert threading.get_ident() not in threads and len(written) == n
        runs[device_blend] = written, archive
    monkeypatch.undo()
    for got, ref in zip(runs[True][0], runs[False][0]):
        assert np.array_equal(got, ref)
    assert runs[True][1] == runs[False][1]
    ref_written = _serial(model, frames, batch)[0]
    assert all(np.array_equal(got, ref) for got, ref in zip(runs[True][0], ref_written))


def test_an_image_through_the_stage_equals_predict(model, stage):
    img = Image.fromarray(_frames(1, (120, 80))[0])
    via = Segmenter(model, stage).predict([img], "semantic")
    ref = Segmenter(model).predict([img], "semantic")
    assert np.array_equal(via.predictions[0].label_map, ref.predictions[0].label_map)
    assert via.predictions[0].segments == ref.predictions[0].segments and via.seconds > 0


def test_errors_of_the_decoder_the_model_and_the_encoder_reach_the_caller(model, stage, tmp_path):
    from segq.errors import InputError

    def corrupt():
        yield from _frames(5)
        raise InputError("corrupt video: frames 5..7 do not decode")

    with pytest.raises(InputError, match="corrupt video"):
        with ChunkPipeline(Segmenter(model, stage), "semantic", 2, lambda f: None) as renderer:
            renderer.add_all(corrupt())

    def full_disk(frame):
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        with ChunkPipeline(Segmenter(model, stage), "semantic", 2, full_disk) as renderer:
            renderer.add_all(iter(_frames(6)))
            renderer.archive(0, 6)

    failing = pipeline.ModelStage(lambda m, inputs: 1 / 0)
    try:
        with pytest.raises(ZeroDivisionError):
            with ChunkPipeline(Segmenter(model, failing), "semantic", 2, lambda f: None) as renderer:
                renderer.add_all(iter(_frames(4)))
                renderer.archive(0, 4)
    finally:
        failing.close()
    # the stage of the worker goes on after its callers' failures
    assert stage.alive and Segmenter(model, stage).predict([Image.fromarray(_frames(1)[0])], "semantic").predictions


def test_a_real_part_encodes_every_frame_in_order(model, stage, tmp_path):
    """Decode ahead from a real clip, encode behind into a real part: every frame, in order."""
    from fractions import Fraction

    src = tmp_path / "clip.mp4"
    enc = video.PartEncoder(src, Fraction(25), crf=18, gop=5)
    for f in _frames(12, (64, 48)):
        enc.write(f)
    enc.close()
    info = video.probe(src, 1000, 10**7)
    part = video.PartEncoder(tmp_path / "part.mp4", info.fps)
    with ChunkPipeline(Segmenter(model, stage), "semantic", 4, part.write, annotate_fps=True) as renderer:
        renderer.add_all(video.decode_range(src, info, 2, 11))
        renderer.archive(2, 11)
    assert part.close() == 9
    assert renderer.labels.count == 9


def test_parts_encode_with_the_chosen_h264_encoder(tmp_path):
    from fractions import Fraction

    import av
    import numpy as np

    from workers.media import video

    enc = video.PartEncoder(tmp_path / "p.mp4", Fraction(25))
    for i in range(5):
        enc.write(np.full((64, 96, 3), 40 * i, np.uint8))
    assert enc.close() == 5
    with av.open(str(tmp_path / "p.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in c.decode(c.streams.video[0])) == 5
    assert video.h264_encoder() in ("h264_nvenc", "libx264")
