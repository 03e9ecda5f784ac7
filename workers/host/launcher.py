"""``segq worker``: one Celery worker process per GPU, each pinned with ``CUDA_VISIBLE_DEVICES``.

This module runs in the parent process and never imports torch: it counts GPUs with
``nvidia-smi`` (or ``CUDA_VISIBLE_DEVICES``), starts one ``celery worker`` child per GPU with its
own environment, and forwards signals to them. CUDA is initialised only inside each child, by
the process that then keeps its models loaded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from segq.backoff import compute_backoff
from segq.errors import UsageError
from segq.process import die_with_parent
from segq.protocol import TASKS, model_queue
from segq.settings import Settings
from workers.host import cpus


@dataclass(frozen=True)
class WorkerProcess:
    hostname: str  # Celery node name, e.g. segq-gpu1@host
    cuda_visible_devices: str  # "" for a CPU worker
    queues: tuple[str, ...]
    models: tuple[str, ...]


def detect_gpus() -> list[str]:
    """GPU indexes visible to this host, without initialising CUDA in this process."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=True,
            ).stdout
            return [line.strip() for line in out.splitlines() if line.strip()]
        except (subprocess.SubprocessError, OSError):
            return []
    return []


def resolve_models(settings: Settings, spec: str | None) -> list[str]:
    """``semantic,coco-panoptic`` -> model names. Tasks stand for their default model."""
    if not spec:
        return sorted(set(settings.task_models.values()) & set(settings.models))
    names = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name = settings.task_models.get(item) if item in TASKS else item
        if name not in settings.models:
            raise UsageError(
                f"unknown model {item!r}: configured models are {', '.join(sorted(settings.models))} "
                f"(tasks {', '.join(TASKS)} stand for their default models)"
            )
        if name not in names:
            names.append(name)
    return names


def plan(
    settings: Settings,
    gpus: str = "auto",
    models: str | None = None,
    extra_queues: str | None = None,
    name: str | None = None,
) -> list[WorkerProcess]:
    """The worker processes to start: one per GPU, or one CPU worker."""
    model_names = resolve_models(settings, models)
    queues = [model_queue(m) for m in model_names]
    queues += [q.strip() for q in (extra_queues or "").split(",") if q.strip() and q.strip() not in queues]
    base, _, host = (name or "segq").partition("@")
    host = host or socket.gethostname()
    if gpus == "auto":
        devices = detect_gpus() or ["cpu"]
    elif gpus == "all":
        devices = detect_gpus()
        if not devices:
            raise UsageError("--gpus all: no GPU found (nvidia-smi lists none); use --gpus cpu")
    elif gpus == "cpu":
        devices = ["cpu"]
    else:
        devices = [g.strip() for g in gpus.split(",") if g.strip()]
        if not devices or not all(d.isdigit() for d in devices):
            raise UsageError(f"--gpus: expected auto, all, cpu or indexes like 0,1; got {gpus!r}")
    procs = []
    for dev in devices:
        label = "cpu" if dev == "cpu" else f"gpu{dev}"
        procs.append(WorkerProcess(f"{base}-{label}@{host}", "" if dev == "cpu" else dev, tuple(queues), tuple(model_names)))
    return procs


def command(proc: WorkerProcess, loglevel: str = "info") -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "workers.tasks.app", "worker",
        "--hostname", proc.hostname,
        "--queues", ",".join(proc.queues),
        # Pool, concurrency, prefetch, acks and events: segq.broker.WORKER_POLICY, in the app's config.
        "--without-gossip", "--without-mingle",
        # Celery's own heartbeat event (Flower's sign of life) as often as segq's record's, not
        # every 2 s: each is a publish to Redis from every worker process
        "--heartbeat-interval", str(Settings.read("heartbeat_seconds")),
        "--loglevel", loglevel,
    ]


def environment(proc: WorkerProcess, threads: int | None = None, precision: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = proc.cuda_visible_devices
    env["SEGQ_WORKER_MODELS"] = ",".join(proc.models)
    if threads:
        env["SEGQ_WORKER_THREADS"] = str(threads)
        env["OMP_NUM_THREADS"] = str(threads)
    if precision:
        env["SEGQ_PRECISION"] = precision
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update({k: v for k, v in MALLOC.items() if k not in env})
    return env


#: glibc malloc settings of a worker process (unless the environment sets them): blocks under
#: 32 MB come from the heap and up to 128 MB of freed heap is kept, instead of a fresh mmap (and a
#: page fault on every 4 KB page it touches) for each full-size map and image of every job. A
#: 1080p job allocates tens of such blocks: with glibc's defaults its post-processing spent
#: up to a third of its time in first touches. Two arenas, not glibc's 8 per core: each arena
#: keeps its own freed heap, and with one per thread (task, output and model threads) three
#: 40 MP images at once grew the worker's peak by 1.7 GB instead of 0.9 (docs/fleet.md). Other C
#: libraries ignore these variables.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20), "MALLOC_ARENA_MAX": "2"}


#: Exit status of a worker process whose start failed on its configuration (a model that does not
#: load, a bad setting; ``workers.tasks.app``): not started again, since it would fail the same way; the
#: launcher exits with it (EX_CONFIG of sysexits.h).
EXIT_BOOT_FAILED = 78

#: A worker process that dies is started again, up to this many times in RESTART_WINDOW seconds;
#: past that the launcher stops the others and exits non-zero, for its supervisor to act. Exits
#: during a Redis outage do not count (``BrokerWatch``).
MAX_RESTARTS = 5
RESTART_WINDOW = 600.0
#: An exit this soon after Redis was unreachable, restarted or failed over counts as the outage's.
OUTAGE_GRACE = 60.0


class BrokerWatch:
    """What the launcher knows of Redis, checked every few seconds: when it last could not be
    reached, and when it last changed identity (a restart or a failover gives a new ``run_id``).
    A worker process that exits within ``OUTAGE_GRACE`` of either exited because of the outage,
    not because it is broken: it is started again without counting toward the crash-loop limit."""

    def __init__(self, url: str | None, every: float = 2.0, clock=time.monotonic):
        self.url, self.every, self.clock = url, every, clock
        self.client = None
        self.run_id: str | None = None
        self.last_outage: float | None = None
        self.checked: float | None = None

    def _connect(self):
        if self.client is None and self.url:
            from segq.connections import redis_client

            self.client = redis_client(self.url, patient=False, timeout=1.0)
        return self.client

    def check(self, force: bool = False) -> None:
        now = self.clock()
        if not force and self.checked is not None and now - self.checked < self.every:
            return
        self.checked = now
        client = self._connect()
        if client is None:
            return
        try:
            run_id = client.info("server").get("run_id")
        except Exception:  # unreachable, refused, failing over: an outage
            self.last_outage = now
            return
        if self.run_id is not None and run_id != self.run_id:
            self.last_outage = now  # a restart or a failover
        self.run_id = run_id

    def outage(self) -> bool:
        """Whether Redis is, or just was, away (or replaced)."""
        self.check(force=True)
        return self.last_outage is not None and self.clock() - self.last_outage < OUTAGE_GRACE


def run(procs: list[WorkerProcess], loglevel: str = "info", threads: int | None = None, precision: str | None = None,
        redis_url: str | None = None) -> int:
    """Start the worker processes and supervise them until a signal.

    A process that dies (killed, out of memory) is started again in place after a short pause;
    its lost work comes back through the leases (``segq.leases``). A process that keeps dying
    (``MAX_RESTARTS`` in ``RESTART_WINDOW`` s) stops the unit with its exit code, for the
    supervisor (systemd, Kubernetes, Compose) to act; so does one that could not start on its
    configuration (``EXIT_BOOT_FAILED``: a model that does not load), at once. Exits during a Redis
    outage (``redis_url``, watched by ``BrokerWatch``) are restarted without being counted: an
    outage is the broker's, not the worker's, fault.
    """
    watch = BrokerWatch(redis_url)
    if threads is None and procs:
        threads = cpus.share(len(procs))  # the host's cores split between its processes (workers.host.cpus)

    def spawn(p: WorkerProcess) -> subprocess.Popen:
        return subprocess.Popen(command(p, loglevel), env=environment(p, threads, precision), preexec_fn=die_with_parent)

    children = [spawn(p) for p in procs]
    restarts: list[list[float]] = [[] for _ in procs]
    stopping = False

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    code = 0
    try:
        while True:
            watch.check()
            for i, child in enumerate(children):
                if child.poll() is None or stopping:
                    continue
                now = time.monotonic()
                restarts[i] = [t for t in restarts[i] if now - t < RESTART_WINDOW]
                if child.returncode != EXIT_BOOT_FAILED and watch.outage():
                    print(f"segq worker: {procs[i].hostname} exited with {child.returncode} during a Redis outage; "
                          f"starting it again (not counted as a crash)", file=sys.stderr, flush=True)
                    time.sleep(2.0)
                    if not stopping:
                        children[i] = spawn(procs[i])
                    continue
                if child.returncode == EXIT_BOOT_FAILED:
                    print(f"segq worker: {procs[i].hostname} could not start (its configuration: see the "
                          f"reason above); stopping", file=sys.stderr, flush=True)
                    code = EXIT_BOOT_FAILED
                    stop(signal.SIGTERM, None)
                    break
                if len(restarts[i]) >= MAX_RESTARTS:
                    print(f"segq worker: {procs[i].hostname} died {MAX_RESTARTS + 1} times in "
                          f"{RESTART_WINDOW:.0f}s; stopping", file=sys.stderr, flush=True)
                    code = child.returncode or 1
                    stop(signal.SIGTERM, None)
                    break
                restarts[i].append(now)
                print(f"segq worker: {procs[i].hostname} exited with {child.returncode}; starting it again",
                      file=sys.stderr, flush=True)
                time.sleep(compute_backoff(len(restarts[i]), cap=10.0))
                if not stopping:
                    children[i] = spawn(procs[i])
            if all(c.poll() is not None for c in children):
                break
            time.sleep(0.5)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    return code if code else max((c.returncode or 0 for c in children), default=0)
