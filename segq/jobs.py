"""The job record: one Redis hash per job, written by the producer and the workers.

States move ``queued -> running -> done | failed``. ``done`` and ``failed`` are final: a
redelivered message for a finished job is acknowledged without running again, which makes
every task idempotent from the record's point of view.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Iterable

import redis

from segq import keys
from segq.errors import JobNotFound

class JobState(StrEnum):
    """Where a job is. ``done`` and ``failed`` are final."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELED})


class JobKind(StrEnum):
    """What a job segments: one image, or a video (split into chunks)."""

    IMAGE = "image"
    VIDEO = "video"


def redis_client(url: str, *, patient: bool = True) -> redis.Redis:
    """A Redis client for job records and worker state. ``patient``: every command rides out a
    short outage (a Redis restart, a failover) by reconnecting with exponential backoff for about
    half a minute before it raises, instead of failing at the first refused connection."""
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.retry import Retry

    options: dict = {"decode_responses": True, "health_check_interval": 30, "socket_keepalive": True}
    if patient:
        options["retry"] = Retry(ExponentialBackoff(cap=4.0, base=0.25), 10)
        options["retry_on_error"] = [RedisConnectionError, RedisTimeoutError]
    return redis.Redis.from_url(url, **options)


def new_job_id() -> str:
    """16 hex characters (64 random bits)."""
    return secrets.token_hex(8)


@dataclass
class JobRecord:
    id: str
    kind: str  # a JobKind
    task: str
    model: str
    input: str  # s3://bucket/key
    state: str = JobState.QUEUED.value
    source: str = ""  # what the user submitted (display only; never used as a key)
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
    outputs: list[str] = field(default_factory=list)  # S3 keys in the segq bucket
    # video jobs
    frames_total: int | None = None
    frames_done: int | None = None
    chunks_total: int | None = None
    chunks_done: int | None = None
    chunk_frames: int | None = None
    batch_size: int | None = None
    video_fps: float | None = None  # the input's frame rate
    e2e_fps: float | None = None  # frames / wall time from the split's start to assembly's end
    split_s: float | None = None
    assemble_s: float | None = None
    assemblies: int | None = None  # times assembly ran (1 unless a worker died during it)
    retry: int | None = None  # `segq retry` count: 0 for the first run
    requeues: int | None = None  # tasks of the job put back after their worker died
    note: str = ""  # the last thing that happened to the job besides its state (requeue, retry...)
    payload: str = ""  # the first task's message (JSON), as sent: `segq retry` sends it again

    _INTS = ("frames", "width", "height", "segments", "attempts", "frames_total", "frames_done",
             "chunks_total", "chunks_done", "chunk_frames", "batch_size", "assemblies", "retry", "requeues")
    _FLOATS = ("created_at", "started_at", "finished_at", "queue_wait_s", "inference_s", "total_s", "fps",
               "video_fps", "e2e_fps", "split_s", "assemble_s")

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def is_video(self) -> bool:
        return self.kind == JobKind.VIDEO

    def to_hash(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = json.dumps(value) if f.name == "outputs" else str(value)
        return out

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> "JobRecord":
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, raw in data.items():
            if name not in known:
                continue
            if name == "outputs":
                kwargs[name] = json.loads(raw) if raw else []
            elif name in cls._INTS:
                kwargs[name] = int(float(raw))
            elif name in cls._FLOATS:
                kwargs[name] = float(raw)
            else:
                kwargs[name] = raw
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# Atomically move a job to "running" unless it is already final. Returns 1 if started, 0 if
# the job is final (the caller skips the work), -1 if the record does not exist.
_START = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state == 'done' or state == 'failed' or state == 'canceled' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'running', 'started_at', ARGV[1], 'worker', ARGV[2],
           'device', ARGV[3], 'queue_wait_s', ARGV[4], 'error', '')
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return 1
"""


# A chunk of a video job finished. Records it once (a chunk delivered twice counts once) and
# tells the caller whether it completed the set and so must start assembly: exactly one caller
# ever gets 2. KEYS: job hash, chunk set, chunk info hash. ARGV: index, frames, info JSON,
# inference seconds, ttl, now, grace, task id. Returns 0 (duplicate), 1 (recorded), 2 (recorded,
# start assembly), 3 (duplicate of a complete set whose assembly was claimed and never sent, and
# either this is the claiming task run again (its first run died before sending: a requeue) or
# the claim is over `grace` seconds old: send it). Another task's duplicate arriving while the
# claimer is still sending gets 0, so assembly is not sent twice.
_CHUNK_DONE = """
local added = redis.call('SADD', KEYS[2], ARGV[1])
if added == 1 then
  redis.call('HINCRBY', KEYS[1], 'frames_done', ARGV[2])
  redis.call('HINCRBYFLOAT', KEYS[1], 'inference_s', ARGV[4])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
local done = redis.call('SCARD', KEYS[2])
redis.call('HSET', KEYS[1], 'chunks_done', done)
local total = tonumber(redis.call('HGET', KEYS[1], 'chunks_total') or '-1')
if done ~= total then return added end
if redis.call('HSETNX', KEYS[1], 'assembly_claimed', ARGV[8] .. '|' .. ARGV[6]) == 1 then return 2 end
if added == 0 and redis.call('HEXISTS', KEYS[1], 'assembly_sent') == 0 then
  local claim = redis.call('HGET', KEYS[1], 'assembly_claimed')
  local sep = string.find(claim, '|', 1, true)
  local by, at = '', 0
  if sep then by = string.sub(claim, 1, sep - 1); at = tonumber(string.sub(claim, sep + 1)) or 0 end
  if by == ARGV[8] or tonumber(ARGV[6]) - at > tonumber(ARGV[7]) then return 3 end
end
return added
"""

CHUNK_DUPLICATE, CHUNK_RECORDED, START_ASSEMBLY, RESEND_ASSEMBLY = 0, 1, 2, 3
#: A duplicate of a chunk resends the assembly only when its claim is this old and still unsent
#: (its sender died between claiming and sending); sooner, the claimer is still sending it.
RESEND_GRACE_SECONDS = 60


# Move a job to a final state unless it already is in one (a canceled job stays canceled even if
# its last task finishes afterwards), and let the record expire TTL seconds after its end.
# KEYS: job hash. ARGV: state, ttl, then field/value pairs. Returns 1 if moved, 0 if already
# final, -1 if there is no record.
_END = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state == 'done' or state == 'failed' or state == 'canceled' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# Back to queued for `segq retry`: only from failed or canceled. Clears the progress of the
# last run. KEYS: job hash, chunk set, chunk info, losses. ARGV: now. Returns the new retry
# number, or 0 when the job is not failed or canceled, -1 when there is no record.
_RETRY = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state ~= 'failed' and state ~= 'canceled' then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'retry', 1)
redis.call('HDEL', KEYS[1], 'error', 'finished_at', 'started_at', 'outputs', 'frames_done', 'chunks_done',
           'inference_s', 'fps', 'e2e_fps', 'total_s', 'assembly_claimed', 'assembly_sent', 'assemblies',
           'split_s', 'assemble_s', 'segments', 'worker', 'device', 'queue_wait_s')
redis.call('HSET', KEYS[1], 'state', 'queued', 'created_at', ARGV[1],
           'note', 'retry ' .. n .. ' (was ' .. state .. ')')
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
return n
"""


class JobStore:
    """Reads and writes job records. Used by the producer and by the workers."""

    def __init__(self, client: redis.Redis, ttl_seconds: int):
        self.r = client
        self.ttl = ttl_seconds
        self._start = self.r.register_script(_START)
        self._chunk_done = self.r.register_script(_CHUNK_DONE)
        self._end = self.r.register_script(_END)
        self._retry = self.r.register_script(_RETRY)

    @classmethod
    def from_url(cls, url: str, ttl_seconds: int) -> "JobStore":
        return cls(redis_client(url), ttl_seconds)

    # -- producer side -------------------------------------------------------------------
    def create(self, record: JobRecord) -> None:
        if not record.created_at:
            record.created_at = time.time()
        key = keys.job(record.id)
        pipe = self.r.pipeline()
        pipe.hset(key, mapping=record.to_hash())
        pipe.expire(key, self.ttl)
        pipe.zadd(keys.JOBS_INDEX, {record.id: record.created_at})
        pipe.zremrangebyscore(keys.JOBS_INDEX, "-inf", record.created_at - self.ttl)
        pipe.execute()

    def get(self, job_id: str) -> JobRecord:
        data = self.r.hgetall(keys.job(job_id))
        if not data:
            raise JobNotFound(f"no job {job_id!r} (unknown id, or its record expired)")
        return JobRecord.from_hash(data)

    def get_many(self, job_ids: Iterable[str]) -> list[JobRecord | None]:
        ids = list(job_ids)
        pipe = self.r.pipeline()
        for job_id in ids:
            pipe.hgetall(keys.job(job_id))
        return [JobRecord.from_hash(d) if d else None for d in pipe.execute()]

    def recent(self, limit: int = 20) -> list[JobRecord]:
        ids = self.r.zrevrange(keys.JOBS_INDEX, 0, max(limit, 1) - 1)
        return [rec for rec in self.get_many(ids) if rec is not None]

    # -- worker side ---------------------------------------------------------------------
    def start(self, job_id: str, worker: str, device: str) -> bool | None:
        """Mark running. False: the job is already final (skip it). None: no such record."""
        now = time.time()
        created = self.r.hget(keys.job(job_id), "created_at")
        wait = max(0.0, now - float(created)) if created else 0.0
        result = self._start(keys=[keys.job(job_id)], args=[now, worker, device, round(wait, 6)])
        if result == -1:
            return None
        return bool(result)

    def state(self, job_id: str) -> str | None:
        return self.r.hget(keys.job(job_id), "state")

    def exists(self, job_id: str) -> bool:
        return bool(self.r.exists(keys.job(job_id)))

    def final_or_gone(self, job_id: str) -> bool:
        """True when a follow-up task of the job has nothing to do (the job ended, or expired)."""
        state = self.state(job_id)
        return state is None or state in FINAL_STATES

    def count_assembly(self, job_id: str) -> int:
        """One more run of a video job's assembly (``assemblies``: 1 unless a worker died in it)."""
        return int(self.r.hincrby(keys.job(job_id), "assemblies", 1))

    def assembly_sent(self, job_id: str) -> None:
        """The assembly message was sent (see ``RESEND_ASSEMBLY``)."""
        self.r.hset(keys.job(job_id), "assembly_sent", 1)

    def chunk_done(self, job_id: str, index: int, frames: int, inference_s: float, info: dict,
                   task_id: str = "") -> int:
        """Record a finished chunk; returns one of CHUNK_DUPLICATE, CHUNK_RECORDED, START_ASSEMBLY,
        RESEND_ASSEMBLY (see _CHUNK_DONE). ``task_id``: the Celery task that ran it."""
        return int(self._chunk_done(
            keys=[keys.job(job_id), keys.job_chunks(job_id), keys.job_chunk_info(job_id)],
            args=[index, frames, json.dumps(info), inference_s, self.ttl, time.time(), RESEND_GRACE_SECONDS,
                  task_id or f"chunk{index}"],
        ))

    def chunk_infos(self, job_id: str) -> dict[int, dict]:
        return {int(k): json.loads(v) for k, v in self.r.hgetall(keys.job_chunk_info(job_id)).items()}

    def update(self, job_id: str, **values: Any) -> None:
        mapping = {
            k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in values.items() if v is not None
        }
        if mapping:
            self.r.hset(keys.job(job_id), mapping=mapping)

    def _to_final(self, job_id: str, state: JobState, **values: Any) -> bool:
        args: list = [state.value, self.ttl]
        for k, v in values.items():
            if v is not None:
                args += [k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)]
        moved = self._end(keys=[keys.job(job_id)], args=args) == 1
        if moved:
            for key in (keys.job_chunks(job_id), keys.job_chunk_info(job_id)):
                self.r.expire(key, self.ttl)
        return moved

    def finish(self, job_id: str, **metrics: Any) -> bool:
        """Mark done (unless already final, e.g. canceled meanwhile). True if it was marked."""
        moved = self._to_final(job_id, JobState.DONE, finished_at=time.time(), **metrics)
        if moved:
            self._count(job_id, JobState.DONE, metrics)
        return moved

    def fail(self, job_id: str, error: str) -> bool:
        """Mark failed with ``error`` (unless already final). True if it was marked."""
        moved = self._to_final(job_id, JobState.FAILED, finished_at=time.time(), error=error)
        if moved:
            self._count(job_id, JobState.FAILED, {})
        return moved

    def cancel(self, job_id: str) -> bool:
        """Mark canceled unless final. True if it was canceled now (False: it already ended)."""
        moved = self._to_final(job_id, JobState.CANCELED, finished_at=time.time(), note="canceled by the user")
        if moved:
            self._count(job_id, JobState.CANCELED, {})
        return moved

    def reset_for_retry(self, job_id: str) -> int:
        """Back to queued for another run; the new retry number, 0 if the job is not failed or
        canceled, -1 if there is no record."""
        n = int(self._retry(keys=[keys.job(job_id), keys.job_chunks(job_id), keys.job_chunk_info(job_id),
                                  keys.job_losses(job_id)], args=[time.time()]))
        if n > 0:
            self.r.expire(keys.job(job_id), self.ttl)
        return n

    def requeued(self, job_id: str, note: str) -> None:
        """A task of the job was put back on its queue after its worker died."""
        pipe = self.r.pipeline()
        pipe.hincrby(keys.job(job_id), "requeues", 1)
        pipe.hset(keys.job(job_id), "note", note)
        pipe.execute()

    def _count(self, job_id: str, state: str, metrics: dict) -> None:
        """Fleet-wide counters behind the Prometheus metrics (keys.STATS)."""
        kind, model = self.r.hmget(keys.job(job_id), "kind", "model")
        kind, model = kind or "unknown", model or "unknown"
        pipe = self.r.pipeline()
        pipe.hincrby(keys.STATS, keys.stat_field(keys.STAT_JOBS, state, kind, model), 1)
        if state == JobState.DONE:
            pipe.hincrby(keys.STATS, keys.stat_field(keys.STAT_FRAMES, model), int(metrics.get("frames") or 0))
            pipe.hincrbyfloat(keys.STATS, keys.stat_field(keys.STAT_INFERENCE, model), float(metrics.get("inference_s") or 0.0))
            if metrics.get("fps"):
                pipe.hset(keys.STATS, keys.stat_field(keys.STAT_LAST_FPS, kind, model), metrics["fps"])
        pipe.execute()
