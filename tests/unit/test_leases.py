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


@pytest.fixture()
def r(tmp_path):
    server = RedisServer("redis", tmp_path / "redis.log", data_dir=tmp_path).start()
    yield redis_client(server.url)
    server.stop()


def held_by_kombu(r, tag: str, task_id: str, queue: str = "segq.model.m") -> None:
    """What kombu's Redis transport keeps for a delivered, unacknowledged message."""
    message = {"body": "e30=", "headers": {"id": task_id}, "properties": {"delivery_tag": tag, "delivery_info": {}}}
    r.hset(keys.KOMBU_UNACKED, tag, json.dumps([message, "", queue]))
    r.zadd(keys.KOMBU_UNACKED_INDEX, {tag: 1.0})


def test_a_dead_workers_message_goes_back_to_the_front_of_its_queue(r):
    book = leases.LeaseBook(r, "w1@h", ttl=0.0)  # expired as soon as taken
    book.take("tag-1", "job1-chunk00000", "job1", "segq.segment_chunk")
    book.started("tag-1")
    held_by_kombu(r, "tag-1", "job1-chunk00000")
    r.lpush("segq.model.m", json.dumps({"headers": {"id": "later"}}))

    [reaped] = leases.reap(r, max_losses=3)
    assert (reaped.outcome, reaped.losses, reaped.lease.task_id) == ("requeued", 1, "job1-chunk00000")
    nxt = json.loads(r.rpop("segq.model.m"))  # BRPOP consumes from the right: it is next
    assert nxt["headers"] == {"id": "job1-chunk00000", "redelivered": True}
    assert not r.hexists(keys.KOMBU_UNACKED, "tag-1") and not r.zscore(keys.KOMBU_UNACKED_INDEX, "tag-1")
    assert leases.leases(r) == [] and leases.reap(r, max_losses=3) == []


def test_a_live_workers_leases_are_left_alone_even_when_late(r):
    WorkerRegistration(r, "w2@h", "cpu").publish()  # live, this very process
    book = leases.LeaseBook(r, "w2@h", ttl=0.0)
    book.take("tag-2", "job2", "job2", "segq.segment_image")
    held_by_kombu(r, "tag-2", "job2")
    assert leases.reap(r, max_losses=3) == []
    assert r.hexists(keys.KOMBU_UNACKED, "tag-2")


def test_a_restarted_process_with_the_same_hostname_does_not_protect_the_old_ones_leases(r):
    book = leases.LeaseBook(r, "w3@h", ttl=0.0)
    book.pid = os.getpid() + 100000  # the process that died
    book.take("tag-3", "job3", "job3", "segq.segment_image")
    held_by_kombu(r, "tag-3", "job3")
    WorkerRegistration(r, "w3@h", "cpu").publish()  # its successor, same name, new pid
    assert [x.outcome for x in leases.reap(r, max_losses=3)] == ["requeued"]


def test_reserved_work_is_requeued_without_counting_and_started_work_is_given_up_after_max(r):
    book = leases.LeaseBook(r, "w4@h", ttl=0.0)
    book.take("tag-r", "job4-chunk00001", "job4", "segq.segment_chunk")  # reserved, never started
    held_by_kombu(r, "tag-r", "job4-chunk00001")
    assert [(x.outcome, x.losses) for x in leases.reap(r, max_losses=2)] == [("requeued", 0)]
    outcomes = []
    for n in range(2):
        tag = f"tag-s{n}"
        book.take(tag, "job4-chunk00000", "job4", "segq.segment_chunk")
        book.started(tag)
        held_by_kombu(r, tag, "job4-chunk00000")
        outcomes += [(x.outcome, x.losses) for x in leases.reap(r, max_losses=2)]
    assert outcomes == [("requeued", 1), ("failed", 2)]
    assert r.llen("segq.model.m") == 2  # the reserved one and the first loss; the second was dropped


def test_a_message_no_longer_unacknowledged_is_dropped_and_renewal_keeps_leases(r):
    book = leases.LeaseBook(r, "w5@h", ttl=60.0)
    book.take("tag-5", "job5", "job5", "segq.segment_image")
    before = r.zscore(keys.LEASES, "tag-5")
    book.renew()
    assert r.zscore(keys.LEASES, "tag-5") >= before
    assert leases.reap(r, max_losses=3) == []  # not expired
    r.zadd(keys.LEASES, {"tag-5": 0})
    assert [x.outcome for x in leases.reap(r, max_losses=3)] == ["dropped"]
    assert leases.try_reap(r, 3) == [] and r.get(keys.REAPER_LOCK) is None


def test_a_lease_a_live_worker_abandoned_is_restored_after_a_grace_period(r):
    WorkerRegistration(r, "w6@h", "cpu").publish()  # live, this very process
    book = leases.LeaseBook(r, "w6@h", ttl=5.0)
    book.take("tag-6", "job6", "job6", "segq.segment_image")
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
    book.take("tag-9", "job9", "job9", "segq.segment_image")
    held_by_kombu(r, "tag-9", "job9")
    r.delete(keys.lease("tag-9"))
    r.zrem(keys.LEASES, "tag-9")
    book.started("tag-9")
    lease = leases.get(r, "tag-9")
    assert (lease.worker, lease.pid, lease.job_id, lease.running) == ("w9@h", os.getpid(), "job9", True)
    assert leases.reap(r, max_losses=3) == []  # a live worker's
    book.release("tag-9")  # the task ended: lease and kombu's unacknowledged record go together
    assert leases.get(r, "tag-9") is None and not r.hexists(keys.KOMBU_UNACKED, "tag-9")


def test_an_orphan_of_a_finished_job_is_dropped_not_requeued(r):
    """A task that ran across a failover finished, but its acknowledgement and lease were lost:
    nothing is to run again, and the job is not told it was requeued."""
    held_by_kombu(r, "tag-10", "fedcba9876543210-chunk00001")
    r.hset(keys.job("fedcba9876543210"), "state", "done")
    [x] = leases.reap(r, max_losses=3, ttl=5.0)
    assert (x.outcome, x.lease.job_id) == ("dropped", "fedcba9876543210")
    assert not r.hexists(keys.KOMBU_UNACKED, "tag-10") and r.llen("segq.model.m") == 0
