"""The image task: fetch, decode, segment, render, upload, finish. Idempotent: a redelivered
message for a finished job does nothing, and a re-run writes the same outputs to the same keys.
The skeleton (parsing, skipping, errors to job states) is ``workers.tasks.skeleton``.

Several image tasks run at once in a worker's pool threads; the forward pass runs on the
process's model stage through the model's ``Segmenter`` (``workers.model.segmenter``: preprocessing and
post-processing in this thread, and on CUDA the overlay's blend beside the label map), everything
else in the task's own thread, so one job's fetch, decode, post-processing, rendering and uploads
overlap another's forward pass. The seconds of every stage go into the job record
(``segq.jobs.STAGES``)."""

from __future__ import annotations

import time

import numpy as np

from segq import registry
from segq.protocol import SEGMENT_IMAGE, ImageJob
from workers.media import render
from workers.media.decode import load, open_image
from workers.tasks.outputs import write_outputs
from workers.tasks.skeleton import Context, job_task


@job_task(SEGMENT_IMAGE, ImageJob.from_message, starts_job=True)
def segment_image(ctx: Context) -> dict:
    rt, job = ctx.rt, ctx.job
    t0 = time.perf_counter()
    segmenter = rt.model(job.model)
    data = rt.storage.get_bytes(ctx.input, max_bytes=rt.settings.max_input_bytes)
    fetched = time.perf_counter()
    header = open_image(data, rt.settings.max_image_pixels)
    # The worker's memory budget: a large image waits for room instead of running beside others.
    with rt.budget.hold(header.width * header.height):
        t1 = time.perf_counter()
        image = load(header, rt.settings.max_image_pixels)
        stages = {"fetch": fetched - t0, "memory": t1 - fetched, "decode": time.perf_counter() - t1}
        return _segment(ctx, segmenter, image, t0, stages)


def _segment(ctx: Context, segmenter, image, t0: float, stages: dict) -> dict:
    rt, job = ctx.rt, ctx.job
    result = segmenter.predict([image], job.task)
    pred = result.predictions[0]
    model = segmenter.model
    parts = render.output_parts(np.asarray(image), pred, model.labels, job_id=job.job_id, model=model.name,
                                checkpoint=model.checkpoint, max_value=model.max_label_value,
                                processor=model.processor_name, postprocess=model.postprocess)
    keys, render_s, upload_s = write_outputs(rt.storage, rt.writers, job.job_id, parts)
    times = result.times
    stages.update(preprocess=times.preprocess_s, wait=times.wait_s, forward=times.forward_s,
                  postprocess=times.postprocess_s, render=times.blend_s + render_s,
                  upload=upload_s)
    seconds = result.seconds
    rt.records.finish(
        job.job_id, checkpoint=model.checkpoint, inference_s=round(seconds, 6),
        fps=round(1.0 / seconds, 3) if seconds > 0 else None,
        total_s=round(time.perf_counter() - t0, 6), frames=1, width=image.width, height=image.height,
        segments=len(pred.segments), stages=stages,
    )
    rt.count(registry.JOBS_DONE)
    rt.observe(job.model, stages)
    return {"job_id": job.job_id, "state": "done", "outputs": keys, "inference_s": round(seconds, 4)}
