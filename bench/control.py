"""The control plane's cost: Redis per image, per chunk and per worker, with the model a stand-in.

    python -m bench.control [--images 100000] [--workers 1,2,4] [--singles 300] [--video-frames 256]
                            [--fleet 10,1000,10000] [--fleet-seconds 60] [--wait-ms 1]

Everything runs the worker's and the producer's own code against a real Redis and SeaweedFS; the
model is the stand-in (``workers.model.standin``: a fixed prediction after ``--wait-ms`` per image,
the GIL released, as a GPU would), so what is measured is the queue, the records, the storage and
the scheduling, on this machine. For each run the bench reads Redis's ``INFO commandstats`` (the
commands and their time), ``INFO cpu`` (Redis's own CPU, all its threads) and ``used_memory``
before and after, and prints per image (or chunk, or worker):

1. **a dataset batch**: ``--images`` images as one batch (objects under an ``s3://`` prefix, read
   in place, so the submission lists them instead of uploading them), with 1, 2 and 4 stand-in
   worker processes (``--workers``): Redis commands, command time and Redis CPU per image, Redis
   bytes per finished image, images/s on this machine, and the ceiling of one Redis core in
   images/s (1 / CPU per image); targets: <= 8 commands, <= 0.1 ms CPU, <= 100 bytes;
2. **single images**: ``--singles`` one-image submissions (each its own batch, the path a lone
   ``segq submit street.jpg`` takes), 8 at a time; target <= 0.4 ms CPU per image;
3. **a video**: ``--video-frames`` frames in chunks of 8; target <= 1 ms CPU per chunk;
4. **fleet upkeep**: ``--fleet`` simulated workers registered and beating every 10 s through the
   registry's own code (``WorkerRegistration.publish`` and ``.beat``: the heartbeat script a real
   worker runs, with its try for the maintenance lock; the one that takes it runs the reaper and
   the watchdog, ``segq.leases.reap`` and ``segq.watchdog.sweep``, as a worker does) beside 2 real
   workers, for ``--fleet-seconds``: Redis CPU as a share of one core; target <= 5 % at 10,000.

Redis's CPU includes its own idle work (its timers, expiry, the event loop): the bench measures it
first, with no client, and prints each CPU figure raw and net of that baseline over the run's
duration. Per-image figures include everything the run did in Redis: the producer's submission,
the scheduler, the workers' tasks and heartbeats, the manifest.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.common import servers, start_workers, stop_workers, table
from bench.video import make_video

MODEL = "ade-semantic"


@dataclass
class Snapshot:
    calls: int
    usec: int
    cpu: float  # seconds, user + sys, all threads
    memory: int
    at: float
    by_command: dict  # command -> (calls, usec)


def snapshot(r) -> Snapshot:
    stats = r.info("commandstats")
    cpu = r.info("cpu")
    return Snapshot(sum(v["calls"] for v in stats.values()), sum(v["usec"] for v in stats.values()),
                    float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]), int(r.info("memory")["used_memory"]),
                    time.monotonic(), {k.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for k, v in stats.items()})


def breakdown(a: Snapshot, b: Snapshot, units: int, top: int = 8) -> str:
    """The commands a run sent, per unit, most first: ``EVALSHA 4.0 (41 us)``."""
    rows = []
    for name, (calls, usec) in b.by_command.items():
        c0, u0 = a.by_command.get(name, (0, 0))
        if calls - c0:
            rows.append((calls - c0, usec - u0, name.upper()))
    rows.sort(reverse=True)
    return ", ".join(f"{n} {c / units:.1f} ({u / units:.0f} us)" for c, u, n in rows[:top])


@dataclass
class Cost:
    """What a run cost Redis, per unit (an image, a chunk), and the run's duration."""

    units: int
    commands: float
    usec: float
    cpu_ms: float
    cpu_net_ms: float  # less Redis's idle CPU over the run's duration
    seconds: float

    @classmethod
    def between(cls, a: Snapshot, b: Snapshot, units: int, idle_cpu_per_s: float) -> "Cost":
        seconds = b.at - a.at
        cpu = b.cpu - a.cpu
        return cls(units, (b.calls - a.calls) / units, (b.usec - a.usec) / units, cpu * 1000 / units,
                   max(0.0, cpu - idle_cpu_per_s * seconds) * 1000 / units, seconds)


def idle_cpu(r, seconds: float) -> float:
    """Redis's CPU seconds per second while nothing talks to it (but this bench's two reads)."""
    a = snapshot(r)
    time.sleep(seconds)
    b = snapshot(r)
    return (b.cpu - a.cpu) / (b.at - a.at)


def settle(r, seconds: float = 12.0) -> None:
    """Wait for what follows a batch's end (the last acknowledgements, a heartbeat's histograms,
    the manifest) before reading memory."""
    from segq import keys

    deadline = time.monotonic() + 30
    while r.zcard(keys.INFLIGHT) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(seconds)


def make_objects(storage, prefix: str, count: int, threads: int = 16) -> None:
    """``count`` copies of one small PNG under ``prefix`` (keys of one small object)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (90, 140, 200)).save(buf, format="PNG")
    data = buf.getvalue()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: storage.put_bytes(f"{prefix}{i:07d}.png", data, "image/png"), range(count)))


def dataset(env: dict, root: Path, workers: int, images: int, idle: float, prefix: str) -> dict:
    from producer.client import Client
    from segq.settings import Settings

    procs = start_workers(root, env, workers, threads=1, models=MODEL, prefix=f"w{workers}-")
    try:
        client = Client(Settings.from_env())
        r = client.r
        bucket = client.settings.s3_bucket
        warm = client.submit_batch([f"s3://{bucket}/{prefix}0000000.png"], task="semantic")
        client.wait_batch([warm.batch], timeout=300)
        settle(r, 2)
        a = snapshot(r)
        report = client.submit_batch([f"s3://{bucket}/{prefix}"], task="semantic", batch=f"data-{workers}")
        [batch] = client.wait_batch([report.batch], timeout=7200, poll=1.0)
        done = snapshot(r)
        settle(r)
        b = snapshot(r)
        assert batch.done == images == report.submitted, (batch.counts, report)
        cost = Cost.between(a, b, images, idle)
        return {"workers": workers, "cost": cost, "bytes": (b.memory - a.memory) / images, "shards": report.shards,
                "images_per_s": images / (done.at - a.at)}
    finally:
        stop_workers(procs)


def singles(env: dict, root: Path, count: int, idle: float, prefix: str) -> Cost:
    from producer.client import Client
    from segq import keys
    from segq.settings import Settings

    procs = start_workers(root, env, 1, threads=1, models=MODEL, prefix="single-")
    try:
        client = Client(Settings.from_env())
        r = client.r
        uris = [f"s3://{client.settings.s3_bucket}/{prefix}{i:07d}.png" for i in range(count)]
        client.wait_batch([client.submit_batch(uris[:1], task="semantic").batch], timeout=300)
        settle(r, 2)
        # The system's own cost: the submissions, then one counter read a second until the images
        # are done (the fleet's counter of done images). Then, apart, what a client's wait on every
        # batch costs (``Client.wait_batch``: one hash per batch per poll), as `segq wait` would.
        done_field = f"jobs|done|image|{MODEL}"
        before = int(r.hget(keys.STATS, done_field) or 0)
        a = snapshot(r)
        with ThreadPoolExecutor(8) as pool:
            names = list(pool.map(lambda uri: client.submit_batch([uri], task="semantic").batch, uris))
        deadline = time.monotonic() + 3600
        while int(r.hget(keys.STATS, done_field) or 0) - before < count and time.monotonic() < deadline:
            time.sleep(1.0)
        settle(r)
        b = snapshot(r)
        client.wait_batch(names, timeout=3600, poll=1.0)
        c = snapshot(r)
        print(f"single images, Redis commands per image: {breakdown(a, b, count)}; the client's wait on "
              f"the {count} batches once done: {(c.calls - b.calls) / count:.1f} commands per image", flush=True)
        return Cost.between(a, b, count, idle)
    finally:
        stop_workers(procs)


def video(env: dict, root: Path, frames: int, idle: float) -> tuple[Cost, int]:
    from producer.client import Client
    from segq.settings import Settings

    clip = make_video(root / "clip.mp4", frames, (64, 48))
    procs = start_workers(root, env, 1, threads=1, models=MODEL, prefix="video-")
    try:
        client = Client(Settings.from_env())
        r = client.r
        a = snapshot(r)
        [job] = client.submit([str(clip)], task="semantic", chunk_frames=8, batch_size=4)
        [done] = client.wait([job.id], timeout=1800, poll=1.0)
        assert done.state == "done", done.error
        settle(r)
        b = snapshot(r)
        print(f"video, Redis commands per chunk: {breakdown(a, b, done.chunks_total)}", flush=True)
        return Cost.between(a, b, done.chunks_total, idle), done.chunks_total
    finally:
        stop_workers(procs)


class SimulatedFleet:
    """``count`` workers in the registry, beating every ``interval`` s through the registry's own
    code; the one that takes the maintenance lock runs the reaper and the watchdog."""

    def __init__(self, r, count: int, interval: float = 10.0, threads: int = 4):
        from segq.registry import WorkerRegistration

        self.r, self.interval, self.threads = r, interval, threads
        self.workers = [WorkerRegistration(r, f"sim{i:05d}@bench", "cpu", interval=interval, concurrency=3)
                        for i in range(count)]
        for w in self.workers:
            w.models = {"sim-model": 0.0}
            w.publish()
        self.stop = threading.Event()
        self.passes = 0
        self.beats = 0

    def _maintain(self) -> None:
        from celery import Celery

        from segq import leases, watchdog
        from segq.jobs import JobStore

        leases.reap(self.r, 3, ttl=self.interval * 3, interval=self.interval)
        watchdog.sweep(self.r, JobStore(self.r, 3600), Celery("bench"), min_age=self.interval,
                       grace=self.interval, max_lost=3)
        self.passes += 1

    def _run(self, part: list) -> None:
        i = 0
        while not self.stop.is_set():
            started = time.monotonic()
            for w in part:
                held, _ = w.beat([], time.time() + 30, f"{w.hostname}-{time.time()}", int(self.interval * 1000))
                self.beats += 1
                if held:
                    self._maintain()
                if self.stop.is_set():
                    return
                i += 1
                # spread the beats over the interval, as a fleet's are
                behind = started + self.interval * (i % len(part) or len(part)) / len(part) - time.monotonic()
                if behind > 0:
                    time.sleep(behind)
            i = 0

    def run(self, seconds: float) -> None:
        parts = [self.workers[k::self.threads] for k in range(self.threads)]
        threads = [threading.Thread(target=self._run, args=(p,), daemon=True) for p in parts]
        for t in threads:
            t.start()
        time.sleep(seconds)
        self.stop.set()
        for t in threads:
            t.join(self.interval + 5)

    def remove(self) -> None:
        for w in self.workers:
            w.remove()


def fleet(env: dict, root: Path, count: int, seconds: float, idle: float) -> dict:
    from producer.client import Client
    from segq.settings import Settings

    procs = start_workers(root, env, 2, threads=1, models=MODEL, prefix="real-")
    client = Client(Settings.from_env())
    r = client.r
    sim = SimulatedFleet(r, count)
    try:
        time.sleep(1)
        a = snapshot(r)
        sim.run(seconds)
        b = snapshot(r)
        duration = b.at - a.at
        cpu = b.cpu - a.cpu
        started = time.perf_counter()
        from segq.scheduler import slots

        slots(r, MODEL)
        target_read = time.perf_counter() - started
        return {"workers": count, "share": cpu / duration, "net": max(0.0, cpu - idle * duration) / duration,
                "usec_per_s": (b.usec - a.usec) / duration, "calls_per_s": (b.calls - a.calls) / duration,
                "passes": sim.passes, "target_read_ms": target_read * 1000, "beats_per_s": sim.beats / duration}
    finally:
        sim.remove()
        stop_workers(procs)


def met(value: float, goal: float) -> str:
    return "met" if value <= goal else "NOT met"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--singles", type=int, default=300)
    ap.add_argument("--video-frames", type=int, default=256)
    ap.add_argument("--fleet", default="10,1000,10000")
    ap.add_argument("--fleet-seconds", type=float, default=60.0)
    ap.add_argument("--wait-ms", type=float, default=1.0, help="the stand-in model's wait per image")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="segq-bench-") as tmp:
        root = Path(tmp)
        with servers(root) as env:
            env.update({"SEGQ_MODELS": f"{MODEL}=standin:wait_ms={args.wait_ms:g}", "SEGQ_ALLOW_STANDIN": "1"})
            os.environ.update(env)
            from producer.client import Client
            from segq.settings import Settings

            client = Client(Settings.from_env())
            r = client.r
            version = r.info("server")["redis_version"]
            idle = idle_cpu(r, 10)
            prefix = "inputs/bench-control/"
            t0 = time.monotonic()
            make_objects(client.storage, prefix, max(args.images, args.singles))
            print(f"{max(args.images, args.singles)} objects written in {time.monotonic() - t0:.0f}s; "
                  f"Redis {version} idle: {idle * 1000:.2f} ms CPU/s", flush=True)
            # each part's figures are printed as soon as it ends (an hour's run keeps what it measured)
            runs = []
            for n in [int(x) for x in args.workers.split(",") if x]:
                runs.append(dataset(env, root, n, args.images, idle, prefix))
                c = runs[-1]["cost"]
                print(f"dataset, {n} worker(s): {c.commands:.2f} commands, {c.usec:.1f} us, CPU {c.cpu_ms:.4f} ms "
                      f"(net {c.cpu_net_ms:.4f}), {runs[-1]['bytes']:.1f} bytes per image, "
                      f"{runs[-1]['images_per_s']:.0f} images/s", flush=True)
            single = singles(env, root, args.singles, idle, prefix)
            print(f"single images: {single.commands:.1f} commands, {single.usec:.1f} us, CPU {single.cpu_ms:.3f} ms "
                  f"(net {single.cpu_net_ms:.3f}) per image", flush=True)
            chunk, chunks = video(env, root, args.video_frames, idle)
            print(f"video: {chunk.commands:.1f} commands, {chunk.usec:.1f} us, CPU {chunk.cpu_ms:.3f} ms "
                  f"(net {chunk.cpu_net_ms:.3f}) per chunk", flush=True)
            upkeep = []
            for x in [int(x) for x in args.fleet.split(",") if x]:
                upkeep.append(fleet(env, root, x, args.fleet_seconds, idle))
                u = upkeep[-1]
                print(f"fleet of {x:,}: {u['share'] * 100:.2f} % of a core (net {u['net'] * 100:.2f} %), "
                      f"{u['calls_per_s']:.0f} commands/s", flush=True)
    print(f"\nRedis {version} (AOF on, everysec), {os.cpu_count()} cores shared by Redis, SeaweedFS, the workers and "
          f"the bench; the stand-in model waits {args.wait_ms:g} ms per image. Redis idle: {idle * 1000:.2f} ms CPU/s "
          f"(net figures subtract it over each run's duration).\n")
    rows = []
    for run in runs:
        c = run["cost"]
        rows.append((f"dataset, {run['workers']} worker(s)", f"{c.units}", f"{c.commands:.2f}", f"{c.usec:.1f}",
                     f"{c.cpu_ms:.4f}", f"{c.cpu_net_ms:.4f}", f"{run['bytes']:.1f}", f"{run['images_per_s']:.0f}",
                     f"{1000 / c.cpu_ms:,.0f}" if c.cpu_ms else "-", f"{run['shards']}"))
    rows.append(("single images (one batch each)", f"{single.units}", f"{single.commands:.1f}", f"{single.usec:.1f}",
                 f"{single.cpu_ms:.3f}", f"{single.cpu_net_ms:.3f}", "-", "-",
                 f"{1000 / single.cpu_ms:,.0f}" if single.cpu_ms else "-", f"{single.units}"))
    rows.append((f"video, per chunk of 8 frames", f"{chunks}", f"{chunk.commands:.1f}", f"{chunk.usec:.1f}",
                 f"{chunk.cpu_ms:.3f}", f"{chunk.cpu_net_ms:.3f}", "-", "-", "-", "-"))
    print(table(rows, ("per image (chunk)", "units", "commands", "cmd us", "CPU ms", "CPU ms net", "bytes kept",
                       "images/s here", "ceiling/core", "shards")))
    print("\ntargets (the dataset's worst run):")
    worst = max(runs, key=lambda x: x["cost"].cpu_ms) if runs else None
    if worst:
        print(f"  dataset: commands {worst['cost'].commands:.2f} <= 8 {met(worst['cost'].commands, 8)}; "
              f"Redis CPU {worst['cost'].cpu_ms:.4f} ms (net {worst['cost'].cpu_net_ms:.4f}) <= 0.1 "
              f"{met(worst['cost'].cpu_ms, 0.1)}; bytes {max(x['bytes'] for x in runs):.1f} <= 100 "
              f"{met(max(x['bytes'] for x in runs), 100)}")
    print(f"  single image: Redis CPU {single.cpu_ms:.3f} ms (net {single.cpu_net_ms:.3f}) <= 0.4 "
          f"{met(single.cpu_ms, 0.4)} (net {met(single.cpu_net_ms, 0.4)})")
    print(f"  video chunk: Redis CPU {chunk.cpu_ms:.3f} ms (net {chunk.cpu_net_ms:.3f}) <= 1 "
          f"{met(chunk.cpu_ms, 1)} (net {met(chunk.cpu_net_ms, 1)})")
    if not upkeep:
        return
    print()
    print(table([(f"{u['workers']:,}", f"{u['beats_per_s']:.0f} ({u['workers'] / 10:.0f})", f"{u['calls_per_s']:.0f}",
                  f"{u['usec_per_s'] / 1000:.2f}", f"{u['share'] * 100:.2f} %", f"{u['net'] * 100:.2f} %",
                  f"{u['passes']}", f"{u['target_read_ms']:.2f}") for u in upkeep],
                ("registered workers", "beats/s (due)", "commands/s", "cmd ms/s", "Redis CPU (of one core)",
                 "net of idle", "maintenance passes", "target read ms")))
    last = upkeep[-1]
    print(f"\n  fleet upkeep at {last['workers']:,} workers: {last['share'] * 100:.2f} % of a core "
          f"(net {last['net'] * 100:.2f} %) <= 5 % {met(last['share'], 0.05)} (net {met(last['net'], 0.05)})")


if __name__ == "__main__":
    main()
