"""The fleet as the producer sees it: live workers, queue depths, health, Prometheus metrics.

Two sources, joined: each worker's record in the registry (``segq.registry``: device, models,
loads, counters, the tasks running now, its model stage's busy fraction; refreshed by a heartbeat
thread every few seconds even while long tasks run) and Celery's remote control
(``ping``/``active``/``stats``), which a worker answers from its consumer thread while its pool's
threads run tasks.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass, field

import redis

from segq import deadletters, keys, leases, registry
from segq.protocol import model_queue
from segq.scheduler import Scheduler
from segq.states import PRIORITIES
from segq.registry import WorkerRecord
from segq.settings import Settings

@dataclass
class WorkerView:
    """A worker as ``segq workers`` shows it: its registry record joined with Celery's answers."""

    record: WorkerRecord
    responding: bool | None = None  # answered Celery's ping (None: not asked)
    celery_active: list[str] = field(default_factory=list)
    celery_total: int | None = None  # tasks run, from Celery's stats

    def __getattr__(self, name):  # the record's fields and properties
        if name == "record":
            raise AttributeError(name)
        return getattr(self.record, name)

    def to_dict(self) -> dict:
        return {**asdict(self.record), "heartbeat_age": self.record.heartbeat_age, "live": self.record.live,
                "responding": self.responding, "celery_active": self.celery_active,
                "celery_total": self.celery_total}


def workers(settings: Settings, r: redis.Redis, celery_app=None, timeout: float = 1.0) -> list[WorkerView]:
    """Every live worker, with Celery's remote-control answers where it gave them."""
    views = {w.hostname: WorkerView(w) for w in registry.workers(r)}
    if celery_app is not None:
        # Each broadcast returns once every registered worker has answered (``limit``), waiting
        # the whole ``timeout`` only for a silent one; with no worker registered it listens
        # ``timeout`` seconds for any that answers.
        limit = len(views) or None
        pings = celery_app.control.ping(timeout=timeout, limit=limit) or []
        answered = {name for reply in pings for name in reply}
        silent = sorted(set(views) - answered)
        if silent:  # a busy worker's reply can miss the first window: ask those once more
            again = celery_app.control.ping(destination=silent, timeout=timeout, limit=len(silent)) or []
            answered |= {name for reply in again for name in reply}
        active, stats = {}, {}
        if answered:
            inspect = celery_app.control.inspect(destination=sorted(answered), timeout=timeout, limit=len(answered))
            active = inspect.active() or {}
            stats = inspect.stats() or {}
        for name in set(views) | answered:
            view = views.setdefault(name, WorkerView(WorkerRecord(hostname=name)))
            view.responding = name in answered
            view.celery_active = [f"{t['name']}[{t['id']}]" for t in active.get(name, [])]
            total = stats.get(name, {}).get("total")
            view.celery_total = sum(total.values()) if isinstance(total, dict) else None
    return sorted(views.values(), key=lambda w: w.hostname)


def queue_names(settings: Settings, r: redis.Redis) -> list[str]:
    """The queues of the configured models and of the models live workers serve (no keyspace scan)."""
    models = set(settings.models) | {m for w in registry.workers(r) for m in w.models}
    return sorted(model_queue(m) for m in models)


def queue_depths(settings: Settings, r: redis.Redis) -> dict[str, int]:
    """Messages waiting in each queue (Redis list length; reserved messages are not counted)."""
    names = queue_names(settings, r)
    pipe = r.pipeline()
    for name in names:
        pipe.llen(name)
    return dict(zip(names, pipe.execute()))


def queue_report(settings: Settings, r: redis.Redis) -> dict:
    """Per queue: messages waiting and messages unacknowledged (held by a worker: running,
    reserved, or scheduled for a retry), and per priority the work not released to it yet
    (``segq.scheduler``); the leases: running, held, and held by workers that are gone (the
    reaper puts those back); messages in flight (released, not acknowledged)."""
    waiting = queue_depths(settings, r)
    pending: dict[str, dict[str, int]] = {}
    for (model, priority), n in Scheduler(r).pending().items():
        pending.setdefault(model_queue(model), {})[priority] = n
    unacked: dict[str, int] = {name: 0 for name in waiting}
    for raw in r.hvals(keys.KOMBU_UNACKED):
        try:
            queue = json.loads(raw)[2]
        except (ValueError, IndexError, TypeError):
            continue
        unacked[queue] = unacked.get(queue, 0) + 1
    live = {(w.hostname, w.pid) for w in registry.workers(r)}
    held = leases.leases(r)
    return {
        "queues": {name: {"waiting": waiting.get(name, 0), "unacked": unacked.get(name, 0),
                          "pending": {p.value: pending.get(name, {}).get(p.value, 0) for p in PRIORITIES}}
                   for name in sorted(set(waiting) | set(unacked) | set(pending))},
        "in_flight": Scheduler(r).in_flight(),
        "dead_letters": deadletters.count(r),
        "watchdog": watchdog_counts(r),
        "leases": {"running": sum(lease.running for lease in held), "held": len(held),
                   "of_lost_workers": sum((lease.worker, lease.pid) not in live for lease in held)},
    }


def watchdog_counts(r: redis.Redis) -> dict[str, int]:
    """What the watchdog did (``segq.watchdog``): lost messages sent again, jobs failed for it."""
    stats = r.hmget(keys.STATS, keys.STAT_RESENT, keys.STAT_LOST_FAILED)
    return {"resent": int(stats[0] or 0), "gave_up": int(stats[1] or 0)}


def local_health(r: redis.Redis, host: str | None = None) -> tuple[bool, str]:
    """Readiness of this host's workers: Redis reachable, each worker has its models loaded and a
    fresh heartbeat. For Kubernetes probes and Docker health checks."""
    host = host or socket.gethostname()
    try:
        r.ping()
    except redis.RedisError as exc:
        return False, f"redis unreachable: {exc}"
    mine = [w for w in registry.workers(r, live_only=False) if w.host == host]
    if not mine:
        return False, f"no segq worker of host {host} has registered yet (models loading?)"
    for w in mine:
        if not w.live:
            return False, f"{w.hostname}: heartbeat {w.heartbeat_age:.0f}s old"
        if not w.models:
            return False, f"{w.hostname}: no model loaded yet"
    return True, "ok: " + ", ".join(f"{w.hostname} ({', '.join(w.models)})" for w in mine)
