"""The producer's Python API. The ``segq`` CLI is a thin layer over this class.

>>> from producer import Client
>>> client = Client()                       # settings from the environment
>>> jobs = client.submit(["street.jpg"], task="panoptic")
>>> done = client.wait([j.id for j in jobs])
>>> client.download(done[0].id, "out/")

Every submission is a batch (``jobs[0].batch``): ``client.submit(["photos/"], task="semantic",
batch="photos-v1")``, then ``client.batch("photos-v1")``, ``client.wait_batch("photos-v1")``,
``client.download_batch("photos-v1", "out/")``, ``client.cancel(["photos-v1"])``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import redis

from segq import defaults, layout, manifest, messages, registry
from segq.batches import BatchRecord, BatchStore
from segq.broker import make_celery
from segq.errors import InputError, JobNotFound, ServiceUnavailable, UsageError, WaitTimeout
from segq.jobs import JobRecord, JobStore
from segq.protocol import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_FRAMES,
    SEGMENT_IMAGE,
    SPLIT_VIDEO,
    PayloadError,
    check_video_options,
    model_queue,
    valid_batch_name,
    valid_job_id,
)
from segq.connections import redis_client
from segq.scheduler import Scheduler, entry
from segq.settings import Settings
from segq.states import RETRYABLE_STATES, JobState, Priority
from segq.storage import Storage

from producer.display import redact, safe
from producer.inputs import check_explicit, iter_inputs
from producer.submit import Submission, SubmitReport

log = logging.getLogger(__name__)

ProgressFn = Callable[[list[JobRecord]], None]
BatchProgressFn = Callable[[list[BatchRecord]], None]


def kind_of_ref(ref: str) -> str:
    """``job`` or ``batch``: what a command-line reference names (JobNotFound, exit 4, when it can
    be neither)."""
    if valid_job_id(ref):
        return "job"
    if valid_batch_name(ref):
        return "batch"
    raise JobNotFound(f"{safe(ref)}: not a job id (16 hex digits) or a batch name")


class Client:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        self.r = redis_client(self.settings.redis_url)
        self.storage = Storage(self.settings)
        self.records = JobStore(self.r, self.settings.job_ttl_seconds, on_batch_finished=self.batch_finished)
        self.batches = BatchStore(self.r, self.settings.job_ttl_seconds)
        self.scheduler = Scheduler(self.r)
        self.celery = make_celery(self.settings, name="segq-producer")

    # -- Redis errors, one way ---------------------------------------------------------------
    def redis_down(self, exc: Exception) -> ServiceUnavailable:
        return ServiceUnavailable(f"cannot reach Redis at {redact(self.settings.redis_url)}: {exc}")

    @contextlib.contextmanager
    def _redis(self):
        """Redis errors as ``ServiceUnavailable`` (exit 3) naming the (redacted) URL."""
        try:
            yield
        except redis.RedisError as exc:
            raise self.redis_down(exc) from exc

    # -- submit --------------------------------------------------------------------------
    def submit_batch(
        self,
        paths: Sequence[str],
        task: str,
        model: str | None = None,
        *,
        batch: str | None = None,
        priority: str = Priority.NORMAL.value,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        batch_size: int = DEFAULT_BATCH_SIZE,
        annotate_fps: bool = False,
        follow_symlinks: bool = False,
        threads: int | None = None,
        on_job: Callable[[JobRecord], None] | None = None,
        on_skip=None,
        on_refused=None,
    ) -> SubmitReport:
        """Queue one job per image or video in ``paths`` (files, directories, globs, ``s3://`` keys
        and ``s3://bucket/prefix/``) as batch ``batch`` (a new generated name if None; an existing
        batch gets only the inputs it does not hold yet). Inputs stream: ``on_job`` is called for
        each job as it is created, ``on_skip(input, holder)`` for each input the batch already
        held, ``on_refused(refused)`` for inputs found but not submitted (too large).

        Videos are split into chunks of ``chunk_frames`` frames that any worker may take, and run
        through the model ``batch_size`` frames at a time; ``annotate_fps`` writes the inference
        FPS on every frame, as the article's script does. The task, model and options, and every
        input named explicitly, are checked before anything is queued.
        """
        model_name = self.settings.resolve_model(task, model)
        try:
            check_video_options(chunk_frames, batch_size)
        except PayloadError as exc:
            raise UsageError(f"--chunk-frames / --batch-size: {exc}") from None
        if priority not in tuple(Priority):
            raise UsageError(f"unknown priority {safe(priority)!r}: choose one of {', '.join(Priority)}")
        check_explicit(list(paths), follow_symlinks, self.settings.max_input_bytes)
        self.ping()
        submission = Submission(self, task=task, model=model_name, batch=batch, priority=priority,
                                video_options={"chunk_frames": chunk_frames, "batch_size": batch_size,
                                               "annotate_fps": annotate_fps},
                                **({"threads": threads} if threads else {}))
        inputs = iter_inputs(list(paths), self.settings, self.storage, follow_symlinks=follow_symlinks)
        return submission.run(inputs, on_job=on_job, on_skip=on_skip, on_refused=on_refused)

    def submit(self, paths: Sequence[str], task: str, model: str | None = None, **options) -> list[JobRecord]:
        """``submit_batch``, returning the records of the jobs it created (their ``batch`` names the
        batch). Keeps them in memory: for very large submissions use ``submit_batch(on_job=...)``."""
        records: list[JobRecord] = []
        report = self.submit_batch(paths, task, model, on_job=records.append, **options)
        if report.refused:
            reasons = "; ".join(r.reason for r in report.refused[:5])
            raise InputError(f"{len(report.refused)} input(s) refused ({reasons}); "
                             f"{report.submitted} submitted in batch {report.batch}")
        return records

    def batch_finished(self, name: str) -> None:
        """A move of ours finished batch ``name``: write its manifest."""
        try:
            manifest.write(self.batches, self.records, self.storage, name)
        except (ServiceUnavailable, redis.RedisError) as exc:
            log.warning("batch %s finished; its manifest could not be written now (segq get writes it): %s",
                        name, exc)

    # -- read ----------------------------------------------------------------------------
    def ping(self) -> None:
        with self._redis():
            self.r.ping()

    def status(self, job_id: str) -> JobRecord:
        if not valid_job_id(job_id):
            raise JobNotFound(f"{safe(job_id)}: not a job id (16 hex digits)")
        with self._redis():
            return self.records.get(job_id)

    def batch(self, name: str) -> BatchRecord:
        if not valid_batch_name(name):
            raise JobNotFound(f"{safe(name)}: not a batch name")
        with self._redis():
            return self.batches.get(name)

    def jobs(self, limit: int = 20) -> list[JobRecord]:
        with self._redis():
            return self.records.recent(limit)

    def recent_batches(self, limit: int = 20) -> list[BatchRecord]:
        with self._redis():
            return self.batches.recent(limit)

    def batch_jobs(self, name: str) -> Iterator[JobRecord]:
        """Every job record of a batch, in submission order, a page at a time."""
        self.batch(name)
        with self._redis():
            for ids in self.batches.job_ids(name):
                yield from (r for r in self.records.get_many(ids) if r is not None)

    def urls(self, record: JobRecord) -> dict[str, str]:
        """Presigned, time-limited download URLs of a job's outputs."""
        return {
            layout.output_relpath(record.id, key): self.storage.presign(key, self.settings.presign_seconds)
            for key in record.outputs
        }

    def flower_links(self, record: JobRecord) -> dict[str, str]:
        """Flower pages of a job's Celery tasks (task ids are derived from the job id)."""
        if not self.settings.flower_url:
            return {}
        base = self.settings.flower_url
        links = {"flower task": f"{base}/task/{record.id}"}
        if record.is_video:
            links["flower chunks"] = f"{base}/tasks?search={record.id}"
        return links

    def serving(self, model: str) -> bool:
        """Whether a live worker serves ``model`` (jobs for it would not wait for one)."""
        with self._redis():
            return registry.serving(self.r, model)

    def worker_gone(self, record: JobRecord) -> bool:
        """A running job whose worker is no longer live (its work is requeued by the leases)."""
        if record.state != JobState.RUNNING or not record.worker:
            return False
        try:
            rec = registry.get(self.r, record.worker)
        except redis.RedisError:
            return False
        return rec is None or not rec.live

    # -- cancel / retry --------------------------------------------------------------------
    def _job_ids(self, refs: Iterable[str]) -> Iterator[str]:
        """Job ids of ``refs``: job ids as they are, batches expanded (a page at a time)."""
        for ref in refs:
            if kind_of_ref(ref) == "job":
                yield ref
            else:
                self.batch(ref)
                with self._redis():
                    for ids in self.batches.job_ids(ref):
                        yield from ids

    def cancel(self, refs: Iterable[str]) -> list[tuple[JobRecord, str]]:
        """Cancel jobs (ids, or every job of a named batch): queued tasks are skipped (a batch's
        unreleased ones dropped), a running video stops after its current batch, no assembly runs,
        partial outputs are removed. Idempotent. Returns ``(record, outcome)`` per job:
        ``canceled`` now, ``already canceled``, or ``already <state>`` (nothing to cancel)."""
        refs = list(refs)
        for ref in refs:
            if kind_of_ref(ref) == "batch":
                self.batch(ref)
                with self._redis():
                    self.batches.drop_pending(ref)
        out = []
        for job_id in self._job_ids(refs):
            record = self.status(job_id)
            with self._redis():
                moved = self.records.cancel(job_id)
            if moved:
                if record.state != JobState.QUEUED:  # a queued job wrote nothing yet
                    self.storage.delete_job_files(job_id)
                outcome = "canceled"
            else:
                outcome = f"already {record.state}"
            out.append((self.status(job_id), outcome))
        return out

    def retry(self, refs: Iterable[str]) -> list[tuple[JobRecord, str]]:
        """Run failed or canceled jobs (ids, or those of a named batch) again from their stored
        input, with a new attempt number. Returns ``(record, outcome)``: ``retry N`` or
        ``not retried: <why>``."""
        out = []
        for job_id in self._job_ids(refs):
            record = self.status(job_id)
            if not record.batch:
                out.append((record, "not retried: it has no batch (submitted by an older segq)"))
                continue
            if record.state not in RETRYABLE_STATES:
                out.append((record, f"not retried: it is {record.state}"))
                continue
            n = record.run + 1
            payload = record.request()
            payload = type(payload)(**{**payload.to_message(), "run": n})
            name = SPLIT_VIDEO if record.is_video else SEGMENT_IMAGE
            message = messages.build(self.celery, name, payload.to_message(), payload.task_id,
                                     model_queue(record.model))
            with self._redis():
                done = self.records.reset_for_retry(job_id, n, entry(message))
            if done <= 0:
                out.append((record, f"not retried: it is {self.status(job_id).state}"))
                continue
            self.storage.delete_job_files(job_id)
            with self._redis():
                self.scheduler.dispatch(record.model)
            out.append((self.status(job_id), f"retry {n}"))
        return out

    # -- wait ----------------------------------------------------------------------------
    def _poll(self, read, done, timeout: float | None, poll: float, on_progress, pending_of):
        deadline = None if timeout is None else time.monotonic() + timeout
        down_since: float | None = None
        while True:
            try:
                records = read()
                down_since = None
            except redis.RedisError as exc:
                # Redis restarting or failing over: keep waiting (the client already retried for
                # about half a minute) up to the retry budget, then give up.
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > self.settings.retry_budget_seconds:
                    raise self.redis_down(exc) from exc
                time.sleep(min(5.0, poll * 4))
                continue
            if on_progress:
                on_progress(records)
            if done(records):
                return records
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"timed out after {timeout:g}s; still pending: {pending_of(records)}")
            time.sleep(poll)

    def wait(self, job_ids: Iterable[str], timeout: float | None = None, on_progress: ProgressFn | None = None,
             poll: float = defaults.POLL_SECONDS) -> list[JobRecord]:
        """Block until every job is final. Raises WaitTimeout after ``timeout`` s."""
        ids = list(job_ids)
        for job_id in ids:
            self.status(job_id)  # JobNotFound early

        def read():
            return [r for r in self.records.get_many(ids) if r is not None]

        return self._poll(read, lambda rs: len(rs) == len(ids) and all(r.final for r in rs), timeout, poll,
                          on_progress, lambda rs: ", ".join(r.id for r in rs if not r.final))

    def wait_batch(self, names: Iterable[str], timeout: float | None = None,
                   on_progress: BatchProgressFn | None = None, poll: float = defaults.POLL_SECONDS
                   ) -> list[BatchRecord]:
        """Block until every batch is finished (reads one hash per batch per poll, whatever its
        size). Raises WaitTimeout after ``timeout`` s."""
        names = list(names)
        for name in names:
            self.batch(name)
        return self._poll(lambda: [self.batches.get(n) for n in names], lambda bs: all(b.final for b in bs),
                          timeout, poll, on_progress, lambda bs: ", ".join(b.name for b in bs if not b.final))

    # -- get -----------------------------------------------------------------------------
    def download(self, job_id: str, out_dir: str | Path) -> list[Path]:
        """Download a finished job's outputs into ``out_dir/<job id>/``."""
        record = self.status(job_id)
        if record.state == JobState.FAILED:
            raise UsageError(f"job {job_id} failed, it has no outputs: {record.error}")
        if not record.final:
            raise UsageError(f"job {job_id} is {record.state}; wait for it first (segq wait {job_id})")
        target = Path(out_dir) / job_id
        return [self.storage.download(key, target / layout.output_relpath(job_id, key)) for key in record.outputs]

    def download_batch(self, name: str, out_dir: str | Path, threads: int = 8,
                       on_progress: Callable[[int, int, int], None] | None = None) -> tuple[Path, int, int]:
        """Download every output of a finished batch's done jobs, and its manifest, into
        ``out_dir/<batch>/`` (``<job id>/...`` per job, ``manifest.jsonl``), ``threads`` files at a
        time. Files already there are kept (downloads land under a temporary name first, so a
        file that exists is whole): running it again fetches only what is missing. Returns the
        folder, files downloaded and files already there; ``on_progress(done, known, skipped)``."""
        batch = self.batch(name)
        if not batch.final:
            raise UsageError(f"batch {name} is {batch.state} ({batch.ended}/{batch.jobs} jobs ended); "
                             f"wait for it first (segq wait {name})")
        root = Path(out_dir) / name
        key = layout.manifest_key(name)
        if batch.manifest_at is None:  # whoever finished the batch could not write it
            manifest.write(self.batches, self.records, self.storage, name)
        self.storage.download(key, root / layout.MANIFEST)
        lock = threading.Lock()
        counts = {"done": 0, "known": 0, "skipped": 0}

        def fetch(job_id: str, output: str) -> None:
            dest = root / job_id / layout.output_relpath(job_id, output)
            if dest.exists():
                with lock:
                    counts["skipped"] += 1
            else:
                self.storage.download(output, dest)
            with lock:
                counts["done"] += 1
                if on_progress:
                    on_progress(counts["done"], counts["known"], counts["skipped"])

        with ThreadPoolExecutor(threads, thread_name_prefix="segq-download") as pool:
            futures = []
            for record in self.batch_jobs(name):
                for output in record.outputs:
                    with lock:
                        counts["known"] += 1
                    futures.append(pool.submit(fetch, record.id, output))
                if len(futures) > threads * 64:  # bounded: settle the oldest before reading more
                    for f in futures:
                        f.result()
                    futures.clear()
            for f in futures:
                f.result()
        return root, counts["done"] - counts["skipped"], counts["skipped"]
