"""Post-processing + rendering of one 1920x1080 frame: segq's fast path vs transformers + the article.

    python -m bench.postprocess [--size 1920x1080] [--rounds 3] [--tasks semantic,instance,panoptic]
                                [--outputs structured,noise,tiny-random] [--json FILE|-]

Inputs (``--outputs``, a comma-separated list; every task runs on each, printed side by side):

- ``structured``: synthetic Mask2Former outputs of the real shapes (200 queries, mask logits
  96 x 96; 150 classes for semantic/ADE20K, 80 for instance/COCO, 133 for panoptic/COCO panoptic
  with the COCO stuff ids fused), region-like as a trained model's (one confident query per
  region of a Voronoi layout, no exactly duplicated queries), seeded (``workers.testing.synthetic.structured``);
- ``noise``: the same shapes with mask logits that vary at the source-pixel scale (boundaries
  everywhere), 40 confident queries so that instance and panoptic keep segments
  (``workers.testing.synthetic.pixel_noise``);
- ``tiny-random``: the real forward pass of the random-weight tiny checkpoint of the task
  (``workers.model.checkpoints.make_tiny``: 24 queries, written once under ``--tiny-dir``) on the frame
  below, through its own image processor (mask logits 64 x 120 for a 16:9 frame).

One random RGB frame; one CPU thread.

(a) segq: ``workers.model.postprocess`` (semantic / instance / panoptic) -> the worker's encoding
    (semantic as is; instance id + 1; panoptic -1 -> 0; no area/bbox statistics) ->
    ``workers.media.render.overlay`` (palette lookup table, ``cv2.addWeighted``);
(b) baseline: transformers' ``post_process_*_segmentation`` -> the article's
    ``draw_segmentation_map`` (a loop over every palette class) and ``image_overlay``.

Timing: a warm-up call of each, then ``--rounds`` alternating rounds; medians reported.
Memory: each path runs in a fresh subprocess (same inputs, one thread, glibc's mmap threshold
fixed at 128 KiB so that large buffers go back to the system when freed); after a warm-up call
the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``) and the peak RSS growth of one
more call over the RSS before it is reported (VmHWM - VmRSS from ``/proc/self/status``).
Equivalence: ``workers.testing.equivalence.compare`` of the two label maps (differing pixels, how many
at near-ties). Targets: >= 10x faster, peak memory <= 1/10, differences only at near-ties.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

TASKS = {"semantic": ("ade20k", 150), "instance": ("coco_instance", 80), "panoptic": ("coco_panoptic", 133)}
SEEDS = {"semantic": 101, "instance": 102, "panoptic": 103}
OUTPUTS = ("structured", "noise", "tiny-random")
SPEED_TARGET = 10.0
MEMORY_TARGET = 0.1
DEFAULT_TINY_DIR = Path(tempfile.gettempdir()) / "segq-bench-tiny"


# --- inputs -----------------------------------------------------------------------------------

def frame(size: tuple[int, int]):
    import numpy as np

    H, W = size
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def make_outputs(task: str, outputs: str, size: tuple[int, int], tiny_dir: Path):
    """(class_queries_logits, masks_queries_logits) for ``task`` from the ``outputs`` mode."""
    import torch

    from workers.testing import synthetic

    name, num_classes = TASKS[task]
    if outputs == "structured":
        return synthetic.structured(SEEDS[task], num_classes, duplicates=0)
    if outputs == "noise":
        return synthetic.pixel_noise(SEEDS[task], num_classes)
    if outputs != "tiny-random":
        raise ValueError(f"unknown outputs {outputs!r}: one of {', '.join(OUTPUTS)}")
    from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessorPil

    from workers.model import checkpoints

    folder = tiny_dir / f"tiny-{name}"
    if not (folder / "config.json").is_file():
        checkpoints.make_tiny(name, folder)
    model = Mask2FormerForUniversalSegmentation.from_pretrained(folder).eval()
    proc = Mask2FormerImageProcessorPil.from_pretrained(folder)
    inputs = proc(images=frame(size), return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    return out.class_queries_logits.contiguous(), out.masks_queries_logits.contiguous()


def setup(task: str, size: tuple[int, int], cls, masks):
    import torch
    from transformers import Mask2FormerImageProcessorPil

    from workers.media import labels as labelsets

    torch.set_num_threads(1)
    name, _ = TASKS[task]
    labels = labelsets.load(name)
    return SimpleNamespace(
        task=task, size=size, labels=labels, cls=cls, masks=masks, image=frame(size),
        proc=Mask2FormerImageProcessorPil(), stuff=labels.stuff_ids,
    )


# --- the two paths ----------------------------------------------------------------------------

def fast_path(s):
    """segq: fast post-processing, the worker's encoding, the worker's overlay."""
    import torch

    from workers.model import postprocess
    from workers.media.prediction import Prediction, Segment
    from workers.media.render import overlay

    if s.task == "semantic":
        seg = postprocess.semantic(s.cls, s.masks, s.size, dtype=torch.int32)  # as the worker asks
        pred = Prediction("semantic", seg.to(torch.int32).numpy())
        ref_map = seg
    elif s.task == "instance":
        res = postprocess.instance(s.cls, s.masks, s.size, threshold=0.5, mask_threshold=0.5, overlap_mask_area_threshold=0.8)
        label_map = (res["segmentation"].to(torch.int32) + 1).numpy()
        segs = [Segment(x["id"] + 1, int(x["label_id"]), float(x["score"])) for x in res["segments_info"]]
        pred = Prediction("instance", label_map, segs)
        ref_map = res
    else:
        res = postprocess.panoptic(
            s.cls, s.masks, s.size, threshold=0.5, mask_threshold=0.5, overlap_mask_area_threshold=0.8,
            label_ids_to_fuse=s.stuff,
        )
        label_map = res["segmentation"].to(torch.int32).clamp_(min=0).numpy()
        segs = [Segment(int(x["id"]), int(x["label_id"]), float(x["score"]), was_fused=bool(x["was_fused"])) for x in res["segments_info"]]
        pred = Prediction("panoptic", label_map, segs)
        ref_map = res
    return overlay(s.image, pred, s.labels), ref_map


def baseline_path(s):
    """transformers' post-processing and the article's palette loop and overlay."""
    import torch

    outputs = SimpleNamespace(class_queries_logits=s.cls, masks_queries_logits=s.masks)
    with torch.no_grad():
        if s.task == "semantic":
            res = s.proc.post_process_semantic_segmentation(outputs, target_sizes=[s.size])[0]
            mask = res
        elif s.task == "instance":
            res = s.proc.post_process_instance_segmentation(outputs, target_sizes=[s.size])[0]
            mask = res["segmentation"]
        else:
            res = s.proc.post_process_panoptic_segmentation(outputs, label_ids_to_fuse=s.stuff, target_sizes=[s.size])[0]
            mask = res["segmentation"]
    palette = s.labels.colors.tolist()
    from bench.article import draw_segmentation_map, image_overlay

    seg_map = draw_segmentation_map(mask, palette)
    return image_overlay(s.image, seg_map), res


PATHS = {"fast": fast_path, "baseline": baseline_path}


# --- memory -----------------------------------------------------------------------------------

def measure_memory_child(task: str, path: str, size: tuple[int, int], outputs_file: str) -> None:
    import torch

    from workers.testing.probes import status_kb

    cls, masks = torch.load(outputs_file)
    s = setup(task, size, cls, masks)
    fn = PATHS[path]
    fn(s)  # warm-up: lazy imports, first-call allocations
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    before = status_kb("self", "VmRSS")
    out = fn(s)
    peak = status_kb("self", "VmHWM")
    del out
    print(json.dumps({"peak_growth_mb": (peak - before) / 1024, "rss_before_mb": before / 1024}))


def measure_memory(task: str, path: str, size: tuple[int, int], outputs_file: str) -> dict:
    # a fixed glibc mmap threshold: large buffers are mapped and unmapped per call (instead of
    # staying in the heap after the warm-up), so the RSS growth of a call is its working set
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072",
    }
    cmd = [
        sys.executable, "-m", "bench.postprocess", "--_memory-child", f"{task}:{path}:{outputs_file}",
        "--size", f"{size[1]}x{size[0]}",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"memory subprocess failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --- one (task, outputs) measurement ------------------------------------------------------------

def run_task(task: str, outputs: str, size: tuple[int, int], rounds: int, tiny_dir: Path, workdir: Path) -> dict:
    import torch

    from workers.testing.equivalence import compare

    cls, masks = make_outputs(task, outputs, size, tiny_dir)
    outputs_file = workdir / f"{task}-{outputs}.pt"
    torch.save((cls, masks), outputs_file)
    s = setup(task, size, cls, masks)
    fast_path(s)
    baseline_path(s)
    times = {"fast": [], "baseline": []}
    for _ in range(rounds):
        for name in ("fast", "baseline"):
            t = time.perf_counter()
            _, res = PATHS[name](s)
            times[name].append(time.perf_counter() - t)
            if name == "fast":
                fast_res = res
            else:
                base_res = res
    if task == "semantic":
        c = compare(task, s.cls, s.masks, size, base_res, fast_res)
        n_segments = None
        same_segments = True
    else:
        c = compare(
            task, s.cls, s.masks, size, base_res["segmentation"], fast_res["segmentation"],
            label_ids_to_fuse=s.stuff, reference_segments=base_res["segments_info"],
            candidate_segments=fast_res["segments_info"],
        )
        n_segments = len(base_res["segments_info"])
        key = lambda segs: [(x["id"], x["label_id"], x["was_fused"], x["score"]) for x in segs]  # noqa: E731
        same_segments = key(base_res["segments_info"]) == key(fast_res["segments_info"])
    mem_fast = measure_memory(task, "fast", size, str(outputs_file))
    mem_base = measure_memory(task, "baseline", size, str(outputs_file))
    ms_fast = statistics.median(times["fast"]) * 1000
    ms_base = statistics.median(times["baseline"]) * 1000
    speed = ms_base / ms_fast
    mem_ratio = mem_fast["peak_growth_mb"] / max(mem_base["peak_growth_mb"], 1e-9)
    return {
        "task": task,
        "outputs": outputs,
        "queries": int(s.cls.shape[-2]),
        "mask_grid": f"{s.masks.shape[-2]}x{s.masks.shape[-1]}",
        "size": f"{size[1]}x{size[0]}",
        "rounds": rounds,
        "torch_threads": torch.get_num_threads(),
        "segments": n_segments,
        "segments_info_identical": same_segments,
        "fast_ms": round(ms_fast, 1),
        "baseline_ms": round(ms_base, 1),
        "fast_ms_all": [round(t * 1000, 1) for t in times["fast"]],
        "baseline_ms_all": [round(t * 1000, 1) for t in times["baseline"]],
        "speedup": round(speed, 2),
        "fast_peak_mb": round(mem_fast["peak_growth_mb"], 1),
        "baseline_peak_mb": round(mem_base["peak_growth_mb"], 1),
        "memory_ratio": round(mem_ratio, 4),
        "pixels": c.total_pixels,
        "differing_pixels": c.differing,
        "near_tie_pixels": c.near_ties,
        "segment_tie_pixels": c.segment_ties,
        "unexplained_pixels": c.other,
        "targets": {
            "speed_10x": speed >= SPEED_TARGET,
            "memory_tenth": mem_ratio <= MEMORY_TARGET,
            "only_near_ties": c.other == 0 and same_segments,
        },
    }


def _print_table(task: str, rows: list[dict]) -> None:
    yes = lambda b: "met" if b else "NOT met"  # noqa: E731
    print(f"\n{task}")
    print(f"  {'outputs':12s} {'Q':>3s} {'masks':>7s} {'segq ms':>9s} {'baseline ms':>12s} {'speed-up':>9s} "
          f"{'segq MB':>8s} {'base MB':>8s} {'mem ratio':>9s} {'differing':>9s} {'near-ties':>9s} {'unexpl.':>7s} {'segments':>9s}")
    for r in rows:
        seg = "-" if r["segments"] is None else f"{r['segments']}{'' if r['segments_info_identical'] else ' DIFF'}"
        print(
            f"  {r['outputs']:12s} {r['queries']:3d} {r['mask_grid']:>7s} {r['fast_ms']:9.1f} {r['baseline_ms']:12.1f} "
            f"{r['speedup']:8.2f}x {r['fast_peak_mb']:8.1f} {r['baseline_peak_mb']:8.1f} {r['memory_ratio']:9.4f} "
            f"{r['differing_pixels']:9d} {r['near_tie_pixels'] + r['segment_tie_pixels']:9d} {r['unexplained_pixels']:7d} {seg:>9s}"
        )
    for r in rows:
        t = r["targets"]
        print(
            f"  {r['outputs']:12s} targets: 10x {yes(t['speed_10x'])}, memory <= 0.1 {yes(t['memory_tenth'])}, "
            f"only near-ties {yes(t['only_near_ties'])};  rounds ms: segq {r['fast_ms_all']}  baseline {r['baseline_ms_all']}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.postprocess", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1920x1080", help="WIDTHxHEIGHT of the frame")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per task (medians reported)")
    ap.add_argument("--tasks", default="semantic,instance,panoptic")
    ap.add_argument("--outputs", default=",".join(OUTPUTS), help=f"comma-separated, of: {', '.join(OUTPUTS)}")
    ap.add_argument("--tiny-dir", type=Path, default=DEFAULT_TINY_DIR, help="where the tiny checkpoints are written (once)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE ('-' for stdout)")
    ap.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    size = (h, w)
    if args.memory_child:
        task, path, outputs_file = args.memory_child.split(":", 2)
        measure_memory_child(task, path, size, outputs_file)
        return
    import torch

    torch.set_num_threads(1)
    modes = [m.strip() for m in args.outputs.split(",") if m.strip()]
    for m in modes:
        if m not in OUTPUTS:
            ap.error(f"unknown --outputs {m!r}: one of {', '.join(OUTPUTS)}")
    results = []
    print(f"post-processing + overlay of one {w}x{h} frame, 1 CPU thread, {args.rounds} alternating rounds (medians);"
          f" outputs: {', '.join(modes)}")
    print("memory: peak RSS growth of one call in a fresh subprocess, after a warm-up call (VmHWM reset via /proc/self/clear_refs;")
    print("        glibc mmap threshold fixed at 128 KiB so freed buffers leave the RSS)")
    print("near-ties: differing pixels at a near-tie of the reference's own decision (or of a segment's keep/drop decision)")
    with tempfile.TemporaryDirectory(prefix="segq-bench-") as tmp:
        for task in args.tasks.split(","):
            rows = [run_task(task, m, size, args.rounds, args.tiny_dir, Path(tmp)) for m in modes]
            results.extend(rows)
            _print_table(task, rows)
    if args.json:
        doc = json.dumps({"results": results}, indent=1)
        if args.json == "-":
            print(doc)
        else:
            with open(args.json, "w") as f:
                f.write(doc + "\n")


if __name__ == "__main__":
    main()
