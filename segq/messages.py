"""segq's task messages, built ahead of their sending, exactly as Celery would send them.

``segq.scheduler`` keeps the messages of work that is not released yet (a batch's later jobs, a
video's later chunks) in Redis, and moves one into its model's queue, atomically, when a worker
slot frees up. So a message is built once, when the work is known, and pushed later as it is:
:func:`build` makes the same envelope that Celery's ``send_task`` makes on kombu's Redis
transport (Celery's own ``as_task_v2`` for headers, properties and body, JSON serialised and
base64-encoded as kombu's virtual channel does, the anonymous exchange with the queue as routing
key, as Celery converts direct exchanges), and ``tests/unit/test_messages.py`` checks it field by
field against a message that Celery itself published to a real Redis.

JSON only: the body is ``[[], kwargs, embed]``; nothing here can carry a pickle.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass

from celery import Celery

#: kombu's persistent delivery mode (what Celery's ``task_default_delivery_mode`` maps to).
PERSISTENT = 2


@dataclass(frozen=True)
class Outgoing:
    """A built message and where it goes: ``task_id`` (Celery's id, shown in Flower), the queue,
    and the envelope as the JSON string kombu's Redis transport stores."""

    task_id: str
    queue: str
    body: str


def build(app: Celery, name: str, kwargs: dict, task_id: str, queue: str) -> Outgoing:
    """The Redis envelope of task ``name`` with ``kwargs``, ``task_id``, for ``queue``."""
    from kombu import serialization

    # segq stores no results; the reprs Flower shows are the payload's plain repr (Celery's saferepr,
    # which gives the same for payloads this small, costs most of a message's build time)
    message = app.amqp.as_task_v2(task_id, name, kwargs=kwargs, ignore_result=True, argsrepr="()",
                                  kwargsrepr=repr(kwargs))
    content_type, encoding, data = serialization.dumps(message.body, serializer="json")
    raw = data if isinstance(data, bytes) else data.encode(encoding or "utf-8")
    envelope = {
        "body": base64.b64encode(raw).decode("ascii"),
        "content-encoding": encoding,
        "content-type": content_type,
        "headers": message.headers,
        "properties": {
            **message.properties,
            "delivery_mode": PERSISTENT,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return Outgoing(task_id, queue, json.dumps(envelope))


def task_of(raw: str) -> tuple[str, str] | None:
    """``(task name, task id)`` of a stored envelope, or None when it is not one (not JSON, not a
    Celery message)."""
    try:
        headers = json.loads(raw)["headers"]
        return str(headers["task"]), str(headers["id"])
    except (ValueError, KeyError, TypeError):
        return None
