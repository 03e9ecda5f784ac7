"""Every Redis key segq uses, in one place.

A job is one hash (``segq:job:<id>``); an index sorted by creation time lists jobs newest
first; each worker keeps a small hash of its own state and counters.
"""

PREFIX = "segq"

#: Sorted set of job ids, scored by creation time (``segq list``).
JOBS_INDEX = f"{PREFIX}:jobs"

#: Hash of fleet-wide counters for metrics (``segq exporter``); fields built by the functions below.
STATS = f"{PREFIX}:stats"


def stat_jobs(state: str, kind: str, model: str) -> str:
    return f"jobs|{state}|{kind}|{model}"


def stat_frames(model: str) -> str:
    return f"frames|{model}"


def stat_inference(model: str) -> str:
    return f"inference_s|{model}"


def stat_last_fps(kind: str, model: str) -> str:
    return f"last_fps|{kind}|{model}"


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
