"""The Lua scripts against a real redis-server: jobs move once and their batches count them in the
same step; a chunk counts once and the last one queues assembly once; the scheduler releases work
up to its target, high before normal before low, one task per batch in turn, and records what it
released as in flight."""

from __future__ import annotations

import json

import pytest

from producer.stack import RedisServer
from segq import keys
from segq.batches import BatchStore, NewJob, identity
from segq.connections import redis_client
from segq.jobs import ASSEMBLY_QUEUED, CHUNK_DUPLICATE, CHUNK_RECORDED, JobRecord, JobStore
from segq.scheduler import Scheduler
from segq.states import JobKind, JobState

TTL = 600


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("redis")
    server = RedisServer("redis", root / "redis.log", data_dir=root).start()
    yield server
    server.stop()


@pytest.fixture()
def r(server):
    client = redis_client(server.url)
    client.flushdb()
    return client


@pytest.fixture()
def store(r):
    finished = []
    store = JobStore(r, TTL, on_batch_finished=finished.append)
    store.finished = finished
    return store


def entry(task_id: str) -> str:
    """A pending entry with a stand-in message that names its task."""
    return f"{task_id} {json.dumps({'headers': {'id': task_id}})}"


def jobs(r, batch: str, ids: list[str], kind=JobKind.IMAGE, model="m", priority="normal", seal=True) -> BatchStore:
    batches = BatchStore(r, TTL)
    batches.open(batch, "semantic", model, priority)
    new = [NewJob(i, identity(batch, i), JobRecord(id=i, kind=kind, task="semantic", model=model, input="s3://b/k",
                                                   batch=batch, priority=priority).to_hash(), entry(i))
           for i in ids]
    assert batches.submit(batch, new) == {}
    if seal:
        batches.seal(batch)
    return batches


def released(r, model="m") -> list[str]:
    """The task ids in the model's queue, in the order workers take them (BRPOP: from the right)."""
    return [json.loads(m)["headers"]["id"] for m in reversed(r.lrange(f"segq.model.{model}", 0, -1))]


def test_a_job_starts_once_and_a_final_job_is_skipped(store, r):
    jobs(r, "b1", ["00000000000000a1"])
    assert store.start("00000000000000a1", "w1", "cpu") is True
    assert store.get("00000000000000a1").state == JobState.RUNNING
    assert BatchStore(r, TTL).get("b1").counts == {"queued": 0, "running": 1, "done": 0, "failed": 0, "canceled": 0}
    assert store.start("00000000000000a1", "w1", "cpu") is True  # redelivered while running: counted once
    assert BatchStore(r, TTL).get("b1").running == 1
    store.finish("00000000000000a1", frames=1)
    assert store.start("00000000000000a1", "w2", "cpu") is False  # a redelivery of a finished job
    assert store.get("00000000000000a1").attempts == 2
    assert store.start("00000000000000ff", "w1", "cpu") is None  # no record


def test_a_batch_counts_its_jobs_in_the_moves_and_finishes_with_its_last_job(store, r):
    batches = jobs(r, "b2", ["00000000000000b1", "00000000000000b2", "00000000000000b3"], seal=False)
    assert batches.get("b2").state == "submitting"
    store.start("00000000000000b1", "w", "cpu")
    store.finish("00000000000000b1", frames=1, inference_s=0.2)
    store.fail("00000000000000b2", "bad input")
    assert not store.finished
    assert batches.seal("b2") is False  # one job still queued
    ended = store.cancel("00000000000000b3")
    assert ended.moved and ended.batch_finished == "b2" and store.finished == ["b2"]
    b = batches.get("b2")
    assert (b.state, b.jobs, b.done, b.failed, b.canceled, b.queued, b.running) == ("finished", 3, 1, 1, 1, 0, 0)
    assert (b.frames_total, b.frames_done) == (3, 1)
    assert 0 < r.ttl(keys.batch("b2")) <= TTL and 0 < r.ttl(keys.batch_jobs("b2")) <= TTL
    # a retry opens the batch again and queues the job's new first task in the same step
    assert store.reset_for_retry("00000000000000b2", 1, entry("00000000000000b2-r1")) == 1
    b = batches.get("b2")
    assert (b.state, b.failed, b.queued, b.finished_at) == ("running", 0, 1, None)  # some jobs ended
    assert r.ttl(keys.batch("b2")) == -1
    assert store.reset_for_retry("00000000000000b2", 2, entry("x")) == 0  # queued: nothing to retry
    assert Scheduler(r).dispatch("m", 10) == 4  # the three first tasks and the retry's
    assert released(r)[-1] == "00000000000000b2-r1"


def test_a_batch_holds_each_input_once(r):
    batches = jobs(r, "b3", ["00000000000000c1"], seal=False)
    again = [NewJob("00000000000000c2", identity("b3", "00000000000000c1"), {"id": "00000000000000c2"}, entry("c2")),
             NewJob("00000000000000c3", identity("b3", "new"), JobRecord(
                 id="00000000000000c3", kind="image", task="semantic", model="m", input="s3://b/k",
                 batch="b3").to_hash(), entry("00000000000000c3"))]
    assert batches.submit("b3", again) == {0: "00000000000000c1"}  # held already, by its first job
    assert not r.exists(keys.job("00000000000000c2"))
    assert batches.get("b3").jobs == 2
    assert batches.holders("b3", [identity("b3", "new"), identity("b3", "other")]) == ["00000000000000c3", None]
    assert r.lrange(keys.batch_jobs("b3"), 0, -1) == ["00000000000000c1", "00000000000000c3"]


def test_a_batch_refuses_another_task_model_or_priority(r):
    from segq.errors import UsageError

    batches = BatchStore(r, TTL)
    batches.open("b4", "semantic", "m", "normal")
    with pytest.raises(UsageError, match="semantic batch on model m"):
        batches.open("b4", "panoptic", "m", "normal")
    with pytest.raises(UsageError, match="priority normal"):
        batches.open("b4", "semantic", "m", "low")
    assert batches.open("b4", "semantic", "m", "normal") == (False, 0)


def test_each_chunk_counts_once_and_the_last_queues_assembly_once(store, r):
    job = "00000000000000d1"
    jobs(r, "b5", [job], kind=JobKind.VIDEO)
    store.start(job, "w", "cpu")
    assert Scheduler(r).dispatch("m", 10) == 1  # the split
    chunks = [entry(f"{job}-chunk{i:05d}") for i in range(3)]
    assert store.split_done(job, 30, chunks, frames_total=30, chunks_total=3) == 3
    assert store.split_done(job, 30, chunks, frames_total=30, chunks_total=3) == 0  # a redelivered split
    # the chunks went in front of their batch's pending work, in order; another batch takes turns
    jobs(r, "b5-later", ["00000000000000d2"])
    assert Scheduler(r).dispatch("m", 10) == 4
    assert released(r)[1:] == [f"{job}-chunk00000", "00000000000000d2", f"{job}-chunk00001", f"{job}-chunk00002"]
    assembly = entry(f"{job}-assemble")
    outcomes = [store.chunk_done(job, i, 10, 0.5, {"chunk": i}, assembly) for i in (0, 1, 1, 2, 2)]
    assert outcomes == [CHUNK_RECORDED, CHUNK_RECORDED, CHUNK_DUPLICATE, ASSEMBLY_QUEUED, CHUNK_DUPLICATE]
    rec = store.get(job)
    assert (rec.frames_done, rec.chunks_done, rec.inference_s) == (30, 3, 1.5)
    assert sorted(store.chunk_infos(job)) == [0, 1, 2]
    b = BatchStore(r, TTL).get("b5")
    assert (b.frames_total, b.frames_done) == (30, 30)
    assert Scheduler(r).dispatch("m", 10) == 1
    assert released(r)[-1] == f"{job}-assemble"


def test_finishing_counts_fleet_stats_with_the_codec(store, r):
    jobs(r, "b6", ["00000000000000e1"], model="m2")
    store.finish("00000000000000e1", frames=1, inference_s=0.25, fps=4.0)
    stats = r.hgetall(keys.STATS)
    assert stats[keys.stat_field(keys.STAT_JOBS, "done", "image", "m2")] == "1"
    assert stats[keys.stat_field(keys.STAT_FRAMES, "m2")] == "1"
    assert stats[keys.stat_field(keys.STAT_LAST_FPS, "image", "m2")] == "4.0"
    assert keys.parse_stat_field("last_fps|image|m2") == ("last_fps", ("image", "m2"))
    assert keys.parse_stat_field("nonsense|x") is None


def test_a_record_expires_counting_from_the_end_and_a_final_state_is_never_overwritten(store, r):
    jobs(r, "b7", ["00000000000000f1"])
    r.expire(keys.job("00000000000000f1"), 5)  # as if created long ago
    assert store.cancel("00000000000000f1").moved is True
    assert r.ttl(keys.job("00000000000000f1")) > 500  # the full TTL again, from the end
    assert store.finish("00000000000000f1", frames=1).moved is False  # a late finish does not undo the cancel
    assert store.get("00000000000000f1").state == JobState.CANCELED
    assert store.reset_for_retry("00000000000000f1", 2, entry("x")) == 0  # not retry number 2
    assert store.reset_for_retry("00000000000000f1", 1, entry("00000000000000f1-r1")) == 1
    assert store.get("00000000000000f1").state == JobState.QUEUED and r.ttl(keys.job("00000000000000f1")) == -1


def test_the_scheduler_releases_up_to_its_target_and_each_end_releases_the_next(r):
    jobs(r, "big", [f"{i:016x}" for i in range(10)])
    scheduler = Scheduler(r)
    assert scheduler.dispatch("m", 3) == 3
    assert scheduler.dispatch("m", 3) == 0  # the queue holds its target
    assert released(r) == [f"{i:016x}" for i in range(3)]
    assert sorted(r.zrange(keys.INFLIGHT, 0, -1)) == [f"{i:016x}" for i in range(3)]
    r.rpop("segq.model.m")  # a worker takes one
    assert scheduler.ended(f"{0:016x}", "m", 3) == 1
    assert f"{0:016x}" not in r.zrange(keys.INFLIGHT, 0, -1)
    assert scheduler.pending() == {("m", "normal"): 6}
    assert scheduler.dispatch("m", 0) == 0  # no live slot: nothing released


def test_batches_take_turns_and_priorities_are_strict(r):
    jobs(r, "a-big", [f"a{i:015x}" for i in range(6)])
    jobs(r, "b-small", [f"b{i:015x}" for i in range(2)])
    jobs(r, "c-low", [f"c{i:015x}" for i in range(3)], priority="low")
    jobs(r, "d-high", [f"d{i:015x}" for i in range(1)], priority="high")
    assert Scheduler(r).dispatch("m", 100) == 12
    order = released(r)
    assert order[0] == f"d{0:015x}"  # high first
    assert order[1:5] == [f"a{0:015x}", f"b{0:015x}", f"a{1:015x}", f"b{1:015x}"]  # one each in turn
    assert order[5:9] == [f"a{i:015x}" for i in range(2, 6)]
    assert order[9:] == [f"c{i:015x}" for i in range(3)]  # low only once no normal work is pending
    assert r.llen(keys.ring("m", "normal")) == 0 and not r.hexists(keys.batch("a-big"), "inring")


def test_canceling_a_batch_drops_its_pending_work(r):
    batches = jobs(r, "e-cancel", [f"e{i:015x}" for i in range(5)])
    assert batches.drop_pending("e-cancel") == 5
    assert batches.drop_pending("e-cancel") == 0  # again: nothing left, and no error
    assert Scheduler(r).dispatch("m", 10) == 0
    assert Scheduler(r).pending() == {}


def test_a_canceled_video_with_no_frame_done_is_retried(store, r):
    """A video canceled before its split counted frames (none done): the retry moves its batch's
    frame counters by nothing, and succeeds."""
    job = "00000000000000f9"
    jobs(r, "b9", [job], kind=JobKind.VIDEO)
    store.cancel(job)
    assert store.reset_for_retry(job, 1, entry(f"{job}-r1")) == 1
    b = BatchStore(r, TTL).get("b9")
    assert (b.queued, b.canceled, b.frames_total, b.frames_done) == (1, 0, 0, 0)
