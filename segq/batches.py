"""Batches: every ``segq submit`` is one, a handle on all its jobs.

A batch (``segq:batch:<name>``) holds its task, model and priority, when it was created and when
it finished, and one counter per job state (an image counts as one job) plus the frames done and
known, moved by the same Lua scripts that move its shards and jobs (``segq.shards``,
``segq.jobs``): ``segq status BATCH`` and ``segq wait BATCH`` read one hash, whatever the batch's
size. Beside it: its items in submission order (video job ids and shard numbers: the manifest,
cancel and retry), its shards' states, its video inputs' identities (its images' are in their
shards' lists in S3; submitting the same inputs to the same batch again adds only the missing
ones), its pending work (``segq.scheduler``) and its shards' message template.

A batch is open while it is being submitted; sealed at the end of the submission, it is
**finished** once no job of it is queued or running, and then its manifest is written
(``segq.manifest``) and its keys expire ``SEGQ_JOB_TTL`` seconds later, with its jobs' records.
A retry or a resubmission opens it again.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass, fields
from typing import Iterator

import redis

from segq import keys
from segq.errors import BatchNotFound, UsageError
from segq.protocol import batch_name_problem, new_namespace
from segq.scripts import Scripts
from segq.states import COUNTED_STATES, JobState


def new_batch_name() -> str:
    """A generated name: ``b-`` and 12 hex digits (never a job id, which is 16 hex digits)."""
    return f"b-{secrets.token_hex(6)}"


def check_name(name: str) -> str:
    problem = batch_name_problem(name)
    if problem:
        raise UsageError(f"invalid batch name {name!r}: {problem}")
    return name


def identity(*parts: object) -> str:
    """The identity of an input, as a batch remembers it: a digest of what names it and what says
    it is unchanged (a local file's resolved path, size and modification time; an object's URI,
    size and ETag)."""
    return hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()[:32]


@dataclass
class BatchRecord:
    name: str
    task: str = ""
    model: str = ""
    priority: str = ""
    created_at: float = 0.0
    finished_at: float | None = None
    manifest_at: float | None = None
    sealed: bool = False
    jobs: int = 0
    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    canceled: int = 0
    frames_total: int = 0
    frames_done: int = 0
    shards: int = 0  # shard numbers taken (segq.shards)
    ns: str = ""  # the namespace of its images' ids (segq.protocol.image_id)
    canceled_at: float | None = None  # when it was canceled (until a retry or a resubmission)

    @property
    def counts(self) -> dict[str, int]:
        return {state.value: getattr(self, state.value) for state in COUNTED_STATES}

    @property
    def ended(self) -> int:
        return self.done + self.failed + self.canceled

    @property
    def final(self) -> bool:
        """Sealed, with no job queued or running."""
        return self.finished_at is not None

    @property
    def state(self) -> str:
        if self.final:
            return "finished"
        if not self.sealed:
            return "submitting"
        return JobState.RUNNING.value if self.running or self.ended else JobState.QUEUED.value

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> "BatchRecord":
        kwargs: dict = {}
        for f in fields(cls):
            raw = data.get(f.name)
            if raw is None or raw == "":
                continue
            try:
                if f.name == "sealed":
                    kwargs[f.name] = raw == "1"
                elif f.type in ("int",):
                    kwargs[f.name] = int(float(raw))
                elif f.type in ("float", "float | None"):
                    kwargs[f.name] = float(raw)
                else:
                    kwargs[f.name] = raw
            except ValueError:
                continue
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return {"name": self.name, "state": self.state, "task": self.task, "model": self.model,
                "priority": self.priority, "jobs": self.jobs, "counts": self.counts,
                "frames_done": self.frames_done, "frames_total": self.frames_total,
                "created_at": self.created_at, "finished_at": self.finished_at, "sealed": self.sealed,
                "manifest_at": self.manifest_at, "shards": self.shards}


@dataclass(frozen=True)
class NewJob:
    """A job to create in a batch: its id, its input's identity, its record's fields, and its first
    task's pending entry (``segq.scheduler.entry``)."""

    id: str
    identity: str
    record: dict[str, str]
    entry: str

    def to_json(self) -> dict:
        return {"id": self.id, "identity": self.identity, "record": self.record, "entry": self.entry}


@dataclass(frozen=True)
class Opened:
    """What opening a batch found: whether it was created now, the jobs it holds, its images' id
    namespace, its shard numbers taken before, and the number taken for the submission's first
    shard."""

    created: bool
    jobs: int
    namespace: str
    shards: int
    first: int
    slots: int = 0  # the model's task slots: 0 when no live worker serves it
    seconds_per_image: float | None = None  # the fleet's measured seconds of work per image of the model


#: Seconds a submission's lock on its batch lasts unless renewed (``BatchStore.open``).
LOCK_SECONDS = 30


class BatchStore:
    def __init__(self, client: redis.Redis, ttl_seconds: int):
        self.r = client
        self.ttl = ttl_seconds
        self.scripts = Scripts(client)

    def open(self, name: str, task: str, model: str, priority: str, template: str, token: str,
             wait: float = LOCK_SECONDS + 5, poll: float = 0.5) -> Opened:
        """Create batch ``name``, or reopen it for more jobs, and take its submission lock with
        ``token`` (one submission adds to a batch at a time, so that the inputs it holds are
        known while it adds): waits up to ``wait`` seconds for another submission's lock to be
        given back or to run out (``LOCK_SECONDS`` after its holder stopped renewing it).
        ``template``: the shard message of its model, task and priority
        (``segq.shards.message_template``). UsageError when it exists with another task, model or
        priority, or stays locked."""
        deadline = time.monotonic() + wait
        while True:
            try:
                out = self.scripts.batch_open(args=[name, task, model, priority, time.time(), new_namespace(),
                                                    template, token, LOCK_SECONDS])
            except redis.ResponseError as exc:
                raise UsageError(str(exc)) from None
            if int(out[0]) >= 0:
                return Opened(bool(int(out[0])), int(out[1]), str(out[2]), int(out[3]), int(out[4]), int(out[5]),
                              float(out[6]) if out[6] else None)
            if int(out[0]) == -2:  # another submission holds it
                if time.monotonic() > deadline:
                    raise UsageError(f"batch {name} is being submitted to by another process; "
                                     f"try again when it is done")
                time.sleep(poll)
            # -1: the namespace drawn is taken (a new one is drawn each try)

    def renew_lock(self, name: str, token: str) -> None:
        if self.r.get(keys.batch_submitting(name)) == token:
            self.r.expire(keys.batch_submitting(name), LOCK_SECONDS)

    def submit(self, name: str, jobs: list[NewJob]) -> dict[int, str]:
        """Create ``jobs`` and queue their first tasks in one step; ``{position: holder job id}`` of
        those whose input the batch already held (they were not created)."""
        if not jobs:
            return {}
        out = self.scripts.submit(args=[name, self.ttl, time.time(), json.dumps([j.to_json() for j in jobs])])
        return {int(out[i]) - 1: out[i + 1] for i in range(0, len(out), 2)}

    def seal(self, name: str, token: str = "") -> bool:
        """The submission is complete (its lock, ``token``, given back); True when that finished
        the batch (write its manifest)."""
        return int(self.scripts.batch_seal(args=[name, time.time(), self.ttl, token])) == 1

    def holders(self, name: str, identities: list[str]) -> list[str | None]:
        """The video job holding each input identity in the batch (None: not in it)."""
        if not identities:
            return []
        return self.r.hmget(keys.batch_inputs(name), identities)

    def exists(self, name: str) -> bool:
        return bool(self.r.exists(keys.batch(name)))

    def get(self, name: str) -> BatchRecord:
        data = self.r.hgetall(keys.batch(name))
        if not data:
            raise BatchNotFound(f"no batch {name!r} (unknown name, or it expired)")
        return BatchRecord.from_hash({"name": name, **data})

    def get_many(self, names: list[str]) -> list[BatchRecord]:
        """Batches by name, in one round trip (BatchNotFound for one that is gone)."""
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(keys.batch(name))
        out = []
        for name, data in zip(names, pipe.execute()):
            if not data:
                raise BatchNotFound(f"no batch {name!r} (unknown name, or it expired)")
            out.append(BatchRecord.from_hash({"name": name, **data}))
        return out

    def recent(self, limit: int = 20) -> list[BatchRecord]:
        names = self.r.zrevrange(keys.BATCHES_INDEX, 0, max(limit, 1) - 1)
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(keys.batch(name))
        return [BatchRecord.from_hash({"name": n, **d}) for n, d in zip(names, pipe.execute()) if d]

    def items(self, name: str, page: int = 1000) -> Iterator[list[str]]:
        """The batch's items in submission order, a page at a time: video job ids, and ``s<N>``
        for its shard N (``shard_of``)."""
        for items, _states in self.pages(name, page):
            yield items

    def pages(self, name: str, page: int = 1000) -> Iterator[tuple[list[str], list[str]]]:
        """The batch's items a page at a time, each page with the states of its shards (the raw
        JSON, ``segq.shards.ShardState``; '' for a video job), one step a page."""
        start = 0
        while True:
            items, states = self.scripts.batch_page(args=[name, start, page])
            if items:
                yield items, states
            if len(items) < page:
                return
            start += len(items)

    def manifest_written(self, name: str) -> None:
        self.r.hset(keys.batch(name), "manifest_at", time.time())


def shard_of(item: str) -> int | None:
    """The shard number of a batch item (``s<N>``), or None for a video job id."""
    return int(item[1:]) if item.startswith("s") else None
