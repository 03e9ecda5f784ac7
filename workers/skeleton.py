"""The one task skeleton: every segq task is parse -> skip when final -> guarded work -> follow-up.

A task body is a plain function of a :class:`Context`; :func:`job_task` wraps it into a Celery
task that

1. parses the JSON payload with the contract's parser (a malformed payload fails its job, if it
   names one, and never reaches the body);
2. skips the work when there is nothing to do: the first task of a job moves it to ``running``
   atomically unless it is already final (a redelivery); a follow-up task (chunk, assembly) skips
   when its job has ended or expired;
3. runs the body under the failure policy below, which maps every error to the job's state;
4. lets the body send follow-up tasks with ``ctx.send`` (same queue, deterministic task ids, so
   Flower shows them under the job id).

Failure policy:

- bad input (``InputError``, ``UsageError``: empty, corrupt, wrong type, too large, missing,
  unknown task or model): the job is marked ``failed`` with the reason at once, never retried;
- transient (S3 or Redis unreachable): retried with backoff, ``SEGQ_TASK_RETRIES`` times, then
  ``failed``;
- anything else (a bug, out of memory): ``failed`` with the exception; the worker goes on.

The task then raises ``JobFailure``, so Flower shows it as failed too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import redis
from celery import Task, shared_task
from celery.exceptions import Retry

from segq import registry
from segq.errors import InputError, ObjectNotFound, ServiceUnavailable, UsageError
from segq.protocol import ImageJob, PayloadError, VideoJob, model_queue, valid_job_id
from segq.storage import S3Object
from workers import runtime
from workers.runtime import Runtime

log = logging.getLogger(__name__)


class JobFailure(Exception):
    """Raised after the job record was marked failed."""


@dataclass
class Context:
    """What a task body works with."""

    task: Task
    rt: Runtime
    job: Any  # ImageJob | VideoJob
    input: S3Object

    def send(self, name: str, payload: ImageJob | VideoJob, task_id: str) -> None:
        """Queue a follow-up task of this job on its model's queue."""
        self.task.app.send_task(name, kwargs=payload.to_message(), queue=model_queue(payload.model), task_id=task_id)


def fail(rt: Runtime, job_id: str, message: str) -> JobFailure:
    rt.store.fail(job_id, message)
    rt.count(registry.JOBS_FAILED)
    log.warning("job %s failed: %s", job_id, message)
    return JobFailure(message)


def parse(rt: Runtime, payload: dict, parser: Callable[[dict], Any]):
    """Parse a payload; a malformed one fails its job (if it names a real one)."""
    try:
        return parser(payload)
    except PayloadError as exc:
        job_id = payload.get("job_id") if isinstance(payload.get("job_id"), str) else ""
        if job_id and valid_job_id(job_id) and rt.store.exists(job_id):
            raise fail(rt, job_id, f"invalid request: {exc}") from None
        raise JobFailure(f"invalid message (no job to update): {exc}") from None


def skip_reason(rt: Runtime, job_id: str, starts_job: bool) -> str | None:
    """Why a task has nothing to do, or None when it must run."""
    if starts_job:
        started = rt.store.start(job_id, rt.hostname, rt.spec.label)
        if started is None:
            log.warning("job %s has no record (expired or never created); skipping", job_id)
            return "no job record"
        if not started:
            log.info("job %s is already finished; redelivery ignored", job_id)
            return "already finished"
        return None
    return "job finished or gone" if rt.store.final_or_gone(job_id) else None


def guarded(task: Task, rt: Runtime, job_id: str, input_uri: str, work: Callable[[], Any]) -> Any:
    """Run ``work``; map its errors to the job's state as the module docstring says."""
    rt.set_active(f"{task.name}[{task.request.id}] job {job_id}")
    try:
        result = work()
        rt.count(registry.TASKS_DONE)
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


def job_task(name: str, parser: Callable[[dict], Any], *, starts_job: bool):
    """Turn ``body(ctx) -> dict`` into the Celery task ``name`` (module docstring)."""

    def decorate(body: Callable[[Context], dict]):
        def run(self: Task, **payload) -> dict:
            rt = runtime.get()
            job = parse(rt, payload, parser)
            reason = skip_reason(rt, job.job_id, starts_job)
            if reason:
                return {"job_id": job.job_id, "skipped": reason}
            ctx = Context(self, rt, job, S3Object(job.input_bucket, job.input_key))
            return guarded(self, rt, job.job_id, ctx.input.uri, lambda: body(ctx))

        run.__name__, run.__qualname__, run.__doc__ = body.__name__, body.__qualname__, body.__doc__
        run.__module__ = body.__module__
        return shared_task(name=name, bind=True)(run)

    return decorate
