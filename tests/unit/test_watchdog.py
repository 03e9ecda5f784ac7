"""The watchdog against a real redis-server: a released message that vanished (popped, never
recorded as unacknowledged) is sent again after a grace, once per loss, rebuilt from the job's
request (a shard's from its batch's template, with a delivery tag of its own); one that keeps
vanishing fails its job; entries with nothing left to watch are dropped; messages that are queued,
held or leased are left alone."""

from __future__ import annotations

import json

import pytest
from celery import Celery

from segq import keys, messages, watchdog
from segq.batches import BatchStore, NewJob, identity
from segq.jobs import JobRecord, JobStore
from segq.protocol import SEGMENT_SHARD, SPLIT_VIDEO, ShardJob, VideoJob
from segq.scheduler import Scheduler, entry
from segq.shards import ShardStore
from segq.states import JobKind

APP = Celery("test")


def template() -> str:
    from segq.shards import message_template

    return message_template(APP, "semantic", "m", "normal")


def submit_video(r, job_id: str) -> JobStore:
    """A real video job, its split's message released to the model's queue (in flight)."""
    batches = BatchStore(r, 600)
    batches.open("b", "semantic", "m", "normal", template(), "token")
    payload = VideoJob(job_id=job_id, task="semantic", model="m", input_bucket="segq", input_key="inputs/x.mp4",
                       batch="b")
    record = JobRecord(id=job_id, kind=JobKind.VIDEO, task="semantic", model="m", input="s3://segq/inputs/x.mp4",
                       batch="b", created_at=1.0)
    message = messages.build(APP, SPLIT_VIDEO, payload.to_message(), job_id, "segq.model.m")
    batches.submit("b", [NewJob(job_id, identity(job_id), record.to_hash(), entry(message))])
    assert Scheduler(r).dispatch("m", 5) == 1
    return JobStore(r, 600)


def sweep(r, store, now, max_lost=3):
    return watchdog.sweep(r, store, APP, min_age=10, grace=10, max_lost=max_lost, now=now)


def test_a_message_lost_between_pop_and_unacked_is_sent_again_once_per_loss(r):
    store = submit_video(r, "00000000000000a1")
    t0 = r.zscore(keys.INFLIGHT, "00000000000000a1")
    assert sweep(r, store, t0 + 11) == []  # in its queue: nothing to do
    r.delete("segq.model.m")  # a worker popped it and died before recording it unacknowledged
    assert sweep(r, store, t0 + 5) == []  # too young to look at
    assert sweep(r, store, t0 + 11) == []  # missing once: suspect
    assert sweep(r, store, t0 + 15) == []  # within the grace (the pop-to-record window is short)
    [lost] = sweep(r, store, t0 + 22)
    assert (lost.task_id, lost.outcome, lost.times) == ("00000000000000a1", "resent", 1)
    [again] = r.lrange("segq.model.m", 0, -1)
    assert messages.task_of(again) == (SPLIT_VIDEO, "00000000000000a1")
    body = json.loads(__import__("base64").b64decode(json.loads(again)["body"]))
    assert body[1]["input_key"] == "inputs/x.mp4" and body[1]["batch"] == "b"  # rebuilt from the record
    record = store.get("00000000000000a1")
    assert record.requeues == 1 and "lost" in record.note and "sent again" in record.note
    assert r.hget(keys.STATS, keys.stat_field(keys.STAT_RESENT)) == "1"
    assert sweep(r, store, t0 + 40) == []  # queued again: left alone


def test_held_and_leased_messages_are_left_alone(r):
    store = submit_video(r, "00000000000000b1")
    raw = r.rpop("segq.model.m")
    r.hset(keys.KOMBU_UNACKED, "tag-1", json.dumps([json.loads(raw), "", "segq.model.m"]))  # delivered, held
    t0 = r.zscore(keys.INFLIGHT, "00000000000000b1")
    assert sweep(r, store, t0 + 11) == [] and sweep(r, store, t0 + 30) == []
    r.delete(keys.KOMBU_UNACKED)
    r.zadd(keys.LEASES, {"tag-1": t0 + 100})
    r.hset(keys.lease("tag-1"), mapping={"task_id": "00000000000000b1"})
    assert sweep(r, store, t0 + 50) == [] and sweep(r, store, t0 + 70) == []
    assert not r.hexists(keys.INFLIGHT_SUSPECT, "00000000000000b1")


def test_a_task_that_keeps_losing_its_message_fails_its_job(r):
    store = submit_video(r, "00000000000000c1")
    t = r.zscore(keys.INFLIGHT, "00000000000000c1")
    outcomes = []
    for _ in range(3):
        r.delete("segq.model.m")
        sweep(r, store, t + 11, max_lost=2)
        outcomes += [x.outcome for x in sweep(r, store, t + 22, max_lost=2)]
        t += 22
    assert outcomes == ["resent", "resent", "failed"]
    record = store.get("00000000000000c1")
    assert record.state == "failed" and "lost 3 times" in record.error
    assert not r.zscore(keys.INFLIGHT, "00000000000000c1")


def test_entries_with_nothing_left_to_watch_are_dropped(r):
    store = submit_video(r, "00000000000000d1")
    r.delete("segq.model.m")
    store.finish("00000000000000d1", frames=1)  # it ran and ended; only its ack was not recorded
    r.zadd(keys.INFLIGHT, {"not-a-segq-task": 1.0, "00000000000000ff-chunk00001": 1.0})
    t0 = r.zscore(keys.INFLIGHT, "00000000000000d1")
    assert sweep(r, store, t0 + 11) == [] and sweep(r, store, t0 + 30) == []
    assert r.zcard(keys.INFLIGHT) == 0 and r.lrange("segq.model.m", 0, -1) == []


def test_a_lost_shard_message_is_made_again_from_its_batch_template_and_a_shard_that_ended_is_dropped(r):
    batches = BatchStore(r, 600)
    opened = batches.open("b", "semantic", "m", "normal", template(), "token")
    shards = ShardStore(r, None, 600)
    shards.add("b", opened.first, 2)
    shards.add("b", shards.next_index("b"), 3)
    store = JobStore(r, 600)
    assert Scheduler(r).dispatch("m", 5) == 2
    first_tag = json.loads(r.lrange("segq.model.m", -1, -1)[0])["properties"]["delivery_tag"]
    r.delete("segq.model.m")  # both popped and lost
    shards.start("b", 1, "w", "cpu")
    shards.end("b", 1, 1, 3, 0, 0)  # shard 1 ran and ended: nothing to send
    t0 = r.zscore(keys.INFLIGHT, "shard:b:000000")
    failed = []
    assert sweep(r, store, t0 + 11) == []
    [lost] = watchdog.sweep(r, store, APP, min_age=10, grace=10, max_lost=3, now=t0 + 22,
                            fail=lambda task_id, reason: failed.append(task_id) or True)
    assert (lost.task_id, lost.outcome) == ("shard:b:000000", "resent") and not failed
    [again] = r.lrange("segq.model.m", 0, -1)
    message = json.loads(again)
    assert messages.task_of(again) == (SEGMENT_SHARD, "shard:b:000000")
    assert json.loads(message["body"])[1] == ShardJob("b", "000000", "semantic", "m").to_message()
    assert message["properties"]["delivery_tag"] != first_tag  # a message sent again has a tag of its own
    assert r.zscore(keys.INFLIGHT, "shard:b:000001") is None
