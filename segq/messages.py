"""segq's task messages, built ahead of their sending, exactly as Celery would send them.

``segq.scheduler`` keeps the messages of work that is not released yet (a batch's later jobs, a
video's later chunks) in Redis, and moves one into its model's queue, atomically, when a worker
slot frees up. So a message is built once, when the work is known, and pushed later as it is:
:func:`build` makes the same envelope that Celery's ``send_task`` makes on kombu's Redis
transport (Celery's own ``as_task_v2`` for headers, properties and body, JSON serialised and
base64-encoded as kombu's virtual channel does, the anonymous exchange with the queue as routing
key, as Celery converts direct exchanges), and ``tests/unit/test_messages.py`` checks it field by
field against a message that Celery itself published to a real Redis.

Every shard's message is the same but for its batch's name and its number (``segq.shards``): it
is built once per model, task and priority, as a **template** (:func:`template`) whose body is
the JSON text itself rather than its base64 (kombu decodes a body only when the envelope names an
encoding), with :data:`BATCH_SLOT` and :data:`SLOT` where the batch's name and the shard's number
go; the scheduler's Lua script fills them in as it releases each shard (:func:`render` does the
same in Python), so a batch of a million images keeps no message in Redis at all until its
shards' turns come.

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


#: Where a template takes the shard's number, and its batch's name: digits, and letters, digits,
#: '.', '_', '-' (``segq.protocol``), so neither needs escaping in JSON or in Lua's gsub.
SLOT = "@@N@@"
BATCH_SLOT = "@@B@@"


def template(app: Celery, name: str, kwargs: dict, task_id: str, queue: str) -> str:
    """The envelope of task ``name`` as :func:`build` makes it, with a plain JSON body (no
    ``body_encoding``) and every :data:`SLOT` and :data:`BATCH_SLOT` in ``kwargs``, ``task_id``
    and the delivery tag left for :func:`render` (or the scheduler's Lua) to fill in."""
    message = json.loads(build(app, name, kwargs, task_id, queue).body)
    message["body"] = base64.b64decode(message["body"]).decode("utf-8")
    del message["properties"]["body_encoding"]
    message["properties"]["delivery_tag"] = f"{uuid.uuid4()}.{BATCH_SLOT}.{SLOT}"
    return json.dumps(message)


def render(template_text: str, batch: str, number: str, fresh_tag: bool = False) -> str:
    """A template's message for shard ``number`` of ``batch`` (what the scheduler's Lua makes of
    it); ``fresh_tag``: with a delivery tag of its own (a message sent again must not share its
    tag)."""
    raw = template_text.replace(BATCH_SLOT, batch).replace(SLOT, number)
    if not fresh_tag:
        return raw
    message = json.loads(raw)
    message["properties"]["delivery_tag"] = str(uuid.uuid4())
    return json.dumps(message)


def task_of(raw: str) -> tuple[str, str] | None:
    """``(task name, task id)`` of a stored envelope, or None when it is not one (not JSON, not a
    Celery message)."""
    try:
        headers = json.loads(raw)["headers"]
        return str(headers["task"]), str(headers["id"])
    except (ValueError, KeyError, TypeError):
        return None
