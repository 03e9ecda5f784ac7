"""The worker's Celery application: ``celery -A workers.app worker ...`` (``segq worker`` runs it).

Models load when the worker process starts (``worker_init``), in that process, before it takes
its first message; CUDA is never touched by a parent process that forks.
"""

from __future__ import annotations

import logging

from celery.signals import worker_init, worker_shutdown

from segq import keys
from segq.broker import make_celery
from segq.settings import Settings

settings = Settings.from_env()
app = make_celery(settings, name="segq-worker")
# One task at a time, run in this very process, where the models were loaded.
app.conf.worker_pool = "solo"


@worker_init.connect
def _load_models(sender=None, **_):
    from workers import runtime

    logging.getLogger("workers").setLevel(logging.INFO)
    runtime.boot(sender.hostname, settings)


@worker_shutdown.connect
def _forget_worker(sender=None, **_):
    from workers import runtime

    try:
        runtime.get().redis.delete(keys.worker(sender.hostname))
    except Exception:
        pass


import workers.tasks  # noqa: E402,F401  (registers the tasks)
import workers.video_tasks  # noqa: E402,F401
