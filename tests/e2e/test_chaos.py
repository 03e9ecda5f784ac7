"""Nothing stuck, nothing lost: workers SIGKILLed mid-chunk and mid-assembly, Redis killed and
restarted, S3 down under a backlog, a task that kills its worker every time, cancel and retry.

Every fault is real: the test kills real processes of its own stack (its own Redis and SeaweedFS,
so the session's servers are not disturbed), with a one-second heartbeat so that leases expire
in seconds. Each wait is bounded; no timing is asserted (``bench/faults.py`` measures them).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from pathlib import Path

import av
import pytest

from producer.client import Client
from producer.stack import Servers, wait_until
from producer import fleet
from segq import layout, leases, registry
from segq.settings import Settings
from support.cli import segq
from support.media import photo, video
from support.servers import start_worker, wait_for_worker
from support.storage import fetch

pytestmark = pytest.mark.e2e

HEARTBEAT = 1  # seconds: a dead worker's leases expire after 3 of them


def wait_for(condition, timeout: float, what: str, poll: float = 0.1):
    return wait_until(condition, timeout, what, poll)


class Chaos:
    """The module's own stack: Redis, S3, workers that can be killed, and a client."""

    def __init__(self, root: Path, s3_keys: tuple[str, str], models: dict[str, str]):
        self.root = root
        self.servers = Servers(root, s3_keys=s3_keys).start()
        self.redis, self.s3 = self.servers.redis, self.servers.s3
        self.env = {
            **self.servers.env(),
            "SEGQ_MODELS": ",".join(f"{k}={v}" for k, v in models.items()),
            "SEGQ_HEARTBEAT_SECONDS": str(HEARTBEAT), "SEGQ_RETRY_BUDGET": "180",
            "SEGQ_MAX_WORKER_LOSSES": "3", "SEGQ_ENV_FILE": "/nonexistent/.env",
        }
        self.client = Client(Settings.from_env(self.env))
        self.workers: dict[str, tuple] = {}
        self.count = 0

    @property
    def r(self):
        return self.client.records.r

    def add_worker(self) -> str:
        self.count += 1
        service, hostname = start_worker(self.root, self.env, f"c{self.count}")
        wait_for_worker(self.redis.url, hostname, service)
        self.workers[hostname] = (service, hostname)
        return hostname

    def live_workers(self) -> list[str]:
        return [w.hostname for w in registry.workers(self.r)]

    def kill(self, hostname: str) -> float:
        """SIGKILL the Celery process of a worker (as the OOM killer would); when it happened."""
        record = registry.get(self.r, hostname)
        assert record is not None and record.pid
        os.kill(record.pid, signal.SIGKILL)
        killed = time.time()
        service, _ = self.workers.pop(hostname)
        service.stop()  # the `segq worker` parent exits when its child dies; reap it
        return killed

    def running_lease(self, job_id: str, task: str):
        return next((lease for lease in leases.leases(self.r)
                     if lease.job_id == job_id and lease.task == task and lease.running), None)

    def close(self) -> None:
        for service, _ in self.workers.values():
            service.stop()
        self.servers.stop()


@pytest.fixture(scope="module")
def chaos(tmp_path_factory, s3_server, tiny_models, stack_env):
    stack = Chaos(tmp_path_factory.mktemp("chaos"), (s3_server.access_key, s3_server.secret_key), tiny_models)
    stack.add_worker()
    stack.add_worker()
    yield stack
    stack.close()


@pytest.fixture(autouse=True)
def two_workers_up(chaos):
    """Each story starts with at least two live workers, whatever the one before left running
    (``segq worker`` starts a killed process again; a failed story may end before that)."""
    wait_for(lambda: len(chaos.live_workers()) >= 2, 180, "two live workers before the story")


def frames_of(chaos, job_id: str, tmp_path: Path) -> int:
    out = tmp_path / f"{job_id}.mp4"
    out.write_bytes(fetch(chaos.client, layout.output_key(job_id, layout.OVERLAY_VIDEO)))
    with av.open(str(out)) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


def test_a_worker_killed_mid_chunk_loses_no_frame(chaos, tmp_path):
    src = video(tmp_path / "clip.mp4", frames=48, size=(256, 192))
    [job] = chaos.client.submit([str(src)], task="semantic", chunk_frames=12, batch_size=2)
    lease = wait_for(lambda: chaos.running_lease(job.id, "segq.segment_chunk"), 120, "a running chunk")
    chaos.kill(lease.worker)

    [done] = chaos.client.wait([job.id], timeout=240)
    assert done.state == "done", done.error
    assert (done.frames_done, done.chunks_done) == (48, 4)
    assert done.requeues >= 1 and f"requeued: worker {lease.worker} lost" in (done.note or "")
    assert frames_of(chaos, job.id, tmp_path) == 48
    assert not leases.leases(chaos.r), "every lease is released or reaped"
    chaos.add_worker()


def test_a_worker_killed_during_assembly_still_gives_one_whole_output(chaos, tmp_path):
    src = video(tmp_path / "clip.mp4", frames=60, size=(320, 240), audio=True)
    [job] = chaos.client.submit([str(src)], task="semantic", chunk_frames=30, batch_size=4)
    lease = wait_for(lambda: chaos.running_lease(job.id, "segq.assemble_video"), 240, "assembly running",
                     poll=0.01)
    chaos.kill(lease.worker)

    [done] = chaos.client.wait([job.id], timeout=240)
    assert done.state == "done", done.error
    assert done.assemblies >= 1 and done.requeues >= 1
    assert frames_of(chaos, job.id, tmp_path) == 60  # at-least-once assembly, exactly-once result
    chaos.add_worker()


def test_redis_killed_and_restarted_mid_chunk(chaos, tmp_path):
    src = video(tmp_path / "clip.mp4", frames=40, size=(256, 192))
    [job] = chaos.client.submit([str(src)], task="semantic", chunk_frames=20, batch_size=2)
    wait_for(lambda: chaos.running_lease(job.id, "segq.segment_chunk"), 120, "a running chunk")
    chaos.redis.stop(sig=signal.SIGKILL)
    time.sleep(5)
    chaos.redis.start()

    [done] = chaos.client.wait([job.id], timeout=240)  # also rides out the outage itself
    assert done.state == "done", done.error
    assert done.frames_done == 40 and frames_of(chaos, job.id, tmp_path) == 40
    wait_for(lambda: len(chaos.live_workers()) >= 2, 60, "the workers to publish their records again")


def test_s3_down_for_30_seconds_under_a_backlog_loses_no_job(chaos, tmp_path):
    images = [str(photo(tmp_path / f"i{i}.png", (160, 120), seed=i)) for i in range(6)]
    jobs = chaos.client.submit(images, task="semantic")
    jobs += chaos.client.submit([str(video(tmp_path / "v.mp4", frames=24, size=(160, 120)))], task="semantic",
                                chunk_frames=8)
    chaos.s3.stop(sig=signal.SIGKILL)
    time.sleep(30)
    chaos.s3.start()

    records = chaos.client.wait([j.id for j in jobs], timeout=300)
    assert [r.state for r in records] == ["done"] * len(jobs), [r.error for r in records]


def test_a_task_that_kills_its_worker_every_time_fails_after_three_losses(chaos, tmp_path):
    src = video(tmp_path / "poison.mp4", frames=120, size=(320, 240))
    [job] = chaos.client.submit([str(src)], task="semantic", chunk_frames=120, batch_size=1)
    for _ in range(3):
        lease = wait_for(lambda: chaos.running_lease(job.id, "segq.segment_chunk"), 240, "the chunk running")
        chaos.kill(lease.worker)
        chaos.add_worker()

    [failed] = chaos.client.wait([job.id], timeout=120)
    assert failed.state == "failed"
    assert "segq.segment_chunk lost its worker 3 times" in failed.error
    assert failed.requeues == 2  # put back twice, then given up
    assert len(chaos.live_workers()) >= 2


def test_cancel_stops_a_video_and_retry_runs_it_again(chaos, tmp_path):
    src = video(tmp_path / "long.mp4", frames=96, size=(256, 192))
    [job] = chaos.client.submit([str(src)], task="semantic", chunk_frames=16, batch_size=2)
    wait_for(lambda: chaos.running_lease(job.id, "segq.segment_chunk"), 120, "a running chunk")
    [(record, outcome)] = chaos.client.cancel([job.id])
    assert (record.state, outcome) == ("canceled", "canceled")
    assert chaos.client.cancel([job.id])[0][1] == "already canceled"  # idempotent

    wait_for(lambda: not [lease for lease in leases.leases(chaos.r) if lease.job_id == job.id], 120,
             "the job's tasks to stop")
    time.sleep(2 * HEARTBEAT)
    final = chaos.client.status(job.id)
    assert final.state == "canceled" and not final.assemblies
    listed = chaos.client.storage.client.list_objects_v2(Bucket=chaos.client.settings.s3_bucket,
                                                         Prefix=layout.output_prefix(job.id))
    assert listed.get("KeyCount", 0) == 0, "partial outputs are removed"

    [(again, outcome)] = chaos.client.retry([job.id])
    assert outcome == "retry 1" and again.state in ("queued", "running") and again.retry == 1
    assert chaos.client.retry([job.id])[0][1].startswith("not retried: it is ")
    [done] = chaos.client.wait([job.id], timeout=300)
    assert done.state == "done" and done.frames_done == 96
    assert frames_of(chaos, job.id, tmp_path) == 96
    assert chaos.client.cancel([job.id])[0][1] == "already done"


def celery_pid(chaos, hostname: str) -> int:
    record = registry.get(chaos.r, hostname)
    assert record is not None
    return record.pid


def test_a_message_lost_between_the_pop_and_its_unacked_record_still_ends_done(chaos, tmp_path):
    """The window kombu leaves open: a worker frozen in its blocking pop gets the message from
    Redis, then is killed before it records it. The watchdog sends it again.

    kombu's BRPOP times out after 1 s on the server, frozen or not, so whether a frozen worker's
    pop is still open when the message arrives is a matter of timing. When none was, the test
    takes the message off the queue as such a pop would have (into no unacked record): Redis is
    left in the same state either way, and then every worker is killed."""
    hosts = chaos.live_workers()
    pids = [celery_pid(chaos, h) for h in hosts]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)  # every consumer frozen, maybe inside its BRPOP
    try:
        [job] = chaos.client.submit([str(photo(tmp_path / "lost.png", (64, 48)))], task="semantic")
        queue = f"segq.model.{job.model}"
        time.sleep(2.5)  # every frozen BRPOP has ended by now: nothing else pops
        if chaos.r.llen(queue):
            assert chaos.r.rpop(queue), "the message was on the queue"
        assert chaos.r.llen(queue) == 0
        assert not chaos.r.hlen("unacked"), "popped, never recorded as unacknowledged"
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    # `segq worker` starts its processes again; the job is not forgotten
    [done] = chaos.client.wait([job.id], timeout=180)
    assert done.state == "done", done.error
    assert done.requeues == 1 and "lost" in done.note
    assert fleet.watchdog_counts(chaos.r)["resent"] >= 1
    wait_for(lambda: len(chaos.live_workers()) >= 2, 120, "the workers started again")


def test_poison_messages_are_dead_lettered_and_every_worker_keeps_serving(chaos, tmp_path):
    from segq import deadletters

    pids = {h: celery_pid(chaos, h) for h in chaos.live_workers()}
    before = deadletters.count(chaos.r)
    queue = "segq.model.ade-semantic"
    for i in range(10):
        chaos.r.lpush(queue, f"not json {i} \x00\xff")
    forged = {"body": base64.b64encode(json.dumps([[1, 2], {}, {}]).encode()).decode(), "content-type":
              "application/json", "content-encoding": "utf-8",
              "headers": {"task": "celery.accumulate", "id": "forged-1"},
              "properties": {"delivery_tag": "forged-tag", "delivery_info": {"exchange": "", "routing_key": queue},
                             "body_encoding": "base64"}}
    chaos.r.lpush(queue, json.dumps(forged))
    wait_for(lambda: deadletters.count(chaos.r) - before >= 11, 60, "the poison items dead-lettered")
    reasons = [d.reason for d in deadletters.recent(chaos.r, 11)]
    assert reasons.count("not JSON") == 10 and "task 'celery.accumulate' is not a segq task" in reasons
    listed = json.loads(segq("dead-letters", "--json", "-n", "11", env=chaos.env).stdout)
    assert len(listed) == 11 and all("raw" not in d for d in listed)  # the bytes are never printed
    # every worker process is the one that was there, and still serves
    [job] = chaos.client.submit([str(photo(tmp_path / "after.png", (64, 48)))], task="semantic")
    [done] = chaos.client.wait([job.id], timeout=120)
    assert done.state == "done"
    assert {h: celery_pid(chaos, h) for h in chaos.live_workers()} == pids
    assert segq("dead-letters", "--purge", env=chaos.env).returncode == 0 and deadletters.count(chaos.r) == 0


def test_ten_redis_restarts_leave_every_worker_up(chaos, tmp_path):
    pids = {h: celery_pid(chaos, h) for h in chaos.live_workers()}
    launchers = [service for service, _ in chaos.workers.values()]
    jobs = []
    for i in range(10):
        jobs += chaos.client.submit([str(photo(tmp_path / f"r{i}.png", (64, 48), seed=i))], task="semantic")
        chaos.redis.stop(sig=signal.SIGKILL)
        time.sleep(1)
        chaos.redis.start()
        time.sleep(2)  # every client reconnects (and the next kill comes while some are still at it)
    records = chaos.client.wait([j.id for j in jobs], timeout=300)
    assert [r.state for r in records] == ["done"] * 10, [r.error for r in records]
    assert all(service.running for service in launchers), "every `segq worker` is still up"
    wait_for(lambda: set(chaos.live_workers()) >= set(pids), 60, "the workers' records again")
    assert {h: celery_pid(chaos, h) for h in pids} == pids, "no worker process had to be started again"


def test_a_worker_killed_and_redis_restarted_while_work_is_released_loses_nothing(chaos, tmp_path):
    images = chaos.client.submit([str(photo(tmp_path / f"w{i}.png", (64, 48), seed=i)) for i in range(30)],
                                 task="semantic", batch="chaos-window")
    [clip] = chaos.client.submit([str(video(tmp_path / "w.mp4", frames=80, size=(96, 64)))], task="semantic",
                                 chunk_frames=8, batch_size=4)
    wait_for(lambda: chaos.client.batch("chaos-window").done >= 5, 120, "the batch under way")
    lease = wait_for(lambda: chaos.running_lease(clip.id, "segq.segment_chunk"), 120, "a running chunk")
    chaos.kill(lease.worker)
    chaos.redis.stop(sig=signal.SIGKILL)
    time.sleep(3)
    chaos.redis.start()
    chaos.add_worker()
    records = chaos.client.wait([j.id for j in images] + [clip.id], timeout=400)
    assert [r.state for r in records] == ["done"] * 31, [r.error for r in records]
    assert records[-1].frames_done == 80 and frames_of(chaos, clip.id, tmp_path) == 80
    assert records[-1].assemblies == 1
    for r in records[:-1]:
        # a job runs more than once only when its worker died under it (a requeue) or its message
        # was lost and sent again, each noted on the job
        assert r.attempts <= 1 + (r.requeues or 0), (r.id, r.attempts, r.requeues, r.note)
    batch = chaos.client.batch("chaos-window")
    assert (batch.done, batch.queued, batch.running) == (30, 0, 0) and batch.final
