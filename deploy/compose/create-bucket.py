"""Create the segq bucket (SEGQ_S3_BUCKET) once the S3 endpoint answers; idempotent.

Run by the `s3-init` service of compose.yaml with the same environment as every segq container.
"""

import os
import sys
import time

import boto3
from botocore.exceptions import BotoCoreError, ClientError

endpoint = os.environ.get("SEGQ_S3_ENDPOINT_URL") or None
bucket = os.environ.get("SEGQ_S3_BUCKET") or "segq"
region = os.environ.get("SEGQ_S3_REGION") or "us-east-1"
s3 = boto3.client("s3", endpoint_url=endpoint, region_name=region)

deadline = time.monotonic() + 180
while True:
    try:
        try:
            s3.head_bucket(Bucket=bucket)
            print(f"bucket {bucket} exists")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
            extra = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
            s3.create_bucket(Bucket=bucket, **extra)
            print(f"bucket {bucket} created")
        # SEGQ_RETENTION_DAYS: inputs/ and outputs/ expire (lifecycle rules, as segq.retention).
        days = int(os.environ.get("SEGQ_RETENTION_DAYS") or 0)
        if days > 0:
            s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
                {"ID": f"segq-{prefix.rstrip('/')}-{days}d", "Filter": {"Prefix": prefix}, "Status": "Enabled",
                 "Expiration": {"Days": days}} for prefix in ("inputs/", "outputs/")]})
            print(f"inputs/ and outputs/ expire after {days} days")
        sys.exit(0)
    except (BotoCoreError, ClientError) as exc:
        if time.monotonic() > deadline:
            print(f"S3 at {endpoint or 'AWS'} not ready: {exc}", file=sys.stderr)
            sys.exit(1)
        time.sleep(2)
