"""segq's Lua scripts: kept in files (``segq/lua/*.lua``), loaded and registered here.

Every script is ``lib.lua`` (key helpers, the scheduler's enqueue and dispatch, batch counters)
followed by the script's own body, with the ``$``-names filled in from ``segq.keys`` (key prefixes)
and ``segq.states`` (the final states, the priorities in serving order), so that a state or a
key is named in Python once. Each script changes what it changes in one atomic step: a job's
move and its batch's counters, a chunk and its video's assembly, a release and its in-flight
record.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from string import Template

import redis

from segq import keys
from segq.protocol import QUEUE_PREFIX
from segq.states import FINAL_STATES, RETRYABLE_STATES, PRIORITIES

NAMES = ("job_start", "job_end", "job_retry", "batch_open", "batch_seal", "submit", "split_done", "chunk_done",
         "dispatch", "task_ended", "cancel_batch", "shard_add", "shard_start", "shard_end", "shard_cancel",
         "shard_retry", "worker_register", "worker_remove", "beat")


def _lua_set(values) -> str:
    return ", ".join(f"['{v}'] = true" for v in sorted(values))


def _lua_list(values) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _substitutions() -> dict[str, str]:
    return {
        "final_states": _lua_set(s.value for s in FINAL_STATES),
        "retryable_states": _lua_set(s.value for s in RETRYABLE_STATES),
        "priorities": _lua_list(p.value for p in PRIORITIES),
        "job_prefix": keys.JOB_PREFIX,
        "batch_prefix": keys.BATCH_PREFIX,
        "ring_prefix": keys.RING_PREFIX,
        "queue_prefix": QUEUE_PREFIX,
        "pending_counts": keys.PENDING_COUNTS,
        "inflight": keys.INFLIGHT,
        "stats": keys.STATS,
        "histograms": keys.HISTOGRAMS,
        "slots": keys.SLOTS,
        "namespace_prefix": keys.NAMESPACE_PREFIX,
        "worker_prefix": keys.WORKER_PREFIX,
        "workers_index": keys.WORKERS_INDEX,
        "leases": keys.LEASES,
        "lease_prefix": keys.LEASE_PREFIX,
        "reaper_lock": keys.REAPER_LOCK,
        "kombu_unacked": keys.KOMBU_UNACKED,
        "kombu_unacked_index": keys.KOMBU_UNACKED_INDEX,
        "jobs_index": keys.JOBS_INDEX,
        "batches_index": keys.BATCHES_INDEX,
        "active_batches": keys.ACTIVE_BATCHES,
    }


def _read(name: str) -> str:
    return resources.files("segq").joinpath(f"lua/{name}.lua").read_text()


@lru_cache(maxsize=None)
def source(name: str) -> str:
    """The full text of script ``name`` (the library, then its body), names filled in."""
    if name not in NAMES:
        raise ValueError(f"no Lua script {name!r}")
    return Template(_read("lib") + "\n" + _read(name)).substitute(_substitutions())


class Scripts:
    """The scripts registered on one client: ``scripts.job_end(keys=[...], args=[...])``."""

    def __init__(self, client: redis.Redis):
        for name in NAMES:
            setattr(self, name, client.register_script(source(name)))
