"""The one backoff of segq: how long to wait before attempt ``n`` of something that failed transiently.

Exponential (``base * 2**attempt``), capped, with +-20 % jitter so that workers that failed together
do not come back together. Used by task retries (``workers.tasks.skeleton``), the wait for Redis
inside a task and the launcher's restarts of a crashed worker process. (redis-py's own reconnection
backoff is configured in ``segq.connections``.)
"""

from __future__ import annotations

import random

JITTER = 0.2


def compute_backoff(attempt: int, *, base: float = 1.0, cap: float = 60.0, jitter: bool = True) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry): ``base * 2**attempt``,
    at most ``cap``, times a random factor in [0.8, 1.2] unless ``jitter`` is false."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, not {attempt}")
    delay = min(cap, base * 2.0 ** min(attempt, 64))
    return delay * random.uniform(1 - JITTER, 1 + JITTER) if jitter else delay
