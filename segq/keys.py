"""Every Redis key segq uses, in one place (the Lua scripts get theirs from here too,
``segq.scripts``).

A job is one hash (``segq:job:<id>``); an index sorted by creation time lists jobs newest
first. A batch (every submission is one) is a hash of counters (``segq:batch:<name>``) with the
list of its job ids, its inputs' identities and its pending messages beside it. Each model has a
ring of the batches with pending work per priority (``segq.scheduler``); released messages are
in flight until their task ends. Each worker keeps a small hash of its own state and counters,
indexed by heartbeat.
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
_STAT_LABELS = {STAT_JOBS: 3, STAT_FRAMES: 1, STAT_INFERENCE: 1, STAT_LAST_FPS: 2, STAT_RESENT: 0,
                STAT_LOST_FAILED: 0}


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
    """List of a batch's job ids, in submission order (the manifest, batch cancel and retry)."""
    return f"{BATCH_PREFIX}{name}:jobs"


def batch_inputs(name: str) -> str:
    """Hash: input identity (source, size, mtime or ETag) -> the job that holds it (resubmission)."""
    return f"{BATCH_PREFIX}{name}:inputs"


def batch_pending(name: str) -> str:
    """List of a batch's messages not released yet: ``"<task id> <message JSON>"`` entries."""
    return f"{BATCH_PREFIX}{name}:pending"


#: Prefix of the rings: per model and priority, the batches that have pending work.
RING_PREFIX = f"{PREFIX}:ring:"


def ring(model: str, priority: str) -> str:
    return f"{RING_PREFIX}{model}:{priority}"


#: Hash ``model|priority`` -> messages pending (not released) for that model at that priority.
PENDING_COUNTS = f"{PREFIX}:pending"

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


def worker(hostname: str) -> str:
    """Hash of one worker's state: device, models loaded, load counts, jobs done."""
    return f"{PREFIX}:worker:{hostname}"


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


def lease(tag: str) -> str:
    """Hash of one lease: task id, job id, task name, worker, received/started times."""
    return f"{PREFIX}:lease:{tag}"


#: Lock taken by the one worker that runs the reaper at a time.
REAPER_LOCK = f"{PREFIX}:reaper:lock"

#: kombu's Redis transport: messages delivered to a consumer and not yet acknowledged.
KOMBU_UNACKED = "unacked"
KOMBU_UNACKED_INDEX = "unacked_index"
