"""``segq demo``: the whole system on one machine, in one command.

Starts the local stack (Redis, SeaweedFS S3, a worker, Flower), submits a demo street scene
once per task, and a short clip of it as a video job, through the same ``Client`` the CLI uses,
waits, downloads the outputs and prints where everything is. The image and the clip are
package data (``producer/data``): nothing is drawn or encoded here.
"""

from __future__ import annotations

import os
import time
from importlib import resources
from pathlib import Path

from rich.console import Console

from rich.markup import escape

from producer.display import redact, safe

from segq.protocol import TASKS
from segq.settings import Settings

from producer.progress import wait_with_progress
from producer.client import Client
from producer.stack import LocalStack, offline_models


#: The demo's inputs, shipped as package data (``scripts/make_demo_media.py`` draws them).
DEMO_IMAGE = "demo-street.jpg"
DEMO_CLIP = "demo-street.mp4"


def demo_media(out_dir: Path) -> tuple[Path, Path]:
    """Copy the demo street image and its 48-frame clip (a red box drives along the road) to ``out_dir``."""
    data = resources.files("producer") / "data"
    out_dir.mkdir(parents=True, exist_ok=True)
    copies = []
    for name in (DEMO_IMAGE, DEMO_CLIP):
        target = out_dir / name
        target.write_bytes((data / name).read_bytes())
        copies.append(target)
    return copies[0], copies[1]


def run_demo(data_dir: Path, out_dir: Path, *, offline: bool, keep: bool, out: Console, err: Console) -> int:
    image, clip = demo_media(out_dir)
    models = None
    if offline:
        err.print("[yellow]offline models:[/] segq's tiny checkpoints, trained on synthetic street scenes "
                  "like the demo's (docs/offline-models.md)")
        models = offline_models(data_dir / "models")
    stack = LocalStack(data_dir, models=models)
    err.print("starting the local stack: redis, seaweedfs s3, one worker, flower ...")
    started = time.monotonic()
    with stack:
        err.print(f"stack ready in {time.monotonic() - started:.1f}s")
        os.environ.update(stack.env())
        client = Client(Settings.from_env())
        jobs = [client.submit([str(image)], task=task)[0] for task in TASKS]
        jobs += client.submit([str(clip)], task="semantic", chunk_frames=16, batch_size=4, annotate_fps=True)
        err.print(f"submitted {len(jobs)} jobs: {image} (semantic, instance, panoptic) and {clip} (semantic)")
        records = wait_with_progress(client, [j.id for j in jobs], timeout=600, quiet=False, console=err)
        failed = 0
        for rec in records:
            what = (f"{rec.frames_total} frames in {rec.chunks_total} chunks, {rec.fps or 0:.2f} fps"
                    if rec.kind == "video" else f"{rec.segments} segments")
            out.print(f"\n[bold]{rec.task} {rec.kind}[/] job {rec.id}: "
                      f"[{'green' if rec.state == 'done' else 'red'}]{rec.state}[/]"
                      f"  inference {rec.inference_s or 0:.3f}s on {rec.worker} ({rec.device}), {what}",
                      highlight=False)
            if rec.state != "done":
                failed += 1
                out.print(f"  error: {escape(safe(rec.error))}", highlight=False)
                continue
            for key in rec.outputs:
                out.print(f"  s3://{stack.s3.bucket}/{key}", highlight=False)
            for f in client.download(rec.id, out_dir):
                out.print(f"  -> {f}", highlight=False)
        out.print(f"\nflower: {stack.flower.url}   redis: {redact(stack.redis.url)}   s3: {stack.s3.endpoint}"
                  f"   (credentials in {stack.env_file} while the stack runs)", highlight=False)
        out.print(f"outputs downloaded under {out_dir.resolve()}/<job id>/", highlight=False)
        if offline:
            out.print("[yellow]offline checkpoints: a 0.76M-parameter model trained on drawn street scenes; it "
                      "knows 8 classes and little of real photos. `segq demo --hub` (with hub access) runs the "
                      "real Swin-L models[/]")
        if keep:
            out.print(f"\nstack kept running; in another shell: export SEGQ_ENV_FILE={stack.env_file}", highlight=False)
            try:
                while stack.worker.running:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    return 1 if failed else 0
