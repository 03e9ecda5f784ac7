"""The wire contract between producer and workers: task names, queues, task ids and JSON payloads.

Messages carry only small JSON documents (ids, S3 keys, options); images, frames and masks
travel through S3. Both sides build and parse payloads with the classes below, so a field is
named in exactly one place, and both refuse what a worker must never be asked to do (an unknown
task, an over-size batch or chunk).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any

from segq.states import PRIORITIES, Priority

#: The segmentation tasks a job can ask for.
TASKS = ("semantic", "instance", "panoptic")

#: Version of the payload schema; a worker refuses payloads of a version it does not know.
PAYLOAD_VERSION = 1

#: Celery task names: the only tasks a segq worker runs (``segq.transport`` dead-letters others).
#: A batch's images run in shards (``segq.shards``); a video is split into chunks.
SEGMENT_SHARD = "segq.segment_shard"
SPLIT_VIDEO = "segq.split_video"
SEGMENT_CHUNK = "segq.segment_chunk"
ASSEMBLE_VIDEO = "segq.assemble_video"
TASK_NAMES = frozenset({SEGMENT_SHARD, SPLIT_VIDEO, SEGMENT_CHUNK, ASSEMBLE_VIDEO})

#: Video defaults: frames per chunk task, frames per forward pass.
DEFAULT_CHUNK_FRAMES = 32
DEFAULT_BATCH_SIZE = 4
#: The largest a request may ask for: a chunk's frames and label maps are held by one worker, a
#: batch's frames go through the model at once (the worker's memory budget, ``segq.settings``).
MAX_CHUNK_FRAMES = 256
MAX_BATCH_SIZE = 32

#: Images in one shard at most: an image id holds its position in 3 hex digits (``image_id``).
MAX_SHARD_IMAGES = 1024
#: Shards in one batch at most: an image id holds its shard in 6 hex digits.
MAX_SHARDS = 16 ** 6

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_MODEL_NAME = re.compile(rf"^{_NAME}$")
_BATCH_NAME = re.compile(rf"^{_NAME}$")
_JOB_ID = re.compile(r"^[0-9a-f]{16}$")
_TASK_ID = re.compile(r"^(?P<job>[0-9a-f]{16})(?:-r(?P<run>[1-9][0-9]{0,5}))?"
                      r"(?:-chunk(?P<chunk>[0-9]{5,6})|-(?P<assemble>assemble))?$")
_SHARD_TASK_ID = re.compile(rf"^shard:(?P<batch>{_NAME}):(?P<shard>[0-9]{{6,8}})$")
_SHARD = re.compile(r"^[0-9]{6,8}$")


class PayloadError(ValueError):
    """A message does not follow the contract (wrong type, missing field, unknown task...)."""


#: Every model's queue is this prefix + the model name.
QUEUE_PREFIX = "segq.model."


def model_queue(model: str) -> str:
    """Each model has its own queue, so a worker only takes jobs for the models it holds."""
    if not _MODEL_NAME.match(model):
        raise PayloadError(
            f"invalid model name {model!r}: letters, digits, '.', '_' and '-' only, up to 64 characters"
        )
    return f"{QUEUE_PREFIX}{model}"


def valid_job_id(job_id: str) -> bool:
    return isinstance(job_id, str) and bool(_JOB_ID.match(job_id))


def batch_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a batch, or None. A name that could be mistaken for a job id (16
    hex digits) is refused, since commands take either."""
    if not isinstance(name, str) or not _BATCH_NAME.match(name):
        return "letters, digits, '.', '_' and '-' only, starting with a letter or digit, up to 64 characters"
    if valid_job_id(name):
        return "16 hex digits would read as a job id"
    return None


def valid_batch_name(name: str) -> bool:
    return batch_name_problem(name) is None


# -- ids: a video job's is random; an image's says where it is (its batch, shard and position) -----
#
# Both are 16 hex digits, so every command takes either. A video job's id starts with 0-7; an
# image's with 8-f: the 7 digits of its batch's namespace (``segq:ns:<ns>`` names the batch),
# then its shard (6 digits) and its position in that shard (3 digits). So an image needs no
# record of its own in Redis to be found: its id leads to its shard, whose state is in Redis and
# whose results are in S3 (``segq.shards``).

def new_job_id() -> str:
    """A video job's id: 16 hex digits, the first one 0-7 (64 random bits but one)."""
    return f"{secrets.randbits(63):016x}"


def new_namespace() -> str:
    """A batch's image-id namespace: 7 hex digits, the first one 8-f."""
    return f"{(1 << 27) | secrets.randbits(27):07x}"


def image_id(namespace: str, shard: int, position: int) -> str:
    if not (0 <= shard < MAX_SHARDS and 0 <= position < MAX_SHARD_IMAGES):
        raise ValueError(f"no image id for shard {shard}, position {position}")
    return f"{namespace}{shard:06x}{position:03x}"


@dataclass(frozen=True)
class ImageRef:
    """Where an image id points: its batch's namespace, its shard and its position there."""

    namespace: str
    shard: int
    position: int


def parse_image_id(job_id: str) -> ImageRef | None:
    """The namespace, shard and position an image id names; None for a video job's id (or no id)."""
    if not valid_job_id(job_id) or job_id[0] < "8":
        return None
    position = int(job_id[13:], 16)
    if position >= MAX_SHARD_IMAGES:
        return None
    return ImageRef(job_id[:7], int(job_id[7:13], 16), position)


# -- task ids: derived from the job, so Flower shows every task under its job -------------------

def run_prefix(job_id: str, run: int = 0) -> str:
    """The task ids of run ``run`` of a job (0: the first; ``segq retry`` N: ``<job>-rN``)."""
    return job_id if not run else f"{job_id}-r{run}"


def first_task_id(job_id: str, run: int = 0) -> str:
    """An image job's task, a video's split: the job id itself (``<job>-rN`` for a retry)."""
    return run_prefix(job_id, run)


def chunk_task_id(job_id: str, run: int, chunk: int) -> str:
    return f"{run_prefix(job_id, run)}-chunk{chunk:05d}"


def assembly_task_id(job_id: str, run: int) -> str:
    return f"{run_prefix(job_id, run)}-assemble"


def shard_name(index: int) -> str:
    """A shard's number as task ids and S3 keys write it: 6 digits at least."""
    return f"{index:06d}"


def shard_task_id(batch: str, index: int) -> str:
    """The task of a batch's shard: ``shard:<batch>:<NNNNNN>`` (Flower shows it under that id)."""
    return f"shard:{batch}:{shard_name(index)}"


@dataclass(frozen=True)
class TaskRef:
    """What a segq task id names: a video job's task (the job, its run, which part), or a batch's
    shard (``batch`` and ``shard``; ``job_id`` empty)."""

    job_id: str
    run: int = 0
    chunk: int | None = None  # a chunk's index
    assembly: bool = False
    batch: str = ""
    shard: int | None = None

    @property
    def is_shard(self) -> bool:
        return self.shard is not None

    @property
    def first(self) -> bool:
        """A video job's first task (its split)."""
        return not self.is_shard and self.chunk is None and not self.assembly


def parse_task_id(task_id: str) -> TaskRef | None:
    """The job, run and part, or the batch and shard, a segq task id names; None when it is not
    one of segq's."""
    m = _SHARD_TASK_ID.match(task_id or "")
    if m:
        return TaskRef("", batch=m["batch"], shard=int(m["shard"]))
    m = _TASK_ID.match(task_id or "")
    if not m:
        return None
    return TaskRef(m["job"], int(m["run"] or 0), int(m["chunk"]) if m["chunk"] else None, bool(m["assemble"]))


# -- payloads ---------------------------------------------------------------------------------

def _check_fields(cls, data: Any, ints: tuple[str, ...] = (), bools: tuple[str, ...] = ()) -> None:
    if not isinstance(data, dict):
        raise PayloadError(f"payload must be a JSON object, got {type(data).__name__}")
    declared = {f.name: f for f in fields(cls)}
    required = sorted(n for n, f in declared.items() if f.default is MISSING and f.default_factory is MISSING)
    missing = [n for n in required if n not in data]
    if missing:
        raise PayloadError(f"payload is missing {', '.join(missing)}")
    unknown = sorted(set(data) - set(declared))
    if unknown:
        raise PayloadError(f"payload has unknown fields {', '.join(str(u)[:40] for u in unknown[:5])}")
    optional_strings = {"batch"}
    for name in set(declared) - {"version"} - set(ints) - set(bools):
        if name not in data:
            continue
        value = data[name]
        if not isinstance(value, str) or (not value and name not in optional_strings) or len(value) > 1024:
            raise PayloadError(f"payload field {name!r} must be a non-empty string of at most 1024 characters")
    for name in ints:
        if name not in data:
            continue
        lowest = -1 if name == "chunk" else 0  # chunk -1: the job as a whole (split, assembly)
        value = data[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < lowest or value > 10**9:
            raise PayloadError(f"payload field {name!r} must be a whole number from {lowest} to 10^9")
    for name in bools:
        if name in data and not isinstance(data[name], bool):
            raise PayloadError(f"payload field {name!r} must be true or false")
    version = data.get("version", PAYLOAD_VERSION)
    if version != PAYLOAD_VERSION:
        raise PayloadError(f"payload version {str(version)[:20]!r} is not supported (this worker speaks {PAYLOAD_VERSION})")
    if "job_id" in declared and not valid_job_id(data["job_id"]):
        raise PayloadError("invalid job id (expected 16 hex digits)")
    if "task" in data and data["task"] not in TASKS:
        raise PayloadError(f"unknown task {data['task'][:40]!r}: choose one of {', '.join(TASKS)}")
    if data.get("priority", Priority.NORMAL) not in PRIORITIES:
        raise PayloadError(f"unknown priority: choose one of {', '.join(PRIORITIES)}")
    if data.get("batch") and not valid_batch_name(data["batch"]):
        raise PayloadError("invalid batch name")
    if "model" in data and not _MODEL_NAME.match(data["model"]):
        raise PayloadError("invalid model name")


def chunk_ranges(frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    """A video's chunks: ``[start, end)`` ranges of ``chunk_frames`` frames; the last one may be
    shorter. The split step plans them; the watchdog rebuilds a lost chunk's message from them."""
    return [(s, min(s + chunk_frames, frames)) for s in range(0, frames, max(1, chunk_frames))]


def _fields_of(payload) -> dict[str, Any]:
    """A payload as its JSON object (its fields are plain values: no deep copy needed)."""
    return {f.name: getattr(payload, f.name) for f in fields(payload)}


def check_video_options(chunk_frames: int, batch_size: int) -> None:
    """PayloadError unless a video's chunk and batch sizes are within the protocol's caps."""
    if not 1 <= chunk_frames <= MAX_CHUNK_FRAMES:
        raise PayloadError(f"chunk_frames must be from 1 to {MAX_CHUNK_FRAMES} (got {chunk_frames})")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise PayloadError(f"batch_size must be from 1 to {MAX_BATCH_SIZE} (got {batch_size})")


@dataclass(frozen=True)
class ShardJob:
    """Payload of ``segq.segment_shard``: segment the images of shard ``shard`` of ``batch``
    (their list is in S3: ``segq.layout.shard_spec_key``). ``shard`` is the shard's number as
    ``shard_name`` writes it (a string, so that the scheduler fills it into a message built
    ahead: ``segq.messages.template``)."""

    batch: str
    shard: str
    task: str
    model: str
    priority: str = Priority.NORMAL.value
    version: int = PAYLOAD_VERSION

    def to_message(self) -> dict[str, Any]:
        return _fields_of(self)

    @property
    def index(self) -> int:
        return int(self.shard)

    @property
    def task_id(self) -> str:
        return shard_task_id(self.batch, self.index)

    @classmethod
    def from_message(cls, data: Any) -> "ShardJob":
        _check_fields(cls, data)
        if not valid_batch_name(data["batch"]):
            raise PayloadError("invalid batch name")
        if not _SHARD.match(data["shard"]) or int(data["shard"]) >= MAX_SHARDS:
            raise PayloadError(f"shard must be 6 to 8 digits below {MAX_SHARDS}")
        return cls(**data)


@dataclass(frozen=True)
class VideoJob:
    """Payload of ``segq.split_video``, ``segq.segment_chunk`` and ``segq.assemble_video``.

    The split step gets it with ``chunk = -1``; each chunk task gets its own index and frame range
    ``[start, end)`` in presentation order; assembly gets it back with ``chunk = -1``.
    """

    job_id: str
    task: str
    model: str
    input_bucket: str
    input_key: str
    chunk_frames: int = DEFAULT_CHUNK_FRAMES
    batch_size: int = DEFAULT_BATCH_SIZE
    annotate_fps: bool = False
    chunk: int = -1
    start: int = 0
    end: int = 0
    batch: str = ""
    priority: str = Priority.NORMAL.value
    run: int = 0
    version: int = PAYLOAD_VERSION

    def to_message(self) -> dict[str, Any]:
        return _fields_of(self)

    def for_chunk(self, index: int, start: int, end: int) -> "VideoJob":
        return replace(self, chunk=index, start=start, end=end)

    @property
    def task_id(self) -> str:
        """This payload's task: the split (chunk -1, before chunks), a chunk, or assembly (use
        ``assembly_task_id``: assembly and split share chunk -1)."""
        return first_task_id(self.job_id, self.run) if self.chunk < 0 else chunk_task_id(self.job_id, self.run, self.chunk)

    @classmethod
    def from_message(cls, data: Any) -> "VideoJob":
        _check_fields(cls, data, ints=("chunk_frames", "batch_size", "chunk", "start", "end", "run"),
                      bools=("annotate_fps",))
        check_video_options(data.get("chunk_frames", DEFAULT_CHUNK_FRAMES), data.get("batch_size", DEFAULT_BATCH_SIZE))
        if data.get("end", 0) < data.get("start", 0):
            raise PayloadError("chunk end is before its start")
        if data.get("end", 0) - data.get("start", 0) > MAX_CHUNK_FRAMES:
            raise PayloadError(f"a chunk spans at most {MAX_CHUNK_FRAMES} frames")
        return cls(**data)
