"""A batch's images, in shards: what costs Redis nothing per image.

A dataset of millions of images is not a million jobs in Redis. The producer groups a batch's
images into **shards** of a few seconds of work each (``producer.submit`` sizes them) and writes
each shard's list of images to S3 (:class:`ShardSpec`, ``segq.layout.shard_spec_key``); Redis
holds, per shard, one small state (:class:`ShardState`, a field of ``segq:batch:<name>:shards``)
and, per batch, its counters by image state and one message template (``segq.messages``): the
scheduler releases one shard at a time, in turn with other batches, from a range of shard
numbers. So the message, its lease, the scheduler's turn and the state moves are paid once per
shard; what each image gave (state, error, output keys, size, timings) is written to S3 with the
shard's end (:class:`ImageResult` lines), not kept in Redis.

Every image still has its own id (``segq.protocol.image_id``: its batch's namespace, its shard,
its position), printed at submission, and every command that takes a job id takes it: its shard's
state (Redis) and results (S3) say where it is (:meth:`ShardStore.record`).

A shard's moves are Lua scripts (``segq/lua/shard_*.lua``), each one step with the batch's
counters: ``shard_add`` (queued), ``shard_start`` (running; a new attempt when its worker died),
``shard_end`` (counted once, by the first attempt to end, whose results then count),
``shard_cancel`` (one image), ``shard_retry`` (a new shard running the failed and canceled images
of an ended one, recorded on it so that an image's latest run is found from its id) and
``cancel_batch``.

A worker that takes a shard over from one that died skips the images the other had finished up
to its last progress note (written every ``PROGRESS_SECONDS``; ``segq.layout.shard_progress_key``):
at most the images finished since then run again, with the shard's unfinished ones.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Iterable, Iterator

import redis

from segq import keys, layout, messages
from segq.errors import InputError, ObjectNotFound
from segq.jobs import JobRecord
from segq.protocol import SEGMENT_SHARD, ShardJob, image_id, model_queue, parse_image_id
from segq.scripts import Scripts, run_script
from segq.states import JobKind, JobState
from segq.storage import S3Object, Storage

#: Seconds between a running shard's progress notes (and its looks for cancellation: ``CHECK_SECONDS``).
PROGRESS_SECONDS = 2.0
CHECK_SECONDS = 1.0
#: Shards ended per ``cancel_batch`` call (each call is one step of Redis).
CANCEL_PAGE = 5000


@dataclass(frozen=True)
class ShardImage:
    """One image of a shard: its id, its position in its first shard, what the user named, the
    object it reads, and its identity in the batch (``segq.batches.identity``)."""

    id: str
    pos: int
    source: str
    input: str  # s3://bucket/key
    ident: str = ""

    @property
    def object(self) -> S3Object:
        bucket, _, key = self.input.removeprefix("s3://").partition("/")
        return S3Object(bucket, key)


@dataclass
class ShardSpec:
    """A shard's list of images, written to S3 before the shard joins its batch. ``of``: the
    shard whose failed or canceled images a retry shard runs again (None for a first shard)."""

    batch: str
    shard: int
    task: str
    model: str
    images: list[ShardImage]
    created_at: float = 0.0
    of: int | None = None

    def to_json(self) -> bytes:
        doc = {"batch": self.batch, "shard": self.shard, "task": self.task, "model": self.model,
               "created_at": self.created_at, "of": self.of, "images": [asdict(i) for i in self.images]}
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "ShardSpec":
        """ValueError for anything that is not a shard's list."""
        try:
            doc = json.loads(data)
            images = [ShardImage(str(i["id"]), int(i["pos"]), str(i["source"]), str(i["input"]),
                                 str(i.get("ident", ""))) for i in doc["images"]]
            return cls(str(doc["batch"]), int(doc["shard"]), str(doc["task"]), str(doc["model"]), images,
                       float(doc.get("created_at") or 0), None if doc.get("of") is None else int(doc["of"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a shard's list of images ({type(exc).__name__})") from None


@dataclass
class ImageResult:
    """What one image of a shard gave: a line of the shard's results (and of the manifest)."""

    job: str
    pos: int
    source: str
    input: str
    state: str
    error: str | None = None
    outputs: list[str] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    segments: int | None = None
    inference_s: float | None = None
    total_s: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    stages: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)  # CPU seconds by stage (segq.jobs.CPU_STAGES)
    checkpoint: str = ""
    worker: str = ""
    device: str = ""
    shard: int = 0
    attempt: int = 0
    kind: str = JobKind.IMAGE.value

    def to_line(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_line(cls, line: str) -> "ImageResult":
        doc = json.loads(line)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})

    @classmethod
    def of(cls, image: ShardImage, state: str, error: str | None = None, **values) -> "ImageResult":
        return cls(image.id, image.pos, image.source, image.input, state, error, **values)


def read_lines(data: bytes) -> list[ImageResult]:
    return [ImageResult.from_line(line) for line in data.decode().splitlines() if line.strip()]


def write_lines(results: Iterable[ImageResult]) -> bytes:
    return "".join(r.to_line() + "\n" for r in results).encode()


@dataclass
class ShardState:
    """A shard's state in Redis (a JSON object; short names, since a batch keeps one per shard):
    ``s`` q(ueued) / r(unning) / e(nded); ``n`` images; ``t`` added; ``a`` attempts; ``w``,
    ``dv`` its worker and device; ``t0``/``t1`` started and ended; ``d``/``f``/``c`` images done,
    failed and canceled; ``e`` the attempt whose results count (0: ended without results, every
    image canceled); ``x`` positions canceled while it was queued or running (``xq`` of them while
    queued); ``r`` its retries, ``[[shard, [positions]], ...]``; ``of`` the shard a retry shard
    runs again; ``ts`` its first transient failure (the retry budget counts from there); ``rq``
    its tasks put back after their worker died or their message was lost, ``nt`` the last note."""

    s: str = "q"
    n: int = 0
    t: float = 0.0
    a: int = 0
    w: str = ""
    dv: str = ""
    t0: float | None = None
    t1: float | None = None
    d: int = 0
    f: int = 0
    c: int = 0
    e: int = 0
    x: list = field(default_factory=list)
    xq: int = 0
    r: list = field(default_factory=list)
    of: int | None = None
    ts: float | None = None
    rq: int = 0
    nt: str = ""

    @classmethod
    def from_json(cls, raw: str) -> "ShardState":
        doc = json.loads(raw)
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in doc.items() if k in known})
        # cjson writes an empty array as an empty object
        state.x = [int(p) for p in state.x] if isinstance(state.x, list) else []
        state.r = [(int(k), [int(p) for p in (ps if isinstance(ps, list) else [])]) for k, ps in state.r] \
            if isinstance(state.r, list) else []
        return state

    @property
    def ended(self) -> bool:
        return self.s == "e"

    def deciding(self, index: int, pos: int) -> int:
        """The shard whose run of the image at ``pos`` counts: the latest retry of this shard
        (``index``) that ran it, else this one."""
        for k, positions in reversed(self.r):
            if pos in positions:
                return k
        return index


@dataclass(frozen=True)
class Start:
    """What ``shard_start`` said: run it (attempt, positions canceled, first transient failure)
    or not (``finished``: ending it finished the batch)."""

    run: bool
    attempt: int = 0
    canceled: frozenset = frozenset()
    transient_since: float | None = None
    missing: bool = False
    finished: bool = False


class ShardStore:
    """A batch's shards: their states in Redis, their lists and results in S3."""

    def __init__(self, r: redis.Redis, storage: Storage, ttl_seconds: int):
        self.r = r
        self.storage = storage
        self.ttl = ttl_seconds
        self.scripts = Scripts(r)

    # -- S3 ---------------------------------------------------------------------------------
    def _object(self, key: str) -> S3Object:
        return S3Object(self.storage.bucket, key)

    def write_spec(self, spec: ShardSpec) -> None:
        self.storage.put_bytes(layout.shard_spec_key(spec.batch, spec.shard), spec.to_json(), "application/json")

    def spec(self, batch: str, index: int) -> ShardSpec:
        """The shard's list of images (ObjectNotFound when it was never written; InputError when it
        does not parse)."""
        data = self.storage.get_bytes(self._object(layout.shard_spec_key(batch, index)))
        try:
            return ShardSpec.from_json(data)
        except ValueError as exc:
            raise InputError(f"shard {index} of batch {batch}: {exc}") from None

    def write_results(self, batch: str, index: int, attempt: int, results: list[ImageResult]) -> None:
        self.storage.put_bytes(layout.shard_result_key(batch, index, attempt), write_lines(results),
                               "application/x-ndjson")

    def results(self, batch: str, index: int, attempt: int) -> list[ImageResult]:
        return read_lines(self.storage.get_bytes(self._object(layout.shard_result_key(batch, index, attempt))))

    def write_progress(self, batch: str, index: int, results: list[ImageResult]) -> None:
        self.storage.put_bytes(layout.shard_progress_key(batch, index), write_lines(results), "application/x-ndjson")

    def progress(self, batch: str, index: int) -> list[ImageResult]:
        """What an earlier attempt of the shard finished (nothing when it left no note)."""
        try:
            data = self.storage.get_bytes(self._object(layout.shard_progress_key(batch, index)))
        except ObjectNotFound:
            return []
        try:
            return read_lines(data)
        except (ValueError, TypeError):
            return []  # a note cut short: its images run again

    def drop_progress(self, batch: str, index: int) -> None:
        self.storage.delete(layout.shard_progress_key(batch, index))

    # -- Redis: the producer's moves ----------------------------------------------------------
    def next_index(self, batch: str) -> int:
        """A new shard number of the batch (a number taken and never added leaves a gap)."""
        return int(self.r.hincrby(keys.batch(batch), "shards", 1)) - 1

    def add(self, batch: str, index: int, images: int, seal: str | None = None) -> bool:
        """The shard (its list already in S3) joins its batch, queued, and the model's pending work
        is released up to its slots; ``seal``: the submission's lock token, when this is its last
        step (the batch is sealed too, and the lock given back)."""
        return bool(int(self.scripts.shard_add(args=[batch, index, images, time.time(),
                                                     *([seal] if seal else [])])[0]))

    def cancel_batch(self, batch: str) -> tuple[int, int]:
        """Cancel the batch's shards (running ones stop within a second) and drop its pending work,
        a page at a time; ``(video messages dropped, shards ended)``."""
        dropped = ended = 0
        while True:
            d, e, left, _finished = self.scripts.cancel_batch(args=[batch, time.time(), self.ttl, CANCEL_PAGE])
            dropped, ended = dropped + int(d), ended + int(e)
            if not int(left) or not (int(d) or int(e)):
                return dropped, ended

    def cancel_image(self, batch: str, index: int, pos: int) -> int:
        """``shard_cancel``: 1 canceled, 2 asked of its running shard, 3 canceled already, 0 too
        late (its shard ended), -1 no such shard."""
        return int(self.scripts.shard_cancel(args=[batch, index, pos, time.time(), self.ttl]))

    def add_retry(self, batch: str, index: int, new: int, positions: list[int], failed: int, canceled: int,
                  template: str) -> bool:
        """``shard_retry``: shard ``new`` (its list in S3) runs the images at ``positions`` of
        ``index`` again; ``template``: the batch's shard message, written if it went with the
        batch's end."""
        return bool(self.scripts.shard_retry(args=[batch, index, new, json.dumps(positions), failed, canceled,
                                                    time.time(), template]))

    # -- Redis: the worker's moves ----------------------------------------------------------
    def start(self, batch: str, index: int, worker: str, device: str, pipe=None) -> Start:
        """``shard_start``; with ``pipe``, run in that pipeline (with what it already holds) and
        read from its last reply."""
        args = [batch, index, worker, device, time.time(), self.ttl]
        out = run_script(self.scripts.shard_start, args, pipe)
        if int(out[0]) == -1:
            return Start(False, missing=True)
        if int(out[0]) == 0:
            return Start(False, finished=bool(int(out[1])))
        canceled = json.loads(out[2])
        return Start(True, int(out[1]), frozenset(int(p) for p in (canceled if isinstance(canceled, list) else [])),
                     float(out[3]) or None)

    def check(self, batch: str, index: int) -> tuple[bool, frozenset]:
        """While running: whether the batch was canceled, and the positions canceled in it."""
        canceled, raw = self.r.pipeline(transaction=False).hget(keys.batch(batch), "canceled_at") \
            .hget(keys.batch_shards(batch), index).execute()
        state = ShardState.from_json(raw) if raw else ShardState()
        return bool(canceled), frozenset(state.x)

    def requeued(self, batch: str, index: int, note: str) -> int:
        """A task of the shard was put back on its queue (its worker died, its message was lost)."""
        return int(self.scripts.shard_requeued(args=[batch, index, note]))

    def note_transient(self, batch: str, index: int, since: float) -> None:
        """The shard's first transient failure, for its retry budget (kept on its state)."""
        raw = self.r.hget(keys.batch_shards(batch), index)
        if raw:
            doc = json.loads(raw)
            if not doc.get("ts"):
                doc["ts"] = since
                self.r.hset(keys.batch_shards(batch), index, json.dumps(doc, separators=(",", ":")))

    def end(self, batch: str, index: int, attempt: int, done: int, failed: int, canceled: int,
            inference_s: float = 0.0, fps: float | None = None, task: tuple[str, str] | None = None,
            image_s: float | None = None) -> int:
        """``shard_end``: 1 ended, 2 ended and the batch finished, 0 another attempt counts, -1 no
        shard. ``task``: the ending task's (id, delivery tag), whose message is done with in the
        same step (``task_ended``'s work); ``image_s``: the shard's seconds of work per image (the
        producer sizes shards with the last one)."""
        args = [batch, index, attempt, done, failed, canceled, time.time(), self.ttl, round(inference_s, 6), fps or 0,
                *(task or ("", "")), round(image_s, 6) if image_s else 0]
        return int(self.scripts.shard_end(args=args))

    def fail(self, batch: str, index: int, reason: str) -> tuple[int, int]:
        """Fail the images of a shard that it has not finished (by its progress note) with
        ``reason``, and end it: the task skeleton's failure policy for a shard, and the reaper's
        and the watchdog's when its task is given up on. ``(shard_end's outcome, images failed)``;
        outcome 0 when it had ended already."""
        state = self.state(batch, index)
        if state is None or state.ended:
            return 0, 0
        attempt = max(1, state.a)
        try:
            spec = self.spec(batch, index)
        except (ObjectNotFound, InputError):
            spec = None
        if spec is None:  # no list to write results for: counts only
            return self.end(batch, index, 0, 0, state.n - state.xq, state.xq), state.n - state.xq
        done = {r.pos: r for r in self.progress(batch, index) if r.state == JobState.DONE}
        lines = []
        for image in spec.images:
            if image.pos in done:
                lines.append(done[image.pos])
            elif image.pos in state.x:
                lines.append(ImageResult.of(image, JobState.CANCELED.value, shard=index, attempt=attempt))
            else:
                lines.append(ImageResult.of(image, JobState.FAILED.value, reason, finished_at=time.time(),
                                            shard=index, attempt=attempt))
        self.write_results(batch, index, attempt, lines)
        d = sum(r.state == JobState.DONE for r in lines)
        f = sum(r.state == JobState.FAILED for r in lines)
        return self.end(batch, index, attempt, d, f, len(lines) - d - f), f

    # -- reads --------------------------------------------------------------------------------
    def state(self, batch: str, index: int) -> ShardState | None:
        raw = self.r.hget(keys.batch_shards(batch), index)
        return ShardState.from_json(raw) if raw else None

    def states(self, batch: str, indexes: list[int]) -> list[ShardState | None]:
        if not indexes:
            return []
        raws = self.r.hmget(keys.batch_shards(batch), indexes)
        return [ShardState.from_json(raw) if raw else None for raw in raws]

    def batch_of(self, namespace: str) -> str | None:
        return self.r.get(keys.namespace(namespace))

    def latest(self, batch: str, index: int, state: ShardState, spec: ShardSpec | None = None
               ) -> list[ImageResult]:
        """Every image of first shard ``index`` as its latest run left it, in position order: its
        own results, those of its retries over them, and for what has not ended (or ended without
        results) the shard's list, as queued, running or canceled."""
        by_pos: dict[int, ImageResult] = {}
        chain = [(index, state)] + list(zip([k for k, _ in state.r], self.states(batch, [k for k, _ in state.r])))
        for k, st in chain:
            if st is None:
                continue
            if st.ended and st.e:
                for line in self.results(batch, k, st.e):
                    by_pos[line.pos] = line
                continue
            spec = spec or self.spec(batch, index)
            positions = set(dict(state.r).get(k, [])) if k != index else None
            for image in spec.images:
                if positions is not None and image.pos not in positions:
                    continue
                if st.ended or image.pos in st.x and st.s == "q":
                    value = JobState.CANCELED.value
                else:
                    value = JobState.QUEUED.value if st.s == "q" else JobState.RUNNING.value
                by_pos[image.pos] = ImageResult.of(image, value, shard=k, attempt=st.a, worker=st.w, device=st.dv,
                                                   started_at=st.t0, finished_at=st.t1 if st.ended else None)
        return [by_pos[p] for p in sorted(by_pos)]

    def record(self, job_id: str) -> JobRecord | None:
        """The record of an image from its id (None: not an image id, or its batch expired)."""
        ref = parse_image_id(job_id)
        if ref is None:
            return None
        batch = self.batch_of(ref.namespace)
        if not batch:
            return None
        state = self.state(batch, ref.shard)
        if state is None or state.of is not None or ref.position >= state.n:
            return None
        meta = self.r.hmget(keys.batch(batch), "task", "model", "priority")
        for line in self.latest(batch, ref.shard, state):
            if line.job == job_id:
                return to_record(line, batch, meta, state)
        return None

    def records(self, batch: str, index: int, meta=None) -> list[JobRecord]:
        """Every image of first shard ``index`` as a record (``latest``)."""
        state = self.state(batch, index)
        if state is None:
            return []
        meta = meta or self.r.hmget(keys.batch(batch), "task", "model", "priority")
        return [to_record(line, batch, meta, state) for line in self.latest(batch, index, state)]


def to_record(line: ImageResult, batch: str, meta, state: ShardState) -> JobRecord:
    """An image as a job record, for every reader of jobs (``segq status``, ``wait``, ``get``)."""
    task, model, priority = (meta[0] or "", meta[1] or "", meta[2] or "normal")
    seconds = line.inference_s
    return JobRecord(
        id=line.job, kind=JobKind.IMAGE.value, task=task, model=model, input=line.input, state=line.state,
        batch=batch, priority=priority, source=line.source, checkpoint=line.checkpoint, created_at=state.t,
        started_at=line.started_at, finished_at=line.finished_at,
        queue_wait_s=round(line.started_at - state.t, 6) if line.started_at else None,
        inference_s=seconds, total_s=line.total_s, fps=round(1.0 / seconds, 3) if seconds else None,
        frames=1 if line.state == JobState.DONE else None, width=line.width, height=line.height,
        segments=line.segments, worker=line.worker, device=line.device, attempts=line.attempt or state.a,
        error=line.error or "", stages=dict(line.stages or {}), cpu=dict(line.cpu or {}), shard=line.shard, requeues=state.rq or None,
        note=state.nt or f"shard {line.shard} of batch {batch}" + (f", attempt {line.attempt}" if line.attempt > 1 else ""),
    )


def message_template(app, task: str, model: str, priority: str) -> str:
    """The message of the shards of every batch of ``task``, ``model`` and ``priority``, their
    batch's name and number left out (``segq.messages.template``; ``keys.template`` keeps it)."""
    payload = ShardJob(messages.BATCH_SLOT, messages.SLOT, task, model, priority)
    return messages.template(app, SEGMENT_SHARD, payload.to_message(),
                             f"shard:{messages.BATCH_SLOT}:{messages.SLOT}", model_queue(model))


def image_entries(namespace: str, index: int, items: Iterator[tuple[str, str, str]]) -> list[ShardImage]:
    """A new shard's images, numbered from 0: ``items`` gives (source, input URI, identity)."""
    return [ShardImage(image_id(namespace, index, pos), pos, source, uri, ident)
            for pos, (source, uri, ident) in enumerate(items)]
