"""segq's kombu transport: kombu's Redis transport, made to survive what it pops.

kombu's Redis channel parses every item it pops from a queue as a JSON envelope, and an item that
is not one (a stray ``LPUSH``, a buggy client, a message of another system) raises inside the
consumer, which Celery treats as unrecoverable: the worker process dies, and a handful of such
items take a fleet down. A Celery worker would also run any task it knows that a message names,
its built-in ``celery.*`` tasks included.

So a segq worker consumes through :class:`Transport` (``celery_config`` sets
``broker_transport``; :class:`SentinelTransport` for ``sentinel://``), whose channel inspects each
popped item before kombu delivers it (:func:`problem`): not JSON, not a kombu envelope, a body
that is not a Celery protocol-2 JSON body, or a task name outside ``segq.protocol.TASK_NAMES``.
That is for segq's task queues; what other queues hold (the replies of Celery's remote control,
which ``segq workers`` reads through the same transport) is only checked to be a JSON object.
Such an item goes to the dead-letter list (``segq.deadletters``) with the reason, and is never
delivered; since it was never recorded as unacknowledged, it is thereby acknowledged, and the
process goes on serving. Payloads that are valid envelopes of segq tasks but do not parse are the
task skeleton's to refuse (it fails their job, if they name one, and dead-letters them too).

It also mends, at its source, why a Redis restart used to kill a worker process: when the broker
connection breaks, Celery closes it and kombu's channel, closing, restores its unacknowledged
messages through a client it builds from a connection that is already gone, and fails with an
``AttributeError`` (``'NoneType' object has no attribute 'hostname'``), which Celery cannot
ignore and which ends the process. Here building a client without a connection raises the
connection error it is, Celery ignores it as it ignores every error of a broken connection, and
reconnects; the messages stay unacknowledged in Redis, where segq's leases and their orphan
sweep put them back (``segq.leases``).

And it keeps a closing channel from putting back messages whose tasks still run (:class:`QoS`):
kombu's channel, closing, puts every message it delivered and that is not yet acknowledged back on
its queue, while Celery lets the tasks of those messages run on (it cannot stop a thread), so
when the restore succeeds, after a failover with the new primary already promoted, another worker
ran the same message a second time alongside.

Everything else is kombu's own code path: the copy of ``_brpop_read`` below differs from kombu's
only in the inspection (``tests/unit/test_transport.py`` runs it against a real Redis).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from queue import Empty

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str

from segq import deadletters, leases
from segq.protocol import QUEUE_PREFIX, TASK_NAMES

#: Celery's default queue in segq's configuration (``segq.broker``): nothing should be sent there,
#: but what is must be a segq task too.
DEFAULT_QUEUE = "segq.default"


def is_task_queue(queue: str) -> bool:
    """A queue of segq's task messages (a model's queue, or the default one). Other queues a
    segq process reads, such as the replies of Celery's remote control (``segq workers`` pings
    the workers), carry kombu messages that are not tasks."""
    return queue.startswith(QUEUE_PREFIX) or queue == DEFAULT_QUEUE


def envelope_problem(raw: str) -> tuple[dict | None, str | None]:
    """``(envelope, None)`` for an item of a queue that is not a task queue, when it is a JSON
    object (what kombu would deliver), else ``(None, why not)``."""
    try:
        envelope = json.loads(raw)
    except ValueError:
        return None, "not JSON"
    if not isinstance(envelope, dict):
        return None, "not a message envelope (a JSON object)"
    return envelope, None


def problem(raw: str) -> tuple[dict | None, str | None]:
    """``(envelope, None)`` for a popped item a segq worker may take, else ``(None, why not)``."""
    envelope, why = envelope_problem(raw)
    if why is not None:
        return None, why
    headers, properties = envelope.get("headers"), envelope.get("properties")
    if not isinstance(headers, dict) or not isinstance(properties, dict):
        return None, "not a message envelope (no headers or properties)"
    if not isinstance(properties.get("delivery_tag"), str) or not isinstance(properties.get("delivery_info"), dict):
        return None, "not a message envelope (no delivery tag or delivery info)"
    task = headers.get("task")
    if not isinstance(task, str) or not isinstance(headers.get("id"), str):
        return None, "not a Celery task message (no task name or id)"
    if task not in TASK_NAMES:
        return None, f"task {task[:80]!r} is not a segq task"
    body = envelope.get("body")
    try:
        if properties.get("body_encoding") == "base64":
            body = base64.b64decode(body, validate=True)
        args, kwargs, _embed = json.loads(body)
    except (ValueError, TypeError):
        return None, "the body is not a Celery JSON body ([args, kwargs, embed])"
    if envelope.get("content-type") != "application/json":
        return None, "the body is not JSON (content-type)"
    if args or not isinstance(kwargs, dict):
        return None, "segq tasks take keyword arguments only"
    return envelope, None


_settled: set[str] = set()
_settled_lock = threading.Lock()

#: The worker process's leases (``segq.leases.LeaseBook``), set when it boots: its channel leases
#: each task message it records as delivered, in the same Redis step (:meth:`QoS.append`).
lease_book = None


def settled(tag: str) -> None:
    """The message of ``tag`` is acknowledged in Redis already (its task's end removed its
    unacknowledged record: ``segq/lua/task_ended.lua``); kombu's acknowledgement, which follows,
    only does this process's bookkeeping."""
    with _settled_lock:
        _settled.add(tag)


class QoS(kombu_redis.QoS):
    """What a segq channel does with the messages it delivered when it closes (a broken broker
    connection, a shutdown), by each message's lease (``segq.leases``):

    - its task started (the lease says so): nothing. The task runs on in this process, and the
      lease's release acknowledges the message when it ends, even though this channel is gone;
    - leased but not started (reserved, or held for a retry's countdown, which Celery drops with
      the channel): back on its queue, its lease gone, in one transaction;
    - no lease (a worker leases a message within milliseconds; a failover can lose a lease with
      the writes the replica never got): left for the reaper's orphan sweep, which puts it back
      once nobody has leased it for two lease times.

    An acknowledgement that arrives after the channel closed is not sent (there is nothing to
    send it through; the lease's release did it), nor is one whose message's unacknowledged record
    the worker already removed with its task's end (:func:`settled`: one Redis step fewer a task)."""

    def append(self, message, delivery_tag):
        """kombu's record of a delivered message as unacknowledged, and, in a worker, the message's
        lease (``segq.leases``) in the same transaction: one round trip for both."""
        book = lease_book
        delivery = message.delivery_info
        headers = message._raw.get("headers") or {}
        if book is None or not is_task_queue(delivery["routing_key"]) or not headers.get("id"):
            return super().append(message, delivery_tag)
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag,
                      json.dumps([message._raw, delivery["exchange"], delivery["routing_key"]]))
            book.take(delivery_tag, str(headers["id"]), str(headers.get("task", "")), pipe=pipe)
            pipe.execute()
            virtual.QoS.append(self, message, delivery_tag)  # this process's bookkeeping

    def restore_unacked(self, client=None):
        with self.channel.conn_or_acquire(client) as client:
            for tag in list(self._delivered):
                if leases.started(client, tag) is False:
                    leases.restore(client, tag)
        self._delivered.clear()

    def ack(self, delivery_tag):
        with _settled_lock:
            done = delivery_tag in _settled
            _settled.discard(delivery_tag)
        if done or self.channel.connection is None:
            virtual.QoS.ack(self, delivery_tag)  # this process's bookkeeping only
            return
        super().ack(delivery_tag)


class _Inspecting:
    """The channel part: inspect each popped item; no client from a closed connection (module
    docstring)."""

    def _connparams(self, asynchronous=False):
        if self.connection is None or self.connection.client is None:
            raise redis.ConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)

    def _brpop_read(self, **options):
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # if there's a ConnectionError, disconnect so the next iteration will reconnect
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            raw = bytes_to_str(item)
            envelope, why = problem(raw) if is_task_queue(dest) else envelope_problem(raw)
            if why is not None:
                deadletters.add(self.client, dest, raw, why)
                raise Empty()
            self.connection._deliver(envelope, dest)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()


class Channel(_Inspecting, kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(_Inspecting, kombu_redis.SentinelChannel):
    QoS = QoS


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
