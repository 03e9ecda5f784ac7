"""Writing an image job's output files: each file encoded and uploaded as one work item of a
thread pool (the worker's ``Runtime.writers``), so that the files are encoded and uploaded at once.
Plain: no broker, no torch."""

from __future__ import annotations

import time
from concurrent.futures import Executor, wait
from dataclasses import dataclass

from segq import layout


@dataclass
class Written:
    """What ``write_outputs`` did: the keys (in ``parts``' order); render seconds: until the last
    file was encoded; upload seconds: the rest, until the last was stored; and the CPU seconds the
    pool's threads spent encoding and uploading (``time.thread_time``, summed over the files)."""

    keys: list[str]
    render_s: float
    upload_s: float
    render_cpu_s: float
    upload_cpu_s: float


def write_outputs(storage, pool: Executor, job_id: str, parts: dict) -> Written:
    """Encode and upload an image job's files (``render.output_parts``), each file's encoding and
    upload one work item of ``pool``: the files are encoded and uploaded at once (the encoders
    release the GIL, an upload mostly waits), not one after another. Waits for every item; raises
    the first error (in the files' order) after all have ended, so nothing is still writing when
    the task fails or retries (a retry writes the same keys)."""
    started = time.perf_counter()
    encoded: list[float] = []  # when each file's bytes were ready (list.append is atomic)
    cpu: list[tuple[float, float]] = []  # each file's CPU seconds: encoding, uploading

    def one(name: str, make, content_type: str) -> str:
        c0 = time.thread_time()
        body = make()
        encoded.append(time.perf_counter())
        c1 = time.thread_time()
        key = layout.output_key(job_id, name)
        storage.put_bytes(key, body, content_type)
        cpu.append((c1 - c0, time.thread_time() - c1))
        return key

    futures = [pool.submit(one, name, make, ct) for name, (make, ct) in parts.items()]
    wait(futures)
    ended = time.perf_counter()
    for f in futures:
        if f.exception() is not None:
            raise f.exception()
    last = max(encoded, default=started)
    return Written([f.result() for f in futures], last - started, ended - last,
                   sum(c[0] for c in cpu), sum(c[1] for c in cpu))
