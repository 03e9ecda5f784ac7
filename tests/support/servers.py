"""Real worker processes for the end-to-end tests (the session's servers are in tests/e2e/conftest.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from producer.stack import WorkerService


#: torch CPU threads of every test worker. The reference runs its forward passes with as many,
#: since another thread count sums in another order (logits differ by ~1e-6 relative).
WORKER_THREADS = 1


def start_worker(session_dir: Path, env: dict[str, str], name: str, models: str | None = None,
                 host: str | None = None) -> tuple[WorkerService, str]:
    """A real `segq worker --gpus cpu` process; ``host`` names the host it stands for.
    Returns the service and the Celery node name of its one worker process."""
    service = WorkerService(name, session_dir / "logs" / f"{name}.log")
    node = f"{name}@{host}" if host else name
    service.start({**os.environ, **env, "PYTHONUNBUFFERED": "1"}, gpus="cpu", models=models,
                  worker_name=node, threads=WORKER_THREADS)
    return service, f"{name}-cpu@{host or socket.gethostname()}"


def wait_for_worker(redis_url: str, hostname: str, service: WorkerService, timeout: float = 180.0):
    """Block until the worker is ready (models loaded, heartbeat fresh); its registry record."""
    [record] = service.wait_ready(redis_url, hostnames=[hostname], timeout=timeout)
    return record
