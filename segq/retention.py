"""Retention: how long inputs and outputs stay in the bucket (``SEGQ_RETENTION_DAYS``).

Applied as S3 lifecycle rules on the segq bucket (``PutBucketLifecycleConfiguration``: AWS S3,
MinIO, SeaweedFS): objects under ``inputs/`` and ``outputs/`` expire that many days after they
were written. ``work/`` files are deleted by the workers themselves once a video is assembled.
``segq up`` applies the rules to its SeaweedFS; deployments run ``deploy/compose/create-bucket.py``
(Compose's ``s3-init``) or put the same rules with their own tooling (``lifecycle_rules``).
"""

from __future__ import annotations

from segq import layout

RULE_PREFIXES = (f"{layout.INPUTS}/", f"{layout.OUTPUTS}/")


def lifecycle_rules(days: int) -> dict:
    """The LifecycleConfiguration for ``days`` (> 0)."""
    if days < 1:
        raise ValueError("retention needs at least 1 day (0 means: keep forever, no rules)")
    return {"Rules": [
        {"ID": f"segq-{prefix.rstrip('/')}-{days}d", "Filter": {"Prefix": prefix}, "Status": "Enabled",
         "Expiration": {"Days": days}}
        for prefix in RULE_PREFIXES
    ]}


def apply(s3_client, bucket: str, days: int) -> bool:
    """Put the rules on ``bucket`` (days > 0), or remove segq's rules (days == 0). True if changed."""
    if days > 0:
        s3_client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=lifecycle_rules(days))
        return True
    try:
        s3_client.delete_bucket_lifecycle(Bucket=bucket)
    except Exception:  # no rules there
        return False
    return True
