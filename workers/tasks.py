"""The image task: fetch, decode, segment, render, upload, finish. Idempotent: a redelivered
message for a finished job does nothing, and a re-run writes the same outputs to the same keys.
The skeleton (parsing, skipping, errors to job states) is ``workers.skeleton``.

Several image tasks run at once in a worker's pool threads; the forward pass runs on the
process's model stage (``workers.pipeline``), everything else in the task's own thread, so one
job's fetch, decode, post-processing, rendering and uploads overlap another's forward pass. On
CUDA the overlay is blended on the device right after post-processing
(``workers.inference.render_on_device``); elsewhere ``workers.render`` blends it on the CPU."""

from __future__ import annotations

import time

import numpy as np

from segq import layout, registry
from segq.protocol import SEGMENT_IMAGE, ImageJob
from workers import inference, pipeline, render
from workers.decode import load, open_image
from workers.skeleton import Context, job_task


@job_task(SEGMENT_IMAGE, ImageJob.from_message, starts_job=True)
def segment_image(ctx: Context) -> dict:
    rt, job = ctx.rt, ctx.job
    t0 = time.perf_counter()
    model = rt.model(job.model)
    data = rt.storage.get_bytes(ctx.input, max_bytes=rt.settings.max_input_bytes)
    header = open_image(data, rt.settings.max_image_pixels)
    # The worker's memory budget: a large image waits for room instead of running beside others.
    with rt.budget.hold(header.width * header.height):
        return _segment(ctx, model, load(header, rt.settings.max_image_pixels), t0)


def _segment(ctx: Context, model, image, t0: float) -> dict:
    rt, job = ctx.rt, ctx.job
    on_device = inference.blends_on_device(model)
    timed = pipeline.predict(rt.stage, model, [image], job.task, keep_on_device=on_device)
    pred = timed.predictions[0]
    rgb = np.asarray(image)
    if on_device:  # the overlay blended beside the label map; only the uint8 overlay comes back
        inference.render_on_device(model, [pred], [rgb])
    files = render.image_outputs(rgb, pred, model.labels, job_id=job.job_id, model=model.name,
                                 checkpoint=model.checkpoint, max_value=model.max_label_value,
                                 processor=model.processor_name, postprocess=model.postprocess)
    keys = []
    for name, (body, content_type) in files.items():
        key = layout.output_key(job.job_id, name)
        rt.storage.put_bytes(key, body, content_type)
        keys.append(key)
    rt.store.finish(
        job.job_id, checkpoint=model.checkpoint, inference_s=round(timed.seconds, 6),
        fps=round(1.0 / timed.seconds, 3) if timed.seconds > 0 else None,
        total_s=round(time.perf_counter() - t0, 6), frames=1, width=image.width, height=image.height,
        segments=len(pred.segments),
    )
    rt.count(registry.JOBS_DONE)
    return {"job_id": job.job_id, "state": "done", "outputs": keys, "inference_s": round(timed.seconds, 4)}
