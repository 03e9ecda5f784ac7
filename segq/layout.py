"""The S3 key layout of segq, in one place.

::

    inputs/<job>/input<.ext>            the uploaded input (never named after the user's path)
    outputs/<job>/overlay.jpg           colored segmentation blended over the image
    outputs/<job>/labels.png            label map: class id (semantic) or segment id (instance,
                                        panoptic) per pixel, 0 = no segment; 8-bit, or 16-bit
                                        when ids can exceed 255
    outputs/<job>/segments.json         one entry per segment: id, label id, label, score,
                                        area, bbox
    outputs/<job>/panoptic.png          panoptic only: COCO panoptic PNG (id = R + 256 G + 256^2 B)
    outputs/<job>/panoptic.json         panoptic only: COCO panoptic annotation + categories

Video jobs::

    outputs/<job>/overlay.mp4           H.264 (yuv420p, faststart) overlay video, input's frames,
                                        frame rate, size and audio
    outputs/<job>/labels/chunk-NNNNN.npz  label maps of one chunk: ``labels`` (frames, H, W),
                                        ``frames`` (frame indexes), ``segments`` (JSON per frame)
    outputs/<job>/video.json            probe, chunks (frames, worker, timings) and metrics
    work/<job>/frames.json              frame table written by the split step
    work/<job>/parts/NNNNN.mp4          encoded overlay of one chunk, joined by assembly

Batches::

    outputs/batches/<name>/manifest.jsonl  one line per job of the batch, written when it ends:
                                        source, job id, state, error, output keys
    outputs/batches/<name>/shards/NNNNNN.json      the images of one shard: id, source, input,
                                        identity (written by the producer before the shard is queued)
    outputs/batches/<name>/shards/NNNNNN.aK.jsonl  what each image of the shard gave (state, error,
                                        output keys, size, timings), one line each, written by
                                        attempt K of the shard; the shard's state in Redis names
                                        the attempt that counts
    work/batches/<name>/NNNNNN.progress.jsonl      the images a running shard has finished so far
                                        (a worker that takes the shard over skips them)
"""

from __future__ import annotations

import re

from segq.protocol import shard_name

INPUTS = "inputs"
OUTPUTS = "outputs"
WORK = "work"

OVERLAY = "overlay.jpg"
LABELS = "labels.png"
SEGMENTS = "segments.json"
PANOPTIC_PNG = "panoptic.png"
PANOPTIC_JSON = "panoptic.json"
OVERLAY_VIDEO = "overlay.mp4"
VIDEO_JSON = "video.json"

_EXT = re.compile(r"^\.[a-z0-9]{1,8}$")


def input_key(job_id: str, ext: str = "") -> str:
    ext = ext.lower()
    if ext and not _EXT.match(ext):
        ext = ""
    return f"{INPUTS}/{job_id}/input{ext}"


def output_prefix(job_id: str) -> str:
    return f"{OUTPUTS}/{job_id}/"


def output_key(job_id: str, name: str) -> str:
    return f"{output_prefix(job_id)}{name}"


def output_relpath(job_id: str, key: str) -> str:
    """Where an output key lies under ``outputs/<job>/`` (``labels/chunk-00000.npz``), so that a
    download keeps the bucket's layout. Refuses keys outside that folder or with ``..`` parts."""
    prefix = output_prefix(job_id)
    rel = key[len(prefix):] if key.startswith(prefix) else ""
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{key!r} is not an output of job {job_id}")
    return rel


def output_names(task: str) -> list[str]:
    """The files a finished image job of ``task`` has under ``outputs/<job>/``."""
    names = [OVERLAY, LABELS, SEGMENTS]
    if task == "panoptic":
        names += [PANOPTIC_PNG, PANOPTIC_JSON]
    return names


def job_outputs(job_id: str, kind: str, task: str, chunks: int = 0) -> list[str]:
    """Every output key of a finished job: an image job's files (``output_names``), or a video's
    overlay, ``video.json`` and one label archive per chunk."""
    if kind == "video":
        return [output_key(job_id, OVERLAY_VIDEO), output_key(job_id, VIDEO_JSON)] + [
            output_key(job_id, chunk_labels_name(i)) for i in range(chunks)]
    return [output_key(job_id, name) for name in output_names(task)]


BATCHES = f"{OUTPUTS}/batches"
MANIFEST = "manifest.jsonl"


def manifest_key(batch: str) -> str:
    return f"{BATCHES}/{batch}/{MANIFEST}"


def shard_spec_key(batch: str, index: int) -> str:
    return f"{BATCHES}/{batch}/shards/{shard_name(index)}.json"


def shard_result_key(batch: str, index: int, attempt: int) -> str:
    return f"{BATCHES}/{batch}/shards/{shard_name(index)}.a{attempt}.jsonl"


def shard_progress_key(batch: str, index: int) -> str:
    return f"{WORK}/batches/{batch}/{shard_name(index)}.progress.jsonl"


def work_prefix(job_id: str) -> str:
    """Intermediate files of a job (frame table, encoded parts)."""
    return f"{WORK}/{job_id}/"


def frames_key(job_id: str) -> str:
    return f"{work_prefix(job_id)}frames.json"


def part_key(job_id: str, chunk: int) -> str:
    return f"{work_prefix(job_id)}parts/{chunk:05d}.mp4"


def chunk_labels_name(chunk: int) -> str:
    return f"labels/chunk-{chunk:05d}.npz"
