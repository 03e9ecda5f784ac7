"""A user submits images, workers segment them, outputs land in S3.

Everything runs against the session's real Redis, SeaweedFS and a real worker process.
"""

from __future__ import annotations

import io
import json
import urllib.request

import numpy as np
import pytest
from PIL import Image

from segq import keys, layout
from segq.jobs import STAGES
from segq.protocol import TASKS

from producer.stack import wait_until
from support.fleet import wait_handled
from support.media import photo, rotated_jpeg
from support.reference import assert_matches
from support.servers import WORKER_THREADS
from support.storage import fetch

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("task", TASKS)
def test_submit_an_image_and_get_outputs_identical_to_transformers(client, tiny_models, tmp_path, task):
    src = photo(tmp_path / "street.png", (320, 240), seed=7)
    [job] = client.submit([str(src)], task=task)
    [done] = client.wait([job.id], timeout=120)

    assert done.state == "done", done.error
    assert done.input == f"s3://{client.settings.s3_bucket}/inputs/{job.id}/input.png"  # named by job, not path
    assert sorted(k.rsplit("/", 1)[1] for k in done.outputs) == sorted(layout.output_names(task))
    assert done.inference_s > 0 and done.fps == pytest.approx(1 / done.inference_s, rel=1e-2)
    assert done.queue_wait_s is not None and done.started_at >= done.created_at
    assert (done.width, done.height) == (320, 240)
    # every stage's seconds, each once (the files are encoded and uploaded several at once, but
    # render and upload are the two phases of that wall time, not sums over the files)
    assert set(done.stages) == set(STAGES), done.stages
    assert all(v >= 0 for v in done.stages.values())
    assert sum(done.stages.values()) <= done.total_s * 1.01 + 1e-3

    overlay = Image.open(io.BytesIO(fetch(client, layout.output_key(job.id, layout.OVERLAY))))
    assert overlay.format == "JPEG" and overlay.size == (320, 240)

    labels = np.array(Image.open(io.BytesIO(fetch(client, layout.output_key(job.id, layout.LABELS)))))
    assert labels.shape == (240, 240 * 4 // 3)
    checkpoint = tiny_models[client.settings.task_models[task]]
    assert_matches(labels, checkpoint, Image.open(src).convert("RGB"), task, what=f"{task} image", threads=WORKER_THREADS)

    doc = json.loads(fetch(client, layout.output_key(job.id, layout.SEGMENTS)))
    assert doc["task"] == task and (doc["width"], doc["height"]) == (320, 240)
    assert doc["segments"], "the tiny checkpoints are tuned to produce segments for every task"
    assert doc["processor"] == "Mask2FormerImageProcessorPil"  # the fleet's pinned processor
    areas = np.bincount(labels.ravel())
    for seg in doc["segments"]:
        assert seg["area"] > 0, "only segments present in the label map are listed"
        assert seg["area"] == areas[seg["id"]]
        assert isinstance(seg["label"], str) and seg["label"]
        if seg["area"]:
            x, y, w, h = seg["bbox"]
            ys, xs = np.nonzero(labels == seg["id"])
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    listed = {s["id"] for s in doc["segments"]}
    assert set(np.unique(labels)) - {0} <= listed or task == "semantic"

    if task == "panoptic":
        rgb = np.array(Image.open(io.BytesIO(fetch(client, layout.output_key(job.id, layout.PANOPTIC_PNG))))).astype(np.int64)
        np.testing.assert_array_equal(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2], labels)
        pan = json.loads(fetch(client, layout.output_key(job.id, layout.PANOPTIC_JSON)))
        assert len(pan["categories"]) == 133
        coco_ids = {c["id"] for c in pan["categories"]}
        assert all(s["category_id"] in coco_ids for s in pan["annotations"][0]["segments_info"])


def test_exif_orientation_is_applied(client, tmp_path):
    src = rotated_jpeg(tmp_path / "portrait.jpg", (300, 200))
    [job] = client.submit([str(src)], task="semantic")
    [done] = client.wait([job.id], timeout=60)
    assert done.state == "done", done.error
    assert (done.width, done.height) == (200, 300)
    overlay = Image.open(io.BytesIO(fetch(client, layout.output_key(job.id, layout.OVERLAY))))
    assert overlay.size == (200, 300)


def test_one_model_load_serves_many_jobs(client, worker, redis_client, tmp_path):
    def done_counts():
        return {k: int(redis_client.hget(k, "jobs_done") or 0) for k in redis_client.scan_iter(keys.worker("*"))}

    before = done_counts()
    paths = [str(photo(tmp_path / f"img{i}.png", (160, 120), seed=i)) for i in range(6)]
    jobs = client.submit(paths, task="semantic")
    records = client.wait([j.id for j in jobs], timeout=120)

    assert [r.state for r in records] == ["done"] * 6
    # a worker's counters reach its record with its next heartbeat
    wait_until(lambda: sum(v - before.get(k, 0) for k, v in done_counts().items()) >= 6, 30,
               "the workers' records counting the jobs")
    for hostname in {r.worker for r in records}:  # whichever workers took them: one load each
        state = redis_client.hgetall(keys.worker(hostname))
        assert json.loads(state["model_loads"]) == {"ade-semantic": 1, "coco-instance": 1, "coco-panoptic": 1}


def test_a_directory_becomes_one_job_per_image(client, tmp_path):
    for i in range(3):
        photo(tmp_path / "shots" / f"{i}.jpg", (96, 64), seed=i, fmt="JPEG")
    (tmp_path / "shots" / "notes.txt").write_text("not an image")
    jobs = client.submit([str(tmp_path / "shots")], task="instance")
    assert len(jobs) == 3
    assert all(r.state == "done" for r in client.wait([j.id for j in jobs], timeout=60))


def test_an_image_already_in_s3_is_segmented_in_place(client, tmp_path):
    key = "inputs/cam1/frame.png"
    client.storage.put_file(photo(tmp_path / "frame.png", (128, 96)), key)
    [job] = client.submit([f"s3://{client.settings.s3_bucket}/{key}"], task="panoptic")
    [done] = client.wait([job.id], timeout=60)
    assert done.state == "done", done.error
    assert done.input == f"s3://{client.settings.s3_bucket}/{key}"


def test_presigned_urls_serve_the_outputs(client, tmp_path):
    [job] = client.submit([str(photo(tmp_path / "a.png", (64, 48)))], task="semantic")
    [done] = client.wait([job.id], timeout=60)
    urls = client.urls(done)
    assert set(urls) == set(layout.output_names("semantic"))
    body = urllib.request.urlopen(urls[layout.SEGMENTS], timeout=10).read()
    assert json.loads(body)["job_id"] == job.id


def test_a_redelivered_message_for_a_finished_job_does_nothing(client, worker, tmp_path):
    from segq.protocol import SEGMENT_SHARD, ShardJob, model_queue

    [job] = client.submit([str(photo(tmp_path / "b.png", (64, 48)))], task="semantic")
    [done] = client.wait([job.id], timeout=60)
    payload = ShardJob(batch=done.batch, shard=f"{done.shard:06d}", task="semantic", model=done.model)
    # The same message again, as Redis redelivers it after a lost ack.
    client.celery.send_task(SEGMENT_SHARD, kwargs=payload.to_message(), queue=model_queue(done.model),
                            task_id=f"{payload.task_id}-again")
    wait_handled(client.r, {f"{payload.task_id}-again"}, timeout=60)
    again = client.status(job.id)
    assert again.state == "done" and again.attempts == 1 and again.finished_at == done.finished_at
