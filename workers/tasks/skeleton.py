"""The one task skeleton: every segq task is parse -> start (or skip) -> guarded work -> follow-up.

A task body is a plain function of a :class:`Context`; :func:`unit_task` wraps it into a Celery
task that

1. parses the JSON payload with the contract's parser (a malformed payload fails its job, if it
   names one, and never reaches the body);
2. starts its **unit** of work, or skips it when there is nothing to do, in one round trip with
   the start of its lease (``segq.leases``): a batch's shard (``segq.shards``: queued -> running,
   unless it ended), a video job's split (queued -> running unless final), or a video's follow-up
   task (chunk, assembly: skipped when its job has ended or expired);
3. runs the body under the failure policy below, which maps every error to the unit's state;
4. lets the body build its follow-up tasks' messages with ``ctx.entry`` (same queue,
   deterministic task ids, so Flower shows them under the job id), which the job record's own
   scripts queue in the same step as the move that calls for them (``segq.scheduler``).

Failure policy (a shard's body itself fails an image that is bad and goes on with the others):

- bad input (``InputError``, ``UsageError``: empty, corrupt, wrong type, too large, missing,
  unknown task or model): the job (a shard: its images not finished) is marked ``failed`` with
  the reason at once, never retried;
- transient (S3 unreachable, timeouts, 5xx, throttling): the task is sent again with a countdown
  (exponential backoff with jitter) while the unit is inside ``SEGQ_RETRY_BUDGET`` (from its first
  transient failure) and ``SEGQ_TASK_RETRIES``; then ``failed``. Nothing sleeps in the worker (a
  shard takes up where it stopped: ``segq.shards``);
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
from segq.errors import InputError, ObjectNotFound, ServiceUnavailable, UsageError
from segq.input_policy import require_input
from segq.protocol import PayloadError, ShardJob, VideoJob, model_queue, parse_task_id, valid_job_id
from segq.scheduler import entry
from segq.states import FINAL_STATES, JobState
from segq.storage import S3Object
from workers.host import runtime
from workers.host.runtime import Runtime

log = logging.getLogger(__name__)


class JobFailure(Exception):
    """Raised after the job record (a shard's images) was marked failed."""


@dataclass
class Context:
    """What a task body works with."""

    task: Task
    rt: Runtime
    job: Any  # VideoJob | ShardJob
    input: S3Object | None = None  # a video job's input
    attempt: int = 0  # a shard: this attempt's number
    canceled: frozenset = frozenset()  # a shard: positions canceled when it started
    transient_since: float | None = None  # a shard: its first transient failure
    final_state: str | None = None  # the unit's state as the body's last step left it (None: not known)

    def entry(self, name: str, payload: VideoJob, task_id: str) -> str:
        """A follow-up task of this job, as its batch's pending entry (``segq.scheduler.entry``):
        the message Celery would send to the model's queue."""
        message = messages.build(self.task.app, name, payload.to_message(), task_id, model_queue(payload.model))
        return entry(message)


class Canceled(Exception):
    """The job was canceled while this task ran: stop, and leave nothing behind."""


# -- units: what a task starts, fails, retries --------------------------------------------------

class JobUnit:
    """A video job's task: its job record is the state."""

    def __init__(self, rt: Runtime, job: VideoJob, starts_job: bool):
        self.rt, self.job, self.starts_job = rt, job, starts_job
        self.name = f"job {job.job_id}"

    def start(self, ctx: Context, pipe) -> str | None:
        """Why the task has nothing to do, or None when it must run."""
        rt, job_id = self.rt, self.job.job_id
        if self.starts_job:
            started = rt.records.start(job_id, rt.hostname, rt.spec.label, pipe=pipe)
            if started is None:
                log.warning("job %s has no record (expired or never created); skipping", job_id)
                return "no job record"
            if not started:
                log.info("job %s is already finished; redelivery ignored", job_id)
                return "already finished"
            return None
        pipe.hget(keys.job(job_id), "state")
        state = pipe.execute()[-1]
        return "job finished or gone" if state is None or state in FINAL_STATES else None

    def fail(self, message: str) -> None:
        if self.rt.records.fail(self.job.job_id, message):
            self.rt.count(registry.JOBS_FAILED)

    def transient_since(self, ctx: Context) -> float | None:
        since = self.rt.records.r.hget(keys.job(self.job.job_id), "transient_since")
        return float(since) if since else None

    def note_transient(self, since: float, note: str) -> None:
        self.rt.records.update(self.job.job_id, transient_since=since, note=note)

    def canceled(self, ctx: Context) -> bool:
        state = ctx.final_state if ctx.final_state is not None else self.rt.records.state(self.job.job_id)
        return state == JobState.CANCELED

    def clean_up_canceled(self) -> None:
        try:
            self.rt.storage.delete_job_files(self.job.job_id)
        except ServiceUnavailable as exc:
            log.warning("job %s canceled: could not remove its files: %s", self.job.job_id, exc)


class ShardUnit:
    """A batch's shard: its state in Redis, its results in S3 (``segq.shards``)."""

    def __init__(self, rt: Runtime, job: ShardJob):
        self.rt, self.job = rt, job
        self.name = f"shard {job.index} of batch {job.batch}"

    def start(self, ctx: Context, pipe) -> str | None:
        started = self.rt.shards.start(self.job.batch, self.job.index, self.rt.hostname, self.rt.spec.label, pipe=pipe)
        if started.finished:
            self.rt.batch_finished(self.job.batch)
        if not started.run:
            log.info("%s: nothing to do (%s)", self.name, "no such shard" if started.missing else "ended")
            return "no such shard" if started.missing else "ended"
        ctx.attempt, ctx.canceled, ctx.transient_since = started.attempt, started.canceled, started.transient_since
        return None

    def fail(self, message: str) -> None:
        self.rt.fail_shard(self.job.batch, self.job.index, message)

    def transient_since(self, ctx: Context) -> float | None:
        return ctx.transient_since

    def note_transient(self, since: float, note: str) -> None:
        self.rt.shards.note_transient(self.job.batch, self.job.index, since)

    def canceled(self, ctx: Context) -> bool:
        return False  # the shard's body ends it as canceled itself

    def clean_up_canceled(self) -> None:
        pass


# -- the policy ---------------------------------------------------------------------------------

def fail(unit, message: str) -> NoReturn:
    """Mark the unit failed with ``message`` and end the task with :class:`JobFailure`."""
    unit.fail(message)
    log.warning("%s failed: %s", unit.name, message)
    raise JobFailure(message) from None


def parse(task: Task, rt: Runtime, payload: dict, parser: Callable[[dict], Any]):
    """Parse a payload; a malformed one is dead-lettered with the reason (``segq.deadletters``)
    and fails its job (a shard: its images), if it names a real one."""
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
            rt.records.fail(job_id, f"invalid request: {exc}")
            rt.count(registry.JOBS_FAILED)
            log.warning("job %s failed: invalid request: %s", job_id, exc)
        ref = parse_task_id(task.request.id or "")
        if ref is not None and ref.is_shard:  # the task id names the shard, whatever the payload says
            rt.fail_shard(ref.batch, ref.shard, f"invalid request: {exc}")
        raise JobFailure(f"invalid message: {exc}") from None


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


def _retry_later(task: Task, ctx: Context, unit, exc: Exception):
    """A transient failure: send the task again with a countdown (exponential, with jitter), as
    long as the unit is inside its retry budget; else fail it."""
    rt = ctx.rt
    now = time.time()
    first = unit.transient_since(ctx) or now
    elapsed = now - first
    retries = task.request.retries
    budget = rt.settings.retry_budget_seconds
    if elapsed >= budget or retries >= rt.settings.task_retries:
        why = f"{elapsed:.0f}s of transient failures" if elapsed >= budget else f"{retries} retries"
        fail(unit, f"gave up after {why}: {exc}")
    countdown = min(compute_backoff(retries + 1, cap=60.0), max(1.0, budget - elapsed))
    unit.note_transient(first, f"retry {retries + 1} in {countdown:.0f}s: {exc}")
    log.warning("%s: transient failure, retry in %.0fs: %s", unit.name, countdown, exc)
    raise task.retry(exc=exc, countdown=countdown, max_retries=rt.settings.task_retries) from None


def guarded(task: Task, ctx: Context, unit, work: Callable[[], Any]) -> Any:
    """Run ``work`` (its task noted as running: ``_start``); map its errors to the unit's state as
    the module docstring says."""
    rt = ctx.rt
    try:
        for attempt in range(2):
            try:
                result = work()
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # Redis was away longer than the client rides out: nothing can be sent or recorded
                # until it is back, so wait for it here and run the (idempotent) work once more.
                log.warning("%s: Redis unreachable (%s); waiting for it", unit.name, exc)
                if attempt or not _wait_for_redis(rt, rt.settings.retry_budget_seconds):
                    raise
        if unit.canceled(ctx):
            raise Canceled(unit.name)
        rt.count(registry.TASKS_DONE)
        return result
    except Canceled:
        unit.clean_up_canceled()
        log.info("%s was canceled; %s stopped", unit.name, task.name)
        return {"unit": unit.name, "skipped": "canceled"}
    except ObjectNotFound as exc:
        fail(unit, f"input not found: {ctx.input.uri}" if ctx.input is not None else str(exc))
    except (InputError, UsageError) as exc:
        fail(unit, str(exc))
    except (ServiceUnavailable, redis.ConnectionError, redis.TimeoutError) as exc:
        if not _transient(exc):
            fail(unit, str(exc))
        _retry_later(task, ctx, unit, exc)
    except (Retry, JobFailure):
        raise
    except Exception as exc:  # never let one job take the worker down
        log.exception("%s: unexpected error", unit.name)
        fail(unit, f"internal error: {type(exc).__name__}: {exc}")
    finally:
        rt.set_active("")


def _start(rt: Runtime, task: Task, ctx: Context, unit) -> str | None:
    """Start the unit, its lease, and its place among the worker's running tasks, in one round
    trip (module docstring)."""
    rt.set_active(f"{task.name}[{task.request.id}] {unit.name}")
    pipe = rt.redis.pipeline(transaction=False)
    tag = rt.upkeep.tag_of(task.request.id) if rt.upkeep is not None else None
    if tag:
        rt.leases.started(tag, pipe)
    rt.registration.write_active(pipe)
    try:
        reason = unit.start(ctx, pipe)
    except BaseException:
        rt.set_active("")
        raise
    if reason:
        rt.set_active("")
    return reason


def unit_task(name: str, parser: Callable[[dict], Any], make_unit: Callable[[Runtime, Any], Any]):
    """Turn ``body(ctx) -> dict`` into the Celery task ``name`` (module docstring)."""

    def decorate(body: Callable[[Context], dict]):
        def run(self: Task, **payload) -> dict:
            rt = runtime.get()
            job = parse(self, rt, payload, parser)
            unit = make_unit(rt, job)
            ctx = Context(self, rt, job)
            if isinstance(job, VideoJob):
                ctx.input = S3Object(job.input_bucket, job.input_key)
            reason = _start(rt, self, ctx, unit)
            if reason:
                return {"unit": unit.name, "skipped": reason}
            if ctx.input is not None:
                # SEGQ_INPUT_PREFIXES, before anything is read: a forbidden key fails the job.
                return guarded(self, ctx, unit, lambda: require_input(rt.settings, ctx.input.bucket, ctx.input.key)
                               or body(ctx))
            return guarded(self, ctx, unit, lambda: body(ctx))

        run.__name__, run.__qualname__, run.__doc__ = body.__name__, body.__qualname__, body.__doc__
        run.__module__ = body.__module__
        return shared_task(name=name, bind=True)(run)

    return decorate


def job_task(name: str, parser: Callable[[dict], Any], *, starts_job: bool):
    """A video job's task (``unit_task`` over :class:`JobUnit`)."""
    return unit_task(name, parser, lambda rt, job: JobUnit(rt, job, starts_job))


def shard_task(name: str):
    """A batch's shard's task (``unit_task`` over :class:`ShardUnit`)."""
    return unit_task(name, ShardJob.from_message, ShardUnit)
