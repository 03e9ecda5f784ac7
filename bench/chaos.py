"""Chaos: random faults of every kind under a stream of image and video jobs, then what became of
every job. Real servers and processes on loopback only; bounded in time; it stops by itself.

    python -m bench.chaos [--minutes 20] [--workers 2] [--seed 1]

Faults, one every 15-45 s, at random: a worker's Celery process SIGKILLed (its `segq worker`
starts it again); a whole `segq worker` tree SIGKILLed (and a new one started); a worker frozen in
its blocking pop and then SIGKILLed (the message it was handed is lost: the watchdog's case);
Redis SIGKILLed and started again 1-5 s later (AOF on); S3 frozen (SIGSTOP) for 5-30 s; S3
SIGKILLed and started again; a burst of poison messages pushed into a model queue. Meanwhile a job
(an image, or a video of 24-72 frames in chunks of 8) is submitted every 2-6 s.

After the last fault, every job gets up to ``--settle`` seconds to end. The table: faults by kind;
jobs done, failed, stuck (not ended), videos with a wrong frame count, assemblies run more than
once, and jobs run more often than their requeues account for (a run per requeue is the at-least-
once the leases allow).
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import tempfile
import time
from pathlib import Path

from bench.common import checkpoint, table


class Fleet:
    def __init__(self, root: Path, workers: int, heartbeat: int):
        from producer.stack import Servers

        self.root = root
        self.servers = Servers(root).start()
        self.redis, self.s3 = self.servers.redis, self.servers.s3
        ckpt = checkpoint(root, "tiny")
        self.env = {**self.servers.env(), "SEGQ_MODELS": f"ade-semantic={ckpt}",
                    "SEGQ_TASK_MODELS": "semantic=ade-semantic", "SEGQ_HEARTBEAT_SECONDS": str(heartbeat),
                    "SEGQ_RETRY_BUDGET": "900", "SEGQ_ENV_FILE": "/nonexistent/.env"}
        os.environ.update(self.env)
        self.services: dict[str, object] = {}
        self.count = 0
        for _ in range(workers):
            self.add_worker()

    def add_worker(self) -> str:
        from producer.stack import WorkerService

        self.count += 1
        name = f"chaos{self.count}"
        svc = WorkerService(name, self.root / "logs" / f"{name}.log")
        svc.start({**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}, gpus="cpu", worker_name=name, threads=1)
        self.services[name] = svc
        return name

    def celery_pids(self) -> list[int]:
        from segq import registry
        from segq.connections import redis_client

        try:
            return [w.pid for w in registry.workers(redis_client(self.redis.url, patient=False, timeout=2))]
        except Exception:
            return []

    def close(self) -> None:
        for svc in self.services.values():
            svc.stop()
        self.servers.stop()


def fault(fleet: Fleet, kind: str, rng: random.Random, log) -> None:
    if kind == "kill celery":
        pids = fleet.celery_pids()
        if pids:
            os.kill(rng.choice(pids), signal.SIGKILL)
    elif kind == "kill worker tree":
        name = rng.choice(list(fleet.services))
        svc = fleet.services.pop(name)
        for pid in fleet.celery_pids():  # its Celery child first, then the launcher
            try:
                if open(f"/proc/{pid}/stat").read().split()[3] == str(svc.proc.pid):
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        svc.stop(sig=signal.SIGKILL)
        time.sleep(rng.uniform(1, 5))
        fleet.add_worker()
    elif kind == "freeze in pop, kill":
        pids = fleet.celery_pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(rng.uniform(1, 4))
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    elif kind == "restart redis":
        fleet.redis.stop(sig=signal.SIGKILL)
        time.sleep(rng.uniform(1, 5))
        fleet.redis.start()
    elif kind == "freeze s3":
        os.kill(fleet.s3.proc.pid, signal.SIGSTOP)
        time.sleep(rng.uniform(5, 30))
        os.kill(fleet.s3.proc.pid, signal.SIGCONT)
    elif kind == "restart s3":
        fleet.s3.stop(sig=signal.SIGKILL)
        time.sleep(rng.uniform(1, 10))
        fleet.s3.start()
    elif kind == "poison":
        from segq.connections import redis_client

        r = redis_client(fleet.redis.url)
        for i in range(rng.randint(1, 10)):
            r.lpush("segq.model.ade-semantic", f"poison {i} \x00")
    log(kind)


KINDS = ("kill celery", "kill worker tree", "freeze in pop, kill", "restart redis", "freeze s3", "restart s3",
         "poison")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--heartbeat", type=int, default=2)
    ap.add_argument("--settle", type=float, default=600.0, help="seconds every job gets to end after the faults")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    faults: collections.Counter = collections.Counter()
    started = time.monotonic()

    def log(kind: str) -> None:
        faults[kind] += 1
        print(f"[{time.monotonic() - started:7.1f}s] fault: {kind}", flush=True)

    with tempfile.TemporaryDirectory(prefix="segq-chaos-") as tmp:
        root = Path(tmp)
        fleet = Fleet(root, args.workers, args.heartbeat)
        from producer.client import Client
        from segq.settings import Settings

        from bench.images import make_images
        from bench.video import make_video

        client = Client(Settings.from_env())
        from segq import registry

        while len(registry.workers(client.r)) < args.workers:
            time.sleep(1)
        images = make_images(root / "img", 40, (96, 72))
        jobs: list[str] = []
        end = started + args.minutes * 60
        next_fault = time.monotonic() + rng.uniform(15, 45)
        n = 0
        while time.monotonic() < end:
            n += 1
            try:
                if rng.random() < 0.25:
                    clip = make_video(root / f"v{n}.mp4", rng.choice((24, 48, 72)), (96, 72))
                    jobs += [r.id for r in client.submit([str(clip)], task="semantic", chunk_frames=8, batch_size=4)]
                else:
                    jobs += [r.id for r in client.submit([str(rng.choice(images))], task="semantic")]
            except Exception as exc:  # a submission during an outage: the producer's error, not a lost job
                print(f"[{time.monotonic() - started:7.1f}s] submit refused: {type(exc).__name__}: {exc}", flush=True)
            if time.monotonic() >= next_fault:
                fault(fleet, rng.choice(KINDS), rng, log)
                next_fault = time.monotonic() + rng.uniform(15, 45)
            time.sleep(rng.uniform(2, 6))
        print(f"faults over after {time.monotonic() - started:.0f}s; {len(jobs)} jobs submitted; settling ...",
              flush=True)
        deadline = time.monotonic() + args.settle
        while time.monotonic() < deadline:
            try:
                records = [r for r in client.records_of(jobs) if r is not None]
                if len(records) == len(jobs) and all(r.final for r in records):
                    break
            except Exception:
                pass
            time.sleep(5)
        records = {r.id: r for r in client.records_of(jobs) if r is not None}
        outcome = collections.Counter()
        for job_id in jobs:
            r = records.get(job_id)
            if r is None:
                outcome["lost (no record)"] += 1
                continue
            outcome[r.state if r.final else "stuck"] += 1
            if r.is_video and r.state == "done" and (r.frames_done != r.frames_total or not r.frames_total):
                outcome["wrong frame count"] += 1
            if r.is_video and (r.assemblies or 0) > 1:
                outcome["assemblies > 1"] += 1
            if r.attempts > 1 + (r.requeues or 0):
                outcome["run more than its requeues allow"] += 1
            if r.state == "failed":
                print(f"failed {job_id}: {r.error}", flush=True)
        from producer import fleet as fleet_view
        from segq import deadletters

        watchdog = fleet_view.watchdog_counts(client.r)
        dead = deadletters.count(client.r)
        fleet.close()
    minutes = (time.monotonic() - started) / 60
    print(f"\nchaos: {minutes:.1f} min in all, {sum(faults.values())} faults, {len(jobs)} jobs "
          f"({args.workers} CPU workers, heartbeat {args.heartbeat}s)\n")
    print(table(sorted(faults.items()), ("fault", "times")))
    print()
    rows = [(k, outcome.get(k, 0)) for k in ("done", "failed", "canceled", "stuck", "lost (no record)",
                                             "wrong frame count", "assemblies > 1",
                                             "run more than its requeues allow")]
    print(table(rows, ("outcome", "jobs")))
    print(f"\nwatchdog: {watchdog['resent']} lost messages sent again, {watchdog['gave_up']} jobs failed for it; "
          f"dead letters: {dead}")


if __name__ == "__main__":
    main()
