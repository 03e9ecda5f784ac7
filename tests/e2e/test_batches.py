"""Many jobs, one fleet: a folder of 500 images is one batch, waited on, downloaded with its manifest
and resubmitted without duplicates; an s3:// prefix is a batch; an image job submitted behind a
3,000-frame video and a 300-image batch is done within seconds on one worker; a low-priority
batch barely runs while a normal one does."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import av
import pytest

from producer.client import Client
from segq import layout
from segq.settings import Settings
from support.cli import segq
from support.media import photo, video
from support.servers import start_worker, wait_for_worker
from support.storage import fetch

pytestmark = pytest.mark.e2e


def fast_checkpoint(folder: Path) -> Path:
    """A small real Mask2Former checkpoint (random weights), written by ``save_pretrained``."""
    import torch
    from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessorPil

    from workers.model.checkpoints import tiny_config

    config = tiny_config("ade20k")
    config.num_queries = 8
    config.id2label = {i: f"thing {i}" for i in range(8)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    config.num_labels = 8
    torch.manual_seed(0)
    Mask2FormerForUniversalSegmentation(config).save_pretrained(folder)
    Mask2FormerImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(folder)
    return folder


def photos(folder: Path, n: int, size=(32, 24)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo(folder / f"p{i:04d}.png", size, seed=i)
    return folder


def test_a_folder_of_500_images_is_one_batch_waited_on_downloaded_and_resubmitted_without_duplicates(
        client, worker, second_worker, tmp_path):
    folder = photos(tmp_path / "photos", 500)
    (folder / "notes.txt").write_text("not an image")  # skipped: directories take images and videos only
    result = segq("submit", str(folder), "--task", "semantic", "--batch", "photos-500", timeout=300)
    assert result.returncode == 0, result.stderr
    ids = result.stdout.split()
    assert len(ids) == len(set(ids)) == 500
    assert "batch photos-500: created, 500 semantic job(s) queued" in result.stderr

    result = segq("wait", "photos-500", "--json", timeout=600)
    assert result.returncode == 0, result.stderr
    [batch] = json.loads(result.stdout)
    assert batch["state"] == "finished" and batch["jobs"] == 500
    assert batch["counts"] == {"queued": 0, "running": 0, "done": 500, "failed": 0, "canceled": 0}
    assert batch["frames_done"] == batch["frames_total"] == 500

    status = json.loads(segq("status", "photos-500", "--json").stdout)
    assert status["counts"]["done"] == 500 and status["finished_at"] >= status["created_at"]
    assert "photos-500" in [b["name"] for b in json.loads(segq("batches", "--json").stdout)]

    out = tmp_path / "out"
    result = segq("get", "photos-500", "-o", str(out), "--json", timeout=600)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert (got["downloaded"], got["already_there"]) == (1500, 0)  # 3 outputs per semantic image job
    lines = [json.loads(line) for line in (out / "photos-500" / "manifest.jsonl").read_text().splitlines()]
    assert [line["job"] for line in lines] == ids  # one line per input, in submission order
    assert {line["state"] for line in lines} == {"done"} and all(line["error"] is None for line in lines)
    first = lines[0]
    assert first["source"] == str(folder / "p0000.png") and first["kind"] == "image"
    assert sorted(Path(k).name for k in first["outputs"]) == sorted(layout.output_names("semantic"))
    assert (out / "photos-500" / ids[0] / layout.OVERLAY).stat().st_size > 0
    again = json.loads(segq("get", "photos-500", "-o", str(out), "--json", timeout=600).stdout)
    assert (again["downloaded"], again["already_there"]) == (0, 1500)  # only what is missing

    # The same command again (a producer that crashed halfway would rerun it): nothing is duplicated.
    result = segq("submit", str(folder), "--task", "semantic", "--batch", "photos-500", timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []
    assert "0 semantic job(s) queued" in result.stderr and "500 input(s) skipped: already in the batch" in result.stderr
    # New files are added; a changed file (new content, size or time) is a new input.
    photo(folder / "new.png", (32, 24), seed=999)
    photo(folder / "p0001.png", (40, 24), seed=1)
    result = segq("submit", str(folder), "--task", "semantic", "--batch", "photos-500", "--wait", timeout=600)
    assert result.returncode == 0, result.stderr
    assert "2 semantic job(s) queued" in result.stderr and "499 input(s) skipped" in result.stderr
    assert client.batch("photos-500").jobs == 502

    refused = segq("submit", str(folder), "--task", "panoptic", "--batch", "photos-500")
    assert refused.returncode == 2 and "semantic batch on model ade-semantic" in refused.stderr
    assert segq("status", "0123456789abcdef0").returncode == 4  # neither a job id nor a batch name
    assert segq("status", "no-such-batch").returncode == 4


def test_an_s3_prefix_is_one_batch_of_every_image_and_video_under_it(client, worker, tmp_path):
    bucket = client.settings.s3_bucket
    for i in range(30):
        client.storage.put_file(photo(tmp_path / f"s{i}.png", (32, 24), seed=i), f"inputs/cams/day1/s{i:02d}.png")
    client.storage.put_bytes("inputs/cams/day1/readme.txt", b"not an image")
    client.storage.put_file(photo(tmp_path / "other.png", (32, 24)), "inputs/cams/day2/o.png")

    result = segq("submit", f"s3://{bucket}/inputs/cams/day1/", "--task", "semantic", "--batch", "cams-day1",
                  "--wait", "--json", timeout=600)
    assert result.returncode == 0, result.stderr
    assert [r["state"] for r in json.loads(result.stdout)] == ["done"] * 30  # --wait --json: the job records
    batch = json.loads(segq("status", "cams-day1", "--json").stdout)
    assert batch["counts"]["done"] == 30 and batch["jobs"] == 30
    sources = sorted(r.source for r in client.batch_jobs("cams-day1"))
    assert sources == [f"s3://{bucket}/inputs/cams/day1/s{i:02d}.png" for i in range(30)]
    assert all(r.input == r.source for r in client.batch_jobs("cams-day1"))  # read in place, never copied

    refused = segq("submit", f"s3://{bucket}/outputs/", "--task", "semantic")
    assert refused.returncode == 1 and "never inputs" in refused.stderr
    refused = segq("submit", f"s3://{bucket}/", "--task", "semantic")  # holds outputs/ too
    assert refused.returncode == 1 and "never inputs" in refused.stderr
    refused = segq("submit", "s3://another-bucket/cams/", "--task", "semantic")
    assert refused.returncode == 1 and "SEGQ_INPUT_PREFIXES" in refused.stderr


@pytest.fixture(scope="module")
def fair(session_dir, stack_env, redis_client, tmp_path_factory):
    """One worker of its own serving a fast model (the tiny architecture with 8 classes and 8
    queries and a 64-pixel processor, so that thousands of frames run in a minute: what is
    measured here is the order of work, not the model), and a client that knows it."""
    folder = fast_checkpoint(tmp_path_factory.mktemp("fast") / "fast-semantic")
    env = {**stack_env, "SEGQ_MODELS": stack_env["SEGQ_MODELS"] + f",fast-semantic={folder}",
           "SEGQ_MAX_VIDEO_FRAMES": "5000", "SEGQ_SHARD_MAX_IMAGES": "4"}
    service, hostname = start_worker(session_dir, env, "fair", models="fast-semantic")
    wait_for_worker(env["SEGQ_REDIS_URL"], hostname, service)
    yield Client(Settings.from_env({**os.environ, **env}))
    service.stop()


def test_an_image_job_behind_a_long_video_and_a_large_batch_is_done_within_seconds(fair, tmp_path):
    clip = video(tmp_path / "long.mp4", frames=3000, size=(64, 48), gop=64)
    [long_video] = fair.submit([str(clip)], task="semantic", model="fast-semantic", chunk_frames=32, batch_size=8)
    big = fair.submit([str(photos(tmp_path / "big", 300))], task="semantic", model="fast-semantic")
    deadline = time.monotonic() + 120
    while not fair.status(long_video.id).chunks_total:  # the video has split into its 94 chunks
        assert fair.status(long_video.id).state != "failed" and time.monotonic() < deadline
        time.sleep(0.05)
    [late] = fair.submit([str(photo(tmp_path / "late.png", (32, 24)))], task="semantic", model="fast-semantic")
    [done] = fair.wait([late.id], timeout=120)
    assert done.state == "done"
    waited = done.finished_at - done.created_at
    assert waited <= 45, f"the image job waited {waited:.1f}s behind the video and the batch"
    video_then, batch_then = fair.status(long_video.id), fair.batch(big[0].batch)
    assert video_then.state == "running" and batch_then.done < 300  # it did not wait for either

    [video_done] = fair.wait([long_video.id], timeout=900)
    assert video_done.state == "done" and video_done.frames_done == 3000 and video_done.assemblies == 1
    out = tmp_path / "overlay.mp4"
    out.write_bytes(fetch(fair, layout.output_key(long_video.id, layout.OVERLAY_VIDEO)))
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(c.streams.video[0])) == 3000
    [finished] = fair.wait_batch([big[0].batch], timeout=600)
    assert finished.done == 300


def test_a_low_priority_batch_starts_at_most_6_shards_while_a_normal_batch_of_40_images_runs(fair, tmp_path):
    """Priorities are strict in the scheduler's turns, which are shards (here of at most 4 images,
    SEGQ_SHARD_MAX_IMAGES): a low batch's shards already in the queue when the normal batch
    arrives still start (the queue holds one per slot: 3), and so may those released once every
    normal shard has left its batch for the queue, while the last normal ones run (3 slots)."""
    low = fair.submit([str(photos(tmp_path / "low", 30))], task="semantic", model="fast-semantic",
                      priority="low", batch="later-please")
    normal = fair.submit([str(photos(tmp_path / "normal", 40, size=(36, 24)))], task="semantic",
                         model="fast-semantic", batch="now-please")
    [n] = fair.wait_batch(["now-please"], timeout=600)
    assert n.done == 40 and n.shards >= 10
    [lo] = fair.wait_batch(["later-please"], timeout=600)
    assert lo.done == 30 and lo.shards >= 8
    started = min(r.created_at for r in fair.batch_jobs("now-please"))
    low_shards: dict[int, float] = {}  # shard -> when it began (its first image)
    for r in fair.batch_jobs("later-please"):
        low_shards[r.shard] = min(low_shards.get(r.shard, r.started_at), r.started_at)
    during = [s for s, t in low_shards.items() if started <= t <= n.finished_at]
    assert len(during) <= 6, f"{len(during)} low-priority shards started while the normal batch ran"
    assert {r.priority for r in fair.batch_jobs("later-please")} == {"low"} and len(low) == 30 and len(normal) == 40
