"""One image of a shard: fetch, decode, segment, render, upload. A plain function of the worker's
runtime (no broker), which the shard task (``workers.tasks.shard``) runs for each of its images,
several at once, and tests and benchmarks call directly.

The forward pass runs on the process's model stage through the model's ``Segmenter``
(``workers.model.segmenter``: preprocessing and post-processing in the calling thread, and on
CUDA the overlay's blend beside the label map), everything else in the calling thread, so one
image's fetch, decode, post-processing, rendering and uploads overlap another's forward pass. The
outputs go to the image's own keys (``outputs/<image id>/``: ``segq.layout``), so running it
again writes the same files. The seconds of every stage are in the result (``segq.jobs.STAGES``).
"""

from __future__ import annotations

import time

import numpy as np

from segq.input_policy import require_input
from segq.shards import ImageResult, ShardImage
from segq.states import JobState
from workers.media import render
from workers.media.decode import load, open_image
from workers.tasks.outputs import write_outputs


def segment_image(rt, task: str, segmenter, image: ShardImage, shard: int = 0, attempt: int = 0) -> ImageResult:
    """Segment one image for ``task`` and write its outputs; its result (done). Raises what goes
    wrong: ``InputError`` for a bad input (the caller fails the image), ``ServiceUnavailable``
    for storage, anything else for a bug."""
    t0 = time.perf_counter()
    started_at = time.time()
    obj = image.object
    require_input(rt.settings, obj.bucket, obj.key)  # SEGQ_INPUT_PREFIXES, before anything is read
    data = rt.storage.get_bytes(obj, max_bytes=rt.settings.max_input_bytes)
    fetched = time.perf_counter()
    header = open_image(data, rt.settings.max_image_pixels)
    # The worker's memory budget: a large image waits for room instead of running beside others.
    with rt.budget.hold(header.width * header.height):
        t1 = time.perf_counter()
        decoded = load(header, rt.settings.max_image_pixels)
        stages = {"fetch": fetched - t0, "memory": t1 - fetched, "decode": time.perf_counter() - t1}
        result = segmenter.predict([decoded], task)
        pred = result.predictions[0]
        model = segmenter.model
        parts = render.output_parts(np.asarray(decoded), pred, model.labels, job_id=image.id, model=model.name,
                                    checkpoint=model.checkpoint, max_value=model.max_label_value,
                                    processor=model.processor_name, postprocess=model.postprocess)
        keys, render_s, upload_s = write_outputs(rt.storage, rt.writers, image.id, parts)
    times = result.times
    stages.update(preprocess=times.preprocess_s, wait=times.wait_s, forward=times.forward_s,
                  postprocess=times.postprocess_s, render=times.blend_s + render_s, upload=upload_s)
    return ImageResult.of(
        image, JobState.DONE.value, outputs=keys, width=decoded.width, height=decoded.height,
        segments=len(pred.segments), inference_s=round(result.seconds, 6), total_s=round(time.perf_counter() - t0, 6),
        started_at=started_at, finished_at=time.time(), stages={k: round(v, 6) for k, v in stages.items()},
        checkpoint=model.checkpoint, worker=rt.hostname, device=rt.spec.label, shard=shard, attempt=attempt)
