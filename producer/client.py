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

from segq import defaults, keys, layout, manifest, messages, registry
from segq.batches import BatchRecord, BatchStore, shard_of
from segq.broker import make_celery
from segq.errors import InputError, JobNotFound, ServiceUnavailable, UsageError, WaitTimeout
from segq.jobs import JobRecord, JobStore
from segq.protocol import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_FRAMES,
    SPLIT_VIDEO,
    PayloadError,
    check_video_options,
    model_queue,
    parse_image_id,
    shard_task_id,
    valid_batch_name,
    valid_job_id,
)
from segq.connections import redis_client
from segq.scheduler import Scheduler, entry
from segq.settings import Settings
from segq.shards import ShardImage, ShardSpec, ShardState, ShardStore, message_template
from segq.states import RETRYABLE_STATES, JobKind, JobState, Priority
from segq.storage import Storage

from producer.display import redact, safe
from producer.inputs import check_explicit, iter_inputs
from producer.submit import Submission, SubmitReport

log = logging.getLogger(__name__)

ProgressFn = Callable[[list[JobRecord]], None]
BatchProgressFn = Callable[[list[BatchRecord]], None]


class ImageWatch:
    """Images waited on, followed through their shards: a poll reads the states of the shards
    that decide them (one HMGET per batch); an image whose shard ended is read from S3 once."""

    def __init__(self, shards: ShardStore):
        self.shards = shards
        self.where: dict[str, tuple[str, int, int]] = {}  # image id -> batch, first shard, position
        self.final: dict[str, JobRecord] = {}

    def add(self, job_id: str, batch: str, first: int, pos: int) -> None:
        self.where[job_id] = (batch, first, pos)

    def has(self, job_id: str) -> bool:
        return job_id in self.where

    def read(self) -> dict[str, JobRecord]:
        waiting = [i for i in self.where if i not in self.final]
        by_batch: dict[str, set[int]] = {}
        for job_id in waiting:
            batch, first, _ = self.where[job_id]
            by_batch.setdefault(batch, set()).add(first)
        states: dict[tuple[str, int], ShardState | None] = {}
        for batch, firsts in by_batch.items():
            firsts = sorted(firsts)
            states.update(zip([(batch, k) for k in firsts], self.shards.states(batch, firsts)))
        out = dict(self.final)
        ended: set[tuple[str, int]] = set()
        for job_id in waiting:
            batch, first, pos = self.where[job_id]
            state = states.get((batch, first))
            if state is None:
                continue
            k = state.deciding(first, pos)
            decider = state if k == first else self.shards.state(batch, k)
            if decider is not None and decider.ended:
                ended.add((batch, first))
            else:
                running = decider is not None and decider.s == "r"
                out[job_id] = JobRecord(id=job_id, kind=JobKind.IMAGE.value, task="", model="", input="",
                                        state=(JobState.RUNNING if running else JobState.QUEUED).value,
                                        batch=batch, shard=k)
        for batch, first in ended:
            for record in self.shards.records(batch, first):
                if record.id in self.where:
                    out[record.id] = record
                    if record.final:
                        self.final[record.id] = record
        return out


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
        self.shards = ShardStore(self.r, self.storage, self.settings.job_ttl_seconds)
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
        check_explicit(list(paths), follow_symlinks, self.settings.max_input_bytes, self.settings)
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
            manifest.write(self.batches, self.records, self.shards, self.storage, name)
        except (ServiceUnavailable, redis.RedisError) as exc:
            log.warning("batch %s finished; its manifest could not be written now (segq get writes it): %s",
                        name, exc)

    # -- read ----------------------------------------------------------------------------
    def ping(self) -> None:
        with self._redis():
            self.r.ping()

    def status(self, job_id: str) -> JobRecord:
        """A video job's record, or an image's (from its shard's state and results,
        ``segq.shards``)."""
        if not valid_job_id(job_id):
            raise JobNotFound(f"{safe(job_id)}: not a job id (16 hex digits)")
        with self._redis():
            if parse_image_id(job_id) is None:
                return self.records.get(job_id)
            record = self.shards.record(job_id)
        if record is None:
            raise JobNotFound(f"no job {job_id!r} (unknown id, or its batch expired)")
        return record

    def batch(self, name: str) -> BatchRecord:
        if not valid_batch_name(name):
            raise JobNotFound(f"{safe(name)}: not a batch name")
        with self._redis():
            return self.batches.get(name)

    def jobs(self, limit: int = 20) -> list[JobRecord]:
        """The most recent jobs, newest first: the latest items of the latest batches (a video
        job, or a shard's images)."""
        out: list[JobRecord] = []
        with self._redis():
            for batch in self.batches.recent(limit):
                meta = (batch.task, batch.model, batch.priority)
                items = self.r.lrange(keys.batch_jobs(batch.name), -limit, -1)
                for item in reversed(items):
                    shard = shard_of(item)
                    if shard is None:
                        record = self.records.get_many([item])[0]
                        found = [record] if record else []
                    else:
                        found = list(reversed(self.shards.records(batch.name, shard, meta)))
                    out += found[:limit - len(out)]
                    if len(out) >= limit:
                        return out
        return out

    def recent_batches(self, limit: int = 20) -> list[BatchRecord]:
        with self._redis():
            return self.batches.recent(limit)

    def batch_jobs(self, name: str) -> Iterator[JobRecord]:
        """Every job of a batch, in submission order: its video jobs' records and its images (a
        shard at a time, from S3), a page at a time."""
        batch = self.batch(name)
        meta = (batch.task, batch.model, batch.priority)
        with self._redis():
            for items in self.batches.items(name):
                videos = [i for i in items if shard_of(i) is None]
                records = dict(zip(videos, self.records.get_many(videos)))
                for item in items:
                    shard = shard_of(item)
                    if shard is None:
                        if records[item] is not None:
                            yield records[item]
                    else:
                        yield from self.shards.records(name, shard, meta)

    def urls(self, record: JobRecord) -> dict[str, str]:
        """Presigned, time-limited download URLs of a job's outputs."""
        return {
            layout.output_relpath(record.id, key): self.storage.presign(key, self.settings.presign_seconds)
            for key in record.outputs
        }

    def flower_links(self, record: JobRecord) -> dict[str, str]:
        """Flower pages of a job's Celery tasks (task ids are derived from the job id; an image's
        task is its shard's)."""
        if not self.settings.flower_url:
            return {}
        base = self.settings.flower_url
        if record.shard is not None:
            return {"flower task": f"{base}/task/{shard_task_id(record.batch, record.shard)}"}
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
    def _image(self, job_id: str) -> tuple[str, int, int, ShardState]:
        """An image's batch, first shard, position and that shard's state (JobNotFound)."""
        ref = parse_image_id(job_id)
        with self._redis():
            batch = self.shards.batch_of(ref.namespace) if ref else None
            state = self.shards.state(batch, ref.shard) if batch else None
        if state is None or state.of is not None or ref.position >= state.n:
            raise JobNotFound(f"no job {job_id!r} (unknown id, or its batch expired)")
        return batch, ref.shard, ref.position, state

    def cancel(self, refs: Iterable[str]) -> list[tuple[JobRecord | BatchRecord, str]]:
        """Cancel jobs, images or whole batches. A batch: its pending work is dropped at once (its
        queued images canceled), its running shards stop within a second (their unfinished images
        canceled), its videos are canceled; one ``(batch, outcome)``. A video job: queued tasks are
        skipped, a running video stops after its current batch of frames, no assembly runs, partial
        outputs are removed. An image: canceled if its shard has not begun it (a running shard
        skips it unless it is done first). Idempotent. Returns ``(record, outcome)`` per id:
        ``canceled``, ``canceling ...``, ``already canceled`` or ``already <state>``."""
        out: list = []
        for ref in refs:
            if kind_of_ref(ref) == "batch":
                out.append(self._cancel_batch(ref))
            elif parse_image_id(ref) is not None:
                out.append(self._cancel_image(ref))
            else:
                out.append(self._cancel_video(ref))
        return out

    def _cancel_batch(self, name: str) -> tuple[BatchRecord, str]:
        self.batch(name)
        with self._redis():
            _dropped, ended = self.shards.cancel_batch(name)
        videos = 0
        with self._redis():
            video_ids = [i for items in self.batches.items(name) for i in items if shard_of(i) is None]
        for job_id in video_ids:
            if self._cancel_video(job_id)[1] == "canceled":
                videos += 1
        batch = self.batch(name)
        parts = [f"{ended} queued shard(s) ended"] + [f"{videos} video(s) canceled"] * bool(videos)
        if batch.running:
            parts.append(f"{batch.running} running image(s) stop within a second")
        return batch, "canceled: " + ", ".join(parts)

    def _cancel_video(self, job_id: str) -> tuple[JobRecord, str]:
        record = self.status(job_id)
        with self._redis():
            moved = self.records.cancel(job_id)
        if moved:
            if record.state != JobState.QUEUED:  # a queued job wrote nothing yet
                self.storage.delete_job_files(job_id)
            outcome = "canceled"
        else:
            outcome = f"already {record.state}"
        return self.status(job_id), outcome

    def _cancel_image(self, job_id: str) -> tuple[JobRecord, str]:
        batch, first, pos, state = self._image(job_id)
        with self._redis():
            code = self.shards.cancel_image(batch, state.deciding(first, pos), pos)
        record = self.status(job_id)
        outcome = {1: "canceled", 3: "already canceled",
                   2: "canceling: its shard is running and skips it, unless the image is done first"}.get(
            code, f"already {record.state}")
        return record, outcome

    def retry(self, refs: Iterable[str]) -> list[tuple[JobRecord | BatchRecord, str]]:
        """Run failed or canceled work again: a batch's failed and canceled images (in new shards,
        one per shard that had any) and videos, one ``(batch, outcome)``; an image or a video job
        by id, ``(record, outcome)``: ``retry ...`` or ``not retried: <why>``."""
        out: list = []
        for ref in refs:
            if kind_of_ref(ref) == "batch":
                out.append(self._retry_batch(ref))
            elif parse_image_id(ref) is not None:
                batch, first, pos, _state = self._image(ref)
                outcome = self._retry_shard(batch, first, {pos})
                record = self.status(ref)
                out.append((record, f"retry in shard {outcome}" if isinstance(outcome, int)
                            else f"not retried: {outcome or 'it is ' + record.state}"))
            else:
                out.append(self._retry_video(ref))
        return out

    def _retry_shard(self, batch: str, first: int, only: set[int] | None = None) -> int | str | None:
        """A new shard running the failed and canceled images of first shard ``first`` (those at
        ``only``, when given): its number; else why not (None: nothing failed or canceled)."""
        with self._redis():
            state = self.shards.state(batch, first)
            if state is None:
                return "its batch expired"
            latest = self.shards.latest(batch, first, state)
        again = [line for line in latest if line.state in RETRYABLE_STATES and (only is None or line.pos in only)]
        if not again:
            return None
        if not state.ended or any(st is not None and not st.ended
                                  for st in self.shards.states(batch, [k for k, _ in state.r])):
            return "its shard, or a retry of it, is still running"
        with self._redis():
            new = self.shards.next_index(batch)
        task, model, priority = self.r.hmget(keys.batch(batch), "task", "model", "priority")
        images = [ShardImage(line.job, line.pos, line.source, line.input) for line in again]
        self.shards.write_spec(ShardSpec(batch, new, task, model, images, created_at=time.time(), of=first))
        failed = sum(line.state == JobState.FAILED for line in again)
        template = message_template(self.celery, task, model, priority)
        with self._redis():
            if not self.shards.add_retry(batch, first, new, [i.pos for i in images], failed, len(again) - failed,
                                         template):
                return "a retry of it was started meanwhile"
            self.scheduler.dispatch(model)
        for line in again:  # its outputs go: the retry writes them again
            self.storage.delete_job_files(line.job)
        return new

    def _retry_batch(self, name: str) -> tuple[BatchRecord, str]:
        batch = self.batch(name)
        images = shards = videos = 0
        with self._redis():
            numbers = list(range(batch.shards))
        for start in range(0, len(numbers), 1000):
            page = numbers[start:start + 1000]
            with self._redis():
                states = self.shards.states(name, page)
            for k, st in zip(page, states):
                if st is None or st.of is not None:
                    continue
                chain = [st] + self.shards.states(name, [r for r, _ in st.r]) if st.r else [st]
                if not any(c is not None and (c.f or c.c or not c.ended) for c in chain):
                    continue  # nothing failed or canceled, and nothing to wait for
                new = self._retry_shard(name, k)
                if isinstance(new, int):
                    shards += 1
                    images += self.shards.state(name, new).n
        with self._redis():
            video_ids = [i for items in self.batches.items(name) for i in items if shard_of(i) is None]
        for job_id in video_ids:
            if self.status(job_id).state in RETRYABLE_STATES and self._retry_video(job_id)[1].startswith("retry"):
                videos += 1
        if not (images or videos):
            return self.batch(name), "nothing to retry"
        parts = [f"{images} image(s) in {shards} new shard(s)"] * bool(images) + [f"{videos} video(s)"] * bool(videos)
        return self.batch(name), "retry: " + ", ".join(parts)

    def _retry_video(self, job_id: str) -> tuple[JobRecord, str]:
        record = self.status(job_id)
        if not record.batch:
            return record, "not retried: it has no batch (submitted by an older segq)"
        if record.state not in RETRYABLE_STATES:
            return record, f"not retried: it is {record.state}"
        n = record.run + 1
        payload = record.request()
        payload = type(payload)(**{**payload.to_message(), "run": n})
        message = messages.build(self.celery, SPLIT_VIDEO, payload.to_message(), payload.task_id,
                                 model_queue(record.model))
        with self._redis():
            done = self.records.reset_for_retry(job_id, n, entry(message))
        if done <= 0:
            return record, f"not retried: it is {self.status(job_id).state}"
        self.storage.delete_job_files(job_id)
        with self._redis():
            self.scheduler.dispatch(record.model)
        return self.status(job_id), f"retry {n}"

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
        """Block until every job is final. Raises WaitTimeout after ``timeout`` s. An image is
        followed through its shard's state (one read per shard a poll); its full record is read
        from S3 once its shard ended."""
        ids = list(job_ids)
        images = ImageWatch(self.shards)
        for job_id in ids:
            if parse_image_id(job_id) is not None:
                images.add(job_id, *self._image(job_id)[:3])
            else:
                self.status(job_id)  # JobNotFound early

        def read():
            return [r for r in self._read(ids, images) if r is not None]

        return self._poll(read, lambda rs: len(rs) == len(ids) and all(r.final for r in rs), timeout, poll,
                          on_progress, lambda rs: ", ".join(r.id for r in rs if not r.final))

    # -- get -----------------------------------------------------------------------------
    def _read(self, ids: list[str], images: "ImageWatch") -> list[JobRecord | None]:
        videos = [i for i in ids if not images.has(i)]
        found = dict(zip(videos, self.records.get_many(videos)))
        found.update(images.read())
        return [found.get(i) for i in ids]

    def records_of(self, job_ids: Iterable[str]) -> list[JobRecord | None]:
        """The records of many jobs at once (None for one that does not exist, or expired): video
        jobs' from Redis, images' from their shards (in full once their shard ended)."""
        ids = list(job_ids)
        images = ImageWatch(self.shards)
        with self._redis():
            for job_id in ids:
                if parse_image_id(job_id) is not None:
                    try:
                        images.add(job_id, *self._image(job_id)[:3])
                    except JobNotFound:
                        pass
            return self._read(ids, images)

    def wait_batch(self, names: Iterable[str], timeout: float | None = None,
                   on_progress: BatchProgressFn | None = None, poll: float = defaults.POLL_SECONDS
                   ) -> list[BatchRecord]:
        """Block until every batch is finished (reads one hash per batch per poll, whatever its
        size). Raises WaitTimeout after ``timeout`` s."""
        names = list(names)
        for name in names:
            self.batch(name)
        return self._poll(lambda: self.batches.get_many(names), lambda bs: all(b.final for b in bs),
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
            manifest.write(self.batches, self.records, self.shards, self.storage, name)
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
