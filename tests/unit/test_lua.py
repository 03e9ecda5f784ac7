"""The job record's Lua scripts against a real redis-server: starting a job once, and counting
each finished chunk once with exactly one caller starting assembly."""

from __future__ import annotations

import pytest

from producer.stack import RedisServer
from segq import keys
from segq.jobs import (
    CHUNK_DUPLICATE, CHUNK_RECORDED, RESEND_ASSEMBLY, START_ASSEMBLY, JobKind, JobRecord, JobState, JobStore,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("redis")
    server = RedisServer("redis", root / "redis.log", data_dir=root).start()
    yield JobStore.from_url(server.url, ttl_seconds=600)
    server.stop()


def new_job(store, job_id: str, **extra) -> None:
    store.create(JobRecord(id=job_id, kind=JobKind.VIDEO, task="semantic", model="m", input="s3://b/k", **extra))


def test_a_job_starts_once_and_a_final_job_is_skipped(store):
    new_job(store, "00000000000000a1")
    assert store.start("00000000000000a1", "w1", "cpu") is True
    assert store.get("00000000000000a1").state == JobState.RUNNING
    store.finish("00000000000000a1", frames=1)
    assert store.start("00000000000000a1", "w2", "cpu") is False  # a redelivery of a finished job
    assert store.get("00000000000000a1").attempts == 1
    assert store.start("00000000000000ff", "w1", "cpu") is None  # no record


def test_each_chunk_counts_once_and_one_caller_starts_assembly(store):
    job = "00000000000000b2"
    new_job(store, job, chunks_total=3, frames_done=0)
    outcomes = [store.chunk_done(job, i, 10, 0.5, {"chunk": i}, task_id=t)
                for i, t in ((0, "c0"), (1, "c1"), (1, "c1-dup"), (2, "c2"), (2, "c2-dup"))]
    # the last duplicate comes while the claimer may still be sending: no second assembly
    assert outcomes == [CHUNK_RECORDED, CHUNK_RECORDED, CHUNK_DUPLICATE, START_ASSEMBLY, CHUNK_DUPLICATE]
    rec = store.get(job)
    assert (rec.frames_done, rec.chunks_done, rec.inference_s) == (30, 3, 1.5)
    # the claiming task run again (requeued: it died before sending) sends it at once
    assert store.chunk_done(job, 2, 10, 0.5, {"chunk": 2}, task_id="c2") == RESEND_ASSEMBLY
    # another task's duplicate sends it once the claim is a minute old and still unsent
    store.r.hset(keys.job(job), "assembly_claimed", "c2|1.0")
    assert store.chunk_done(job, 0, 10, 0.5, {"chunk": 0}, task_id="c0-dup") == RESEND_ASSEMBLY
    store.assembly_sent(job)
    assert store.chunk_done(job, 0, 10, 0.5, {"chunk": 0}) == CHUNK_DUPLICATE  # sent: no resend
    assert sorted(store.chunk_infos(job)) == [0, 1, 2]


def test_finishing_counts_fleet_stats_with_the_codec(store):
    from segq import keys

    store.create(JobRecord(id="00000000000000c3", kind=JobKind.IMAGE, task="semantic", model="m2", input="s3://b/k"))
    store.finish("00000000000000c3", frames=1, inference_s=0.25, fps=4.0)
    stats = store.r.hgetall(keys.STATS)
    assert stats[keys.stat_field(keys.STAT_JOBS, "done", "image", "m2")] == "1"
    assert keys.parse_stat_field("last_fps|image|m2") == ("last_fps", ("image", "m2"))
    assert keys.parse_stat_field("nonsense|x") is None


def test_a_record_expires_counting_from_the_end_and_a_final_state_is_never_overwritten(store):
    from segq import keys

    store.create(JobRecord(id="00000000000000d4", kind=JobKind.IMAGE, task="semantic", model="m", input="s3://b/k"))
    store.r.expire(keys.job("00000000000000d4"), 5)  # as if created long ago
    assert store.cancel("00000000000000d4") is True
    assert store.r.ttl(keys.job("00000000000000d4")) > 500  # the full TTL again, from the end
    assert store.finish("00000000000000d4", frames=1) is False  # a late finish does not undo the cancel
    assert store.get("00000000000000d4").state == JobState.CANCELED
    assert store.reset_for_retry("00000000000000d4") == 1
    assert store.get("00000000000000d4").state == JobState.QUEUED
    assert store.reset_for_retry("00000000000000d4") == 0  # queued: nothing to retry
