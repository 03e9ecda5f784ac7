"""The worker's memory budget: how many pixels its tasks may hold at once.

A worker process runs ``SEGQ_WORKER_CONCURRENCY`` tasks side by side, and the memory an image task
takes grows with its pixels (the decoded image, its label map at full size, the overlay, the
encoded outputs): a few 40 MP images at once would take several gigabytes. So every task asks
:class:`PixelBudget` for its pixels before it decodes anything (an image: its width x height,
read from the file's header; a video chunk: a frame's pixels times the frames it holds at once)
and gives them back when it ends; a task that does not fit waits for the others to give theirs
back, in the order they asked. One task alone always fits (what it asks is capped at the whole
budget), so a large image runs alone instead of three at a time, and small ones share the
budget. ``SEGQ_WORKER_PIXEL_BUDGET`` sets it; its default is ``SEGQ_MAX_IMAGE_PIXELS`` (the
largest image accepted runs alone).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time


class PixelBudget:
    def __init__(self, pixels: int):
        if pixels < 1:
            raise ValueError("a pixel budget must be at least 1")
        self.total = pixels
        self.free = pixels
        self._cond = threading.Condition()
        self._waiting: collections.deque[object] = collections.deque()
        self.waited_s = 0.0  # seconds tasks spent waiting for room, in all

    @contextlib.contextmanager
    def hold(self, pixels: int):
        """Hold ``pixels`` (capped at the budget) while the block runs; wait first, in order of
        asking, until they are free."""
        want = max(1, min(int(pixels), self.total))
        ticket = object()
        started = time.monotonic()
        with self._cond:
            self._waiting.append(ticket)
            while self._waiting[0] is not ticket or self.free < want:
                self._cond.wait()
            self._waiting.popleft()
            self.free -= want
            self.waited_s += time.monotonic() - started
            self._cond.notify_all()  # the next in line may fit too
        try:
            yield want
        finally:
            with self._cond:
                self.free += want
                self._cond.notify_all()

    @property
    def held(self) -> int:
        return self.total - self.free


def chunk_pixels(width: int, height: int, batch_size: int) -> int:
    """What a video chunk holds at once, in pixels: the frames decoded ahead and waiting to be
    encoded (``workers.model.stage``'s queues, 8 each), two batches (one in the model, one being
    post-processed), as frames of ``width`` x ``height``."""
    return width * height * (16 + 2 * batch_size)
