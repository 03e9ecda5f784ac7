"""Leases and the reaper against a real redis-server: the work of a dead worker goes back on its
queue as the very same message; a live worker's is left alone; a task that keeps losing its
worker is given up."""

from __future__ import annotations

import json
import os

import pytest

from producer.stack import RedisServer
from segq import keys, leases
from segq.jobs import redis_client
from segq.registry import WorkerRegistration
from segq.scheduler import Scheduler


@pytest.fixture()
def r(tmp_path):
    server = RedisServer("redis", tmp_path / "redis.log", data_dir=tmp_path).start()
    yield redis_client(server.url)
    server.stop()


def start(r, book: leases.LeaseBook, tag: str) -> None:
    """A task's start marks its lease started (in the pipeline of the task's own start)."""
    pipe = r.pipeline(transaction=False)
    book.started(tag, pipe)
    pipe.execute()


def held_by_kombu(r, tag: str, task_id: str, queue: str = "segq.model.m") -> None:
    """What kombu's Redis transport keeps for a delivered, unacknowledged message."""
    message = {"body": "e30=", "headers": {"id": task_id}, "properties": {"delivery_tag": tag, "delivery_info": {}}}
    r.hset(keys.KOMBU_UNACKED, tag, json.dumps([message, "", queue]))
    r.zadd(keys.KOMBU_UNACKED_INDEX, {tag: 1.0})


def test_a_dead_workers_message_goes_back_to_the_front_of_its_queue(r):
    book = leases.LeaseBook(r, "w1@h", ttl=0.0)  # expired as soon as taken
    book.take("tag-1", "0000000000000001-chunk00000", "segq.segment_chunk")
    start(r, book, "tag-1")
    held_by_kombu(r, "tag-1", "0000000000000001-chunk00000")
    r.lpush("segq.model.m", json.dumps({"headers": {"id": "later"}}))

    [reaped] = leases.reap(r, max_losses=3)
    assert (reaped.outcome, reaped.losses, reaped.lease.task_id) == ("requeued", 1, "0000000000000001-chunk00000")
    nxt = json.loads(r.rpop("segq.model.m"))  # BRPOP consumes from the right: it is next
    assert nxt["headers"] == {"id": "0000000000000001-chunk00000", "redelivered": True}
    assert not r.hexists(keys.KOMBU_UNACKED, "tag-1") and not r.zscore(keys.KOMBU_UNACKED_INDEX, "tag-1")
    assert leases.leases(r) == [] and leases.reap(r, max_losses=3) == []


def test_a_live_workers_leases_are_left_alone_even_when_late(r):
    WorkerRegistration(r, "w2@h", "cpu").publish()  # live, this very process
    book = leases.LeaseBook(r, "w2@h", ttl=0.0)
    book.take("tag-2", "job2", "segq.split_video")
    held_by_kombu(r, "tag-2", "job2")
    assert leases.reap(r, max_losses=3) == []
    assert r.hexists(keys.KOMBU_UNACKED, "tag-2")


def test_a_restarted_process_with_the_same_hostname_does_not_protect_the_old_ones_leases(r):
    book = leases.LeaseBook(r, "w3@h", ttl=0.0)
    book.pid = os.getpid() + 100000  # the process that died
    book.take("tag-3", "job3", "segq.split_video")
    held_by_kombu(r, "tag-3", "job3")
    WorkerRegistration(r, "w3@h", "cpu").publish()  # its successor, same name, new pid
    assert [x.outcome for x in leases.reap(r, max_losses=3)] == ["requeued"]


def test_the_reaper_removes_the_records_of_dead_workers_and_their_slots(r):
    import time

    from segq import registry

    dead = WorkerRegistration(r, "gone@h", "cpu", interval=1, concurrency=3)
    dead.loaded("m", 1.0)
    live = WorkerRegistration(r, "here@h", "cpu", interval=1, concurrency=2)
    live.loaded("m", 1.0)
    assert r.hget(keys.SLOTS, "m") == "5"
    r.zadd(keys.WORKERS_INDEX, {"gone@h": time.time() - 10})  # its last beat, long ago
    r.hset(keys.worker("gone@h"), "heartbeat", time.time() - 10)
    leases.reap(r, max_losses=3, interval=1)
    assert r.hget(keys.SLOTS, "m") == "2" and registry.get(r, "gone@h") is None
    assert [w.hostname for w in registry.workers(r)] == ["here@h"]


def test_reserved_work_is_requeued_without_counting_and_started_work_is_given_up_after_max(r):
    book = leases.LeaseBook(r, "w4@h", ttl=0.0)
    book.take("tag-r", "0000000000000004-chunk00001", "segq.segment_chunk")  # reserved, never started
    held_by_kombu(r, "tag-r", "0000000000000004-chunk00001")
    assert [(x.outcome, x.losses) for x in leases.reap(r, max_losses=2)] == [("requeued", 0)]
    outcomes = []
    for n in range(2):
        tag = f"tag-s{n}"
        book.take(tag, "0000000000000004-chunk00000", "segq.segment_chunk")
        start(r, book, tag)
        held_by_kombu(r, tag, "0000000000000004-chunk00000")
        outcomes += [(x.outcome, x.losses) for x in leases.reap(r, max_losses=2)]
    assert outcomes == [("requeued", 1), ("failed", 2)]
    assert r.llen("segq.model.m") == 2  # the reserved one and the first loss; the second was dropped


def test_a_message_no_longer_unacknowledged_is_dropped_and_renewal_keeps_leases(r):
    registration = WorkerRegistration(r, "w5@h", "cpu")
    registration.publish()
    book = leases.LeaseBook(r, "w5@h", ttl=60.0)
    book.take("tag-5", "job5", "segq.split_video")
    before = r.zscore(keys.LEASES, "tag-5")
    registration.beat(book.tags(), before + 30)  # the heartbeat renews the worker's leases
    assert r.zscore(keys.LEASES, "tag-5") == before + 30
    r.delete(keys.worker("w5@h"))
    assert leases.reap(r, max_losses=3) == []  # not expired
    r.zadd(keys.LEASES, {"tag-5": 0})
    assert [x.outcome for x in leases.reap(r, max_losses=3)] == ["dropped"]
    assert leases.try_reap(r, 3) == [] and r.get(keys.REAPER_LOCK) is None


def test_a_lease_a_live_worker_abandoned_is_restored_after_a_grace_period(r):
    WorkerRegistration(r, "w6@h", "cpu").publish()  # live, this very process
    book = leases.LeaseBook(r, "w6@h", ttl=5.0)
    book.take("tag-6", "job6", "segq.split_video")
    held_by_kombu(r, "tag-6", "job6")
    book.abandon("tag-6")  # its task broke outside the skeleton while Redis was away
    expiry = r.zscore(keys.LEASES, "tag-6")
    assert leases.reap(r, max_losses=3, now=expiry + 1, ttl=5.0) == []  # a late beat, maybe
    [x] = leases.reap(r, max_losses=3, now=expiry + 6, ttl=5.0)
    assert (x.outcome, x.losses) == ("requeued", 0) and r.llen("segq.model.m") == 1


def test_an_unleased_message_delivered_long_ago_is_an_orphan_and_goes_back(r):
    import time

    held_by_kombu(r, "tag-7", "0123456789abcdef-chunk00002")  # delivered at t=1.0, never leased
    [x] = leases.reap(r, max_losses=3, ttl=5.0)
    assert (x.outcome, x.lease.task_id, x.lease.job_id) == ("requeued", "0123456789abcdef-chunk00002", "0123456789abcdef")
    r.hset(keys.KOMBU_UNACKED, "tag-8", "[{}, \"\", \"q\"]")
    r.zadd(keys.KOMBU_UNACKED_INDEX, {"tag-8": time.time()})  # just delivered: its lease may be on its way
    assert leases.reap(r, max_losses=3, ttl=5.0) == []


def test_a_lease_lost_before_its_task_started_is_written_whole_at_the_start(r):
    """A failover to a replica that never got the lease: the start writes all of it again, so the
    reaper does not take a running task for a dead worker's (worker '' pid 0)."""
    WorkerRegistration(r, "w9@h", "cpu").publish()
    book = leases.LeaseBook(r, "w9@h", ttl=0.0)
    book.take("tag-9", "0000000000000009", "segq.split_video")
    held_by_kombu(r, "tag-9", "0000000000000009")
    r.delete(keys.lease("tag-9"))
    r.zrem(keys.LEASES, "tag-9")
    start(r, book, "tag-9")
    lease = leases.get(r, "tag-9")
    assert (lease.worker, lease.pid, lease.job_id, lease.running) == ("w9@h", os.getpid(), "0000000000000009", True)
    assert leases.reap(r, max_losses=3) == []  # a live worker's
    Scheduler(r).ended("0000000000000009", None, "tag-9")  # the task ended: lease and kombu's unacknowledged record go together
    book.released("tag-9")
    assert leases.get(r, "tag-9") is None and not r.hexists(keys.KOMBU_UNACKED, "tag-9")
    assert book.tags() == []


def test_an_orphan_of_a_finished_job_is_dropped_not_requeued(r):
    """A task that ran across a failover finished, but its acknowledgement and lease were lost:
    nothing is to run again, and the job is not told it was requeued."""
    held_by_kombu(r, "tag-10", "fedcba9876543210-chunk00001")
    r.hset(keys.job("fedcba9876543210"), "state", "done")
    [x] = leases.reap(r, max_losses=3, ttl=5.0)
    assert (x.outcome, x.lease.job_id) == ("dropped", "fedcba9876543210")
    assert not r.hexists(keys.KOMBU_UNACKED, "tag-10") and r.llen("segq.model.m") == 0


def test_a_requeue_is_noted_on_the_job_record_and_shard_state_in_the_restores_own_transaction(r):
    """The count and note go with the message's move (one transaction): a broker killed after the
    reaper's move cannot keep the requeued message and lose the note, or the other way round."""
    from segq.shards import ShardState
    r.hset(keys.batch_shards("b1"), 3, json.dumps({"s": "r", "n": 2, "rq": 0}))
    r.hset(keys.job("0000000000000002"), "state", "running")
    book = leases.LeaseBook(r, "w9@h", ttl=0.0)
    for tag, task_id in (("tag-s", "shard:b1:000003"), ("tag-j", "0000000000000002-chunk00001")):
        book.take(tag, task_id, "segq.x")
        start(r, book, tag)
        held_by_kombu(r, tag, task_id)

    reaped = {x.lease.task_id: x for x in leases.reap(r, max_losses=3)}
    note = "requeued: worker w9@h lost during segq.x"
    assert {t: (x.outcome, x.note) for t, x in reaped.items()} == {
        "shard:b1:000003": ("requeued", note), "0000000000000002-chunk00001": ("requeued", note)}
    state = ShardState.from_json(r.hget(keys.batch_shards("b1"), 3))
    assert (state.rq, state.nt) == (1, note)
    assert r.hmget(keys.job("0000000000000002"), "requeues", "note") == ["1", note]
    assert r.llen("segq.model.m") == 2
