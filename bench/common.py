"""Shared pieces of the benchmarks: servers, checkpoints, inputs, printing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path


from producer.stack import Servers, WorkerService


@contextmanager
def servers(root: Path):
    """A real Redis and SeaweedFS S3 on loopback; yields the environment pointing at them."""
    with Servers(root) as both:
        yield both.env()


def checkpoint(root: Path, kind: str) -> str:
    """``tiny``: the offline test checkpoint; ``swin-l``: the full-size architecture, random weights."""
    if kind == "tiny":
        from workers.model.checkpoints import make_tiny

        folder = root / "tiny-ade"
        if not (folder / "config.json").exists():
            make_tiny("ade20k", folder)
        return str(folder)
    if kind == "swin-l":
        import torch
        from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

        from workers.model.checkpoints import full_size_config

        folder = root / "swin-l-ade"
        if not (folder / "config.json").exists():
            torch.manual_seed(0)
            Mask2FormerForUniversalSegmentation(full_size_config("ade20k")).save_pretrained(folder)
            Mask2FormerImageProcessor(size={"shortest_edge": 512, "longest_edge": 2048}).save_pretrained(folder)
        return str(folder)
    raise SystemExit(f"unknown model kind {kind!r}")


def start_workers(root: Path, env: dict, count: int, threads: int, cpus: list[list[int]] | None = None,
                  models: str | None = None, prefix: str = "bench") -> list[tuple[WorkerService, str]]:
    """``count`` real `segq worker --gpus cpu` processes (optionally pinned to cores with taskset;
    ``models``: their ``--models``, by default the tasks' default models; ``prefix``: of their names)."""
    out = []
    for i in range(count):
        name = f"{prefix}{i}"
        svc = WorkerService(name, root / "logs" / f"{name}.log")
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        svc.start(full_env, gpus="cpu", models=models, worker_name=name, threads=threads)
        if cpus:
            os.sched_setaffinity(svc.proc.pid, cpus[i])  # children inherit it
        out.append((svc, f"{name}-cpu@{socket.gethostname()}"))
    for svc, host in out:
        svc.wait_ready(env["SEGQ_REDIS_URL"], hostnames=[host], timeout=600)
    return out


def stop_workers(workers) -> None:
    for svc, _ in workers:
        svc.stop()


def table(rows: list[tuple], headers: tuple) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(headers), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])


#: What a busy process runs: pure Python arithmetic, one core's worth, until it is killed.
SPIN = "while True:\n    pass\n"


@contextmanager
def busy(n: int):
    """``n`` processes, each keeping one core busy (what else runs on a shared machine: another
    worker, a CLI, a build), for the block. ``n`` = 0: nothing."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.DEVNULL) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
        for p in procs:
            p.wait()


def load_label(n: int) -> str:
    return "idle" if n == 0 else f"{n} busy process{'es' if n > 1 else ''}"
