"""Every Redis key segq uses, in one place.

A job is one hash (``segq:job:<id>``); an index sorted by creation time lists jobs newest
first; each worker keeps a small hash of its own state and counters.
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
_STAT_LABELS = {STAT_JOBS: 3, STAT_FRAMES: 1, STAT_INFERENCE: 1, STAT_LAST_FPS: 2}


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


def job(job_id: str) -> str:
    """Hash holding one job record (fields: ``segq.jobs.JobRecord``)."""
    return f"{PREFIX}:job:{job_id}"


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
