"""Celery tasks. Each is idempotent: a redelivered message for a finished job does nothing,
and a re-run writes the same outputs to the same keys.

Failures are sorted in three kinds:

- bad input (empty, corrupt, wrong type, too large, missing, unknown task or model): the job is
  marked ``failed`` with the reason at once, never retried;
- transient (S3 or Redis unreachable): retried with backoff, ``SEGQ_TASK_RETRIES`` times, then
  ``failed``;
- anything else (a bug, out of memory): ``failed`` with the exception, and the worker goes on
  serving the next job.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import redis
from celery import Task
from celery.exceptions import Retry

from segq import layout
from segq.errors import InputError, ObjectNotFound, ServiceUnavailable, UsageError
from segq.protocol import SEGMENT_IMAGE, ImageJob, PayloadError, valid_job_id
from segq.storage import S3Object
from workers import render, runtime
from workers.app import app
from workers.decode import decode_image
from workers.inference import predict

log = logging.getLogger(__name__)


class JobFailure(Exception):
    """Raised after the job record was marked failed, so Flower shows the task as failed."""


def _fail(rt: runtime.Runtime, job_id: str, message: str) -> JobFailure:
    rt.store.fail(job_id, message)
    rt.count("jobs_failed")
    log.warning("job %s failed: %s", job_id, message)
    return JobFailure(message)


def _retry_or_fail(task: Task, rt: runtime.Runtime, job_id: str, exc: Exception):
    retries = task.request.retries
    if retries < rt.settings.task_retries:
        countdown = min(60, 2 ** (retries + 1))
        rt.store.update(job_id, state="queued", error=f"retry {retries + 1}/{rt.settings.task_retries} in {countdown}s: {exc}")
        return task.retry(exc=exc, countdown=countdown, max_retries=rt.settings.task_retries)
    return _fail(rt, job_id, f"gave up after {retries} retries: {exc}")


@app.task(name=SEGMENT_IMAGE, bind=True, acks_late=True, reject_on_worker_lost=True)
def segment_image(self: Task, **payload) -> dict:
    rt = runtime.get()
    try:
        job = ImageJob.from_message(payload)
    except PayloadError as exc:
        job_id = payload.get("job_id") if isinstance(payload.get("job_id"), str) else ""
        if job_id and valid_job_id(job_id) and rt.store.r.exists(f"segq:job:{job_id}"):
            raise _fail(rt, job_id, f"invalid request: {exc}") from None
        raise JobFailure(f"invalid message (no job to update): {exc}") from None

    started = rt.store.start(job.job_id, rt.hostname, rt.spec.label)
    if started is None:
        log.warning("job %s has no record (expired or never created); skipping", job.job_id)
        return {"job_id": job.job_id, "skipped": "no job record"}
    if not started:
        log.info("job %s is already finished; redelivery ignored", job.job_id)
        return {"job_id": job.job_id, "skipped": "already finished"}

    t0 = time.perf_counter()
    obj = S3Object(job.input_bucket, job.input_key)
    try:
        model = rt.model(job.model)
        size = rt.storage.size(obj)
        if size > rt.settings.max_input_bytes:
            raise InputError(
                f"input is {size / 2**20:.1f} MiB, over the limit of "
                f"{rt.settings.max_input_bytes / 2**20:.1f} MiB (SEGQ_MAX_INPUT_BYTES)"
            )
        image = decode_image(rt.storage.get_bytes(obj), rt.settings.max_image_pixels)
        timed = predict(model, [image], job.task)
        pred = timed.predictions[0]
        files = render.image_outputs(
            np.asarray(image),
            pred,
            model.labels,
            job_id=job.job_id,
            model=model.name,
            checkpoint=model.checkpoint,
            max_value=model.max_label_value,
        )
        keys = []
        for name, (data, content_type) in files.items():
            key = layout.output_key(job.job_id, name)
            rt.storage.put_bytes(key, data, content_type)
            keys.append(key)
    except ObjectNotFound:
        raise _fail(rt, job.job_id, f"input not found: {obj.uri}") from None
    except (InputError, UsageError) as exc:
        raise _fail(rt, job.job_id, str(exc)) from None
    except (ServiceUnavailable, redis.ConnectionError) as exc:
        raise _retry_or_fail(self, rt, job.job_id, exc) from None
    except Retry:
        raise
    except Exception as exc:  # never let one job take the worker down
        log.exception("job %s: unexpected error", job.job_id)
        raise _fail(rt, job.job_id, f"internal error: {type(exc).__name__}: {exc}") from None

    total = time.perf_counter() - t0
    rt.store.finish(
        job.job_id,
        outputs=keys,
        checkpoint=model.checkpoint,
        inference_s=round(timed.seconds, 6),
        fps=round(1.0 / timed.seconds, 3) if timed.seconds > 0 else None,
        total_s=round(total, 6),
        frames=1,
        width=image.width,
        height=image.height,
        segments=len(pred.segments),
    )
    rt.count("jobs_done")
    return {"job_id": job.job_id, "state": "done", "outputs": keys, "inference_s": round(timed.seconds, 4)}
