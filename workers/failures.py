"""How a task's errors become job states. Shared by every task.

- bad input (``InputError``, ``UsageError``: empty, corrupt, wrong type, too large, missing,
  unknown task or model): the job is marked ``failed`` with the reason at once, never retried;
- transient (S3 or Redis unreachable): retried with backoff, ``SEGQ_TASK_RETRIES`` times, then
  ``failed``;
- anything else (a bug, out of memory): ``failed`` with the exception; the worker goes on.

The task then raises ``JobFailure``, so Flower shows it as failed too.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import redis
from celery import Task
from celery.exceptions import Retry

from segq import keys
from segq.errors import InputError, ObjectNotFound, ServiceUnavailable, UsageError
from segq.protocol import PayloadError, valid_job_id
from workers.runtime import Runtime

log = logging.getLogger(__name__)


class JobFailure(Exception):
    """Raised after the job record was marked failed."""


def fail(rt: Runtime, job_id: str, message: str) -> JobFailure:
    rt.store.fail(job_id, message)
    rt.count("jobs_failed")
    log.warning("job %s failed: %s", job_id, message)
    return JobFailure(message)


def parse(rt: Runtime, payload: dict, parser: Callable[[dict], Any]):
    """Parse a payload; a malformed one fails its job (if it names a real one)."""
    try:
        return parser(payload)
    except PayloadError as exc:
        job_id = payload.get("job_id") if isinstance(payload.get("job_id"), str) else ""
        if job_id and valid_job_id(job_id) and rt.store.r.exists(keys.job(job_id)):
            raise fail(rt, job_id, f"invalid request: {exc}") from None
        raise JobFailure(f"invalid message (no job to update): {exc}") from None


def guarded(task: Task, rt: Runtime, job_id: str, input_uri: str, work: Callable[[], Any]) -> Any:
    """Run ``work``; map its errors to the job's state as the module docstring says."""
    rt.set_active(f"{task.name}[{task.request.id}] job {job_id}")
    try:
        result = work()
        rt.count("tasks_done")
        return result
    except ObjectNotFound:
        raise fail(rt, job_id, f"input not found: {input_uri}") from None
    except (InputError, UsageError) as exc:
        raise fail(rt, job_id, str(exc)) from None
    except (ServiceUnavailable, redis.ConnectionError) as exc:
        retries = task.request.retries
        if retries < rt.settings.task_retries:
            countdown = min(60, 2 ** (retries + 1))
            rt.store.update(job_id, error=f"retry {retries + 1}/{rt.settings.task_retries} in {countdown}s: {exc}")
            raise task.retry(exc=exc, countdown=countdown, max_retries=rt.settings.task_retries) from None
        raise fail(rt, job_id, f"gave up after {retries} retries: {exc}") from None
    except (Retry, JobFailure):
        raise
    except Exception as exc:  # never let one job take the worker down
        log.exception("job %s: unexpected error", job_id)
        raise fail(rt, job_id, f"internal error: {type(exc).__name__}: {exc}") from None
    finally:
        try:
            rt.set_active("")
        except redis.RedisError:
            pass
