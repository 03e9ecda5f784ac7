"""One video through (a) the article's procedure and (b) segq with 1 and 2 workers.

    python -m bench.video [--frames 96] [--size 480x360] [--chunk-frames 16] [--batch-size 4] [--load N]
    python -m bench.video --frames 32 --size 1920x1080 --load 1    # 1080p, idle and beside a busy process

(a) the article's script: one process, OpenCV decode, batch size 1, transformers'
    post_process_semantic_segmentation, its palette loop (one pass per class), cv2.addWeighted,
    the FPS text, cv2.VideoWriter (mp4v);
(b) segq: submit -> split -> chunks on the workers -> assembly of an H.264 MP4, timed from the
    submit to the job's end; with 1 worker (its default threads: the machine's cores), then with 2
    workers each pinned to its own core (as a GPU worker is pinned to its GPU; a worker's thread
    budget follows its CPU affinity).

Same tiny checkpoint and machine for all. Prints FPS of each, the ratios, and the split step's
share of the job's time. ``--load N``: everything again with N processes keeping N cores busy
(``bench.common.busy``), in the same run; beside the loaded figures, each path's FPS as a share
of its idle FPS.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.common import busy, checkpoint, load_label, servers, start_workers, stop_workers, table


def make_video(path: Path, frames: int, size: tuple[int, int], fps: int = 30) -> Path:
    from fractions import Fraction

    import numpy as np

    from workers.media.video import PartEncoder

    w, h = size
    encoder = PartEncoder(path, Fraction(fps), crf=23, gop=30)
    for i in range(frames):
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = (70, 120, 170)
        img[h * 2 // 3:] = (60, 150, 60)
        cx = int((i * 7) % w)
        img[h // 3:h // 3 + h // 5, max(0, cx - w // 10):cx + w // 10] = (200, 30, 30)
        encoder.write(img)
    encoder.close()
    return path


def article(ckpt: str, src: Path, out: Path, threads: int | None) -> float:
    """The article's video script, with its model loading replaced by the same checkpoint.
    Returns frames per second over the whole loop (decode to write)."""
    import cv2
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

    from bench.article import draw_segmentation_map, image_overlay
    from workers.media.labels import load

    if threads:
        torch.set_num_threads(threads)
    ade = load("ade20k").colors.tolist()  # the article's ADE_CATEGORIES palette

    processor = AutoImageProcessor.from_pretrained(ckpt)
    model = Mask2FormerForUniversalSegmentation.from_pretrained(ckpt).eval()
    cap = cv2.VideoCapture(str(src))
    w, h, fps = int(cap.get(3)), int(cap.get(4)), int(cap.get(5))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    frames = 0
    started = time.perf_counter()
    while cap.isOpened():
        ret, frame = cap.read()
        if not ret:
            break
        frames += 1
        image = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        inputs = processor(image, return_tensors="pt")
        t0 = time.time()
        with torch.no_grad():
            outputs = model(**inputs)
        mask = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0].cpu()
        result = image_overlay(image, draw_segmentation_map(mask.numpy(), ade))
        cv2.putText(result, f"FPS: {1 / (time.time() - t0):.1f}", (15, 25), cv2.FONT_HERSHEY_SIMPLEX, 1,
                    (0, 0, 255), 2, cv2.LINE_AA)
        writer.write(result)
    elapsed = time.perf_counter() - started
    cap.release()
    writer.release()
    return frames / elapsed


def segq_run(root: Path, env: dict, src: Path, workers: int, cores: int, chunk_frames: int, batch_size: int,
             threads: int | None = None):
    from producer.client import Client
    from segq.settings import Settings

    if workers == 1:
        procs = start_workers(root, env, 1, threads=threads)
    else:
        procs = start_workers(root, env, workers, threads=threads, cpus=[[i % cores] for i in range(workers)])
    try:
        client = Client(Settings.from_env())
        started = time.perf_counter()
        [job] = client.submit([str(src)], task="semantic", chunk_frames=chunk_frames, batch_size=batch_size,
                              annotate_fps=True)
        [done] = client.wait([job.id], timeout=3600, poll=0.2)
        wall = time.perf_counter() - started
    finally:
        stop_workers(procs)
    assert done.state == "done", done.error
    return done.frames_total / wall, done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--size", default="480x360")
    ap.add_argument("--chunk-frames", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None,
                    help="the workers' --threads and the article's torch threads (default: each its own)")
    ap.add_argument("--load", type=int, default=0, metavar="N",
                    help="also measure everything with N processes keeping N cores busy, in the same run")
    args = ap.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    cores = os.cpu_count() or 1
    loads = [0] + ([args.load] if args.load else [])
    results = {}
    with tempfile.TemporaryDirectory(prefix="segq-bench-") as tmp:
        root = Path(tmp)
        ckpt = checkpoint(root, "tiny")
        src = make_video(root / "clip.mp4", args.frames, size)
        with servers(root) as env:
            env["SEGQ_MODELS"] = f"ade-semantic={ckpt}"
            os.environ.update(env)
            for load in loads:
                with busy(load):
                    art = article(ckpt, src, root / "article.mp4", args.threads)
                    one = segq_run(root, env, src, 1, cores, args.chunk_frames, args.batch_size, args.threads)
                    two = segq_run(root, env, src, 2, cores, args.chunk_frames, args.batch_size, args.threads)
                results[load] = (art, one, two)
                print(f"{load_label(load)}: article {art:.2f} FPS, 1 worker {one[0]:.2f}, 2 workers {two[0]:.2f}",
                      flush=True)
    print(f"\n{args.frames} frames of {args.size}, tiny checkpoint, {cores} cores, torch on CPU; "
          f"segq: {args.chunk_frames} frames per chunk, batch {args.batch_size}\n")
    rows = []
    idle = results[0]
    for load, (art, one, two) in results.items():
        rows.append(("article loop (1 process)", load_label(load), f"{art:.2f}", "1.00", "-", "-",
                     f"{art / idle[0]:.2f}" if load else "-"))
        for i, (label, (fps, rec)) in enumerate((("segq, 1 worker", one), ("segq, 2 workers", two))):
            rows.append((label, load_label(load), f"{fps:.2f}", f"{fps / art:.2f}", f"{rec.fps:.2f}",
                         f"{100 * rec.split_s / rec.total_s:.1f}%", f"{fps / idle[1 + i][0]:.2f}" if load else "-"))
    print(table(rows, ("path", "beside", "FPS (submit to done)", "vs article", "inference FPS", "split share",
                       "vs idle")))


if __name__ == "__main__":
    main()
