"""segq's Lua scripts: kept in files (``segq/lua/*.lua``), loaded and registered here.

Every script is the parts of ``lib.lua`` it uses (key helpers, the scheduler's enqueue and
dispatch, batch counters: each top-level definition there that the script's body names, and
those that these name in turn) followed by the script's own body, with the ``$``-names filled in
from ``segq.keys`` (key prefixes) and ``segq.states`` (the final states, the priorities in
serving order), so that a state or a key is named in Python once. A script carries only what it
uses because Redis runs a script's definitions on every call (the whole library cost each call
about 6 µs of Redis's time here). Each script changes what it changes in one atomic step: a job's
move and its batch's counters, a chunk and its video's assembly, a release and its in-flight
record.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from string import Template

import redis

from segq import keys
from segq.protocol import PAYLOAD_VERSION, QUEUE_PREFIX
from segq.states import FINAL_STATES, RETRYABLE_STATES, PRIORITIES

NAMES = ("job_start", "job_end", "job_retry", "batch_open", "batch_seal", "submit", "split_done", "chunk_done",
         "dispatch", "task_ended", "cancel_batch", "shard_add", "shard_start", "shard_end", "shard_cancel",
         "shard_retry", "worker_register", "worker_remove", "beat", "batch_page", "shard_requeued")


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
        "template_prefix": keys.TEMPLATE_PREFIX,
        "payload_version": str(PAYLOAD_VERSION),
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


_DEFINITION = re.compile(r"^local (?:function )?([A-Za-z_][A-Za-z0-9_]*)", re.M)


def _definitions(lib: str) -> list[tuple[str, str]]:
    """The library's top-level definitions, in order: (name, text with the comments above it)."""
    starts = [m.start() for m in _DEFINITION.finditer(lib)]
    out = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(lib)
        lines = lib[start:end].rstrip().split("\n")
        while lines and (not lines[-1].strip() or lines[-1].startswith("--")):
            lines.pop()  # the comment lines that end this chunk are the next definition's
        out.append((_DEFINITION.match(lib, start)[1], "\n".join(lines) + "\n"))
    return out


def _needed(lib: str, body: str) -> str:
    """The library's definitions that ``body`` uses, and those they use, in the library's order."""
    defs = _definitions(lib)
    names = {name for name, _ in defs}
    wanted: set[str] = set()
    todo = [body]
    while todo:
        text = todo.pop()
        for name in names - wanted:
            if re.search(rf"\b{name}\b", text):
                wanted.add(name)
                todo.append(dict(defs)[name])
    return "\n".join(text for name, text in defs if name in wanted)


@lru_cache(maxsize=None)
def source(name: str) -> str:
    """The full text of script ``name`` (the library's parts it uses, then its body), names filled in."""
    if name not in NAMES:
        raise ValueError(f"no Lua script {name!r}")
    body = _read(name)
    return Template(_needed(_read("lib"), body) + "\n" + body).substitute(_substitutions())


class Scripts:
    """The scripts registered on one client: ``scripts.job_end(keys=[...], args=[...])``."""

    def __init__(self, client: redis.Redis):
        for name in NAMES:
            setattr(self, name, client.register_script(source(name)))


def run_script(script, args: list, pipe=None, keys: list | None = None):
    """Run a registered script, alone or as the last command of ``pipe`` (one round trip with
    what the pipeline holds); its reply. In a pipeline redis-py would first ask ``SCRIPT EXISTS``
    (a round trip of its own): this sends ``EVALSHA`` as it is, and loads the script only when
    Redis does not know it yet (a new or restarted server)."""
    keys = keys or []
    if pipe is None:
        return script(keys=keys, args=args)
    pipe.evalsha(script.sha, len(keys), *keys, *args)
    try:
        return pipe.execute()[-1]
    except redis.exceptions.NoScriptError:
        script.registered_client.script_load(script.script)
        pipe.evalsha(script.sha, len(keys), *keys, *args)  # the rest of the pipeline ran
        return pipe.execute()[-1]
