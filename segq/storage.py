"""S3-compatible storage (AWS S3, MinIO, SeaweedFS...) through boto3.

Credentials come from boto3's normal chain; the endpoint, bucket and region from
``segq.settings``. Errors users can act on become ``segq.errors`` exceptions.
"""

from __future__ import annotations

import io
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from segq import layout, limits
from segq.errors import InputError, ObjectNotFound, ServiceRefused, ServiceUnavailable
from segq.settings import Settings

_AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "403",
}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                   "ServiceUnavailable", "InternalError", "RequestTimeout"}


#: Files up to this size are uploaded in one PUT; larger ones as multipart uploads (boto3's
#: transfer manager, whose default threshold this is).
SINGLE_PUT_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_uri(uri: str) -> S3Object:
    """``s3://bucket/key`` -> S3Object. Raises InputError for anything else."""
    if not uri.startswith("s3://"):
        raise InputError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise InputError(f"expected s3://bucket/key, got {uri!r}")
    return S3Object(bucket, key)


def _no_expect_on_empty_body(request, **_):
    """Drop ``Expect: 100-continue`` from requests without a body.

    There is nothing to continue with, and some S3 servers (SeaweedFS among them) answer such
    a request in a way that leaves the kept-alive connection unusable: the next request on it
    hangs until the read timeout. An empty input file must not stall the next upload.
    """
    if request.headers.get("Content-Length") in ("0", b"0") and "Expect" in request.headers:
        del request.headers["Expect"]


class Storage:
    """The operations segq needs on S3, with errors translated for users."""

    def __init__(self, settings: Settings):
        self.bucket = settings.s3_bucket
        self.endpoint = settings.s3_endpoint_url
        # A session of its own: credentials are read from the environment now, not cached from
        # whatever boto3's default session saw first (and sessions are not shared across threads).
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url or None,
            region_name=settings.s3_region,
            config=Config(
                signature_version="s3v4",
                retries={"max_attempts": 4, "mode": "standard"},
                s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
                connect_timeout=5,
                read_timeout=60,
                # the producer uploads with several threads (``segq submit``), the worker's task
                # threads share the client: a connection each
                max_pool_connections=32,
            ),
        )
        self.client.meta.events.register("before-send.s3", _no_expect_on_empty_body)

    def _explain(self, exc: Exception, what: str) -> Exception:
        """A boto error as a segq error: transient (``ServiceUnavailable``: unreachable, timeouts,
        5xx, throttling) or deterministic (``ServiceRefused``, ``ObjectNotFound``)."""
        where = self.endpoint or "AWS S3"
        if isinstance(exc, NoCredentialsError):
            return ServiceRefused(
                f"{what}: no S3 credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
            )
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError)):
            return ServiceUnavailable(f"{what}: cannot reach S3 at {where}")
        if isinstance(exc, ReadTimeoutError):
            return ServiceUnavailable(f"{what}: S3 at {where} did not answer in time")
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in _MISSING_CODES:
                return ObjectNotFound(f"not found: {what}")
            if code == "NoSuchBucket":
                return ServiceRefused(f"{what}: bucket does not exist at {where}")
            if code in _AUTH_CODES:
                return ServiceRefused(f"{what}: S3 at {where} refused the credentials ({code})")
            if code in _THROTTLE_CODES or status == 429 or status >= 500:
                return ServiceUnavailable(f"{what}: S3 at {where} answered {code or status} (will retry)")
            return ServiceRefused(f"{what}: S3 refused the request ({code or status})")
        return ServiceUnavailable(f"{what}: S3 at {where} failed: {type(exc).__name__}")

    # -- writes --------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> S3Object:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (BotoCoreError, ClientError) as exc:
            raise self._explain(exc, f"upload to s3://{self.bucket}/{key}") from exc
        return S3Object(self.bucket, key)

    def put_file(
        self, path: Path, key: str, content_type: str | None = None, progress: Callable[[int], None] | None = None
    ) -> S3Object:
        """Upload a file: in one PUT up to ``SINGLE_PUT_BYTES`` (one request, no transfer manager's
        threads), as a multipart upload above."""
        size = path.stat().st_size
        if size <= SINGLE_PUT_BYTES:
            data = path.read_bytes()
            self.put_bytes(key, data, content_type or "application/octet-stream")
            if progress:
                progress(len(data))
            return S3Object(self.bucket, key)
        extra = {"ContentType": content_type} if content_type else None
        try:
            self.client.upload_file(str(path), self.bucket, key, ExtraArgs=extra, Callback=progress)
        except (BotoCoreError, ClientError) as exc:
            raise self._explain(exc, f"upload of {path} to s3://{self.bucket}/{key}") from exc
        except Exception as exc:  # boto3's S3UploadFailedError wraps ClientError
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, (BotoCoreError, ClientError)):
                raise self._explain(cause, f"upload of {path} to s3://{self.bucket}/{key}") from exc
            raise
        return S3Object(self.bucket, key)

    # -- reads ---------------------------------------------------------------------------
    def size(self, obj: S3Object) -> int:
        try:
            return int(self.client.head_object(Bucket=obj.bucket, Key=obj.key)["ContentLength"])
        except (BotoCoreError, ClientError) as exc:
            raise self._explain(exc, obj.uri) from exc

    def head(self, obj: S3Object) -> tuple[int, str]:
        """The object's size and ETag."""
        try:
            meta = self.client.head_object(Bucket=obj.bucket, Key=obj.key)
        except (BotoCoreError, ClientError) as exc:
            raise self._explain(exc, obj.uri) from exc
        return int(meta["ContentLength"]), str(meta.get("ETag", ""))

    def list_objects(self, bucket: str, prefix: str):
        """``(key, size, etag)`` of every object under ``prefix``, a page (1,000) at a time."""
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for o in page.get("Contents", []):
                    if not o["Key"].endswith("/"):
                        yield o["Key"], int(o["Size"]), str(o.get("ETag", ""))
        except (BotoCoreError, ClientError) as exc:
            raise self._explain(exc, f"listing of s3://{bucket}/{prefix}") from exc

    def get_bytes(self, obj: S3Object, max_bytes: int | None = None) -> bytes:
        """The object's content; with ``max_bytes``, InputError before reading a larger one."""
        try:
            response = self.client.get_object(Bucket=obj.bucket, Key=obj.key)
            size = int(response.get("ContentLength", 0))
            if max_bytes is not None and size > max_bytes:
                response["Body"].close()
                limits.check_bytes(size, max_bytes)
            return response["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise self._explain(exc, obj.uri) from exc

    def download(self, key: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            self.client.download_file(self.bucket, key, str(tmp))
        except (BotoCoreError, ClientError) as exc:
            raise self._explain(exc, f"s3://{self.bucket}/{key}") from exc
        os.replace(tmp, dest)
        return dest

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise self._explain(exc, f"delete of s3://{self.bucket}/{key}") from exc

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` in the segq bucket; how many there were."""
        if not prefix or not prefix.endswith("/"):
            raise ValueError(f"refusing to delete under {prefix!r}: a folder prefix ending in / is required")
        deleted = 0
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                for i in range(0, len(objects), 1000):
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects[i:i + 1000],
                                                                           "Quiet": True})
                deleted += len(objects)
        except (BotoCoreError, ClientError) as exc:
            raise self._explain(exc, f"delete of s3://{self.bucket}/{prefix}") from exc
        return deleted

    def delete_job_files(self, job_id: str) -> int:
        """Remove what a job wrote (outputs and work files), e.g. when it is canceled or retried."""
        return sum(self.delete_prefix(p) for p in (layout.output_prefix(job_id), layout.work_prefix(job_id)))

    def presign(self, key: str, expires: int) -> str:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires
        )

    def check(self) -> None:
        """Raise ServiceUnavailable unless the bucket is reachable with our credentials."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise self._explain(exc, f"bucket {self.bucket!r}") from exc


class S3Reader(io.RawIOBase):
    """A seekable, read-only file over one S3 object, fetched in blocks with ranged GETs.

    Video tasks open it with PyAV: a demuxer that seeks reads only the blocks it touches, so a
    chunk task fetches the container index and its own part of the video, not the whole file.
    """

    def __init__(self, storage: "Storage", obj: S3Object, block_size: int = 1 << 20, cache_blocks: int = 8):
        super().__init__()
        self.storage, self.obj = storage, obj
        self.size = storage.size(obj)
        self.block_size = block_size
        self.cache: OrderedDict[int, bytes] = OrderedDict()
        self.cache_blocks = cache_blocks
        self.pos = 0
        self.bytes_fetched = 0
        self.fetch_s = 0.0  # seconds spent in ranged GETs
        self.fetch_cpu_s = 0.0  # and the CPU seconds of the threads that made them

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def _block(self, index: int) -> bytes:
        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        start = index * self.block_size
        end = min(self.size, start + self.block_size) - 1
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            body = self.storage.client.get_object(
                Bucket=self.obj.bucket, Key=self.obj.key, Range=f"bytes={start}-{end}"
            )["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise self.storage._explain(exc, self.obj.uri) from exc
        self.bytes_fetched += len(body)
        self.fetch_s += time.perf_counter() - started
        self.fetch_cpu_s += time.thread_time() - cpu
        self.cache[index] = body
        if len(self.cache) > self.cache_blocks:
            self.cache.popitem(last=False)
        return body

    def readinto(self, buffer) -> int:
        if self.pos >= self.size:
            return 0
        index, offset = divmod(self.pos, self.block_size)
        block = self._block(index)
        n = min(len(buffer), len(block) - offset)
        buffer[:n] = block[offset : offset + n]
        self.pos += n
        return n
