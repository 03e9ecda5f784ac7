"""A 1920x1080 image job, timed by the worker, against the article's procedure: both kinds of
offline checkpoint, semantic, panoptic and instance, side by side in one run.

    python -m bench.fullhd                       # 5 timed jobs per task and kind (after 1 warm-up)
    python -m bench.fullhd --repeats 3 --tasks semantic,panoptic --kinds trained
    python -m bench.fullhd --load 1 --tasks semantic,panoptic --kinds trained   # idle and beside 1 busy process

For each kind of checkpoint (``trained``: what ``segq models tiny`` writes, region-like outputs;
``random``: ``--random``, noise-like outputs that take the dense fallback) and each task:

- **segq**: one real CPU worker (``segq worker --gpus cpu``, a real Redis and SeaweedFS S3 from
  ``bench.common``) runs the job; the figure is the worker's own ``total_s`` from the job record
  (fetch from S3, decode, preprocess, forward, post-processing, render, encode, upload), jobs one
  at a time, the median of ``--repeats``;
- **article**: the article's procedure in this process, warm (model loaded once, one run before
  timing): ``Image.open``, ``processor(image, return_tensors='pt')``, the forward pass,
  ``processor.post_process_<task>_segmentation(outputs, target_sizes=[image.size[::-1]])``, its
  ``draw_segmentation_map`` and ``image_overlay`` (``bench/article.py``) and ``cv2.imwrite``,
  the median of ``--repeats``, timed while the worker is idle.

Both on the same checkpoint folder and the same JPEG (the demo street drawn at 1920x1080 by
``bench/scenes.py``, a held-out seed); each side with its own default threads, as users run
them (``--threads N`` pins both to N). The ratio article/segq is the speed-up; the goals: trained
>= 6x semantic and >= 3x panoptic, random >= 3x and >= 2x. Also prints the worker's per-stage
seconds of the median job.

``--load N``: after the idle figures of each task, both sides again with N processes keeping N
cores busy (``bench.common.busy``: what else runs on a shared machine), in the same run. Goals
there: the worker's job at most 1.5x its idle time, the speed-ups as above.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import busy, load_label, servers, start_workers, stop_workers, table
from segq.jobs import STAGES

TASKS = {"semantic": "ade-semantic", "panoptic": "coco-panoptic", "instance": "coco-instance"}
GOALS = {("trained", "semantic"): 6.0, ("trained", "panoptic"): 3.0,
         ("random", "semantic"): 3.0, ("random", "panoptic"): 2.0}
#: Beside ``--load`` busy processes the worker's job may take at most this many times its idle time.
LOADED_GOAL = 1.5


def make_jpeg(path: Path) -> Path:
    from PIL import Image

    from bench import scenes

    sc = scenes.scene(scenes.DEMO_SEED, (1920, 1080))
    Image.fromarray(sc.image).save(path, quality=90)
    return path


def article(folder: str, task: str, jpeg: Path, out: Path, repeats: int) -> list[float]:
    """The article's procedure (its main script, the image case), warm; seconds per run."""
    import cv2
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

    from bench.article import draw_segmentation_map, image_overlay
    from workers.media import labels

    processor = AutoImageProcessor.from_pretrained(folder)
    model = Mask2FormerForUniversalSegmentation.from_pretrained(folder, dtype=torch.float32).eval()
    label_set = {"semantic": "ade20k", "panoptic": "coco_panoptic", "instance": "coco_instance"}[task]
    categories = labels.load(label_set).colors.tolist()

    def once() -> float:
        started = time.perf_counter()
        image = Image.open(jpeg)
        inputs = processor(image, return_tensors='pt')
        with torch.no_grad():
            outputs = model(**inputs)
        if task == 'semantic':
            mask = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
        elif task == 'instance':
            mask = processor.post_process_instance_segmentation(outputs, target_sizes=[image.size[::-1]])[0]['segmentation']
        else:
            mask = processor.post_process_panoptic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]['segmentation']
        seg_map = draw_segmentation_map(mask, categories)
        result = image_overlay(image, seg_map)
        cv2.imwrite(str(out / f"{task}_{jpeg.name}"), result)
        return time.perf_counter() - started

    once()
    return [once() for _ in range(repeats)]


def segq_jobs(client, jpeg: Path, task: str, model: str, repeats: int) -> list:
    """``repeats`` jobs (after one warm-up), one at a time; their records."""
    out = []
    for i in range(repeats + 1):
        [job] = client.submit([str(jpeg)], task=task, model=model)
        [rec] = client.wait([job.id], timeout=900, poll=0.05)
        assert rec.state == "done", f"{task} job {rec.id}: {rec.state} {rec.error}"
        if i:
            out.append(rec)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tasks", default="semantic,panoptic,instance")
    ap.add_argument("--kinds", default="trained,random")
    ap.add_argument("--threads", type=int, default=None,
                    help="the worker's --threads and the article's torch threads (default: each its own "
                         "default, as users run them: the worker's thread policy, torch's all cores)")
    ap.add_argument("--load", type=int, default=0, metavar="N",
                    help="also measure both sides with N processes keeping N cores busy, in the same run")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(tasks) - set(TASKS)) + sorted(set(kinds) - {"trained", "random"})
    if unknown:
        raise SystemExit(f"unknown task or kind: {', '.join(unknown)}")
    loads = [0] + ([args.load] if args.load else [])

    import torch

    from workers.model.checkpoints import make_all_tiny

    if args.threads:
        torch.set_num_threads(args.threads)
    article_threads = torch.get_num_threads()
    rows, figures = [], []
    with tempfile.TemporaryDirectory(prefix="segq-fullhd-") as tmp:
        root = Path(tmp)
        jpeg = make_jpeg(root / "street-1080p.jpg")
        (root / "article").mkdir()
        folders = {k: make_all_tiny(root / "models", random=k == "random") for k in kinds}
        with servers(root) as env:
            names = {f"{k}-{name}": path for k, m in folders.items() for name, path in m.items()}
            env["SEGQ_MODELS"] = ",".join(f"{name}={path}" for name, path in names.items())
            os.environ.update(env)
            from producer.client import Client
            from segq.settings import Settings

            workers = start_workers(root, env, 1, threads=args.threads, models=",".join(names))
            try:
                client = Client(Settings.from_env())
                for kind in kinds:
                    for task in tasks:
                        name = TASKS[task]
                        idle = None
                        for load in loads:
                            with busy(load):
                                records = segq_jobs(client, jpeg, task, f"{kind}-{name}", args.repeats)
                                runs = article(folders[kind][name], task, jpeg, root / "article", args.repeats)
                            seg = statistics.median(r.total_s for r in records)
                            art = statistics.median(runs)
                            idle = idle or seg
                            med = sorted(records, key=lambda r: r.total_s)[len(records) // 2]
                            stages = {s: med.stages.get(s) for s in STAGES}
                            goal = GOALS.get((kind, task))
                            ratio = art / seg
                            slower = seg / idle
                            rows.append((kind, task, load_label(load), f"{art:.3f}", f"{seg:.3f}", f"{ratio:.2f}x",
                                         f">= {goal:g}x {'met' if ratio >= goal else 'NOT met'}" if goal else "-",
                                         "-" if not load else f"{slower:.2f}x ({'met' if slower <= LOADED_GOAL else 'NOT met'})",
                                         " ".join(f"{s} {v * 1000:.0f}" for s, v in stages.items() if v is not None)))
                            figures.append({"kind": kind, "task": task, "load": load, "article_s": art,
                                            "segq_total_s": seg, "ratio": ratio, "goal": goal,
                                            "segq_vs_idle": slower, "article_runs": runs,
                                            "segq_runs": [r.total_s for r in records], "segq_stages_s": stages})
                            print(f"{kind} {task} ({load_label(load)}): article {art:.3f}s, segq {seg:.3f}s, "
                                  f"{ratio:.2f}x", flush=True)
            finally:
                stop_workers(workers)
    worker_threads = f"--threads {args.threads}" if args.threads else "its default threads"
    print(f"\n1920x1080 JPEG image job, the worker with {worker_threads}, the article with {article_threads} "
          f"torch threads, median of {args.repeats} (after a warm-up)\n")
    print(table(rows, ("checkpoints", "task", "beside", "article s", "segq total_s", "speed-up", "goal",
                       f"segq vs idle (<= {LOADED_GOAL:g}x)", "segq stages (ms, median job)")))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
