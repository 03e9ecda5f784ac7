"""A worker's peak memory on 40 MP images, with its pixel budget and without, side by side.

    python -m bench.memory [--side 6300] [--images 3] [--task semantic]

One real worker (tiny checkpoint, the default concurrency of 3) is warmed up on small images; then
(a) one image of SIDE x SIDE (6300: 39.7 MP), (b) IMAGES of them submitted at once, with the
default budget (SEGQ_WORKER_PIXEL_BUDGET = SEGQ_MAX_IMAGE_PIXELS: they run one at a time), and
(c) the same with the budget opened to fit them all (what a worker without a budget does: all at
once). Each in a fresh worker process; the figure is the process's peak resident memory (VmHWM)
over its resident memory after the warm-up.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.common import checkpoint, servers, start_workers, stop_workers, table
from workers.testing.probes import big_jpeg, status_kb


def run(root: Path, env: dict, images: list[Path], warm: list[Path], task: str, budget: int | None) -> dict:
    from producer.client import Client
    from segq import registry
    from segq.settings import Settings

    os.environ.update(env)
    if budget:
        os.environ["SEGQ_WORKER_PIXEL_BUDGET"] = str(budget)
    else:
        os.environ.pop("SEGQ_WORKER_PIXEL_BUDGET", None)
    workers = start_workers(root, env, 1, os.cpu_count() or 1)
    try:
        client = Client(Settings.from_env())
        pid = registry.get(client.r, workers[0][1]).pid
        client.wait([j.id for j in client.submit([str(p) for p in warm], task=task)], timeout=600)
        time.sleep(1)
        base = status_kb(pid, "VmRSS")
        started = time.perf_counter()
        records = client.wait([j.id for j in client.submit([str(p) for p in images], task=task)], timeout=3600)
        seconds = time.perf_counter() - started
        assert all(r.state == "done" for r in records), [r.error for r in records]
        peak = status_kb(pid, "VmHWM")
        return {"base_mb": base / 1024, "peak_mb": peak / 1024, "growth_mb": (peak - base) / 1024, "seconds": seconds}
    finally:
        stop_workers(workers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=6300)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--task", default="semantic", choices=["semantic", "instance", "panoptic"])
    args = ap.parse_args()
    pixels = args.side * args.side
    from bench.images import make_images

    with tempfile.TemporaryDirectory(prefix="segq-bench-") as tmp:
        root = Path(tmp)
        label_set = {"semantic": "ade20k", "instance": "coco_instance", "panoptic": "coco_panoptic"}[args.task]
        ckpt = checkpoint(root, "tiny") if args.task == "semantic" else _tiny(root, label_set)
        big = [big_jpeg(root / f"big{i}.jpg", args.side, i) for i in range(args.images)]
        warm = make_images(root / "warm", 3, (640, 480))
        with servers(root) as env:
            env.update({"SEGQ_MODELS": f"m={ckpt}", "SEGQ_TASK_MODELS": f"{args.task}=m",
                        "SEGQ_MAX_IMAGE_PIXELS": str(max(pixels, 40_000_000)),
                        "SEGQ_MAX_INPUT_BYTES": str(1 << 30)})
            rows = [("1 image", run(root, env, big[:1], warm, args.task, None)),
                    (f"{args.images} at once, budget (default)", run(root, env, big, warm, args.task, None)),
                    (f"{args.images} at once, no budget", run(root, env, big, warm, args.task,
                                                             pixels * args.images))]
    print(f"\n{args.task}, {args.side}x{args.side} JPEG ({pixels / 1e6:.1f} MP), one worker, concurrency "
          f"{os.environ.get('SEGQ_WORKER_CONCURRENCY', '3')}, tiny checkpoint, CPU\n")
    print(table([(name, f"{r['base_mb']:.0f}", f"{r['peak_mb']:.0f}", f"{r['growth_mb']:.0f}", f"{r['seconds']:.1f}")
                 for name, r in rows],
                ("run", "warm RSS MB", "peak MB", "growth MB (goal <= 1536 for 3)", "seconds")))


def _tiny(root: Path, label_set: str) -> str:
    from workers.model.checkpoints import make_tiny

    folder = root / f"tiny-{label_set}"
    if not (folder / "config.json").exists():
        make_tiny(label_set, folder)
    return str(folder)


if __name__ == "__main__":
    main()
