"""Every Redis key segq uses, in one place (the Lua scripts get theirs from here too,
``segq.scripts``).

A batch (every submission is one) is a hash of counters (``segq:batch:<name>``) with its
items (video job ids and shard numbers, in submission order), the state of each of its shards,
its video inputs' identities and its pending work beside it. A batch's images have no keys of
their own: they run in shards, whose small states are fields of one hash per batch and whose
results are in S3 (``segq.shards``). A video job is one hash (``segq:job:<id>``); an index sorted
by creation time lists them newest first. Each model has a ring of the batches with pending work
per priority (``segq.scheduler``) and a count of the task slots of the live workers serving it;
released messages are in flight until their task ends. Each worker keeps a small hash of its own
state and counters, indexed by heartbeat.
"""

PREFIX = "segq"

#: Sorted set of job ids, scored by creation time (``segq list``).
JOBS_INDEX = f"{PREFIX}:jobs"

#: Hash of fleet-wide counters for metrics (``segq exporter``); fields built by the functions below.
STATS = f"{PREFIX}:stats"


# The stats codec: each field of STATS is a metric name and its label values joined by "|".
STAT_JOBS = "jobs"  # labels: state, kind, model
STAT_FRAMES = "frames"  # labels: model
STAT_INFERENCE = "inference_s"  # labels: model
STAT_LAST_FPS = "last_fps"  # labels: kind, model
STAT_RESENT = "watchdog_resent"  # no labels: lost messages the watchdog sent again
STAT_LOST_FAILED = "watchdog_failed"  # no labels: jobs failed for losing their messages too often
STAT_IMAGE_SECONDS = "image_s"  # labels: model; a worker's seconds per image in the last shard (shard sizes)
_STAT_LABELS = {STAT_JOBS: 3, STAT_FRAMES: 1, STAT_INFERENCE: 1, STAT_LAST_FPS: 2, STAT_RESENT: 0,
                STAT_LOST_FAILED: 0, STAT_IMAGE_SECONDS: 1}


def stat_field(metric: str, *labels: str) -> str:
    if _STAT_LABELS.get(metric) != len(labels) or any("|" in v for v in labels):
        raise ValueError(f"bad stats field {metric!r} {labels!r}")
    return "|".join((metric, *labels))


def parse_stat_field(name: str) -> tuple[str, tuple[str, ...]] | None:
    """``"jobs|done|image|m"`` -> ``("jobs", ("done", "image", "m"))``; None for unknown fields."""
    metric, *labels = name.split("|")
    if _STAT_LABELS.get(metric) != len(labels):
        return None
    return metric, tuple(labels)


#: Hash of histogram counters (``segq.metrics``): job latency, seconds per stage.
HISTOGRAMS = f"{PREFIX}:hist"

#: Sorted set of batch names, scored by creation time (``segq batches``).
BATCHES_INDEX = f"{PREFIX}:batches"

#: Set of the batches not finished yet (the exporter's per-batch gauges read these only).
ACTIVE_BATCHES = f"{PREFIX}:batches:active"

#: Prefix of every batch's keys; ``segq.lua.lib`` derives them from the same prefix.
BATCH_PREFIX = f"{PREFIX}:batch:"


def batch(name: str) -> str:
    """Hash of one batch: task, model, priority, times, sealed, counters by job state, frames."""
    return f"{BATCH_PREFIX}{name}"


def batch_jobs(name: str) -> str:
    """List of a batch's items in submission order: video job ids, and ``s<N>`` for shard N (the
    manifest, batch cancel and retry)."""
    return f"{BATCH_PREFIX}{name}:jobs"


def batch_inputs(name: str) -> str:
    """Hash: a video input's identity (source, size, mtime or ETag) -> the job that holds it
    (resubmission; images' identities are in their shards' lists in S3)."""
    return f"{BATCH_PREFIX}{name}:inputs"


def batch_shards(name: str) -> str:
    """Hash: shard number -> the shard's state, a small JSON object (``segq.shards.ShardState``)."""
    return f"{BATCH_PREFIX}{name}:shards"


#: Prefix of the shard message templates: one per payload version, model, task and priority.
TEMPLATE_PREFIX = f"{PREFIX}:msg:"


def template(version: int, model: str, task: str, priority: str) -> str:
    """String: the message of every shard of the batches of ``model``, ``task`` and ``priority``,
    built ahead with the batch's name and the shard's number left to fill in
    (``segq.messages.template``); the scheduler fills them in when it releases a shard."""
    return f"{TEMPLATE_PREFIX}v{version}:{model}:{task}:{priority}"


def batch_losses(name: str) -> str:
    """Hash: shard task id -> how many times a worker died while running it (``segq.leases``)."""
    return f"{BATCH_PREFIX}{name}:losses"


def batch_submitting(name: str) -> str:
    """The lock of the one submission adding to a batch now (``segq.batches.BatchStore.lock``)."""
    return f"{BATCH_PREFIX}{name}:submitting"


#: Prefix of the image-id namespaces: ``segq:ns:<7 hex digits>`` -> the batch (``segq.protocol``).
NAMESPACE_PREFIX = f"{PREFIX}:ns:"


def namespace(ns: str) -> str:
    return f"{NAMESPACE_PREFIX}{ns}"


def batch_pending(name: str) -> str:
    """List of a batch's messages not released yet: ``"<task id> <message JSON>"`` entries."""
    return f"{BATCH_PREFIX}{name}:pending"


#: Prefix of the rings: per model and priority, the batches that have pending work.
RING_PREFIX = f"{PREFIX}:ring:"


def ring(model: str, priority: str) -> str:
    return f"{RING_PREFIX}{model}:{priority}"


#: Hash ``model|priority`` -> messages pending (not released) for that model at that priority.
PENDING_COUNTS = f"{PREFIX}:pending"

#: Hash model -> task slots of the live workers that serve it (``SEGQ_WORKER_CONCURRENCY`` each):
#: the scheduler's target, kept as counters by the registry's scripts (``segq.registry``).
SLOTS = f"{PREFIX}:slots"

#: Sorted set of the task ids released to a queue and not acknowledged yet, scored by release time.
INFLIGHT = f"{PREFIX}:inflight"
#: Hash: task id -> when the watchdog first found its message nowhere.
INFLIGHT_SUSPECT = f"{INFLIGHT}:suspect"

#: Sorted set of worker hostnames, scored by their last heartbeat (``segq.registry``).
WORKERS_INDEX = f"{PREFIX}:workers"

#: List of poison messages taken off the queues, newest first (``segq dead-letters``).
DEAD_LETTERS = f"{PREFIX}:dead"

JOB_PREFIX = f"{PREFIX}:job:"


def job(job_id: str) -> str:
    """Hash holding one job record (fields: ``segq.jobs.JobRecord``)."""
    return f"{JOB_PREFIX}{job_id}"


WORKER_PREFIX = f"{PREFIX}:worker:"


def worker(hostname: str) -> str:
    """Hash of one worker's state: device, models loaded, load counts, jobs done."""
    return f"{WORKER_PREFIX}{hostname}"


def job_chunks(job_id: str) -> str:
    """Set of the finished chunk indexes of a video job (assembly starts when it is full)."""
    return f"{PREFIX}:job:{job_id}:chunks"


def job_chunk_info(job_id: str) -> str:
    """Hash: chunk index -> JSON of that chunk's frames, timings and worker."""
    return f"{PREFIX}:job:{job_id}:chunkinfo"


def job_losses(job_id: str) -> str:
    """Hash: task id -> how many times a worker died while running it (``segq.leases``)."""
    return f"{PREFIX}:job:{job_id}:losses"


#: Sorted set of the delivery tags of every message a worker holds, scored by lease expiry.
LEASES = f"{PREFIX}:leases"


LEASE_PREFIX = f"{PREFIX}:lease:"


def lease(tag: str) -> str:
    """Hash of one lease: task id, job id, task name, worker, received/started times."""
    return f"{LEASE_PREFIX}{tag}"


#: Lock taken by the one worker that runs the reaper at a time.
REAPER_LOCK = f"{PREFIX}:reaper:lock"

#: kombu's Redis transport: messages delivered to a consumer and not yet acknowledged.
KOMBU_UNACKED = "unacked"
KOMBU_UNACKED_INDEX = "unacked_index"
