"""Submission throughput, side by side in one run.

    python -m bench.submit [--images 2000] [--size 64x48] [--rounds 3]

(a) raw: the same files PUT to the same S3 by 8 plain boto3 threads (what any uploader does);
(b) segq: ``Client.submit_batch`` of the folder (8 upload threads, the images in shards: each
    shard's list to S3 and one Lua step, one batch), with no worker running, so only the
    submission is timed.
Alternating rounds; medians and the ratio segq / raw (goal >= 0.7). What a finished image costs
Redis is ``bench.control``'s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import checkpoint, servers, table
from bench.images import make_images


def raw_upload(env: dict, paths: list[Path], prefix: str, threads: int = 8) -> float:
    """Files per second that 8 boto3 threads PUT to S3 (one client, as the producer has)."""
    import boto3

    s3 = boto3.session.Session().client(
        "s3", endpoint_url=env["SEGQ_S3_ENDPOINT_URL"], region_name=env["SEGQ_S3_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=__import__("botocore.config", fromlist=["Config"]).Config(max_pool_connections=32))
    bucket = env["SEGQ_S3_BUCKET"]

    def put(i_path):
        i, path = i_path
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{i:06d}{path.suffix}", Body=path.read_bytes())

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, enumerate(paths)))
    return len(paths) / (time.perf_counter() - started)


def segq_submit(client, folder: Path, batch: str, threads: int = 8) -> float:
    started = time.perf_counter()
    report = client.submit_batch([str(folder)], task="semantic", batch=batch, threads=threads)
    elapsed = time.perf_counter() - started
    assert report.submitted == len(list(folder.iterdir())), report
    return report.submitted / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", default="64x48")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="segq-bench-") as tmp:
        root = Path(tmp)
        folder = root / "in"
        paths = make_images(folder, args.images, size)
        mean_bytes = statistics.mean(p.stat().st_size for p in paths)
        with servers(root) as env:
            env["SEGQ_MODELS"] = f"ade-semantic={checkpoint(root, 'tiny')}"
            os.environ.update(env)
            from producer.client import Client
            from segq.settings import Settings

            client = Client(Settings.from_env())
            raw_upload(env, paths[:50], "warm")  # warm-up of both paths
            segq_submit(client, root / "in", "bench-warm", args.threads)
            raws, segqs = [], []
            for i in range(args.rounds):
                raws.append(raw_upload(env, paths, f"raw{i}", args.threads))
                segqs.append(segq_submit(client, folder, f"bench-round-{i}", args.threads))
    raw, mine = statistics.median(raws), statistics.median(segqs)
    print(f"\n{args.images} files of {args.size} ({mean_bytes / 1024:.1f} KiB on average), {args.threads} threads, "
          f"median of {args.rounds} alternating rounds\n")
    print(table(
        [("raw boto3 PUTs", f"{raw:.0f}", " ".join(f"{x:.0f}" for x in raws), "1.00"),
         ("segq submit (one batch)", f"{mine:.0f}", " ".join(f"{x:.0f}" for x in segqs), f"{mine / raw:.2f}")],
        ("path", "files/s", "rounds", "ratio (goal >= 0.7)")))


if __name__ == "__main__":
    main()
