"""Leases: how lost work is found and put back, without waiting out the broker's visibility timeout.

Every message a worker takes (a task it runs, or one it holds reserved or scheduled for a retry)
gets a lease in Redis: the message's delivery tag in ``segq:leases`` scored by an expiry, and a
small hash (task id, job id, task name, worker, when it was received and started). The worker's
heartbeat renews the expiry of all its leases (``segq/lua/beat.lua``); the task's start marks its
lease started in the same round trip as the start's own script, and the task's end removes the
lease with kombu's record of the message in the script that frees its slot
(``segq/lua/task_ended.lua``). A worker that dies (SIGKILL, OOM, a lost node, spot preemption)
stops renewing: its leases expire and its heartbeat stops.

The reaper (run by live workers, one at a time under a Redis lock, on their heartbeat) takes each
lease that expired *and* whose worker process is no longer live (its record's heartbeat is stale,
or the record is gone or names another pid: a process restarted in place has a new pid), and puts
the very same message back on its queue: it moves it out of kombu's ``unacked`` hash into the
queue's consuming end, as kombu's own restore does, so the broker will not deliver it a second
time later. It reads the expired leases and their workers' records only, never the whole fleet,
and removes the records of dead workers (``segq.registry.remove_dead``). A lease of a task that
had started counts as one loss of its worker for that task; a task that lost its worker
``SEGQ_MAX_WORKER_LOSSES`` times fails its job (a shard: its unfinished images) with that reason
instead of being put back (a task that kills its worker is not retried forever). The job record
(a shard's state) notes each requeue.

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

from segq import keys, registry, scripts
from segq.protocol import parse_task_id
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

    def take(self, tag: str, task_id: str, task: str, pipe=None) -> None:
        """Lease the message of ``tag``; with ``pipe``, its commands join that pipeline (the
        transport's record of the message as delivered: ``segq.transport.QoS.append``)."""
        if tag in self.held:
            return  # leased by the transport already
        now = time.time()
        ref = parse_task_id(task_id)
        record = {"task_id": task_id, "job_id": ref.job_id if ref else "", "task": task, "worker": self.worker,
                  "pid": self.pid, "received_at": now}
        own = pipe is None
        pipe = self.r.pipeline(transaction=False) if own else pipe
        pipe.hset(keys.lease(tag), mapping=record)
        pipe.zadd(keys.LEASES, {tag: now + self.ttl})
        if own:
            pipe.execute()
        self.held[tag] = record

    def started(self, tag: str, pipe) -> None:
        """The task of ``tag`` starts: its lease's commands, added to ``pipe`` (which also carries
        the task's own start). The whole lease is written again, not only its start: a lease lost
        since it was taken (a failover to a replica that had not received it) would otherwise come
        back as a start time with no worker, which the reaper takes for a dead worker's while the
        task runs here."""
        if tag not in self.held:
            return  # no longer this worker's lease (abandoned)
        now = time.time()
        pipe.hset(keys.lease(tag), mapping={**self.held[tag], "started_at": now})
        pipe.zadd(keys.LEASES, {tag: now + self.ttl})

    def released(self, tag: str) -> None:
        """The lease of ``tag`` went with its task's end (``task_ended.lua``, which also removes
        kombu's record of the message as unacknowledged: a task that ran on across a broken broker
        connection holds a message of a closed channel, whose acknowledgement can no longer be
        sent, and without this the message would sit unacknowledged until the orphan sweep put a
        finished job's message back on its queue)."""
        self.held.pop(tag, None)

    def abandon(self, tag: str) -> None:
        """Stop renewing a lease without releasing it: its message was neither finished nor put
        back (its task broke outside the skeleton, e.g. on a Redis outage). The reaper restores it
        once it has gone unrenewed for a whole extra lease time, even though this worker lives."""
        self.held.pop(tag, None)

    def tags(self) -> list[str]:
        """The tags of the leases held (the heartbeat renews them: ``segq/lua/beat.lua``)."""
        return list(self.held)


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
    note: str = ""  # what the job record (the shard's state) says of a requeue


def requeue_note(lease: Lease, orphan: bool = False) -> str:
    """What a requeue of ``lease``'s message says on its job record or shard state."""
    if orphan or not lease.worker:
        return "requeued: delivered but never leased (its worker died at once, or a failover lost the lease)"
    return f"requeued: worker {lease.worker} lost" + (f" during {lease.task}" if lease.running else "")


def _note(pipe, task_id: str, note: str) -> None:
    """Queue on ``pipe`` (inside the restore's transaction, so a broker that dies between the two
    cannot keep one without the other) the requeue's count and note on the task's job record or
    shard state. ``EVAL`` with the script's text: a transaction cannot load a script it lacks, and
    requeues are rare."""
    ref = parse_task_id(task_id)
    if ref is None:
        return
    if ref.is_shard:
        pipe.eval(scripts.source("shard_requeued"), 0, ref.batch, ref.shard, note)
    elif ref.job_id:
        pipe.hincrby(keys.job(ref.job_id), "requeues", 1)
        pipe.hset(keys.job(ref.job_id), "note", note)


def _restore(r: redis.Redis, tag: str, job_failed: bool, task_id: str = "", note: str = "") -> bool:
    """Move the message of ``tag`` from kombu's unacked hash back to its queue (or drop it when
    its job was failed), and with a ``note`` count the requeue on task ``task_id``'s record in the
    same transaction. False when the message is no longer unacknowledged."""

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
            if note:
                _note(pipe, task_id, note)

    r.transaction(move, keys.KOMBU_UNACKED)
    return found


def restore(r: redis.Redis, tag: str) -> bool:
    """Put the message of ``tag`` back on its queue now and drop its lease (False: it was no
    longer unacknowledged)."""
    return _restore(r, tag, job_failed=False)


def _live(r: redis.Redis, worker: str, pid: int, now: float, seen: dict) -> bool:
    """Whether worker process (``worker``, ``pid``) is live: its record names that pid and its
    heartbeat is fresh (one read per worker, remembered for the pass in ``seen``)."""
    if worker not in seen:
        record = registry.get(r, worker) if worker else None
        seen[worker] = (record.pid, record.heartbeat or 0.0, record.interval) if record else None
    known = seen[worker]
    return known is not None and known[0] == pid and now - known[1] < known[2] * registry.MISSED_BEATS


def losses_key(ref) -> str:
    """Where a task's worker losses are counted: its job's hash of them, or its batch's (a shard)."""
    return keys.batch_losses(ref.batch) if ref.is_shard else keys.job_losses(ref.job_id)


def settled(r: redis.Redis, task_id: str, gone: bool = True) -> bool:
    """Whether the work of ``task_id`` is over: its job is final, or its shard ended; ``gone``:
    what a job or shard that no longer exists counts as."""
    ref = parse_task_id(task_id)
    if ref is None:
        return False
    if ref.is_shard:
        raw = r.hget(keys.batch_shards(ref.batch), ref.shard)
        return gone if raw is None else json.loads(raw).get("s") == "e"
    state = r.hget(keys.job(ref.job_id), "state")
    return gone if state is None else state in FINAL_STATES


def reap(r: redis.Redis, max_losses: int, now: float | None = None, ttl: float | None = None,
         interval: float = registry.HEARTBEAT_SECONDS) -> list[Reaped]:
    """Put back the work of dead workers (module docstring), and the abandoned leases of live
    ones (unrenewed for ``ttl`` past their expiry); remove dead workers' records. Safe to run from
    several places: callers hold ``REAPER_LOCK`` and every move is one Redis transaction."""
    now = now or time.time()
    seen: dict = {}
    out = []
    for tag in r.zrangebyscore(keys.LEASES, "-inf", now):
        lease = get(r, tag)
        if lease is None:
            r.zrem(keys.LEASES, tag)
            continue
        if _live(r, lease.worker, lease.pid, now, seen):
            if ttl is None or now - lease.expires < ttl:
                continue  # a late heartbeat, not lost work
            note = requeue_note(lease)
            restored = _restore(r, tag, job_failed=False, task_id=lease.task_id, note=note)  # abandoned
            out.append(Reaped(lease, "requeued" if restored else "dropped", 0, note))
            continue
        losses = 0
        failed = False
        ref = parse_task_id(lease.task_id)
        if lease.running and ref is not None:
            losses = int(r.hincrby(losses_key(ref), lease.task_id, 1))
            r.expire(losses_key(ref), 7 * 24 * 3600)
            failed = losses >= max_losses
        note = requeue_note(lease)
        restored = _restore(r, tag, job_failed=failed, task_id=lease.task_id, note=note)
        outcome = "failed" if failed else ("requeued" if restored else "dropped")
        out.append(Reaped(lease, outcome, losses, note if outcome == "requeued" else ""))
    if ttl is not None:
        out += _orphans(r, now, 2 * ttl)
    registry.remove_dead(r, interval, now)
    return out


def _orphans(r: redis.Redis, now: float, age: float) -> list[Reaped]:
    """Unacknowledged messages that nobody leases, delivered more than ``age`` seconds ago.

    A worker leases a message within milliseconds of receiving it, so such a message belongs to
    a worker that died between the broker's delivery and its lease (kombu writes the delivery
    first), or lost its lease in a failover: it goes back on its queue like any lost work, unless
    its work is over (then it is dropped)."""
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
        ref = parse_task_id(task_id)
        # a finished job's (or ended shard's) message is only dropped: its work is done (a task
        # that ran across a broken broker connection whose acknowledgement was lost)
        final = ref is not None and settled(r, task_id, gone=False)
        lease = Lease(tag, task_id=task_id, job_id=ref.job_id if ref else "")
        note = requeue_note(lease, orphan=True)
        if _restore(r, tag, job_failed=final, task_id=task_id, note=note):
            out.append(Reaped(lease, "dropped" if final else "requeued", 0, "" if final else note))
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
