"""A shard's images run through ``workers.tasks.image.run_shard``, the plain function under the
shard task, against a real redis-server (the shard's moves are Lua) and an in-memory bucket, with
a segmenter that returns a fixed label map: a bad image fails with its reason and the others go
on; positions canceled are skipped; a run that takes a shard over skips what the last one noted
as done; a transient storage failure stops the shard after a progress note, and the next run
resumes; a batch canceled mid-shard stops it; the shard ends once, with its counts."""

from __future__ import annotations

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from segq import keys, layout
from segq.batches import BatchStore
from segq.errors import ObjectNotFound, ServiceUnavailable
from segq.protocol import ShardJob, image_id
from segq.settings import Settings
from segq.shards import ShardImage, ShardSpec, ShardStore
from segq.storage import S3Object
from workers.host.budget import PixelBudget
from workers.media import labels as labels_mod
from workers.media.prediction import Prediction, semantic_segments
from workers.tasks import image as image_mod

BUCKET = "segq"


class Bucket:
    """The storage operations a shard uses, in memory; ``fail`` keys raise a transient error."""

    bucket = BUCKET

    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.fail: set[str] = set()

    def put_bytes(self, key, data, content_type="application/octet-stream"):
        self.objects[key] = data
        return S3Object(BUCKET, key)

    def get_bytes(self, obj, max_bytes=None):
        if obj.key in self.fail:
            raise ServiceUnavailable(f"{obj.uri}: S3 did not answer in time")
        if obj.key not in self.objects:
            raise ObjectNotFound(f"not found: {obj.uri}")
        return self.objects[obj.key]

    def delete(self, key):
        self.objects.pop(key, None)


@dataclass
class Segmenter:
    """A fixed semantic prediction: the whole image one class."""

    calls: list = field(default_factory=list)
    during: object = None  # called on each image (a test's way into the middle of a shard)
    model: object = field(default_factory=lambda: SimpleNamespace(
        name="m", labels=labels_mod.load("ade20k"), checkpoint="fixed", max_label_value=150,
        processor_name="fixed", postprocess="fixed"))

    def predict(self, images, task):
        self.calls.append(images[0].size)
        if self.during:
            self.during()
        w, h = images[0].size
        label_map = np.full((h, w), 2, np.int32)
        times = SimpleNamespace(preprocess_s=0.0, wait_s=0.0, forward_s=0.001, postprocess_s=0.0, blend_s=0.0,
                                preprocess_cpu_s=0.0, postprocess_cpu_s=0.0, blend_cpu_s=0.0)
        return SimpleNamespace(predictions=[Prediction("semantic", label_map, semantic_segments(label_map))],
                               times=times, seconds=0.001)


class Runtime:
    """What ``run_shard`` uses of a worker's runtime."""

    def __init__(self, r, bucket: Bucket, segmenter: Segmenter):
        self.settings = Settings.from_env({"SEGQ_S3_BUCKET": BUCKET})
        self.storage, self.segmenter = bucket, segmenter
        self.shards = ShardStore(r, bucket, 600)
        self.hostname, self.spec = "w1@host", SimpleNamespace(label="cpu")
        self.budget = PixelBudget(10**8)
        self.writers = ThreadPoolExecutor(4)
        self.upkeep = None
        self.counted: list[str] = []
        self.finished: list[str] = []
        self.tallies: list = []

    def model(self, name):
        return self.segmenter

    def count(self, counter):
        self.counted.append(counter)

    def observe(self, tally):
        self.tallies.append(tally)

    def batch_finished(self, name):
        self.finished.append(name)


def png(size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def shard(r, bucket: Bucket, images: list[bytes]) -> tuple[ShardJob, list[str]]:
    """A batch of one shard of ``images`` (their lists and objects in the bucket), started."""
    batches = BatchStore(r, 600)
    opened = batches.open("b", "semantic", "m", "normal", "{}", "token")
    entries = []
    for pos, data in enumerate(images):
        key = f"inputs/x/{pos}.png"
        bucket.objects[key] = data
        entries.append(ShardImage(image_id(opened.namespace, opened.first, pos), pos, key, f"s3://{BUCKET}/{key}"))
    ShardStore(r, bucket, 600).write_spec(ShardSpec("b", opened.first, "semantic", "m", entries, created_at=1.0))
    store = ShardStore(r, bucket, 600)
    store.add("b", opened.first, len(images), seal="token")
    return ShardJob("b", f"{opened.first:06d}", "semantic", "m"), [e.id for e in entries]


def results(r, bucket, job: ShardJob) -> dict[int, dict]:
    state = ShardStore(r, bucket, 600).state("b", job.index)
    data = bucket.objects[layout.shard_result_key("b", job.index, state.e)]
    return {line["pos"]: line for line in map(json.loads, data.decode().splitlines())}


def test_a_shard_runs_its_images_fails_the_bad_one_and_ends_once(r):
    bucket, seg = Bucket(), Segmenter()
    job, ids = shard(r, bucket, [png(), b"\x89PNG not really", png((50, 20))])
    rt = Runtime(r, bucket, seg)
    start = rt.shards.start("b", job.index, rt.hostname, "cpu")
    out = image_mod.run_shard(rt, job, start.attempt, set(start.canceled))
    assert (out["done"], out["failed"], out["outcome"]) == (2, 1, 2)  # the batch's only shard: it finished
    lines = results(r, bucket, job)
    assert [lines[p]["state"] for p in range(3)] == ["done", "failed", "done"]
    assert "not a decodable image" in lines[1]["error"] and lines[0]["job"] == ids[0]
    assert all(key in bucket.objects for key in lines[2]["outputs"]) and len(lines[2]["outputs"]) == 3
    assert (lines[2]["width"], lines[2]["height"]) == (50, 20)
    from segq.jobs import CPU_STAGES  # each done image says the CPU seconds of its stages
    assert set(lines[2]["cpu"]) == set(CPU_STAGES) and all(v >= 0 for v in lines[2]["cpu"].values())
    assert lines[2]["cpu"]["decode"] > 0  # a PNG was decoded in the task's thread
    batch = BatchStore(r, 600).get("b")
    assert (batch.done, batch.failed, batch.running, batch.state) == (2, 1, 0, "finished")
    assert rt.finished == ["b"] and rt.counted.count("jobs_done") == 2
    assert rt.tallies and rt.tallies[0].counts  # the images' timings, for the next heartbeat


def test_canceled_positions_are_skipped_and_counted_canceled(r):
    bucket, seg = Bucket(), Segmenter()
    job, _ = shard(r, bucket, [png(), png(), png()])
    rt = Runtime(r, bucket, seg)
    assert rt.shards.cancel_image("b", job.index, 1) == 1  # while queued
    start = rt.shards.start("b", job.index, rt.hostname, "cpu")
    image_mod.run_shard(rt, job, start.attempt, set(start.canceled))
    assert [results(r, bucket, job)[p]["state"] for p in range(3)] == ["done", "canceled", "done"]
    assert len(seg.calls) == 2
    batch = BatchStore(r, 600).get("b")
    assert (batch.done, batch.canceled, batch.queued, batch.running) == (2, 1, 0, 0)


def test_a_transient_failure_stops_the_shard_after_a_note_and_the_next_run_resumes(r, monkeypatch):
    bucket, seg = Bucket(), Segmenter()
    job, _ = shard(r, bucket, [png(), png(), png(), png()])
    bucket.fail.add("inputs/x/2.png")
    rt = Runtime(r, bucket, seg)
    first = rt.shards.start("b", job.index, rt.hostname, "cpu")
    with pytest.raises(ServiceUnavailable):
        image_mod.run_shard(rt, job, first.attempt, set(first.canceled))
    noted = bucket.objects[layout.shard_progress_key("b", job.index)].decode().splitlines()
    done_before = {json.loads(line)["pos"] for line in noted}
    assert 2 not in done_before and done_before  # what finished is noted; the failed image is not
    assert rt.shards.state("b", job.index).s == "r"  # not ended: the task is sent again
    bucket.fail.clear()
    calls = len(seg.calls)
    again = rt.shards.start("b", job.index, "w2@host", "cpu")  # the retry (here: another worker)
    assert again.attempt == 2
    out = image_mod.run_shard(rt, job, again.attempt, set(again.canceled))
    assert out["done"] == 4 and len(seg.calls) - calls == 4 - len(done_before)  # only what was left
    assert layout.shard_progress_key("b", job.index) not in bucket.objects  # the note goes with the end


def test_a_batch_canceled_mid_shard_stops_it_and_what_was_done_stays_done(r, monkeypatch):
    monkeypatch.setattr(image_mod, "CHECK_SECONDS", 0.0)
    monkeypatch.setattr(image_mod, "in_flight", lambda rt: 1)
    bucket = Bucket()
    seen = threading.Event()

    def cancel_once():
        if not seen.is_set():
            seen.set()
            r.hset(keys.batch("b"), "canceled_at", 1.0)  # what `segq cancel b` sets

    seg = Segmenter(during=cancel_once)
    job, _ = shard(r, bucket, [png() for _ in range(5)])
    rt = Runtime(r, bucket, seg)
    start = rt.shards.start("b", job.index, rt.hostname, "cpu")
    out = image_mod.run_shard(rt, job, start.attempt, set(start.canceled))
    states = [results(r, bucket, job)[p]["state"] for p in range(5)]
    assert states[0] == "done" and set(states[2:]) == {"canceled"}
    assert out["done"] + states.count("canceled") == 5 and out["done"] <= 2
    batch = BatchStore(r, 600).get("b")
    assert batch.done == out["done"] and batch.canceled == 5 - out["done"] and batch.state == "finished"
