"""Horizontal scaling: 1 vs 2 worker processes, each pinned to its own core (as a GPU worker is
pinned to its GPU), same queue, same machine.

    python -m bench.scaling [--images 24] [--image-size 480x360] [--frames 64] [--video-size 480x360]

Prints image jobs/s and video FPS (submit to done) for 1 and 2 workers, and the ratios.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.common import checkpoint, servers, start_workers, stop_workers, table
from bench.images import make_images
from bench.video import make_video


def run(root: Path, env: dict, workers: int, images: list[Path], clip: Path) -> tuple[float, float]:
    from producer.client import Client
    from segq.settings import Settings

    cores = os.cpu_count() or 1
    procs = start_workers(root, env, workers, threads=1, cpus=[[i % cores] for i in range(workers)])
    try:
        client = Client(Settings.from_env())
        warm = client.submit([str(images[0])] * workers, task="semantic")
        client.wait([j.id for j in warm], timeout=600)
        t0 = time.perf_counter()
        jobs = client.submit([str(p) for p in images], task="semantic")
        client.wait([j.id for j in jobs], timeout=3600, poll=0.2)
        ips = len(images) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        [job] = client.submit([str(clip)], task="semantic", chunk_frames=8, batch_size=1)
        [done] = client.wait([job.id], timeout=3600, poll=0.2)
        fps = done.frames_total / (time.perf_counter() - t0)
        assert done.state == "done", done.error
    finally:
        stop_workers(procs)
    return ips, fps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--image-size", default="480x360")
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--video-size", default="480x360")
    args = ap.parse_args()
    isize = tuple(int(x) for x in args.image_size.split("x"))
    vsize = tuple(int(x) for x in args.video_size.split("x"))
    with tempfile.TemporaryDirectory(prefix="segq-bench-") as tmp:
        root = Path(tmp)
        ckpt = checkpoint(root, "tiny")
        images = make_images(root / "in", args.images, isize)
        clip = make_video(root / "clip.mp4", args.frames, vsize)
        with servers(root) as env:
            env["SEGQ_MODELS"] = f"ade-semantic={ckpt}"
            os.environ.update(env)
            one = run(root, env, 1, images, clip)
            two = run(root, env, 2, images, clip)
    print(f"\ntiny checkpoint, {os.cpu_count()} cores, each worker pinned to one core with one torch thread\n")
    print(table(
        [("image jobs/s", f"{one[0]:.2f}", f"{two[0]:.2f}", f"{two[0] / one[0]:.2f}"),
         ("video FPS", f"{one[1]:.2f}", f"{two[1]:.2f}", f"{two[1] / one[1]:.2f}")],
        ("", "1 worker", "2 workers", "scaling"),
    ))


if __name__ == "__main__":
    main()
