"""Which S3 objects may be a job's input: ``SEGQ_INPUT_PREFIXES``, checked by the producer
(``segq submit s3://...``) and again by the worker before it reads anything.

An allowed prefix is ``bucket/prefix/`` (a folder) or ``bucket`` (every key of another bucket).
The default is ``<SEGQ_S3_BUCKET>/inputs/``, where the producer uploads local files. The segq
bucket's ``outputs/`` and ``work/`` are never inputs, whatever is configured: a configuration
that would allow them is refused. Keys with ``..``, ``.`` or empty path segments (``//``), or
a leading ``/``, are refused everywhere. Messages name the key, never its content.
"""

from __future__ import annotations

from segq.errors import ConfigError, InputError

#: Folders of the segq bucket that are never an input (other jobs' outputs, intermediate files).
PROTECTED = ("outputs/", "work/")
DEFAULT_INPUTS = "inputs/"


def parse_prefixes(var: str, raw: str) -> tuple[str, ...]:
    """``bucket/prefix,...`` -> normalised entries (``bucket/prefix/`` or ``bucket/``)."""
    out = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("s3://"):
            item = item[len("s3://"):]
        bucket, _, prefix = item.partition("/")
        if not bucket:
            raise ConfigError(f"{var}: expected bucket/prefix, got {item!r}")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if prefix and bad_key(prefix.rstrip("/")):
            raise ConfigError(f"{var}: {item!r} has '..', '.' or empty path segments")
        out.append(f"{bucket}/{prefix}")
    return tuple(dict.fromkeys(out))


def effective_prefixes(configured: tuple[str, ...], bucket: str) -> tuple[str, ...]:
    return configured or (f"{bucket}/{DEFAULT_INPUTS}",)


def check_prefixes(configured: tuple[str, ...], bucket: str) -> None:
    """ConfigError when an entry would allow the segq bucket's outputs/ or work/."""
    for entry in configured:
        entry_bucket, _, prefix = entry.partition("/")
        if entry_bucket != bucket:
            continue
        for protected in PROTECTED:
            # "segq/" or "segq/out" would include outputs/; "segq/outputs/x/" lies inside it.
            if protected.startswith(prefix) or prefix.startswith(protected):
                raise ConfigError(
                    f"SEGQ_INPUT_PREFIXES: {entry!r} would let jobs read s3://{bucket}/{protected} "
                    f"(other jobs' outputs and intermediate files are never inputs)"
                )


def bad_key(key: str) -> bool:
    """True for keys with '..', '.' or empty segments ('//'), or a leading '/'."""
    return not key or key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/"))


def refusal(bucket: str, key: str, configured: tuple[str, ...], segq_bucket: str) -> str | None:
    """Why ``s3://bucket/key`` may not be an input, or None when it may."""
    uri = f"s3://{bucket}/{key}"
    if bad_key(key):
        return f"{uri}: refused: the key has '..', '.' or empty path segments ('//')"
    if bucket == segq_bucket and key.startswith(PROTECTED):
        return f"{uri}: refused: {segq_bucket}/{key.split('/', 1)[0]}/ holds segq's outputs and work files, never inputs"
    allowed = effective_prefixes(configured, segq_bucket)
    path = f"{bucket}/{key}"
    if not any(path.startswith(prefix) for prefix in allowed):
        shown = ", ".join(f"s3://{p}" for p in allowed)
        return f"{uri}: refused: inputs must lie under {shown} (SEGQ_INPUT_PREFIXES)"
    return None


def prefix_refusal(bucket: str, prefix: str, configured: tuple[str, ...], segq_bucket: str) -> str | None:
    """Why every object under ``s3://bucket/prefix`` may not be listed as inputs, or None when
    the whole prefix lies inside an allowed one (``segq submit s3://bucket/folder/``)."""
    uri = f"s3://{bucket}/{prefix}"
    if prefix and bad_key(prefix.rstrip("/")):
        return f"{uri}: refused: the prefix has '..', '.' or empty path segments ('//')"
    if bucket == segq_bucket and any(p.startswith(prefix) or prefix.startswith(p) for p in PROTECTED):
        return f"{uri}: refused: it holds (or is inside) segq's outputs and work files, never inputs"
    allowed = effective_prefixes(configured, segq_bucket)
    if not any(f"{bucket}/{prefix}".startswith(entry) for entry in allowed):
        shown = ", ".join(f"s3://{p}" for p in allowed)
        return f"{uri}: refused: inputs must lie under {shown} (SEGQ_INPUT_PREFIXES)"
    return None


def require_input(settings, bucket: str, key: str) -> None:
    """Raise InputError unless ``s3://bucket/key`` may be an input under ``settings``."""
    reason = refusal(bucket, key, settings.input_prefixes, settings.s3_bucket)
    if reason:
        raise InputError(reason)
