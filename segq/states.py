"""The states and kinds of jobs and batches, and the priority levels: plain enums, no I/O.

Both sides and every Lua script (``segq.scripts`` passes ``FINAL_STATES`` to them) read the
states from here.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job is. ``done``, ``failed`` and ``canceled`` are final: a final job never moves
    again, except back to ``queued`` by ``segq retry`` (from failed or canceled)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELED})
#: The states ``segq retry`` takes a job back from.
RETRYABLE_STATES = frozenset({JobState.FAILED, JobState.CANCELED})
#: The states a batch counts its jobs in, in display order.
COUNTED_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.DONE, JobState.FAILED, JobState.CANCELED)


class JobKind(StrEnum):
    """What a job segments: one image, or a video (split into chunks)."""

    IMAGE = "image"
    VIDEO = "video"


class Priority(StrEnum):
    """A batch's priority. Workers take high before normal before low work; low work is released
    only while no high or normal work of its model waits (``segq.scheduler``)."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


#: Priorities in the order the scheduler serves them.
PRIORITIES = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
