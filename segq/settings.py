"""Settings: one typed, immutable object read from the environment (and an optional ``.env``).

Both the producer and the workers build their view of the world from ``Settings.from_env()``.
Every setting is a field of :class:`Settings` whose metadata names its environment variable,
its parser and its documentation: that field list is the only place a variable is defined.
``variables()`` lists them (the README's table and the deployment checks are built from it;
``segq config --markdown`` prints the table).

S3 credentials come from boto3's normal chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles, ...); segq never stores them.
Variables set in the environment win over the ``.env`` file (``SEGQ_ENV_FILE``, default
``./.env``).
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from segq import defaults, input_policy
from segq.errors import ConfigError, UnknownModel, UnknownTask
from segq.protocol import MAX_SHARD_IMAGES, TASKS

#: The variable that names the ``.env`` file; read before every other setting.
ENV_FILE_VARIABLE = "SEGQ_ENV_FILE"

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
#: transformers' two Mask2Former image processors: PIL/numpy, or torchvision. They resize
#: differently, so one fleet must use one of them for every job (and chunk) alike.
IMAGE_PROCESSORS = ("pil", "torchvision")
#: Post-processing implementations: segq's exact fast path, or transformers' own functions.
POSTPROCESSORS = ("fast", "reference")
#: ``torch.compile`` of the worker's models: off (eager), or one of torch.compile's modes.
#: ``reduce-overhead`` and ``max-autotune`` also capture CUDA graphs on a GPU.
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


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
    path = path or Path(os.environ.get(ENV_FILE_VARIABLE, ".env"))
    if path.is_file():
        from dotenv import load_dotenv

        load_dotenv(path, override=False)


def _choice(options: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(var: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ConfigError(f"{var}: expected one of {', '.join(options)}, got {raw!r}")
        return value

    return parse


def _parse_list(var: str, raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _parse_str(var: str, raw: str) -> str:
    return raw


def _parse_url(var: str, raw: str) -> str:
    return raw.rstrip("/")


def _parse_count(var: str, raw: str) -> int:
    return _parse_int(var, raw, minimum=0)


def _parse_auto_count(var: str, raw: str) -> int:
    """``auto`` (0) or a count of at least 1."""
    return 0 if raw.strip().lower() in ("auto", "0", "") else _parse_int(var, raw, minimum=1)


def _parse_bool(var: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{var}: expected 1 or 0, got {raw!r}")


def _parse_seconds(var: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{var}: expected a number of seconds, got {raw!r}") from None
    if not 0 < value <= 3600:
        raise ConfigError(f"{var}: must be more than 0 and at most 3600, got {raw!r}")
    return value


def _parse_shard_images(var: str, raw: str) -> int:
    value = _parse_int(var, raw)
    if value > MAX_SHARD_IMAGES:
        raise ConfigError(f"{var}: at most {MAX_SHARD_IMAGES} (an image id holds its position in 3 hex digits)")
    return value


def _from(f, environ: Mapping[str, str]) -> Any:
    """Field ``f`` of the settings parsed from ``environ``; ``MISSING`` when its variable is unset
    or empty (``s3_region`` falls back to ``AWS_DEFAULT_REGION`` / ``AWS_REGION`` as boto3 does)."""
    raw = (environ.get(f.metadata["env"]) or "").strip()
    if f.name == "s3_region" and not raw:
        raw = (environ.get("AWS_DEFAULT_REGION") or environ.get("AWS_REGION") or "").strip()
    return f.metadata["parse"](f.metadata["env"], raw) if raw else MISSING


def setting(var: str, default: Any, doc: str, parse: Callable[[str, str], Any] = _parse_str,
            shown_default: str | None = None, side: str = "both") -> Any:
    """A field of :class:`Settings` read from ``var``. ``side``: who reads it (producer, worker, both),
    or ``launcher`` for what ``segq worker`` sets for each process from its options."""
    meta = {"env": var, "doc": doc, "parse": parse, "shown_default": shown_default, "side": side}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Variable:
    name: str  # SEGQ_...
    field: str  # Settings attribute
    default: str  # as shown in docs
    doc: str
    side: str


@dataclass(frozen=True)
class Settings:
    redis_url: str = setting(
        "SEGQ_REDIS_URL", defaults.REDIS_URL,
        "broker and job records: `redis://:password@host:port/db`; `rediss://` for TLS; "
        "`sentinel://:password@host:port,host:port/db?master=NAME` for Redis Sentinel")
    s3_endpoint_url: str | None = setting(
        "SEGQ_S3_ENDPOINT_URL", None, "S3-compatible endpoint (MinIO, SeaweedFS...); empty for AWS S3",
        shown_default="AWS")
    s3_bucket: str = setting("SEGQ_S3_BUCKET", defaults.S3_BUCKET, "bucket for inputs and outputs")
    s3_region: str = setting(
        "SEGQ_S3_REGION", defaults.S3_REGION, "region of the bucket (else `AWS_DEFAULT_REGION`, `AWS_REGION`)")
    models: Mapping[str, str] = setting(
        "SEGQ_MODELS", dict(defaults.MODELS),
        "the models the fleet serves: `name=checkpoint,...` (or a JSON object); a checkpoint is a "
        "Hugging Face id or a local folder", parse=lambda v, r: _parse_mapping(v, r),
        shown_default="the article's Swin-L checkpoints")
    task_models: Mapping[str, str] = setting(
        "SEGQ_TASK_MODELS", dict(defaults.TASK_MODELS),
        "model used when a job names none: `task=name,...`",
        parse=lambda v, r: {**defaults.TASK_MODELS, **_parse_mapping(v, r)},
        shown_default="semantic=ade-semantic, instance=coco-instance, panoptic=coco-panoptic")
    max_image_pixels: int = setting(
        "SEGQ_MAX_IMAGE_PIXELS", defaults.MAX_IMAGE_PIXELS, "larger images (and video frames) are refused: bomb guard",
        parse=_parse_int)
    max_input_bytes: int = setting(
        "SEGQ_MAX_INPUT_BYTES", defaults.MAX_INPUT_BYTES, "larger input files are refused", parse=_parse_int,
        shown_default="268435456 (256 MiB)")
    max_video_frames: int = setting(
        "SEGQ_MAX_VIDEO_FRAMES", defaults.MAX_VIDEO_FRAMES, "longer videos are refused", parse=_parse_int,
        shown_default="108000 (1 h at 30 fps)")
    job_ttl_seconds: int = setting(
        "SEGQ_JOB_TTL", defaults.JOB_TTL_SECONDS,
        "seconds a job record (and a batch, after its last job) is kept after the job ended", parse=_parse_int,
        shown_default="604800 (7 days)")
    presign_seconds: int = setting(
        "SEGQ_PRESIGN_EXPIRES", defaults.PRESIGN_SECONDS, "seconds presigned output URLs stay valid",
        parse=_parse_int)
    visibility_timeout_seconds: int = setting(
        "SEGQ_VISIBILITY_TIMEOUT", defaults.VISIBILITY_TIMEOUT_SECONDS,
        "seconds before Redis redelivers an unacknowledged task", parse=_parse_int)
    task_retries: int = setting(
        "SEGQ_TASK_RETRIES", defaults.TASK_RETRIES,
        "retries of a task after a transient failure (storage or Redis unreachable, 5xx, throttling); "
        "they also stop at `SEGQ_RETRY_BUDGET`", parse=_parse_count)
    retry_budget_seconds: int = setting(
        "SEGQ_RETRY_BUDGET", defaults.RETRY_BUDGET_SECONDS,
        "seconds a job keeps retrying transient failures, from the first one, before it fails",
        parse=_parse_int, shown_default="600 (10 min)")
    heartbeat_seconds: int = setting(
        "SEGQ_HEARTBEAT_SECONDS", defaults.HEARTBEAT_SECONDS,
        "seconds between worker heartbeats; a worker silent for 3 of them is dead and its work is requeued",
        parse=_parse_int)
    max_worker_losses: int = setting(
        "SEGQ_MAX_WORKER_LOSSES", defaults.MAX_WORKER_LOSSES,
        "a task whose worker died this many times fails its job instead of being requeued again",
        parse=_parse_int)
    input_prefixes: tuple[str, ...] = setting(
        "SEGQ_INPUT_PREFIXES", (),
        "where `s3://` inputs may come from: `bucket/prefix,...` (a bucket alone: all of it); never the "
        "segq bucket's `outputs/` or `work/`; checked by `segq submit` and by the workers",
        parse=lambda v, r: input_policy.parse_prefixes(v, r), shown_default="`inputs/` in `SEGQ_S3_BUCKET`")
    retention_days: int = setting(
        "SEGQ_RETENTION_DAYS", 0,
        "days uploaded inputs (`inputs/`) and outputs (`outputs/`) are kept, as S3 lifecycle rules on the "
        "bucket (`segq up` and Compose's `s3-init` set them); 0: kept forever", parse=_parse_count)
    shard_seconds: float = setting(
        "SEGQ_SHARD_SECONDS", 4.0,
        "seconds of work a shard of a batch's images holds, at the fleet's measured speed for the model "
        "(a batch's turn on the fleet is one shard; a submission's first shards are smaller)",
        parse=lambda v, r: _parse_seconds(v, r), side="producer")
    shard_max_images: int = setting(
        "SEGQ_SHARD_MAX_IMAGES", 256, "images in one shard at most (up to 1024)",
        parse=lambda v, r: _parse_shard_images(v, r), side="producer")
    flower_url: str | None = setting(
        "SEGQ_FLOWER_URL", None, "Flower's address, for links from `segq status`", parse=_parse_url,
        shown_default="none", side="producer")
    # -- the worker's own -------------------------------------------------------------------
    worker_models: tuple[str, ...] = setting(
        "SEGQ_WORKER_MODELS", (), "models a worker process loads and serves (`segq worker --models` sets it)",
        parse=_parse_list, shown_default="each task's model", side="launcher")
    worker_threads: int = setting(
        "SEGQ_WORKER_THREADS", 0,
        "CPU cores of a worker process (`segq worker --threads`); 0: its share of the host's usable cores (CPU "
        "affinity, cgroup quota) split evenly between the processes `segq worker` starts",
        parse=_parse_count, side="launcher")
    model_threads: int = setting(
        "SEGQ_MODEL_THREADS", 0,
        "torch threads of a CPU worker's forward passes: `auto` (all of its cores while nothing else wants "
        "them, fewer while other threads wait for a core: docs/fleet.md) or a number", parse=_parse_auto_count,
        shown_default="auto", side="worker")
    worker_concurrency: int = setting(
        "SEGQ_WORKER_CONCURRENCY", 3,
        "tasks a worker process runs at once (threads: one fetching and decoding, one in the model, one "
        "rendering and uploading); every forward pass still runs on the process's one model thread",
        parse=_parse_int, side="worker")
    max_batch: int = setting(
        "SEGQ_MAX_BATCH", 1,
        "forward passes of one model whose inputs have the same shape (images of one size, a video's "
        "frames) run as one batch, up to this many images or frames (never padded: other shapes run "
        "apart); the worker then runs at least this many tasks + 1 at once; 1: every pass alone",
        parse=_parse_int, side="worker")
    batch_delay_ms: int = setting(
        "SEGQ_BATCH_DELAY_MS", 0,
        "with `SEGQ_MAX_BATCH` > 1: milliseconds the model stage waits for more passes to fill a batch; "
        "0: only those already waiting", parse=_parse_count, side="worker")
    worker_pixel_budget: int = setting(
        "SEGQ_WORKER_PIXEL_BUDGET", 0,
        "pixels a worker process's tasks may hold at once (an image its width x height, a video chunk the "
        "frames it holds); a task that does not fit waits for room; 0: `SEGQ_MAX_IMAGE_PIXELS` (the largest "
        "image runs alone)", parse=_parse_count, side="worker")
    precision: str = setting(
        "SEGQ_PRECISION", "auto", "worker precision: `auto` (fp16 on CUDA, fp32 on CPU), `fp32`, `fp16`, `bf16`",
        parse=_choice(PRECISIONS), side="worker")
    image_processor: str = setting(
        "SEGQ_IMAGE_PROCESSOR", "pil",
        "transformers' image processor for every job: `pil` or `torchvision`; they resize differently, "
        "so one fleet must use one", parse=_choice(IMAGE_PROCESSORS), side="worker")
    postprocess: str = setting(
        "SEGQ_POSTPROCESS", "fast",
        "post-processing: `fast` (segq's exact fast path: transformers' label maps but for float near-ties, "
        "without full-size per-class tensors) or `reference` (transformers' own functions)",
        parse=_choice(POSTPROCESSORS), side="worker")
    compile: str = setting(
        "SEGQ_COMPILE", "off",
        "`torch.compile` of the models, opt-in and not yet measured on a GPU (`python -m bench.gpu "
        "--compare-compile` measures it): `off`, `default`, `reduce-overhead` (CUDA graphs on a GPU) or "
        "`max-autotune` (autotuned kernels and CUDA graphs: the longest compile); static shapes: each new "
        "batch size or image size compiles once, at most 16 per worker process, later ones run uncompiled",
        parse=_choice(COMPILE_MODES), side="worker")

    allow_standin: bool = setting(
        "SEGQ_ALLOW_STANDIN", False,
        "`1`: a worker may load the stand-in model (`standin:wait_ms=N` in `SEGQ_MODELS`: a fixed prediction after "
        "a wait, for benchmarks of everything but the model; never for production)", parse=lambda v, r: _parse_bool(v, r),
        shown_default="0", side="worker")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Read settings from ``environ`` (default: ``os.environ`` over ``./.env``)."""
        if environ is None:
            load_env_file()
            environ = os.environ
        kwargs: dict = {}
        for f in fields(cls):
            value = _from(f, environ)
            if value is not MISSING:
                kwargs[f.name] = value
        settings = cls(**kwargs)
        settings.validate()
        return settings

    @classmethod
    def read(cls, name: str, environ: Mapping[str, str] | None = None) -> Any:
        """One setting, the field ``name``, from ``environ`` (default: ``os.environ``), parsed and
        checked as ``from_env`` does; its default when the variable is unset or empty."""
        environ = os.environ if environ is None else environ
        for f in fields(cls):
            if f.name == name:
                value = _from(f, environ)
                if value is not MISSING:
                    return value
                return f.default_factory() if f.default is MISSING else f.default
        raise KeyError(f"no setting {name!r}")

    def validate(self) -> None:
        from segq.connections import parse

        parse(self.redis_url)  # ConfigError naming what is wrong
        if self.s3_endpoint_url and urlsplit(self.s3_endpoint_url).scheme not in ("http", "https"):
            raise ConfigError(f"SEGQ_S3_ENDPOINT_URL: expected an http(s) URL, got {self.s3_endpoint_url!r}")
        if not self.models:
            raise ConfigError("SEGQ_MODELS: no models configured")
        input_policy.check_prefixes(self.input_prefixes, self.s3_bucket)
        for task in self.task_models:
            if task not in TASKS:
                raise ConfigError(f"SEGQ_TASK_MODELS: unknown task {task!r} (tasks: {', '.join(TASKS)})")

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

    def served_models(self) -> list[str]:
        """What a worker process serves: ``worker_models``, else every task's default model."""
        return list(self.worker_models) or sorted(set(self.task_models.values()) & set(self.models))

    @property
    def task_slots(self) -> int:
        """Tasks a worker process runs at once: ``SEGQ_WORKER_CONCURRENCY``, and enough to fill a
        batch of ``SEGQ_MAX_BATCH`` (with one more being prepared)."""
        return max(self.worker_concurrency, self.max_batch + 1 if self.max_batch > 1 else 1)

    @property
    def redis_uses_tls(self) -> bool:
        return self.redis_url.startswith("rediss://")


def variables() -> list[Variable]:
    """Every ``SEGQ_*`` variable, in field order, with its default as documentation shows it."""
    out = []
    for f in fields(Settings):
        m = f.metadata
        if m["shown_default"] is not None:
            shown = m["shown_default"]
        else:
            value = f.default
            shown = f"`{value}`" if isinstance(value, str) else str(value)
        out.append(Variable(m["env"], f.name, shown, m["doc"], m["side"]))
    out.append(Variable(ENV_FILE_VARIABLE, "", "`./.env`", "the `.env` file read before the others", "both"))
    return out


def markdown_table() -> str:
    """The settings table of the README."""
    rows = ["| variable | meaning | default |", "| --- | --- | --- |"]
    rows += [f"| `{v.name}` | {v.doc} | {v.default} |" for v in variables()]
    return "\n".join(rows)
