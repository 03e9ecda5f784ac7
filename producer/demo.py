"""``segq demo``: the whole system on one machine, in one command.

Starts the local stack (Redis, SeaweedFS S3, a worker, Flower), draws a demo street scene,
submits it once per task, and a short clip of it as a video job, through the same ``Client`` the
CLI uses, waits, downloads the outputs and prints where everything is.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console

from segq.protocol import TASKS


def demo_image(path: Path, width: int = 640, height: int = 426) -> Path:
    """A synthetic street scene (sky, buildings, road, a car, people), saved as JPEG."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height))
    d = ImageDraw.Draw(img)
    for y in range(int(height * 0.55)):  # sky gradient
        c = 235 - y // 3
        d.line([(0, y), (width, y)], fill=(110, 160, c))
    d.rectangle([0, int(height * 0.62), width, height], fill=(88, 88, 92))  # road
    d.rectangle([0, int(height * 0.55), width, int(height * 0.62)], fill=(170, 170, 160))  # sidewalk
    for i, (x, w, h, col) in enumerate([(10, 120, 190, (150, 80, 60)), (140, 90, 240, (190, 180, 160)),
                                          (440, 180, 210, (120, 110, 130))]):
        top = int(height * 0.55) - h
        d.rectangle([x, top, x + w, int(height * 0.55)], fill=col)
        for wy in range(top + 15, int(height * 0.55) - 25, 35):
            for wx in range(x + 12, x + w - 20, 28):
                d.rectangle([wx, wy, wx + 14, wy + 20], fill=(60, 80, 110))
    d.ellipse([250, 150, 330, 230], fill=(40, 120, 40))  # tree crown
    d.rectangle([284, 225, 296, 262], fill=(90, 60, 30))
    d.rounded_rectangle([300, 270, 470, 330], radius=18, fill=(180, 20, 30))  # car
    d.rectangle([335, 240, 430, 275], fill=(150, 20, 30))
    for cx in (330, 440):
        d.ellipse([cx - 18, 315, cx + 18, 351], fill=(20, 20, 20))
    for px in (90, 560):  # people
        d.ellipse([px - 10, 200, px + 10, 222], fill=(230, 190, 160))
        d.rectangle([px - 12, 222, px + 12, 275], fill=(40, 60, 160))
        d.rectangle([px - 10, 275, px + 10, 320], fill=(30, 30, 30))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=92)
    return path


def demo_video(still: Path, path: Path, frames: int = 48, fps: int = 24) -> Path:
    """The demo scene as an H.264 clip: a red box drives along the road."""
    from fractions import Fraction

    import numpy as np
    from PIL import Image

    from workers.video import PartEncoder

    base = np.asarray(Image.open(still).convert("RGB"))
    h, w = base.shape[:2]
    encoder = PartEncoder(path, Fraction(fps), gop=16)
    for i in range(frames):
        frame = base.copy()
        x = int(i * (w - 120) / frames)
        frame[int(h * 0.75):int(h * 0.75) + 40, x:x + 110] = (190, 25, 35)
        encoder.write(frame)
    encoder.close()
    return path


def run_demo(data_dir: Path, out_dir: Path, *, offline: bool, keep: bool, out: Console, err: Console) -> int:
    from producer.cli import _stack_models, _wait_with_progress
    from producer.client import Client
    from producer.stack import LocalStack
    from segq.settings import Settings

    image = demo_image(out_dir / "demo-street.jpg")
    stack = LocalStack(data_dir, models=_stack_models(data_dir, offline))
    err.print("starting the local stack: redis, seaweedfs s3, one worker, flower ...")
    started = time.monotonic()
    with stack:
        err.print(f"stack ready in {time.monotonic() - started:.1f}s")
        os.environ.update(stack.env())
        client = Client(Settings.from_env())
        jobs = [client.submit([str(image)], task=task)[0] for task in TASKS]
        clip = demo_video(image, out_dir / "demo-street.mp4")
        jobs += client.submit([str(clip)], task="semantic", chunk_frames=16, batch_size=4, annotate_fps=True)
        err.print(f"submitted {len(jobs)} jobs: {image} (semantic, instance, panoptic) and {clip} (semantic)")
        records = _wait_with_progress(client, [j.id for j in jobs], timeout=600, quiet=False)
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
                out.print(f"  error: {rec.error}", highlight=False)
                continue
            for key in rec.outputs:
                out.print(f"  s3://{stack.s3.bucket}/{key}", highlight=False)
            for f in client.download(rec.id, out_dir):
                out.print(f"  -> {f}", highlight=False)
        out.print(f"\nflower: {stack.flower.url}   redis: {stack.redis.url}   s3: {stack.s3.endpoint}", highlight=False)
        out.print(f"outputs downloaded under {out_dir.resolve()}/<job id>/", highlight=False)
        if offline:
            out.print("[yellow]offline checkpoints are random-initialised: the segmentations are meaningless; "
                      "run `segq demo --hub` with hub access for the real models[/]")
        if keep:
            out.print(f"\nstack kept running; in another shell: export SEGQ_ENV_FILE={stack.env_file}", highlight=False)
            try:
                while stack.worker.running:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    return 1 if failed else 0
