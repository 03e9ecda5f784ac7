"""Per-process worker state: settings, storage, job store, device, registration and models.

``boot()`` runs once when the worker process starts (Celery's ``worker_init`` signal), in the
process that then runs every task: it selects the device and loads every model this worker
serves. Later jobs reuse them. The worker's record in Redis is owned by ``segq.registry``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import redis

from segq.errors import UnknownModel
from segq.jobs import JobStore
from segq.registry import HEARTBEAT_SECONDS, WorkerRegistration
from segq.settings import Settings
from segq.storage import Storage
from workers import device as device_mod
from workers import models as models_mod

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    hostname: str
    storage: Storage
    store: JobStore
    spec: device_mod.DeviceSpec
    registration: WorkerRegistration
    models: dict[str, models_mod.LoadedModel] = field(default_factory=dict)

    @property
    def redis(self) -> redis.Redis:
        return self.store.r

    def model(self, name: str) -> models_mod.LoadedModel:
        try:
            return self.models[name]
        except KeyError:
            served = ", ".join(sorted(self.models)) or "none"
            raise UnknownModel(f"model {name!r} is not served by worker {self.hostname} (it serves: {served})") from None

    def load_models(self, names: list[str]) -> None:
        for name in names:
            if name in self.models:
                continue
            checkpoint = self.settings.models.get(name)
            if checkpoint is None:
                raise UnknownModel(f"unknown model {name!r}: configured models are {', '.join(self.settings.models)}")
            loaded = models_mod.load(name, checkpoint, self.spec, self.settings.image_processor)
            loaded.postprocess = self.settings.postprocess
            self.models[name] = loaded
            self.registration.loaded(name, loaded.load_seconds)

    def count(self, counter: str) -> None:
        self.registration.count(counter)

    def set_active(self, description: str) -> None:
        """What this worker is doing now (``segq workers``); "" when idle. Kept in Redis, since a
        worker busy with a long task answers Celery's remote control only between tasks."""
        self.registration.set_active(description)

    def start_heartbeat(self) -> None:
        def beat() -> None:
            while True:
                time.sleep(HEARTBEAT_SECONDS)
                try:
                    self.registration.publish()
                except Exception as exc:  # Redis blip: the next beat retries
                    log.warning("heartbeat failed: %s", exc)

        threading.Thread(target=beat, name="segq-heartbeat", daemon=True).start()


_runtime: Runtime | None = None


def boot(hostname: str, settings: Settings | None = None) -> Runtime:
    """Create this process's runtime and load its models (once)."""
    global _runtime
    if _runtime is not None:
        return _runtime
    settings = settings or Settings.from_env()
    spec = device_mod.select(settings.precision, settings.worker_threads or None)
    store = JobStore.from_url(settings.redis_url, settings.job_ttl_seconds)
    rt = Runtime(
        settings=settings,
        hostname=hostname,
        storage=Storage(settings),
        store=store,
        spec=spec,
        registration=WorkerRegistration(store.r, hostname, spec.label),
    )
    rt.registration.publish()
    rt.load_models(settings.served_models())
    rt.start_heartbeat()
    _runtime = rt
    log.info("worker %s ready on %s with models %s", hostname, spec.label, ", ".join(rt.models))
    return rt


def shutdown() -> None:
    """The worker stops: remove its record (its expiry would, a little later)."""
    if _runtime is not None:
        try:
            _runtime.registration.remove()
        except redis.RedisError:
            pass


def get() -> Runtime:
    if _runtime is None:
        raise RuntimeError("worker runtime not booted (models load at worker start)")
    return _runtime
