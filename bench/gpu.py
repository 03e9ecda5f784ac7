"""GPU benchmark: the article's single-process loop against segq's worker path, in one process.

    python -m bench.gpu [--size 1920x1080] [--frames 64] [--batch-size 8] [--precision auto]
                        [--device auto|cuda|cpu] [--tiny] [--warmup 2] [--time-limit 120]
                        [--check-frames 4] [--postprocess default|fast|reference]
                        [--compile off|default|reduce-overhead|max-autotune] [--compare-compile]
                        [--json PATH]

On a bare CUDA host (torch, transformers, OpenCV, numpy, Pillow, no network, no PyAV) run
``scripts/gpu_bench.sh`` here first (it downloads the missing wheels into ``.whl/``), then on the
host ``scripts/gpu_bench.sh --run [options]``: it installs them into a private folder and runs
this module (with ``$OUT`` set, the log and the JSON land there). No Redis, S3 or Celery is used.

Both paths run on the same synthetic clip (moving shapes drawn with numpy, H.264 through segq's
``PartEncoder``) and the same random-weight model: the full-size architecture of
``facebook/mask2former-swin-large-ade-semantic`` (Swin-L, 200 queries; ``--tiny``: segq's tiny
test checkpoint), saved with ``save_pretrained`` to a temporary folder with an image processor
configured as the hub's ADE checkpoints are (every frame resized to 384x384). Random weights
give meaningless labels but the same compute as the trained model.

(a) the article (Mask2Former with Hugging Face on a video, OpenCV): per frame ``cap.read()``,
    ``Image.fromarray(frame).convert('RGB')`` (the BGR frame as it is, as the article does),
    ``processor(image, return_tensors='pt').to(device)``, the model in fp32 under
    ``torch.no_grad()``, ``post_process_semantic_segmentation`` at the frame's size, ``.cpu()``,
    its ``draw_segmentation_map`` (one pass per palette class) and ``image_overlay``
    (``cv2.addWeighted(image, 0.2, seg, 1.0, 0)``), the FPS text, ``cv2.VideoWriter`` (mp4v).
    Processor and model come from ``AutoImageProcessor`` / ``Mask2FormerForUniversalSegmentation``
    ``.from_pretrained`` as in the article (fp32 spelled out, as transformers 4 loaded it; the backend is
    then transformers' default: torchvision where it is installed; ``--article-processor`` pins one).
    TF32 stays at PyTorch's defaults (off for matmul), as in the article's script.
(b) segq's worker path, the very classes a chunk task runs (``workers.tasks.chunk.ChunkPipeline``):
    PyAV decode ahead on a thread (``workers.media.video.decode_range``), batches of ``--batch-size``
    frames through a ``workers.model.segmenter.Segmenter`` on a real ``workers.model.stage.ModelStage``
    thread (device and precision from ``workers.model.device.select``: auto = fp16 on CUDA; the
    overlay blended where the worker blends it, see ``Segmenter``), overlays annotated and encoded
    behind on another thread (``workers.media.video.PartEncoder``, H.264). Stage times are the
    worker's own counters (``Segmenter``'s ``Times``), not a patched function.
    Not included: the chunk's label archive (npz) and the S3 transfers.

Each path is warmed up (``--warmup`` frames for (a), batches for (b)) and then timed over the whole
clip, or until ``--time-limit`` seconds have passed (it then says how many frames it did). Stage
times are wall-clock, with ``torch.cuda.synchronize()`` at stage borders on CUDA. Printed: FPS
of each path (frames / wall time of the timed loop, decode to encoder close), milliseconds per
frame of each stage, peak GPU memory of each path (reset between paths, model weights included),
the speed ratio segq / article (the project's target on a GPU: >= 8x at 1080p with Swin-L), the
article's own "Average FPS" figure (it times only model, post-processing and drawing), and the
label agreement of segq's label maps with an fp32 reference (TF32 off) on the first
``--check-frames`` frames: the fraction of pixels equal to ``post_process_semantic_segmentation``
of the fp32 logits (same processor, same decoded frames).

torch.compile (``SEGQ_COMPILE``, off by default and not yet measured on a GPU): ``--compile MODE``
compiles segq's model (``workers.model.models.compile_model``: static shapes; ``reduce-overhead`` and
``max-autotune`` replay CUDA graphs on CUDA). ``--compare-compile`` runs segq's path eager, then
compiled, then eager again, on the same model in the same process (on a CPU the first path after
the article's runs slower, so eager runs on both sides), and prints every FPS, the compiled FPS
over the faster eager run, and the label agreement of the compiled path with the eager one (and
with the fp32 reference). Compilation is counted apart: before the compiled path, every batch
shape it will run (the batch size, and the last, shorter batch when ``--frames`` is not a multiple
of it) runs twice on plain images of the clip's size (``Segmenter.warm_up``: the first pass
compiles, the second records the CUDA graphs), timed as "compile s"; the report counts the graphs
torch compiled during the path itself (0: none in the timed loop). A GPU run decides whether the
worker should compile: ``scripts/gpu_bench.sh --run --device cuda --compile reduce-overhead
--compare-compile`` (one mode per run keeps it within minutes; ``max-autotune`` compiles longest).
On CUDA, Triton needs a C compiler on the host.

CPU smoke test (no GPU): ``python -m bench.gpu --device cpu --tiny --size 320x240 --frames 8
--batch-size 4``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch
from PIL import Image

from bench.article import draw_segmentation_map, image_overlay
from segq.settings import COMPILE_MODES

TARGET_RATIO = 8.0
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
STAGES = ("decode", "preprocess+forward", "post-process", "render", "encode")
ADE_PROCESSOR = {  # preprocessor_config.json of facebook/mask2former-swin-*-ade-* on the hub
    "size": {"height": 384, "width": 384},
    "size_divisor": 32,
    "do_reduce_labels": False,
    "ignore_index": 255,
}


def _import_workers():
    """segq's worker modules. Imported late so that a missing package gets a clear message."""
    try:
        from workers.model import checkpoints
        from workers.tasks import chunk
        from workers.model import device
        from workers.model import models
        from workers.model import stage
        from workers.media import render
        from workers.model import segmenter
        from workers.media import video
    except ModuleNotFoundError as exc:
        hint = {
            "av": "PyAV is needed by workers.media.video",
            "redis": "workers.media.video imports segq.media, which imports segq.jobs, which imports redis",
            "scipy": "transformers' Mask2Former needs scipy",
        }.get(exc.name, "")
        raise SystemExit(f"bench.gpu: cannot import {exc.name!r}{': ' + hint if hint else ''}. "
                         f"On a bare host use scripts/gpu_bench.sh (it carries the wheels).") from exc
    return SimpleNamespace(checkpoints=checkpoints, chunk=chunk, device=device, models=models,
                           stage=stage, render=render, segmenter=segmenter, video=video)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# timing helpers


class Clock:
    """Stage times of one path; ``mark(stage)`` charges the time since the last mark to ``stage``."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.totals = dict.fromkeys(STAGES, 0.0)
        self.last = 0.0
        self.forward_calls = 0

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def start(self) -> None:
        self.sync()
        self.last = time.perf_counter()

    def mark(self, stage: str, sync: bool = True) -> float:
        if sync:
            self.sync()
        now = time.perf_counter()
        spent = now - self.last
        self.totals[stage] += spent
        self.last = now
        return spent


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def _allocated_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated() / 2**20


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def _tf32(matmul: bool, cudnn: bool, benchmark: bool):
    """Set PyTorch's TF32 and cuDNN benchmark flags for a block, then restore them."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn
    torch.backends.cudnn.benchmark = benchmark
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


# ---------------------------------------------------------------------------------------------
# inputs: clip and model


def make_clip(video, path: Path, frames: int, width: int, height: int, fps: int = 30) -> Path:
    """Moving shapes over a textured gradient, H.264 through segq's PartEncoder."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([
        255 * xx / max(width - 1, 1),
        255 * yy / max(height - 1, 1),
        96 + 40 * np.sin(xx / 23.0) * np.cos(yy / 17.0),
    ], axis=-1).clip(0, 255).astype(np.uint8)
    rng = np.random.default_rng(7)
    shapes = [
        dict(
            circle=bool(i % 2),
            color=tuple(int(c) for c in rng.integers(0, 256, 3)),
            pos=rng.uniform(0, 1, 2) * (width, height),
            vel=rng.uniform(-0.02, 0.02, 2) * (width, height),
            r=float(rng.uniform(0.05, 0.15) * min(width, height)),
        )
        for i in range(6)
    ]
    enc = video.PartEncoder(path, Fraction(fps), crf=18, gop=fps)
    for t in range(frames):
        img = base.copy()
        for s in shapes:
            x, y = (s["pos"] + t * s["vel"]) % (width, height)
            x, y, r = int(x), int(y), max(int(s["r"]), 2)
            if s["circle"]:
                cv2.circle(img, (x, y), r, s["color"], -1)
            else:
                img[max(0, y - r):y + r, max(0, x - 2 * r):x + 2 * r] = s["color"]
        enc.write(img)
    enc.close()
    return path


def save_checkpoint(checkpoints, folder: Path, tiny: bool) -> float:
    """Random-weight model + image processor in ``from_pretrained`` format. Returns seconds."""
    started = time.perf_counter()
    if tiny:
        checkpoints.make_tiny("ade20k", folder)  # segq's offline test checkpoint (sharpened)
        return time.perf_counter() - started
    from transformers import Mask2FormerForUniversalSegmentation

    try:
        from transformers import Mask2FormerImageProcessorPil as Processor
    except ImportError:
        from transformers import Mask2FormerImageProcessor as Processor

    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(checkpoints.full_size_config("ade20k")).eval()
    # Confident, spatially varied classes instead of one flat class, so that the label agreement
    # below compares real segmentations (still random weights).
    checkpoints._sharpen(model)
    model.save_pretrained(folder)
    Processor(**ADE_PROCESSOR).save_pretrained(folder)
    del model
    gc.collect()
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# (a) the article's loop


def load_article(folder: Path, device: torch.device, backend: str):
    """The article's model.py, from the local folder instead of the hub id, fp32 as it loads."""
    from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

    started = time.perf_counter()
    kwargs = {} if backend == "auto" else {"backend": backend}
    processor = AutoImageProcessor.from_pretrained(str(folder), **kwargs)
    # transformers 4.x (the article's) loaded fp32; 5.x loads the saved dtype, fp32 here too.
    model = Mask2FormerForUniversalSegmentation.from_pretrained(str(folder), dtype=torch.float32)
    model = model.to(device).eval()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return model, processor, time.perf_counter() - started


def article_path(clip: Path, out: Path, model, processor, device: torch.device, palette, *, warmup: int,
                 time_limit: float, max_frames: int) -> dict:
    clock = Clock(device)

    def one_frame(frame, clock):
        image = Image.fromarray(frame).convert('RGB')
        clock.mark("decode", sync=False)
        inputs = processor(image, return_tensors='pt').to(device)
        start_time = time.time()  # the article's own timer: model, post-processing and drawing
        with torch.no_grad():
            outputs = model(**inputs)
        clock.mark("preprocess+forward")
        pred_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
        mask = pred_map
        mask = mask.cpu()
        clock.mark("post-process")
        seg_map = draw_segmentation_map(mask, palette)
        result = image_overlay(image, seg_map)
        end_time = time.time()
        fps = 1 / (end_time - start_time)
        cv2.putText(result, f"FPS: {fps:.1f}", (15, 25), cv2.FONT_HERSHEY_SIMPLEX, fontScale=1,
                    color=(0, 0, 255), thickness=2, lineType=cv2.LINE_AA)
        clock.mark("render", sync=False)
        return result, fps

    # Warm-up: the first frames through the whole loop body, output discarded.
    cap = cv2.VideoCapture(str(clip))
    warm = Clock(device)
    warm.start()
    for _ in range(warmup):
        ret, frame = cap.read()
        if not ret:
            break
        one_frame(frame, warm)
    cap.release()

    cap = cv2.VideoCapture(str(clip))
    frame_width, frame_height, vid_fps = int(cap.get(3)), int(cap.get(4)), int(cap.get(5))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*'mp4v'), vid_fps, (frame_width, frame_height))
    frame_count, total_fps, stopped = 0, 0.0, False
    clock.start()
    began = clock.last
    while cap.isOpened() and frame_count < max_frames:
        ret, frame = cap.read()
        if not ret:
            break
        frame_count += 1
        result, fps = one_frame(frame, clock)
        total_fps += fps
        writer.write(result)
        clock.mark("encode", sync=False)
        if time.perf_counter() - began > time_limit and frame_count < max_frames:
            stopped = True
            break
    cap.release()
    writer.release()
    clock.mark("encode", sync=False)
    wall = clock.last - began
    return {
        "frames": frame_count,
        "stopped_by_time_limit": stopped,
        "wall_s": wall,
        "fps": frame_count / wall if wall > 0 else None,
        "article_average_fps": total_fps / frame_count if frame_count else None,
        "stage_ms_per_frame": {k: 1000 * v / max(frame_count, 1) for k, v in clock.totals.items()},
    }


def fp32_reference(model, processor, frames: list[np.ndarray], device: torch.device) -> list[np.ndarray]:
    """transformers' semantic post-processing of fp32 logits (TF32 off), one frame at a time."""
    maps = []
    with _tf32(False, False, False), torch.inference_mode():
        for rgb in frames:
            inputs = processor(images=[Image.fromarray(rgb)], return_tensors="pt")
            kwargs = {"pixel_values": inputs["pixel_values"].to(device, dtype=torch.float32)}
            if inputs.get("pixel_mask") is not None:
                kwargs["pixel_mask"] = inputs["pixel_mask"].to(device)
            out = model(**kwargs)
            seg = processor.post_process_semantic_segmentation(out, target_sizes=[rgb.shape[:2]])[0]
            maps.append(seg.to(torch.int32).cpu().numpy())
    return maps


# ---------------------------------------------------------------------------------------------
# (b) segq's worker path


def _stopping(frames, began: float, time_limit: float, n: int, state: dict):
    """``frames`` until ``time_limit`` seconds after ``began`` (then it says it stopped)."""
    for i, rgb in enumerate(frames):
        if i and time.perf_counter() - began > time_limit and i < n:
            state["stopped"] = True
            return
        state["frames"] = i + 1
        yield rgb


def segq_path(mods, clip: Path, out: Path, m, *, batch_size: int, warmup: int, time_limit: float,
              max_frames: int, keep: int, max_batch: int = 1) -> tuple[dict, list[np.ndarray]]:
    """segq's chunk path as a worker runs it: the very classes of a chunk task (``ChunkPipeline``:
    frames decoded ahead on a thread, batches through a ``Segmenter`` on a real ``ModelStage``
    thread, overlays rendered and encoded behind on another), with the stage times the worker
    itself counts. Returns the figures and the label maps of the first ``keep`` frames."""
    video, chunk_mod, stage_mod, segmenter_mod = mods.video, mods.chunk, mods.stage, mods.segmenter
    info = video.probe(clip, max_frames=10**7, max_pixels=10**9)
    n = min(info.frames, max_frames)
    stage = stage_mod.ModelStage(max_batch=max_batch, maxsize=max(4, 2 * max_batch))
    try:
        segmenter = segmenter_mod.Segmenter(m, stage)
        first = list(video.decode_range(clip, info, 0, min(batch_size, n)))
        for _ in range(warmup):  # the first batch through the whole path, ``warmup`` times
            with chunk_mod.ChunkPipeline(segmenter, "semantic", batch_size, lambda f: None,
                                            annotate_fps=True) as warm:
                warm.add_all(iter(first))
                warm.archive(0, len(first))
        encoder = video.PartEncoder(out, info.fps)
        state = {"frames": 0, "stopped": False}
        _sync(m.spec.device)
        began, cpu0 = time.perf_counter(), time.process_time()
        with chunk_mod.ChunkPipeline(segmenter, "semantic", batch_size, encoder.write,
                                        annotate_fps=True) as renderer:
            renderer.add_all(_stopping(video.decode_range(clip, info, 0, n), began, time_limit, n, state))
            archive = renderer.archive(0, state["frames"])
        encoder.close()
        _sync(m.spec.device)
        wall, process_cpu = time.perf_counter() - began, time.process_time() - cpu0
    finally:
        stage.close()
    done = state["frames"]
    labels = np.load(__import__("io").BytesIO(archive))["labels"]
    t = renderer.times
    per_frame = {  # the worker's own counters; the threads overlap, so these sum to more than the wall time
        "decode": renderer.decode_s, "preprocess+forward": t.preprocess_s + t.forward_s,
        "post-process": t.postprocess_s, "render": t.blend_s + renderer.render_s, "encode": 0.0,
    }
    return {
        "frames": done,
        "stopped_by_time_limit": state["stopped"],
        "wall_s": wall,
        "fps": done / wall if wall > 0 else None,
        "stage_ms_per_frame": {k: 1000 * v / max(done, 1) for k, v in per_frame.items()},
        "stage_detail_ms_per_frame": {"preprocess": 1000 * t.preprocess_s / max(done, 1),
                                      "wait for the stage": 1000 * t.wait_s / max(done, 1),
                                      "forward": 1000 * t.forward_s / max(done, 1)},
        "items_per_pass": t.items_per_pass,
        "blend": "device" if renderer.device_blend else "CPU (OpenCV)",
        # the CPU side: core-ms per frame of the worker's threads by stage (time.thread_time, the
        # worker's own counters), and the whole process's (every thread: the codecs', the model
        # stage's kernel launches; on a CPU device the model's arithmetic too)
        "cpu_ms_per_frame": {"decode": 1000 * renderer.decode_cpu_s / max(done, 1),
                             "preprocess": 1000 * t.preprocess_cpu_s / max(done, 1),
                             "post-process": 1000 * t.postprocess_cpu_s / max(done, 1),
                             "render+encode": 1000 * (t.blend_cpu_s + renderer.render_cpu_s) / max(done, 1),
                             "process, all threads": 1000 * process_cpu / max(done, 1)},
    }, [labels[i] for i in range(min(keep, len(labels)))]


def image_jobs(mods, m, *, images: int, size: tuple[int, int], max_batch: int, concurrency: int) -> dict:
    """Image jobs as a worker runs them: ``concurrency`` task threads, each predicting one image at a
    time through the model's ``Segmenter`` on one ``ModelStage`` (``max_batch``: passes of one
    shape taken together, ``SEGQ_MAX_BATCH``), rendering and encoding its outputs
    (``workers.media.render.image_outputs``). No S3 or Redis. Images per second and passes."""
    import threading

    stage_mod, segmenter_mod, render = mods.stage, mods.segmenter, mods.render
    rng = np.random.default_rng(0)
    w, h = size
    frames = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(min(images, 8))]
    stage = stage_mod.ModelStage(max_batch=max_batch, maxsize=max(4, 2 * max_batch))
    segmenter = segmenter_mod.Segmenter(m, stage)
    counter = iter(range(images))
    lock = threading.Lock()

    def task() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            rgb = frames[i % len(frames)]
            pred = segmenter.predict([Image.fromarray(rgb)], "semantic").predictions[0]
            render.image_outputs(rgb, pred, m.labels, job_id="bench", model="m", checkpoint="c",
                                 max_value=m.max_label_value)

    try:
        segmenter.predict([Image.fromarray(frames[0])], "semantic")  # warm-up
        passes0 = stage.stats().passes
        began, cpu0 = time.perf_counter(), time.process_time()
        threads = [threading.Thread(target=task) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall, process_cpu = time.perf_counter() - began, time.process_time() - cpu0
        passes = stage.stats().passes - passes0
    finally:
        stage.close()
    return {"images": images, "wall_s": wall, "images_per_s": images / wall, "passes": passes,
            "items_per_pass": images / passes if passes else None,
            "process_cpu_ms_per_image": 1000 * process_cpu / images}


# ---------------------------------------------------------------------------------------------
# report


def _fmt(v, spec: str = ".1f") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def table(rows: list[tuple], headers: tuple) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(headers), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])


def report(res: dict) -> str:
    a = res["article"]
    paths = [("article", a)] + segq_columns(res)  # (column title, figures)
    segqs = paths[1:]
    s = res["segq"]

    def row(label: str, article, each) -> tuple:
        return (label, article, *(each(p) for _, p in segqs))

    rows = [
        ("frames timed", *(p["frames"] for _, p in paths)),
        ("stopped by --time-limit", *(_fmt(p["stopped_by_time_limit"]) for _, p in paths)),
        ("FPS (decode to encode)", *(_fmt(p["fps"], ".2f") for _, p in paths)),
    ]
    for stage in STAGES:
        rows.append((f"{stage} ms/frame", *(_fmt(p["stage_ms_per_frame"][stage]) for _, p in paths)))
    rows += [
        ("peak GPU memory MiB", *(_fmt(p.get("peak_gpu_mib"), ".0f") for _, p in paths)),
        ("model weights MiB", *(_fmt(p.get("weights_gpu_mib"), ".0f") for _, p in paths)),
        ("model load s", *(_fmt(p["load_s"], ".2f") for _, p in paths)),
        row("torch.compile", "off", lambda p: p.get("compile", "off")),
        row("compile s (warm-up shapes)", "-", lambda p: _fmt(p.get("compile_s"), ".1f")),
        row("compiles in the path (0: none timed)", "-", lambda p: _fmt(p.get("compiles_in_path"))),
        ("precision", *(p["precision"] for _, p in paths)),
        ("image processor", *(p["processor"] for _, p in paths)),
        row("post-processing", "transformers",
            lambda p: "transformers" if p["postprocess"] == "reference" else p["postprocess"]),
        row("batch size", 1, lambda p: p["batch_size"]),
        row("overlay blend", "CPU (OpenCV)", lambda p: p.get("blend", "CPU (OpenCV)")),
    ]
    e = res["env"]
    head = (f"\nbench.gpu: {res['model']}, {res['frames']} frames of {res['size']}, device {e['device']} "
            f"(torch {e['torch']}, transformers {e['transformers']}, PyAV {e['av']}, OpenCV {e['cv2']}, "
            f"Python {e['python']})\n"
            f"clip made in {res['clip_s']:.1f}s; checkpoint built and saved in {res['build_s']:.1f}s\n")
    ratio = res["ratio_segq_over_article"]
    agree = res["agreement"]
    tail = [
        "",
        f"speed ratio segq/article: {_fmt(ratio, '.2f')}x (project target on a GPU: >= {TARGET_RATIO:g}x at "
        f"1080p with Swin-L{'' if res['target_applies'] else '; not applicable to this run'})",
        f"article's own 'Average FPS' figure (model + post-processing + drawing only): "
        f"{_fmt(a['article_average_fps'], '.2f')}",
    ]
    if agree["frames"]:
        tail.append(
            f"label agreement of segq ({s['precision']}) with the fp32 reference: {100 * agree['fraction']:.3f}% of "
            f"pixels over {agree['frames']} frames (per frame min {100 * agree['min_frame']:.3f}%; "
            f"{agree['reference_classes']} classes in the reference maps; reference took {agree['seconds']:.1f}s)")
    else:
        tail.append("label agreement: no frames checked")
    c = res.get("compiled")
    if c:
        mode = c["compile"]
        tail.append(
            f"torch.compile {mode} against eager (same process, same model; eager ran before and after it): "
            f"FPS ratio {_fmt(res['ratio_compiled_over_eager'], '.3f')}x over the faster eager run; compiling "
            f"the {len(c['compile_shapes'])} warm-up shape(s) took {_fmt(c['compile_s'], '.1f')}s, outside the "
            f"timed loop")
        ca = res["compiled_agreement"]
        if ca["frames"]:
            tail.append(
                f"label agreement of compiled with eager segq: {100 * ca['fraction']:.3f}% of pixels over "
                f"{ca['frames']} frames (per frame min {100 * ca['min_frame']:.3f}%); of compiled with the fp32 "
                f"reference: {100 * ca['fraction_vs_reference']:.3f}%")
    for title, p in segqs:
        d = p.get("stage_detail_ms_per_frame")
        if d:
            tail.append(f"{title}: " + ", ".join(f"{k} {v:.1f} ms/frame" for k, v in d.items())
                        + f"; {p.get('items_per_pass') or '-'} frames per forward pass (worker's own counters; "
                          "its threads overlap, so stage times add up to more than the wall time)")
        c = p.get("cpu_ms_per_frame")
        if c:
            tail.append(f"{title}, the CPU side in core-ms per frame: " + ", ".join(f"{k} {v:.1f}" for k, v in c.items())
                        + " (the stages: the worker's threads' own time; the process: every thread, the codecs' "
                          "and the model stage's included)")
    im = res.get("images")
    if im:
        rows_i = [(f"max batch {r['max_batch']}", r["concurrency"], f"{r['images_per_s']:.2f}",
                   f"{r['items_per_pass'] or 0:.2f}", f"{r['images_per_s'] / im[0]['images_per_s']:.2f}",
                   f"{r.get('process_cpu_ms_per_image', 0):.1f}") for r in im]
        tail += ["", f"image jobs, {im[0]['images']} of {res['image_size']} (the worker's image path without S3):",
                 table(rows_i, ("", "task threads", "images/s", "images per pass", "ratio to unbatched",
                                "process core-ms per image"))]
    tail.append(f"total run time {res['total_s']:.1f}s")
    return head + "\n" + table(rows, ("", *(title for title, _ in paths))) + "\n" + "\n".join(tail)


def segq_columns(res: dict) -> list[tuple[str, dict]]:
    """segq's paths in the report: the one run, or eager, compiled and eager again (``--compare-compile``)."""
    s = res["segq"]
    if res.get("compiled"):
        return [("segq eager", s), (f"segq {res['compiled']['compile']}", res["compiled"]),
                ("segq eager again", res["segq_eager_again"])]
    return [("segq" if s.get("compile", "off") == "off" else f"segq {s['compile']}", s)]

# ---------------------------------------------------------------------------------------------


def _agreement(reference: list[np.ndarray], maps: list[np.ndarray]) -> dict:
    """The fraction of pixels of ``maps`` equal to ``reference``, over the frames both have."""
    pairs = list(zip(reference, maps))
    equal = [float((r == q).mean()) for r, q in pairs]
    pixels = [r.size for r, _ in pairs]
    return {
        "frames": len(pairs),
        "fraction": sum(e * p for e, p in zip(equal, pixels)) / sum(pixels) if pairs else None,
        "min_frame": min(equal) if equal else None,
        "per_frame": equal,
        "reference_classes": len(np.unique(np.concatenate([r.ravel() for r, _ in pairs]))) if pairs else 0,
    }


def compile_shapes(mods, m, batch_size: int, frames: int, size: tuple[int, int]) -> dict:
    """Compile ``m`` (already ``compile_model``-ed) for every batch shape ``segq_path`` will run: the
    first batch and a last, shorter one, on plain images of the clip's ``size`` (so the processor gives
    the frames' input shape), twice: the first pass compiles, the second records the CUDA graphs of
    the CUDA-graph modes (torch records them on a shape's second pass). Timed apart, so that neither
    happens in the timed loop."""
    shapes = sorted({min(batch_size, frames)} | ({frames % batch_size} - {0}))
    seconds = {}
    for batch in shapes:
        print(f"segq: compiling for a batch of {batch} ...", flush=True)
        seconds[batch] = sum(mods.segmenter.Segmenter(m).warm_up(batch=batch, size=size) for _ in range(2))
        print(f"segq: batch of {batch} compiled and ran twice in {seconds[batch]:.1f}s", flush=True)
    return {"compile_shapes": shapes, "compile_s": sum(seconds.values()),
            "compile_s_per_batch_size": {str(b): v for b, v in seconds.items()}}


def _compiled_graphs() -> int | None:
    """Graphs torch._dynamo compiled so far in this process (None where torch does not count them)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 - a private counter: only a figure of the report
        return None


def _spec(device_mod, device: str, precision: str):
    """DeviceSpec as a worker gets it from ``workers.model.device.select`` (or its CPU branch when a CPU run
    is asked for on a CUDA host), and the TF32 / cuDNN flags ``select`` sets for the worker."""
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench.gpu: --device cuda, but torch sees no CUDA device")
    if device == "cpu" and torch.cuda.is_available():
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        return device_mod.DeviceSpec(torch.device("cpu"), dtype, f"cpu ({torch.get_num_threads()} threads)"), _flags()
    with _tf32(*_flags()):  # select() sets the flags for the worker's process: keep them for (b) only
        spec = device_mod.select(precision)
        flags = _flags()
    return spec, flags


def _flags():
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1920x1080", help="frame size WIDTHxHEIGHT (default 1920x1080)")
    ap.add_argument("--frames", type=int, default=64, help="frames in the clip (default 64)")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--tiny", action="store_true", help="segq's tiny test checkpoint instead of Swin-L")
    ap.add_argument("--batch-size", type=int, default=8, help="segq's frames per forward pass (default 8)")
    ap.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                    help="segq's precision (auto = fp16 on CUDA, fp32 on CPU)")
    ap.add_argument("--processor", choices=("pil", "torchvision"), default="pil",
                    help="segq's image-processor backend (SEGQ_IMAGE_PROCESSOR, default pil)")
    ap.add_argument("--postprocess", choices=("default", "fast", "reference"), default="default",
                    help="segq's post-processing (SEGQ_POSTPROCESS): default = LoadedModel's default")
    ap.add_argument("--compile", choices=COMPILE_MODES, default="off",
                    help="torch.compile mode of segq's model (SEGQ_COMPILE; default off); compiled outside the "
                         "timed loop, timed apart")
    ap.add_argument("--compare-compile", action="store_true",
                    help="run segq's path eager, compiled with --compile, and eager again, same process and "
                         "model: every FPS, compiled over the faster eager run, the label agreement of compiled "
                         "with eager")
    ap.add_argument("--article-processor", choices=("auto", "pil", "torchvision"), default="auto",
                    help="the article's processor backend (auto: AutoImageProcessor's default, as the article)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up frames (article) / batches (segq) (default 2)")
    ap.add_argument("--time-limit", type=float, default=120.0,
                    help="seconds after which each timed path stops early (default 120)")
    ap.add_argument("--check-frames", type=int, default=4, help="frames checked against fp32 (default 4)")
    ap.add_argument("--image-jobs", type=int, default=0,
                    help="also run this many image jobs through the worker's image path, unbatched and with "
                         "--max-batch (batching across jobs, SEGQ_MAX_BATCH); 0: skip")
    ap.add_argument("--image-size", default="1280x720", type=lambda v: tuple(int(x) for x in v.split("x")),
                    help="size of those images WIDTHxHEIGHT (default 1280x720)")
    ap.add_argument("--max-batch", type=int, default=8, help="SEGQ_MAX_BATCH of the batched image run (default 8)")
    ap.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = ap.parse_args(argv)
    try:
        width, height = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        ap.error(f"--size must be WIDTHxHEIGHT, got {args.size!r}")
    if args.frames < 1 or args.batch_size < 1 or args.check_frames < 0 or args.warmup < 0:
        ap.error("--frames and --batch-size must be >= 1, --check-frames and --warmup >= 0")
    if args.compare_compile and args.compile == "off":
        ap.error("--compare-compile needs a mode to compare: --compile " + "|".join(COMPILE_MODES[1:]))

    t_all = time.perf_counter()
    mods = _import_workers()
    checkpoints, device_mod, models, video = mods.checkpoints, mods.device, mods.models, mods.video
    import transformers

    transformers.utils.logging.disable_progress_bar()
    spec, segq_flags = _spec(device_mod, args.device, args.precision)
    device = spec.device
    from workers.media import labels

    palette = labels.load("ade20k").colors.tolist()  # the article's ADE_CATEGORIES
    res: dict = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": "tiny checkpoint (random)" if args.tiny else "Swin-L Mask2Former, 200 queries (random weights)",
        "size": f"{width}x{height}",
        "frames": args.frames,
        "env": {
            "device": spec.label,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "av": __import__("av").__version__,
            "cv2": cv2.__version__,
            "numpy": np.__version__,
            "cuda": torch.version.cuda,
        },
    }
    print(f"bench.gpu: device {spec.label}; segq precision {DTYPE_NAMES.get(spec.dtype, spec.dtype)}", flush=True)

    with tempfile.TemporaryDirectory(prefix="segq-gpu-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        clip = make_clip(video, root / "clip.mp4", args.frames, width, height)
        res["clip_s"] = time.perf_counter() - t0
        print(f"clip: {args.frames} frames of {width}x{height} in {res['clip_s']:.1f}s", flush=True)

        folder = root / "checkpoint"
        res["build_s"] = save_checkpoint(checkpoints, folder, args.tiny)
        print(f"checkpoint ({res['model']}): built and saved in {res['build_s']:.1f}s", flush=True)

        # (a) the article, fp32, PyTorch's default flags (TF32 off for matmul, no cuDNN benchmark).
        with _tf32(False, True, False):
            model, processor, load_s = load_article(folder, device, args.article_processor)
            weights = _allocated_mib(device)
            _reset_peak(device)
            print(f"article: model loaded in {load_s:.1f}s; running ...", flush=True)
            a = article_path(clip, root / "article.mp4", model, processor, device, palette, warmup=args.warmup,
                             time_limit=args.time_limit, max_frames=args.frames)
        a.update(load_s=load_s, peak_gpu_mib=_peak_mib(device), weights_gpu_mib=weights, precision="fp32",
                 processor=type(processor).__name__)
        res["article"] = a
        print(f"article: {a['frames']} frames in {a['wall_s']:.1f}s"
              f"{' (stopped by --time-limit)' if a['stopped_by_time_limit'] else ''}", flush=True)

        # fp32 reference of the first frames, as segq decodes and preprocesses them.
        t0 = time.perf_counter()
        ref_maps: list[np.ndarray] = []
        n_check = min(args.check_frames, args.frames)
        if n_check:
            info = video.probe(clip, max_frames=10**7, max_pixels=10**9)
            ref_frames = list(video.decode_range(clip, info, 0, n_check))
            ref_processor = models.load_processor(str(folder), args.processor)
            ref_maps = fp32_reference(model, ref_processor, ref_frames, device)
        ref_s = time.perf_counter() - t0
        del model, processor
        _free(device)

        # (b) segq's worker path. With --compare-compile: eager, compiled (--compile), eager again, on the
        # same model: the first path after the article's runs slower on a CPU (measured), so the
        # compiled path is compared with the faster of the two eager runs around it.
        with _tf32(*segq_flags):
            m = models.load("ade-semantic", str(folder), spec, args.processor)
            if args.postprocess != "default":
                m.postprocess = args.postprocess
            weights = _allocated_mib(device)
            print(f"segq: model loaded in {m.load_seconds:.1f}s; running ...", flush=True)
            runs = []
            for mode in ["off", args.compile, "off"] if args.compare_compile else [args.compile]:
                extra: dict = {"compile": mode}
                models.compile_model(m, mode)  # "off": the eager forward (again)
                if mode != "off":
                    extra.update(compile_shapes(mods, m, args.batch_size, args.frames, (width, height)))
                _reset_peak(device)
                graphs = _compiled_graphs()
                run, maps = segq_path(
                    mods, clip, root / f"segq-{mode}.mp4", m, batch_size=args.batch_size, warmup=args.warmup,
                    time_limit=args.time_limit, max_frames=args.frames, keep=n_check)
                if mode != "off" and graphs is not None:
                    extra["compiles_in_path"] = _compiled_graphs() - graphs
                run.update(load_s=m.load_seconds, peak_gpu_mib=_peak_mib(device), weights_gpu_mib=weights,
                           precision=DTYPE_NAMES.get(spec.dtype, str(spec.dtype)), processor=m.processor_name,
                           batch_size=args.batch_size, postprocess=m.postprocess, **extra)
                runs.append((run, maps))
                print(f"segq ({'eager' if mode == 'off' else 'torch.compile ' + mode}): {run['frames']} frames in "
                      f"{run['wall_s']:.1f}s{' (stopped by --time-limit)' if run['stopped_by_time_limit'] else ''}",
                      flush=True)
        (s, kept_maps) = runs[0]
        res["segq"] = s
        if args.compare_compile:
            (c, compiled_maps), (again, _) = runs[1], runs[2]
            res["compiled"], res["segq_eager_again"] = c, again
            best = max((r["fps"] or 0.0) for r in (s, again))
            res["ratio_compiled_over_eager"] = c["fps"] / best if best and c["fps"] else None
            res["compiled_agreement"] = {**_agreement(kept_maps, compiled_maps),
                                         "fraction_vs_reference": _agreement(ref_maps, compiled_maps)["fraction"]}
        # image jobs batched across jobs (SEGQ_MAX_BATCH), unbatched first, same model
        if args.image_jobs:
            models.compile_model(m, "off")
            res["image_size"] = f"{args.image_size[0]}x{args.image_size[1]}"
            res["images"] = []
            for max_batch in (1, args.max_batch):
                r = image_jobs(mods, m, images=args.image_jobs, size=args.image_size, max_batch=max_batch,
                               concurrency=max(3, max_batch + 1))
                res["images"].append({**r, "max_batch": max_batch, "concurrency": max(3, max_batch + 1)})
                print(f"segq image jobs (max batch {max_batch}): {r['images_per_s']:.2f} images/s, "
                      f"{r['items_per_pass'] or 0:.2f} per pass", flush=True)
        del m
        _free(device)

    res["agreement"] = {**_agreement(ref_maps, kept_maps), "seconds": ref_s}
    res["ratio_segq_over_article"] = s["fps"] / a["fps"] if a["fps"] and s["fps"] else None
    res["target_ratio"] = TARGET_RATIO
    res["target_applies"] = device.type == "cuda" and not args.tiny and (width, height) == (1920, 1080)
    res["total_s"] = time.perf_counter() - t_all
    print(report(res), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
        print(f"figures written to {args.json}")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
