"""The model stage: ONE thread runs every forward pass of a worker process.

A worker process runs several tasks at once (Celery's ``threads`` pool, ``SEGQ_WORKER_CONCURRENCY``)
so that while the model runs on one item, the next is fetched and decoded and the previous one is
post-processed, rendered, encoded and uploaded. :class:`ModelStage` makes that safe and keeps the
model busy: one thread owns every forward pass (so CUDA work is issued by one thread, in order,
and the models are used by one thread), fed by a bounded queue; ``submit(runner, inputs)``
returns a future of the forward outputs (the runner is a ``workers.model.segmenter.Segmenter``).
It counts the seconds it was busy, the passes and the items (images, frames) they held: the worker
publishes them. Preprocessing runs in the submitting thread, and on a GPU worker the
post-processing too (the ``Segmenter``'s two steps), so the next forward pass starts while the
previous outputs are post-processed; passes of one shape waiting together may run as one batch
(``SEGQ_MAX_BATCH``).

On a CPU worker the post-processing runs on the stage's thread as well (``call``), in turn with the
passes: there the forward pass and the post-processing are the same cores' arithmetic, and torch's
CPU threads (OpenMP) are fast only in the one thread that has them all. A thread that ran a
parallel region keeps a pool of OpenMP threads for its life; once the process's pooled threads
outnumber the cores, every parallel region wakes its threads from sleep. Post-processing a 1080p
frame in a task thread took about 1.7x as long as on the thread that has the cores (measured:
148 ms against 87 with 2 threads on 2 cores; 1 thread: 146 ms).

A pass's exception goes to its future, so the task's own thread raises it and the task skeleton
maps it to the job. :class:`InlineStage` runs each pass at once in the caller's thread (code
outside a worker). This module imports no torch.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger(__name__)

#: Items waiting for the model stage, at most: a submit beyond it blocks (back-pressure).
STAGE_QUEUE = 4
#: Seconds over which the published busy fraction is computed.
BUSY_WINDOW_SECONDS = 30.0

_STOP = object()
_CALL = object()  # the runner of a ``call``: a function, not a forward pass


class StageFuture(Future):
    """A forward pass's future. Set before the result: ``seconds``, how long the pass ran (the
    whole pass when several submissions ran as one); ``queued_s``, how long it waited for the
    stage; ``batch_items``, the images or frames of the pass it ran in."""

    seconds: float = 0.0
    queued_s: float = 0.0
    batch_items: int = 0


@dataclass(frozen=True)
class StageStats:
    busy_s: float  # seconds the stage ran forward passes, since it started
    wall_s: float  # seconds since it started
    items: int  # images / frames processed
    passes: int  # forward passes (batches)
    recent: float  # busy fraction over the last ``window`` seconds (or since the start, if shorter)

    @property
    def busy_fraction(self) -> float:
        return self.busy_s / self.wall_s if self.wall_s > 0 else 0.0


def _settle(future: StageFuture, clock: Callable[[], float], fn: Callable[..., Any], *args, **kwargs) -> None:
    """Run ``fn(*args, **kwargs)`` into ``future`` (a ``call``'s): ``seconds`` first, then its
    result or its exception."""
    start = clock()
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - it belongs to the caller
        future.seconds = clock() - start
        future.set_exception(exc)
        return
    future.seconds = clock() - start
    future.set_result(result)


def _default_forward(runner, inputs):
    return runner.forward(inputs)  # a Segmenter's: synchronised, so busy time is the device's


class ModelStage:
    """One thread that runs every forward pass, in submission order (module docstring).

    ``submit(runner, inputs)`` queues a pass of ``runner`` (a ``workers.model.segmenter.Segmenter``: its
    ``forward`` runs it); ``forward(runner, inputs)`` replaces that call (tests). ``submit`` blocks
    while ``maxsize`` passes are waiting. ``init`` runs once on the stage's thread before its
    first pass, ``caller_init`` once on each thread that submits (the worker sets torch's thread
    counts with them: the worker's threads for the forward passes, a share for each task thread's
    pre- and post-processing), ``tune`` before every pass and call on the stage's thread (the
    worker's ``workers.host.cpus.StageThreads``: how many threads the next pass takes).

    Dynamic batching (``max_batch`` > 1, ``SEGQ_MAX_BATCH``): the passes waiting for the same
    runner with the same ``runner.batch_key(inputs)`` (the same input shape: different shapes are
    never padded into one batch) run as one, up to ``max_batch`` items, in submission order; the
    stage waits up to ``delay`` seconds (``SEGQ_BATCH_DELAY_MS``) for more when the batch is not
    full (0: only what is already waiting). ``runner.concat`` joins the inputs, ``runner.split``
    hands each submission its part of the outputs.
    """

    def __init__(self, forward: Callable[[Any, Any], Any] | None = None, maxsize: int = STAGE_QUEUE,
                 window: float = BUSY_WINDOW_SECONDS, name: str = "segq-model",
                 clock: Callable[[], float] = time.monotonic, init: Callable[[], None] | None = None,
                 caller_init: Callable[[], None] | None = None, max_batch: int = 1, delay: float = 0.0,
                 tune: Callable[[], None] | None = None):
        self._forward = forward or _default_forward
        self._tune = tune
        self.max_batch, self.delay = max(1, max_batch), max(0.0, delay)
        self._init, self._caller_init = init, caller_init
        self._callers = threading.local()
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._clock = clock
        self._window = window
        self._lock = threading.Lock()
        self._started = clock()
        self._busy = 0.0
        self._items = 0
        self._passes = 0
        self._recent: collections.deque[tuple[float, float]] = collections.deque()  # (start, end) of passes
        self._running_since: float | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- the submitting side --------------------------------------------------------------
    def submit(self, model, inputs, items: int = 1) -> StageFuture:
        """Queue a forward pass of ``model`` on ``inputs`` (``items`` images or frames)."""
        if self._closed:
            raise RuntimeError("the model stage is closed")
        if self._caller_init is not None and not getattr(self._callers, "ready", False):
            self._callers.ready = True
            try:
                self._caller_init()
            except Exception:  # a tuning hook, as ``init``
                log.exception("model stage: caller init failed")
        future = StageFuture()
        self._queue.put((future, model, inputs, items, self._clock()))
        return future

    def run(self, model, inputs, items: int = 1):
        """``submit`` and wait: the outputs (or the pass's exception)."""
        return self.submit(model, inputs, items).result()

    def call(self, fn: Callable[..., Any], *args, **kwargs) -> StageFuture:
        """Queue ``fn(*args, **kwargs)`` to run on the stage's thread, in turn with the passes: a
        CPU worker's post-processing (``Segmenter.finish``), so that all of its torch arithmetic
        runs on the one thread that has all the CPU threads (module docstring). Never batched
        with anything, not counted as a pass; the future's ``seconds`` and ``queued_s`` as a pass's."""
        if self._closed:
            raise RuntimeError("the model stage is closed")
        future = StageFuture()
        self._queue.put((future, _CALL, (fn, args, kwargs), 0, self._clock()))
        return future

    def close(self, timeout: float | None = None) -> None:
        """Run what was submitted, then stop the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> StageStats:
        now = self._clock()
        with self._lock:
            busy, items, passes = self._busy, self._items, self._passes
            spans = list(self._recent)
            if self._running_since is not None:
                busy += now - self._running_since
                spans.append((self._running_since, now))
        window_start = max(self._started, now - self._window)
        recent = sum(max(0.0, min(end, now) - max(start, window_start)) for start, end in spans)
        span = now - window_start
        return StageStats(busy_s=busy, wall_s=now - self._started, items=items, passes=passes,
                          recent=min(1.0, recent / span) if span > 0 else 0.0)

    def fields(self) -> dict:
        """The stage's figures as the worker's registry record holds them."""
        s = self.stats()
        return {"model_busy": round(s.recent, 4), "model_busy_s": round(s.busy_s, 3),
                "model_wall_s": round(s.wall_s, 3), "model_items": s.items, "model_passes": s.passes}

    # -- the stage thread ------------------------------------------------------------------
    def _run(self) -> None:
        if self._init is not None:
            try:
                self._init()
            except Exception:  # a tuning hook: the stage must run without it
                log.exception("model stage: init failed")
        held: collections.deque = collections.deque()  # taken from the queue, not run yet
        stopping = False
        while True:
            if held:
                job = held.popleft()
            elif stopping:
                return
            else:
                job = self._queue.get()
            if job is _STOP:
                stopping = True
                continue
            group = [job]
            if self.max_batch > 1:
                stopping = self._collect(group, held) or stopping
            self._pass(group)
            job = group = None  # hold no batch between passes

    def _key(self, job):
        runner, inputs = job[1], job[2]
        key = getattr(runner, "batch_key", None)
        return (id(runner), key(inputs)) if key is not None else None

    def _collect(self, group: list, held: collections.deque) -> bool:
        """Add to ``group`` the waiting passes that may run with it (module docstring); the first
        one that may not, and what follows it, wait in ``held``. True when the stop came."""
        key = self._key(group[0])
        if key is None:
            return False
        items = group[0][3]
        deadline = self._clock() + self.delay
        while items < self.max_batch:
            if held:
                nxt = held[0]
            else:
                try:
                    remaining = deadline - self._clock()
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    return False
                held.append(nxt)
            if nxt is _STOP or self._key(nxt) != key or items + nxt[3] > self.max_batch:
                return False
            held.popleft()
            group.append(nxt)
            items += nxt[3]
        return False

    def _pass(self, group: list) -> None:
        group = [job for job in group if job[0].set_running_or_notify_cancel()]
        if not group:
            return
        if self._tune is not None:
            try:
                self._tune()
            except Exception:  # a tuning hook, as ``init``
                log.exception("model stage: tune failed")
        runner = group[0][1]
        if runner is _CALL:  # alone in its group: ``_key`` is None for it
            [(future, _, (fn, args, kwargs), _, submitted)] = group
            future.queued_s = self._clock() - submitted
            _settle(future, self._clock, fn, *args, **kwargs)
            return
        items = sum(job[3] for job in group)
        start = self._clock()
        with self._lock:
            self._running_since = start
        for future, _, _, _, submitted in group:
            future.queued_s = start - submitted
            future.batch_items = items
        try:
            if len(group) == 1:
                parts = [self._forward(runner, group[0][2])]
            else:
                outputs = self._forward(runner, runner.concat([job[2] for job in group]))
                parts = runner.split(outputs, [job[3] for job in group])
        except BaseException as exc:  # noqa: BLE001 - it belongs to the submitters
            seconds = self._account(start, 0)
            for future, *_ in group:
                future.seconds = seconds
                future.set_exception(exc)
            return
        seconds = self._account(start, items)
        for (future, *_), part in zip(group, parts):
            future.seconds = seconds
            future.set_result(part)

    def _account(self, start: float, items: int) -> float:
        end = self._clock()
        with self._lock:
            self._running_since = None
            self._busy += end - start
            self._items += items
            self._passes += 1
            self._recent.append((start, end))
            while self._recent and self._recent[0][1] < end - self._window:
                self._recent.popleft()
        return end - start


class InlineStage:
    """A ``ModelStage`` stand-in that runs each pass at once in the submitting thread (code that
    runs outside a worker: tests, benchmarks)."""

    def __init__(self, forward: Callable[[Any, Any], Any] | None = None):
        self._forward = forward or _default_forward

    def submit(self, model, inputs, items: int = 1) -> StageFuture:
        future = StageFuture()
        future.set_running_or_notify_cancel()
        start = time.monotonic()
        try:
            outputs = self._forward(model, inputs)
        except BaseException as exc:  # noqa: BLE001
            future.seconds = time.monotonic() - start
            future.set_exception(exc)
        else:
            future.seconds = time.monotonic() - start
            future.set_result(outputs)
        future.batch_items = items
        return future

    def run(self, model, inputs, items: int = 1):
        return self.submit(model, inputs, items).result()

    def call(self, fn: Callable[..., Any], *args, **kwargs) -> StageFuture:
        future = StageFuture()
        future.set_running_or_notify_cancel()
        _settle(future, time.monotonic, fn, *args, **kwargs)
        return future
