"""The shard task: a batch's images, several at a time, as one task (``segq.shards``).

``segq.segment_shard`` reads its shard's list of images from S3 and runs each image
(``workers.tasks.image.segment_image``) in a few threads of its own (``in_flight``: two, or
``SEGQ_MAX_BATCH`` when that is more, so that images of one size can share a forward pass), so
that one image is fetched and decoded while another is in the model and a third is rendered and
uploaded. What each image gave goes into the shard's results, written to S3 once at its end, then
the shard ends in one Lua step with its counts and its images' histogram observations.

- A bad image (corrupt, too large, not an image, missing, outside ``SEGQ_INPUT_PREFIXES``) fails
  with the reason; the others go on.
- A transient storage failure stops the shard's new images; those running finish, a progress
  note is written, and the skeleton sends the task again with a countdown (its retry budget
  counts from the shard's first transient failure); the next run skips what is done.
- Every ``CHECK_SECONDS`` it looks whether its batch was canceled (it stops: the images it has
  not finished are canceled) or images of it were (it skips them), and every
  ``PROGRESS_SECONDS`` it notes what it has finished, for a worker that takes it over after this
  one dies.
- Run twice (redelivered), the first run to end counts; the other's results file is removed.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from segq import metrics, registry
from segq.errors import InputError, ObjectNotFound, ServiceUnavailable, UsageError
from segq.protocol import SEGMENT_SHARD, ShardJob
from segq.shards import CHECK_SECONDS, PROGRESS_SECONDS, ImageResult, ShardImage, ShardSpec
from segq.states import JobState
from workers.host.runtime import Runtime
from workers.tasks.image import segment_image
from workers.tasks.skeleton import Context, shard_task

log = logging.getLogger(__name__)


def in_flight(rt: Runtime) -> int:
    """Images a shard runs at once."""
    return max(2, rt.settings.max_batch)


class Stopped(Exception):
    """The shard stops taking images: its batch was canceled."""


@shard_task(SEGMENT_SHARD)
def segment_shard(ctx: Context) -> dict:
    return run_shard(ctx.rt, ctx.job, ctx.attempt, set(ctx.canceled), task_id=ctx.task.request.id)


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
    from segq import layout

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
