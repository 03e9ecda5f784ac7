"""The CPU side of a GPU worker: core-milliseconds per 1080p image and per 1080p video frame, by
stage, and what one worker process sustains with 1 and 2 cores.

    python -m bench.cpuside                          # 48 images, a 96-frame clip, 1 and 2 cores
    python -m bench.cpuside --images 96 --frames 192 --cores 1,2 --wait-ms 0 --json cpuside.json

A real worker (``segq worker --gpus cpu``, real Redis and SeaweedFS S3, pinned with
``sched_setaffinity`` to ``--cores`` cores: its thread budget follows, ``workers.host.cpus``) runs
its own code around the stand-in model (``workers.model.standin``) in place of the device: each
pass is a GIL-releasing wait of ``--wait-ms`` per image on the model stage's thread, the label map
comes back fixed and the overlay comes back blended, as from a CUDA device. Preprocessing is real:
the hub ADE checkpoints' image processor (every image resized to 384x384, normalised; the
backend of ``SEGQ_IMAGE_PROCESSOR``, ``pil`` by default) in the task's thread, as on a GPU worker.

- images: ``--images`` 1920x1080 JPEGs (8 street scenes of ``bench/scenes.py``, held-out seeds,
  quality 90) submitted as one batch; what the worker's records say of each image's CPU seconds
  by stage (``time.thread_time`` of the threads that ran it: ``segq.jobs.CPU_STAGES``), and the
  worker process's whole CPU time over the batch (``/proc``: every thread, the codecs', OpenCV's,
  Celery's and the control plane's included) per image; images/s from the first image's start to
  the last one's end;
- video: a 1920x1080 H.264 clip of ``--frames`` frames (a street scene panned 4 pixels a frame,
  30 fps) as one video job: split, chunks, assembly; CPU seconds by stage from the job's record
  (summed over its chunks), the process's CPU per frame, frames/s from the job's start to its end.
  Decoding and x264 encoding run partly in the codecs' own threads, which ``thread_time`` of the
  decode and encode threads does not see: the process's figure has them ("other" is the process's
  CPU less the stages').

Goal (the issue "A worker keeps its speed on a shared machine"): <= 40 core-ms per 1080p image
outside the device's work, so that 14 cores feed >= 300 images/s per GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import servers, start_workers, stop_workers, table
from segq.jobs import CPU_STAGES

GOAL_MS = 40.0
#: The hub's ADE Mask2Former checkpoints' image processor (``preprocessor_config.json``).
ADE_PROCESSOR = {"size": {"height": 384, "width": 384}, "size_divisor": 32, "do_reduce_labels": False,
                 "ignore_index": 255}


def processor_folder(root: Path) -> Path:
    from transformers import Mask2FormerImageProcessor

    folder = root / "ade-processor"
    Mask2FormerImageProcessor(**ADE_PROCESSOR).save_pretrained(folder)
    return folder


def make_images(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    from bench import scenes

    folder.mkdir(parents=True, exist_ok=True)
    drawn = [scenes.scene(scenes.DEMO_SEED + 1 + i, (1920, 1080)).image for i in range(min(n, 8))]
    paths = []
    for i in range(n):
        p = folder / f"street-{i:04d}.jpg"
        Image.fromarray(drawn[i % len(drawn)]).save(p, quality=90)
        paths.append(p)
    return paths


def make_clip(path: Path, frames: int, fps: int = 30) -> Path:
    from fractions import Fraction

    from bench import scenes
    from workers.media.video import PartEncoder

    step = 4
    wide = scenes.scene(scenes.DEMO_SEED + 100, (1920 + step * frames, 1080)).image
    encoder = PartEncoder(path, Fraction(fps), crf=23, gop=fps)
    for i in range(frames):
        encoder.write(wide[:, i * step:i * step + 1920])
    encoder.close()
    return path


def celery_pids(launcher_pid: int) -> list[int]:
    """The worker processes a ``segq worker`` launcher started (its children)."""
    out = []
    for tid in os.listdir(f"/proc/{launcher_pid}/task"):
        try:
            out += [int(p) for p in Path(f"/proc/{launcher_pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_stage_ms(records: list, per: float) -> dict[str, float]:
    """Mean CPU milliseconds per item of each stage over ``records`` (``per``: items)."""
    return {s: 1000.0 * sum(r.cpu.get(s, 0.0) for r in records) / per for s in CPU_STAGES}


def run_images(client, worker_pid: int, paths: list[Path], model: str) -> dict:
    before = cpu_seconds(worker_pid)
    jobs = client.submit([str(p) for p in paths], task="semantic", model=model)
    records = client.wait([j.id for j in jobs], timeout=3600, poll=0.2)
    process = cpu_seconds(worker_pid) - before
    bad = [r for r in records if r.state != "done"]
    assert not bad, f"{len(bad)} images not done: {bad[0].error}"
    wall = max(r.finished_at for r in records) - min(r.started_at for r in records)
    stages = per_stage_ms(records, len(records))
    return {"items": len(records), "per_s": len(records) / wall, "stages_ms": stages,
            "stages_sum_ms": sum(stages.values()), "process_ms": 1000.0 * process / len(records),
            "wall_ms": statistics.median(r.total_s for r in records) * 1000.0}


def run_video(client, worker_pid: int, clip: Path, model: str, chunk_frames: int, batch_size: int) -> dict:
    before = cpu_seconds(worker_pid)
    [job] = client.submit([str(clip)], task="semantic", model=model, chunk_frames=chunk_frames,
                          batch_size=batch_size)
    [rec] = client.wait([job.id], timeout=3600, poll=0.2)
    process = cpu_seconds(worker_pid) - before
    assert rec.state == "done", rec.error
    frames = rec.frames_total or rec.frames
    stages = per_stage_ms([rec], frames)
    return {"items": frames, "per_s": frames / (rec.finished_at - rec.started_at), "stages_ms": stages,
            "stages_sum_ms": sum(stages.values()), "process_ms": 1000.0 * process / frames}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--cores", default="1,2", help="the worker's cores, one run each (default: 1,2)")
    ap.add_argument("--wait-ms", type=float, default=0.0,
                    help="the stand-in device's time per image (default 0: the CPU side alone sets the pace)")
    ap.add_argument("--chunk-frames", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    core_counts = [int(c) for c in args.cores.split(",") if c]
    available = sorted(os.sched_getaffinity(0))
    if max(core_counts) > len(available):
        raise SystemExit(f"--cores {args.cores}: this machine has {len(available)} usable cores")
    results: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="segq-cpuside-") as tmp:
        root = Path(tmp)
        folder = processor_folder(root)
        paths = make_images(root / "in", args.images)
        clip = make_clip(root / "clip-1080p.mp4", args.frames)
        with servers(root) as env:
            model = "gpu-standin"
            env["SEGQ_MODELS"] = f"{model}=standin:wait_ms={args.wait_ms:g}:labels=ade20k:processor={folder}"
            env["SEGQ_ALLOW_STANDIN"] = "1"
            os.environ.update(env)
            from producer.client import Client
            from segq.settings import Settings

            client = Client(Settings.from_env())
            for cores in core_counts:
                workers = start_workers(root, env, 1, threads=None, cpus=[available[:cores]], models=model,
                                        prefix=f"cpu{cores}-")
                try:
                    [pid] = celery_pids(workers[0][0].proc.pid)
                    run_images(client, pid, paths[:4], model)  # warm-up
                    images = run_images(client, pid, paths, model)
                    clip_run = run_video(client, pid, clip, model, args.chunk_frames, args.batch_size)
                finally:
                    stop_workers(workers)
                results[cores] = {"images": images, "video": clip_run}
                print(f"{cores} core(s): {images['per_s']:.1f} images/s, {images['process_ms']:.1f} core-ms per image; "
                      f"{clip_run['per_s']:.1f} frames/s, {clip_run['process_ms']:.1f} core-ms per frame", flush=True)

    print(f"\nThe CPU side of a worker around a stand-in device (wait {args.wait_ms:g} ms per image), "
          f"1920x1080, {args.images} images and a {args.frames}-frame clip (chunks of {args.chunk_frames}, "
          f"batch {args.batch_size}), the hub ADE processor (384x384)\n")
    heads = ["stage (core-ms)"]
    for cores in core_counts:
        heads += [f"image, {cores} core(s)", f"video frame, {cores} core(s)"]
    rows = []
    for stage in CPU_STAGES:
        row = [stage]
        for cores in core_counts:
            row += [f"{results[cores]['images']['stages_ms'][stage]:.1f}", f"{results[cores]['video']['stages_ms'][stage]:.1f}"]
        rows.append(tuple(row))
    for label, key in (("sum of the stages", "stages_sum_ms"), ("the worker process, all threads", "process_ms")):
        row = [label]
        for cores in core_counts:
            row += [f"{results[cores]['images'][key]:.1f}", f"{results[cores]['video'][key]:.1f}"]
        rows.append(tuple(row))
    row = ["other (codec threads, Celery, control)"]
    for cores in core_counts:
        for kind in ("images", "video"):
            r = results[cores][kind]
            row.append(f"{r['process_ms'] - r['stages_sum_ms']:.1f}")
    rows.append(tuple(row))
    row = ["sustained per second"]
    for cores in core_counts:
        row += [f"{results[cores]['images']['per_s']:.1f} images", f"{results[cores]['video']['per_s']:.1f} frames"]
    rows.append(tuple(row))
    print(table(rows, tuple(heads)))
    best = min(results[c]["images"]["process_ms"] for c in core_counts)
    print(f"\nper 1080p image: {best:.1f} core-ms, goal <= {GOAL_MS:g} ({'met' if best <= GOAL_MS else 'NOT met'}); "
          f"14 cores would feed {14000.0 / best:.0f} images/s (goal >= 300)")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
