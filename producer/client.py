"""The producer's Python API. The ``segq`` CLI is a thin layer over this class.

>>> from producer import Client
>>> client = Client()                       # settings from the environment
>>> jobs = client.submit(["street.jpg"], task="panoptic")
>>> done = client.wait([j.id for j in jobs])
>>> client.download(done[0].id, "out/")
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import redis
from kombu.exceptions import OperationalError

from segq import defaults, layout, limits, registry
from segq.broker import make_celery
from segq.errors import ServiceUnavailable, UsageError, WaitTimeout
from segq.jobs import JobKind, JobRecord, JobState, JobStore, new_job_id
from segq.protocol import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_FRAMES,
    SEGMENT_IMAGE,
    SPLIT_VIDEO,
    ImageJob,
    VideoJob,
    model_queue,
)
from segq.settings import Settings
from segq.storage import Storage

from producer.display import redact
from producer.inputs import Input, expand

ProgressFn = Callable[[list[JobRecord]], None]


def _redis_down(settings: Settings, exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(f"cannot reach Redis at {redact(settings.redis_url)}: {exc}")


class Client:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        self.store = JobStore.from_url(self.settings.redis_url, self.settings.job_ttl_seconds)
        self.storage = Storage(self.settings)
        self.celery = make_celery(self.settings, name="segq-producer")

    # -- submit --------------------------------------------------------------------------
    def submit(
        self,
        paths: Sequence[str],
        task: str,
        model: str | None = None,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        batch_size: int = DEFAULT_BATCH_SIZE,
        annotate_fps: bool = False,
        on_upload: Callable[[Input, int], None] | None = None,
        follow_symlinks: bool = False,
    ) -> list[JobRecord]:
        """Queue one job per image or video in ``paths`` (files, directories, globs, s3:// URIs).

        Videos are split into chunks of ``chunk_frames`` frames that any worker may take, and run
        through the model ``batch_size`` frames at a time; ``annotate_fps`` writes the inference
        FPS on every frame, as the article's script does. Everything is checked before anything
        is queued: unknown task or model, missing files, inputs over the size limit.
        """
        model_name = self.settings.resolve_model(task, model)
        if chunk_frames < 1 or batch_size < 1:
            raise UsageError("--chunk-frames and --batch-size must be at least 1")
        video_options = {"chunk_frames": chunk_frames, "batch_size": batch_size, "annotate_fps": annotate_fps}
        inputs = expand(list(paths), self.settings, follow_symlinks=follow_symlinks)
        for item in inputs:
            if item.path is not None:
                limits.check_bytes(item.path.stat().st_size, self.settings.max_input_bytes, what=item.display)
        self.ping()
        return [self._submit_one(item, task, model_name, video_options, on_upload) for item in inputs]

    def _submit_one(self, item: Input, task: str, model: str, video_options: dict, on_upload) -> JobRecord:
        job_id = new_job_id()
        if item.s3 is not None:
            obj = item.s3
        else:
            key = layout.input_key(job_id, item.ext)
            callback = (lambda n: on_upload(item, n)) if on_upload else None
            obj = self.storage.put_file(item.path, key, progress=callback)
        record = JobRecord(
            id=job_id, kind=item.kind, task=task, model=model, input=obj.uri, source=item.display
        )
        common = dict(job_id=job_id, task=task, model=model, input_bucket=obj.bucket, input_key=obj.key)
        payload = VideoJob(**common, **video_options) if item.kind == JobKind.VIDEO else ImageJob(**common)
        record.payload = json.dumps(payload.to_message())
        if item.kind == JobKind.VIDEO:
            record.chunk_frames = video_options["chunk_frames"]
            record.batch_size = video_options["batch_size"]
        try:
            self.store.create(record)
        except redis.RedisError as exc:
            raise _redis_down(self.settings, exc) from exc
        self.send(payload)
        return record

    def send(self, payload: ImageJob | VideoJob, task_id: str | None = None) -> None:
        """Put a message on the model's queue. The Celery task id is the job id (Flower shows it;
        a retry's is ``<job>-r<N>``)."""
        try:
            self.celery.send_task(
                SPLIT_VIDEO if isinstance(payload, VideoJob) else SEGMENT_IMAGE,
                kwargs=payload.to_message(),
                queue=model_queue(payload.model),
                task_id=task_id or payload.job_id,
            )
        except (OperationalError, redis.RedisError) as exc:
            self.store.fail(payload.job_id, f"could not be queued: {exc}")
            raise _redis_down(self.settings, exc) from exc

    # -- read ----------------------------------------------------------------------------
    def ping(self) -> None:
        try:
            self.store.r.ping()
        except redis.RedisError as exc:
            raise _redis_down(self.settings, exc) from exc

    def status(self, job_id: str) -> JobRecord:
        try:
            return self.store.get(job_id)
        except redis.RedisError as exc:
            raise _redis_down(self.settings, exc) from exc

    def jobs(self, limit: int = 20) -> list[JobRecord]:
        try:
            return self.store.recent(limit)
        except redis.RedisError as exc:
            raise _redis_down(self.settings, exc) from exc

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
        return registry.serving(self.store.r, model)

    def worker_gone(self, record: JobRecord) -> bool:
        """A running job whose worker is no longer live (its work is requeued by the leases)."""
        if record.state != JobState.RUNNING or not record.worker:
            return False
        try:
            rec = registry.get(self.store.r, record.worker)
        except redis.RedisError:
            return False
        return rec is None or not rec.live

    # -- cancel / retry --------------------------------------------------------------------
    def cancel(self, job_ids: Iterable[str]) -> list[tuple[JobRecord, str]]:
        """Cancel jobs: queued tasks are skipped, a running video stops after its current batch,
        no assembly runs, partial outputs are removed. Idempotent. Returns ``(record, outcome)``
        per job: ``canceled`` now, ``already canceled``, or ``already <state>`` (done/failed:
        nothing to cancel)."""
        out = []
        for job_id in job_ids:
            record = self.status(job_id)
            try:
                moved = self.store.cancel(job_id)
            except redis.RedisError as exc:
                raise _redis_down(self.settings, exc) from exc
            if moved:
                self.storage.delete_job_files(job_id)
                outcome = "canceled"
            else:
                outcome = f"already {record.state}"
            out.append((self.status(job_id), outcome))
        return out

    def retry(self, job_ids: Iterable[str]) -> list[tuple[JobRecord, str]]:
        """Run failed or canceled jobs again from their stored input, with a new attempt number.
        Returns ``(record, outcome)``: ``retry N`` or ``not retried: <state>``."""
        out = []
        for job_id in job_ids:
            record = self.status(job_id)
            if not record.payload:
                out.append((record, "not retried: its request was not stored (submitted by an older segq)"))
                continue
            try:
                n = self.store.reset_for_retry(job_id)
            except redis.RedisError as exc:
                raise _redis_down(self.settings, exc) from exc
            if n <= 0:
                out.append((record, f"not retried: it is {record.state}"))
                continue
            self.storage.delete_job_files(job_id)
            parser = VideoJob.from_message if record.is_video else ImageJob.from_message
            self.send(parser(json.loads(record.payload)), task_id=f"{job_id}-r{n}")
            out.append((self.status(job_id), f"retry {n}"))
        return out

    # -- wait ----------------------------------------------------------------------------
    def wait(
        self,
        job_ids: Iterable[str],
        timeout: float | None = None,
        on_progress: ProgressFn | None = None,
        poll: float = defaults.POLL_SECONDS,
    ) -> list[JobRecord]:
        """Block until every job is done or failed. Raises WaitTimeout after ``timeout`` s."""
        ids = list(job_ids)
        for job_id in ids:
            self.status(job_id)  # JobNotFound early
        deadline = None if timeout is None else time.monotonic() + timeout
        down_since: float | None = None
        while True:
            try:
                records = [r for r in self.store.get_many(ids) if r is not None]
                down_since = None
            except redis.RedisError as exc:
                # Redis restarting or failing over: keep waiting (the client already retried for
                # about half a minute) up to the retry budget, then give up.
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > self.settings.retry_budget_seconds:
                    raise _redis_down(self.settings, exc) from exc
                time.sleep(min(5.0, poll * 4))
                continue
            if on_progress:
                on_progress(records)
            if len(records) == len(ids) and all(r.final for r in records):
                return records
            if deadline is not None and time.monotonic() > deadline:
                pending = [r.id for r in records if not r.final]
                raise WaitTimeout(f"timed out after {timeout:g}s; still pending: {', '.join(pending)}")
            time.sleep(poll)

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
