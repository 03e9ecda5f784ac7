"""The image task. Idempotent: a redelivered message for a finished job does nothing, and a
re-run writes the same outputs to the same keys. Errors: ``workers.failures``."""

from __future__ import annotations

import logging
import time

import numpy as np
from celery import Task

from segq import layout
from segq.errors import InputError
from segq.protocol import SEGMENT_IMAGE, ImageJob
from segq.storage import S3Object
from workers import render, runtime
from workers.app import app
from workers.decode import decode_image
from workers.failures import guarded, parse
from workers.inference import predict

log = logging.getLogger(__name__)

TASK_OPTIONS = dict(bind=True, acks_late=True, reject_on_worker_lost=True)


def check_size(rt: runtime.Runtime, obj: S3Object) -> int:
    size = rt.storage.size(obj)
    if size > rt.settings.max_input_bytes:
        raise InputError(
            f"input is {size / 2**20:.1f} MiB, over the limit of "
            f"{rt.settings.max_input_bytes / 2**20:.1f} MiB (SEGQ_MAX_INPUT_BYTES)"
        )
    return size


def begin(payload: dict, parser):
    """Parse a job's first task and mark the job running.

    Returns ``(runtime, job, input object, skipped)``; ``skipped`` is the task's result when
    there is nothing to do (the job is already final: a redelivery; or its record is gone).
    """
    rt = runtime.get()
    job = parse(rt, payload, parser)
    skipped = None
    started = rt.store.start(job.job_id, rt.hostname, rt.spec.label)
    if started is None:
        log.warning("job %s has no record (expired or never created); skipping", job.job_id)
        skipped = {"job_id": job.job_id, "skipped": "no job record"}
    elif not started:
        log.info("job %s is already finished; redelivery ignored", job.job_id)
        skipped = {"job_id": job.job_id, "skipped": "already finished"}
    return rt, job, S3Object(job.input_bucket, job.input_key), skipped


@app.task(name=SEGMENT_IMAGE, **TASK_OPTIONS)
def segment_image(self: Task, **payload) -> dict:
    rt, job, obj, skipped = begin(payload, ImageJob.from_message)
    if skipped:
        return skipped

    def work() -> dict:
        t0 = time.perf_counter()
        model = rt.model(job.model)
        data = rt.storage.get_bytes(obj, max_bytes=rt.settings.max_input_bytes)
        image = decode_image(data, rt.settings.max_image_pixels)
        timed = predict(model, [image], job.task)
        pred = timed.predictions[0]
        files = render.image_outputs(
            np.asarray(image), pred, model.labels,
            job_id=job.job_id, model=model.name, checkpoint=model.checkpoint, max_value=model.max_label_value,
            processor=model.processor_name,
        )
        keys = []
        for name, (data, content_type) in files.items():
            key = layout.output_key(job.job_id, name)
            rt.storage.put_bytes(key, data, content_type)
            keys.append(key)
        rt.store.finish(
            job.job_id,
            outputs=keys,
            checkpoint=model.checkpoint,
            inference_s=round(timed.seconds, 6),
            fps=round(1.0 / timed.seconds, 3) if timed.seconds > 0 else None,
            total_s=round(time.perf_counter() - t0, 6),
            frames=1,
            width=image.width,
            height=image.height,
            segments=len(pred.segments),
        )
        rt.count("jobs_done")
        return {"job_id": job.job_id, "state": "done", "outputs": keys, "inference_s": round(timed.seconds, 4)}

    return guarded(self, rt, job.job_id, obj.uri, work)
