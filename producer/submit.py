"""Submitting a batch: inputs streamed in, uploaded in parallel, jobs created and queued in groups.

``segq submit`` of a folder of 100,000 images must neither hold them all in memory, nor upload
them one at a time, nor start over after a crash. So a submission:

1. opens its batch (``segq.batches``): new, or the same name again (a resubmission);
2. reads the inputs lazily (``producer.inputs.iter_inputs``), a window at a time, and asks the
   batch which of them it already holds (by identity): those are skipped, and said so;
3. uploads the local files of the rest with ``threads`` threads (one PUT each for files up to
   8 MiB), at most a few windows ahead;
4. creates the jobs, in input order, in groups of ``group``: their records, their place in the
   batch and their first tasks' messages, each group in one Lua script (``submit.lua``), and
   releases work to the workers after each group (``segq.scheduler``), so the fleet starts while
   the submission goes on;
5. seals the batch at the end: from then on it finishes when its last job ends.

A submission killed halfway leaves a batch that holds what was created; running the same
command again submits only the rest. An upload of an input that turns out to be held already
(the same file named twice) is deleted again.
"""

from __future__ import annotations

import collections
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

import redis

from segq import layout, limits, messages
from segq.batches import BatchStore, NewJob, check_name, new_batch_name
from segq.errors import InputError, SegqError, ServiceUnavailable
from segq.jobs import JobRecord, new_job_id
from segq.protocol import SEGMENT_IMAGE, SPLIT_VIDEO, ImageJob, VideoJob, model_queue
from segq.scheduler import Scheduler, entry, slots
from segq.states import JobKind, Priority
from segq.storage import S3Object

from producer.inputs import Input, Refused

log = logging.getLogger(__name__)

#: Upload threads, inputs looked up in the batch at once, jobs created per Lua call.
THREADS = 8
WINDOW = 256
GROUP = 64


@dataclass
class SubmitReport:
    """What a submission did."""

    batch: str
    created: bool  # a new batch (False: more jobs for an existing one)
    submitted: int = 0
    skipped: int = 0  # inputs the batch already held
    refused: list[Refused] = field(default_factory=list)
    seconds: float = 0.0
    finished: bool = False  # the batch was finished at the end (e.g. nothing new to do)

    def to_dict(self) -> dict:
        return {"batch": self.batch, "created": self.created, "submitted": self.submitted, "skipped": self.skipped,
                "refused": [{"input": r.display, "reason": r.reason} for r in self.refused],
                "seconds": round(self.seconds, 3)}


@dataclass
class _Item:
    input: Input
    job_id: str
    upload: Future | None = None


class Submission:
    """One batch's submission through ``client`` (module docstring)."""

    def __init__(self, client, *, task: str, model: str, batch: str | None = None,
                 priority: str = Priority.NORMAL.value, video_options: dict | None = None,
                 threads: int = THREADS, group: int = GROUP, window: int = WINDOW):
        self.client = client
        self.settings = client.settings
        self.task, self.model = task, model
        self.batch = check_name(batch) if batch else new_batch_name()
        self.priority = Priority(priority).value
        self.video_options = video_options or {}
        self.threads, self.group, self.window = max(1, threads), max(1, group), max(1, window)
        self.batches = BatchStore(client.records.r, self.settings.job_ttl_seconds)
        self.scheduler = Scheduler(client.records.r)
        self.queue = model_queue(model)

    # -- one job's record and message ------------------------------------------------------
    def _new_job(self, item: Input, job_id: str) -> NewJob:
        obj = item.s3 if item.s3 is not None else S3Object(self.settings.s3_bucket, layout.input_key(job_id, item.ext))
        common = dict(job_id=job_id, task=self.task, model=self.model, input_bucket=obj.bucket, input_key=obj.key,
                      batch=self.batch, priority=self.priority)
        record = JobRecord(id=job_id, kind=item.kind, task=self.task, model=self.model, input=obj.uri,
                           batch=self.batch, priority=self.priority, source=item.display, created_at=time.time())
        if item.kind == JobKind.VIDEO:
            payload = VideoJob(**common, **self.video_options)
            record.chunk_frames, record.batch_size = payload.chunk_frames, payload.batch_size
            record.annotate_fps = payload.annotate_fps
            name = SPLIT_VIDEO
        else:
            payload, name = ImageJob(**common), SEGMENT_IMAGE
        message = messages.build(self.client.celery, name, payload.to_message(), payload.task_id, self.queue)
        return NewJob(job_id, item.identity, record.to_hash(), entry(message))

    def _upload(self, item: Input, job_id: str) -> None:
        self.client.storage.put_file(item.path, layout.input_key(job_id, item.ext))

    # -- the whole submission ----------------------------------------------------------------
    def run(self, inputs: Iterable[Input], on_job: Callable[[JobRecord], None] | None = None,
            on_skip: Callable[[Input, str], None] | None = None,
            on_refused: Callable[[Refused], None] | None = None) -> SubmitReport:
        started = time.monotonic()
        try:
            created, _ = self.batches.open(self.batch, self.task, self.model, self.priority)
        except redis.RedisError as exc:
            raise self.client.redis_down(exc) from exc
        report = SubmitReport(self.batch, created)
        target = slots(self.client.records.r, self.model)
        pending: collections.deque[_Item] = collections.deque()
        group: list[tuple[_Item, NewJob]] = []

        def flush() -> None:
            if not group:
                return
            skipped = self.batches.submit(self.batch, [job for _, job in group])
            for position, (item, job) in enumerate(group):
                if position in skipped:
                    report.skipped += 1
                    if item.input.path is not None:  # uploaded for nothing: the batch held it already
                        self._delete_upload(item)
                    if on_skip:
                        on_skip(item.input, skipped[position])
                    continue
                report.submitted += 1
                if on_job:
                    on_job(JobRecord.from_hash(job.record))
            group.clear()
            self.scheduler.dispatch(self.model, target)

        def settle(keep: int | None) -> None:
            """Create the jobs whose uploads are done, in input order, from the left; with ``keep``,
            wait for uploads until at most ``keep`` items are outstanding (None: take only what
            is ready)."""
            while pending:
                head = pending[0]
                if not (head.upload is None or head.upload.done()) and (keep is None or len(pending) <= keep):
                    return
                pending.popleft()
                if head.upload is not None:
                    head.upload.result()  # an upload's error ends the submission here
                group.append((head, self._new_job(head.input, head.job_id)))
                if len(group) >= self.group:
                    flush()

        try:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="segq-upload") as pool:
                for window in _windows(inputs, self.window):
                    window = self._admit(window, report, on_refused)
                    holders = self.batches.holders(self.batch, [i.identity for i in window])
                    for item, holder in zip(window, holders):
                        if holder:
                            report.skipped += 1
                            if on_skip:
                                on_skip(item, holder)
                            continue
                        job_id = new_job_id()
                        upload = pool.submit(self._upload, item, job_id) if item.path is not None else None
                        pending.append(_Item(item, job_id, upload))
                        settle(keep=self.threads * 4)
                settle(keep=0)
                flush()
            report.finished = self.batches.seal(self.batch)
        except redis.RedisError as exc:
            raise self._interrupted(report, self.client.redis_down(exc)) from exc
        except SegqError as exc:
            raise self._interrupted(report, exc) from exc
        if report.finished:
            self.client.batch_finished(self.batch)
        self.scheduler.dispatch(self.model, target)
        report.seconds = time.monotonic() - started
        return report

    def _admit(self, window: list[Input], report: SubmitReport, on_refused) -> list[Input]:
        """The inputs of a window that may be submitted; the others are refused with the reason."""
        out = []
        for item in window:
            try:
                limits.check_bytes(item.size, self.settings.max_input_bytes, what=item.display)
            except InputError as exc:
                refused = Refused(item.display, str(exc))
                report.refused.append(refused)
                if on_refused:
                    on_refused(refused)
                continue
            out.append(item)
        return out

    def _delete_upload(self, item: _Item) -> None:
        try:
            self.client.storage.delete(layout.input_key(item.job_id, item.input.ext))
        except ServiceUnavailable as exc:
            log.warning("could not delete an unneeded upload: %s", exc)

    def _interrupted(self, report: SubmitReport, exc: SegqError) -> SegqError:
        if not report.submitted:
            return exc
        error = type(exc)(f"{exc}\nsubmission interrupted after {report.submitted} job(s) of batch {self.batch}: "
                          f"run the same command again (with --batch {self.batch}) to submit the rest")
        return error


def _windows(items: Iterable[Input], size: int):
    window: list[Input] = []
    for item in items:
        window.append(item)
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window

