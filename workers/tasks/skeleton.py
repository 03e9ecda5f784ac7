"""The one task skeleton: every segq task is parse -> skip when final -> guarded work -> follow-up.

A task body is a plain function of a :class:`Context`; :func:`job_task` wraps it into a Celery
task that

1. parses the JSON payload with the contract's parser (a malformed payload fails its job, if it
   names one, and never reaches the body);
2. skips the work when there is nothing to do: the first task of a job moves it to ``running``
   atomically unless it is already final (a redelivery); a follow-up task (chunk, assembly) skips
   when its job has ended or expired;
3. runs the body under the failure policy below, which maps every error to the job's state;
4. lets the body build its follow-up tasks' messages with ``ctx.entry`` (same queue,
   deterministic task ids, so Flower shows them under the job id), which the job record's own
   scripts queue in the same step as the move that calls for them (``segq.scheduler``).

Failure policy:

- bad input (``InputError``, ``UsageError``: empty, corrupt, wrong type, too large, missing,
  unknown task or model): the job is marked ``failed`` with the reason at once, never retried;
- transient (S3 unreachable, timeouts, 5xx, throttling): the task is sent again with a countdown
  (exponential backoff with jitter) while the job is inside ``SEGQ_RETRY_BUDGET`` (from its first
  transient failure) and ``SEGQ_TASK_RETRIES``; then ``failed``. Nothing sleeps in the worker;
- deterministic storage answers (no such bucket, access denied, invalid request): ``failed`` at
  once;
- Redis away: the Redis client rides out short outages; a longer one is waited out here (Redis
  is where the task would be retried or failed), then the idempotent work runs once more;
- the job was canceled meanwhile: its partial outputs are removed and the task ends quietly;
- anything else (a bug, out of memory): ``failed`` with the exception; the worker goes on.

The task then raises ``JobFailure``, so Flower shows it as failed too.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

import redis
from celery import Task, shared_task
from celery.exceptions import Retry

from segq import deadletters, keys, messages, registry
from segq.backoff import compute_backoff
from segq.input_policy import require_input
from segq.errors import InputError, ObjectNotFound, ServiceUnavailable, UsageError
from segq.protocol import ImageJob, PayloadError, VideoJob, model_queue, valid_job_id
from segq.scheduler import entry
from segq.states import JobState
from segq.storage import S3Object
from workers.host import runtime
from workers.host.runtime import Runtime

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

    def entry(self, name: str, payload: ImageJob | VideoJob, task_id: str) -> str:
        """A follow-up task of this job, as its batch's pending entry (``segq.scheduler.entry``):
        the message Celery would send to the model's queue."""
        message = messages.build(self.task.app, name, payload.to_message(), task_id, model_queue(payload.model))
        return entry(message)


def fail(rt: Runtime, job_id: str, message: str) -> NoReturn:
    """Mark the job failed with ``message`` and end the task with :class:`JobFailure`."""
    rt.records.fail(job_id, message)
    rt.count(registry.JOBS_FAILED)
    log.warning("job %s failed: %s", job_id, message)
    raise JobFailure(message) from None


def parse(task: Task, rt: Runtime, payload: dict, parser: Callable[[dict], Any]):
    """Parse a payload; a malformed one is dead-lettered with the reason (``segq.deadletters``)
    and fails its job, if it names a real one."""
    try:
        return parser(payload)
    except PayloadError as exc:
        queue = (task.request.delivery_info or {}).get("routing_key", "") if task.request else ""
        try:
            raw = json.dumps(payload, default=str)
        except (TypeError, ValueError):
            raw = repr(payload)
        deadletters.add(rt.redis, queue, raw, f"payload does not parse: {exc}", task_id=task.request.id or "")
        job_id = payload.get("job_id") if isinstance(payload.get("job_id"), str) else ""
        if job_id and valid_job_id(job_id) and rt.records.exists(job_id):
            fail(rt, job_id, f"invalid request: {exc}")
        raise JobFailure(f"invalid message (no job to update): {exc}") from None


def skip_reason(rt: Runtime, job_id: str, starts_job: bool) -> str | None:
    """Why a task has nothing to do, or None when it must run."""
    if starts_job:
        started = rt.records.start(job_id, rt.hostname, rt.spec.label)
        if started is None:
            log.warning("job %s has no record (expired or never created); skipping", job_id)
            return "no job record"
        if not started:
            log.info("job %s is already finished; redelivery ignored", job_id)
            return "already finished"
        return None
    return "job finished or gone" if rt.records.final_or_gone(job_id) else None


class Canceled(Exception):
    """The job was canceled while this task ran: stop, and leave nothing behind."""


def check_canceled(rt: Runtime, job_id: str) -> None:
    """Raise ``Canceled`` when the job was canceled (cheap: one HGET). Long tasks call it between
    batches, so a canceled video stops after its current batch."""
    if rt.records.state(job_id) == JobState.CANCELED:
        raise Canceled(job_id)


def _transient(exc: Exception) -> bool:
    if isinstance(exc, ServiceUnavailable):
        return exc.transient
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError))


def _wait_for_redis(rt: Runtime, budget: float) -> bool:
    """Wait (with backoff) until Redis answers again; False when the budget ran out."""
    deadline = time.monotonic() + budget
    attempt = 0
    while time.monotonic() < deadline:
        try:
            rt.records.r.ping()
            return True
        except redis.RedisError:
            time.sleep(min(compute_backoff(attempt, base=0.5, cap=10.0), max(0.0, deadline - time.monotonic())))
            attempt += 1
    return False


def _retry_later(task: Task, rt: Runtime, job_id: str, exc: Exception):
    """A transient failure: send the task again with a countdown (exponential, with jitter), as
    long as the job is inside its retry budget; else fail the job."""
    now = time.time()
    since = rt.records.r.hget(keys.job(job_id), "transient_since")
    first = float(since) if since else now
    elapsed = now - first
    retries = task.request.retries
    budget = rt.settings.retry_budget_seconds
    if elapsed >= budget or retries >= rt.settings.task_retries:
        why = f"{elapsed:.0f}s of transient failures" if elapsed >= budget else f"{retries} retries"
        fail(rt, job_id, f"gave up after {why}: {exc}")
    countdown = min(compute_backoff(retries + 1, cap=60.0), max(1.0, budget - elapsed))
    rt.records.update(job_id, transient_since=first,
                    note=f"retry {retries + 1} in {countdown:.0f}s: {exc}")
    log.warning("job %s: transient failure, retry in %.0fs: %s", job_id, countdown, exc)
    raise task.retry(exc=exc, countdown=countdown, max_retries=rt.settings.task_retries) from None


def _clean_up_canceled(rt: Runtime, job_id: str) -> None:
    try:
        rt.storage.delete_job_files(job_id)
    except ServiceUnavailable as exc:
        log.warning("job %s canceled: could not remove its files: %s", job_id, exc)


def guarded(task: Task, rt: Runtime, job_id: str, input_uri: str, work: Callable[[], Any]) -> Any:
    """Run ``work``; map its errors to the job's state as the module docstring says."""
    rt.set_active(f"{task.name}[{task.request.id}] job {job_id}")
    try:
        for attempt in range(2):
            try:
                result = work()
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # Redis was away longer than the client rides out: nothing can be sent or recorded
                # until it is back, so wait for it here and run the (idempotent) work once more.
                log.warning("job %s: Redis unreachable (%s); waiting for it", job_id, exc)
                if attempt or not _wait_for_redis(rt, rt.settings.retry_budget_seconds):
                    raise
        if rt.records.state(job_id) == JobState.CANCELED:
            raise Canceled(job_id)
        rt.count(registry.TASKS_DONE)
        return result
    except Canceled:
        _clean_up_canceled(rt, job_id)
        log.info("job %s was canceled; %s stopped", job_id, task.name)
        return {"job_id": job_id, "skipped": "canceled"}
    except ObjectNotFound:
        fail(rt, job_id, f"input not found: {input_uri}")
    except (InputError, UsageError) as exc:
        fail(rt, job_id, str(exc))
    except (ServiceUnavailable, redis.ConnectionError, redis.TimeoutError) as exc:
        if not _transient(exc):
            fail(rt, job_id, str(exc))
        _retry_later(task, rt, job_id, exc)
    except (Retry, JobFailure):
        raise
    except Exception as exc:  # never let one job take the worker down
        log.exception("job %s: unexpected error", job_id)
        fail(rt, job_id, f"internal error: {type(exc).__name__}: {exc}")
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
            job = parse(self, rt, payload, parser)
            reason = skip_reason(rt, job.job_id, starts_job)
            if reason:
                return {"job_id": job.job_id, "skipped": reason}
            ctx = Context(self, rt, job, S3Object(job.input_bucket, job.input_key))
            # SEGQ_INPUT_PREFIXES, before anything is read: a forbidden key fails the job (InputError).
            return guarded(self, rt, job.job_id, ctx.input.uri,
                           lambda: require_input(rt.settings, job.input_bucket, job.input_key) or body(ctx))

        run.__name__, run.__qualname__, run.__doc__ = body.__name__, body.__qualname__, body.__doc__
        run.__module__ = body.__module__
        return shared_task(name=name, bind=True)(run)

    return decorate
