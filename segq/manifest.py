"""A batch's manifest: one JSON line per job, written to ``outputs/batches/<name>/manifest.jsonl``.

Each line: ``source`` (what was submitted, as the user named it), ``input`` (the S3 object the job
read), ``job``, ``kind``, ``state``, ``error`` and ``outputs`` (the job's output keys, when done).
The manifest is written when the batch finishes (by whoever's move finished it: a worker, or the
producer's cancel), streamed page by page from the batch's job list (memory does not grow with
the batch), and ``segq get BATCH`` writes it itself when the batch is finished and it is missing
(its writer died). Jobs whose records already expired are listed with the state ``expired``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from segq import layout
from segq.batches import BatchStore
from segq.jobs import JobStore
from segq.storage import Storage

log = logging.getLogger(__name__)


def lines(batches: BatchStore, store: JobStore, name: str):
    """The manifest's entries, in submission order."""
    for ids in batches.job_ids(name):
        for job_id, record in zip(ids, store.get_many(ids)):
            if record is None:
                yield {"job": job_id, "state": "expired"}
                continue
            yield {"source": record.source, "input": record.input, "job": record.id, "kind": record.kind,
                   "state": record.state, "error": record.error or None, "outputs": record.outputs}


def write(batches: BatchStore, store: JobStore, storage: Storage, name: str) -> str:
    """Write batch ``name``'s manifest to S3; its key."""
    key = layout.manifest_key(name)
    with tempfile.TemporaryDirectory(prefix="segq-manifest-") as tmp:
        path = Path(tmp) / layout.MANIFEST
        with path.open("w") as f:
            for line in lines(batches, store, name):
                f.write(json.dumps(line) + "\n")
        storage.put_file(path, key, "application/x-ndjson")
    batches.manifest_written(name)
    log.info("batch %s finished: manifest s3://%s/%s", name, storage.bucket, key)
    return key
