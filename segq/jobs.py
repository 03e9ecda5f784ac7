"""The job record: one Redis hash per job, written by the producer and the workers.

States move ``queued -> running -> done | failed | canceled`` (``segq.states``); a final job
never moves again, so a redelivered message for it is acknowledged without running, which makes
every task idempotent from the record's point of view; ``segq retry`` moves failed or canceled
jobs back to queued. Every move is one Lua script (``segq/lua``) that also moves the counters of
the job's batch, so a batch's progress costs the same to read for 10 jobs or a million.

The record keeps its fields small (ids, names, numbers): Redis stores such a hash as a compact
listpack. What can be derived is not stored: the request (:meth:`JobRecord.request`, rebuilt from
the fields for ``segq retry`` and the watchdog) and the output keys (:attr:`JobRecord.outputs`,
from ``segq.layout``). A record expires ``SEGQ_JOB_TTL`` seconds after its job ended.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable

import redis

from segq import keys, layout
from segq.connections import redis_client
from segq.errors import JobNotFound
from segq.protocol import VideoJob
from segq.scripts import Scripts, run_script
from segq.states import FINAL_STATES, JobKind, JobState, Priority


#: The stages whose seconds a job records (a video: summed over its chunks), in order: fetching
#: the input, waiting for room in the worker's memory budget, decoding, preprocessing, waiting for
#: the model stage, the forward pass, post-processing, rendering and encoding, uploading.
STAGES = ("fetch", "memory", "decode", "preprocess", "wait", "forward", "postprocess", "render", "upload")
#: The stages whose CPU seconds a job records too (``time.thread_time`` of the threads that run
#: them, summed; a video: over its chunks): the CPU side of the worker, around the model. On a CPU
#: device the post-processing is the model stage's (its own arithmetic) and not counted.
CPU_STAGES = ("fetch", "decode", "preprocess", "postprocess", "render", "upload")


@dataclass
class JobRecord:
    id: str
    kind: str  # a JobKind
    task: str
    model: str
    input: str  # s3://bucket/key
    state: str = JobState.QUEUED.value
    batch: str = ""  # the batch (submission) the job belongs to
    priority: str = Priority.NORMAL.value
    source: str = ""  # what the user submitted (display and manifest only; never used as a key)
    checkpoint: str = ""  # the checkpoint behind the model name, as the worker loaded it
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    queue_wait_s: float | None = None  # created -> started (last attempt)
    inference_s: float | None = None  # model forward + post-processing
    total_s: float | None = None  # started -> finished on the worker (fetch, decode, infer, render, upload)
    fps: float | None = None  # frames / inference seconds
    frames: int | None = None
    width: int | None = None
    height: int | None = None
    segments: int | None = None
    worker: str = ""
    device: str = ""
    attempts: int = 0
    error: str = ""
    # video jobs
    frames_total: int | None = None
    frames_done: int | None = None
    chunks_total: int | None = None
    chunks_done: int | None = None
    chunk_frames: int | None = None
    batch_size: int | None = None
    annotate_fps: bool = False
    video_fps: float | None = None  # the input's frame rate
    e2e_fps: float | None = None  # frames / wall time from the split's start to assembly's end
    split_s: float | None = None
    assemble_s: float | None = None
    assemblies: int | None = None  # times assembly ran (1 unless a worker died during it)
    retry: int | None = None  # `segq retry` count: 0 or None for the first run
    requeues: int | None = None  # tasks of the job put back after their worker died or their message was lost
    note: str = ""  # the last thing that happened to the job besides its state (requeue, retry...)
    stages: dict = field(default_factory=dict)  # stage -> seconds (STAGES), stored as t_<stage> fields
    cpu: dict = field(default_factory=dict)  # stage -> CPU seconds (CPU_STAGES), stored as c_<stage> fields
    shard: int | None = None  # an image: the shard that ran it (segq.shards; never stored here)

    _INTS = ("frames", "width", "height", "segments", "attempts", "frames_total", "frames_done",
             "chunks_total", "chunks_done", "chunk_frames", "batch_size", "assemblies", "retry", "requeues")
    _FLOATS = ("created_at", "started_at", "finished_at", "queue_wait_s", "inference_s", "total_s", "fps",
               "video_fps", "e2e_fps", "split_s", "assemble_s")
    _BOOLS = ("annotate_fps",)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def is_video(self) -> bool:
        return self.kind == JobKind.VIDEO

    @property
    def run(self) -> int:
        return self.retry or 0

    @property
    def outputs(self) -> list[str]:
        """The S3 keys of a done job's outputs (none before it is done)."""
        if self.state != JobState.DONE:
            return []
        return layout.job_outputs(self.id, self.kind, self.task, self.chunks_total or 0)

    def request(self) -> VideoJob:
        """A video job's split payload for its current run, rebuilt from the record's fields."""
        bucket, _, key = self.input.removeprefix("s3://").partition("/")
        return VideoJob(job_id=self.id, task=self.task, model=self.model, input_bucket=bucket, input_key=key,
                        batch=self.batch, priority=self.priority, run=self.run,
                        chunk_frames=self.chunk_frames or VideoJob.chunk_frames,
                        batch_size=self.batch_size or VideoJob.batch_size, annotate_fps=self.annotate_fps)

    def to_hash(self) -> dict[str, str]:
        """The fields to store: empty ones are left out (a smaller hash)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "stages":
                out.update(stage_fields(value))
                continue
            if f.name == "cpu":
                out.update(stage_fields(cpu=value))
                continue
            if f.name == "shard":
                continue
            if value is None or value == "" or (f.name in self._BOOLS and not value):
                continue
            out[f.name] = ("1" if value else "0") if f.name in self._BOOLS else str(value)
        return out

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> "JobRecord":
        known = {f.name for f in fields(cls)} - {"stages", "cpu", "shard"}
        kwargs: dict[str, Any] = {"stages": {}, "cpu": {}}
        for name, raw in data.items():
            if (name.startswith("t_") and name[2:] in STAGES) or (name.startswith("c_") and name[2:] in CPU_STAGES):
                try:
                    kwargs["stages" if name[0] == "t" else "cpu"][name[2:]] = float(raw)
                except ValueError:
                    pass
                continue
            if name not in known:
                continue
            try:
                if name in cls._INTS:
                    kwargs[name] = int(float(raw))
                elif name in cls._FLOATS:
                    kwargs[name] = float(raw)
                elif name in cls._BOOLS:
                    kwargs[name] = raw == "1"
                else:
                    kwargs[name] = raw
            except ValueError:
                continue  # a damaged field reads as unset rather than breaking every reader
        for name in ("id", "kind", "task", "model", "input"):
            kwargs.setdefault(name, "")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["outputs"] = self.outputs
        return data


def stage_fields(stages: dict | None = None, cpu: dict | None = None) -> dict[str, str]:
    """A job's stage seconds as record fields: one small field per stage (``t_fetch``...; CPU
    seconds ``c_fetch``...), so the hash stays compact."""
    out = {f"t_{k}": str(round(float(v), 6)) for k, v in (stages or {}).items() if k in STAGES}
    out.update({f"c_{k}": str(round(float(v), 6)) for k, v in (cpu or {}).items() if k in CPU_STAGES})
    return out


# Returned by chunk_done.
CHUNK_DUPLICATE, CHUNK_RECORDED, ASSEMBLY_QUEUED = 0, 1, 2


@dataclass(frozen=True)
class Ended:
    """What a move to a final state did: ``moved`` (False: the job already was final, or has no
    record) and ``batch_finished`` (the name of the batch that move finished, for its manifest)."""

    moved: bool
    batch_finished: str | None = None

    def __bool__(self) -> bool:
        return self.moved


class JobStore:
    """Reads and writes job records. Used by the producer and by the workers.

    ``on_batch_finished(name)`` is called after a move that finished a batch (its last queued or
    running job ended, its submission sealed): the manifest is written there.
    """

    def __init__(self, client: redis.Redis, ttl_seconds: int,
                 on_batch_finished: Callable[[str], None] | None = None):
        self.r = client
        self.ttl = ttl_seconds
        self.scripts = Scripts(client)
        self.on_batch_finished = on_batch_finished

    @classmethod
    def from_url(cls, url: str, ttl_seconds: int) -> "JobStore":
        return cls(redis_client(url), ttl_seconds)

    # -- reads ---------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        data = self.r.hgetall(keys.job(job_id))
        if not data:
            raise JobNotFound(f"no job {job_id!r} (unknown id, or its record expired)")
        return JobRecord.from_hash(data)

    def get_many(self, job_ids: Iterable[str]) -> list[JobRecord | None]:
        ids = list(job_ids)
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(keys.job(job_id))
        return [JobRecord.from_hash(d) if d else None for d in pipe.execute()]

    def recent(self, limit: int = 20) -> list[JobRecord]:
        ids = self.r.zrevrange(keys.JOBS_INDEX, 0, max(limit, 1) - 1)
        return [rec for rec in self.get_many(ids) if rec is not None]

    def state(self, job_id: str) -> str | None:
        return self.r.hget(keys.job(job_id), "state")

    def exists(self, job_id: str) -> bool:
        return bool(self.r.exists(keys.job(job_id)))

    def final_or_gone(self, job_id: str) -> bool:
        """True when a follow-up task of the job has nothing to do (the job ended, or expired)."""
        state = self.state(job_id)
        return state is None or state in FINAL_STATES

    def chunk_infos(self, job_id: str) -> dict[int, dict]:
        return {int(k): json.loads(v) for k, v in self.r.hgetall(keys.job_chunk_info(job_id)).items()}

    # -- the worker's moves ------------------------------------------------------------------
    def start(self, job_id: str, worker: str, device: str, pipe=None) -> bool | None:
        """Mark running. False: the job is already final (skip it). None: no such record. With
        ``pipe``, run in that pipeline (with what it already holds) and read its last reply."""
        result = run_script(self.scripts.job_start, [time.time(), worker, device], pipe, keys=[keys.job(job_id)])
        return None if result == -1 else bool(result)

    def update(self, job_id: str, **values: Any) -> None:
        mapping = {
            k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in values.items() if v is not None
        }
        if mapping:
            self.r.hset(keys.job(job_id), mapping=mapping)

    def split_done(self, job_id: str, frames: int, entries: list[str], **fields_: Any) -> int:
        """A video's split is done: store ``fields_`` and queue its chunk ``entries``
        (``segq.scheduler.entry``) in front of its batch's pending work, once. How many it queued
        (0: a redelivered split, or a final job)."""
        values = {k: v for k, v in fields_.items() if v is not None}
        return int(self.scripts.split_done(keys=[keys.job(job_id)],
                                           args=[time.time(), frames, json.dumps(values), json.dumps(entries)]))

    def chunk_done(self, job_id: str, index: int, frames: int, inference_s: float, info: dict,
                   assembly_entry: str, task: tuple[str, str] | None = None) -> int:
        """Record a finished chunk; the chunk that completes the set queues ``assembly_entry`` in
        the same step. ``task``: the chunk task's (id, delivery tag), whose message is done with in
        the same step (``task_ended``'s work). ``(outcome, the job's state)``: CHUNK_DUPLICATE,
        CHUNK_RECORDED or ASSEMBLY_QUEUED, and the state ('' when the record is gone)."""
        outcome, state = self.scripts.chunk_done(
            keys=[keys.job(job_id), keys.job_chunks(job_id), keys.job_chunk_info(job_id)],
            args=[index, frames, json.dumps(info), inference_s, self.ttl, time.time(), assembly_entry,
                  *(task or ())],
        )
        return int(outcome), state

    def count_assembly(self, job_id: str) -> int:
        """One more run of a video job's assembly (``assemblies``: 1 unless a worker died in it)."""
        return int(self.r.hincrby(keys.job(job_id), "assemblies", 1))

    def requeued(self, job_id: str, note: str) -> None:
        """A task of the job was put back on its queue (its worker died, or its message was lost)."""
        pipe = self.r.pipeline()
        pipe.hincrby(keys.job(job_id), "requeues", 1)
        pipe.hset(keys.job(job_id), "note", note)
        pipe.execute()

    # -- final moves -------------------------------------------------------------------------
    def _to_final(self, job_id: str, state: JobState, stats: tuple = (0, 0.0, None), **values: Any) -> Ended:
        """``stats``: frames, inference seconds and FPS for the fleet's counters (done jobs)."""
        frames, inference_s, fps = stats
        args: list = [state.value, self.ttl, time.time(), int(frames or 0), float(inference_s or 0.0), fps or 0]
        for k, v in values.items():
            if v is not None:
                args += [k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)]
        result = int(self.scripts.job_end(keys=[keys.job(job_id)], args=args))
        if result != 2:
            return Ended(result == 1)
        batch = self.r.hget(keys.job(job_id), "batch")
        if batch and self.on_batch_finished is not None:
            self.on_batch_finished(batch)
        return Ended(True, batch)

    def finish(self, job_id: str, frames: int = 0, inference_s: float = 0.0, fps: float | None = None,
               stages: dict | None = None, cpu: dict | None = None, **metrics: Any) -> Ended:
        """Mark done (unless already final, e.g. canceled meanwhile), with the seconds of each stage
        (``STAGES``) and the CPU seconds of each (``CPU_STAGES``)."""
        return self._to_final(job_id, JobState.DONE, (frames, inference_s, fps), finished_at=time.time(),
                              inference_s=inference_s, fps=fps, frames=frames or None, **stage_fields(stages, cpu),
                              **metrics)

    def fail(self, job_id: str, error: str) -> Ended:
        """Mark failed with ``error`` (unless already final)."""
        return self._to_final(job_id, JobState.FAILED, finished_at=time.time(), error=error)

    def cancel(self, job_id: str) -> Ended:
        """Mark canceled unless final."""
        return self._to_final(job_id, JobState.CANCELED, finished_at=time.time(), note="canceled by the user")

    def reset_for_retry(self, job_id: str, retry: int, entry: str) -> int:
        """Back to queued as retry number ``retry``, queueing ``entry`` (its first task's message,
        built for that number) in the same step: the new retry number, 0 if the job is not
        failed or canceled (or was retried meanwhile), -1 if there is no record."""
        return int(self.scripts.job_retry(keys=[keys.job(job_id)], args=[time.time(), retry, entry]))
