"""Worker parts that need neither servers nor torch: the launcher's plan, chunk planning,
colour tables, segment statistics."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from segq.errors import UsageError
from segq.settings import Settings
from workers.host import launcher
from workers.media import labels
from workers.media import render
from workers.media.prediction import Prediction, Segment, semantic_segments, with_stats
from segq.protocol import chunk_ranges as plan_chunks


def test_the_launcher_pins_one_process_per_gpu_with_its_models_queues(monkeypatch):
    s = Settings.from_env({})
    procs = launcher.plan(s, gpus="0,1", models="semantic,coco-panoptic", name="edge@node7")
    assert [(p.hostname, p.cuda_visible_devices) for p in procs] == [("edge-gpu0@node7", "0"), ("edge-gpu1@node7", "1")]
    assert procs[0].models == ("ade-semantic", "coco-panoptic")
    assert procs[0].queues == ("segq.model.ade-semantic", "segq.model.coco-panoptic")
    env = launcher.environment(procs[1], threads=None, precision="fp16")
    assert (env["CUDA_VISIBLE_DEVICES"], env["SEGQ_WORKER_MODELS"], env["SEGQ_PRECISION"]) == ("1", "ade-semantic,coco-panoptic", "fp16")
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(32 << 20) and env["MALLOC_TRIM_THRESHOLD_"] == str(128 << 20)
    assert env["MALLOC_ARENA_MAX"] == "2"
    threaded = launcher.environment(procs[0], threads=3)  # a GPU process's share of the host's cores
    assert (threaded["SEGQ_WORKER_THREADS"], threaded["OMP_NUM_THREADS"]) == ("3", "3")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")  # an operator's own setting wins
    assert launcher.environment(procs[1])["MALLOC_TRIM_THRESHOLD_"] == "0"
    [cpu] = launcher.plan(s, gpus="cpu")
    assert cpu.cuda_visible_devices == "" and cpu.hostname.startswith("segq-cpu@")
    # the policy (threads pool, prefetch 1, acks late) comes from the app's config, not the command line
    assert "--pool" not in launcher.command(cpu) and "--prefetch-multiplier" not in launcher.command(cpu)


@pytest.mark.parametrize("gpus, models, message", [
    ("0,x", None, "--gpus: expected auto, all, cpu or indexes"),
    ("cpu", "depth", "unknown model 'depth'"),
])
def test_the_launcher_refuses_bad_arguments(gpus, models, message):
    with pytest.raises(UsageError, match=message):
        launcher.plan(Settings.from_env({}), gpus=gpus, models=models)


@pytest.mark.parametrize("frames, size, expected", [
    (91, 12, [(0, 12), (12, 24), (24, 36), (36, 48), (48, 60), (60, 72), (72, 84), (84, 91)]),
    (5, 32, [(0, 5)]),
    (64, 32, [(0, 32), (32, 64)]),
])
def test_chunks_cover_every_frame_once(frames, size, expected):
    chunks = plan_chunks(frames, size)
    assert chunks == expected
    assert [i for a, b in chunks for i in range(a, b)] == list(range(frames))


def test_semantic_colours_are_the_dataset_palette():
    ade = labels.load("ade20k")
    pred = Prediction("semantic", np.array([[0, 149], [3, 3]], dtype=np.int32))
    lut, zero_is_empty = render.color_table(pred, ade)
    assert not zero_is_empty and (lut[:150] == ade.colors).all()


def test_instances_of_one_class_get_distinct_nearby_shades_and_zero_is_empty():
    coco = labels.load("coco_instance")
    segs = [Segment(1, 0, 0.9), Segment(2, 0, 0.8), Segment(3, 2, 0.7)]
    lut, zero_is_empty = render.color_table(Prediction("instance", np.zeros((2, 2), np.int32), segs), coco)
    assert zero_is_empty and (lut[0] == 0).all()
    assert (lut[1] == coco.colors[0]).all() and not (lut[2] == lut[1]).all()
    assert np.abs(lut[2].astype(int) - lut[1].astype(int)).max() <= 50
    image = np.full((2, 2, 3), 100, np.uint8)
    over = render.overlay(image, Prediction("instance", np.array([[0, 1], [3, 0]], np.int32), segs), coco)
    assert (over[0, 0] == 100).all() and (over[1, 1] == 100).all()  # no segment: the photo


def test_segment_area_and_box_and_only_present_segments():
    m = np.zeros((6, 8), np.int32)
    m[1:3, 2:5] = 1
    m[4, 7] = 2
    segs = with_stats(m, [Segment(1, 5, 0.9), Segment(2, 6, 0.8), Segment(3, 7, 0.7)])
    assert [(s.id, s.area, s.bbox) for s in segs] == [(1, 6, (2, 1, 3, 2)), (2, 1, (7, 4, 1, 1))]
    assert [(s.id, s.area) for s in semantic_segments(m)] == [(0, 41), (1, 6), (2, 1)]


def test_these_parts_do_not_import_torch():
    import subprocess

    code = ("import sys, workers.host.launcher, workers.media.render, workers.media.prediction, workers.media.video, workers.media.labels; "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.parametrize("band", [1, 7, 64, 1 << 20])
def test_segment_stats_are_exact_whatever_the_band(monkeypatch, band):
    """Areas and boxes come from a banded pass (a 40 MP map in one pass would need gigabytes of
    temporaries); every band size gives what a direct count gives."""
    from workers.media import prediction

    monkeypatch.setattr(prediction, "STATS_BAND_PIXELS", band)
    rng = np.random.default_rng(band)
    m = rng.integers(0, 9, (53, 37)).astype(np.int32)
    m[m == 4] = 0
    for i, (area, (x, y, w, h)) in prediction._stats(m, None).items():
        ys, xs = np.nonzero(m == i)
        assert area == len(ys) and (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                                    ys.max() - ys.min() + 1)
    assert set(prediction._stats(m, None)) == set(np.unique(m).tolist())
    assert prediction._stats(m, [4]) == {4: (0, (0, 0, 0, 0))}


@pytest.mark.parametrize("band", [1, 333, 1 << 20])
def test_the_banded_overlay_is_the_articles_blend_and_the_panoptic_png_holds_the_ids(monkeypatch, band):
    import cv2

    from segq import defaults

    monkeypatch.setattr(render, "OVERLAY_BAND_PIXELS", band)
    rng = np.random.default_rng(band)
    image = rng.integers(0, 256, (61, 47, 3), dtype=np.uint8)
    label_map = rng.integers(0, 6, (61, 47)).astype(np.int32)
    ls = labels.load("coco_panoptic")
    pred = Prediction("panoptic", label_map, [Segment(i, i * 7, 0.9, area=1) for i in range(1, 6)])
    lut, _ = render.color_table(pred, ls)
    whole = cv2.addWeighted(image, defaults.OVERLAY_IMAGE_WEIGHT, lut[label_map], defaults.OVERLAY_SEGMENT_WEIGHT, 0)
    whole[label_map == 0] = image[label_map == 0]  # no segment: the photo
    assert np.array_equal(render.overlay(image, pred, ls), whole)
    big = Prediction("panoptic", (label_map * 70_001).astype(np.int32), [])
    png, _ = render.coco_panoptic(big, ls, job_id="j")
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.int64)
    assert np.array_equal(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2], big.label_map)


def test_after_redis_was_away_the_reaper_waits_for_the_fleet_to_beat_again():
    """A failover cuts every worker off: until the others have beaten again their records and
    leases look dead, so the worker that reconnects first must not put their running work back."""
    from workers.host.upkeep import AfterOutage

    guard = AfterOutage(interval=1.0, needed=3)
    assert guard.beat(0.01)  # a worker that just started judges at once
    assert [guard.beat(t) for t in (4.2, 0.01, 0.01, 0.01, 0.02)] == [False, False, False, True, True]
    assert [guard.beat(t) for t in (None, 0.01, 0.01, 0.01)] == [False, False, False, True]


@pytest.mark.parametrize("band", [1, 50, 1 << 20])
def test_segment_stats_by_runs_equal_a_direct_count(monkeypatch, band):
    """Region-like maps (a model's) are counted by their runs along rows; noise-like ones pixel by
    pixel: both give a direct count's areas and boxes, ids absent included."""
    from workers.media import prediction

    monkeypatch.setattr(prediction, "STATS_BAND_PIXELS", band)
    rng = np.random.default_rng(band)
    m = np.zeros((61, 600), np.int32)
    for _ in range(8):  # rectangles over rectangles: at most 18 runs in a row of 600
        y, x = rng.integers(0, 60), rng.integers(0, 599)
        m[y:y + rng.integers(1, 30), x:x + rng.integers(1, 200)] = rng.integers(1, 12)
    m[:, -1] = 11  # a run in the last column of every row (it ends where the next row begins)
    assert prediction._run_stats(m, int(m.max()) + 1) is not None
    noise = rng.integers(0, 5, (20, 30)).astype(np.int32)
    assert prediction._run_stats(noise, 5) is None
    for label_map in (m, noise):
        direct = {}
        for i in np.unique(label_map).tolist():
            ys, xs = np.nonzero(label_map == i)
            direct[i] = (len(ys), (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))
        assert prediction._stats(label_map, None) == direct
        absent = int(label_map.max()) + 3
        assert prediction._stats(label_map, [absent, int(label_map[0, 0])]) == {
            absent: (0, (0, 0, 0, 0)), int(label_map[0, 0]): direct[int(label_map[0, 0])]}


def test_an_image_jobs_files_are_encoded_and_uploaded_at_once_and_the_first_error_waits_for_the_rest():
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from segq import layout
    from segq.errors import ServiceUnavailable
    from workers.tasks.outputs import write_outputs

    class Recorder:  # a stand-in for segq.storage.Storage: what was put, and how many puts at once
        def __init__(self, refuse: str = ""):
            self.put, self.refuse, self.lock = {}, refuse, threading.Lock()
            self.now = self.peak = 0
            self.all_started = threading.Barrier(4, timeout=10)  # released once 4 puts run together

        def put_bytes(self, key, body, content_type):
            with self.lock:
                self.now += 1
                self.peak = max(self.peak, self.now)
            try:
                self.all_started.wait()
                self.all_started.abort()  # once is enough: the fifth file need not wait
            except threading.BrokenBarrierError:
                pass
            time.sleep(0.01)
            with self.lock:
                self.now -= 1
            if key.endswith(self.refuse or "\0"):
                raise ServiceUnavailable("S3 answered 503 (will retry)")
            with self.lock:
                self.put[key] = (body, content_type)

    names = ["a.png", "b.json", "c.jpg", "d.png", "e.json"]
    parts = {n: ((lambda n=n: n.encode()), "x/" + n) for n in names}
    with ThreadPoolExecutor(4) as pool:
        storage = Recorder()
        started = time.perf_counter()
        written = write_outputs(storage, pool, "j1", parts)
        wall = time.perf_counter() - started
        assert written.keys == [layout.output_key("j1", n) for n in names]
        assert storage.put == {layout.output_key("j1", n): (n.encode(), "x/" + n) for n in names}
        assert storage.peak == 4  # not one after another: the pool's 4 threads uploaded together
        assert written.render_s >= 0 and written.upload_s > 0 and written.render_s + written.upload_s <= wall
        # the uploads slept (no CPU): their CPU seconds are a small part of their wall time
        assert 0 <= written.render_cpu_s and 0 <= written.upload_cpu_s < 5 * 0.01

        storage = Recorder(refuse="b.json")
        with pytest.raises(ServiceUnavailable):
            write_outputs(storage, pool, "j2", parts)
        assert len(storage.put) == 4  # every other file was still written before the error came out
