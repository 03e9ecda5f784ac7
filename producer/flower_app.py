"""The Celery app Flower runs with: ``celery -A producer.flower_app flower``.

It is segq's broker configuration (``segq.broker``) from the settings of the moment, so Flower
reaches the broker exactly as every segq client does, Redis Sentinel (``sentinel://``) and TLS
included, and needs no URL of its own on its command line. Importing this module does nothing;
the app is built on first access to ``app``, as ``celery -A`` does. It imports no worker code.

Building it also closes the one page Flower leaves open under its own authentication: Flower
serves ``/metrics`` (worker names, task types and counts) to anyone even with basic auth or
OAuth configured (mher/flower#1342); segq's Flower asks for the same credentials there as on every
other page (:func:`guard_metrics`). ``/healthcheck`` ("OK") stays open for probes.
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

            guard_metrics()
            _app = make_celery(Settings.from_env(), name="segq-flower")
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def guard_metrics() -> bool:
    """Make Flower's ``/metrics`` handler ask for Flower's authentication, as its other pages do
    (``tornado.web.authenticated``, Flower's own check: a 401 with a basic-auth challenge). Returns
    whether Flower is installed; without it there is nothing to guard. Idempotent."""
    try:
        import tornado.web
        from flower.views import monitor
    except ImportError:
        return False
    try:
        get = monitor.Metrics.get
    except AttributeError:  # fail closed: no Flower with an open /metrics (and not a confusing "no app")
        raise RuntimeError("this Flower version has no flower.views.monitor.Metrics handler: segq cannot "
                           "guard its /metrics page; use a Flower version segq supports (2.x)") from None
    if not getattr(get, "_segq_guarded", False):
        guarded = tornado.web.authenticated(get)
        guarded._segq_guarded = True
        monitor.Metrics.get = guarded
    return True
