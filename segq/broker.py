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
  process's one model thread (``workers.pipeline``).
- one ``visibility_timeout`` for broker and result backend, longer than the longest task.
- task events on, so Flower sees every task.
"""

from __future__ import annotations

import ssl

from celery import Celery

from segq import defaults
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
    transport = {
        "visibility_timeout": settings.visibility_timeout_seconds,
        "socket_keepalive": True,
        "health_check_interval": 30,
    }
    conf = {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout_seconds},
        "broker_connection_retry_on_startup": True,
        # JSON only: pickle is refused on both ends.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # No STARTED write before a task runs: the job record tracks progress, and a task must
        # not fail before it starts because Redis is briefly away. Results are stored with
        # retries for the same reason.
        "task_track_started": False,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 20,
        "result_expires": defaults.RESULT_EXPIRES_SECONDS,
        "result_extended": True,
        # Flower and `segq workers` see what happens.
        "task_send_sent_event": True,
        "task_default_queue": "segq.default",
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
        **WORKER_POLICY,
        "worker_concurrency": settings.worker_concurrency,
    }
    if settings.redis_uses_tls:
        tls = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        conf["broker_use_ssl"] = tls
        conf["redis_backend_use_ssl"] = tls
    return conf


def make_celery(settings: Settings, name: str = "segq", include: tuple[str, ...] = ()) -> Celery:
    app = Celery(name, include=list(include))
    app.conf.update(celery_config(settings))
    return app
