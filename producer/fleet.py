"""The fleet as the producer sees it: live workers, queue depths, health, Prometheus metrics.

Two sources, joined: each worker's own hash in Redis (``segq:worker:<name>``: device, models,
loads, counters, current task; refreshed by a heartbeat thread every few seconds even while a
long task runs) and Celery's remote control (``ping``/``active``/``stats``), which a worker
answers only between tasks (solo pool).
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field

import redis

from segq import keys
from segq.protocol import model_queue
from segq.settings import Settings

#: A worker whose heartbeat is older than this is not live (three missed beats).
STALE_SECONDS = 30


@dataclass
class WorkerView:
    hostname: str
    host: str = ""
    device: str = ""
    models: list[str] = field(default_factory=list)
    model_loads: dict = field(default_factory=dict)
    load_seconds: dict = field(default_factory=dict)
    active: str = ""
    jobs_done: int = 0
    jobs_failed: int = 0
    tasks_done: int = 0
    heartbeat_age: float | None = None
    responding: bool | None = None  # answered Celery's ping (None: not asked)
    celery_active: list[str] = field(default_factory=list)
    celery_total: int | None = None  # tasks run, from Celery's stats

    @property
    def live(self) -> bool:
        return self.heartbeat_age is not None and self.heartbeat_age < STALE_SECONDS


def _json(raw: str | None, default):
    try:
        return json.loads(raw) if raw else default
    except ValueError:
        return default


def registered_workers(r: redis.Redis) -> list[WorkerView]:
    now = time.time()
    out = []
    for key in sorted(r.scan_iter(match=keys.worker("*"), count=500)):
        d = r.hgetall(key)
        if not d:
            continue
        hb = float(d["heartbeat"]) if d.get("heartbeat") else None
        out.append(WorkerView(
            hostname=d.get("hostname", key.split(":", 2)[-1]),
            host=d.get("host", ""),
            device=d.get("device", ""),
            models=_json(d.get("models"), []),
            model_loads=_json(d.get("model_loads"), {}),
            load_seconds=_json(d.get("load_seconds"), {}),
            active=d.get("active", ""),
            jobs_done=int(d.get("jobs_done", 0)),
            jobs_failed=int(d.get("jobs_failed", 0)),
            tasks_done=int(d.get("tasks_done", 0)),
            heartbeat_age=now - hb if hb else None,
        ))
    return out


def workers(settings: Settings, r: redis.Redis, celery_app=None, timeout: float = 1.0) -> list[WorkerView]:
    """Every live worker, with Celery's remote-control answers where it gave them."""
    views = {w.hostname: w for w in registered_workers(r) if w.live}
    if celery_app is not None:
        inspect = celery_app.control.inspect(timeout=timeout)
        pings = celery_app.control.ping(timeout=timeout) or []
        answered = {name for reply in pings for name in reply}
        active = inspect.active() or {}
        stats = inspect.stats() or {}
        for name in set(views) | answered:
            view = views.setdefault(name, WorkerView(hostname=name))
            view.responding = name in answered
            view.celery_active = [f"{t['name']}[{t['id']}]" for t in active.get(name, [])]
            total = stats.get(name, {}).get("total")
            view.celery_total = sum(total.values()) if isinstance(total, dict) else None
    return sorted(views.values(), key=lambda w: w.hostname)


def queue_names(settings: Settings, r: redis.Redis) -> list[str]:
    """The configured models' queues, plus any other segq queue that exists in Redis."""
    names = {model_queue(m) for m in settings.models}
    for key in r.scan_iter(match="segq.model.*", count=500):
        if r.type(key) == "list":
            names.add(key)
    return sorted(names)


def queue_depths(settings: Settings, r: redis.Redis) -> dict[str, int]:
    """Messages waiting in each queue (Redis list length; reserved messages are not counted)."""
    names = queue_names(settings, r)
    pipe = r.pipeline()
    for name in names:
        pipe.llen(name)
    return dict(zip(names, pipe.execute()))


def local_health(r: redis.Redis, host: str | None = None) -> tuple[bool, str]:
    """Readiness of this host's workers: Redis reachable, each worker has its models loaded and a
    fresh heartbeat. For Kubernetes probes and Docker health checks."""
    host = host or socket.gethostname()
    try:
        r.ping()
    except redis.RedisError as exc:
        return False, f"redis unreachable: {exc}"
    mine = [w for w in registered_workers(r) if w.host == host]
    if not mine:
        return False, f"no segq worker of host {host} has registered yet (models loading?)"
    for w in mine:
        if not w.live:
            return False, f"{w.hostname}: heartbeat {w.heartbeat_age:.0f}s old"
        if not w.models:
            return False, f"{w.hostname}: no model loaded yet"
    return True, "ok: " + ", ".join(f"{w.hostname} ({', '.join(w.models)})" for w in mine)
