"""A dataset is one batch of shards: 5,000 images through two workers whose model is the stand-in,
a worker SIGKILLed in the middle of a shard and Redis restarted in the middle of the batch, and
still every image done once, with its outputs and its manifest line; submitting the same prefix
again adds nothing; the bad images fail with their reasons, and once fixed, `segq retry` runs
those and nothing else.

The module has its own Redis and S3 (they are killed and restarted) and one-second heartbeats, so
that a dead worker's leases expire in seconds. The model is the stand-in
(``workers.model.standin``): what is tested is the queue, the shards, the records and the storage.
"""

from __future__ import annotations

import io
import json
import signal
import time
from pathlib import Path

import pytest
from PIL import Image

from producer.client import Client
from producer.stack import Servers, wait_until
from segq import layout, leases, registry
from segq.settings import Settings
from segq.storage import S3Object
from support.cli import segq
from support.servers import start_worker, wait_for_worker

pytestmark = pytest.mark.e2e

IMAGES = 5000
BAD = 10
HEARTBEAT = 1
PREFIX = "inputs/dataset/"


def png(color=(90, 140, 200), size=(32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


class Stack:
    """The module's own servers and stand-in workers, and a client."""

    def __init__(self, root: Path, s3_keys: tuple[str, str]):
        self.root = root
        self.servers = Servers(root, s3_keys=s3_keys).start()
        self.env = {**self.servers.env(), "SEGQ_MODELS": "ade-semantic=standin:wait_ms=1",
                    "SEGQ_TASK_MODELS": "semantic=ade-semantic", "SEGQ_ALLOW_STANDIN": "1",
                    "SEGQ_HEARTBEAT_SECONDS": str(HEARTBEAT), "SEGQ_RETRY_BUDGET": "180",
                    "SEGQ_ENV_FILE": "/nonexistent/.env"}
        self.client = Client(Settings.from_env(self.env))
        self.workers: dict[str, object] = {}
        self.count = 0

    @property
    def r(self):
        return self.client.r

    def add_worker(self) -> str:
        self.count += 1
        service, hostname = start_worker(self.root, self.env, f"d{self.count}", models="ade-semantic")
        wait_for_worker(self.servers.redis.url, hostname, service)
        self.workers[hostname] = service
        return hostname

    def kill(self, hostname: str) -> None:
        """SIGKILL the Celery process of a worker, as the OOM killer would."""
        record = registry.get(self.r, hostname)
        import os

        os.kill(record.pid, signal.SIGKILL)
        self.workers.pop(hostname).stop()

    def close(self) -> None:
        for service in self.workers.values():
            service.stop()
        self.servers.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_server, stack_env):
    stack = Stack(tmp_path_factory.mktemp("datasets"), (s3_server.access_key, s3_server.secret_key))
    try:
        stack.add_worker()
        stack.add_worker()
        yield stack
    finally:
        stack.close()


def put_objects(client, good: int, bad: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    data = png()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: client.storage.put_bytes(f"{PREFIX}{i:05d}.png", data, "image/png"), range(good)))
    for i in range(bad):  # corrupt: a PNG cut short
        client.storage.put_bytes(f"{PREFIX}bad{i:02d}.png", data[: len(data) // 2], "image/png")


def running_shard(r):
    return next((lease for lease in leases.leases(r) if lease.task == "segq.segment_shard" and lease.running), None)


def test_a_dataset_of_5000_images_survives_a_killed_worker_and_a_redis_restart_and_each_image_is_done_once(stack):
    client, env = stack.client, stack.env
    put_objects(client, IMAGES, BAD)
    uri = f"s3://{client.settings.s3_bucket}/{PREFIX}"

    result = segq("submit", uri, "--task", "semantic", "--batch", "dataset", "--json", env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    submitted = json.loads(result.stdout)
    assert len(submitted["jobs"]) == len(set(submitted["jobs"])) == IMAGES + BAD
    assert submitted["shards"] < (IMAGES + BAD) / 20  # shards, not one task per image

    # A worker SIGKILLed while it runs a shard: its unfinished images run again elsewhere.
    # (A shard of these small images can end within a second: the shard lost is one whose lease
    # is still there once its worker is dead, since a shard's end removes its lease.)
    lost = []
    while not lost:
        lease = wait_until(lambda: running_shard(stack.r), 300, "a running shard", poll=0.01)
        stack.kill(lease.worker)
        lost = [x for x in leases.leases(stack.r) if x.worker == lease.worker and x.task == "segq.segment_shard"
                and x.running]
        stack.add_worker()
    lease = lost[0]
    # Redis killed (the last second of its writes may be lost) and restarted mid-batch.
    wait_until(lambda: client.batch("dataset").ended > IMAGES // 3, 600, "a third of the batch")
    stack.servers.redis.stop(sig=signal.SIGKILL)
    time.sleep(3)
    stack.servers.redis.start()

    result = segq("wait", "dataset", "--json", env=env, timeout=900)
    assert result.returncode == 1, result.stderr  # the bad images failed
    [batch] = json.loads(result.stdout)
    assert batch["counts"] == {"queued": 0, "running": 0, "done": IMAGES, "failed": BAD, "canceled": 0}
    assert batch["jobs"] == IMAGES + BAD and batch["state"] == "finished"

    # The manifest the batch's end wrote (a moment after: off the task's thread), and every output
    # it names in the bucket (listed, not downloaded: `segq get` of a batch is tested in test_batches.py).
    wait_until(lambda: client.batch("dataset").manifest_at, 120, "the manifest")
    manifest = client.storage.get_bytes(S3Object(client.settings.s3_bucket, layout.manifest_key("dataset")))
    lines = [json.loads(line) for line in manifest.decode().splitlines()]
    assert sorted(line["job"] for line in lines) == sorted(submitted["jobs"])  # every image once
    done = [line for line in lines if line["state"] == "done"]
    failed = [line for line in lines if line["state"] == "failed"]
    assert len(done) == IMAGES and len(failed) == BAD
    stored = {key for key, _size, _etag in client.storage.list_objects(client.settings.s3_bucket, "outputs/")}
    assert all(len(line["outputs"]) == 3 and set(line["outputs"]) <= stored for line in done)
    assert {Path(line["source"]).name for line in failed} == {f"bad{i:02d}.png" for i in range(BAD)}
    assert all("corrupt or truncated PNG" in line["error"] for line in failed), failed[0]["error"]

    # The killed worker's shard was taken over (the images it had noted as done were kept): its
    # images say so, and a later attempt's results count.
    killed_shard = int(lease.task_id.rsplit(":", 1)[1])
    records = client.shards.records("dataset", killed_shard)
    assert records and all(r.state == "done" and r.requeues >= 1 for r in records)
    assert client.shards.state("dataset", killed_shard).e >= 2

    # An image's id answers `segq status`, from its shard's state and results.
    status = json.loads(segq("status", done[0]["job"], "--json", env=env).stdout)
    assert status["state"] == "done" and status["batch"] == "dataset" and status["source"] == done[0]["source"]

    # The same submission again adds nothing.
    result = segq("submit", uri, "--task", "semantic", "--batch", "dataset", env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [] and f"{IMAGES + BAD} input(s) skipped: already in the batch" in result.stderr

    # The bad images fixed in place, `segq retry` runs them, and only them.
    before = {line["job"]: client.storage.client.head_object(
        Bucket=client.settings.s3_bucket, Key=line["outputs"][0])["LastModified"] for line in done[:50]}
    for i in range(BAD):
        client.storage.put_bytes(f"{PREFIX}bad{i:02d}.png", png((200, 60, 60)), "image/png")
    result = segq("retry", "dataset", "--json", env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    [(retried)] = json.loads(result.stdout)
    assert retried["outcome"].startswith(f"retry: {BAD} image(s)")
    result = segq("wait", "dataset", "--json", env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    [batch] = json.loads(result.stdout)
    assert batch["counts"]["done"] == IMAGES + BAD and batch["counts"]["failed"] == 0
    for job_id in (line["job"] for line in failed):
        record = client.status(job_id)
        assert record.state == "done" and record.error == ""
    after = {job_id: client.storage.client.head_object(Bucket=client.settings.s3_bucket, Key=key)["LastModified"]
             for job_id, key in ((line["job"], line["outputs"][0]) for line in done[:50])}
    assert after == before  # the images that were done did not run again
    assert segq("retry", "dataset", env=env).returncode == 1  # nothing left to retry
