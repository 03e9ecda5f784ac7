"""``segq exporter``: Prometheus metrics that Flower lacks, read from Redis at each scrape.

=====================================  ====================================================
metric                                 meaning
=====================================  ====================================================
``segq_queue_depth{queue}``            messages waiting per queue (released to the workers)
``segq_pending_tasks{model,priority}``  tasks not released yet, per model and priority
``segq_in_flight_tasks``               released tasks not acknowledged yet
``segq_batches_active``                batches not finished
``segq_batch_jobs{batch,state}``       jobs of each active batch by state
``segq_batch_frames{batch,which}``     frames done / total of each active batch
``segq_dead_letters``                  poison messages kept in the dead-letter list
``segq_watchdog_resent_total``         lost messages the watchdog sent again
``segq_watchdog_failed_total``         jobs failed for losing their messages too often
``segq_job_latency_seconds{model,kind,priority}``  histogram: submission to done
``segq_stage_seconds{model,stage}``    histogram: seconds of each stage of a job or chunk
                                       (fetch, memory, decode, preprocess, wait, forward,
                                       postprocess, render, upload)
``segq_jobs_total{state,kind,model}``  jobs finished, by outcome (done, failed)
``segq_frames_processed_total{model}``  frames segmented by finished jobs (images count 1)
``segq_inference_seconds_total{model}``  inference time of finished jobs; frames rate / this
                                       rate = fleet inference FPS
``segq_job_fps{kind,model}``           inference FPS of the last finished job
``segq_model_load_seconds{worker,model}``  time each live worker took to load each model
``segq_workers{model}``                live workers serving each model
``segq_model_busy_ratio{worker}``      fraction of the last 30 s each live worker's model stage
                                       ran forward passes
``segq_model_items_total{worker}``     images and frames through each live worker's model stage
=====================================  ====================================================
"""

from __future__ import annotations

import json
import os
from urllib.parse import parse_qs

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from segq import keys, metrics, registry
from segq.batches import BatchStore
from segq.connections import redis_client
from segq.errors import BatchNotFound
from segq.protocol import QUEUE_PREFIX
from segq.scheduler import Scheduler
from segq.settings import Settings
from segq.states import PRIORITIES

from producer import fleet


class SegqCollector(Collector):
    def __init__(self, settings: Settings, r: redis.Redis):
        self.settings, self.r = settings, r

    def collect(self):
        depth = GaugeMetricFamily("segq_queue_depth", "Messages waiting in each segq queue", labels=["queue"])
        for queue, n in fleet.queue_depths(self.settings, self.r).items():
            depth.add_metric([queue], n)
        yield depth
        pending = GaugeMetricFamily("segq_pending_tasks", "Tasks waiting to be released to their model's queue",
                                    labels=["model", "priority"])
        counts = Scheduler(self.r).pending()
        for model in sorted(set(self.settings.models) | {m for m, _ in counts}):
            for priority in PRIORITIES:
                pending.add_metric([model, priority.value], counts.get((model, priority.value), 0))
        yield pending
        yield GaugeMetricFamily("segq_in_flight_tasks", "Released tasks not acknowledged yet",
                                value=Scheduler(self.r).in_flight())
        yield GaugeMetricFamily("segq_dead_letters", "Poison messages in the dead-letter list",
                                value=self.r.llen(keys.DEAD_LETTERS))
        yield from self._batches()
        yield from metrics.families(self.r)

        jobs = CounterMetricFamily("segq_jobs", "Finished jobs by outcome", labels=["state", "kind", "model"])
        frames = CounterMetricFamily("segq_frames_processed", "Frames segmented by finished jobs", labels=["model"])
        infer = CounterMetricFamily("segq_inference_seconds", "Inference seconds of finished jobs", labels=["model"])
        fps = GaugeMetricFamily("segq_job_fps", "Inference FPS of the last finished job", labels=["kind", "model"])
        resent = CounterMetricFamily("segq_watchdog_resent", "Lost messages the watchdog sent again")
        lost = CounterMetricFamily("segq_watchdog_failed", "Jobs failed for losing their messages too often")
        families = {keys.STAT_JOBS: jobs, keys.STAT_FRAMES: frames, keys.STAT_INFERENCE: infer,
                    keys.STAT_LAST_FPS: fps, keys.STAT_RESENT: resent, keys.STAT_LOST_FAILED: lost}
        seen = set()
        for name, value in self.r.hgetall(keys.STATS).items():
            parsed = keys.parse_stat_field(name)
            if parsed and parsed[0] in families:
                families[parsed[0]].add_metric(list(parsed[1]), float(value))
                seen.add(parsed[0])
        for metric in (keys.STAT_RESENT, keys.STAT_LOST_FAILED):
            if metric not in seen:
                families[metric].add_metric([], 0.0)
        yield from (jobs, frames, infer, fps, resent, lost)

        loads = GaugeMetricFamily("segq_model_load_seconds", "Model load time per live worker",
                                  labels=["worker", "model"])
        serving = GaugeMetricFamily("segq_workers", "Live workers serving each model", labels=["model"])
        busy = GaugeMetricFamily("segq_model_busy_ratio", "Busy fraction of each live worker's model stage "
                                 "over its last 30 s", labels=["worker"])
        items = CounterMetricFamily("segq_model_items", "Images and frames through each live worker's model "
                                    "stage", labels=["worker"])
        count: dict[str, int] = {m: 0 for m in self.settings.models}
        for w in registry.workers(self.r):
            if w.model_busy is not None:
                busy.add_metric([w.hostname], w.model_busy)
                items.add_metric([w.hostname], w.model_items)
            for model, seconds in w.load_seconds.items():
                loads.add_metric([w.hostname, model], float(seconds))
            for model in w.models:
                count[model] = count.get(model, 0) + 1
        for model, n in count.items():
            serving.add_metric([model], n)
        yield loads
        yield serving
        yield busy
        yield items


    def _batches(self):
        names = sorted(self.r.smembers(keys.ACTIVE_BATCHES))
        active = GaugeMetricFamily("segq_batches_active", "Batches not finished", value=len(names))
        jobs = GaugeMetricFamily("segq_batch_jobs", "Jobs of each active batch by state", labels=["batch", "state"])
        frames = GaugeMetricFamily("segq_batch_frames", "Frames of each active batch", labels=["batch", "which"])
        batches = BatchStore(self.r, self.settings.job_ttl_seconds)
        for name in names[:MAX_BATCHES]:
            try:
                b = batches.get(name)
            except BatchNotFound:  # expired meanwhile
                continue
            for state, n in b.counts.items():
                jobs.add_metric([name, state], n)
            frames.add_metric([name, "done"], b.frames_done)
            frames.add_metric([name, "total"], b.frames_total)
        yield active
        yield jobs
        yield frames


#: Active batches exported one by one, at most (label cardinality); the count covers all.
MAX_BATCHES = 200


def backlog(settings: Settings, r: redis.Redis) -> dict:
    """Per model, the work not taken by a worker yet: pending in its batches (not released),
    waiting in its queue, held by workers (reserved or running); ``backlog`` is their sum, what
    an autoscaler scales the workers on (KEDA's metrics-api trigger, ``deploy/k8s/keda.yaml``)."""
    report = fleet.queue_report(settings, r)
    out = {}
    for queue, n in report["queues"].items():
        model = queue.removeprefix(QUEUE_PREFIX)
        pending = sum(n["pending"].values())
        out[model] = {"pending": pending, "waiting": n["waiting"], "held": n["unacked"],
                      "backlog": pending + n["waiting"] + n["unacked"]}
    return out


def app(settings: Settings, r: redis.Redis, auth: str | None = None):
    """The exporter's WSGI app: ``/metrics`` (Prometheus) and ``/backlog[?model=NAME]`` (JSON).
    ``auth`` (``user:password``, from ``SEGQ_EXPORTER_AUTH``): HTTP basic auth on every path."""
    import hmac

    from prometheus_client import CollectorRegistry, make_wsgi_app

    registry_ = CollectorRegistry()
    registry_.register(SegqCollector(settings, r))
    metrics = make_wsgi_app(registry_)
    expected = basic_authorization(auth) if auth else None

    def route(environ, start_response):
        if expected and not hmac.compare_digest(environ.get("HTTP_AUTHORIZATION", ""), expected):
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="segq"'),
                                                ("Content-Length", "0")])
            return [b""]
        if environ.get("PATH_INFO") != "/backlog":
            return metrics(environ, start_response)
        models = backlog(settings, r)
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if "model" in query:
            model = query["model"][0]
            body = {"model": model, **models.get(model, {"pending": 0, "waiting": 0, "held": 0, "backlog": 0})}
        else:
            body = {"models": models, "backlog": sum(m["backlog"] for m in models.values())}
        data = json.dumps(body).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    return route


def serve(settings: Settings, address: str, port: int, auth: str | None = None) -> None:
    """Serve :func:`app` until killed; ``auth``: see :func:`app` (the CLI reads it from
    ``SEGQ_EXPORTER_AUTH`` and checks it with :func:`exposure_error` first)."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):  # no access log on stderr
            pass

    r = redis_client(settings.redis_url)
    make_server(address, port, app(settings, r, auth), server_class=Server, handler_class=Quiet).serve_forever()


#: ``user:password`` the exporter demands (HTTP basic auth), read from the environment, never from
#: a command line; unset: no authentication (then keep it on loopback or behind a network policy).
AUTH_VARIABLE = "SEGQ_EXPORTER_AUTH"


def basic_authorization(auth: str) -> str:
    """The ``Authorization`` header value of HTTP basic auth for ``user:password``."""
    import base64

    return "Basic " + base64.b64encode(auth.encode()).decode()


def exposure_error(address: str, auth: str | None) -> str | None:
    """Why the exporter must not serve on ``address`` (None: it may): every address but the
    loopback needs credentials, and credentials must be ``user:password``."""
    import ipaddress

    if auth is not None:
        user, _, password = auth.partition(":")
        if not (user and password):
            return f"{AUTH_VARIABLE} must be user:password (a non-empty user and password)"
        return None
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = address == "localhost"
    if loopback:
        return None
    return (f"refusing to serve metrics on {address} without credentials: set {AUTH_VARIABLE}=user:password "
            "in the environment (Prometheus then scrapes with basic_auth), or serve on 127.0.0.1")


def probe(address: str, port: int, timeout: float = 5.0) -> tuple[bool, str]:
    """Whether an exporter serving at ``address:port`` answers ``/metrics`` (a container's health
    check): with the credentials of ``SEGQ_EXPORTER_AUTH`` from the environment, so that a probe
    never carries the secret on its command line. ``0.0.0.0`` and ``::`` probe the loopback."""
    import urllib.error
    import urllib.request

    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(address, address)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"
    headers = {}
    auth = os.environ.get(AUTH_VARIABLE)
    if auth:
        headers["Authorization"] = basic_authorization(auth)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            why = "the credentials of SEGQ_EXPORTER_AUTH were refused" if auth else \
                "it asks for credentials: set SEGQ_EXPORTER_AUTH=user:password in this environment"
            return False, f"exporter at {url}: {why}"
        return False, f"exporter at {url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"exporter at {url} does not answer: {reason}"
    return True, f"exporter at {url} answers"
