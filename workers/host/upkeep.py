"""A worker process's upkeep: its heartbeat, the fleet's reaper and watchdog, and the leases of
the messages it holds.

Every ``SEGQ_HEARTBEAT_SECONDS`` the heartbeat, one Redis script (``segq/lua/beat.lua``), refreshes
the worker's registry record (``segq.registry``), renews its leases (``segq.leases``), tries for
the fleet's maintenance lock and releases pending work of its models (``segq.scheduler``); the
worker that holds the lock then runs the reaper and the watchdog (``segq.watchdog``). The Celery
signals of ``workers.tasks.app`` report each message received and finished, which takes and
releases its lease; the task skeleton marks it started with the task's own start.
"""

from __future__ import annotations

import logging
import threading
import time
import redis

from segq import leases as leases_mod
from segq import registry, transport, watchdog
from segq.protocol import parse_task_id

log = logging.getLogger(__name__)


class AfterOutage:
    """Whether a worker may judge the others now (run the reaper and the watchdog), from its own
    heartbeats: not until ``needed`` beats in a row got their Redis writes through within one
    interval (``Upkeep.start_heartbeat``)."""

    def __init__(self, interval: float, needed: int = registry.MISSED_BEATS):
        self.interval, self.needed = interval, needed
        self.calm = needed  # a worker that just started has seen no outage

    def beat(self, took: float | None) -> bool:
        """A beat's writes took ``took`` seconds (None: they failed). True: judge now."""
        self.calm = self.calm + 1 if took is not None and took < self.interval else 0
        return self.calm >= self.needed


class Upkeep:
    """The heartbeat and lease bookkeeping of one worker process: ``Runtime.upkeep``, over its
    ``rt`` (a ``workers.host.runtime.Runtime``, which imports this module)."""

    def __init__(self, rt):
        self.rt = rt
        self._tags: dict[str, list[str]] = {}  # task id -> delivery tags held
        self._ended: set[str] = set()  # tasks whose message their work's end already did away with
        self._lock = threading.Lock()

    def start_heartbeat(self) -> None:
        """Every ``SEGQ_HEARTBEAT_SECONDS``: refresh the registry record, renew this worker's
        leases, and run the reaper if no other worker runs it now (``segq.leases``).

        Not right after Redis was away (a beat whose writes failed, or took longer than a beat:
        a restart, a failover): every other worker was cut off too, and until it has beaten again
        its record and leases look like a dead worker's (expired meanwhile, or lost with the
        writes a promoted replica never got). The reaper waits ``MISSED_BEATS`` timely beats,
        the time a live worker has to show itself, instead of putting back work that is running."""

        interval = self.rt.settings.heartbeat_seconds
        guard = AfterOutage(interval)

        def beat() -> None:
            while True:
                time.sleep(interval)
                try:
                    self.beat(guard)
                except Exception as exc:  # Redis blip: the next beat retries
                    guard.beat(None)
                    log.warning("heartbeat failed: %s", exc)

        threading.Thread(target=beat, name="segq-heartbeat", daemon=True).start()

    def beat(self, guard: AfterOutage) -> None:
        """One heartbeat: the record, the leases, a try for the maintenance lock, releases (one
        script); then, having taken the lock and not just after an outage, the fleet's upkeep.
        The lock is kept for a whole interval, not given back after the pass: the fleet's upkeep
        runs once an interval, by whichever worker beats first, however many workers there are."""
        began = time.monotonic()
        held = self._beat(f"{self.rt.hostname}-{time.time()}")
        if guard.beat(time.monotonic() - began) and held:
            self.maintain()

    def _beat(self, token: str = "") -> bool:
        """The heartbeat's script, with the histogram observations since the last one (kept for the
        next beat if this one fails); whether it took the maintenance lock (for an interval)."""
        tally = self.rt.observations()
        try:
            held, _released = self.rt.registration.beat(self.rt.leases.tags(), time.time() + self.rt.leases.ttl,
                                                         token, int(self.rt.settings.heartbeat_seconds * 1000),
                                                         tally.to_json() if tally else "")
        except BaseException:
            self.rt.keep(tally)
            raise
        return held

    def flush(self) -> None:
        """A last beat (the worker stops): its observations are not lost."""
        self._beat()

    def maintain(self) -> None:
        """The fleet's upkeep, by the worker that took the lock: the reaper (the work of dead
        workers back on its queues, their records removed) and the watchdog (lost messages sent
        again, ``segq.watchdog``)."""
        beat = self.rt.settings.heartbeat_seconds
        self._reaped(leases_mod.reap(self.rt.redis, self.rt.settings.max_worker_losses, ttl=self.rt.leases.ttl,
                                     interval=beat))
        if self.rt.app is not None:
            for lost in watchdog.sweep(self.rt.redis, self.rt.records, self.rt.app, min_age=beat, grace=beat,
                                       max_lost=self.rt.settings.max_worker_losses, fail=self.fail_task):
                if lost.outcome == "failed" and not lost.job_id:
                    self.rt.count(registry.JOBS_FAILED)

    def fail_task(self, task_id: str, reason: str) -> bool:
        """Fail the work of a task given up on (it lost its worker or its message too often): its
        video job, or its shard's unfinished images. True when that moved it."""
        ref = parse_task_id(task_id)
        if ref is None:
            return False
        if ref.is_shard:
            return self.rt.fail_shard(ref.batch, ref.shard, reason)
        moved = bool(self.rt.records.fail(ref.job_id, reason))
        if moved:
            self.rt.count(registry.JOBS_FAILED)
        return moved

    def _reaped(self, reaped: list) -> None:
        """Note what the reaper did on the jobs."""
        for r in reaped:
            lease = r.lease
            log.info("reaper: lease %s of task %s (worker %s pid %s, %s): %s", lease.tag, lease.task_id,
                     lease.worker, lease.pid, "running" if lease.running else "held", r.outcome)
            if r.outcome == "failed":
                message = (f"{lease.task} lost its worker {r.losses} times (last: {lease.worker}); "
                           f"not retried again (SEGQ_MAX_WORKER_LOSSES)")
                self.fail_task(lease.task_id, message)
                log.warning("task %s failed: %s", lease.task_id, message)
                continue
            if r.outcome != "requeued":
                continue
            # the requeue's count and note went onto the job record (shard state) with the restore
            log.warning("task %s: %s", lease.task_id, r.note)

    # -- leases of the messages this worker holds (Celery signals, workers.tasks.app) ----------
    def lease_received(self, tag: str, task_id: str, task: str) -> None:
        """A message reached this worker: its lease (taken by the transport as it recorded the
        delivery, ``segq.transport.QoS.append``; here otherwise)."""
        self.rt.leases.take(tag, task_id, task)
        with self._lock:
            self._tags.setdefault(task_id, []).append(tag)

    def ended(self, task_id: str) -> None:
        """The script that ended the task's work also did away with its message (a shard's end,
        given its id and ``tag_of``): the task's end needs no Redis step of its own (``lease_done``)."""
        with self._lock:
            self._ended.add(task_id)

    def tag_of(self, task_id: str) -> str | None:
        """The delivery tag of the message of ``task_id`` this worker holds (its lease)."""
        with self._lock:
            tags = self._tags.get(task_id)
            return tags[0] if tags else None

    def lease_done(self, task_id: str, broke: bool = False, retried: bool = False, model: str | None = None) -> None:
        """The task ended. ``broke``: it failed outside the skeleton (its job was not told, and
        Celery would drop the message): put the message back instead of releasing it.
        ``retried``: it sent itself again with a countdown (still in flight: the new message is
        the task's now; its slot releases the next work). Otherwise its message is done with: it
        leaves flight, its lease and unacknowledged record go, and its slot releases the next
        pending work, in one script (``task_ended``)."""
        with self._lock:
            tags = self._tags.get(task_id, [])
            tag = tags.pop(0) if tags else None
            if not tags:
                self._tags.pop(task_id, None)
            ended = task_id in self._ended
            self._ended.discard(task_id)
        if not broke:
            if tag:  # not renewed from now on, whatever happens next (the reaper restores a lease left)
                self.rt.leases.released(tag)
            if not ended or retried:
                # a retry's message is in flight under the same task id: it stays in flight
                self.rt.task_ended("" if retried else task_id, model, tag)
            if tag:
                transport.settled(tag)  # kombu's acknowledgement has nothing left to do in Redis
            return
        if not tag:
            return
        try:
            leases_mod.restore(self.rt.redis, tag)
            self.rt.leases.held.pop(tag, None)
            log.warning("task %s broke outside its job's error handling; its message is back on its queue", task_id)
        except redis.RedisError:
            self.rt.leases.abandon(tag)  # the reaper restores it once Redis answers
