"""The watchdog: no job waits forever for a message that no longer exists.

Every task the scheduler releases is recorded in flight (``segq:inflight``, scored by its release)
until its message is acknowledged (``segq.scheduler``). A message can still vanish in between:
kombu's Redis transport pops it from the queue and records it as unacknowledged in two steps, and
a worker killed between them (spot preemption, the OOM killer, a process frozen in its blocking
pop and then killed) takes it along; so can an asynchronous replica promoted by a failover. The
leases cannot help there (nothing leased it), nor can the broker's visibility timeout (nothing is
unacknowledged).

So the live workers, one at a time on their heartbeat (under the reaper's lock, ``segq.leases``),
look at the in-flight tasks released more than ``min_age`` seconds ago: a task whose message is
in no model queue, in nobody's unacknowledged set (which also holds messages reserved, or waiting
out a retry's countdown), and not leased is *suspect*; still missing one ``grace`` later (the
pop-to-record window is a millisecond wide), it is *lost*, and sent again, once, to the front of
its queue, rebuilt from the job's stored request (``JobRecord.request``; a shard's from its
batch's message template), with a note on the job;
the fleet counts it (``segq queues``, ``segq_watchdog_resent_total``). A task that keeps losing
its message (``max_lost`` times) fails its job with the reason, like the worker-loss limit.
Entries whose job ended, expired or moved to another run, whose shard ended, or whose chunk is
already recorded, are simply dropped. The cost of a pass grows with what is in flight and with the queues' lengths
(both bounded by the workers' slots), never with the jobs finished.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Callable

import redis

from segq import keys, leases, messages
from segq.jobs import JobRecord, JobStore
from segq.shards import ShardStore
from segq.protocol import (
    ASSEMBLE_VIDEO, PAYLOAD_VERSION, SEGMENT_CHUNK, SPLIT_VIDEO, assembly_task_id, chunk_ranges, model_queue, parse_task_id,
    shard_name, shard_task_id,
)
from segq.states import FINAL_STATES

log = logging.getLogger(__name__)

#: In-flight entries looked at per pass, at most (the oldest first).
PAGE = 1000


@dataclass(frozen=True)
class Lost:
    task_id: str
    job_id: str
    outcome: str  # "resent", or "failed" (lost too often)
    times: int


def present(r: redis.Redis, queues: set[str]) -> set[str]:
    """Task ids with a message in one of ``queues`` or held unacknowledged by any worker."""
    found: set[str] = set()
    for queue in queues:
        for raw in r.lrange(queue, 0, -1):
            task = messages.task_of(raw)
            if task:
                found.add(task[1])
    for raw in r.hvals(keys.KOMBU_UNACKED):
        try:
            found.add(str(json.loads(raw)[0]["headers"]["id"]))
        except (ValueError, KeyError, IndexError, TypeError):
            continue
    for tag in r.zrange(keys.LEASES, 0, -1):
        task_id = r.hget(keys.lease(tag), "task_id")
        if task_id:
            found.add(task_id)
    return found


def _message(r: redis.Redis, app, record: JobRecord | None, ref) -> messages.Outgoing | None:
    """The lost task's message again: a shard's from its batch's template (with a delivery tag
    of its own), a video task's from the job's stored request. None when it cannot be made (the
    batch's template expired with it)."""
    if ref.is_shard:
        model, task, priority = r.hmget(keys.batch(ref.batch), "model", "task", "priority")
        template = r.get(keys.template(PAYLOAD_VERSION, model, task, priority)) if model else None
        if not template:
            return None
        return messages.Outgoing(shard_task_id(ref.batch, ref.shard), model_queue(model),
                                 messages.render(template, ref.batch, shard_name(ref.shard), fresh_tag=True))
    first = record.request()
    queue = model_queue(record.model)
    if ref.first:
        return messages.build(app, SPLIT_VIDEO, first.to_message(), first.task_id, queue)
    if ref.assembly:
        return messages.build(app, ASSEMBLE_VIDEO, first.for_chunk(-1, 0, 0).to_message(),
                              assembly_task_id(record.id, record.run), queue)
    start, end = chunk_ranges(record.frames_total or 0, record.chunk_frames or 1)[ref.chunk]
    payload = first.for_chunk(ref.chunk, start, end)
    return messages.build(app, SEGMENT_CHUNK, payload.to_message(), payload.task_id, queue)


def _settled(r: redis.Redis, task_id: str, record: JobRecord | None, ref) -> bool:
    """An entry with nothing left to watch: its shard ended or is gone; its job ended, expired
    or moved to another run; its chunk is recorded; its split already queued the chunks."""
    if ref.is_shard:
        return leases.settled(r, task_id)
    if record is None or record.state in FINAL_STATES or ref.run != record.run:
        return True
    if ref.chunk is not None:
        return bool(r.sismember(keys.job_chunks(record.id), ref.chunk)) or not record.frames_total
    if ref.first:
        return bool(r.hexists(keys.job(record.id), "split_queued"))
    return False


def _queue(r: redis.Redis, record: JobRecord | None, ref) -> str | None:
    model = r.hget(keys.batch(ref.batch), "model") if ref.is_shard else (record.model if record else None)
    return model_queue(model) if model else None


def sweep(r: redis.Redis, store: JobStore, app, *, min_age: float, grace: float, max_lost: int,
          now: float | None = None, fail: Callable[[str, str], bool] | None = None) -> list[Lost]:
    """One pass (module docstring); what it found lost. ``app``: the Celery app that builds the
    messages again; ``fail(task_id, reason)``: fails the work of a task that lost its message too
    often (its job, or its shard's unfinished images); True when that moved it (default: a job's
    record only)."""
    now = now or time.time()
    old = r.zrangebyscore(keys.INFLIGHT, "-inf", now - min_age, start=0, num=PAGE)
    if not old:
        return []
    refs = {task_id: parse_task_id(task_id) for task_id in old}
    jobs = [t for t, ref in refs.items() if ref is not None and not ref.is_shard]
    records = dict(zip(jobs, store.get_many([refs[t].job_id for t in jobs])))
    watched = {t: ref for t, ref in refs.items() if ref is not None and not _settled(r, t, records.get(t), ref)}
    dropped = [t for t in old if t not in watched]
    if dropped:
        r.zrem(keys.INFLIGHT, *dropped)
        r.hdel(keys.INFLIGHT_SUSPECT, *dropped)
    if not watched:
        return []
    queues = {t: _queue(r, records.get(t), ref) for t, ref in watched.items()}
    here = present(r, {q for q in queues.values() if q})
    fail = fail or (lambda task_id, reason: bool(store.fail(refs[task_id].job_id, reason)))
    out = []
    for task_id, ref in watched.items():
        if task_id in here:
            r.hdel(keys.INFLIGHT_SUSPECT, task_id)
            continue
        since = r.hget(keys.INFLIGHT_SUSPECT, task_id)
        if since is None:
            r.hset(keys.INFLIGHT_SUSPECT, task_id, now)
            continue
        if now - float(since) < grace:
            continue
        owner = ref.batch if ref.is_shard else ref.job_id
        times = int(r.hincrby(leases.losses_key(ref), f"lost:{task_id}", 1))
        r.expire(leases.losses_key(ref), store.ttl)
        message = _message(r, app, records.get(task_id), ref)
        if times > max_lost or message is None:
            reason = (f"the message of {task_id} was lost {times} times (last noticed by the watchdog); "
                      f"not sent again")
            r.zrem(keys.INFLIGHT, task_id)
            r.hdel(keys.INFLIGHT_SUSPECT, task_id)
            if fail(task_id, reason):
                r.hincrby(keys.STATS, keys.stat_field(keys.STAT_LOST_FAILED), 1)
            out.append(Lost(task_id, owner, "failed", times))
            continue
        pipe = r.pipeline()
        pipe.rpush(message.queue, message.body)  # BRPOP takes from the right: next in line
        pipe.zadd(keys.INFLIGHT, {task_id: now})
        pipe.hdel(keys.INFLIGHT_SUSPECT, task_id)
        pipe.hincrby(keys.STATS, keys.stat_field(keys.STAT_RESENT), 1)
        pipe.execute()
        note = f"message of {task_id} lost (in no queue, unacked set or lease): sent again"
        if ref.is_shard:
            ShardStore(r, None, store.ttl).requeued(ref.batch, ref.shard, note)
        else:
            store.requeued(ref.job_id, note)
        log.warning("watchdog: the message of %s was lost; sent again (%d)", task_id, times)
        out.append(Lost(task_id, owner, "resent", times))
    return out
