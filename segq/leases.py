"""Leases: how lost work is found and put back, without waiting out the broker's visibility timeout.

Every message a worker takes (a task it runs, or one it holds reserved or scheduled for a retry)
gets a lease in Redis: the message's delivery tag in ``segq:leases`` scored by an expiry, and a
small hash (task id, job id, task name, worker, when it was received and started). The worker's
heartbeat renews the expiry of all its leases. A worker that dies (SIGKILL, OOM, a lost node,
spot preemption) stops renewing: its leases expire and its registry record disappears.

The reaper (run by live workers, one at a time under a Redis lock, on their heartbeat) takes each
lease that expired *and* whose worker process is no longer live (no live record with its hostname
and pid: a process restarted in place has a new pid), and puts the very same message back on
its queue: it moves it out of kombu's ``unacked`` hash into the queue's consuming end, as kombu's
own restore does, so the broker will not deliver it a second time later. A lease of a task that
had started counts as one loss of its worker for that task; a task that lost its worker
``SEGQ_MAX_WORKER_LOSSES`` times fails its job with that reason instead of being put back (a task
that kills its worker is not retried forever). The job record notes each requeue.

Compare dramatiq's Redis broker (worker heartbeats; a maintenance pass requeues the unacked
messages of dead workers) and rq's started-job registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass

import redis

from segq import keys, registry
from segq.states import FINAL_STATES


@dataclass
class Lease:
    tag: str
    task_id: str = ""
    job_id: str = ""
    task: str = ""
    worker: str = ""
    pid: int = 0  # the worker process (a restarted process keeps its hostname, not its pid)
    received_at: float = 0.0
    started_at: float = 0.0
    expires: float = 0.0

    @property
    def running(self) -> bool:
        return self.started_at > 0


class LeaseBook:
    """One worker's leases."""

    def __init__(self, r: redis.Redis, worker: str, ttl: float):
        self.r, self.worker, self.ttl = r, worker, ttl
        self.pid = os.getpid()
        self.held: dict[str, dict] = {}  # tag -> the lease's fields (to write it again at its start)

    def take(self, tag: str, task_id: str, job_id: str, task: str) -> None:
        now = time.time()
        record = {"task_id": task_id, "job_id": job_id, "task": task, "worker": self.worker, "pid": self.pid,
                  "received_at": now}
        pipe = self.r.pipeline()
        pipe.hset(keys.lease(tag), mapping=record)
        pipe.zadd(keys.LEASES, {tag: now + self.ttl})
        pipe.execute()
        self.held[tag] = record

    def started(self, tag: str) -> None:
        """The task of ``tag`` started. The whole lease is written again, not only its start: a
        lease lost since it was taken (a failover to a replica that had not received it) would
        otherwise come back as a start time with no worker, which the reaper takes for a dead
        worker's while the task runs here."""
        if tag not in self.held:
            return  # no longer this worker's lease (abandoned)
        now = time.time()
        pipe = self.r.pipeline()
        pipe.hset(keys.lease(tag), mapping={**self.held[tag], "started_at": now})
        pipe.zadd(keys.LEASES, {tag: now + self.ttl})
        pipe.execute()

    def release(self, tag: str) -> None:
        """The task of ``tag`` ended and its message is done with: the lease goes, and so does
        kombu's record of the message as unacknowledged, in one step. Celery acknowledges it too,
        right after; but a task that ran on across a broken broker connection (a failover) holds a
        message of a channel that is closed by then, whose acknowledgement can no longer be sent,
        and without this the message would sit unacknowledged until the orphan sweep put a finished
        job's message back on its queue."""
        self.held.pop(tag, None)
        pipe = self.r.pipeline()
        pipe.zrem(keys.LEASES, tag)
        pipe.delete(keys.lease(tag))
        pipe.zrem(keys.KOMBU_UNACKED_INDEX, tag)
        pipe.hdel(keys.KOMBU_UNACKED, tag)
        pipe.execute()

    def abandon(self, tag: str) -> None:
        """Stop renewing a lease without releasing it: its message was neither finished nor put
        back (its task broke outside the skeleton, e.g. on a Redis outage). The reaper restores it
        once it has gone unrenewed for a whole extra lease time, even though this worker lives."""
        self.held.pop(tag, None)

    def renew(self) -> None:
        """Push every held lease's expiry forward (the heartbeat)."""
        if not self.held:
            return
        expiry = time.time() + self.ttl
        self.r.zadd(keys.LEASES, {tag: expiry for tag in list(self.held)}, xx=True)


def get(r: redis.Redis, tag: str) -> Lease | None:
    d = r.hgetall(keys.lease(tag))
    if not d:
        return None
    score = r.zscore(keys.LEASES, tag) or 0.0
    return Lease(tag, d.get("task_id", ""), d.get("job_id", ""), d.get("task", ""), d.get("worker", ""),
                 int(d.get("pid") or 0), float(d.get("received_at") or 0), float(d.get("started_at") or 0),
                 float(score))


def started(r: redis.Redis, tag: str) -> bool | None:
    """Whether the task of ``tag``'s lease started; None when there is no lease. Works through
    any client, one that answers bytes too (kombu's)."""
    exists, start = r.pipeline().exists(keys.lease(tag)).hget(keys.lease(tag), "started_at").execute()
    if not exists:
        return None
    return float(start or 0) > 0


def leases(r: redis.Redis) -> list[Lease]:
    return [lease for tag in r.zrange(keys.LEASES, 0, -1) if (lease := get(r, tag))]


@dataclass
class Reaped:
    lease: Lease
    outcome: str  # "requeued", "failed" (too many losses), "dropped" (no message left to restore)
    losses: int = 0


def _restore(r: redis.Redis, tag: str, job_failed: bool) -> bool:
    """Move the message of ``tag`` from kombu's unacked hash back to its queue (or drop it when
    its job was failed). False when the message is no longer unacknowledged."""

    found = False

    def move(pipe) -> None:
        nonlocal found
        raw = pipe.hget(keys.KOMBU_UNACKED, tag)
        pipe.multi()
        pipe.zrem(keys.KOMBU_UNACKED_INDEX, tag)
        pipe.hdel(keys.KOMBU_UNACKED, tag)
        pipe.zrem(keys.LEASES, tag)
        pipe.delete(keys.lease(tag))
        found = raw is not None
        if raw is not None and not job_failed:
            message, _exchange, routing_key = json.loads(raw)
            message.setdefault("headers", {})["redelivered"] = True
            message.setdefault("properties", {}).setdefault("delivery_info", {})["redelivered"] = True
            # kombu publishes with LPUSH and consumes with BRPOP: RPUSH puts it next in line.
            pipe.rpush(routing_key, json.dumps(message))

    r.transaction(move, keys.KOMBU_UNACKED)
    return found


def restore(r: redis.Redis, tag: str) -> bool:
    """Put the message of ``tag`` back on its queue now and drop its lease (False: it was no
    longer unacknowledged)."""
    return _restore(r, tag, job_failed=False)


def reap(r: redis.Redis, max_losses: int, now: float | None = None, ttl: float | None = None) -> list[Reaped]:
    """Put back the work of dead workers (module docstring), and the abandoned leases of live
    ones (unrenewed for ``ttl`` past their expiry). Safe to run from several places: callers hold
    ``REAPER_LOCK`` and every move is one Redis transaction."""
    now = now or time.time()
    live = {(w.hostname, w.pid) for w in registry.workers(r)}
    out = []
    for tag in r.zrangebyscore(keys.LEASES, "-inf", now):
        lease = get(r, tag)
        if lease is None:
            r.zrem(keys.LEASES, tag)
            continue
        if (lease.worker, lease.pid) in live:
            if ttl is None or now - lease.expires < ttl:
                continue  # a late heartbeat, not lost work
            restored = _restore(r, tag, job_failed=False)  # abandoned by a live worker
            out.append(Reaped(lease, "requeued" if restored else "dropped", 0))
            continue
        losses = 0
        failed = False
        if lease.running and lease.job_id:
            losses = int(r.hincrby(keys.job_losses(lease.job_id), lease.task_id, 1))
            r.expire(keys.job_losses(lease.job_id), 7 * 24 * 3600)
            failed = losses >= max_losses
        restored = _restore(r, tag, job_failed=failed)
        outcome = "failed" if failed else ("requeued" if restored else "dropped")
        out.append(Reaped(lease, outcome, losses))
    if ttl is not None:
        out += _orphans(r, now, 2 * ttl)
    return out


def _orphans(r: redis.Redis, now: float, age: float) -> list[Reaped]:
    """Unacknowledged messages that nobody leases, delivered more than ``age`` seconds ago.

    A worker leases a message within milliseconds of receiving it, so such a message belongs to
    a worker that died between the broker's delivery and its lease (kombu writes the delivery
    first), or lost its lease in a failover: it goes back on its queue like any lost work, unless
    its job has finished (then it is dropped)."""
    out = []
    for tag, _delivered in r.zrangebyscore(keys.KOMBU_UNACKED_INDEX, "-inf", now - age, withscores=True):
        if r.exists(keys.lease(tag)):
            continue
        raw = r.hget(keys.KOMBU_UNACKED, tag)
        task_id = ""
        if raw:
            try:
                task_id = json.loads(raw)[0].get("headers", {}).get("id", "")
            except (ValueError, IndexError, AttributeError):
                pass
        job_id = task_id.split("-")[0]
        # a finished job's message is only dropped: its work is done (a task that ran across a
        # broken broker connection whose acknowledgement was lost), nothing is to run again
        final = bool(job_id) and r.hget(keys.job(job_id), "state") in FINAL_STATES
        if _restore(r, tag, job_failed=final):
            out.append(Reaped(Lease(tag, task_id=task_id, job_id=job_id), "dropped" if final else "requeued", 0))
    return out


@contextlib.contextmanager
def maintenance(r: redis.Redis, hold_seconds: float = 30.0):
    """The fleet's maintenance lock: yields True to the one caller that holds it now (which runs
    the reaper and the watchdog, ``segq.watchdog``), False to the others."""
    token = f"{os.getpid()}-{time.time()}"
    held = bool(r.set(keys.REAPER_LOCK, token, nx=True, px=int(hold_seconds * 1000)))
    try:
        yield held
    finally:
        if held and r.get(keys.REAPER_LOCK) == token:
            r.delete(keys.REAPER_LOCK)


def try_reap(r: redis.Redis, max_losses: int, hold_seconds: float = 30.0, ttl: float | None = None
             ) -> list[Reaped] | None:
    """Run the reaper if no other worker is running it right now (None when it is)."""
    with maintenance(r, hold_seconds) as held:
        return reap(r, max_losses, ttl=ttl) if held else None


def unacknowledged(r: redis.Redis) -> int:
    """Messages delivered to some worker and not yet acknowledged (running, reserved, scheduled)."""
    return int(r.hlen(keys.KOMBU_UNACKED))
