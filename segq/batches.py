"""Batches: every ``segq submit`` is one, a handle on all its jobs.

A batch (``segq:batch:<name>``) holds its task, model and priority, when it was created and when
it finished, and one counter per job state plus the frames done and known, moved by the same Lua
scripts that move its jobs (``segq.jobs``): ``segq status BATCH`` and ``segq wait BATCH`` read one
hash, whatever the batch's size. Beside it: the list of its job ids (for the manifest, cancel and
retry), the identities of its inputs (so that submitting the same inputs to the same batch again
adds only the missing ones) and its pending messages (``segq.scheduler``).

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
from segq.protocol import batch_name_problem
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
                "manifest_at": self.manifest_at}


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


class BatchStore:
    def __init__(self, client: redis.Redis, ttl_seconds: int):
        self.r = client
        self.ttl = ttl_seconds
        self.scripts = Scripts(client)

    def open(self, name: str, task: str, model: str, priority: str) -> tuple[bool, int]:
        """Create batch ``name``, or reopen it for more jobs; ``(created, jobs it holds)``.
        UsageError when it exists with another task, model or priority."""
        try:
            created, jobs = self.scripts.batch_open(args=[name, task, model, priority, time.time(), ""])
        except redis.ResponseError as exc:
            raise UsageError(str(exc)) from None
        return bool(created), int(jobs)

    def submit(self, name: str, jobs: list[NewJob]) -> dict[int, str]:
        """Create ``jobs`` and queue their first tasks in one step; ``{position: holder job id}`` of
        those whose input the batch already held (they were not created)."""
        if not jobs:
            return {}
        out = self.scripts.submit(args=[name, self.ttl, time.time(), json.dumps([j.to_json() for j in jobs])])
        return {int(out[i]) - 1: out[i + 1] for i in range(0, len(out), 2)}

    def seal(self, name: str) -> bool:
        """The submission is complete; True when that finished the batch (write its manifest)."""
        return int(self.scripts.batch_seal(args=[name, time.time(), self.ttl])) == 1

    def holders(self, name: str, identities: list[str]) -> list[str | None]:
        """The job holding each input identity in the batch (None: not in it)."""
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

    def recent(self, limit: int = 20) -> list[BatchRecord]:
        names = self.r.zrevrange(keys.BATCHES_INDEX, 0, max(limit, 1) - 1)
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(keys.batch(name))
        return [BatchRecord.from_hash({"name": n, **d}) for n, d in zip(names, pipe.execute()) if d]

    def job_ids(self, name: str, page: int = 1000) -> Iterator[list[str]]:
        """The batch's job ids in submission order, a page at a time."""
        start = 0
        while True:
            ids = self.r.lrange(keys.batch_jobs(name), start, start + page - 1)
            if not ids:
                return
            yield ids
            start += len(ids)

    def drop_pending(self, name: str) -> int:
        """Drop the batch's pending (unreleased) messages; how many."""
        return int(self.scripts.cancel_batch(args=[name]))

    def manifest_written(self, name: str) -> None:
        self.r.hset(keys.batch(name), "manifest_at", time.time())
