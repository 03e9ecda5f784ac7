"""The wire contract between producer and workers: task names, queues and JSON payloads.

Messages carry only small JSON documents (ids, S3 keys, options); images, frames and masks
travel through S3. Both sides build and parse payloads with the classes below, so a field is
named in exactly one place.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

#: The segmentation tasks a job can ask for.
TASKS = ("semantic", "instance", "panoptic")

#: Version of the payload schema; a worker refuses payloads of a version it does not know.
PAYLOAD_VERSION = 1

#: Celery task names.
SEGMENT_IMAGE = "segq.segment_image"
SPLIT_VIDEO = "segq.split_video"
SEGMENT_CHUNK = "segq.segment_chunk"
ASSEMBLE_VIDEO = "segq.assemble_video"

#: Video defaults: frames per chunk task, frames per forward pass.
DEFAULT_CHUNK_FRAMES = 32
DEFAULT_BATCH_SIZE = 4

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_JOB_ID = re.compile(r"^[0-9a-f]{16}$")


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
    return bool(_JOB_ID.match(job_id))


def _check_fields(cls, data: Any, ints: tuple[str, ...] = (), bools: tuple[str, ...] = ()) -> None:
    if not isinstance(data, dict):
        raise PayloadError(f"payload must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    missing = sorted(n for n in names - {"version"} if n not in data)
    if missing:
        raise PayloadError(f"payload is missing {', '.join(missing)}")
    unknown = sorted(set(data) - names)
    if unknown:
        raise PayloadError(f"payload has unknown fields {', '.join(unknown)}")
    for name in names - {"version"} - set(ints) - set(bools):
        if not isinstance(data[name], str) or not data[name]:
            raise PayloadError(f"payload field {name!r} must be a non-empty string")
    for name in ints:
        lowest = -1 if name == "chunk" else 0  # chunk -1: the job as a whole (split, assembly)
        if not isinstance(data[name], int) or isinstance(data[name], bool) or data[name] < lowest:
            raise PayloadError(f"payload field {name!r} must be a whole number >= {lowest}")
    for name in bools:
        if not isinstance(data[name], bool):
            raise PayloadError(f"payload field {name!r} must be true or false")
    version = data.get("version", PAYLOAD_VERSION)
    if version != PAYLOAD_VERSION:
        raise PayloadError(f"payload version {version!r} is not supported (this worker speaks {PAYLOAD_VERSION})")
    if not valid_job_id(data["job_id"]):
        raise PayloadError(f"invalid job id {data['job_id']!r}")
    if "task" in data and data["task"] not in TASKS:
        raise PayloadError(f"unknown task {data['task']!r}: choose one of {', '.join(TASKS)}")


@dataclass(frozen=True)
class ImageJob:
    """Payload of ``segq.segment_image``: segment one image stored in S3."""

    job_id: str
    task: str
    model: str
    input_bucket: str
    input_key: str
    version: int = PAYLOAD_VERSION

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, data: Any) -> "ImageJob":
        _check_fields(cls, data)
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
    version: int = PAYLOAD_VERSION

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    def for_chunk(self, index: int, start: int, end: int) -> "VideoJob":
        return replace(self, chunk=index, start=start, end=end)

    @classmethod
    def from_message(cls, data: Any) -> "VideoJob":
        _check_fields(cls, data, ints=("chunk_frames", "batch_size", "chunk", "start", "end"), bools=("annotate_fps",))
        if data["chunk_frames"] < 1 or data["batch_size"] < 1:
            raise PayloadError("chunk_frames and batch_size must be at least 1")
        if data["end"] < data["start"]:
            raise PayloadError("chunk end is before its start")
        return cls(**data)
