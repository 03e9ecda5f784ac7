"""Settings: one typed, immutable object read from the environment (and an optional ``.env``).

Both the producer and the workers build their view of the world from ``Settings.from_env()``:

=============================  =============================================  ==========================
variable                       meaning                                        default
=============================  =============================================  ==========================
``SEGQ_REDIS_URL``             broker, result backend and job records;        ``redis://127.0.0.1:6379/0``
                               ``redis://:password@host:port/db``;
                               ``rediss://`` for TLS
``SEGQ_S3_ENDPOINT_URL``       S3-compatible endpoint (MinIO, SeaweedFS...);  AWS
                               empty for AWS S3
``SEGQ_S3_BUCKET``             bucket for inputs and outputs                  ``segq``
``SEGQ_S3_REGION``             region of the bucket                           ``us-east-1``
``SEGQ_MODELS``                the models the fleet serves:                   the article's checkpoints
                               ``name=checkpoint,...``; a checkpoint is a     (``segq.defaults.MODELS``)
                               Hugging Face id or a local folder
``SEGQ_TASK_MODELS``           model used when a job names none:              ``semantic=ade-semantic,``
                               ``task=name,...``                              ``instance=coco-instance,``
                                                                              ``panoptic=coco-panoptic``
``SEGQ_MAX_IMAGE_PIXELS``      larger images are refused (bomb guard)         40000000
``SEGQ_MAX_INPUT_BYTES``       larger input files are refused                 268435456 (256 MiB)
``SEGQ_MAX_VIDEO_FRAMES``      longer videos are refused                      108000 (1 h at 30 fps)
``SEGQ_JOB_TTL``               seconds a job record is kept                   604800 (7 days)
``SEGQ_PRESIGN_EXPIRES``       seconds presigned output URLs stay valid       3600
``SEGQ_VISIBILITY_TIMEOUT``    seconds before an unacked task is redelivered  14400
``SEGQ_TASK_RETRIES``          retries of transient failures                  3
``SEGQ_FLOWER_URL``            Flower's address, for links from ``segq status``  none
``SEGQ_ENV_FILE``              the ``.env`` file to read                      ``./.env``
=============================  =============================================  ==========================

S3 credentials come from boto3's normal chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles, ...); segq never stores them.
Variables set in the environment win over the ``.env`` file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from segq import defaults
from segq.errors import ConfigError, UnknownModel, UnknownTask
from segq.protocol import TASKS


def _parse_mapping(var: str, raw: str) -> dict[str, str]:
    """``a=b,c=d`` (or a JSON object) -> ``{"a": "b", "c": "d"}``."""
    raw = raw.strip()
    if not raw:
        return {}
    if raw.startswith("{"):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{var}: not valid JSON ({exc})") from None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{var}: expected a JSON object of strings")
        return {str(k).strip(): v.strip() for k, v in value.items()}
    out: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"{var}: expected name=value pairs separated by commas, got {item!r}")
        out[name.strip()] = value.strip()
    return out


def _parse_int(var: str, raw: str, minimum: int = 1) -> int:
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ConfigError(f"{var}: expected a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{var}: must be at least {minimum}, got {value}")
    return value


def load_env_file(path: Path | None = None) -> None:
    """Load ``.env`` (or ``SEGQ_ENV_FILE``) into ``os.environ``; variables already set win.

    It goes into the process environment, not only into Settings, so that boto3's credential
    chain sees ``AWS_*`` variables written there too.
    """
    path = path or Path(os.environ.get("SEGQ_ENV_FILE", ".env"))
    if path.is_file():
        from dotenv import load_dotenv

        load_dotenv(path, override=False)


@dataclass(frozen=True)
class Settings:
    redis_url: str = defaults.REDIS_URL
    s3_endpoint_url: str | None = None
    s3_bucket: str = defaults.S3_BUCKET
    s3_region: str = defaults.S3_REGION
    models: Mapping[str, str] = field(default_factory=lambda: dict(defaults.MODELS))
    task_models: Mapping[str, str] = field(default_factory=lambda: dict(defaults.TASK_MODELS))
    max_image_pixels: int = defaults.MAX_IMAGE_PIXELS
    max_input_bytes: int = defaults.MAX_INPUT_BYTES
    max_video_frames: int = defaults.MAX_VIDEO_FRAMES
    job_ttl_seconds: int = defaults.JOB_TTL_SECONDS
    presign_seconds: int = defaults.PRESIGN_SECONDS
    visibility_timeout_seconds: int = defaults.VISIBILITY_TIMEOUT_SECONDS
    task_retries: int = defaults.TASK_RETRIES
    flower_url: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Read settings from ``environ`` (default: ``os.environ`` over ``./.env``)."""
        if environ is None:
            load_env_file()
            environ = os.environ
        get = lambda name: (environ.get(name) or "").strip()  # noqa: E731

        kwargs: dict = {}
        if get("SEGQ_REDIS_URL"):
            kwargs["redis_url"] = get("SEGQ_REDIS_URL")
        if get("SEGQ_S3_ENDPOINT_URL"):
            kwargs["s3_endpoint_url"] = get("SEGQ_S3_ENDPOINT_URL")
        if get("SEGQ_S3_BUCKET"):
            kwargs["s3_bucket"] = get("SEGQ_S3_BUCKET")
        region = get("SEGQ_S3_REGION") or get("AWS_DEFAULT_REGION") or get("AWS_REGION")
        if region:
            kwargs["s3_region"] = region
        if get("SEGQ_MODELS"):
            kwargs["models"] = _parse_mapping("SEGQ_MODELS", get("SEGQ_MODELS"))
        if get("SEGQ_TASK_MODELS"):
            kwargs["task_models"] = {
                **defaults.TASK_MODELS,
                **_parse_mapping("SEGQ_TASK_MODELS", get("SEGQ_TASK_MODELS")),
            }
        for attr, var in (
            ("max_image_pixels", "SEGQ_MAX_IMAGE_PIXELS"),
            ("max_input_bytes", "SEGQ_MAX_INPUT_BYTES"),
            ("max_video_frames", "SEGQ_MAX_VIDEO_FRAMES"),
            ("job_ttl_seconds", "SEGQ_JOB_TTL"),
            ("presign_seconds", "SEGQ_PRESIGN_EXPIRES"),
            ("visibility_timeout_seconds", "SEGQ_VISIBILITY_TIMEOUT"),
        ):
            if get(var):
                kwargs[attr] = _parse_int(var, get(var))
        if get("SEGQ_FLOWER_URL"):
            kwargs["flower_url"] = get("SEGQ_FLOWER_URL").rstrip("/")
        if get("SEGQ_TASK_RETRIES"):
            kwargs["task_retries"] = _parse_int("SEGQ_TASK_RETRIES", get("SEGQ_TASK_RETRIES"), minimum=0)
        settings = cls(**kwargs)
        settings.validate()
        return settings

    def validate(self) -> None:
        scheme = urlsplit(self.redis_url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"SEGQ_REDIS_URL: expected redis://, rediss:// or unix://, got {self.redis_url!r}"
            )
        if self.s3_endpoint_url and urlsplit(self.s3_endpoint_url).scheme not in ("http", "https"):
            raise ConfigError(f"SEGQ_S3_ENDPOINT_URL: expected an http(s) URL, got {self.s3_endpoint_url!r}")
        if not self.models:
            raise ConfigError("SEGQ_MODELS: no models configured")
        for task in self.task_models:
            if task not in TASKS:
                raise ConfigError(f"SEGQ_TASK_MODELS: unknown task {task!r} (tasks: {', '.join(TASKS)})")

    def with_overrides(self, **changes) -> "Settings":
        return replace(self, **changes)

    def resolve_model(self, task: str, model: str | None) -> str:
        """The model name a job of ``task`` uses; raises a clear error for unknown names."""
        if task not in TASKS:
            raise UnknownTask(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
        name = model or self.task_models.get(task)
        if not name:
            raise UnknownModel(f"no default model for task {task!r}: pass --model or set SEGQ_TASK_MODELS")
        if name not in self.models:
            served = ", ".join(sorted(self.models)) or "none"
            raise UnknownModel(
                f"unknown model {name!r}: the fleet serves {served} (configure more with SEGQ_MODELS)"
            )
        return name

    @property
    def redis_uses_tls(self) -> bool:
        return self.redis_url.startswith("rediss://")
