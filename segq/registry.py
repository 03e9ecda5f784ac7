"""The worker registry: every worker process's record in Redis, owned by this module alone.

Each worker process publishes a hash ``segq:worker:<hostname>`` (device, models, load counts,
task slots, counters, current tasks, how busy its model stage is) and refreshes it from a
heartbeat thread, also while long tasks run; an index sorted by heartbeat (``segq:workers``)
lists the records, so reading the fleet never scans the keyspace (whose size grows with the jobs
kept). A worker is live while its last heartbeat is younger than ``MISSED_BEATS`` of its
intervals; the record of one that died without a word is removed by the reaper
(:func:`remove_dead`, which reads the index's stale end only), taking its task slots back from
the models' slot counts (``segq:slots``): the scheduler's targets are those counts, read in one
step, not a sum over the fleet's records. Workers write through :class:`WorkerRegistration`;
everything that reads worker records (``segq workers``, ``segq health``, the exporter, the local
stack, tests, benchmarks) goes through :func:`workers` / :func:`wait_ready`, which read every
record: for people and probes, never on a path that runs per task or per heartbeat.

Compare rq's ``worker_registration.py``: one owner for the records, one liveness rule.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

import redis

from segq import defaults, keys

#: Seconds between heartbeats, unless the worker's settings say otherwise (``SEGQ_HEARTBEAT_SECONDS``;
#: each record carries its own interval).
HEARTBEAT_SECONDS = defaults.HEARTBEAT_SECONDS
#: The one liveness rule: a worker is live while its last heartbeat is younger than
#: ``MISSED_BEATS`` of its intervals; the reaper removes its record after that.
MISSED_BEATS = 3

#: Counter fields of a record (``WorkerRegistration.count``).
JOBS_DONE = "jobs_done"
JOBS_FAILED = "jobs_failed"
TASKS_DONE = "tasks_done"
COUNTERS = (JOBS_DONE, JOBS_FAILED, TASKS_DONE)


@dataclass
class WorkerRecord:
    hostname: str
    host: str = ""
    pid: int = 0
    device: str = ""
    models: list[str] = field(default_factory=list)
    model_loads: dict = field(default_factory=dict)
    load_seconds: dict = field(default_factory=dict)
    compile: str = "off"  # SEGQ_COMPILE of the worker: "off" or the torch.compile mode of its models
    concurrency: int = 1  # task slots: SEGQ_WORKER_CONCURRENCY (the scheduler's targets count them)
    active: str = ""  # the tasks running now, "; "-joined ("" when idle)
    active_since: float | None = None
    model_busy: float | None = None  # busy fraction of the model stage over its last 30 s
    model_busy_s: float = 0.0  # seconds the model stage ran forward passes, since it started
    model_wall_s: float = 0.0  # seconds since the model stage started
    model_items: int = 0  # images and frames through the model stage
    model_passes: int = 0  # forward passes of the model stage (items / passes: its batches' size)
    started_at: float | None = None
    heartbeat: float | None = None
    interval: float = HEARTBEAT_SECONDS
    jobs_done: int = 0
    jobs_failed: int = 0
    tasks_done: int = 0

    @property
    def active_tasks(self) -> list[str]:
        return [t for t in self.active.split("; ") if t]

    @property
    def items_per_pass(self) -> float | None:
        """Images and frames per forward pass of its model stage (batches across jobs)."""
        return self.model_items / self.model_passes if self.model_passes else None

    @property
    def heartbeat_age(self) -> float | None:
        return None if self.heartbeat is None else max(0.0, time.time() - self.heartbeat)

    @property
    def live(self) -> bool:
        age = self.heartbeat_age
        return age is not None and age < self.interval * MISSED_BEATS

    @property
    def ready(self) -> bool:
        """Live, with its models loaded: it takes jobs."""
        return self.live and bool(self.models)

    @classmethod
    def from_hash(cls, key: str, d: dict[str, str]) -> "WorkerRecord":
        def num(name: str, kind=float):
            try:
                return kind(float(d[name])) if d.get(name) not in (None, "") else None
            except ValueError:
                return None

        return cls(
            hostname=d.get("hostname") or key.split(":", 2)[-1],
            host=d.get("host", ""),
            pid=num("pid", int) or 0,
            device=d.get("device", ""),
            models=_json(d.get("models"), []),
            model_loads=_json(d.get("model_loads"), {}),
            load_seconds=_json(d.get("load_seconds"), {}),
            compile=d.get("compile") or "off",
            concurrency=num("concurrency", int) or 1,
            active=d.get("active", ""),
            active_since=num("active_since"),
            model_busy=num("model_busy"),
            model_busy_s=num("model_busy_s") or 0.0,
            model_wall_s=num("model_wall_s") or 0.0,
            model_items=num("model_items", int) or 0,
            model_passes=num("model_passes", int) or 0,
            started_at=num("started_at"),
            heartbeat=num("heartbeat"),
            interval=num("interval") or HEARTBEAT_SECONDS,
            **{c: num(c, int) or 0 for c in COUNTERS},
        )


def _json(raw: str | None, default):
    try:
        return json.loads(raw) if raw else default
    except ValueError:
        return default


class WorkerRegistration:
    """A worker process's own record: registration, heartbeat, counters, current tasks, removal.

    Only the heartbeat writes to Redis, in one script (``segq/lua/beat.lua``) whose cost does not
    grow with the fleet: the record's heartbeat and the fields that changed since the last beat
    (counters, the tasks running, the model stage's figures), the index, the histogram
    observations of the work done since, the worker's leases, the maintenance lock and the
    release of pending work. Counting a job or noting a task's start
    costs no Redis command: ``segq workers`` sees them at the next beat. The record counts the
    worker's task slots for each model it serves in the models' slot counts (the scheduler's
    targets), which registration and removal keep exact (``worker_register.lua``,
    ``worker_remove.lua``); a dead worker's record is removed, and its slots taken back, by the
    reaper (``segq.leases``)."""

    def __init__(self, r: redis.Redis, hostname: str, device: str, interval: float = HEARTBEAT_SECONDS,
                 compile: str = "off", concurrency: int = 1):
        self.r = r
        self.compile = compile
        self.concurrency = concurrency
        self.interval = interval
        self.hostname = hostname
        self.key = keys.worker(hostname)
        self.device = device
        self.models: dict[str, float] = {}  # name -> load seconds
        self.loads: dict[str, int] = {}
        self.started_at = time.time()
        self.counters = {c: 0 for c in COUNTERS}
        self.active = ""
        self.active_since = self.started_at
        #: The model stage's figures (``model_*`` fields), written with the beats that follow a change.
        self.stage_stats: Callable[[], dict] | None = None
        self._sent: dict[str, str] = {}  # the changing fields as the record holds them
        from segq.scripts import Scripts

        self.scripts = Scripts(r)

    def loaded(self, name: str, seconds: float) -> None:
        self.models[name] = round(seconds, 3)
        self.loads[name] = self.loads.get(name, 0) + 1
        self.publish()

    def _changing(self) -> dict[str, str]:
        fields = {**{c: str(v) for c, v in self.counters.items()}, "active": self.active,
                  "active_since": str(round(self.active_since, 3))}
        if self.stage_stats:
            stats = {k: str(v) for k, v in self.stage_stats().items()}
            wall = stats.pop("model_wall_s", None)
            if any(self._sent.get(k) != v for k, v in stats.items()) and wall is not None:
                stats["model_wall_s"] = wall  # sent with the other figures, not on every idle beat
            fields.update(stats)
        return fields

    def publish(self) -> None:
        """Register: write the whole record, and count its slots for the models it serves."""
        changing = self._changing()
        fields = {
            "hostname": self.hostname, "pid": os.getpid(), "host": socket.gethostname(), "device": self.device,
            "model_loads": json.dumps(self.loads), "load_seconds": json.dumps(self.models),
            "compile": self.compile, "started_at": self.started_at, "interval": self.interval, **changing,
        }
        self.scripts.worker_register(args=[self.hostname, time.time(), json.dumps(fields),
                                           json.dumps(sorted(self.models)), self.concurrency])
        self._sent = changing

    def beat(self, lease_tags: list[str], lease_expiry: float, lock_token: str = "",
             lock_ms: int = 0, histograms: str = "") -> tuple[bool, int]:
        """The heartbeat (class docstring), with the histogram observations since the last one
        (``segq.metrics.Tally.to_json``): ``(maintenance lock held, messages released)``. A record
        removed meanwhile (a worker cut off for longer than its leases, judged dead) is written
        again whole, and the beat repeated."""
        changing = self._changing()
        changed = {k: v for k, v in changing.items() if self._sent.get(k) != v}
        out = self.scripts.beat(args=[self.hostname, time.time(), json.dumps(changed) if changed else "", lease_expiry,
                                      lock_token, lock_ms if lock_token else "", histograms,
                                      ",".join(sorted(self.models)), *lease_tags])
        if int(out[0]) == -1:
            self.publish()
            return self.beat(lease_tags, lease_expiry, lock_token, lock_ms, histograms)
        self._sent.update(changed)
        return bool(int(out[1])), int(out[2])

    def count(self, counter: str) -> None:
        if counter not in COUNTERS:
            raise ValueError(f"unknown counter {counter!r}")
        self.counters[counter] += 1

    def set_active(self, description: str) -> None:
        """What the worker does now; "" when idle (written with the next beat, or a task's start:
        ``write_active``)."""
        if description != self.active:
            self.active, self.active_since = description, time.time()

    def write_active(self, pipe) -> None:
        """The tasks running now, added to ``pipe`` (a task's start, which Redis sees anyway): a
        task shows in ``segq workers`` from its start, and until the next beat after its end."""
        fields = {"active": self.active, "active_since": str(round(self.active_since, 3))}
        pipe.hset(self.key, mapping=fields)
        self._sent.update(fields)

    def remove(self) -> None:
        self.scripts.worker_remove(args=[self.hostname, ""])


def remove_dead(r: redis.Redis, interval: float = HEARTBEAT_SECONDS, now: float | None = None) -> list[str]:
    """The reaper's part of the registry: remove the records of the workers whose last heartbeat
    is older than their liveness allows (``MISSED_BEATS`` of their own intervals), taking their
    slots back from the models' counts; their names. Reads the index's stale end only (older than
    ``MISSED_BEATS`` of the caller's ``interval``), never the whole fleet."""
    from segq.scripts import Scripts

    now = now or time.time()
    scripts = Scripts(r)
    out = []
    for name, beat in r.zrangebyscore(keys.WORKERS_INDEX, "-inf", now - interval * MISSED_BEATS, withscores=True):
        own = _num(r.hget(keys.worker(name), "interval")) or HEARTBEAT_SECONDS
        older_than = now - own * MISSED_BEATS
        if beat < older_than and int(scripts.worker_remove(args=[name, older_than])):
            out.append(name)
    return out


def _num(raw) -> float | None:
    try:
        return float(raw) if raw not in (None, "") else None
    except ValueError:
        return None


def serving(r: redis.Redis, model: str) -> bool:
    """Whether a live worker serves ``model`` (its slot count, one read)."""
    return int(r.hget(keys.SLOTS, model) or 0) > 0


def workers(r: redis.Redis, *, live_only: bool = True) -> list[WorkerRecord]:
    """The registered workers, sorted by hostname (live ones only, unless asked): the index's
    entries whose records still exist. Costs one read per worker of the index, never a scan: for
    those who look at the fleet (``segq workers``, the exporter, health checks), never on a path
    that runs per task or per heartbeat."""
    beats = dict(r.zrange(keys.WORKERS_INDEX, 0, -1, withscores=True))
    names = sorted(beats)
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(keys.worker(name))
    out = []
    for name, d in zip(names, pipe.execute()):
        if d:
            rec = WorkerRecord.from_hash(keys.worker(name), {**d, "heartbeat": beats[name]})
            if rec.live or not live_only:
                out.append(rec)
    return out


def get(r: redis.Redis, hostname: str) -> WorkerRecord | None:
    d, beat = r.pipeline(transaction=False).hgetall(keys.worker(hostname)).zscore(keys.WORKERS_INDEX, hostname) \
        .execute()
    return WorkerRecord.from_hash(keys.worker(hostname), {**d, "heartbeat": beat}) if d else None


def wait_ready(r: redis.Redis, *, hostnames: list[str] | None = None, count: int | None = None,
               timeout: float = 180.0, alive: Callable[[], str | None] | None = None,
               poll: float = 0.3) -> list[WorkerRecord]:
    """Block until the named workers (or ``count`` workers) are ready; returns their records.

    ``alive`` is called on every poll and returns a message when the thing being waited for has
    died (a process that exited), which is raised at once instead of waiting out the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        ready = [w for w in workers(r) if w.ready]
        if hostnames is not None:
            by_name = {w.hostname: w for w in ready}
            if all(h in by_name for h in hostnames):
                return [by_name[h] for h in hostnames]
        elif len(ready) >= (count or 1):
            return ready
        problem = alive() if alive else None
        if problem:
            raise RuntimeError(problem)
        if time.monotonic() > deadline:
            wanted = ", ".join(hostnames) if hostnames is not None else f"{count or 1} worker(s)"
            raise TimeoutError(f"not ready after {timeout:g}s: {wanted} (ready: "
                               f"{', '.join(w.hostname for w in ready) or 'none'})")
        time.sleep(poll)
