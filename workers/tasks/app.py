"""The worker's Celery application: ``celery -A workers.tasks.app worker ...`` (``segq worker`` runs it).

Importing this module does nothing: the app is built on first access to ``workers.tasks.app.app``
(what ``celery -A`` does), from the settings of that moment. The task modules are registered
through the app's ``include`` and define their tasks with ``shared_task``, so this module imports
no task module and no task module imports it.

Models load when the worker process starts (``worker_init``), in that process, before it takes
its first message; CUDA is never touched by a parent process that forks.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import task_postrun, task_received, task_rejected, task_revoked, worker_init, worker_shutdown

from segq.broker import make_celery
from segq.settings import Settings

#: The modules whose tasks a worker runs.
TASK_MODULES = ("workers.tasks.shard", "workers.tasks.video")


def _boot(sender=None, **_):
    """Load the runtime (models, registry record, heartbeat) when the worker starts. Celery only
    logs an exception raised in a signal handler and goes on, so a process whose start failed
    would take messages it cannot run: it logs the reason and exits instead."""
    import os
    import sys

    from segq.errors import SegqError, ServiceUnavailable
    from workers.host import runtime
    from workers.host.launcher import EXIT_BOOT_FAILED

    logging.getLogger("workers").setLevel(logging.INFO)
    try:
        runtime.boot(sender.hostname, Settings.from_env(), app=sender.app)
    except BaseException as exc:  # noqa: BLE001 (any failure: the process must not serve)
        deterministic = isinstance(exc, SegqError) and not isinstance(exc, ServiceUnavailable)
        log = logging.getLogger("workers.tasks.app")
        log.critical("worker %s failed to start: %s: %s", getattr(sender, "hostname", "?"), type(exc).__name__, exc,
                     exc_info=not deterministic)
        for handler in logging.getLogger().handlers + log.handlers:
            handler.flush()
        sys.stderr.flush()
        # a configuration that cannot work is not restarted by ``segq worker``; other failures
        # (Redis unreachable) exit 1 and are
        os._exit(EXIT_BOOT_FAILED if deterministic else 1)


def _forget(sender=None, **_):
    from workers.host import runtime

    runtime.shutdown()


def _received(sender=None, request=None, **_):
    """A message reached this worker (to run now, or held reserved or for a retry's countdown):
    lease it, so that it is put back if this worker dies (``segq.leases``)."""
    from workers.host import runtime

    if request is None or not str(request.name).startswith("segq."):
        return
    tag = getattr(request.message, "delivery_tag", None)
    if tag:
        runtime.get().upkeep.lease_received(str(tag), request.id, request.name)


def _connection_errors() -> tuple[type, ...]:
    import redis
    from kombu.exceptions import OperationalError

    return (redis.ConnectionError, redis.TimeoutError, OperationalError, ConnectionError, TimeoutError)


_CONNECTION_ERRORS: tuple[type, ...] = ()


def _finished(task_id=None, request=None, state=None, retval=None, kwargs=None, **_):
    from workers.host import runtime
    from workers.tasks.skeleton import JobFailure

    global _CONNECTION_ERRORS
    _CONNECTION_ERRORS = _CONNECTION_ERRORS or _connection_errors()
    task_id = task_id or getattr(request, "id", None)
    if task_id:
        # Broken by the infrastructure outside the skeleton (storing the result while Redis
        # is away): put the message back. Anything else failed for good.
        broke = state == "FAILURE" and not isinstance(retval, JobFailure) and isinstance(retval, _CONNECTION_ERRORS)
        kwargs = kwargs if isinstance(kwargs, dict) else getattr(request, "kwargs", None)
        model = kwargs.get("model") if isinstance(kwargs, dict) else None
        runtime.get().upkeep.lease_done(task_id, broke=broke, retried=state == "RETRY", model=model)


#: Seconds a worker's consumer waits in one blocking pop of its queues before asking again (kombu's
#: default is 1): a message is taken the moment it arrives either way, and an idle worker costs
#: Redis a fifth of the pops (``docs/scale.md``).
POLL_SECONDS = 5.0


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = make_celery(settings, name="segq-worker", include=TASK_MODULES)
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, "polling_interval": POLL_SECONDS}
    worker_init.connect(_boot, weak=False, dispatch_uid="segq-boot")
    worker_shutdown.connect(_forget, weak=False, dispatch_uid="segq-forget")
    task_received.connect(_received, weak=False, dispatch_uid="segq-lease")
    task_postrun.connect(_finished, weak=False, dispatch_uid="segq-lease-end")
    task_revoked.connect(_finished, weak=False, dispatch_uid="segq-lease-revoked")
    task_rejected.connect(_finished, weak=False, dispatch_uid="segq-lease-rejected")
    return app


_app: Celery | None = None


def __getattr__(name: str):
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
