"""segq builds its messages ahead of their release (``segq.messages``): they must be the very
envelopes Celery's own ``send_task`` puts into a real Redis, field by field."""

from __future__ import annotations

import base64
import json

from celery import Celery

from producer.stack import RedisServer
from segq import messages


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_a_built_message_is_what_celery_sends(tmp_path):
    server = RedisServer("redis", tmp_path / "redis.log", data_dir=tmp_path).start()
    try:
        app = Celery("t")
        app.conf.update(broker_url=server.url, task_serializer="json", accept_content=["json"],
                        task_create_missing_queues=True, task_ignore_result=True)
        kwargs = {"job_id": "0123456789abcdef", "task": "semantic", "n": 1}
        app.send_task("segq.split_video", kwargs=kwargs, queue="segq.model.m", task_id="0123456789abcdef",
                      ignore_result=True)
        import redis

        sent = json.loads(redis.Redis.from_url(server.url, decode_responses=True).rpop("segq.model.m"))
    finally:
        server.stop()
    built = messages.build(app, "segq.split_video", kwargs, "0123456789abcdef", "segq.model.m")
    mine = json.loads(built.body)
    a, b = _flat(sent), _flat(mine)
    differing = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
    # unique per message: the delivery tag; per sender: its reply queue (results are not used)
    assert differing <= {"properties.delivery_tag", "properties.reply_to", "headers.origin"}, differing
    assert json.loads(base64.b64decode(mine["body"]))[1] == kwargs
    assert mine["properties"]["delivery_info"] == {"exchange": "", "routing_key": "segq.model.m"}
    assert messages.task_of(built.body) == ("segq.split_video", "0123456789abcdef")
    assert messages.task_of("not json") is None and messages.task_of('{"headers": 3}') is None


def test_a_shard_message_from_its_template_is_what_kombu_delivers_as_the_built_one():
    """The scheduler fills a template in (Lua, ``messages.render`` in Python): kombu must decode it,
    with its plain JSON body, to the very headers and kwargs of the message ``build`` makes."""
    from kombu.transport.virtual.base import Message

    from segq.shards import message_template

    app = Celery("t")
    raw = messages.render(message_template(app, "semantic", "m", "normal"), "photos-v1", "000042")
    built = messages.build(app, "segq.segment_shard", {"batch": "photos-v1", "shard": "000042", "task": "semantic",
                                                       "model": "m", "priority": "normal", "version": 1},
                           "shard:photos-v1:000042", "segq.model.m")

    class Channel:  # what kombu's Message needs of its channel: decoding a body
        @staticmethod
        def decode_body(body, encoding=None):
            return base64.b64decode(body) if encoding == "base64" else body

    mine, theirs = Message(json.loads(raw), channel=Channel), Message(json.loads(built.body), channel=Channel)
    assert mine.decode() == theirs.decode()
    assert {k: v for k, v in mine.headers.items() if k not in ("origin",)} == \
        {k: v for k, v in theirs.headers.items() if k not in ("origin",)}
    assert mine.delivery_tag.endswith(".photos-v1.000042")
    again = json.loads(messages.render(message_template(app, "semantic", "m", "normal"), "photos-v1", "000042",
                                       fresh_tag=True))
    assert again["properties"]["delivery_tag"] != mine.delivery_tag
