"""Fair, prioritised release of work: each model's queue holds about one message per worker slot.

Celery's queues are first come, first served: a video split into 375 chunks, or a batch of 2,000
images, put at the head of a model's queue, makes every job behind it wait for all of it. So
segq does not put work into a model's queue when it is submitted. Every submission is a batch
(``segq.batches``); a batch's tasks wait in its **pending** list (messages built in full,
``segq.messages``), and the batches with pending work of a model stand in one **ring** per
priority. Work is **released** into the model's queue (``dispatch``, one Lua script) only while
the queue holds fewer than ``target`` messages, where ``target`` is the number of slots of the
live workers serving the model (each runs ``SEGQ_WORKER_CONCURRENCY`` tasks; ``segq:slots`` counts
them, kept exact by the registry's scripts, so a release reads one number, whatever the fleet's
size): high before normal before low, and within a priority one task per batch in turn. A
release happens when work is submitted, when a task ends (its slot frees: ``ended``, the same
script), and on a worker's heartbeat while its models have pending work (a worker that joins, or
a release that was missed). A batch's shards wait as ranges of shard numbers, one entry for any
number of them, and each one's message is made from the batch's template as it is released
(``segq.shards``).

What that guarantees: a job submitted now waits for at most the tasks already in its model's
queue (about one per slot) and those running (one per slot), plus one turn of each other batch
of its priority, however large the work ahead of it is; low work is released only while no
high or normal work of its model is pending. A lone video on an idle fleet still keeps every
slot busy. Every move is atomic: a released message is in the queue and recorded in flight
(``segq:inflight``, for the watchdog of ``segq.leases``) in the same step, so a crash can lose
neither; a worker that dies holding it is covered by the leases, a message lost between the
broker's pop and its unacked record by the watchdog.

Why not Celery's own Redis priorities: kombu emulates them with one list per priority step
(0, 3, 6, 9; lower is higher on Redis, unlike AMQP), polled in one BRPOP; a worker prefetches
and holds messages of any priority, a message restored after a lost worker goes to the list of
its priority only when the restorer knows it, and nothing bounds how much of one job stands
ahead of another. They order messages already in a queue; they cannot keep a large job's work
out of it. Compare Temporal's fairness keys, BullMQ's groups and Upperkut's sorted-set scheduler.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from segq import keys
from segq.messages import Outgoing
from segq.scripts import Scripts
from segq.states import PRIORITIES


def entry(message: Outgoing) -> str:
    """A pending list's entry: ``"<task id> <message JSON>"`` (task ids have no spaces)."""
    return f"{message.task_id} {message.body}"


def slots(r: redis.Redis, model: str) -> int:
    """The queue target of ``model``: the task slots of the live workers that serve it (one read)."""
    return int(r.hget(keys.SLOTS, model) or 0)


@dataclass
class Scheduler:
    """Releases pending work into the models' queues (module docstring)."""

    r: redis.Redis

    def __post_init__(self) -> None:
        self.scripts = Scripts(self.r)

    def dispatch(self, model: str, target: int | None = None) -> int:
        """Release ``model``'s pending work until its queue holds ``target`` messages (default:
        the model's slots); how many were released."""
        return int(self.scripts.dispatch(args=[model, "" if target is None else target, time.time()]))

    def ended(self, task_id: str, model: str | None, tag: str = "", target: int | None = None) -> int:
        """The task ``task_id`` ended and its message (delivery ``tag``) is done with: out of
        flight, its lease and unacknowledged record gone, and its slot releases the next pending
        work of ``model`` (how many messages were released)."""
        return int(self.scripts.task_ended(args=[task_id, model or "", "" if target is None else target,
                                                  time.time(), tag]))

    def pending(self) -> dict[tuple[str, str], int]:
        """Messages waiting to be released, by (model, priority)."""
        out = {}
        for name, value in self.r.hgetall(keys.PENDING_COUNTS).items():
            model, _, priority = name.rpartition("|")
            if int(value) > 0 and priority in PRIORITIES:
                out[(model, priority)] = int(value)
        return out

    def in_flight(self) -> int:
        """Released messages whose task has not been acknowledged yet."""
        return int(self.r.zcard(keys.INFLIGHT))
