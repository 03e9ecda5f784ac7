"""Reading what the workers wrote."""

from __future__ import annotations

from segq.storage import S3Object


def fetch(client, key: str) -> bytes:
    return client.storage.get_bytes(S3Object(client.settings.s3_bucket, key))
