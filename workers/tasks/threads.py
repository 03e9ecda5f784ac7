"""The threads that keep a video chunk's frames moving around the model stage.

- :class:`Ahead`: a thread that runs an iterator ahead of its consumer into a bounded queue
  (a chunk's decoder);
- :class:`Behind`: a thread that consumes items behind their producer from a bounded queue
  (a chunk's renderer and encoder).

Errors travel to the thread that owns the work: a decoder's to the consumer at the item where it
happened, an encoder's to the next ``put`` or ``close``. So the task's own thread raises them, and
the task skeleton maps them to the job.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator

_STOP = object()


class Ahead:
    """Iterate ``source`` in a thread of its own, up to ``maxsize`` items ahead of the consumer.

    Iterating this object yields the source's items in order; an exception of the source is
    raised to the consumer where it happened. ``close()`` (or leaving the ``with`` block) stops
    the thread early and closes the source (in its thread).
    """

    def __init__(self, source: Iterable, maxsize: int = 8, name: str = "segq-ahead"):
        self._source = source
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        it = iter(self._source)
        try:
            for item in it:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - raised in the consumer
            self._put(("error", exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator:
        while not self._done:
            kind, value = self._queue.get()
            if kind == "item":
                yield value
                continue
            self._done = True
            self._thread.join()
            if kind == "error":
                raise value

    def close(self) -> None:
        self._stop.set()
        self._done = True
        self._thread.join()

    def __enter__(self) -> "Ahead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Behind:
    """Run ``consume(item)`` on every ``put`` item, in order, in a thread of its own, with at most
    ``maxsize`` items waiting. The first exception of ``consume`` is raised by the next ``put`` or
    by ``close``; the items after it are dropped."""

    def __init__(self, consume: Callable[[Any], None], maxsize: int = 8, name: str = "segq-behind"):
        self._consume = consume
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._error: BaseException | None = None
        self._closed = False
        self._dropping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None or self._dropping:
                continue  # drain, so the producer never blocks
            try:
                self._consume(item)
            except BaseException as exc:  # noqa: BLE001 - raised in the producer
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item) -> None:
        if self._closed:
            raise RuntimeError("put after close")
        self._raise()
        self._queue.put(item)

    def close(self) -> None:
        """Wait until every item is consumed; raise the consumer's exception, if any."""
        self._finish()
        self._raise()

    def abort(self) -> None:
        """Stop after the item being consumed; drop the rest (errors are kept, not raised)."""
        self._dropping = True
        self._finish()

    def _finish(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join()

    def __enter__(self) -> "Behind":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
