"""Submitting a batch: inputs streamed in, uploaded in parallel, images added in shards.

``segq submit`` of a folder of 100,000 images must neither hold them all in memory, nor upload
them one at a time, nor start over after a crash, nor cost Redis a record per image. So a
submission:

1. opens its batch (``segq.batches``): new, or the same name again (a resubmission), and takes
   its submission lock (one submission adds to a batch at a time) and the number of its first
   shard, in one step; a resubmission reads the identities of the images the batch holds from
   its shards' lists (``producer.identities``);
2. reads the inputs lazily (``producer.inputs.iter_inputs``), a window at a time, and skips
   those the batch already holds (by identity: images from that index, videos from the batch's
   hash of video inputs), and says so;
3. gives each new image its place: the next position of the shard being filled (its id follows:
   ``segq.protocol.image_id``), and uploads the local files with ``threads`` threads (one PUT
   each for files up to 8 MiB), at most a few windows ahead;
4. adds each shard once its images are uploaded: its list to S3, then its state, counters, turn
   and the release of the model's work in one Lua call (``segq.shards``); videos are created as
   jobs, ``group`` per Lua call (``submit.lua``); work is released to the workers as it is added,
   so the fleet starts while the submission goes on;
5. seals the batch at the end, giving its lock back: from then on it finishes when its last
   image or video ends.

**Shard sizes.** A shard is a few seconds of work: ``SEGQ_SHARD_SECONDS`` (4) at the fleet's
measured speed for the model (its images' mean seconds of work per image, from the stage
histograms the workers keep), at most ``SEGQ_SHARD_MAX_IMAGES`` (256); before anything was
measured, 40 images. A batch's turn on the fleet is one shard, so an image submitted behind a
dataset waits for about one shard per worker slot, not for the dataset. A submission's first
shards are smaller, 1, 2, 4, ... images doubling up to that size, so that a small batch still
spreads over several workers and its first results come back at once; a shard that has waited
``OPEN_SECONDS`` for more inputs (a slow listing) is added as it is.

A submission killed halfway leaves a batch that holds what was added; running the same command
again submits only the rest (a shard number taken and never added leaves a gap, nothing else).
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

import redis

from segq import layout, limits, messages
from segq.batches import BatchStore, NewJob, check_name, new_batch_name
from segq.errors import InputError, SegqError, ServiceUnavailable
from segq.jobs import JobRecord
from segq.protocol import MAX_SHARD_IMAGES, SPLIT_VIDEO, VideoJob, image_id, model_queue, new_job_id
from segq.scheduler import Scheduler, entry
from segq.shards import ShardImage, ShardSpec, ShardStore, message_template
from segq.states import JobKind, JobState, Priority
from segq.storage import S3Object

from producer.identities import IdentityIndex, load as load_identities
from producer.inputs import Input, Refused

log = logging.getLogger(__name__)

#: Upload threads, inputs looked up in the batch at once, video jobs created per Lua call.
THREADS = 8
WINDOW = 256
GROUP = 64
#: Seconds of work per image assumed before the fleet has measured any (a shard: 40 images).
DEFAULT_IMAGE_SECONDS = 0.1
#: A shard that has waited this long for more inputs is added as it is.
OPEN_SECONDS = 2.0
#: Seconds between renewals of the submission's lock on its batch.
RENEW_SECONDS = 10.0


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
    shards: int = 0  # shards added
    serving: bool = True  # a live worker served the model when the submission began

    def to_dict(self) -> dict:
        return {"batch": self.batch, "created": self.created, "submitted": self.submitted, "skipped": self.skipped,
                "refused": [{"input": r.display, "reason": r.reason} for r in self.refused],
                "shards": self.shards, "seconds": round(self.seconds, 3)}


def shard_size(per_image: float | None, seconds: float, most: int) -> int:
    """Images per shard: ``seconds`` of work at ``per_image`` seconds each, from 1 to ``most``."""
    return max(1, min(most, MAX_SHARD_IMAGES, round(seconds / (per_image or DEFAULT_IMAGE_SECONDS))))


class Sizes:
    """A submission's shard sizes: 1, 2, 4, ... doubling up to ``target``, then ``target``."""

    def __init__(self, target: int):
        self.target, self.size = target, 1

    def next(self) -> int:
        size, self.size = min(self.size, self.target), min(self.size * 2, self.target)
        return size


@dataclass
class _Item:
    input: Input
    job_id: str
    upload: Future | None = None
    shard: "_Shard | None" = None


@dataclass
class _Shard:
    index: int
    size: int
    opened: float = field(default_factory=time.monotonic)
    items: list[_Item] = field(default_factory=list)  # assigned, in position order
    ready: int = 0  # of them uploaded (settled in order)
    closed: bool = False  # takes no more images


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
        r = client.records.r
        self.batches = BatchStore(r, self.settings.job_ttl_seconds)
        self.shards = ShardStore(r, client.storage, self.settings.job_ttl_seconds)
        self.scheduler = Scheduler(r)
        self.queue = model_queue(model)
        self.namespace = ""
        self.token = ""  # of the batch's submission lock, while this submission holds it

    # -- what goes to Redis and S3 ------------------------------------------------------------
    def _object(self, item: Input, job_id: str) -> S3Object:
        return item.s3 if item.s3 is not None else S3Object(self.settings.s3_bucket, layout.input_key(job_id, item.ext))

    def _new_video(self, item: Input, job_id: str) -> NewJob:
        obj = self._object(item, job_id)
        payload = VideoJob(job_id=job_id, task=self.task, model=self.model, input_bucket=obj.bucket,
                           input_key=obj.key, batch=self.batch, priority=self.priority, **self.video_options)
        record = JobRecord(id=job_id, kind=JobKind.VIDEO.value, task=self.task, model=self.model, input=obj.uri,
                           batch=self.batch, priority=self.priority, source=item.display, created_at=time.time(),
                           chunk_frames=payload.chunk_frames, batch_size=payload.batch_size,
                           annotate_fps=payload.annotate_fps)
        message = messages.build(self.client.celery, SPLIT_VIDEO, payload.to_message(), payload.task_id, self.queue)
        return NewJob(job_id, item.identity, record.to_hash(), entry(message))

    def _image_record(self, image: ShardImage, index: int, created: float) -> JobRecord:
        return JobRecord(id=image.id, kind=JobKind.IMAGE.value, task=self.task, model=self.model, input=image.input,
                         state=JobState.QUEUED.value, batch=self.batch, priority=self.priority, source=image.source,
                         created_at=created, shard=index)

    def _upload(self, item: Input, job_id: str) -> None:
        self.client.storage.put_file(item.path, layout.input_key(job_id, item.ext))

    def _identities(self, shards: int) -> IdentityIndex:
        """The identities of the images the batch holds: every shard that joined it (a first
        shard; a retry's images are its first shard's), from its list in S3."""
        index = IdentityIndex()
        joined = []
        for start in range(0, shards, 1000):
            numbers = list(range(start, min(shards, start + 1000)))
            joined += [k for k, st in zip(numbers, self.shards.states(self.batch, numbers))
                       if st is not None and st.of is None]

        def read(k: int) -> list[tuple[str, int]]:
            spec = self.shards.spec(self.batch, k)
            return [(i.ident, k * MAX_SHARD_IMAGES + i.pos) for i in spec.images]

        load_identities(index, joined, read)
        return index

    # -- the whole submission ----------------------------------------------------------------
    def run(self, inputs: Iterable[Input], on_job: Callable[[JobRecord], None] | None = None,
            on_skip: Callable[[Input, str], None] | None = None,
            on_refused: Callable[[Refused], None] | None = None) -> SubmitReport:
        started = time.monotonic()
        self.token = uuid.uuid4().hex
        try:
            opened = self.batches.open(self.batch, self.task, self.model, self.priority,
                                       message_template(self.client.celery, self.task, self.model, self.priority),
                                       self.token)
        except redis.RedisError as exc:
            raise self.client.redis_down(exc) from exc
        self.namespace = opened.namespace
        report = SubmitReport(self.batch, opened.created, serving=opened.slots > 0)
        try:
            sealed = self._run(inputs, opened, report, on_job, on_skip, on_refused)
            if not sealed:
                report.finished = self.batches.seal(self.batch, self.token)  # and the lock given back
        except redis.RedisError as exc:
            raise self._interrupted(report, self.client.redis_down(exc)) from exc
        except SegqError as exc:
            raise self._interrupted(report, exc) from exc
        if report.finished:
            self.client.batch_finished(self.batch)
        report.seconds = time.monotonic() - started
        return report

    def _run(self, inputs, opened, report: SubmitReport, on_job, on_skip, on_refused) -> bool:
        """Add the inputs (module docstring); True when the last shard's step sealed the batch."""
        held = self._identities(opened.shards) if not opened.created and opened.shards else IdentityIndex()
        sizes = Sizes(shard_size(opened.seconds_per_image, self.settings.shard_seconds,
                                 self.settings.shard_max_images))
        pending: collections.deque[_Item] = collections.deque()
        videos: list[tuple[_Item, NewJob]] = []
        seen_videos: dict[str, str] = {}
        current: list[_Shard | None] = [None]
        first = [opened.first]  # the shard number the batch's opening took for this submission
        ending = [False]  # the inputs are all read: a shard added with nothing after it seals the batch
        sealed = [False]
        renewed = [time.monotonic()]

        def flush_videos() -> None:
            if not videos:
                return
            skipped = self.batches.submit(self.batch, [job for _, job in videos])
            for position, (item, job) in enumerate(videos):
                if position in skipped:  # another submission's, after all
                    report.skipped += 1
                    if item.input.path is not None:
                        self._delete_upload(item)
                    if on_skip:
                        on_skip(item.input, skipped[position])
                    continue
                report.submitted += 1
                if on_job:
                    on_job(JobRecord.from_hash(job.record))
            videos.clear()
            self.scheduler.dispatch(self.model)

        def add_shard(shard: _Shard) -> None:
            now = time.time()
            images = [ShardImage(i.job_id, pos, i.input.display, self._object(i.input, i.job_id).uri,
                                 i.input.identity) for pos, i in enumerate(shard.items)]
            self.shards.write_spec(ShardSpec(self.batch, shard.index, self.task, self.model, images, created_at=now))
            last = ending[0] and not pending and not videos
            self.shards.add(self.batch, shard.index, len(images), seal=self.token if last else None)
            sealed[0] = last
            report.shards += 1
            report.submitted += len(images)
            if on_job:
                for image in images:
                    on_job(self._image_record(image, shard.index, now))

        def settle(keep: int | None) -> None:
            """Take the items whose uploads are done, in input order, from the left; with ``keep``,
            wait for uploads until at most ``keep`` items are outstanding (None: only what is
            ready). An image counts towards its shard, added once closed and complete; a video
            joins the next group of jobs."""
            while pending:
                head = pending[0]
                if not (head.upload is None or head.upload.done()) and (keep is None or len(pending) <= keep):
                    return
                pending.popleft()
                if head.upload is not None:
                    head.upload.result()  # an upload's error ends the submission here
                if head.shard is None:
                    videos.append((head, self._new_video(head.input, head.job_id)))
                    if len(videos) >= self.group:
                        flush_videos()
                    continue
                head.shard.ready += 1
                if head.shard.closed and head.shard.ready == len(head.shard.items):
                    add_shard(head.shard)

        def close_current() -> None:
            shard = current[0]
            if shard is not None:
                shard.closed = True
                current[0] = None
                if shard.ready == len(shard.items):
                    add_shard(shard)

        def place(item: Input) -> str:
            """A new image's place: the next position of the shard being filled; its id."""
            shard = current[0]
            if shard is None:
                number = first.pop() if first else self.shards.next_index(self.batch)
                shard = current[0] = _Shard(number, sizes.next())
            job_id = image_id(self.namespace, shard.index, len(shard.items))
            held.add(item.identity, shard.index * MAX_SHARD_IMAGES + len(shard.items))
            return job_id

        with ThreadPoolExecutor(self.threads, thread_name_prefix="segq-upload") as pool:
            for window, final in _windows(inputs, self.window):
                if time.monotonic() - renewed[0] > RENEW_SECONDS:
                    self.batches.renew_lock(self.batch, self.token)
                    renewed[0] = time.monotonic()
                window = self._admit(window, report, on_refused)
                held_videos = self.batches.holders(self.batch, [i.identity for i in window
                                                                if i.kind == JobKind.VIDEO])
                held_videos = iter(held_videos)
                for n, item in enumerate(window, 1):
                    # the last input: a shard added with nothing after it seals the batch in its step
                    ending[0] = final and n == len(window)
                    if item.kind == JobKind.VIDEO:
                        holder = next(held_videos) or seen_videos.get(item.identity)
                    else:
                        found = held.get(item.identity)
                        holder = None if found is None else image_id(
                            self.namespace, found // MAX_SHARD_IMAGES, found % MAX_SHARD_IMAGES)
                    if holder:
                        report.skipped += 1
                        if on_skip:
                            on_skip(item, holder)
                        continue
                    if item.kind == JobKind.VIDEO:
                        job_id = new_job_id()
                        seen_videos[item.identity] = job_id
                        shard = None
                    else:
                        job_id = place(item)
                        shard = current[0]
                    upload = pool.submit(self._upload, item, job_id) if item.path is not None else None
                    queued = _Item(item, job_id, upload, shard)
                    pending.append(queued)
                    if shard is not None:
                        shard.items.append(queued)
                        if len(shard.items) >= shard.size:
                            close_current()
                    settle(keep=self.threads * 4)
                if current[0] is not None and time.monotonic() - current[0].opened > OPEN_SECONDS:
                    close_current()
            ending[0] = True
            close_current()
            settle(keep=0)
            flush_videos()
        return sealed[0] and not videos

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
    """The inputs a window at a time, each with whether it is the last one (read one ahead)."""
    items = iter(items)
    window = list(itertools.islice(items, size))
    while window:
        following = list(itertools.islice(items, size))
        yield window, not following
        window = following
