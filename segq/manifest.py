"""A batch's manifest: one JSON line per job, written to ``outputs/batches/<name>/manifest.jsonl``.

Each line: ``source`` (what was submitted, as the user named it), ``input`` (the S3 object the job
read), ``job``, ``kind``, ``state``, ``error`` and ``outputs`` (the job's output keys, when done);
an image's line also names its ``shard``. The manifest is written when the batch finishes (by
whoever's move finished it: a worker, or the producer's cancel), streamed from the batch's items
in submission order (a video's record from Redis; a shard's images from its results in S3, each
image's latest run), so memory does not grow with the batch; ``segq get BATCH`` writes it itself
when the batch is finished and it is missing (its writer died). Video jobs whose records already
expired are listed with the state ``expired``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from segq import layout
from segq.batches import BatchStore, shard_of
from segq.jobs import JobStore
from segq.shards import ShardState, ShardStore
from segq.storage import Storage

log = logging.getLogger(__name__)


def lines(batches: BatchStore, store: JobStore, shards: ShardStore, name: str):
    """The manifest's entries, in submission order."""
    for items, states in batches.pages(name):
        videos = [i for i in items if shard_of(i) is None]
        records = dict(zip(videos, store.get_many(videos))) if videos else {}
        for item, raw in zip(items, states):
            shard = shard_of(item)
            if shard is not None:
                state = ShardState.from_json(raw) if raw else None
                for line in shards.latest(name, shard, state) if state else []:
                    yield {"source": line.source, "input": line.input, "job": line.job, "kind": line.kind,
                           "state": line.state, "error": line.error or None, "outputs": line.outputs,
                           "shard": line.shard}
                continue
            record = records[item]
            if record is None:
                yield {"job": item, "state": "expired"}
                continue
            yield {"source": record.source, "input": record.input, "job": record.id, "kind": record.kind,
                   "state": record.state, "error": record.error or None, "outputs": record.outputs}


def write(batches: BatchStore, store: JobStore, shards: ShardStore, storage: Storage, name: str) -> str:
    """Write batch ``name``'s manifest to S3; its key."""
    key = layout.manifest_key(name)
    with tempfile.TemporaryDirectory(prefix="segq-manifest-") as tmp:
        path = Path(tmp) / layout.MANIFEST
        with path.open("w") as f:
            for line in lines(batches, store, shards, name):
                f.write(json.dumps(line) + "\n")
        storage.put_file(path, key, "application/x-ndjson")
    batches.manifest_written(name)
    log.info("batch %s finished: manifest s3://%s/%s", name, storage.bucket, key)
    return key
