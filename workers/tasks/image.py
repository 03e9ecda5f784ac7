"""A shard's images: ``run_shard`` runs them, several at once, each through ``segment_image``
(fetch, decode, segment, render, upload), and ends the shard. Plain functions of the worker's
runtime (no broker, no torch imported here), which the shard task (``workers.tasks.shard``) runs
and tests and benchmarks call directly.

The forward pass runs on the process's model stage through the model's ``Segmenter``
(``workers.model.segmenter``: preprocessing and post-processing in the calling thread, and on
CUDA the overlay's blend beside the label map), everything else in the calling thread, so one
image's fetch, decode, post-processing, rendering and uploads overlap another's forward pass. The
outputs go to the image's own keys (``outputs/<image id>/``: ``segq.layout``), so running it
again writes the same files. The seconds of every stage are in the result (``segq.jobs.STAGES``).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

import numpy as np

from segq import layout, metrics, registry
from segq.errors import InputError, ObjectNotFound, ServiceUnavailable, UsageError
from segq.input_policy import require_input
from segq.protocol import ShardJob
from segq.shards import CHECK_SECONDS, PROGRESS_SECONDS, ImageResult, ShardImage, ShardSpec
from segq.states import JobState
from workers.media import render
from workers.media.decode import load, open_image
from workers.tasks.outputs import write_outputs

if TYPE_CHECKING:
    from workers.host.runtime import Runtime

log = logging.getLogger(__name__)


def segment_image(rt, task: str, segmenter, image: ShardImage, shard: int = 0, attempt: int = 0) -> ImageResult:
    """Segment one image for ``task`` and write its outputs; its result (done). Raises what goes
    wrong: ``InputError`` for a bad input (the caller fails the image), ``ServiceUnavailable``
    for storage, anything else for a bug."""
    t0, c0 = time.perf_counter(), time.thread_time()
    started_at = time.time()
    obj = image.object
    require_input(rt.settings, obj.bucket, obj.key)  # SEGQ_INPUT_PREFIXES, before anything is read
    data = rt.storage.get_bytes(obj, max_bytes=rt.settings.max_input_bytes)
    fetched, c_fetched = time.perf_counter(), time.thread_time()
    header = open_image(data, rt.settings.max_image_pixels)
    # The worker's memory budget: a large image waits for room instead of running beside others.
    with rt.budget.hold(header.width * header.height):
        t1, c1 = time.perf_counter(), time.thread_time()
        decoded = load(header, rt.settings.max_image_pixels)
        stages = {"fetch": fetched - t0, "memory": t1 - fetched, "decode": time.perf_counter() - t1}
        cpu = {"fetch": c_fetched - c0, "decode": time.thread_time() - c1}
        result = segmenter.predict([decoded], task)
        pred = result.predictions[0]
        model = segmenter.model
        c2 = time.thread_time()
        parts = render.output_parts(np.asarray(decoded), pred, model.labels, job_id=image.id, model=model.name,
                                    checkpoint=model.checkpoint, max_value=model.max_label_value,
                                    processor=model.processor_name, postprocess=model.postprocess)
        written = write_outputs(rt.storage, rt.writers, image.id, parts)
        c_parts = time.thread_time() - c2  # the parts' own set-up, in this thread (the pool encodes)
    times = result.times
    stages.update(preprocess=times.preprocess_s, wait=times.wait_s, forward=times.forward_s,
                  postprocess=times.postprocess_s, render=times.blend_s + written.render_s, upload=written.upload_s)
    cpu.update(preprocess=times.preprocess_cpu_s, postprocess=times.postprocess_cpu_s,
               render=times.blend_cpu_s + c_parts + written.render_cpu_s, upload=written.upload_cpu_s)
    return ImageResult.of(
        image, JobState.DONE.value, outputs=written.keys, width=decoded.width, height=decoded.height,
        segments=len(pred.segments), inference_s=round(result.seconds, 6), total_s=round(time.perf_counter() - t0, 6),
        started_at=started_at, finished_at=time.time(), stages={k: round(v, 6) for k, v in stages.items()},
        cpu={k: round(v, 6) for k, v in cpu.items()},
        checkpoint=model.checkpoint, worker=rt.hostname, device=rt.spec.label, shard=shard, attempt=attempt)


def in_flight(rt: Runtime) -> int:
    """Images a shard runs at once."""
    return max(2, rt.settings.max_batch)


class Stopped(Exception):
    """The shard stops taking images: its batch was canceled."""


def run_shard(rt: Runtime, job: ShardJob, attempt: int, canceled: set[int], task_id: str | None = None) -> dict:
    """Run the shard's images not finished yet and end it (module docstring). ``task_id``: the
    task running it, whose message is done with in the shard's end (``workers.host.upkeep``)."""
    started = time.perf_counter()
    segmenter = rt.model(job.model)  # a model this worker does not serve fails the shard at once
    spec = rt.shards.spec(job.batch, job.index)
    if spec.model != job.model or spec.task != job.task:
        raise InputError(f"shard {job.index} of batch {job.batch}: its list is of {spec.task} on {spec.model}, "
                         f"its message of {job.task} on {job.model}")
    results: dict[int, ImageResult] = {}
    if attempt > 1:  # what an earlier attempt noted as finished
        results.update({r.pos: r for r in rt.shards.progress(job.batch, job.index) if r.state == JobState.DONE})
    runner = _Runner(rt, job, spec, segmenter, attempt, results, canceled)
    runner.run()
    lines = [results[i.pos] for i in spec.images]
    done = [r for r in lines if r.state == JobState.DONE]
    failed = sum(r.state == JobState.FAILED for r in lines)
    inference_s = sum(r.inference_s or 0.0 for r in done)
    rt.shards.write_results(job.batch, job.index, attempt, lines)
    task = (task_id, rt.upkeep.tag_of(task_id) or "") if task_id and rt.upkeep is not None else None
    work = [r.total_s for r in done if r.total_s]  # each image's seconds in the worker, fetch to upload
    outcome = rt.shards.end(job.batch, job.index, attempt, len(done), failed, len(lines) - len(done) - failed,
                            inference_s, round(len(done) / inference_s, 3) if inference_s else None, task=task,
                            image_s=sum(work) / len(work) if work else None)
    if task is not None:
        rt.upkeep.ended(task_id)  # its message is done with too
    if outcome > 0:  # this end counts: its images' timings go to the histograms (with the next beat)
        tally = metrics.Tally()
        for r in done:
            tally.stages(job.model, r.stages)
            tally.observe(metrics.LATENCY, (job.model, "image", job.priority),
                          max(0.0, (r.finished_at or 0) - spec.created_at))
        rt.observe(tally)
    if outcome == 0:  # another attempt ended first: its results count
        state = rt.shards.state(job.batch, job.index)
        if state is not None and state.e != attempt:
            _quietly(lambda: rt.shards.storage.delete(_result_key(job, attempt)))
    if outcome == 2:
        rt.batch_finished(job.batch)
    _quietly(lambda: rt.shards.drop_progress(job.batch, job.index))
    for _ in done:
        rt.count(registry.JOBS_DONE)
    for _ in range(failed):
        rt.count(registry.JOBS_FAILED)
    return {"batch": job.batch, "shard": job.index, "attempt": attempt, "images": len(lines), "done": len(done),
            "failed": failed, "outcome": outcome, "seconds": round(time.perf_counter() - started, 3)}


def _result_key(job: ShardJob, attempt: int) -> str:
    return layout.shard_result_key(job.batch, job.index, attempt)


def _quietly(fn) -> None:
    try:
        fn()
    except ServiceUnavailable as exc:
        log.warning("shard clean-up: %s", exc)


class _Runner:
    """One run of a shard's images, ``in_flight`` at a time (module docstring)."""

    def __init__(self, rt: Runtime, job: ShardJob, spec: ShardSpec, segmenter, attempt: int,
                 results: dict[int, ImageResult], canceled: set[int]):
        self.rt, self.job, self.spec, self.segmenter, self.attempt = rt, job, spec, segmenter, attempt
        self.results, self.canceled = results, canceled
        self.checked = self.noted = time.monotonic()

    def _one(self, image: ShardImage) -> ImageResult:
        try:
            return segment_image(self.rt, self.job.task, self.segmenter, image, self.job.index, self.attempt)
        except ObjectNotFound:
            return self._failed(image, f"input not found: {image.input}")
        except (InputError, UsageError) as exc:
            return self._failed(image, str(exc))
        except ServiceUnavailable as exc:
            if exc.transient:
                raise
            return self._failed(image, str(exc))
        except Exception as exc:  # noqa: BLE001 (a bug must fail the image, not the worker)
            log.exception("shard %s of batch %s: image %s", self.job.index, self.job.batch, image.id)
            return self._failed(image, f"internal error: {type(exc).__name__}: {exc}")

    def _failed(self, image: ShardImage, error: str) -> ImageResult:
        return ImageResult.of(image, JobState.FAILED.value, error, started_at=None, finished_at=time.time(),
                              worker=self.rt.hostname, device=self.rt.spec.label, shard=self.job.index,
                              attempt=self.attempt)

    def _canceled(self, image: ShardImage) -> ImageResult:
        return ImageResult.of(image, JobState.CANCELED.value, finished_at=time.time(), shard=self.job.index,
                              attempt=self.attempt)

    def _look(self) -> None:
        """Every ``CHECK_SECONDS``: raise ``Stopped`` when the batch was canceled; take the
        positions canceled in the shard. Every ``PROGRESS_SECONDS``: the progress note."""
        now = time.monotonic()
        if now - self.checked >= CHECK_SECONDS:
            self.checked = now
            batch_canceled, positions = self.rt.shards.check(self.job.batch, self.job.index)
            self.canceled |= positions
            if batch_canceled:
                raise Stopped()
        if now - self.noted >= PROGRESS_SECONDS:
            self.noted = now
            self._note()

    def _note(self) -> None:
        done = [r for r in self.results.values() if r.state == JobState.DONE]
        if done:
            self.rt.shards.write_progress(self.job.batch, self.job.index, done)

    def run(self) -> None:
        """Fill ``results`` for every image of the shard; raises a transient error after noting
        the progress (the task is sent again)."""
        todo = [i for i in self.spec.images if i.pos not in self.results]
        running: dict[Future, ShardImage] = {}
        error: Exception | None = None
        stopped = False
        with ThreadPoolExecutor(in_flight(self.rt), thread_name_prefix="segq-image") as pool:
            queue = iter(todo)
            while True:
                if error is None and not stopped:
                    try:
                        self._look()
                    except Stopped:
                        stopped = True
                while error is None and not stopped and len(running) < in_flight(self.rt):
                    image = next(queue, None)
                    if image is None:
                        break
                    if image.pos in self.canceled:
                        self.results[image.pos] = self._canceled(image)
                        continue
                    running[pool.submit(self._one, image)] = image
                if not running:
                    break
                finished, _ = wait(running, timeout=CHECK_SECONDS, return_when=FIRST_COMPLETED)
                for future in finished:
                    image = running.pop(future)
                    try:
                        self.results[image.pos] = future.result()
                    except Exception as exc:  # a transient storage failure
                        error = error or exc
        for image in todo:  # what a stop left
            if image.pos not in self.results and (stopped or image.pos in self.canceled):
                self.results[image.pos] = self._canceled(image)
        if error is not None:
            self._note()
            raise error
