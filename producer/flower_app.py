"""The Celery app Flower runs with: ``celery -A producer.flower_app flower``.

It is segq's broker configuration (``segq.broker``) from the settings of the moment, so Flower
reaches the broker exactly as every segq client does, Redis Sentinel (``sentinel://``) and TLS
included, and needs no URL of its own on its command line. Importing this module does nothing;
the app is built on first access to ``app``, as ``celery -A`` does. It imports no worker code.
"""

from __future__ import annotations

from celery import Celery

_app: Celery | None = None


def __getattr__(name: str):
    global _app
    if name == "app":
        if _app is None:
            from segq.broker import make_celery
            from segq.settings import Settings

            _app = make_celery(Settings.from_env(), name="segq-flower")
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
