"""Dead letters: poison messages taken off the queues, with the reason, for a person to look at.

A message no segq worker can run (not JSON, not a Celery message, not a segq task, a payload that
does not parse: ``segq.transport``, ``workers.tasks.skeleton``) is not delivered (or, once delivered,
is acknowledged) and lands here instead: the newest first, at most :data:`KEEP` of them, each
with when, from which queue, why, its size and a digest. The raw bytes are kept too (up to
:data:`RAW_BYTES`), base64-encoded, for forensics; nothing segq prints ever shows them
(``segq dead-letters`` lists reasons, sizes and digests; ``--purge`` empties the list).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass

import redis

from segq import keys

#: Dead letters kept, newest first; older ones are dropped.
KEEP = 10_000
#: Bytes of each poison message kept for inspection.
RAW_BYTES = 64 * 1024


@dataclass(frozen=True)
class DeadLetter:
    at: float
    queue: str
    reason: str
    size: int
    sha256: str
    task_id: str = ""

    def to_dict(self) -> dict:
        return {"at": self.at, "queue": self.queue, "reason": self.reason, "size": self.size,
                "sha256": self.sha256, "task_id": self.task_id}


def add(r: redis.Redis, queue: str, raw: str | bytes, reason: str, task_id: str = "") -> None:
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else bytes(raw)
    entry = {"at": time.time(), "queue": str(queue)[:200], "reason": reason[:500], "size": len(data),
             "sha256": hashlib.sha256(data).hexdigest(), "task_id": str(task_id)[:100],
             "raw": base64.b64encode(data[:RAW_BYTES]).decode("ascii")}
    pipe = r.pipeline()
    pipe.lpush(keys.DEAD_LETTERS, json.dumps(entry))
    pipe.ltrim(keys.DEAD_LETTERS, 0, KEEP - 1)
    pipe.execute()


def count(r: redis.Redis) -> int:
    return int(r.llen(keys.DEAD_LETTERS))


def recent(r: redis.Redis, limit: int = 20) -> list[DeadLetter]:
    out = []
    for raw in r.lrange(keys.DEAD_LETTERS, 0, max(1, limit) - 1):
        try:
            d = json.loads(raw)
            out.append(DeadLetter(float(d["at"]), str(d["queue"]), str(d["reason"]), int(d["size"]),
                                  str(d["sha256"]), str(d.get("task_id", ""))))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def purge(r: redis.Redis) -> int:
    """Empty the list; how many there were."""
    pipe = r.pipeline()
    pipe.llen(keys.DEAD_LETTERS)
    pipe.delete(keys.DEAD_LETTERS)
    return int(pipe.execute()[0])
