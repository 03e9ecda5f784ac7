"""How many cores a worker process may use, and the thread counts that follow from it.

A host's cores are split between its worker processes (``segq worker --gpus all`` starts one per
GPU; a CPU host one or more), and each process sizes every pool of threads it has to its share,
never to the machine: torch's (OpenMP) threads, OpenCV's, FFmpeg's decoder threads and x264's
encoder threads. Eight GPU processes each sized for all 16 cores would run 8x as many
arithmetic threads as there are cores, and a parallel region waits for its slowest thread: when
the kernel takes one of them off its core, the whole region waits.

The cores a process may use are the fewest of: the cores it may run on (its CPU affinity: a
``taskset``, a cpuset, Kubernetes' static CPU manager) and its CPU quota (cgroup v2 ``cpu.max``
or v1 ``cpu.cfs_quota_us``: a Kubernetes CPU limit, ``docker run --cpus``), rounded down, at
least 1. ``os.cpu_count()`` knows neither.

Plain Python (no torch, no OpenCV): the launcher imports it.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def quota(root: Path = CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in cores, or None when there is none."""
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        if text:
            return None
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v1
        q = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return q / period if q > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cores(root: Path = CGROUP) -> int:
    """The cores this process may use: its affinity and its cgroup's quota (module docstring)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = quota(root)
    if limit is not None:
        cores = min(cores, int(limit))
    return max(1, cores)


def share(processes: int, cores: int | None = None) -> int:
    """Each of ``processes`` worker processes' cores, the host's usable cores split evenly."""
    cores = usable_cores() if cores is None else cores
    return max(1, cores // max(1, processes))


def thread_schedstat() -> tuple[int, int] | None:
    """The calling thread's nanoseconds on a core and waiting for one (``/proc/thread-self/schedstat``:
    run time, run delay), or None where the kernel does not keep them."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            run, delay = f.read().split()[:2]
        return int(run), int(delay)
    except (OSError, ValueError):
        return None


def runnable_others() -> int:
    """Threads of the machine ready to run now, besides the caller (``/proc/loadavg``'s running
    count less one); 0 where it cannot be read."""
    try:
        with open("/proc/loadavg") as f:
            running = f.read().split()[3].split("/")[0]
        return max(0, int(running) - 1)
    except (OSError, ValueError, IndexError):
        return 0


#: ``StageThreads``: the passes are crowded when the stage's thread waited for a core for more
#: than this share of the time it was ready to run (an undisturbed worker: a few percent; beside
#: one busy process on 2 cores with 2 threads: a third).
CROWDED_SHARE = 0.15
#: ``StageThreads``: the least time (ns, on a core or waiting for one) the share is taken over.
WINDOW_NS = 50_000_000


class StageThreads:
    """The model stage's torch threads, set before each of its passes and calls (``ModelStage``'s
    ``tune``, on the stage's thread).

    ``fixed`` > 0: always that many (``SEGQ_MODEL_THREADS=N``). Otherwise (``auto``): all of the
    process's ``cores`` while it runs undisturbed, fewer while something else takes its cores.
    Every parallel region of torch's CPU threads (OpenMP) waits for its slowest thread, so a thread
    the kernel has taken off its core stalls the whole pass: beside one busy process on 2 cores a
    2-thread pass took up to 2-10x its idle time, a 1-thread pass 1.5x (docs/fleet.md). The sign is
    the stage thread's own run delay (``/proc/thread-self/schedstat``: the time it was ready but
    waited for a core) as a share of its ready time since the last pass: above ``limit`` the next
    passes take the cores the other ready threads leave (``/proc/loadavg``; at least 1), and they
    take all of them again once, before a pass, no other thread of the machine is ready to run.
    Where the kernel keeps no run delay, ``auto`` is all of the cores.
    """

    def __init__(self, cores: int, set_threads, fixed: int = 0, limit: float = CROWDED_SHARE,
                 window_ns: int = WINDOW_NS, schedstat=thread_schedstat, others=runnable_others):
        self.cores, self.set_threads, self.fixed = max(1, cores), set_threads, fixed
        self.limit, self.window_ns, self.schedstat, self.others = limit, window_ns, schedstat, others
        self.current = 0
        self._mark: tuple[int, int] | None = None
        self.reductions = 0  # times the stage took fewer threads

    def want(self) -> int:
        """The threads of the next pass (and takes note of what was seen since the last one)."""
        if self.fixed:
            return self.fixed
        if self.cores == 1:
            return 1
        now = self.schedstat()
        if now is None:
            return self.cores
        if self._mark is None:
            self._mark = now
            return self.current or self.cores
        run, delay = now[0] - self._mark[0], now[1] - self._mark[1]
        if run + delay < self.window_ns:
            crowded = None  # too little seen yet: keep counting
        else:
            crowded = delay / (run + delay) > self.limit
            self._mark = now
        if self.current == self.cores or not self.current:
            if crowded:
                self.reductions += 1
                return max(1, min(self.cores - 1, self.cores - self.others()))
            return self.cores
        # fewer than all: all again once nothing else is ready to run
        return self.cores if self.others() == 0 else self.current

    def __call__(self) -> None:
        n = self.want()
        if n != self.current:
            self.set_threads(n)
            self.current = n
