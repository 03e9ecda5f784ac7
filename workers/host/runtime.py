"""Per-process worker state: settings, storage (S3), job records, device, registration, models.

``boot()`` runs once when the worker process starts (Celery's ``worker_init`` signal), in the
process that then runs every task: it selects the device, loads every model this worker serves
and starts the model stage (``workers.model.stage``), the one thread that runs their forward passes
for the tasks that run at once in the pool's threads. Later jobs reuse them. The worker's record
in Redis is owned by ``segq.registry``; its heartbeat, the fleet's upkeep (reaper, watchdog) and
the leases of the messages it holds by ``workers.host.upkeep``.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import redis

from segq import defaults
from segq import leases as leases_mod
from segq import manifest, metrics, registry, transport
from segq.batches import BatchStore
from segq.connections import redis_client
from segq.errors import ConfigError, ServiceUnavailable, UnknownModel
from segq.jobs import JobStore
from segq.registry import WorkerRegistration
from segq.scheduler import Scheduler
from segq.settings import Settings
from segq.shards import ShardStore
from segq.storage import Storage
from workers.model import standin
from workers.model import device as device_mod
from workers.host import cpus
from workers.host.budget import PixelBudget
from workers.media import video
from workers.model import models as models_mod
from workers.model.stage import ModelStage
from workers.model.segmenter import Segmenter
from workers.host.upkeep import Upkeep

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    hostname: str
    storage: Storage
    records: JobStore  # the job records in Redis (``storage`` is S3)
    spec: device_mod.DeviceSpec
    registration: WorkerRegistration
    batches: BatchStore | None = None
    scheduler: Scheduler | None = None
    app: object = None  # the worker's Celery app (builds the messages the watchdog sends again)
    budget: PixelBudget = field(default_factory=lambda: PixelBudget(1))  # pixels its tasks hold at once
    models: dict[str, Segmenter] = field(default_factory=dict)  # name -> its segmenter on the model stage
    stage: ModelStage | None = None
    leases: leases_mod.LeaseBook | None = None
    upkeep: Upkeep | None = None  # heartbeat, reaper, watchdog, leases of held messages
    # encode and upload image jobs' files, several at once (``workers.tasks.outputs.write_outputs``);
    # its threads start with the first job
    writers: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(
        max_workers=defaults.OUTPUT_THREADS, thread_name_prefix="segq-output"))
    shards: ShardStore | None = None  # a batch's shards: states in Redis, lists and results in S3
    # writes a finished batch's manifest, off the task's thread (``batch_finished``)
    background: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="segq-manifest"))
    # histogram observations of the work done since the last heartbeat, which adds them to Redis
    _tally: metrics.Tally = field(default_factory=metrics.Tally)
    _tally_lock: threading.Lock = field(default_factory=threading.Lock)
    _active: dict[int, str] = field(default_factory=dict)  # pool thread -> its task
    _active_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def redis(self) -> redis.Redis:
        return self.records.r

    def model(self, name: str) -> Segmenter:
        """The segmenter of model ``name`` (UnknownModel when this worker does not serve it)."""
        try:
            return self.models[name]
        except KeyError:
            served = ", ".join(sorted(self.models)) or "none"
            raise UnknownModel(f"model {name!r} is not served by worker {self.hostname} (it serves: {served})") from None

    def load_models(self, names: list[str]) -> None:
        for name in names:
            if name in self.models:
                continue
            checkpoint = self.settings.models.get(name)
            if checkpoint is None:
                raise UnknownModel(f"unknown model {name!r}: configured models are {', '.join(self.settings.models)}")
            if standin.is_standin(checkpoint):
                if not self.settings.allow_standin:
                    raise ConfigError(f"model {name!r} is the stand-in model ({checkpoint!r}), which returns a fixed "
                                      f"prediction for benchmarks; set SEGQ_ALLOW_STANDIN=1 to run it")
                self.models[name] = standin.StandIn(name, checkpoint, self.stage, self.settings.image_processor)
                log.warning("model %s is the STAND-IN (%s): fixed predictions, for benchmarks only", name, checkpoint)
                self.registration.loaded(name, 0.0)
                continue
            loaded = models_mod.load(name, checkpoint, self.spec, self.settings.image_processor,
                                     compile=self.settings.compile)
            loaded.postprocess = self.settings.postprocess
            segmenter = Segmenter(loaded, self.stage)
            if loaded.compile != "off":
                self._compile_at_start(segmenter)
            self.models[name] = segmenter
            self.registration.loaded(name, loaded.load_seconds)

    def _compile_at_start(self, segmenter: Segmenter) -> None:
        """``SEGQ_COMPILE``: compile one batch of one image now, on the model stage's thread (where
        every later pass, and its CUDA graphs, run), so that a model that does not compile fails to
        load here, with the reason (``ModelLoadError``), instead of in a job. Other shapes compile
        on their first pass (``workers.model.models``)."""
        m = segmenter.model
        log.info("model %s: SEGQ_COMPILE=%s: compiling a warm-up batch (the first batches of each new "
                 "size compile too, and are slow)", m.name, m.compile)
        try:
            seconds = segmenter.warm_up()
        except Exception as exc:
            raise models_mod.ModelLoadError(
                f"model {m.name!r}: torch.compile (SEGQ_COMPILE={m.compile}) failed on a warm-up batch: "
                f"{type(exc).__name__}: {exc}. SEGQ_COMPILE=off runs the model uncompiled.") from exc
        log.info("model %s: warm-up batch compiled and ran in %.1fs", m.name, seconds)

    def count(self, counter: str) -> None:
        self.registration.count(counter)

    def observe(self, tally: metrics.Tally) -> None:
        """Histogram observations of work done (a shard's images, a chunk's stages, a video's
        latency): kept in memory and added to Redis by the next heartbeat, in its one script
        (``segq.metrics``). A worker killed before that beat loses them (at most one beat of its
        work's timings: its counters of jobs are the scripts' and lose nothing)."""
        with self._tally_lock:
            self._tally.merge(tally)

    def observations(self) -> metrics.Tally:
        """The observations not sent yet, taken (``keep`` them again if the beat fails)."""
        with self._tally_lock:
            taken, self._tally = self._tally, metrics.Tally()
        return taken

    def keep(self, tally: metrics.Tally) -> None:
        self.observe(tally)

    # -- the scheduler: releasing work as slots free up ------------------------------------
    def release(self) -> None:
        """Release pending work of every model this worker serves (its start; afterwards the
        heartbeat does, ``segq/lua/beat.lua``)."""
        for model in self.models:
            self.scheduler.dispatch(model)

    def task_ended(self, task_id: str, model: str | None, tag: str | None) -> None:
        """A task ended and its message (delivery ``tag``) is done with: out of flight, its lease
        and unacknowledged record gone, and its slot releases the next pending work of its model
        (one script: ``segq/lua/task_ended.lua``)."""
        self.scheduler.ended(task_id, model if model in self.models else None, tag or "")

    def batch_finished(self, name: str) -> None:
        """A move of this worker's finished batch ``name``: write its manifest, on a thread of its
        own (a million images' manifest takes a while; ``segq get`` writes it later if this
        fails or the worker dies)."""
        def write() -> None:
            try:
                manifest.write(self.batches, self.records, self.shards, self.storage, name)
            except (ServiceUnavailable, redis.RedisError) as exc:
                log.warning("batch %s finished; its manifest could not be written now: %s", name, exc)

        self.background.submit(write)

    def fail_shard(self, batch: str, index: int, reason: str) -> bool:
        """Fail a shard's unfinished images and end it (``segq.shards.ShardStore.fail``); True when
        that ended it."""
        outcome, failed = self.shards.fail(batch, index, reason)
        if outcome == 2:
            self.batch_finished(batch)
        for _ in range(failed if outcome else 0):
            self.count(registry.JOBS_FAILED)
        if outcome:
            log.warning("shard %s of batch %s failed: %s", index, batch, reason)
        return outcome > 0

    def set_active(self, description: str) -> None:
        """What the calling task thread is doing now (``segq workers``); "" when it is done. The
        record holds the tasks of every thread, in the order they started, joined by "; " ("" when
        idle), written with the next heartbeat."""
        with self._active_lock:
            if description:
                self._active[threading.get_ident()] = description
            else:
                self._active.pop(threading.get_ident(), None)
            self.registration.set_active("; ".join(self._active.values()))


_runtime: Runtime | None = None


def apply_cores(cores: int) -> int:
    """Size this process's thread pools to its ``cores`` (``workers.host.cpus``): OpenCV's, and
    each FFmpeg decoder's and x264 encoder's; torch's are set by ``_model_stage``. Returns it."""
    import cv2

    cv2.setNumThreads(cores)
    video.set_codec_threads(cores)
    return cores


def _model_stage(settings: Settings, spec, cores: int) -> ModelStage:
    """The process's model stage. torch's CPU threads: the stage's thread runs the forward passes
    (and on a CPU device the post-processing too: ``Segmenter.finish``) with up to all of the
    process's ``cores``, as many as ``workers.host.cpus.StageThreads`` says before each pass
    (``SEGQ_MODEL_THREADS``: ``auto``, all of them while nothing else takes the cores, one while
    something does; or a number); each task thread one on a CPU device (its preprocessing), or
    on a GPU worker a share of them (pre- and post-processing, concurrently with a pass and with
    each other), so that the threads of the process do not outnumber the cores."""
    import torch

    share = 1 if spec.device.type == "cpu" else max(1, cores // settings.task_slots)
    # The calling thread (boot's, which loads the models next) computes with one from here on.
    # OpenMP keeps a pool of threads for every thread that ran a parallel region with more than
    # one, for as long as that thread lives; once the pooled threads outnumber the cores, libgomp
    # stops spinning between regions and every parallel region of the process wakes its threads
    # from sleep. Loading the models here with all the threads made each forward pass on the
    # stage about 1.5x slower on 2 cores (45 ms against 28 for the tiny semantic model at 1080p).
    torch.get_num_threads()
    torch.set_num_threads(1)

    def this_thread(n: int) -> Callable[[], None]:
        def init() -> None:
            torch.get_num_threads()  # torch's own lazy per-thread setup first, so it cannot undo ours
            torch.set_num_threads(n)  # this thread's OpenMP/MKL count (and the default of new threads)

        return init

    fixed = settings.model_threads if spec.device.type == "cpu" else cores  # a GPU's passes are the device's
    tune = cpus.StageThreads(cores, torch.set_num_threads, fixed=fixed)
    return ModelStage(init=this_thread(cores), caller_init=this_thread(share), max_batch=settings.max_batch,
                      delay=settings.batch_delay_ms / 1000.0, maxsize=max(4, 2 * settings.max_batch), tune=tune)


def boot(hostname: str, settings: Settings | None = None, app=None) -> Runtime:
    """Create this process's runtime and load its models (once). ``app``: the worker's Celery app."""
    global _runtime
    if _runtime is not None:
        return _runtime
    settings = settings or Settings.from_env()
    cores = apply_cores(settings.worker_threads or cpus.usable_cores())
    spec = device_mod.select(settings.precision, cores)
    r = redis_client(settings.redis_url)
    store = JobStore(r, settings.job_ttl_seconds)
    storage = Storage(settings)
    rt = Runtime(
        settings=settings,
        hostname=hostname,
        storage=storage,
        records=store,
        spec=spec,
        registration=WorkerRegistration(r, hostname, spec.label, interval=settings.heartbeat_seconds,
                                        compile=settings.compile, concurrency=settings.task_slots),
        batches=BatchStore(r, settings.job_ttl_seconds),
        shards=ShardStore(r, storage, settings.job_ttl_seconds),
        scheduler=Scheduler(r),
        app=app,
        budget=PixelBudget(settings.worker_pixel_budget or settings.max_image_pixels),
    )
    store.on_batch_finished = rt.batch_finished
    rt.leases = leases_mod.LeaseBook(store.r, hostname, ttl=settings.heartbeat_seconds * registry.MISSED_BEATS)
    transport.lease_book = rt.leases  # the worker's channel leases each message as it records its delivery
    rt.stage = _model_stage(settings, spec, cores)
    rt.registration.stage_stats = rt.stage.fields
    rt.registration.publish()
    try:
        rt.load_models(settings.served_models())
    except BaseException:
        try:  # the process will not serve: no record saying it is starting
            rt.registration.remove()
        except redis.RedisError:
            pass
        raise
    rt.upkeep = Upkeep(rt)
    rt.upkeep.start_heartbeat()
    _runtime = rt
    try:
        rt.release()  # work that waited for a worker of these models
    except redis.RedisError as exc:
        log.warning("could not release pending work at start (the heartbeat will): %s", exc)
    log.info("worker %s ready on %s with models %s", hostname, spec.label, ", ".join(rt.models))
    return rt


def shutdown() -> None:
    """The worker stops: remove its record (its expiry would, a little later)."""
    if _runtime is not None:
        _runtime.writers.shutdown(wait=False)
        _runtime.background.shutdown(wait=True)  # a manifest being written is finished
        try:
            if _runtime.upkeep is not None:
                _runtime.upkeep.flush()  # the last observations
            _runtime.registration.remove()
        except redis.RedisError:
            pass


def get() -> Runtime:
    if _runtime is None:
        raise RuntimeError("worker runtime not booted (models load at worker start)")
    return _runtime
