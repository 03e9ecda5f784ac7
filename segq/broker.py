"""The Celery application both sides share: Redis broker and result backend, JSON only.

The producer uses it to send tasks by name (it never imports worker code); the workers
register their tasks on it. Reliability settings for long GPU tasks:

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only after
  the task returns, so a worker that dies mid-task (OOM, node lost) does not lose the job;
  Redis redelivers it after the visibility timeout.
- ``worker_prefetch_multiplier = 1``: a worker reserves one message at a time, so a long
  task never holds back jobs another worker could start.
- one ``visibility_timeout`` for broker and result backend, longer than the longest task.
- task events on, so Flower sees every task.
"""

from __future__ import annotations

import ssl

from celery import Celery
from kombu import Queue

from segq.protocol import model_queue
from segq.settings import Settings


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
        # Long GPU tasks: nothing lost, nothing hoarded.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_track_started": True,
        "result_expires": 24 * 3600,
        "result_extended": True,
        # Flower and `segq workers` see what happens.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_default_queue": "segq.default",
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
    }
    if settings.redis_uses_tls:
        tls = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        conf["broker_use_ssl"] = tls
        conf["redis_backend_use_ssl"] = tls
    return conf


def make_celery(settings: Settings, name: str = "segq") -> Celery:
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app


def queues_for(models: list[str]) -> list[Queue]:
    return [Queue(model_queue(m)) for m in models]
