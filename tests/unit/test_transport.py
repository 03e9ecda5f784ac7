"""segq's kombu transport against a real redis-server: what a consumer pops that is not a segq task
message is dead-lettered with the reason and never delivered, the rest is delivered as kombu would;
a channel whose connection is gone raises a connection error instead of an AttributeError."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
import redis
from celery import Celery
from kombu import Connection, Consumer, Queue

from producer.stack import RedisServer
from segq import deadletters, keys, leases, messages
from segq.scheduler import Scheduler
from segq.transport import Transport, problem


def good(task: str = "segq.split_video", kwargs: dict | None = None) -> str:
    return messages.build(Celery("t"), task, kwargs or {"job_id": "0123456789abcdef"}, "0123456789abcdef",
                          "segq.model.m").body


def envelope(**changes) -> str:
    data = json.loads(good())
    data.update(changes)
    return json.dumps(data)


@pytest.mark.parametrize("raw, reason", [
    ("not json", "not JSON"),
    ("[1, 2]", "not a message envelope (a JSON object)"),
    ('{"headers": {}}', "not a message envelope (no headers or properties)"),
    (envelope(properties={"delivery_info": {}}), "not a message envelope (no delivery tag or delivery info)"),
    (envelope(headers={"id": "x"}), "not a Celery task message (no task name or id)"),
    (good("celery.accumulate"), "task 'celery.accumulate' is not a segq task"),
    (envelope(body="!!!"), "the body is not a Celery JSON body ([args, kwargs, embed])"),
    (envelope(body=base64.b64encode(b'[[1], {}, {}]').decode()), "segq tasks take keyword arguments only"),
    (envelope(**{"content-type": "application/x-python-serialize"}), "the body is not JSON (content-type)"),
])
def test_what_is_not_a_segq_task_message_is_named(raw, reason):
    assert problem(raw) == (None, reason)


def first_delivered(url: str, queue: str) -> list:
    """Consume ``queue`` through segq's transport until a message is delivered (10 s at most)."""
    got = []
    with Connection(url, transport=Transport) as conn:
        consumer = Consumer(conn, [Queue(queue)], accept=["json"],
                            callbacks=[lambda body, message: (got.append(body), message.ack())])
        with consumer:
            for _ in range(20):
                try:
                    conn.drain_events(timeout=0.5)
                except (TimeoutError, OSError):
                    pass
                if got:
                    break
    return got


def test_a_segq_message_passes():
    envelope_, why = problem(good())
    assert why is None and envelope_["headers"]["task"] == "segq.split_video"
    from segq.shards import message_template

    shard = messages.render(message_template(Celery("t"), "semantic", "m", "normal"), "b", "000003")
    envelope_, why = problem(shard)  # a shard's message, from its batch's template: its body is plain JSON
    assert why is None and envelope_["headers"]["id"] == "shard:b:000003"


def test_a_consumer_dead_letters_poison_and_takes_the_rest(tmp_path):
    server = RedisServer("redis", tmp_path / "redis.log", data_dir=tmp_path).start()
    try:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        for item in ("garbage \x00", good("celery.accumulate"), good()):
            r.lpush("segq.model.m", item)
        got = first_delivered(server.url, "segq.model.m")
        assert got and got[0][1] == {"job_id": "0123456789abcdef"}
        letters = deadletters.recent(r)
        assert [d.reason for d in letters] == ["task 'celery.accumulate' is not a segq task", "not JSON"]
        assert all(d.queue == "segq.model.m" for d in letters) and r.llen("segq.model.m") == 0
        assert not r.hlen("unacked")  # nothing poison was ever recorded as delivered
    finally:
        server.stop()


def test_other_queues_deliver_kombu_messages_that_are_not_tasks(tmp_path):
    """Celery's remote-control replies (``segq workers`` pings) are kombu messages without a task
    name: on their reply queue they are delivered, not dead-lettered; garbage there still is."""
    server = RedisServer("redis", tmp_path / "redis.log", data_dir=tmp_path).start()
    try:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        reply = json.loads(good())
        reply["headers"] = {"ticket": "t-1", "clock": 3}  # a pidbox reply: no task, no id
        reply["body"] = base64.b64encode(json.dumps({"w1@host": {"ok": "pong"}}).encode()).decode()
        for item in ("garbage \x00", json.dumps(reply)):
            r.lpush("reply.celery.pidbox", item)
        got = first_delivered(server.url, "reply.celery.pidbox")
        assert got == [{"w1@host": {"ok": "pong"}}]
        assert [d.reason for d in deadletters.recent(r)] == ["not JSON"]
    finally:
        server.stop()


def test_a_channel_without_its_connection_raises_a_connection_error(tmp_path):
    server = RedisServer("redis", tmp_path / "redis.log", data_dir=tmp_path).start()
    try:
        conn = Connection(server.url, transport=Transport)
        channel = conn.channel()
        channel.connection = None  # what Celery's reconnect leaves behind while it closes
        with pytest.raises(redis.ConnectionError):
            channel._connparams()
        conn.release()
    finally:
        server.stop()


def test_a_closing_channel_puts_back_only_what_has_not_started(tmp_path):
    """kombu's channel, closing (a broken connection), would put every delivered message back,
    those whose tasks still run in the worker too: the failover that ran one message twice."""
    server = RedisServer("redis", tmp_path / "redis.log", data_dir=tmp_path).start()
    try:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        for job in ("a" * 16, "b" * 16, "c" * 16):
            r.lpush("segq.model.m", good(kwargs={"job_id": job}))
        held = []
        conn = Connection(server.url, transport=Transport)
        consumer = Consumer(conn, [Queue("segq.model.m")], accept=["json"],
                            callbacks=[lambda body, message: held.append(message)])
        consumer.consume()
        for _ in range(40):
            if len(held) == 3:
                break
            with contextlib.suppress(TimeoutError, OSError):
                conn.drain_events(timeout=0.5)
        running, reserved, unleased = [m.delivery_tag for m in held]
        assert r.hlen(keys.KOMBU_UNACKED) == 3
        book = leases.LeaseBook(r, "w@h", ttl=60.0)
        book.take(running, "a" * 16, "segq.split_video")
        pipe = r.pipeline(transaction=False)
        book.started(running, pipe)
        pipe.execute()
        book.take(reserved, "b" * 16, "segq.split_video")

        conn.release()  # closes the channel, as Celery does when the broker connection breaks

        assert r.hexists(keys.KOMBU_UNACKED, running) and leases.started(r, running) is True
        [back] = r.lrange("segq.model.m", 0, -1)
        back = json.loads(back)
        assert back["properties"]["delivery_tag"] == reserved and back["headers"]["redelivered"] is True
        assert not r.hexists(keys.KOMBU_UNACKED, reserved) and leases.started(r, reserved) is None
        assert r.hexists(keys.KOMBU_UNACKED, unleased)  # the orphan sweep's (segq.leases)
        held[0].ack()  # the task that ran on: its late acknowledgement has no channel left; no error
        Scheduler(r).ended("a" * 16, None, running)  # what acknowledges it (the task's end, workers.host.upkeep)
        assert not r.hexists(keys.KOMBU_UNACKED, running) and not r.zscore(keys.KOMBU_UNACKED_INDEX, running)
        assert sorted(r.hkeys(keys.KOMBU_UNACKED)) == [unleased]
    finally:
        server.stop()
