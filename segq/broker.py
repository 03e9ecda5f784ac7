"""The Celery application both sides share, and the worker policy, defined once.

The producer uses it to send tasks by name (it never imports worker code); the workers
register their tasks on it. Reliability settings for long GPU tasks:

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only after
  the task returns, so a worker that dies mid-task (OOM, node lost) does not lose the job;
  Redis redelivers it after the visibility timeout.
- the ``threads`` pool with ``SEGQ_WORKER_CONCURRENCY`` threads (3 by default) and
  ``worker_prefetch_multiplier = 1``: a worker holds as many messages as it runs, no more, so a
  long task never holds back jobs another worker could start. The tasks run in the very process
  where the models were loaded, side by side: while one is in the model, the next is fetched and
  decoded and the previous one rendered and uploaded; every forward pass still runs on the
  process's one model thread (``workers.model.stage``).
- one ``visibility_timeout``, longer than the longest task (a backstop only: lost work is found
  by leases and the watchdog, ``segq.leases``).
- no result backend: the job record (``segq.jobs``) holds what a task's result would, and a
  stored result per task would cost Redis memory per job for nothing (``task_ignore_result``).
- task events on, so Flower sees every task (arguments and outcomes come with the events).
- ``segq.transport``: a popped item that is not a segq task message goes to the dead-letter list
  instead of killing the worker process.
"""

from __future__ import annotations

import ssl

from celery import Celery

from segq import connections
from segq.settings import Settings

#: How every segq worker process runs its tasks. The worker app applies it; nothing else
#: restates it (the launcher passes no pool or prefetch options of its own). The concurrency is
#: ``SEGQ_WORKER_CONCURRENCY`` (``celery_config``).
WORKER_POLICY = {
    "worker_pool": "threads",
    "worker_prefetch_multiplier": 1,
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_send_task_events": True,
}


def celery_config(settings: Settings) -> dict:
    broker_url, sentinel = connections.celery_broker(settings.redis_url)
    transport = {
        "visibility_timeout": settings.visibility_timeout_seconds,
        "socket_keepalive": True,
        "health_check_interval": 30,
        **sentinel,
    }
    conf = {
        "broker_url": broker_url,
        # kombu's Redis transport, made to dead-letter what it cannot deliver (segq.transport)
        "broker_transport": "segq.transport:SentinelTransport" if sentinel else "segq.transport:Transport",
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        # Keep reconnecting while Redis is away (a restart, a failover) instead of giving up.
        "broker_connection_max_retries": None,
        # JSON only: pickle is refused on both ends.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # No STARTED write before a task runs: the job record tracks progress, and a task must
        # not fail before it starts because Redis is briefly away. Results are stored with
        # retries for the same reason.
        "task_track_started": False,
        "task_ignore_result": True,
        # Flower and `segq workers` see what happens.
        "task_send_sent_event": True,
        "task_default_queue": "segq.default",
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
        **WORKER_POLICY,
        "worker_concurrency": settings.task_slots,
    }
    if settings.redis_uses_tls:
        conf["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return conf


def make_celery(settings: Settings, name: str = "segq", include: tuple[str, ...] = ()) -> Celery:
    app = Celery(name, include=list(include))
    app.conf.update(celery_config(settings))
    return app
